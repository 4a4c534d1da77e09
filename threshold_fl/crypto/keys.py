"""Key material: single-key pairs and threshold key agreement.

Threshold keys follow OpenFHE's star topology: the lead runs ``KeyGen``, every
other party runs ``MultipartyKeyGen(pk_lead, False, True)`` (its own share over
the lead's public randomness) and the joint key is ``MultiAddPubKeys`` of all
shares.  Every object carries ids (hashes) so mixing keys fails loudly.  For t-of-N
decryption each party deals t-of-N Shamir shares of its secret's ring arrays
(:mod:`threshold_fl.crypto.threshold`); no party ever rebuilds another's secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from threshold_fl.crypto.context import CkksContext, sha256_hex
from threshold_fl.errors import KeyMismatchError, ParameterError

__all__ = [
    "JointPublicKey",
    "KeyPair",
    "PartyKeys",
    "PublicKey",
    "SecretKey",
    "ThresholdSecret",
    "combine_public_shares",
    "generate_keypair",
    "joint_key_id",
    "lead_keygen",
    "member_keygen",
]


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
    except as t-of-N Shamir shares of its ring arrays (threshold.deal) or, in
    single-key mode, pairwise-encrypted."""

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

    index: int  # 1-based: the party's Shamir evaluation point (threshold.deal)
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


# -- checks --------------------------------------------------------------------
def _check_index(index: int) -> None:
    if not isinstance(index, int) or isinstance(index, bool) or index < 1:
        raise ParameterError(f"party indices are integers from 1, got {index!r}")

