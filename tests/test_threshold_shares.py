"""t-of-N decryption on ring arrays (threshold_fl.crypto.threshold), with real OpenFHE keys
and ciphertexts: Shamir-shared keys that any t parties interpolate, shares with
synchronised masks, a pad and deterministic full-width noise, blind fusion."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from crypto_helpers import Federation, aggregate, encrypted_inputs, make_federation

from threshold_fl.arrays import U64Array
from threshold_fl.crypto import context_for, lead_keygen, ntt, threshold_params
from threshold_fl.crypto import threshold as th
from threshold_fl.crypto.ring import BlobKind, RingBlob
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.crypto.shares import KeyLimbs, centred, decode_sums
from threshold_fl.errors import CryptoError, ParameterError
from threshold_fl.sealing import keyed_check

PARTIES, T = 5, 3
CONTEXT = context_for(threshold_params(PARTIES))
N = CONTEXT.ring.ring_dimension
SIGMA = 2.0 ** CONTEXT.params.decryption_noise_bits()
ROUNDING = ShareRounding.of(CONTEXT)  # shares and fused values travel rounded
MODULI = ROUNDING.moduli
GROUP = bytes(range(32))
# A chi-square statistic over 64 equiprobable bins: below 130 unless p < 1e-6 (df = 63).
_BINS, _CHI2_LIMIT = 64, 130.0


def uniform_mod(values: U64Array, q: int) -> bool:
    """Do *values* look uniform modulo q (64-bin chi-square and the mean)?"""
    flat = values.reshape(-1).astype(np.float64) / q
    counts = np.bincount(np.minimum((flat * _BINS).astype(int), _BINS - 1), minlength=_BINS)
    expected = flat.size / _BINS
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    return chi2 < _CHI2_LIMIT and abs(float(flat.mean()) - 0.5) < 6 / math.sqrt(12 * flat.size)


@pytest.fixture(scope="module")
def federation() -> Federation:
    return make_federation(CONTEXT, PARTIES)


@pytest.fixture(scope="module")
def keys(federation: Federation) -> Iterator[dict[int, th.ThresholdKey]]:
    secrets = [KeyLimbs(CONTEXT, party.secret.native) for party in federation.parties]
    dealt = [th.deal(secret, PARTIES, T) for secret in secrets]
    keys = {j: th.threshold_key(j, [shares[j] for shares in dealt])
            for j in range(1, PARTIES + 1)}
    yield keys
    for item in (*secrets, *keys.values()):
        item.wipe()


@pytest.fixture(scope="module")
def joint_secret(federation: Federation) -> dict[int, U64Array]:
    limbs: dict[int, U64Array] = {}
    for party in federation.parties:
        with KeyLimbs(CONTEXT, party.secret.native) as secret:
            for q, limb in secret.limbs.items():
                if q in limbs:
                    ntt.add_mod_into(limbs[q], limb, q)
                else:
                    limbs[q] = limb.copy()
    return limbs


@pytest.fixture(scope="module")
def aggregate_blobs(federation: Federation) -> tuple[list[RingBlob], npt.NDArray[Any]]:
    rng = np.random.default_rng(3)  # test data, not key material
    inputs = [rng.uniform(-1, 1, 3 * CONTEXT.values_per_ciphertext) for _ in range(3)]
    vector = aggregate(CONTEXT, federation.joint.key.key_id,
                       encrypted_inputs(federation, inputs))
    blobs = [CONTEXT.ring.parse(blob, BlobKind.CIPHERTEXT) for blob in vector.blobs()]
    return blobs, np.sum(inputs, axis=0)


def pair_keys(members: tuple[int, ...]) -> dict[int, dict[int, bytes]]:
    """Symmetric pairwise keys for the members (as the protocol derives from X25519)."""
    keys: dict[int, dict[int, bytes]] = {j: {} for j in members}
    for a, b in itertools.combinations(members, 2):
        keys[a][b] = keys[b][a] = bytes([a, b]) * 16
    return keys


def shares_of(keys: dict[int, th.ThresholdKey], blobs: list[RingBlob], dset: th.DecryptionSet,
              *, attempt: int = 0, seeds: dict[int, bytes] | None = None
              ) -> dict[int, U64Array]:
    c1 = np.stack([blob.elements[1] for blob in blobs])
    pairs = pair_keys(dset.members)
    return {j: th.decryption_shares(
        c1, ROUNDING, keys[j], dset, sigma=SIGMA,
        noise_seed=(seeds or {}).get(j, bytes([j]) * 32), pair_keys=pairs[j],
        group_key=GROUP if j == dset.pad_holder else None, attempt=attempt)
        for j in dset.members}


def c0_of(blobs: list[RingBlob]) -> U64Array:
    return np.stack([blob.elements[0] for blob in blobs])


def c1_of(blobs: list[RingBlob]) -> U64Array:
    return np.stack([blob.elements[1] for blob in blobs])


lifted = ROUNDING.lifted  # rounded shares or fused values back below q, coefficient form


# -- interpolation ------------------------------------------------------------------------------
def test_lagrange_weights_give_f_at_zero() -> None:
    q = CONTEXT.ring.moduli[0]
    coefficients = [int.from_bytes(os.urandom(8), "big") % q for _ in range(T)]
    def f(x: int) -> int:
        return sum(c * x**k for k, c in enumerate(coefficients)) % q
    for size in (T, T + 1, PARTIES):
        for members in itertools.combinations(range(1, PARTIES + 1), size):
            weights = th.lagrange_weights(members, q)
            assert sum(weights[j] * f(j) for j in members) % q == coefficients[0]


def test_any_t_of_the_parties_interpolate_the_joint_secret(
        keys: dict[int, th.ThresholdKey], joint_secret: dict[int, U64Array]) -> None:
    def interpolated(members: tuple[int, ...], q: int) -> U64Array:
        weights = th.lagrange_weights(members, q)
        total = np.zeros(N, dtype=np.uint64)
        for j in members:
            ntt.add_mod_into(total, ntt.mul_mod(keys[j].limb(q), np.full(N, weights[j],
                                                                      np.uint64), q), q)
        return total

    for q, secret in joint_secret.items():
        for size in (T, PARTIES):
            for members in itertools.combinations(range(1, PARTIES + 1), size):
                np.testing.assert_array_equal(interpolated(members, q), secret)
        # t - 1 parties interpolate something else: the degree t - 1 polynomial needs t
        assert not np.array_equal(interpolated((1, 2), q), secret)


def test_a_shamir_share_alone_is_uniform(federation: Federation) -> None:
    with KeyLimbs(CONTEXT, federation.parties[0].secret.native) as secret:
        dealt = th.deal(secret, PARTIES, T)
        for q, limb in dealt[2].items():
            assert uniform_mod(limb, q)
            assert not np.array_equal(limb, secret.limb(q))
        again = th.deal(secret, PARTIES, T)  # fresh coefficients each time
        assert not np.array_equal(dealt[2][CONTEXT.ring.moduli[0]],
                                  again[2][CONTEXT.ring.moduli[0]])


def test_dealing_wipes_its_random_coefficients(federation: Federation,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[U64Array] = []
    real = th.uniform_limbs

    def recorded(*args: Any) -> U64Array:
        made.append(real(*args))
        return made[-1]

    monkeypatch.setattr(th, "uniform_limbs", recorded)
    with KeyLimbs(CONTEXT, federation.parties[0].secret.native) as secret:
        th.deal(secret, PARTIES, T)
    assert len(made) == (T - 1) * len(CONTEXT.ring.moduli)
    assert all(not array.any() for array in made)


def test_secret_limbs_of_either_kind_name_themselves_and_are_zeros_after_use() -> None:
    q = CONTEXT.ring.moduli[0]
    with KeyLimbs(CONTEXT, lead_keygen(CONTEXT, 1).secret.native) as secret:
        with pytest.raises(CryptoError, match="the secret key has no limb modulo 7"):
            secret.limb(7)
        assert secret.limb(q).any()
    with th.ThresholdKey(1, {q: np.ones(N, dtype=np.uint64)}) as key:
        assert key.limb(q).all()
        with pytest.raises(CryptoError, match="the threshold key has no limb modulo 7"):
            key.limb(7)
    for limbs in (secret, key):
        assert all(not limb.any() for limb in limbs.limbs.values())


@pytest.mark.parametrize(("parties", "threshold"),
                         [(5, 2), (4, 2), (3, 4), (1, 1), (5, 0), (5, True)])
def test_sharings_without_an_honest_majority_are_refused(parties: int, threshold: int) -> None:
    key = th.ThresholdKey(1, {CONTEXT.ring.moduli[0]: np.zeros(N, dtype=np.uint64)})
    with pytest.raises(ParameterError, match=r"t-of-N sharing needs|must be an integer"):
        th.deal(key, parties, threshold)


# -- decryption -----------------------------------------------------------------------------------
@pytest.mark.parametrize("members", [(2, 4, 5), (1, 3, 5), (1, 2, 3, 4, 5)])
def test_a_set_of_t_or_more_decrypts_a_real_aggregate_blindly(
        keys: dict[int, th.ThresholdKey], aggregate_blobs: Any, members: tuple[int, ...]) -> None:
    blobs, expected = aggregate_blobs
    dset = th.DecryptionSet(members, T, b"round-1")
    fused = th.blind_fusion(c0_of(blobs), list(shares_of(keys, blobs, dset, attempt=2).values()),
                            ROUNDING)
    bound = CONTEXT.error_bound(len(members))
    values = decode_sums(CONTEXT, th.unpad(fused, GROUP, dset, 2, ROUNDING), expected.size,
                         coefficients=True)
    assert np.abs(values - expected).max() < bound
    # the aggregator's view: the pad hides the sum; the wrong attempt's pad leaves garbage
    for q_index, q in enumerate(MODULI):
        assert uniform_mod(lifted(fused)[:, q_index], q)
    wrong = decode_sums(CONTEXT, th.unpad(fused, GROUP, dset, 1, ROUNDING), expected.size,
                        coefficients=True)
    assert np.abs(wrong - expected).max() > 1e3


def test_an_incomplete_set_sums_to_uniform_values(keys: dict[int, th.ThresholdKey],
                                                  aggregate_blobs: Any) -> None:
    blobs, _ = aggregate_blobs
    dset = th.DecryptionSet((1, 2, 3), T, b"round-1")
    shares = shares_of(keys, blobs, dset)
    for missing in dset.members:
        partial = th.blind_fusion(c0_of(blobs), [s for j, s in shares.items() if j != missing],
                                  ROUNDING)
        for limb, q in enumerate(MODULI):
            assert uniform_mod(lifted(partial)[:, limb], q)


def _unmasked(share: U64Array, dset: th.DecryptionSet, index: int, c1: U64Array
              ) -> U64Array:
    """d_j - M_j in coefficient form: what a share of *c1* would be without the masks
    (the test knows the keys)."""
    out = lifted(share)
    for ct in range(share.shape[0]):
        mask = th.mask_limbs(dset, index, pair_keys(dset.members)[index],
                             th.ciphertext_id(c1[ct], ct), MODULI, N)
        for limb, q in enumerate(MODULI):
            out[ct, limb] = ntt.sub_mod(out[ct, limb], mask[limb], q)
    return out


def test_two_sets_shares_of_one_party_do_not_combine(keys: dict[int, th.ThresholdKey],
                                                     aggregate_blobs: Any) -> None:
    """The retry attack: party 2's weights in S = (1, 2, 3) and S' = (1, 2, 4) are -3 and
    -2, so 2 d(S) - 3 d(S') cancels its key and leaves 2 e - 3 e', small noise with a
    linear relation, without the masks; with them, values uniform modulo q."""
    blobs, _ = aggregate_blobs
    first, second = (th.DecryptionSet(m, T, b"round-1") for m in ((1, 2, 3), (1, 2, 4)))
    share_s = lifted(shares_of(keys, blobs, first)[2])
    share_t = lifted(shares_of(keys, blobs, second)[2])
    bare_s, bare_t = (_unmasked(shares_of(keys, blobs, dset)[2], dset, 2, c1_of(blobs))
                      for dset in (first, second))
    for limb, q in enumerate(MODULI):
        assert th.lagrange_weights(first.members, q)[2] == q - 3
        assert th.lagrange_weights(second.members, q)[2] == q - 2

        def combined(a: U64Array, b: U64Array, q: int = q) -> npt.NDArray[np.int64]:
            two, three = np.full(N, 2, np.uint64), np.full(N, 3, np.uint64)
            return centred(ntt.sub_mod(ntt.mul_mod(a, two, q), ntt.mul_mod(b, three, q), q), q)

        bare = combined(bare_s[0, limb], bare_t[0, limb])
        assert np.std(bare.astype(np.float64)) == pytest.approx(math.sqrt(13) * SIGMA, rel=0.05)
        masked = combined(share_s[0, limb], share_t[0, limb])
        assert uniform_mod(np.where(masked < 0, masked + q, masked).astype(np.uint64), q)


def test_an_exact_resend_is_identical_and_another_set_is_fresh(
        keys: dict[int, th.ThresholdKey], aggregate_blobs: Any) -> None:
    blobs, _ = aggregate_blobs
    dset = th.DecryptionSet((1, 2, 4), T, b"round-1")
    once, twice = shares_of(keys, blobs, dset)[2], shares_of(keys, blobs, dset)[2]
    np.testing.assert_array_equal(once, twice)
    other = th.DecryptionSet((1, 2, 4), T, b"round-2")
    fresh = _unmasked(shares_of(keys, blobs, other)[2], other, 2, c1_of(blobs))
    same = _unmasked(once, dset, 2, c1_of(blobs))
    # same key, c1 and weights: the difference is the noise difference, fresh per binding
    q = MODULI[0]
    difference = centred(ntt.sub_mod(fresh[0, 0], same[0, 0], q), q)
    assert np.std(difference.astype(np.float64)) == pytest.approx(math.sqrt(2) * SIGMA,
                                                                  rel=0.05)


def _share(keys: dict[int, th.ThresholdKey], c1: U64Array, dset: th.DecryptionSet, j: int,
           first: int = 0) -> U64Array:
    return th.decryption_shares(
        c1, ROUNDING, keys[j], dset, sigma=SIGMA, noise_seed=bytes([j]) * 32,
        pair_keys=pair_keys(dset.members)[j],
        group_key=GROUP if j == dset.pad_holder else None, attempt=1, first=first)


def test_a_share_does_not_depend_on_how_the_aggregate_is_split(
        keys: dict[int, th.ThresholdKey], aggregate_blobs: Any) -> None:
    """Masks, noise and pad are keyed to each ciphertext (its index and c1), not to the
    message that carries it: an aggregator that splits the aggregate another way gets
    the very same shares, never fresh noise for the same ciphertext."""
    blobs, _ = aggregate_blobs
    c1 = c1_of(blobs)
    assert c1.shape[0] >= 2
    dset = th.DecryptionSet((1, 2, 4), T, b"round-1")
    for j in dset.members:  # the pad holder (1) too
        whole = _share(keys, c1, dset, j)
        np.testing.assert_array_equal(_share(keys, c1[1:], dset, j, first=1), whole[1:])
        np.testing.assert_array_equal(_share(keys, c1[:1], dset, j), whole[:1])


def test_another_c1_at_the_same_index_gets_fresh_noise(
        keys: dict[int, th.ThresholdKey], aggregate_blobs: Any) -> None:
    """The same noise on two different c1 would give s * (c1 - c1') away: a changed c1 at
    the same index draws other noise."""
    blobs, _ = aggregate_blobs
    c1 = c1_of(blobs)
    changed = c1.copy()
    changed[0] = c1[1]  # a valid c1, not the one at index 0
    dset = th.DecryptionSet((2, 3, 5), T, b"round-1")
    q, j = MODULI[0], 3
    weight = np.full(N, th.lagrange_weights(dset.members, q)[j], np.uint64)

    def noise(c1s: U64Array) -> npt.NDArray[np.int64]:
        share = _unmasked(_share(keys, c1s, dset, j), dset, j, c1s)
        exact = ntt.tables_for(N, q).inverse(ntt.mul_mod(
            c1s[0, 0], ntt.mul_mod(keys[j].limb(q), weight, q), q))
        return centred(ntt.sub_mod(share[0, 0], exact, q), q)

    difference = (noise(changed) - noise(c1)).astype(np.float64)
    assert np.std(difference) == pytest.approx(math.sqrt(2) * SIGMA, rel=0.05)


def test_each_share_carries_full_width_noise_after_the_weighting(
        keys: dict[int, th.ThresholdKey], aggregate_blobs: Any) -> None:
    blobs, _ = aggregate_blobs
    dset = th.DecryptionSet((3, 4, 5), T, b"round-1")
    share = _unmasked(shares_of(keys, blobs, dset)[4], dset, 4, c1_of(blobs))
    noise = []
    for ct, blob in enumerate(blobs):
        for limb, q in enumerate(MODULI):
            weight = np.full(N, th.lagrange_weights(dset.members, q)[4], np.uint64)
            exact = ntt.tables_for(N, q).inverse(ntt.mul_mod(
                blob.elements[1, limb], ntt.mul_mod(keys[4].limb(q), weight, q), q))
            noise.append(centred(ntt.sub_mod(share[ct, limb], exact, q), q))
    width = float(np.std(np.concatenate(noise).astype(np.float64)))
    assert width == pytest.approx(SIGMA, rel=0.02)
    assert abs(float(np.mean(np.concatenate(noise)))) < 0.05 * SIGMA


# -- the building blocks and their refusals --------------------------------------------------------
def test_uniform_limbs_are_keyed_reduced_and_uniform() -> None:
    moduli = CONTEXT.ring.moduli
    one, again = (th.uniform_limbs(b"k" * 32, moduli, N) for _ in range(2))
    np.testing.assert_array_equal(one, again)
    assert not np.array_equal(one, th.uniform_limbs(b"j" * 32, moduli, N))
    for limb, q in enumerate(moduli):
        assert int(one[limb].max()) < q and uniform_mod(one[limb], q)


def test_derived_keys_separate_labels_and_tuples() -> None:
    secret = bytes(32)
    keys = {th.derive_key(secret, "mask", b"ab", b"c"), th.derive_key(secret, "mask", b"a", b"bc"),
            th.derive_key(secret, "pad", b"ab", b"c"), th.derive_key(bytes([1]) * 32, "mask",
                                                                   b"ab", b"c")}
    assert len(keys) == 4
    with pytest.raises(ParameterError, match="at least 16 bytes"):
        th.derive_key(b"short", "mask")


def test_derived_keys_and_keyed_checks_keep_their_values() -> None:
    """Both are sealing.keyed_mac now; the values parties derive must not change (known
    answers from before, and the formulas spelled out with hmac)."""
    secret, parts = bytes(range(32)), (b"ab", b"", b"c")
    key = th.derive_key(secret, "mask", *parts)
    assert key.hex() == "7ac83c682837d2e513998898110b6f62996cb324140104fc03422ef6b5af0ecf"
    head = b"threshold-fl/mask"
    assert key == hmac.new(secret, len(head).to_bytes(4, "big") + head + b"".join(
        len(p).to_bytes(4, "big") + p for p in parts), hashlib.sha256).digest()
    check = keyed_check(secret, "group-check", b"session", b"7")
    assert check == "9423d78d0c530f77ef586972393fb886568f815e99489ee591a5c20037c3a520"
    assert check == hmac.new(secret, b"group-check" + b"".join(
        len(p).to_bytes(8, "big") + p for p in (b"session", b"7")), hashlib.sha256).hexdigest()


@pytest.mark.parametrize(("members", "problem"), [
    ((1, 2), "at least t=3 members"),
    ((3, 1, 2), "increasing order"),
    ((1, 1, 2), "increasing order"),
    ((0, 1, 2), "increasing order"),
    ([1, 2, 3], "a tuple of party indices"),
])
def test_bad_sets_are_refused(members: Any, problem: str) -> None:
    with pytest.raises(ParameterError, match=problem):
        th.DecryptionSet(members, T, b"x")


def test_shares_refuse_a_wrong_pad_holder_or_a_missing_pair_key(
        keys: dict[int, th.ThresholdKey], aggregate_blobs: Any) -> None:
    blobs, _ = aggregate_blobs
    c1, moduli = np.stack([b.elements[1] for b in blobs]), MODULI
    dset = th.DecryptionSet((1, 2, 3), T, b"x")
    pairs = pair_keys(dset.members)
    with pytest.raises(ParameterError, match="first member pads"):
        th.decryption_shares(c1, ROUNDING, keys[2], dset, sigma=SIGMA, noise_seed=bytes(32),
                             pair_keys=pairs[2], group_key=GROUP)
    with pytest.raises(ParameterError, match="no pairwise key with party 3"):
        th.decryption_shares(c1, ROUNDING, keys[2], dset, sigma=SIGMA, noise_seed=bytes(32),
                             pair_keys={1: pairs[2][1]})
    with pytest.raises(ParameterError, match="party 4 is not in the decryption set"):
        th.mask_limbs(dset, 4, pairs[1], th.ciphertext_id(c1[0], 0), moduli, N)


def test_the_self_test_passes_and_catches_a_wrong_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    assert th.threshold_kit(CONTEXT).sigma == SIGMA
    fresh = context_for(threshold_params(PARTIES))
    monkeypatch.setattr(th, "_KITS", {})
    real = th.lagrange_weights

    def off_by_one(members: Any, q: int) -> dict[int, int]:
        return {j: (w + 1) % q for j, w in real(members, q).items()}

    monkeypatch.setattr(th, "lagrange_weights", off_by_one)
    with pytest.raises(CryptoError, match="Lagrange sum of set"):
        th.threshold_kit(fresh)
    with pytest.raises(CryptoError, match="threshold mode cannot run here"):
        th.threshold_kit(fresh)  # the failure is kept
