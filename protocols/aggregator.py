"""The aggregator's state machine: it coordinates, relays and sums, and never decrypts.

It holds no secret key share, no Shamir share and no group key: key deliveries pass
through it sealed, and the decryption shares it fuses are masked and padded, so the
fused result is still unreadable to it.  It
sees the plaintext part of each update (the coordinates the mask leaves clear)
and the FedAvg weights; each client is told only its own weight, and applies it
before encrypting, so the aggregator's sum is additions only.

Dropouts are found at deadlines (or when a client says it is leaving): the
culprits are dropped and the stage goes on without them: key agreement restarts,
uploads are redone by the survivors (so the weights stay exact), missing partial
decryptions are retried by another set of t key holders (blind fusion,
:mod:`protocols.fusion`; nobody's key is rebuilt), and keys are rotated before the
decryption budget of the noise flooding runs out.  Below ``t`` survivors the session
aborts and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from protocols.deadlines import key_agreement_culprits, upload_culprits
from protocols.events import (
    Aborted,
    Finished,
    KeyAgreed,
    MaskAgreed,
    Outgoing,
    PartyDropped,
    RoundCompleted,
    Step,
)
from protocols.fusion import BlindDecryption, QueryBudget, choose_set
from protocols.ledger import StepLedger
from protocols.machine import Handler, Machine, Randomness
from protocols.manifest import Manifest, Mode, Role
from protocols.messages import (
    Abort,
    Aggregate,
    DecryptionShare,
    DecryptRequest,
    Fused,
    Hello,
    KeyConfirm,
    KeyDelivery,
    KeygenStart,
    MaskConfirm,
    MaskStart,
    Message,
    PublicShare,
    RoundDone,
    RoundStart,
    SensitivityUpload,
    Stage,
    UpdateUpload,
)
from protocols.messages import Finished as FinishedBody
from protocols.protection import (
    ProtectedSum,
    checked_weights,
    decode_plain,
    encode_plain,
)
from protocols.session import plaintext_key_id
from protocols.states import (
    AGGREGATOR_OTHER_TARGETS,
    AGGREGATOR_STAGES,
    AGGREGATOR_TARGETS,
    AggregatorState,
)
from threshold_fl.arrays import FloatArray
from threshold_fl.crypto.keys import PublicKey, combine_public_shares
from threshold_fl.crypto.vectors import ciphertext_count
from threshold_fl.crypto.wire import decode_public_key
from threshold_fl.errors import ForgedMessage, MalformedMessage, ParameterError, UnexpectedMessage
from threshold_fl.identity import Identity, PartyId
from threshold_fl.ml.mask import EncryptionMask

__all__ = ["AggregatorMachine", "AggregatorState"]

A = AggregatorState
_UPLOADS = (A.MASK_UPLOAD, A.ROUND_UPLOAD)
#: At a deadline, progress within this fraction of the stage timeout earns one extension.
_GRACE = 0.25
_DECRYPTIONS = (A.MASK_DECRYPTION, A.ROUND_DECRYPTION)


class AggregatorMachine(Machine[AggregatorState]):
    """Sans-I/O aggregator.  ``weights`` (party -> weight) override the default FedAvg
    weights, the sample counts clients announce."""

    ROLE = Role.AGGREGATOR
    TERMINAL = frozenset({A.FINISHED, A.ABORTED})
    TARGETS, OTHER_TARGETS = AGGREGATOR_TARGETS, AGGREGATOR_OTHER_TARGETS

    def __init__(
        self,
        manifest: Manifest,
        identity: Identity,
        randomness: Randomness,
        *,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(manifest, identity, randomness, A.IDLE)
        self._weights = checked_weights(manifest.client_ids, weights)
        self._samples: dict[PartyId, int] = {}
        self.alive: list[PartyId] = []
        self.dropped: dict[PartyId, str] = {}
        self._epoch = 0
        self._round = 0
        self._attempt = 1
        self._holders: tuple[PartyId, ...] = ()  # clients holding the current key
        self._public_shares: dict[PartyId, PublicKey] = {}
        self._key_id: str | None = None
        self._group_check: str | None = None
        self.mask: EncryptionMask | None = None
        self._ledger = StepLedger()  # what was accepted, to refuse duplicates and replays
        self._done: dict[PartyId, str] = {}  # confirmations of the current step
        self._pending_confirms: dict[PartyId, Message] = {}  # key confirms ahead of the key
        self._last_progress: float | None = None  # when this step last accepted a message
        self._uploaders: list[PartyId] = []
        self._expected: tuple[PartyId, ...] = ()  # who must upload in this attempt
        self._sum: ProtectedSum | None = None
        self._plain_sum: FloatArray | None = None
        self._decryption: BlindDecryption | None = None  # the joint decryption running
        self._budget = QueryBudget(manifest.params.decryption_queries)  # this key epoch's

    # -- the step being worked on ------------------------------------------------------
    @property
    def step(self) -> tuple[Stage, int, int, int]:
        """(stage, epoch, round, attempt) that current messages must carry."""
        if self.state in (A.IDLE, A.JOINING):
            return (Stage.SETUP, 0, 0, 0)  # what a Hello carries
        return (AGGREGATOR_STAGES[self.state], self._epoch, self._round, self._attempt)

    def start(self, now: float) -> Step:
        """Open the session: wait for every client's hello until the join deadline."""
        if self.state is not A.IDLE:
            raise ParameterError("the aggregator was already started")
        self.state = A.JOINING
        self._deadline = now + self.manifest.timeouts.join_s
        return Step()

    def waiting_for(self) -> str:
        if self.state is A.JOINING:
            missing = [p for p in self.manifest.client_ids if p not in self._samples]
            return self._waiting("clients to join", missing, len(self.manifest.clients))
        if self.state in self.TERMINAL or self.state is A.IDLE:
            return super().waiting_for()
        rounds = (A.ROUND_UPLOAD, A.ROUND_DECRYPTION)
        where = f"round {self._round} " if self.state in rounds else ""
        return f"{where}{self.state.value}: " + self._waiting(
            "clients", self._culprits(), len(self.alive))

    # -- setup and keys -----------------------------------------------------------------
    def _on_hello(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, Hello)
        self._require_sender(message, self.manifest.client_ids, "a client")
        self._require_step(message, (Stage.SETUP, 0, 0, 0))
        self._require_new(self._ledger.hellos, message.header.sender, message)
        if message.body.samples < 1:
            raise MalformedMessage("a client announced fewer than 1 training sample")
        self._ledger.hellos.add(message.header.sender)
        self._samples[message.header.sender] = message.body.samples
        if len(self._samples) == len(self.manifest.clients):
            self.alive = sorted(self._samples)
            return self._start_keys(now)
        return Step()

    def _start_keys(self, now: float) -> Step:
        if len(self.alive) < self.manifest.threshold:
            return self._abort(self._too_few("key agreement"))
        self.state = A.KEY_AGREEMENT
        self._epoch += 1
        self._attempt = 1
        self._holders = tuple(self.alive)
        self._public_shares = {}
        self._key_id = (
            plaintext_key_id(self.manifest.session, self._epoch)
            if self.manifest.mode is Mode.PLAINTEXT else None
        )
        self._group_check = None
        self._budget = QueryBudget(self.manifest.params.decryption_queries)
        self._reset_step(now, self.manifest.timeouts.keys_s)
        body = KeygenStart(self._holders, self.manifest.threshold)
        recipients = list(self._holders)
        if self.manifest.key_authority is not None:
            recipients.append(self.manifest.key_authority.party_id)
        return Step(sends=self._sends(recipients, body, self.step))

    def _key_contributors(self) -> tuple[PartyId, ...]:
        if self.manifest.mode is Mode.THRESHOLD:
            return self._holders
        if self.manifest.key_authority is not None:
            return (self.manifest.key_authority.party_id,)
        return ()

    def _on_public_share(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, PublicShare)
        sender = message.header.sender
        self._require_sender(message, self._key_contributors(), "a key contributor")
        self._require_relay(message, broadcast=True)
        self._require_new(self._ledger.broadcasts, sender, message)
        index, share = decode_public_key(self.context, message.body.key_frame)
        expected = self._holders.index(sender) + 1 if sender in self._holders else 0
        if index != expected:
            raise MalformedMessage(f"{sender!r} sent a key share for index {index}, not {expected}")
        shares = {**self._public_shares, sender: share}
        key_id = self._key_id
        if self.manifest.mode is Mode.SINGLE_KEY:
            key_id = share.key_id
        elif len(shares) == len(self._holders):
            by_index = {self._holders.index(party) + 1: key for party, key in shares.items()}
            key_id = combine_public_shares(self.context, by_index, 1).key_id
        self._ledger.broadcasts.add(sender)
        self._public_shares, self._key_id = shares, key_id
        step = self._relay(message, now)
        if key_id is not None:
            pending, self._pending_confirms = self._pending_confirms, {}
            for confirm in pending.values():
                if self.state is A.KEY_AGREEMENT:
                    step.extend(self._judge_key_confirm(confirm, now))
        return step

    def _on_key_delivery(self, message: Message, now: float) -> Step:
        self._require_sender(message, self._key_contributors(), "a key contributor")
        self._require_relay(message, broadcast=False)
        delivery = (message.header.sender, PartyId(message.header.recipient))
        self._require_new(self._ledger.deliveries, delivery, message)
        self._ledger.deliveries.add(delivery)
        return self._relay(message, now)

    def _on_key_confirm(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, KeyConfirm)
        self._require_confirmation(message)
        if self._key_id is None:
            # The confirmation overtook a key share on its way here: judge it once the
            # key is known, rather than drop an honest client for a reordering.
            self._pending_confirms[message.header.sender] = message
            return Step()
        return self._judge_key_confirm(message, now)

    def _judge_key_confirm(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, KeyConfirm)
        if message.body.key_id != self._key_id:
            return self._abort(
                f"{message.header.sender!r} confirmed key {message.body.key_id[:16]}, which is "
                f"not the key the shares add up to ({(self._key_id or 'none')[:16]}); key "
                "agreement failed"
            )
        if self._group_check not in (None, message.body.group_check):
            return self._abort("clients hold different group keys; key agreement failed")
        self._group_check = message.body.group_check
        self._done[message.header.sender] = message.body.key_id
        return self._progress(now)

    def _keys_agreed(self, now: float) -> Step:
        assert self._key_id is not None
        step = self._events(KeyAgreed(self._epoch, self._key_id, tuple(self.alive)))
        if self.mask is None:
            return step.extend(self._start_upload(now, A.MASK_UPLOAD, 0))
        return step.extend(self._start_upload(now, A.ROUND_UPLOAD, self._round + 1))

    # -- uploads --------------------------------------------------------------------------
    def _start_upload(self, now: float, state: AggregatorState, round_: int, *,
                      retry: bool = False) -> Step:
        assert self._key_id is not None and self._group_check is not None
        self.state = state
        self._attempt = self._attempt + 1 if retry else 1
        self._round = round_
        self._expected = tuple(self.alive)
        self._uploaders = []
        self._decryption = None
        self._reset_step(now, self.manifest.timeouts.upload_s)
        length = self._protected_length()
        self._sum = ProtectedSum(self.manifest.mode, self.context, self._key_id, length)
        self._plain_sum = np.zeros(self.manifest.model_length - length)
        # Each uploader is told its own FedAvg weight and applies it before encrypting,
        # so the sum needs additions only (no level spent; one-limb uploads).
        sends = [self._send([party], self._upload_start(self._weight(party)), self.step)
                 for party in self.alive]
        return Step(sends=sends)

    def _upload_start(self, weight: float) -> MaskStart | RoundStart:
        assert self._key_id is not None and self._group_check is not None
        if self.state is A.MASK_UPLOAD:
            return MaskStart(self._key_id, self._group_check, weight)
        assert self.mask is not None
        return RoundStart(self._key_id, self.mask.digest(), self._group_check, weight)

    def _protected_length(self) -> int:
        if self.state is A.MASK_UPLOAD or self.state is A.MASK_DECRYPTION:
            return self.manifest.model_length
        assert self.mask is not None
        return self.mask.count

    def _weight(self, party: PartyId) -> float:
        raw = self._weights or self._samples
        return raw[party] / sum(raw[other] for other in self._expected)

    def _on_upload(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, SensitivityUpload | UpdateUpload)
        sender = message.header.sender
        self._require_sender(message, [p for p in self._expected if p in self.alive],
                             "an active client expected to upload in this attempt")
        self._require_step(message, self.step)
        self._require_new(self._ledger.uploads, sender, message)
        if sender == self.me or message.header.recipient != self.me:
            raise ForgedMessage("an upload must be addressed to the aggregator")
        assert self._sum is not None and self._plain_sum is not None
        plain = self._plain_of(message)
        weight = self._weight(sender)  # ciphertexts carry it already; float32 parts do not
        self._sum.add(weight, message.body.protected)  # all or nothing
        self._plain_sum += weight * plain
        self._ledger.uploads.add(sender)
        self._uploaders.append(sender)
        return self._progress(now)

    def _plain_of(self, message: Message) -> FloatArray:
        assert self._plain_sum is not None
        if not isinstance(message.body, UpdateUpload):
            return np.zeros(0)
        return decode_plain(message.body.plain, self._plain_sum.size, "the upload's plain part")

    def _broadcast_aggregate(self, now: float) -> Step:
        assert self._sum is not None and self._plain_sum is not None
        self.state = A.MASK_DECRYPTION if self.state is A.MASK_UPLOAD else A.ROUND_DECRYPTION
        if self.manifest.mode is Mode.THRESHOLD and self._protected_length() > 0:
            assert self._key_id is not None
            c0, c1 = self._sum.ring_parts()
            self._sum = None
            self._decryption = BlindDecryption(self.context, self._key_id,
                                               self._protected_length(), c0, c1)
            return self._start_decryption(now, retry=False)
        protected, _ = self._sum.result()
        self._reset_step(now, self.manifest.timeouts.decrypt_s)
        body = Aggregate(protected, encode_plain(self._plain_sum))
        self._sum = None
        step = Step(sends=[self._send(self.alive, body, self.step, addressed="*")])
        return step.extend(self._progress(now))

    # -- joint decryption by blind fusion, and confirmations ------------------------------
    def _start_decryption(self, now: float, *, retry: bool) -> Step:
        """Ask a set of t live holders for their shares (again, with another set, after a
        member dropped: attempt + 1)."""
        decryption = self._decryption
        assert decryption is not None
        members = choose_set(self._holders, self.alive, self.manifest.threshold, self._round)
        if members is None:
            return self._abort(self._too_few(self.state.value))
        count = decryption.c1.shape[0]
        if not self._budget.allows(count):
            return self._abort(f"key epoch {self._epoch} has no decryption budget left "
                               f"({self._budget.used} of {self._budget.limit} shares used)")
        self._budget.spend(count)
        if retry:
            self._attempt += 1
        c1 = decryption.request(members)
        self._reset_step(now, self.manifest.timeouts.decrypt_s)
        return Step(sends=self._sends(list(members), DecryptRequest(members, c1), self.step))

    def _on_decryption_share(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, DecryptionShare)
        decryption, body, sender = self._decryption, message.body, message.header.sender
        if decryption is None or decryption.fused:
            raise UnexpectedMessage("no decryption set is waiting for shares; discarded")
        self._require_sender(message, [m for m in decryption.members if m in self.alive],
                             "a live member of this attempt's decryption set")
        self._require_step(message, self.step)
        if message.header.recipient != self.me:
            raise ForgedMessage("a decryption share must be addressed to the aggregator")
        self._require_new(decryption.shares, sender, message)
        if body.members != decryption.members or body.c1_digest != decryption.digest:
            raise MalformedMessage("the decryption share is for another set or aggregate")
        decryption.take(sender, body.shares)
        if decryption.missing():
            return self._progress(now)
        return self._broadcast_fused(now).extend(self._progress(now))

    def _broadcast_fused(self, now: float) -> Step:
        decryption = self._decryption
        assert decryption is not None and self._plain_sum is not None
        body = Fused(decryption.members, decryption.digest, decryption.fuse(),
                     encode_plain(self._plain_sum))
        self._deadline = now + self.manifest.timeouts.decrypt_s
        return Step(sends=[self._send(self.alive, body, self.step, addressed="*")])

    def _on_mask_confirm(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, MaskConfirm)
        self._require_confirmation(message)
        mask = EncryptionMask.from_bits(self.manifest.model_length, message.body.mask_bits)
        if mask.digest() != message.body.digest:
            raise MalformedMessage("the mask bits do not match the digest sent with them")
        if any(digest != mask.digest() for digest in self._done.values()):
            return self._abort(
                f"{message.header.sender!r} selected a different mask than other clients; "
                "mask agreement failed"
            )
        self.mask = mask
        self._done[message.header.sender] = mask.digest()
        return self._progress(now)

    def _on_round_done(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, RoundDone)
        self._require_confirmation(message)
        if any(check != message.body.model_check for check in self._done.values()):
            return self._abort(
                f"{message.header.sender!r} holds a different global model than other clients "
                f"in round {self._round}; aborting"
            )
        self._done[message.header.sender] = message.body.model_check
        return self._progress(now)

    def _require_confirmation(self, message: Message) -> None:
        self._require_sender(message, self.alive, "an active client")
        if self._decryption is not None and not self._decryption.fused and (
                self.state in _DECRYPTIONS):
            raise UnexpectedMessage(f"{message.kind} before the fused result went out")
        self._require_step(message, self.step)
        if message.header.recipient != self.me:
            raise ForgedMessage("a confirmation must be addressed to the aggregator")
        self._require_new(set(self._done) | set(self._pending_confirms),
                          message.header.sender, message)

    # -- progress, dropouts and ends -------------------------------------------------------
    def _progress(self, now: float) -> Step:
        """Move on if the current step has everything it needs from the live clients."""
        if len(self.alive) < self.manifest.threshold:
            return self._abort(self._too_few(self.state.value))
        if self.state is A.KEY_AGREEMENT:
            if set(self._done) >= set(self.alive) and self._key_id is not None:
                return self._keys_agreed(now)
        elif self.state in _UPLOADS:
            if any(party in self.dropped for party in self._expected if party not in
                   self._uploaders):
                return self._start_upload(now, self.state, self._round, retry=True)
            if set(self._uploaders) >= set(self._expected):
                return self._broadcast_aggregate(now)
        elif self.state in _DECRYPTIONS:
            decryption = self._decryption
            if decryption is not None and decryption.failed(self.dropped):
                return self._start_decryption(now, retry=True)
            if (decryption is None or decryption.fused) and set(self._done) >= set(self.alive):
                return self._decryption_done(now)
        return Step()

    def _decryption_done(self, now: float) -> Step:
        if self.state is A.MASK_DECRYPTION:
            assert self.mask is not None
            step = self._events(MaskAgreed(self.mask))
            if not self._budget_for_a_round():
                return step.extend(self._start_keys(now))
            return step.extend(self._start_upload(now, A.ROUND_UPLOAD, 1))
        step = self._events(RoundCompleted(self._round, tuple(sorted(self._uploaders)), None))
        if self._round >= self.manifest.rounds:
            self.state = A.FINISHED
            body = FinishedBody(self._round)
            return step.extend(Step(sends=self._sends(self.alive, body, self.step),
                                    events=[Finished(self._round)]))
        if not self._budget_for_a_round():
            return step.extend(self._start_keys(now))
        return step.extend(self._start_upload(now, A.ROUND_UPLOAD, self._round + 1))

    def _budget_for_a_round(self) -> bool:
        """Whether this key epoch can decrypt another round (twice: a retry included);
        only threshold keys have a budget.  Asked once the mask is agreed."""
        assert self.mask is not None
        return self.manifest.mode is not Mode.THRESHOLD or (
            self._budget.allows(2 * ciphertext_count(self.context, self.mask.count)))

    def _deadline_passed(self, now: float) -> Step:
        if self.state is A.JOINING:
            self.alive = sorted(self._samples)
            late = [party for party in self.manifest.client_ids if party not in self._samples]
            return self._drop(late, "did not join in time (not started, or started with "
                                    "another manifest)").extend(self._start_keys(now))
        grace = _GRACE * self._stage_timeout()
        if self._last_progress is not None and now - self._last_progress < grace:
            # Something arrived just before the deadline: the others may not have had
            # time to answer it, so blaming them now would drop punctual clients.
            self._deadline = self._last_progress + grace
            self._last_progress = None
            return Step()
        culprits = self._culprits()
        step = self._drop(culprits, f"missed the {self.state.value} deadline")
        self._deadline = now + self._stage_timeout()
        return step.extend(self._after_drop(now))

    def _stage_timeout(self) -> float:
        timeouts = self.manifest.timeouts
        if self.state is A.KEY_AGREEMENT:
            return timeouts.keys_s
        return timeouts.upload_s if self.state in _UPLOADS else timeouts.decrypt_s

    def _culprits(self) -> list[PartyId]:
        if self.state is A.KEY_AGREEMENT:
            return key_agreement_culprits(self._key_contributors(), self._public_shares,
                                          self._holders, self._ledger.deliveries, self.alive,
                                          self._done)
        if self.state in _UPLOADS:
            return upload_culprits(self._expected, self._uploaders)
        if self._decryption is not None:
            return self._decryption.culprits(self.alive, self._done)
        return [party for party in self.alive if party not in self._done]

    def _after_drop(self, now: float) -> Step:
        if len(self.alive) < self.manifest.threshold:
            return self._abort(self._too_few(self.state.value))
        if self.state is A.KEY_AGREEMENT:
            authority = self.manifest.key_authority
            if authority is not None and authority.party_id in self.dropped:
                return self._abort("the key authority did not deliver the keys in time")
            if self.manifest.mode is Mode.THRESHOLD and set(self._holders) - set(self.alive):
                return self._start_keys(now)
        return self._progress(now)

    def _drop(self, parties: list[PartyId], reason: str) -> Step:
        step = Step()
        for party in parties:
            if party in self.dropped:
                continue
            self.dropped[party] = reason
            if party in self.alive:
                self.alive.remove(party)
            # What a dropped client confirmed no longer counts: if another set decrypts,
            # the survivors' result has other noise, which differs in the last bits.
            self._done.pop(party, None)
            self._pending_confirms.pop(party, None)
            if self.state is A.MASK_DECRYPTION and not self._done:
                self.mask = None
            step.sends.extend(self._sends([party], Abort(f"dropped: {reason}"), self.step))
            step.events.append(PartyDropped(party, reason))
        return step

    def _on_abort(self, message: Message, now: float) -> Step:
        sender = message.header.sender
        if self.state in self.TERMINAL or self.state is A.IDLE:
            raise UnexpectedMessage(f"abort from {sender!r} after the session ended; discarded")
        authority = self.manifest.key_authority
        if sender not in self.alive and not (authority and sender == authority.party_id):
            raise UnexpectedMessage(f"abort from {sender!r}, who is not an active party")
        assert isinstance(message.body, Abort)
        return self._leave(sender, f"left the session: {message.body.reason}", now)

    def party_offline(self, party: PartyId, now: float) -> Step:
        """The transport saw *party* go offline (an MQTT Last Will): drop it now, as if
        it had left, instead of at the stage's deadline.  Before the join deadline, after
        the session, or for a party not taking part, nothing happens."""
        if self.state in self.TERMINAL or self.state in (A.IDLE, A.JOINING) or (
                party not in self.alive):
            return Step()
        return self._leave(party, "went offline (its connection to the broker ended)", now)

    def _leave(self, party: PartyId, reason: str, now: float) -> Step:
        return self._drop([party], reason).extend(self._after_drop(now))

    def _abort(self, reason: str) -> Step:
        self.state = A.ABORTED
        recipients = list(self.alive)
        if self.manifest.key_authority is not None:
            recipients.append(self.manifest.key_authority.party_id)
        sends = self._sends(recipients, Abort(reason), self.step)
        return Step(sends=sends, events=[Aborted(reason)])

    def _too_few(self, stage: str) -> str:
        return (
            f"only {len(self.alive)} client(s) left during {stage}, fewer than the "
            f"{self.manifest.threshold} the manifest requires (threshold t); aborting"
        )

    # -- relaying ----------------------------------------------------------------------------
    def _require_relay(self, message: Message, *, broadcast: bool) -> None:
        header = message.header
        self._require_step(message, self.step)
        if broadcast and header.recipient != "*":
            raise ForgedMessage(f"{message.kind} must be addressed to every client")
        if not broadcast and (header.recipient not in self.alive or
                              header.recipient == header.sender):
            raise ForgedMessage(f"{message.kind} for {header.recipient!r}, not an active client")

    def handle(self, message: Message, now: float) -> Step:
        step = super().handle(message, now)
        self._last_progress = now
        return step

    def _relay(self, message: Message, now: float) -> Step:
        header = message.header
        if header.recipient == "*":
            recipients = [party for party in self.alive if party != header.sender]
        else:
            recipients = [PartyId(header.recipient)]
        assert message.raw, "a relay forwards the sender's signed bytes: received ones only"
        return Step(sends=[Outgoing(tuple(recipients), message.raw, message.kind)])

    def _reset_step(self, now: float, timeout: float) -> None:
        self._ledger = self._ledger.next_step()
        self._done = {}
        self._pending_confirms = {}
        self._last_progress = None
        self._deadline = now + timeout

    TRANSITIONS: ClassVar[Mapping[AggregatorState, Mapping[type, Handler]]] = {
        A.JOINING: {Hello: _on_hello},
        A.KEY_AGREEMENT: {
            PublicShare: _on_public_share,
            KeyDelivery: _on_key_delivery,
            KeyConfirm: _on_key_confirm,
        },
        A.MASK_UPLOAD: {SensitivityUpload: _on_upload},
        A.MASK_DECRYPTION: {
            DecryptionShare: _on_decryption_share,
            MaskConfirm: _on_mask_confirm,
        },
        A.ROUND_UPLOAD: {UpdateUpload: _on_upload},
        A.ROUND_DECRYPTION: {
            DecryptionShare: _on_decryption_share,
            RoundDone: _on_round_done,
        },
    }

