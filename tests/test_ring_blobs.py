"""threshold_fl.crypto.ring: OpenFHE blobs parsed by structure, rebuilt byte for byte,
and every structural defect refused with a FrameError naming it.

Run ``python tests/test_ring_blobs.py`` for the timing figures in docs/crypto.md.
"""

from __future__ import annotations

import struct
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest
from crypto_helpers import RingSample, ring_frame, ring_receivers, ring_samples

from threshold_fl.crypto import CkksContext, CkksParams, ScalingTechnique, context_for
from threshold_fl.crypto.ring import BlobKind, build
from threshold_fl.crypto.ring_layout import Walker
from threshold_fl.errors import FrameError, ParameterError

CONTEXTS = {
    "fixed-manual": CkksParams(),
    "flexible-auto": CkksParams(scaling_technique=ScalingTechnique.FLEXIBLE_AUTO),
}


@pytest.fixture(scope="module", params=sorted(CONTEXTS))
def context(request: pytest.FixtureRequest) -> CkksContext:
    return context_for(CONTEXTS[request.param])


@pytest.fixture(scope="module")
def samples(context: CkksContext) -> dict[str, RingSample]:
    return ring_samples(context)


def fields(context: CkksContext, sample: RingSample) -> dict[str, tuple[int, int]]:
    """Offset and size of every named field of a valid blob (first occurrence)."""
    walk = Walker(context.ring, sample.blob, sample.kind, trace=True)
    walk.run()
    assert walk.trace is not None
    found: dict[str, tuple[int, int]] = {}
    for name, offset, size in walk.trace:
        found.setdefault(name, (offset, size))
    return found


def with_u64(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + struct.pack("<Q", value) + blob[offset + 8 :]


def with_u32(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + struct.pack("<I", value) + blob[offset + 4 :]


def refused(context: CkksContext, sample: RingSample, blob: bytes, reason: str) -> None:
    """Both the check and the project's receiving function refuse, naming ``reason``
    (the frame layer may refuse an oversized blob first, which is as good)."""
    with pytest.raises(FrameError, match=reason):
        context.ring.check(blob, sample.kind)
    with pytest.raises(FrameError, match=f"malformed .*(?:{reason})|part length exceeds"):
        ring_receivers(context)[sample.frame_kind](ring_frame(context, sample, blob))


# -- (a) round trips ------------------------------------------------------------------
def test_every_kind_round_trips_byte_for_byte(context: CkksContext,
                                              samples: dict[str, RingSample]) -> None:
    n = context.params.resolved_ring_dimension
    for name, sample in samples.items():
        parsed = context.ring.parse(sample.blob, sample.kind)
        assert build(parsed) == sample.blob, name
        summary = parsed.summary
        assert parsed.elements.shape == (summary.elements, len(summary.moduli), n), name
        assert summary.moduli == context.ring.moduli[: len(summary.moduli)], name
        bounds = np.array(summary.moduli, dtype=np.uint64)[:, None]
        assert bool((parsed.elements < bounds).all()), name
        if sample.kind is BlobKind.SECRET_KEY:
            parsed.wipe()
            assert not parsed.elements.any()


def test_shapes_per_kind(context: CkksContext, samples: dict[str, RingSample]) -> None:
    limbs = context.ring.limbs
    upload_limbs = limbs - context.upload_level
    expected = {
        "ciphertext upload": (2, upload_limbs), "ciphertext aggregate": (2, upload_limbs),
        "share lead": (1, upload_limbs), "share member": (1, upload_limbs),
        "public key lead": (2, limbs), "joint key": (2, limbs), "secret key": (1, limbs),
    }
    for name, (elements, limb_count) in expected.items():
        summary = context.ring.check(samples[name].blob, samples[name].kind)
        assert (summary.elements, len(summary.moduli)) == (elements, limb_count), name
    assert samples["joint key"].blob and context.ring.check(
        samples["joint key"].blob, BlobKind.PUBLIC_KEY).key_tag == ""


def test_blobs_built_from_new_arrays_are_what_openfhe_reads(
        context: CkksContext, samples: dict[str, RingSample]) -> None:
    """A share computed outside OpenFHE, written with build(), is read by OpenFHE as
    exactly those coefficients (re-serialised by OpenFHE and parsed again)."""
    sample = samples["share member"]
    parsed = context.ring.parse(sample.blob, sample.kind)
    moduli = np.array(parsed.summary.moduli, dtype=np.uint64)[None, :, None]
    rng = np.random.default_rng(3)
    ours = (rng.integers(0, 2**63, parsed.elements.shape, dtype=np.uint64) % moduli)
    share = context.deserialize_share(build(parsed, ours))
    again = context.ring.parse(context.serialize(share), BlobKind.DECRYPTION_SHARE)
    np.testing.assert_array_equal(again.elements, ours)
    with pytest.raises(ParameterError, match="is not below"):
        build(parsed, ours + moduli)
    with pytest.raises(ParameterError, match="shape"):
        build(parsed, ours[:, :, :-1])


# -- (b) every structural defect, with its reason -----------------------------------------
def test_truncations_are_refused(context: CkksContext, samples: dict[str, RingSample]) -> None:
    for sample in samples.values():
        where = fields(context, sample)
        cuts = [0, 100, where["key tag length"][0] + 3, where["element 0 limb 0 coefficients"][0]
                + 1000, len(sample.blob) - 1]
        for cut in cuts:
            reason = "header" if cut < where["key tag length"][0] else r"truncated"
            refused(context, sample, sample.blob[:cut], reason)


def test_edited_ring_dimension_is_refused(context: CkksContext,
                                          samples: dict[str, RingSample]) -> None:
    n = context.params.resolved_ring_dimension
    for sample in samples.values():
        offset = fields(context, sample)["element 0 limb 0 ring dimension n"][0]
        for value in (n // 2, 2 * n, n + 1, 2**63):
            refused(context, sample, with_u64(sample.blob, offset, value),
                    rf"ring dimension n at byte {offset}: expected {n}, found {value}")


def test_edited_limb_and_element_counts_are_refused(
        context: CkksContext, samples: dict[str, RingSample]) -> None:
    limbs = context.ring.limbs
    for sample in samples.values():
        where = fields(context, sample)
        offset = where["element 0 limb count"][0]
        for value in (0, limbs + 1, 2**40):
            refused(context, sample, with_u64(sample.blob, offset, value), "limb count")
        if "element count" in where:
            count = struct.unpack_from("<Q", sample.blob, where["element count"][0])[0]
            for value in (0, 3, count + 1, 2**33):
                refused(context, sample, with_u64(sample.blob, where["element count"][0], value),
                        "element count")


def test_an_extra_element_or_limb_is_refused(context: CkksContext,
                                             samples: dict[str, RingSample]) -> None:
    for name in ("ciphertext upload", "share member", "secret key"):
        sample = samples[name]
        where = fields(context, sample)
        # A whole extra limb (n, coefficients, modulus, format, tower pointer) after limb 0.
        start = where["element 0 limb 0 ring dimension n"][0]
        end = sum(where["element 0 limb 0 tower parameters pointer id"])
        limb = sample.blob[start:end]
        count_at = where["element 0 limb count"][0]
        count = struct.unpack_from("<Q", sample.blob, count_at)[0]
        grown = with_u64(sample.blob, count_at, count + 1)
        grown = grown[:end] + struct.pack("<Ib", 0x40000000, 1) + limb + grown[end:]
        refused(context, sample, grown, "limb count|limb 1|format|pointer type")
        # An extra element: the count says one more, and a copy of the last one follows.
        if "element count" in where:
            count_at = where["element count"][0]
            elements = struct.unpack_from("<Q", sample.blob, count_at)[0]
            last = where[f"element {elements - 1} limb count"][0]
            tail = where["slots"][0] if "slots" in where else len(sample.blob)
            extra = with_u64(sample.blob, count_at, elements + 1)
            extra = extra[:tail] + sample.blob[last:tail] + extra[tail:]
            refused(context, sample, extra, "element count")


def test_wrong_moduli_are_refused(context: CkksContext, samples: dict[str, RingSample]) -> None:
    moduli = context.ring.moduli
    for sample in samples.values():
        offset = fields(context, sample)["element 0 limb 0 modulus"][0]
        for value in (moduli[-1] if moduli[-1] != moduli[0] else 3, moduli[0] + 2, 0):
            refused(context, sample, with_u64(sample.blob, offset, value),
                    rf"limb 0 modulus at byte {offset}: expected {moduli[0]}, found {value}")


def test_coefficients_at_or_above_their_modulus_are_refused(
        context: CkksContext, samples: dict[str, RingSample]) -> None:
    for sample in samples.values():
        offset = fields(context, sample)["element 0 limb 0 coefficients"][0]
        bound = context.ring.moduli[0]
        for index, value in ((0, bound), (17, bound + 1),
                             (context.ring.ring_dimension - 1, 2**64 - 1)):
            at = offset + 8 * index
            refused(context, sample, with_u64(sample.blob, at, value),
                    rf"coefficient \(not below its modulus\) at byte {at}: "
                    rf"expected < {bound}, found {value}")


def test_a_coefficient_changed_within_its_modulus_passes(
        context: CkksContext, samples: dict[str, RingSample]) -> None:
    """Structurally valid: the check promises a well-formed object, not an honest one."""
    receivers = ring_receivers(context)
    for sample in samples.values():
        offset = fields(context, sample)["element 0 limb 0 coefficients"][0]
        changed = with_u64(sample.blob, offset + 8 * 5, context.ring.moduli[0] - 1)
        context.ring.check(changed, sample.kind)
        receivers[sample.frame_kind](ring_frame(context, sample, changed))


def test_trailing_bytes_are_refused(context: CkksContext, samples: dict[str, RingSample]) -> None:
    for sample in samples.values():
        for extra in (b"\x00", b"\x01" * 8, bytes(range(64))):
            refused(context, sample, sample.blob + extra, f"{len(extra)} trailing bytes")


def test_header_byte_edits_are_refused(context: CkksContext,
                                       samples: dict[str, RingSample]) -> None:
    rng = np.random.default_rng(11)
    for sample in samples.values():
        header = fields(context, sample)["header"][1]
        for position in [0, 1, header - 1, *rng.integers(0, header, 12).tolist()]:
            edited = bytearray(sample.blob)
            edited[position] ^= 1 << int(rng.integers(0, 8))
            refused(context, sample, bytes(edited), f"header byte .* at byte {position}")


def test_the_header_names_the_tower_modulus_that_was_edited(
        context: CkksContext, samples: dict[str, RingSample]) -> None:
    sample = samples["ciphertext upload"]
    at = sample.blob.find(struct.pack("<Q", context.ring.moduli[0]))
    edited = bytearray(sample.blob)
    edited[at] ^= 1
    refused(context, sample, bytes(edited), r"header byte \(tower 0 parameters: .*modulus")


def test_other_field_edits_are_refused(context: CkksContext,
                                       samples: dict[str, RingSample]) -> None:
    cases: list[tuple[str, str, Callable[[int], int], Callable[[bytes, int, int], bytes], str]] = [
        ("ciphertext upload", "key tag length", lambda v: 31, with_u64, "key tag length"),
        ("secret key", "key tag", lambda v: v, lambda b, o, v: b[:o] + b"Z" + b[o + 1 :],
         "key tag"),
        ("ciphertext upload", "level", lambda v: v + 1, with_u32, "level"),
        ("ciphertext upload", "slots", lambda v: v // 2, with_u32, "slots"),
        ("ciphertext upload", "noise scale degree", lambda v: 7, with_u32, "noise scale degree"),
        ("ciphertext upload", "re-encryption hops", lambda v: 1, with_u32, "hops"),
        ("ciphertext upload", "encoding type", lambda v: v + 1, with_u32, "encoding type"),
        ("ciphertext upload", "metadata map size", lambda v: 1, with_u64, "metadata map size"),
        ("ciphertext upload", "metadata map pointer", lambda v: 3, with_u32, "metadata map"),
        ("share member", "element 0 limb 0 format", lambda v: 1, with_u32, "limb 0 format"),
        ("secret key", "element 0 limb 0 tower parameters pointer id", lambda v: 2, with_u32,
         "tower parameters pointer id 2"),
        ("secret key", "element 0 ring parameters pointer id", lambda v: 0x80000000 | 77,
         with_u32, "new pointer id"),
        ("secret key", "element 0 limb 0 pointer type", lambda v: 0x80000001, with_u32,
         "pointer type"),
        ("secret key", "NativeVector class version", lambda v: v + 1, with_u32,
         "class version"),
    ]
    for name, field, value, write, reason in cases:
        sample = samples[name]
        offset, size = fields(context, sample)[field]
        old = int.from_bytes(sample.blob[offset : offset + min(size, 8)], "little")
        refused(context, sample, write(sample.blob, offset, value(old)), reason)


def test_scaling_factor_edits_are_refused(context: CkksContext,
                                          samples: dict[str, RingSample]) -> None:
    sample = samples["ciphertext aggregate"]
    offset = fields(context, sample)["scaling factor"][0]
    scale = struct.unpack_from("<d", sample.blob, offset)[0]
    for value in (scale * 2, scale * (1 + 1e-6), float("nan"), float("inf"), -scale, 0.0):
        edited = sample.blob[:offset] + struct.pack("<d", value) + sample.blob[offset + 8 :]
        refused(context, sample, edited, "scaling factor")


def test_parameters_written_in_full_are_checked_field_by_field(
        context: CkksContext, samples: dict[str, RingSample]) -> None:
    """Re-serialised objects write their ring parameters in full: each field is checked."""
    sample = samples["secret key resaved"]
    where = fields(context, sample)
    tower_at = where["element 0 limb 0 tower parameters content"][0]
    dcrt_at = where["element 0 ring parameters content"][0]
    for offset, reason in ((tower_at + 4, "ring dimension"), (tower_at + 8, "modulus"),
                           (tower_at + 16, "root of unity"), (tower_at + 24, "big modulus"),
                           (dcrt_at, "cyclotomic order"), (dcrt_at + 12, "modulus"),
                           (dcrt_at + 15, "word count")):
        edited = bytearray(sample.blob)
        edited[offset] ^= 0x04
        refused(context, sample, bytes(edited), reason)


def test_a_blob_of_the_wrong_kind_or_context_is_refused(
        context: CkksContext, samples: dict[str, RingSample]) -> None:
    share = samples["share member"]
    with pytest.raises(FrameError, match=r"element count .* expected 2, found 1"):
        context.ring.check(share.blob, BlobKind.CIPHERTEXT)
    # Private and public keys share a header; the public key's element count comes next.
    with pytest.raises(FrameError, match="element count"):
        context.ring.check(samples["secret key"].blob, BlobKind.PUBLIC_KEY)
    other = context_for(context.params.with_changes(scaling_mod_size=50))
    foreign = ring_samples(other)["ciphertext upload"].blob
    with pytest.raises(FrameError, match="header byte"):
        context.ring.check(foreign, BlobKind.CIPHERTEXT)
    with pytest.raises(FrameError, match="must be bytes"):
        context.ring.check(bytearray(share.blob), BlobKind.DECRYPTION_SHARE)  # type: ignore[arg-type]


# -- timing (not a test) -------------------------------------------------------------------
def _best(function: Callable[[], object], repeats: int = 200) -> float:
    function()
    rounds = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        rounds.append((time.perf_counter() - start) / repeats)
    return min(rounds)


def print_timings() -> None:
    import openfhe

    loaders = {BlobKind.CIPHERTEXT: openfhe.DeserializeCiphertextString,
               BlobKind.DECRYPTION_SHARE: openfhe.DeserializeCiphertextString,
               BlobKind.PUBLIC_KEY: openfhe.DeserializePublicKeyString,
               BlobKind.SECRET_KEY: openfhe.DeserializePrivateKeyString}
    start = time.perf_counter()
    context_for(CkksParams(scaling_mod_size=51)).ring  # noqa: B018 (learning, timed)
    print(f"learning a template: {1e3 * (time.perf_counter() - start):.0f} ms")
    print(f"{'n':>5} {'blob':22} {'bytes':>7} {'check':>9} {'parse':>9} {'OpenFHE':>9} "
          f"{'ratio':>6}")
    for ring in (8192, 16384):
        context = context_for(CkksParams(ring_dimension=ring))
        for name, sample in ring_samples(context).items():
            if ring != 8192 and not name.startswith(("ciphertext upload", "share member")):
                continue
            blob, kind = sample.blob, sample.kind
            check = _best(lambda: context.ring.check(blob, kind))  # noqa: B023
            parse = _best(lambda: context.ring.parse(blob, kind))  # noqa: B023
            native = _best(lambda: loaders[kind](blob, openfhe.BINARY), 100)  # noqa: B023
            print(f"{ring:5d} {name:22} {len(blob):7d} {1e6 * check:7.0f}us "
                  f"{1e6 * parse:7.0f}us {1e6 * native:7.0f}us {check / native:6.0%}")


if __name__ == "__main__":
    print_timings()
    sys.exit(0)
