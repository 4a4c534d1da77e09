"""Key material: single-key pairs, threshold key agreement and Shamir recovery.

Threshold keys follow OpenFHE's star topology: the lead runs ``KeyGen``, every
other party runs ``MultipartyKeyGen(pk_lead, False, True)`` (its own share over
the lead's public randomness) and the joint key is ``MultiAddPubKeys`` of all
shares.  Every object carries ids (hashes) so mixing keys fails loudly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openfhe

from threshold_fl.crypto.context import CkksContext, sha256_hex
from threshold_fl.errors import (
    CryptoError,
    InsufficientSharesError,
    KeyMismatchError,
    ParameterError,
)

__all__ = [
    "JointPublicKey",
    "KeyPair",
    "PartyKeys",
    "PublicKey",
    "SecretKey",
    "ShamirShare",
    "ThresholdSecret",
    "combine_public_shares",
    "generate_keypair",
    "joint_key_id",
    "lead_keygen",
    "member_keygen",
    "recover_secret",
    "shamir_shares",
]

# Recovered keys are checked by decrypting a probe encrypted under the dealer's
# public share; a wrong key decodes to noise of the size of the modulus.
_PROBE_TOLERANCE = 1e-3


@dataclass(frozen=True, eq=False)
class PublicKey:
    """A CKKS public key: a single key, one party's share, or the joint key."""

    params_fingerprint: str
    key_id: str  # SHA-256 of the serialised key
    native: Any = field(repr=False)

    @classmethod
    def from_native(cls, context: CkksContext, native: Any) -> PublicKey:
        return cls(context.fingerprint, sha256_hex(context.serialize(native)), native)


@dataclass(frozen=True, eq=False)
class SecretKey:
    """A CKKS secret key (or one party's secret share); never leaves its owner
    except as Shamir shares or, in single-key mode, pairwise-encrypted."""

    params_fingerprint: str
    public_key_id: str  # id of the matching public key or public share
    native: Any = field(repr=False)


@dataclass(frozen=True, eq=False)
class KeyPair:
    public: PublicKey
    secret: SecretKey


@dataclass(frozen=True, eq=False)
class PartyKeys:
    """One party's threshold key material before the joint key is known."""

    index: int  # 1-based, as OpenFHE's Shamir sharing numbers parties
    public_share: PublicKey
    secret: SecretKey


@dataclass(frozen=True, eq=False)
class JointPublicKey:
    """The joint public key and which party contributed which share."""

    key: PublicKey
    lead_index: int
    share_ids: Mapping[int, str]  # party index -> public share key_id

    @property
    def key_id(self) -> str:
        return self.key.key_id

    @property
    def party_indices(self) -> tuple[int, ...]:
        return tuple(sorted(self.share_ids))

    def bind(self, party: PartyKeys) -> ThresholdSecret:
        """Attach a party's secret share to this joint key (checked)."""
        expected = self.share_ids.get(party.index)
        if expected != party.public_share.key_id:
            raise KeyMismatchError(
                f"party {party.index}'s key share is not part of joint key {self.key_id[:16]}; "
                "rerun key agreement"
            )
        return ThresholdSecret(party.index, self.key_id, party.secret)


@dataclass(frozen=True, eq=False)
class ThresholdSecret:
    """A secret share bound to the joint key it decrypts for."""

    index: int
    joint_key_id: str
    secret: SecretKey


@dataclass(frozen=True, eq=False)
class ShamirShare:
    """Holder ``holder_index``'s Shamir share of dealer ``dealer_index``'s secret."""

    dealer_index: int
    holder_index: int
    parties: int
    threshold: int
    dealer_public_id: str  # key_id of the dealer's public share
    params_fingerprint: str
    polynomial: Any = field(repr=False)


# -- single-key mode ---------------------------------------------------------
def generate_keypair(context: CkksContext) -> KeyPair:
    """A fresh key pair (single-key mode: the key authority runs this)."""
    native = context.native.KeyGen()
    public = PublicKey.from_native(context, native.publicKey)
    return KeyPair(public, SecretKey(context.fingerprint, public.key_id, native.secretKey))


# -- threshold key agreement ---------------------------------------------------
def lead_keygen(context: CkksContext, index: int) -> PartyKeys:
    """The lead's key pair; its public key carries the randomness all shares use."""
    _check_index(index)
    pair = generate_keypair(context)
    return PartyKeys(index, pair.public, pair.secret)


def member_keygen(context: CkksContext, index: int, lead_public: PublicKey) -> PartyKeys:
    """A non-lead party's share over the lead's public key (fresh star variant)."""
    _check_index(index)
    context.check_fingerprint(lead_public.params_fingerprint, "the lead's public key")
    native = context.native.MultipartyKeyGen(lead_public.native, False, True)
    public = PublicKey.from_native(context, native.publicKey)
    return PartyKeys(index, public, SecretKey(context.fingerprint, public.key_id, native.secretKey))


def combine_public_shares(
    context: CkksContext, shares: Mapping[int, PublicKey], lead_index: int
) -> JointPublicKey:
    """Sum every party's public share into the joint key (each party does this itself)."""
    if lead_index not in shares:
        raise ParameterError(f"the lead's share (party {lead_index}) is missing")
    for index, share in shares.items():
        _check_index(index)
        context.check_fingerprint(share.params_fingerprint, f"party {index}'s public share")
    joint = shares[lead_index].native
    for index in sorted(shares):
        if index != lead_index:
            joint = context.native.MultiAddPubKeys(joint, shares[index].native, "")
    share_ids = {index: share.key_id for index, share in shares.items()}
    joint_id = joint_key_id(lead_index, share_ids)
    return JointPublicKey(PublicKey(context.fingerprint, joint_id, joint), lead_index, share_ids)


def joint_key_id(lead_index: int, share_ids: Mapping[int, str]) -> str:
    """The joint key's id: a commitment to its shares.

    OpenFHE does not serialise a sum of keys canonically (the bytes depend on whether
    the shares were deserialised), so hashing the joint key's bytes would give parties
    different ids for the same key.
    """
    return sha256_hex(
        b"threshold-fl/joint-key/v1",
        str(lead_index).encode(),
        *(f"{index}:{share_ids[index]}".encode() for index in sorted(share_ids)),
    )


# -- dropout recovery --------------------------------------------------------
def shamir_shares(
    context: CkksContext, party: PartyKeys, parties: int, threshold: int
) -> dict[int, ShamirShare]:
    """Split a party's secret into t-of-N Shamir shares, one per other party."""
    _check_threshold(parties, threshold)
    if not 1 <= party.index <= parties:
        raise ParameterError(f"party index {party.index} is outside 1..{parties}")
    polys = context.native.ShareKeys(party.secret.native, parties, threshold, party.index, "shamir")
    return {
        holder: ShamirShare(
            party.index,
            holder,
            parties,
            threshold,
            party.public_share.key_id,
            context.fingerprint,
            polynomial,
        )
        for holder, polynomial in polys.items()
    }


def recover_secret(
    context: CkksContext, shares: Iterable[ShamirShare], dealer_public: PublicKey
) -> SecretKey:
    """Rebuild a dropped party's secret from at least t holders' shares.

    The result is checked against the dealer's public share, so corrupt or
    mixed-up shares raise instead of yielding a wrong key.
    """
    chosen = _validated_shares(context, list(shares), dealer_public)
    first = chosen[0]
    recovered = openfhe.PrivateKey(context.native)  # PrivateKey() without cc segfaults
    try:
        context.native.RecoverSharedKey(
            recovered,
            {s.holder_index: s.polynomial for s in chosen},
            first.parties,
            first.threshold,
            "shamir",
        )
    except RuntimeError as exc:
        raise CryptoError(
            f"OpenFHE could not recover party {first.dealer_index}'s key: {exc}"
        ) from None
    secret = SecretKey(context.fingerprint, dealer_public.key_id, recovered)
    _verify_key_pair(context, dealer_public, secret, first.dealer_index)
    return secret


def _validated_shares(
    context: CkksContext, shares: list[ShamirShare], dealer_public: PublicKey
) -> list[ShamirShare]:
    if not shares:
        raise InsufficientSharesError("no Shamir shares were given; collect at least t of them")
    first = shares[0]
    for share in shares:
        context.check_fingerprint(share.params_fingerprint, f"holder {share.holder_index}'s share")
        if (share.dealer_index, share.parties, share.threshold, share.dealer_public_id) != (
            first.dealer_index,
            first.parties,
            first.threshold,
            dealer_public.key_id,
        ):
            raise KeyMismatchError(
                f"holder {share.holder_index}'s share belongs to another key or sharing "
                f"(dealer {share.dealer_index}, t={share.threshold}, N={share.parties}); "
                f"expected shares of party {first.dealer_index}'s key {dealer_public.key_id[:16]}"
            )
    holders = [share.holder_index for share in shares]
    if len(set(holders)) != len(holders):
        raise KeyMismatchError(f"duplicate Shamir share holders in {sorted(holders)}")
    if len(shares) < first.threshold:
        raise InsufficientSharesError(
            f"recovering party {first.dealer_index}'s key needs {first.threshold} shares, "
            f"got {len(shares)} (holders {sorted(holders)}); wait for more survivors or abort"
        )
    return sorted(shares, key=lambda share: share.holder_index)[: first.threshold]


def _verify_key_pair(
    context: CkksContext, public: PublicKey, secret: SecretKey, index: int
) -> None:
    probe = np.linspace(-0.5, 0.5, 16, dtype=np.float64)
    ciphertext = context.native.Encrypt(public.native, context.encode(probe))
    decoded = context.decode(context.native.Decrypt(secret.native, ciphertext), probe.size)
    if not np.all(np.abs(decoded - probe) < _PROBE_TOLERANCE):
        raise KeyMismatchError(
            f"the shares do not reconstruct party {index}'s key: at least one share is corrupt "
            "or from another key; ask other holders for their shares"
        )


# -- checks --------------------------------------------------------------------
def _check_index(index: int) -> None:
    if not isinstance(index, int) or isinstance(index, bool) or index < 1:
        raise ParameterError(f"party indices are integers from 1, got {index!r}")


def _check_threshold(parties: int, threshold: int) -> None:
    if parties < 2:
        raise ParameterError(f"Shamir sharing needs at least 2 parties, got {parties}")
    if not parties / 2 < threshold <= parties:
        raise ParameterError(
            f"threshold t={threshold} must satisfy N/2 < t <= N (N={parties}); "
            "OpenFHE's Shamir recovery requires an honest majority"
        )
