"""Partial decryption on ring arrays (threshold_fl.crypto.shares) against OpenFHE.

Every claim here uses real OpenFHE keys and ciphertexts: the noise of our shares is
measured exactly (the share minus c1*s, with the key share read out of OpenFHE), our
shares fuse alone and mixed with OpenFHE's, and the self-test refuses a wrong kernel.

Run ``python tests/test_ring_shares.py`` for the figures docs/crypto.md quotes (not a
test): the joint-key noise against B, both paths' share widths, and per-ciphertext times.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from crypto_helpers import aggregate, encrypted_inputs, make_federation

from threshold_fl.crypto import (
    context_for,
    decrypt_vector,
    fuse_partial_decryptions,
    ntt,
    partial_decrypt,
    shares,
    threshold_params,
    wire,
)
from threshold_fl.crypto.noise import GaussianSampler, wipe
from threshold_fl.crypto.ring import BlobKind
from threshold_fl.crypto.shares import DecryptionPath, KeyLimbs
from threshold_fl.errors import CryptoError, FrameError, ParameterError

PARTIES = 3
CONTEXT = context_for(threshold_params(PARTIES))
N = CONTEXT.ring.ring_dimension
Q = CONTEXT.ring.moduli[0]
SIGMA = 2.0 ** CONTEXT.params.decryption_noise_bits()


@pytest.fixture(scope="module")
def federation() -> Any:
    return make_federation(CONTEXT, PARTIES)


@pytest.fixture(scope="module")
def aggregate_vector(federation: Any) -> Any:
    rng = np.random.default_rng(11)
    inputs = [rng.uniform(-1, 1, 4 * CONTEXT.values_per_ciphertext) for _ in range(PARTIES)]
    weights = np.full(PARTIES, 1.0 / PARTIES)
    vectors = encrypted_inputs(federation, inputs, weights)
    expected = np.sum([w * x for w, x in zip(weights, inputs, strict=True)], axis=0)
    return aggregate(CONTEXT, federation.joint.key.key_id, vectors), expected


def _noise_of(share: npt.NDArray[np.uint64], ciphertext: Any, secret: Any, lead: bool) -> Any:
    """The exact noise polynomial of one share: share - c1*s (- c0), in coefficients."""
    parsed = CONTEXT.ring.parse(CONTEXT.serialize(ciphertext), BlobKind.CIPHERTEXT)
    c0, c1 = parsed.elements[0, 0], parsed.elements[1, 0]
    with KeyLimbs(CONTEXT, secret) as key:
        exact = ntt.mul_mod(c1, key.limb(Q), Q)
    if lead:
        exact = ntt.add_mod(exact, c0, Q)
    return shares.coefficients_of(ntt.sub_mod(share[0], exact, Q), Q)


def _noises(federation: Any, vector: Any, path: DecryptionPath) -> Iterator[Any]:
    for index, secret in federation.secrets.items():
        partial = partial_decrypt(CONTEXT, secret, vector, lead=index == 1, path=path)
        for share, ciphertext in zip(partial.shares, vector.ciphertexts, strict=True):
            yield _noise_of(share, ciphertext, secret.secret.native, index == 1)


# -- the noise: width, tails, and the same width on both paths -------------------------
def test_ring_share_noise_has_the_stated_width_and_tails(federation: Any,
                                                         aggregate_vector: Any) -> None:
    noise = np.concatenate(list(_noises(federation, aggregate_vector[0], DecryptionPath.RING)))
    assert noise.size == PARTIES * 4 * N  # 98,304 samples: the std is known to 0.23 %
    std = float(noise.astype(np.float64).std())
    assert abs(std / SIGMA - 1) < 0.01
    assert abs(float(noise.mean())) < 5 * SIGMA / math.sqrt(noise.size)
    assert int(np.abs(noise).max()) <= GaussianSampler(SIGMA).tail_bound
    beyond = float(np.mean(np.abs(noise) > 3 * SIGMA))  # 0.27 % for a Gaussian
    assert 0.0020 < beyond < 0.0035


def test_openfhe_path_floods_with_the_same_width(federation: Any, aggregate_vector: Any) -> None:
    """OpenFHE is handed the raised estimate, so its sigma is ours (its own sampler)."""
    noise = np.concatenate(list(_noises(federation, aggregate_vector[0], DecryptionPath.OPENFHE)))
    assert abs(float(noise.astype(np.float64).std()) / SIGMA - 1) < 0.03


def test_noise_width_follows_s_and_q() -> None:
    """sigma = sqrt(12 Q) 2^(s/2) B: 16x the queries is 2 bits, 4 more s bits is 2 bits."""
    params = threshold_params(PARTIES)
    base = params.decryption_noise_bits()
    assert params.statistical_security == 30 and params.decryption_queries == 1 << 16
    expected = params.noise_estimate_bits + 15 + 0.5 * math.log2(12 * (1 << 16))
    assert base == pytest.approx(expected)
    more_queries = params.with_changes(decryption_queries=1 << 20).decryption_noise_bits()
    more_security = params.with_changes(statistical_security=34).decryption_noise_bits()
    assert more_queries == pytest.approx(base + 2) and more_security == pytest.approx(base + 2)


def joint_noise_bits(parties: int) -> tuple[float, float]:
    """(log2 of the measured noise of a real N-party aggregate of zeros, B in bits)."""
    context = context_for(threshold_params(parties))
    federation = make_federation(context, parties)
    zeros = [np.zeros(2 * context.values_per_ciphertext)] * parties
    vector = aggregate(context, federation.joint.key.key_id,
                       encrypted_inputs(federation, zeros, np.full(parties, 1.0 / parties)))
    q = context.ring.moduli[0]
    noise = []
    for ciphertext in vector.ciphertexts:
        parsed = context.ring.parse(context.serialize(ciphertext), BlobKind.CIPHERTEXT)
        total = parsed.elements[0, 0]
        for party in federation.parties:
            with KeyLimbs(context, party.secret.native) as key:
                total = ntt.add_mod(total, ntt.mul_mod(parsed.elements[1, 0], key.limb(q), q), q)
        noise.append(shares.coefficients_of(total, q))
    measured = math.log2(float(np.concatenate(noise).astype(np.float64).std()))
    assert context.params.noise_estimate_bits is not None
    return measured, context.params.noise_estimate_bits


@pytest.mark.parametrize("parties", [3, 10])
def test_noise_estimate_covers_a_joint_keys_real_noise(parties: int) -> None:
    """B is OpenFHE's single-key estimate raised for an N-party joint key: the noise
    of a real N-party aggregate, measured exactly, has a smaller standard deviation."""
    measured, estimate = joint_noise_bits(parties)
    assert measured < estimate


# -- fusion ------------------------------------------------------------------------------
@pytest.mark.parametrize("paths", [
    (DecryptionPath.RING,) * 3,
    (DecryptionPath.RING, DecryptionPath.OPENFHE, DecryptionPath.RING),
    (DecryptionPath.OPENFHE,) * 3,
])
def test_shares_fuse_within_the_bound(federation: Any, aggregate_vector: Any,
                                      paths: tuple[DecryptionPath, ...]) -> None:
    vector, expected = aggregate_vector
    partials = [partial_decrypt(CONTEXT, secret, vector, lead=index == 1, path=path)
                for (index, secret), path in zip(federation.secrets.items(), paths, strict=True)]
    values = fuse_partial_decryptions(CONTEXT, federation.joint, partials)
    error = float(np.abs(values - expected).max())
    assert error < CONTEXT.error_bound(PARTIES)
    assert error > 0  # the flooding noise is really there


def test_own_decoding_matches_openfhes_fusion(federation: Any, aggregate_vector: Any) -> None:
    vector, _ = aggregate_vector
    partials = [partial_decrypt(CONTEXT, s, vector, lead=i == 1)
                for i, s in federation.secrets.items()]
    total = shares.sum_shares(CONTEXT, [p.shares for p in partials])
    count = CONTEXT.values_per_ciphertext
    q = CONTEXT.ring.moduli[0]
    for index in range(total.shape[0]):
        ours = shares._decode_own(CONTEXT, total[index], count, coefficients=False)
        theirs = shares._decode_openfhe(CONTEXT, total[index], count)
        # OpenFHE's decoding adds a little noise of its own; both are far inside the bound.
        assert np.abs(ours - theirs).max() < 1e-3 * CONTEXT.error_bound(PARTIES)
        # the same sum in coefficient form (as blind fusion delivers it) decodes alike
        coefficients = ntt.tables_for(total.shape[2], q).inverse(total[index, 0])[None]
        np.testing.assert_allclose(
            shares._decode_own(CONTEXT, coefficients, count, coefficients=True), ours)
        back = shares._evaluations(CONTEXT, coefficients, True)
        np.testing.assert_array_equal(back, total[index])


def test_sparse_packing_decodes_through_openfhe() -> None:
    """With fewer slots than n/2 the sum is fused by OpenFHE, and still right."""
    context = context_for(threshold_params(2, batch_size=1024))
    federation = make_federation(context, 2)
    values = np.linspace(-1, 1, 3000)
    vector = aggregate(context, federation.joint.key.key_id,
                       encrypted_inputs(federation, [values, values], np.array([0.5, 0.5])))
    partials = [partial_decrypt(context, s, vector, lead=i == 1)
                for i, s in federation.secrets.items()]
    decoded = fuse_partial_decryptions(context, federation.joint, partials)
    assert np.abs(decoded - values).max() < context.error_bound(2)


# -- wire ---------------------------------------------------------------------------------
def test_shares_cross_the_wire_unchanged_and_at_the_right_level(federation: Any,
                                                               aggregate_vector: Any) -> None:
    vector, _ = aggregate_vector
    received = wire.decode_vector(CONTEXT, list(wire.encode_vector(CONTEXT, vector)))
    assert received.rings is not None and received.digest == wire.decode_vector(
        CONTEXT, list(wire.encode_vector(CONTEXT, received))).digest
    partial = partial_decrypt(CONTEXT, federation.secrets[2], received, lead=False)
    frames = list(wire.encode_partial_decryption(CONTEXT, partial))
    back = wire.decode_partial_decryption(CONTEXT, frames)
    np.testing.assert_array_equal(back.shares, partial.shares)
    # OpenFHE itself accepts the bytes we write.
    blob = wire.decode_frame(frames[0], wire.FrameKind.PARTIAL_DECRYPTION, CONTEXT.fingerprint,
                             max_part_bytes=wire.max_part_bytes(CONTEXT)).parts[0]
    assert CONTEXT.deserialize_share(blob).GetLevel() == CONTEXT.upload_level


def test_a_share_of_a_fresh_ciphertext_is_refused_at_decoding(federation: Any) -> None:
    """A share at another level (a fresh two-limb ciphertext) is a FrameError."""
    fresh = CONTEXT.native.Encrypt(federation.joint.key.native,
                                   CONTEXT.native.MakeCKKSPackedPlaintext([0j]))
    (share,) = CONTEXT.native.MultipartyDecryptMain([fresh], federation.parties[1].secret.native)
    blob = CONTEXT.serialize(share)
    with pytest.raises(FrameError, match="level 0"):
        CONTEXT.check_upload_summary(CONTEXT.ring.check(blob, BlobKind.DECRYPTION_SHARE))


# -- the self-test, the path option, and wiping -------------------------------------------
@pytest.mark.parametrize("factor", [0.85, 1.15])
def test_self_test_refuses_noise_of_the_wrong_width(monkeypatch: pytest.MonkeyPatch,
                                                    factor: float) -> None:
    """Our own noise is measured alone (share - exact c0 + c1*s): 15 % too narrow, which
    comparing with OpenFHE's share alone would let through, is refused."""
    monkeypatch.setattr(shares.RingKit, "sampler",
                        lambda self: GaussianSampler(self.sigma * factor))
    with pytest.raises(CryptoError, match=r"self-test: our noise.*TFL_DECRYPTION_PATH=openfhe"):
        shares._self_tested_kit(CONTEXT)


def test_self_test_refuses_noise_that_repeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shares.RingKit, "sampler",
                        lambda self: GaussianSampler(self.sigma, key=bytes(32)))
    with pytest.raises(CryptoError, match="two of our shares of one ciphertext"):
        shares._self_tested_kit(CONTEXT)


def test_a_failed_self_test_is_kept_and_the_openfhe_path_still_works(
    monkeypatch: pytest.MonkeyPatch, federation: Any, aggregate_vector: Any
) -> None:
    calls: list[int] = []

    def failing(context: Any) -> Any:
        calls.append(1)
        raise CryptoError("the ring decryption path failed its self-test: (test)")

    monkeypatch.setattr(shares, "_KITS", {})
    monkeypatch.setattr(shares, "_self_tested_kit", failing)
    for _ in range(2):
        with pytest.raises(CryptoError, match="self-test"):
            partial_decrypt(CONTEXT, federation.secrets[2], aggregate_vector[0], lead=False)
    assert calls == [1]
    # OpenFHE's path needs no self-test: its shares are made, framed and fused.
    vector, expected = aggregate_vector
    partials = [partial_decrypt(CONTEXT, s, vector, lead=i == 1, path=DecryptionPath.OPENFHE)
                for i, s in federation.secrets.items()]
    received = [wire.decode_partial_decryption(
        CONTEXT, list(wire.encode_partial_decryption(CONTEXT, p))) for p in partials]
    values = fuse_partial_decryptions(CONTEXT, federation.joint, received)
    assert np.abs(values - expected).max() < CONTEXT.error_bound(PARTIES)


def test_our_shares_carry_the_joint_keys_empty_tag(federation: Any,
                                                   aggregate_vector: Any) -> None:
    partial = partial_decrypt(CONTEXT, federation.secrets[2], aggregate_vector[0], lead=False)
    frame = wire.decode_frame(next(wire.encode_partial_decryption(CONTEXT, partial)),
                              wire.FrameKind.PARTIAL_DECRYPTION, CONTEXT.fingerprint,
                              max_part_bytes=wire.max_part_bytes(CONTEXT))
    assert CONTEXT.ring.check(frame.parts[0], BlobKind.DECRYPTION_SHARE).key_tag == ""


def test_self_test_refuses_a_wrong_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that multiplies by the wrong root order gives uniform garbage: refused."""
    real = ntt.mul_mod
    monkeypatch.setattr(ntt, "mul_mod", lambda a, b, q, **k: real(a, b[::-1].copy(), q, **k))
    with pytest.raises(CryptoError, match="self-test"):
        shares._self_tested_kit(CONTEXT)


def test_path_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, federation: Any,
                                         aggregate_vector: Any) -> None:
    calls: list[bool] = []
    real = shares.openfhe_shares

    def recording(*args: Any, **kwargs: Any) -> Any:
        calls.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr("threshold_fl.crypto.vectors.openfhe_shares", recording)
    monkeypatch.setenv(shares.PATH_ENV, "openfhe")
    partial_decrypt(CONTEXT, federation.secrets[2], aggregate_vector[0], lead=False)
    assert calls == [True]
    monkeypatch.setenv(shares.PATH_ENV, "RING")
    partial_decrypt(CONTEXT, federation.secrets[2], aggregate_vector[0], lead=False)
    assert calls == [True]
    monkeypatch.setenv(shares.PATH_ENV, "fast")
    with pytest.raises(ParameterError, match="'ring' \\(default\\) or 'openfhe'"):
        shares.default_path()


def test_key_limbs_and_their_bytes_are_wiped(federation: Any) -> None:
    with KeyLimbs(CONTEXT, federation.parties[0].secret.native) as key:
        limbs = list(key.limbs.values())
        assert all(int(limb.max()) > 0 for limb in limbs)
    assert all(int(limb.max()) == 0 for limb in limbs)
    data = CONTEXT.serialize(federation.parties[0].secret.native)
    wipe(data)
    assert data == bytes(len(data))
    kept = b"x"  # a shared 1-byte object is left alone
    wipe(kept)
    assert kept == b"x"


def test_single_key_decryption_reads_lazily_deserialised_ciphertexts() -> None:
    """decode_vector leaves OpenFHE out until a native ciphertext is asked for."""
    from threshold_fl.crypto import encrypt_vector, generate_keypair

    keys = generate_keypair(CONTEXT)
    values = np.linspace(-3, 3, 100)
    vector = encrypt_vector(CONTEXT, keys.public, values)
    received = wire.decode_vector(CONTEXT, list(wire.encode_vector(CONTEXT, vector)))
    assert received.ciphertexts._natives == [None]  # type: ignore[attr-defined]
    decrypted = decrypt_vector(CONTEXT, keys.secret, received)
    assert np.abs(decrypted - values).max() < CONTEXT.error_bound(1)


def test_a_partial_decryption_holds_a_uint64_share_array() -> None:
    from threshold_fl.crypto import PartialDecryption

    digest = "0" * 64
    for shares_ in (np.zeros((1, 1, 8), dtype=np.int64), np.zeros((1, 8), dtype=np.uint64),
                    [[[0]]]):
        with pytest.raises(ParameterError, match="uint64 array"):
            PartialDecryption(CONTEXT.fingerprint, digest, digest, 1, True, 8, shares_)  # type: ignore[arg-type]


@pytest.mark.skipif(ntt.backend() != "numba", reason="numba is not available here")
@pytest.mark.parametrize("lead", [True, False])
def test_the_fused_kernel_computes_the_composed_share(aggregate_vector: Any, federation: Any,
                                                      lead: bool) -> None:
    """The compiled one-pass share equals c1*s + NTT(e) (+ c0) made from the checked
    element-wise kernels, bit for bit, on the same noise."""
    parsed = CONTEXT.ring.parse(CONTEXT.serialize(aggregate_vector[0].ciphertexts[0]),
                                BlobKind.CIPHERTEXT)
    noise = GaussianSampler(SIGMA, key=bytes(32)).sample(N)
    with KeyLimbs(CONTEXT, federation.parties[1].secret.native) as key:
        c0, c1 = parsed.elements[0, 0], parsed.elements[1, 0]
        fused = shares.share_limb(c0, c1, key.limb(Q), noise.copy(), Q, add=lead)
        composed = shares._share_limb(c0, c1, key.limb(Q), noise.copy(), Q, add=lead)
    np.testing.assert_array_equal(fused, composed)


# -- figures for docs/crypto.md (python tests/test_ring_shares.py) ------------------------
def _best_ms(work: Any, repeats: int = 20) -> float:
    from test_ring_ntt import _best_of

    return 1e3 * _best_of(work, repeats)


def _report() -> None:
    for parties in (3, 10):
        measured, estimate = joint_noise_bits(parties)
        print(f"N={parties}: joint-key aggregate noise 2^{measured:.2f}, B = 2^{estimate:.2f}")
    federation = make_federation(CONTEXT, PARTIES)
    values = np.random.default_rng(1).uniform(-1, 1, 8 * CONTEXT.values_per_ciphertext)
    vector = aggregate(CONTEXT, federation.joint.key.key_id,
                       encrypted_inputs(federation, [values] * PARTIES,
                                        np.full(PARTIES, 1.0 / PARTIES)))
    for path in DecryptionPath:
        noise = np.concatenate(list(_noises(federation, vector, path)))
        ratio = float(noise.astype(np.float64).std()) / SIGMA
        print(f"{path.value} path: share noise std / sigma = {ratio:.4f} "
              f"(sigma 2^{math.log2(SIGMA):.2f})")
    blob = CONTEXT.serialize(vector.ciphertexts[0])
    parsed = CONTEXT.ring.parse(blob, BlobKind.CIPHERTEXT)
    secret = federation.parties[1].secret.native
    kit = shares.ring_kit(CONTEXT)
    with KeyLimbs(CONTEXT, secret) as key:
        ring_ms = _best_ms(lambda: shares.ring_shares(CONTEXT, key, [parsed], lead=False,
                                                      sampler=kit.sampler()))
    native = vector.ciphertexts[0]
    openfhe_ms = _best_ms(lambda: CONTEXT.native.MultipartyDecryptMain([native], secret))
    check = _best_ms(lambda: CONTEXT.ring.check(blob, BlobKind.CIPHERTEXT))
    parse = _best_ms(lambda: CONTEXT.ring.parse(blob, BlobKind.CIPHERTEXT))
    load = _best_ms(lambda: CONTEXT.deserialize_ciphertext(blob))
    print(f"per ciphertext (n={N}, 1 limb), best of 20: check {check:.3f} ms, parse "
          f"{parse:.3f} ms, OpenFHE deserialise (after our check) {load:.3f} ms")
    print(f"a share: ring path ({ntt.backend()}) {ring_ms:.3f} ms, OpenFHE "
          f"MultipartyDecryptMain {openfhe_ms:.3f} ms ({openfhe_ms / ring_ms:.1f}x)")
    _report_steps(federation)


def _report_steps(federation: Any) -> None:
    """A client's decryption steps on a 64-ciphertext aggregate, per ciphertext."""
    count = 64
    values = np.random.default_rng(2).uniform(-1, 1, count * CONTEXT.values_per_ciphertext)
    vector = aggregate(CONTEXT, federation.joint.key.key_id,
                       encrypted_inputs(federation, [values] * PARTIES,
                                        np.full(PARTIES, 1.0 / PARTIES)))
    frames = list(wire.encode_vector(CONTEXT, vector))
    received = wire.decode_vector(CONTEXT, frames)
    partials = [partial_decrypt(CONTEXT, s, received, lead=i == 1)
                for i, s in federation.secrets.items()]
    sent = [list(wire.encode_partial_decryption(CONTEXT, p)) for p in partials]
    steps = {
        "decode the aggregate's frames": lambda: wire.decode_vector(CONTEXT, frames),
        "the share": lambda: partial_decrypt(CONTEXT, federation.secrets[2], received,
                                             lead=False),
        "frame the share": lambda: list(wire.encode_partial_decryption(CONTEXT, partials[1])),
        f"decode {PARTIES} share runs and fuse": lambda: fuse_partial_decryptions(
            CONTEXT, federation.joint,
            [wire.decode_partial_decryption(CONTEXT, run) for run in sent]),
    }
    print(f"a client's steps, per ciphertext ({count} ciphertexts, {PARTIES} parties, "
          "best of 5):")
    for name, work in steps.items():
        print(f"  {name}: {_best_ms(work, 5) / count:.3f} ms")


if __name__ == "__main__":
    _report()


def test_a_sums_ring_parts_are_views_equal_to_the_stacked_parts(federation: Any) -> None:
    """EncryptedSum.ring_parts gives what threshold.ring_parts stacks from the result,
    as views of the running total (no 16 bytes a value more when decryption starts)."""
    from threshold_fl.crypto.threshold import ring_parts
    from threshold_fl.crypto.vectors import EncryptedSum

    rng = np.random.default_rng(5)
    inputs = [rng.uniform(-1, 1, 2 * CONTEXT.values_per_ciphertext + 3) for _ in range(2)]
    key_id = federation.joint.key.key_id
    total, again = (EncryptedSum(CONTEXT, key_id, inputs[0].size) for _ in range(2))
    for vector in encrypted_inputs(federation, inputs):
        total.add(vector)
        again.add(vector)
    c0, c1 = total.ring_parts()
    expected_c0, expected_c1, _ = ring_parts(CONTEXT, again.result())
    assert c0.shape == expected_c0.shape == (3, *expected_c0.shape[1:])
    assert np.array_equal(c0, expected_c0) and np.array_equal(c1, expected_c1)
    assert not c0.flags.owndata and not c1.flags.owndata  # views, not copies
    with pytest.raises(ParameterError, match="already taken"):
        total.add(encrypted_inputs(federation, inputs[:1])[0])
