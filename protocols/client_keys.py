"""The client's key agreement (stage 1), the first half of the client state machine.

Threshold mode: the lead makes its key pair and the group key, every other holder
makes its share over the lead's public key; each deals Shamir shares of its secret to
the other holders, sealed for each alone.  Single-key mode: the key authority's key
arrives sealed.  Plaintext mode: a roll call.  Once all parts are in, the client
confirms the key id and an HMAC of the group key.  :mod:`protocols.client` adds the
mask agreement and the FedAvg rounds.
"""

from __future__ import annotations

from protocols.events import Aborted, KeyAgreed, Outgoing, Step
from protocols.machine import Machine, Randomness
from protocols.manifest import Manifest, Mode, Role
from protocols.messages import (
    Abort,
    KeyConfirm,
    KeyDelivery,
    KeygenStart,
    Message,
    PublicShare,
    Stage,
)
from protocols.session import (
    PLAINTEXT_GROUP_KEY,
    group_check,
    open_mapping,
    pack_mapping,
    plaintext_key_id,
    seal_context,
)
from protocols.states import CLIENT_OTHER_TARGETS, CLIENT_TARGETS, ClientState
from threshold_fl.crypto.keys import (
    JointPublicKey,
    PartyKeys,
    PublicKey,
    SecretKey,
    ShamirShare,
    combine_public_shares,
    lead_keygen,
    member_keygen,
    shamir_shares,
)
from threshold_fl.crypto.wire import (
    decode_public_key,
    decode_secret_key,
    decode_shamir_share,
    encode_public_key,
    encode_shamir_share,
)
from threshold_fl.errors import (
    ForgedMessage,
    MalformedMessage,
    StaleMessage,
)
from threshold_fl.identity import Identity, PartyId
from threshold_fl.sealing import GROUP_KEY_SIZE, open_from, seal_for

__all__ = ["ClientKeyAgreement", "ClientState"]

_DELIVERY_FIELDS = frozenset({"shamir", "group_key", "secret_key"})




C = ClientState


class ClientKeyAgreement(Machine[ClientState]):
    """Key material of the current epoch and the handlers that build it."""

    ROLE = Role.CLIENT
    TERMINAL = frozenset({C.FINISHED, C.ABORTED})
    TARGETS, OTHER_TARGETS = CLIENT_TARGETS, CLIENT_OTHER_TARGETS

    def __init__(self, manifest: Manifest, identity: Identity, randomness: Randomness) -> None:
        super().__init__(manifest, identity, randomness, C.IDLE)
        self._aggregator = manifest.aggregator.party_id
        self._step: tuple[Stage, int, int, int] = (Stage.SETUP, 0, 0, 0)
        self._seen: set[object] = set()
        self._holders: tuple[PartyId, ...] = ()
        self._keys: PartyKeys | None = None
        self._public_shares: dict[int, PublicKey] = {}
        self._held_shares: dict[int, ShamirShare] = {}  # dealer index -> my share of its key
        self._joint: JointPublicKey | None = None
        self._public_key: PublicKey | None = None  # what updates are encrypted under
        self._secret: SecretKey | None = None  # single-key mode only
        self._group_key: bytes | None = None
        self._key_id: str | None = None
        self._early_keys: list[Message] = []  # key messages that overtook their KeygenStart

    # -- key agreement ---------------------------------------------------------------------
    def _on_keygen_start(self, message: Message, now: float) -> Step:
        step = self._start_epoch(message, now)
        return self._replay(self._early_keys, step, now)

    def _on_early_key(self, message: Message, now: float) -> Step:
        """Keep a key message that overtook the KeygenStart of its epoch."""
        if message.header.stage is not Stage.KEYS or message.header.epoch <= self._step[1]:
            raise StaleMessage(f"{message.kind} for key epoch {message.header.epoch} is not "
                               f"for a newer epoch than {self._step[1]}; discarded")
        authority = self.manifest.key_authority
        dealers = (*self.manifest.client_ids, *((authority.party_id,) if authority else ()))
        self._require_sender(message, [p for p in dealers if p != self.me], "a key dealer")
        return self._keep_early(self._early_keys, message, 2 * len(dealers), "their epoch")

    def _start_epoch(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, KeygenStart)
        self._require_from_aggregator(message)
        if message.header.epoch <= self._step[1]:
            raise StaleMessage(f"key epoch {message.header.epoch} is not newer than mine")
        if message.body.threshold != self.manifest.threshold or not set(
            message.body.participants
        ) <= set(self.manifest.client_ids):
            raise ForgedMessage(
                "the key agreement names parties or a threshold not in the manifest"
            )
        self._heard(now)
        if self.me not in message.body.participants:
            return self._abort_locally("excluded from the new key epoch", notify=False)
        self._reset_keys(message)
        if self.manifest.mode is Mode.PLAINTEXT:
            self._group_key = PLAINTEXT_GROUP_KEY
            self._key_id = plaintext_key_id(self.manifest.session, self._step[1])
            return self._maybe_confirm()
        if self.manifest.mode is Mode.THRESHOLD and self._index == 1:
            self._group_key = self._randomness(GROUP_KEY_SIZE)
            return self._deal(lead_keygen(self.context, 1))
        return Step()

    def _reset_keys(self, message: Message) -> None:
        self.state = C.KEY_AGREEMENT
        self._step = message.header.step
        assert isinstance(message.body, KeygenStart)
        self._holders = message.body.participants
        self._keys = self._joint = self._public_key = self._secret = None
        self._group_key = self._key_id = None
        self._public_shares, self._held_shares = {}, {}
        self._seen = set()

    @property
    def _index(self) -> int:
        return self._holders.index(self.me) + 1

    def _index_of(self, party: str) -> int:
        return self._holders.index(PartyId(party)) + 1

    def _deal(self, keys: PartyKeys) -> Step:
        """Publish my public share and send each other holder its Shamir share of my key."""
        self._keys = keys
        self._public_shares[keys.index] = keys.public_share
        frame = encode_public_key(self.context, keys.public_share, party_index=keys.index)
        step = Step(sends=[self._send([self._aggregator], PublicShare(frame), self._step,
                                      addressed="*")])
        shares = shamir_shares(self.context, keys, len(self._holders), self.manifest.threshold)
        for holder in self._holders:
            if holder == self.me:
                continue
            fields = {"shamir": encode_shamir_share(self.context, shares[self._index_of(holder)])}
            if keys.index == 1:
                assert self._group_key is not None
                fields["group_key"] = self._group_key
            step.sends.append(self._deliver(holder, fields))
        return step.extend(self._maybe_confirm())

    def _deliver(self, holder: PartyId, fields: dict[str, bytes]) -> Outgoing:
        """A KeyDelivery sealed for ``holder`` alone, relayed by the aggregator."""
        header = self._header(holder, self._step)
        sealed = seal_for(
            self._identity, self._directory[holder], pack_mapping(fields),
            context=seal_context(header, "key-delivery"), nonce=self._randomness(12),
        )
        return self._send([self._aggregator], KeyDelivery(sealed), self._step, addressed=holder)

    def _on_public_share(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, PublicShare)
        if message.header.epoch > self._step[1]:
            return self._on_early_key(message, now)
        sender = message.header.sender
        self._require_step(message, self._step)
        contributors = self._key_contributors()
        self._require_sender(message, [p for p in contributors if p != self.me], "a key dealer")
        self._require_new(self._seen, ("share", sender), message)
        index, share = decode_public_key(self.context, message.body.key_frame)
        expected = self._index_of(sender) if self.manifest.mode is Mode.THRESHOLD else 0
        if index != expected:
            raise MalformedMessage(f"{sender!r} sent a public share for index {index}")
        self._seen.add(("share", sender))
        self._heard(now)
        if self.manifest.mode is Mode.SINGLE_KEY:
            self._public_key = share
            return self._maybe_confirm()
        self._public_shares[index] = share
        if index == 1 and self._keys is None:
            return self._deal(member_keygen(self.context, self._index, share))
        return self._maybe_confirm()

    def _key_contributors(self) -> tuple[PartyId, ...]:
        if self.manifest.key_authority is not None:
            return (self.manifest.key_authority.party_id,)
        return self._holders

    def _on_key_delivery(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, KeyDelivery)
        if message.header.epoch > self._step[1]:
            return self._on_early_key(message, now)
        sender = message.header.sender
        self._require_step(message, self._step)
        self._require_sender(message, [p for p in self._key_contributors() if p != self.me],
                             "a key dealer")
        self._require_new(self._seen, ("delivery", sender), message)
        plaintext = open_from(self._identity, self._directory[sender], message.body.sealed,
                              context=seal_context(message.header, "key-delivery"))
        fields = open_mapping(plaintext, _DELIVERY_FIELDS, "the key delivery")
        group_key = fields.get("group_key")
        if self.manifest.mode is Mode.SINGLE_KEY:
            secret = decode_secret_key(self.context, fields.get("secret_key", b""))
            self._seen.add(("delivery", sender))
            self._secret = secret
        else:
            share = self._held_share(sender, fields.get("shamir", b""))
            if (self._index_of(sender) == 1) != (group_key is not None):
                raise MalformedMessage("only the lead's key delivery carries the group key")
            self._seen.add(("delivery", sender))
            self._held_shares[share.dealer_index] = share
        if group_key is not None:
            if len(group_key) != GROUP_KEY_SIZE:
                raise MalformedMessage("the group key has the wrong size")
            self._group_key = group_key
        self._heard(now)
        return self._maybe_confirm()

    def _held_share(self, sender: PartyId, frame: bytes) -> ShamirShare:
        share = decode_shamir_share(self.context, frame)
        if (share.dealer_index, share.holder_index, share.parties, share.threshold) != (
            self._index_of(sender), self._index, len(self._holders), self.manifest.threshold
        ):
            raise MalformedMessage(f"{sender!r}'s Shamir share is for another sharing")
        return share

    def _maybe_confirm(self) -> Step:
        """Confirm the key once all of its parts are in (threshold: shares and group key)."""
        if self.state is not C.KEY_AGREEMENT or self._group_key is None:
            return Step()
        if self.manifest.mode is Mode.THRESHOLD:
            if self._keys is None or len(self._public_shares) < len(self._holders) or len(
                self._held_shares
            ) < len(self._holders) - 1:
                return Step()
            for dealer, share in self._held_shares.items():
                if share.dealer_public_id != self._public_shares[dealer].key_id:
                    return self._abort_locally(f"party {dealer}'s Shamir share is not of its key")
            self._joint = combine_public_shares(self.context, self._public_shares, 1)
            self._public_key, self._key_id = self._joint.key, self._joint.key_id
        elif self.manifest.mode is Mode.SINGLE_KEY:
            if self._public_key is None or self._secret is None:
                return Step()
            if self._secret.public_key_id != self._public_key.key_id:
                return self._abort_locally("the key authority's secret key does not match")
            self._key_id = self._public_key.key_id
        assert self._key_id is not None
        self.state = C.KEYS_CONFIRMED
        body = KeyConfirm(self._key_id, self._group_check())
        return Step(
            sends=self._sends([self._aggregator], body, self._step),
            events=[KeyAgreed(self._step[1], self._key_id, self._holders)],
        )

    def _group_check(self) -> str:
        assert self._group_key is not None
        return group_check(self._group_key, self.manifest.session, self._step[1])

    def _abort_locally(self, reason: str, *, notify: bool = True) -> Step:
        self.state = C.ABORTED
        sends = self._sends([self._aggregator], Abort(reason), self._step) if notify else []
        return Step(sends=sends, events=[Aborted(reason)])

    def _require_from_aggregator(self, message: Message) -> None:
        self._require_sender(message, [self._aggregator], "the aggregator")

    def _heard(self, now: float) -> None:
        self._deadline = now + self.manifest.timeouts.client_patience_s

