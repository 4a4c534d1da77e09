"""One key epoch's material at one client, and what each piece of it leads to.

Threshold mode: the lead makes its key pair and the group key, every other holder
makes its share over the lead's public key; each deals t-of-N Shamir shares of its
secret (on ring arrays, :func:`threshold_fl.crypto.threshold.deal`) to the other
holders and keeps its own; the shares a holder keeps add up to its threshold key.
Single-key mode: the key authority's public key and secret key
arrive.  Plaintext mode: nothing to agree but a roll call.  Once all parts are in,
the key id follows.  These are pure helpers: they check and keep decoded pieces and
say what follows; the client machine (:mod:`protocols.client`) checks headers, opens
seals, sends and moves between states.
"""

from __future__ import annotations

from dataclasses import dataclass

from protocols.machine import Randomness
from protocols.manifest import Manifest, Mode
from protocols.session import PLAINTEXT_GROUP_KEY, group_check, plaintext_key_id
from threshold_fl.arrays import U64Array
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.keys import (
    PartyKeys,
    PublicKey,
    SecretKey,
    combine_public_shares,
    lead_keygen,
    member_keygen,
)
from threshold_fl.crypto.noise import wipe
from threshold_fl.crypto.shares import KeyLimbs
from threshold_fl.crypto.threshold import ThresholdKey, deal, threshold_key
from threshold_fl.crypto.wire import (
    decode_key_share,
    decode_public_key,
    decode_secret_key,
    encode_key_share,
)
from threshold_fl.errors import MalformedMessage
from threshold_fl.identity import PartyId
from threshold_fl.sealing import GROUP_KEY_SIZE

__all__ = ["DELIVERY_FIELDS", "EpochKeys", "Mismatch"]

#: What a sealed KeyDelivery may hold.
DELIVERY_FIELDS = frozenset({"shamir", "group_key", "secret_key"})


@dataclass(frozen=True)
class Mismatch:
    """All parts are in but do not fit together: leave the session."""

    reason: str


class EpochKeys:
    """The key material of one epoch at client ``me`` (epoch 0: none agreed yet)."""

    def __init__(
        self, manifest: Manifest, me: PartyId, epoch: int = 0, holders: tuple[PartyId, ...] = ()
    ) -> None:
        self._mode = manifest.mode
        self._session = manifest.session
        self._threshold = manifest.threshold
        self.me = me
        self.epoch = epoch
        self.holders = holders
        authority = manifest.key_authority
        #: Who sends this client parts of the key: the authority, or every holder.
        self.contributors = (authority.party_id,) if authority is not None else holders
        self.dealt = False  # threshold: my key is dealt (its secret is not kept)
        self.public_shares: dict[int, PublicKey] = {}
        # dealer index -> (its public share's id, my Shamir share of its key), mine included
        self.held_shares: dict[int, tuple[str, dict[int, U64Array]]] = {}
        self.threshold_key: ThresholdKey | None = None  # the sum of held_shares, once in
        self.noise_seed: bytes | None = None  # threshold: keys this epoch's share noise
        self.public_key: PublicKey | None = None  # what updates are encrypted under
        self.secret: SecretKey | None = None  # single-key mode only
        self.group_key: bytes | None = None
        self.key_id: str | None = None
        # What was taken, so that a second copy is refused (one set per kind).
        self.shares_from: set[PartyId] = set()  # senders of a PublicShare
        self.deliveries_from: set[PartyId] = set()  # senders of a KeyDelivery

    # -- who is who ------------------------------------------------------------------------
    @property
    def index(self) -> int:
        return self.index_of(self.me)

    def index_of(self, party: str) -> int:
        return self.holders.index(PartyId(party)) + 1

    def group_check(self) -> str:
        assert self.group_key is not None
        return group_check(self.group_key, self._session, self.epoch)

    def matches(self, key_id: str, check: str) -> bool:
        """Whether an announcement names this epoch's key and group key."""
        return key_id == self.key_id and check == self.group_check()

    # -- building the key ------------------------------------------------------------------
    def start(self, context: CkksContext, randomness: Randomness) -> PartyKeys | None:
        """Begin the epoch: plaintext mode knows its key id at once; the threshold lead
        makes the group key and its key pair, which it returns to deal now."""
        if self._mode is Mode.PLAINTEXT:
            self.group_key = PLAINTEXT_GROUP_KEY
            self.key_id = plaintext_key_id(self._session, self.epoch)
            return None
        if self._mode is Mode.THRESHOLD:
            self.noise_seed = randomness(32)
            if self.index == 1:
                self.group_key = randomness(GROUP_KEY_SIZE)
                return lead_keygen(context, 1)
        return None

    def deal(self, context: CkksContext, own: PartyKeys) -> dict[PartyId, dict[str, bytes]]:
        """Take my own key pair; the delivery for each other holder: its Shamir share of
        my secret and, from the lead, the group key.  I keep my own share (not the secret:
        the caller drops it)."""
        dealt: dict[int, dict[int, U64Array]] = {}
        try:  # the others' shares are wiped however this ends, mine too if it fails
            with KeyLimbs(context, own.secret.native) as secret:
                dealt = deal(secret, len(self.holders), self._threshold)
            deliveries: dict[PartyId, dict[str, bytes]] = {}
            for holder in self.holders:
                if holder == self.me:
                    continue
                fields = {"shamir": encode_key_share(
                    context, dealer_index=own.index, holder_index=self.index_of(holder),
                    parties=len(self.holders), threshold=self._threshold,
                    dealer_public_id=own.public_share.key_id,
                    limbs=dealt[self.index_of(holder)])}
                if own.index == 1:
                    assert self.group_key is not None
                    fields["group_key"] = self.group_key
                deliveries[holder] = fields
            mine = dealt.pop(own.index)
        finally:
            _wipe_limbs(*dealt.values())
        self.dealt = True
        self.public_shares[own.index] = own.public_share
        self.held_shares[own.index] = (own.public_share.key_id, mine)
        return deliveries

    def take_public_share(self, context: CkksContext, sender: PartyId, frame: bytes) -> None:
        """Check and keep ``sender``'s public share (single-key: the public key)."""
        index, share = decode_public_key(context, frame)
        expected = self.index_of(sender) if self._mode is Mode.THRESHOLD else 0
        if index != expected:
            raise MalformedMessage(f"{sender!r} sent a public share for index {index}")
        self.shares_from.add(sender)
        if self._mode is Mode.SINGLE_KEY:
            self.public_key = share
        else:
            self.public_shares[index] = share

    def member_keys(self, context: CkksContext) -> PartyKeys | None:
        """My key pair over the lead's public share, once that is in and I have not dealt."""
        lead = self.public_shares.get(1)
        if lead is None or self.dealt:
            return None
        return member_keygen(context, self.index, lead)

    def take_delivery(
        self, context: CkksContext, sender: PartyId, fields: dict[str, bytes]
    ) -> None:
        """Check and keep an opened KeyDelivery: a Shamir share or the secret key, and
        the group key from the lead (or the authority)."""
        group_key = fields.get("group_key")
        if self._mode is Mode.SINGLE_KEY:
            secret = decode_secret_key(context, fields.get("secret_key", b""))
            _check_group_key(group_key)
            self.secret = secret
        else:
            if (self.index_of(sender) == 1) != (group_key is not None):
                raise MalformedMessage("only the lead's key delivery carries the group key")
            _check_group_key(group_key)
            dealer_id, limbs = self._held_share(context, sender, fields.get("shamir", b""))
            self.held_shares[self.index_of(sender)] = (dealer_id, limbs)
        self.deliveries_from.add(sender)
        if group_key is not None:
            self.group_key = group_key

    def _held_share(self, context: CkksContext, sender: PartyId, frame: bytes
                    ) -> tuple[str, dict[int, U64Array]]:
        meta, limbs = decode_key_share(context, frame)
        if (meta["dealer_index"], meta["holder_index"], meta["parties"], meta["threshold"]) != (
            self.index_of(sender), self.index, len(self.holders), self._threshold
        ):
            _wipe_limbs(limbs)
            raise MalformedMessage(f"{sender!r}'s Shamir share is for another sharing")
        return meta["dealer_public_id"], limbs

    def outcome(self, context: CkksContext) -> str | Mismatch | None:
        """The key id to confirm once all of its parts are in (threshold: shares and
        group key), a Mismatch if they do not fit together, None while some are missing."""
        if self.group_key is None:
            return None
        if self._mode is Mode.THRESHOLD:
            return self._joint_key(context)
        if self._mode is Mode.SINGLE_KEY:
            if self.public_key is None or self.secret is None:
                return None
            if self.secret.public_key_id != self.public_key.key_id:
                return Mismatch("the key authority's secret key does not match")
            self.key_id = self.public_key.key_id
        return self.key_id

    def _joint_key(self, context: CkksContext) -> str | Mismatch | None:
        if not self.dealt or len(self.public_shares) < len(self.holders) or len(
            self.held_shares
        ) < len(self.holders):
            return None
        for dealer, (dealer_id, _) in self.held_shares.items():
            if dealer_id != self.public_shares[dealer].key_id:
                return Mismatch(f"party {dealer}'s Shamir share is not of its key")
        joint = combine_public_shares(context, self.public_shares, 1)
        self.public_key, self.key_id = joint.key, joint.key_id
        self.threshold_key = threshold_key(
            self.index, [limbs for _, limbs in self.held_shares.values()])
        self._drop_held_shares()  # only their sum is kept
        return self.key_id

    # -- the end of the epoch --------------------------------------------------------------
    def wipe(self) -> None:
        """Zero and drop every secret of this epoch (it is over: replaced, finished or
        aborted); what is public stays.  OpenFHE's secret key can only be dropped."""
        if self.threshold_key is not None:
            self.threshold_key.wipe()
            self.threshold_key = None
        self._drop_held_shares()
        self.secret = None
        self.noise_seed = None
        self.group_key = None

    def _drop_held_shares(self) -> None:
        _wipe_limbs(*(limbs for _, limbs in self.held_shares.values()))
        self.held_shares = {}


def _wipe_limbs(*shares: dict[int, U64Array]) -> None:
    for limbs in shares:
        for limb in limbs.values():
            wipe(limb)


def _check_group_key(group_key: bytes | None) -> None:
    if group_key is not None and len(group_key) != GROUP_KEY_SIZE:
        raise MalformedMessage("the group key has the wrong size")
