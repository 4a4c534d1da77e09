"""A client's side of one joint decryption: partial decryptions and key recovery.

Holds the aggregate being decrypted, one partial decryption per key holder (never
two), and, for a holder that vanished, the Shamir shares of its key until ``t`` of
them rebuild it.  A recovered key is used for this one aggregate and dropped; the
aggregator rotates keys before the next round.
"""

from __future__ import annotations

from collections.abc import Mapping

from threshold_fl.arrays import FloatArray
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.keys import (
    JointPublicKey,
    PublicKey,
    ShamirShare,
    ThresholdSecret,
    recover_secret,
)
from threshold_fl.crypto.vectors import (
    EncryptedVector,
    PartialDecryption,
    fuse_partial_decryptions,
    partial_decrypt,
)
from threshold_fl.crypto.wire import decode_partial_decryption
from threshold_fl.errors import DuplicateMessage, MalformedMessage

__all__ = ["JointDecryption"]


class JointDecryption:
    """Collects every key holder's partial decryption of one aggregate."""

    def __init__(
        self,
        context: CkksContext,
        joint: JointPublicKey,
        vector: EncryptedVector,
        threshold: int,
    ) -> None:
        self._context = context
        self._joint = joint
        self.vector = vector
        self._threshold = threshold
        self.partials: dict[int, PartialDecryption] = {}
        self._recovery_shares: dict[int, dict[int, ShamirShare]] = {}
        self.recovering: set[int] = set()  # holders whose key this client rebuilds

    @property
    def digest(self) -> str:
        return self.vector.digest

    @property
    def complete(self) -> bool:
        return set(self.partials) == set(self._joint.party_indices)

    def own(self, secret: ThresholdSecret) -> PartialDecryption:
        """This client's partial decryption (the lead's carries the c0 term)."""
        partial = partial_decrypt(
            self._context, secret, self.vector, lead=secret.index == self._joint.lead_index
        )
        self.partials[secret.index] = partial
        return partial

    def check_new(self, index: int) -> None:
        if index not in self._joint.party_indices:
            raise MalformedMessage(f"party index {index} holds no share of the joint key")
        if index in self.partials:
            raise DuplicateMessage(
                f"a second partial decryption for party {index}: one per party per ciphertext"
            )

    def add(self, index: int, frames: list[bytes]) -> None:
        """Decode and check a peer's partial decryption, then keep it."""
        self.check_new(index)
        partial = decode_partial_decryption(self._context, frames)
        if (
            partial.party_index != index
            or partial.lead != (index == self._joint.lead_index)
            or partial.vector_digest != self.digest
            or partial.joint_key_id != self._joint.key_id
            or partial.length != self.vector.length
            or len(partial.shares) != len(self.vector.ciphertexts)
        ):
            raise MalformedMessage(
                f"the partial decryption for party {index} is for another party, key or "
                "aggregate"
            )
        self.partials[index] = partial

    def fuse(self) -> FloatArray:
        return fuse_partial_decryptions(
            self._context, self._joint, list(self.partials.values()), vector_digest=self.digest
        )

    # -- recovery of a vanished holder's key ------------------------------------------------
    def try_recover(
        self, dealer: int, public_shares: Mapping[int, PublicKey], share: ShamirShare
    ) -> PartialDecryption | None:
        """Add ``share``; once ``t`` shares are in and this client is the recoverer,
        rebuild ``dealer``'s key and decrypt on its behalf.

        All or nothing: if the shares do not rebuild the key, ``share`` is not kept
        and the error propagates (the message that carried it is rejected).
        """
        held = self._recovery_shares.get(dealer, {})
        if share.holder_index in held:
            raise DuplicateMessage(
                f"a second Shamir share of party {dealer}'s key from holder "
                f"{share.holder_index}"
            )
        candidate = {**held, share.holder_index: share}
        if dealer not in self.recovering or dealer in self.partials or (
            len(candidate) < self._threshold
        ):
            self._recovery_shares[dealer] = candidate
            return None
        secret = recover_secret(self._context, candidate.values(), public_shares[dealer])
        self._recovery_shares[dealer] = candidate
        return self.own(ThresholdSecret(dealer, self._joint.key_id, secret))
