"""Wire frames: round trips, and every malformation refused before OpenFHE sees a byte."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from crypto_helpers import aggregate, encrypted_inputs, make_federation

from threshold_fl.crypto import (
    CkksParams,
    EncryptedSum,
    context_for,
    fuse_partial_decryptions,
    noise,
    partial_decrypt,
    wire,
)
from threshold_fl.crypto import threshold as th
from threshold_fl.crypto.frames import (
    FrameKind,
    decode_frame,
    decode_params,
    encode_frame,
    encode_params,
    max_part_bytes,
)
from threshold_fl.crypto.shares import KeyLimbs
from threshold_fl.crypto.wire import (
    PolynomialRole,
    decode_joint_public_key,
    decode_key_share,
    decode_partial_decryption,
    decode_polynomials,
    decode_public_key,
    decode_secret_key,
    decode_vector,
    encode_joint_public_key,
    encode_key_share,
    encode_partial_decryption,
    encode_public_key,
    encode_secret_key,
    encode_vector,
    stream_vector,
)
from threshold_fl.errors import FrameError, ParameterError

CONTEXT = context_for(CkksParams())
OTHER = context_for(CkksParams(scaling_mod_size=50))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def federation():  # type: ignore[no-untyped-def]
    return make_federation(CONTEXT, 3)


@pytest.fixture(scope="module")
def total(federation):  # type: ignore[no-untyped-def]
    inputs = [np.linspace(-1, 1, CONTEXT.values_per_ciphertext + 7) * (i + 1) for i in range(3)]
    return aggregate(
        CONTEXT, federation.joint.key_id, encrypted_inputs(federation, inputs, np.ones(3) / 3)
    ), np.mean(inputs, axis=0)


def test_params_round_trip_and_fingerprint_check() -> None:
    frame = encode_params(CONTEXT.params)
    assert decode_params(frame) == CONTEXT.params
    assert decode_params(frame, CONTEXT.fingerprint) == CONTEXT.params
    with pytest.raises(FrameError, match="other CKKS parameters"):
        decode_params(frame, OTHER.fingerprint)


def test_vector_and_partials_survive_the_wire_in_many_frames(federation, total) -> None:  # type: ignore[no-untyped-def]
    vector, expected = total
    frames = list(encode_vector(CONTEXT, vector, max_frame_bytes=200_000))
    assert len(frames) == 2
    received = decode_vector(CONTEXT, frames)
    partials = []
    for index, secret in federation.secrets.items():
        partial = partial_decrypt(CONTEXT, secret, received, lead=index == 1)
        partials.append(
            decode_partial_decryption(
                CONTEXT, list(encode_partial_decryption(CONTEXT, partial, max_frame_bytes=100_000))
            )
        )
    result = fuse_partial_decryptions(
        CONTEXT, federation.joint, partials, vector_digest=received.digest
    )
    np.testing.assert_allclose(result, expected, atol=CONTEXT.error_bound(3))


def test_vector_frames_missing_duplicated_or_reordered_are_refused(total) -> None:  # type: ignore[no-untyped-def]
    frames = list(encode_vector(CONTEXT, total[0], max_frame_bytes=200_000))
    for bad in ([frames[0]], [frames[1], frames[0]], [frames[0], frames[0], frames[1]], []):
        with pytest.raises(FrameError):
            decode_vector(CONTEXT, bad)


def test_keys_and_shares_round_trip(federation) -> None:  # type: ignore[no-untyped-def]
    party = federation.parties[1]
    index, key = decode_public_key(
        CONTEXT, encode_public_key(CONTEXT, party.public_share, party_index=2)
    )
    assert (index, key.key_id) == (2, party.public_share.key_id)
    joint = decode_joint_public_key(CONTEXT, encode_joint_public_key(CONTEXT, federation.joint))
    assert joint.key_id == federation.joint.key_id and dict(joint.share_ids) == dict(
        federation.joint.share_ids
    )
    secret = decode_secret_key(CONTEXT, encode_secret_key(CONTEXT, party.secret))
    assert secret.public_key_id == party.public_share.key_id


def _key_share(federation, limbs) -> bytes:  # type: ignore[no-untyped-def]
    return encode_key_share(CONTEXT, dealer_index=2, holder_index=3, parties=3, threshold=2,
                            dealer_public_id=federation.parties[1].public_share.key_id,
                            limbs=limbs)


def test_key_shares_round_trip_as_raw_limbs_below_their_moduli(federation) -> None:  # type: ignore[no-untyped-def]
    with KeyLimbs(CONTEXT, federation.parties[1].secret.native) as secret:
        dealt = th.deal(secret, 3, 2)
    meta, limbs = decode_key_share(CONTEXT, _key_share(federation, dealt[3]))
    assert meta == {"parties": 3, "threshold": 2, "dealer_index": 2, "holder_index": 3,
                    "dealer_public_id": federation.parties[1].public_share.key_id}
    assert list(limbs) == list(CONTEXT.ring.moduli)
    for q, limb in limbs.items():
        np.testing.assert_array_equal(limb, dealt[3][q])
    q = CONTEXT.ring.moduli[-1]
    unreduced = {m: limb.copy() for m, limb in dealt[3].items()}
    unreduced[q][7] = q
    at = 8 * CONTEXT.ring.ring_dimension * (len(CONTEXT.ring.moduli) - 1) + 8 * 7
    with pytest.raises(FrameError, match=rf"malformed key share: coefficient \(not below its "
                                         rf"modulus\) at byte {at}: expected < {q}, found {q}"):
        decode_key_share(CONTEXT, _key_share(federation, unreduced))
    with pytest.raises(FrameError, match="every modulus of the key"):
        _key_share(federation, {m: dealt[3][m] for m in reversed(CONTEXT.ring.moduli)})


def test_c1_polynomials_round_trip_and_a_value_not_below_its_modulus_is_named() -> None:
    moduli, n = CONTEXT.aggregate_moduli, CONTEXT.ring.ring_dimension
    length = CONTEXT.values_per_ciphertext + 1  # two ciphertexts
    rng = np.random.default_rng(3)
    arrays = np.stack([np.stack([rng.integers(0, q, n, dtype=np.uint64) for q in moduli])
                       for _ in range(2)])
    key_id = "ab" * 32

    def decoded() -> np.ndarray:
        frames = tuple(wire.encode_polynomials(CONTEXT, PolynomialRole.C1, key_id, length,
                                               arrays))
        return decode_polynomials(CONTEXT, frames, PolynomialRole.C1, key_id=key_id,
                                  length=length)

    np.testing.assert_array_equal(decoded(), arrays)
    q = moduli[-1]
    arrays[1, -1, 5] = q
    at = 8 * n * (len(moduli) - 1) + 8 * 5
    with pytest.raises(FrameError, match=rf"malformed c1 polynomial 1: coefficient \(not "
                                         rf"below its modulus\) at byte {at}: expected < {q}"):
        decoded()


def _recording_wipe(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What the wire module wipes, kept to look at afterwards."""
    wiped: list[Any] = []

    def record(value: Any) -> None:
        noise.wipe(value)
        wiped.append(value)

    monkeypatch.setattr(wire, "wipe", record)
    return wiped


def test_key_share_bytes_are_wiped_on_both_sides(federation, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The copies of a Shamir share in bytes (the parts encoded, the parts a decoder cuts
    from a frame) are zeros after use; a share refused as unreduced leaves zeros too."""
    with KeyLimbs(CONTEXT, federation.parties[1].secret.native) as secret:
        dealt = th.deal(secret, 3, 2)
    wiped = _recording_wipe(monkeypatch)
    frame = _key_share(federation, dealt[3])
    limbs_count, n = len(CONTEXT.ring.moduli), CONTEXT.ring.ring_dimension
    assert [type(w) for w in wiped] == [bytearray] * limbs_count
    assert all(len(w) == 8 * n and not any(w) for w in wiped)
    wiped.clear()
    _, limbs = decode_key_share(CONTEXT, frame)
    assert len(wiped) == limbs_count and all(not any(w) for w in wiped)
    assert all(limb.any() for limb in limbs.values())  # the decoded share is intact
    q = CONTEXT.ring.moduli[-1]
    unreduced = {m: limb.copy() for m, limb in dealt[3].items()}
    unreduced[q][7] = q
    bad = _key_share(federation, unreduced)
    wiped.clear()
    with pytest.raises(FrameError, match="not below its modulus"):
        decode_key_share(CONTEXT, bad)
    arrays = [w for w in wiped if isinstance(w, np.ndarray)]
    assert len(arrays) == 1 and arrays[0].shape == (limbs_count, n) and not arrays[0].any()
    assert len(wiped) == limbs_count + 1 and all(not np.any(np.frombuffer(w, np.uint8))
                                                 for w in wiped if isinstance(w, bytes))


def test_secret_key_bytes_are_wiped_on_both_sides(federation, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    wiped = _recording_wipe(monkeypatch)
    frame = encode_secret_key(CONTEXT, federation.parties[1].secret)
    assert len(wiped) == 1 and len(wiped[0]) > 1000 and not any(wiped[0])
    secret = decode_secret_key(CONTEXT, frame)
    assert len(wiped) == 2 and not any(wiped[1])
    assert secret.public_key_id == federation.parties[1].public_share.key_id


def test_retired_shamir_share_frames_are_refused_by_every_decoder(federation) -> None:  # type: ignore[no-untyped-def]
    """Kind 5 (OpenFHE Shamir shares, retired) stays reserved and is never decoded."""
    assert FrameKind(5) is FrameKind.RETIRED_SHAMIR_SHARE
    frame = _with_header(encode_secret_key(CONTEXT, federation.parties[1].secret), kind=5)
    decoders = [
        lambda: decode_params(frame),
        lambda: decode_public_key(CONTEXT, frame),
        lambda: decode_joint_public_key(CONTEXT, frame),
        lambda: decode_secret_key(CONTEXT, frame),
        lambda: decode_vector(CONTEXT, [frame]),
        lambda: list(stream_vector(CONTEXT, [frame], key_id="0" * 64, length=1)),
        lambda: decode_partial_decryption(CONTEXT, [frame]),
        lambda: decode_polynomials(CONTEXT, [frame], PolynomialRole.SHARE, key_id="0" * 64,
                                   length=1),
        lambda: decode_key_share(CONTEXT, frame),
    ]
    for decode in decoders:
        with pytest.raises(FrameError, match=r"frame kind 5 \(RETIRED_SHAMIR_SHARE\) is retired"):
            decode()
    with pytest.raises(FrameError, match="is retired"):
        decode_frame(frame, FrameKind.RETIRED_SHAMIR_SHARE, CONTEXT.fingerprint,
                     max_part_bytes=max_part_bytes(CONTEXT))
    with pytest.raises(ParameterError, match="is retired"):
        encode_frame(FrameKind.RETIRED_SHAMIR_SHARE, CONTEXT.fingerprint, {}, [])


def test_a_frame_under_other_parameters_is_refused(federation) -> None:  # type: ignore[no-untyped-def]
    frame = encode_public_key(CONTEXT, federation.parties[0].public_share, party_index=1)
    with pytest.raises(FrameError, match="other CKKS parameters"):
        decode_public_key(OTHER, frame)


def _valid_frame(federation) -> bytes:  # type: ignore[no-untyped-def]
    return encode_public_key(CONTEXT, federation.parties[0].public_share, party_index=1)


def test_truncated_frames_are_refused(federation) -> None:  # type: ignore[no-untyped-def]
    frame = _valid_frame(federation)
    for cut in (0, 3, 40, 80, 81, 120, len(frame) // 2, len(frame) - 1):
        with pytest.raises(FrameError):
            decode_public_key(CONTEXT, frame[:cut])


def test_bit_flips_anywhere_are_refused(federation) -> None:  # type: ignore[no-untyped-def]
    frame = _valid_frame(federation)
    for position in list(range(0, 200, 3)) + list(range(200, len(frame), 997)):
        flipped = bytearray(frame)
        flipped[position] ^= 0x10
        with pytest.raises(FrameError):
            decode_public_key(CONTEXT, bytes(flipped))


def _with_header(frame: bytes, **fields: int) -> bytes:
    """Rewrite header fields (digest is left stale: header checks must come first)."""
    magic, version, kind, flags, fingerprint, meta, count = struct.unpack_from(">4sBBH32sII", frame)
    values = {"version": version, "kind": kind, "flags": flags, "meta": meta, "count": count}
    values.update(fields)
    head = struct.pack(
        ">4sBBH32sII",
        magic,
        values["version"],
        values["kind"],
        values["flags"],
        fingerprint,
        values["meta"],
        values["count"],
    )
    return head + frame[len(head) :]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"version": 2}, "version 2 is not supported"),
        ({"kind": int(FrameKind.CIPHERTEXTS)}, "expected a PUBLIC_KEY frame, got kind CIPHERTEXTS"),
        ({"kind": 99}, "got kind 99"),
        ({"flags": 1}, "unknown frame flags"),
        ({"meta": 2**31}, "over limits"),
        ({"count": 2**20}, "over limits"),
        ({"count": 3}, "does not match|truncated|part length"),
    ],
)
def test_header_malformations_name_the_problem(federation, fields, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(FrameError, match=message):
        decode_public_key(CONTEXT, _with_header(_valid_frame(federation), **fields))


def test_oversized_part_length_is_refused_before_allocation(federation) -> None:  # type: ignore[no-untyped-def]
    frame = bytearray(_valid_frame(federation))
    frame[48:52] = (2**32 - 1).to_bytes(4, "big")  # the first part length
    with pytest.raises(FrameError, match="part length exceeds"):
        decode_public_key(CONTEXT, bytes(frame))


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"key_id": "zz", "party_index": 1},
        {"key_id": "0" * 64, "party_index": -1},
        {"key_id": "0" * 64, "party_index": True},
    ],
)
def test_well_formed_frames_with_bad_metadata_are_refused(metadata) -> None:  # type: ignore[no-untyped-def]
    frame = encode_frame(FrameKind.PUBLIC_KEY, CONTEXT.fingerprint, metadata, [b"x"])
    with pytest.raises(FrameError):
        decode_public_key(CONTEXT, frame)


def test_key_bytes_that_do_not_match_their_id_never_reach_openfhe(federation) -> None:  # type: ignore[no-untyped-def]
    frame = encode_frame(
        FrameKind.PUBLIC_KEY,
        CONTEXT.fingerprint,
        {"key_id": federation.joint.key_id, "party_index": 1},
        [b"\x00" * 64],
    )
    with pytest.raises(FrameError, match="does not match its id"):
        decode_public_key(CONTEXT, frame)


FUZZ_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    from hypothesis import given, settings, strategies as st, HealthCheck
    from threshold_fl.crypto import CkksParams, context_for, generate_keypair, encrypt_vector
    from threshold_fl.crypto import wire, frames
    from threshold_fl.errors import ThresholdFLError

    ctx = context_for(CkksParams())
    keys = generate_keypair(ctx)
    vector = encrypt_vector(ctx, keys.public, np.ones(5))
    rng = np.random.default_rng(5)
    n, moduli = ctx.ring.ring_dimension, ctx.ring.moduli
    limbs = {q: rng.integers(0, q, n, dtype=np.uint64) for q in moduli}
    upload = moduli[:len(moduli) - ctx.upload_level]
    arrays = np.stack([rng.integers(0, q, n, dtype=np.uint64) for q in upload])[None]
    role, key_id = wire.PolynomialRole.SHARE, keys.public.key_id
    VALID = {
        "vector": b"".join(wire.encode_vector(ctx, vector)),
        "public": wire.encode_public_key(ctx, keys.public),
        "secret": wire.encode_secret_key(ctx, keys.secret),
        "params": frames.encode_params(ctx.params),
        "key share": wire.encode_key_share(ctx, dealer_index=1, holder_index=2, parties=3,
                                           threshold=2, dealer_public_id=key_id, limbs=limbs),
        "polynomials": b"".join(wire.encode_polynomials(ctx, role, key_id, 5, arrays)),
    }
    DECODERS = {
        "vector": lambda b: wire.decode_vector(ctx, [b]),
        "public": lambda b: wire.decode_public_key(ctx, b),
        "secret": lambda b: wire.decode_secret_key(ctx, b),
        "params": frames.decode_params,
        "key share": lambda b: wire.decode_key_share(ctx, b),
        "polynomials": lambda b: wire.decode_polynomials(ctx, [b], role, key_id=key_id,
                                                         length=5),
        "partial": lambda b: wire.decode_partial_decryption(ctx, [b]),
        "joint": lambda b: wire.decode_joint_public_key(ctx, b),
    }
    for name in ("key share", "polynomials"):  # the valid frames pass
        DECODERS[name](VALID[name])

    def check(decoder, data):
        try:
            DECODERS[decoder](data)
        except ThresholdFLError:
            return
        raise AssertionError(f"{decoder} accepted malformed bytes")

    @settings(max_examples=int(sys.argv[1]), deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(DECODERS)), st.binary(max_size=4096))
    def random_bytes(decoder, data):
        check(decoder, data)

    @settings(max_examples=int(sys.argv[1]), deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(sorted(VALID)), st.sampled_from(sorted(DECODERS)), st.data())
    def mutated(source, decoder, data):
        frame = bytearray(VALID[source])
        how = data.draw(st.sampled_from(["flip", "truncate", "extend", "splice"]))
        if how == "flip":
            for position in data.draw(st.lists(st.integers(0, len(frame) - 1), min_size=1,
                                               max_size=8)):
                frame[position] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "truncate":
            frame = frame[:data.draw(st.integers(0, len(frame) - 1))]
        elif how == "extend":
            frame += data.draw(st.binary(min_size=1, max_size=64))
        else:
            start = data.draw(st.integers(0, len(frame) - 1))
            frame[start:start + 8] = data.draw(st.binary(min_size=8, max_size=8))
        if bytes(frame) == VALID[source] and decoder == source:
            return
        try:
            DECODERS[decoder](bytes(frame))
        except ThresholdFLError:
            return
        # A mutation may leave a valid frame for another decoder only if unchanged.
        raise AssertionError(f"{decoder} accepted a mutated {source} frame ({how})")

    random_bytes()
    mutated()
    print("fuzz-ok")
""")


def test_fuzzed_frames_raise_clear_errors_and_never_crash() -> None:
    """Runs in a subprocess: a segfault in OpenFHE fails this test instead of killing pytest."""
    completed = subprocess.run(
        [sys.executable, "-c", FUZZ_SCRIPT, "1500"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert completed.returncode == 0, (
        f"fuzzing exited with {completed.returncode} (negative: killed by signal)\n"
        f"{completed.stdout[-3000:]}\n{completed.stderr[-3000:]}"
    )
    assert "fuzz-ok" in completed.stdout


def test_uploads_stream_from_frames_into_the_sum(federation) -> None:  # type: ignore[no-untyped-def]
    length = 3 * CONTEXT.values_per_ciphertext + 5
    inputs = [np.linspace(-2, 2, length) * (i + 1) for i in range(3)]
    total = EncryptedSum(CONTEXT, federation.joint.key_id, length)
    for vector in encrypted_inputs(federation, inputs, np.ones(3) / 3):
        frames = encode_vector(CONTEXT, vector, max_frame_bytes=150_000)  # a lazy iterator
        total.add_chunks(stream_vector(CONTEXT, frames, key_id=vector.key_id, length=length))
    aggregate_vector = total.result()
    partials = [
        partial_decrypt(CONTEXT, s, aggregate_vector, lead=i == 1)
        for i, s in federation.secrets.items()
    ]
    result = fuse_partial_decryptions(CONTEXT, federation.joint, partials)
    np.testing.assert_allclose(result, np.mean(inputs, axis=0), atol=CONTEXT.error_bound(3))


def test_streamed_upload_for_another_key_or_length_is_refused(federation) -> None:  # type: ignore[no-untyped-def]
    vector = encrypted_inputs(federation, [np.ones(10)])[0]
    for key_id, length in ((vector.key_id, 11), ("0" * 64, 10)):
        total = EncryptedSum(CONTEXT, vector.key_id, length)
        with pytest.raises(FrameError, match="expected a fresh vector"):
            total.add_chunks(
                stream_vector(
                    CONTEXT, encode_vector(CONTEXT, vector), key_id=key_id, length=length
                ),
            )


def test_empty_vectors_round_trip(federation) -> None:  # type: ignore[no-untyped-def]
    vector = encrypted_inputs(federation, [np.zeros(0)])[0]
    received = decode_vector(CONTEXT, list(encode_vector(CONTEXT, vector)))
    assert received.length == 0 and len(received.ciphertexts) == 0


def test_an_upload_that_breaks_off_leaves_the_sum_unchanged(federation) -> None:  # type: ignore[no-untyped-def]
    length = 2 * CONTEXT.values_per_ciphertext
    inputs = [np.full(length, 1.0), np.full(length, 3.0)]
    vectors = encrypted_inputs(federation, inputs, np.full(2, 0.5))
    total = EncryptedSum(CONTEXT, federation.joint.key_id, length)
    total.add(vectors[0])
    truncated = list(encode_vector(CONTEXT, vectors[1], max_frame_bytes=150_000))[:1]
    with pytest.raises(FrameError, match="frames are missing"):
        total.add_chunks(stream_vector(CONTEXT, truncated, key_id=vectors[1].key_id,
                                       length=length))
    total.add(vectors[1])  # the retried upload still fits
    aggregate_vector = total.result()
    partials = [
        partial_decrypt(CONTEXT, s, aggregate_vector, lead=i == 1)
        for i, s in federation.secrets.items()
    ]
    result = fuse_partial_decryptions(CONTEXT, federation.joint, partials)
    np.testing.assert_allclose(result, np.full(length, 2.0), atol=CONTEXT.error_bound(3))


def test_a_frame_with_more_ciphertexts_than_its_run_is_refused(federation) -> None:  # type: ignore[no-untyped-def]
    vector = encrypted_inputs(federation, [np.ones(10)])[0]
    (frame,) = encode_vector(CONTEXT, vector)
    blob = CONTEXT.serialize(vector.ciphertexts[0])
    meta = {"key_id": vector.key_id, "length": 10, "aggregated": False, "first": 0, "count": 1}
    padded = encode_frame(FrameKind.CIPHERTEXTS, CONTEXT.fingerprint, meta, [blob, blob])
    with pytest.raises(FrameError, match="more ciphertexts than its run"):
        decode_vector(CONTEXT, [padded])
    assert decode_vector(CONTEXT, [frame]).length == 10
