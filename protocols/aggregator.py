"""The aggregator's state machine: it coordinates, relays and sums, and never decrypts.

It holds no secret key share, no Shamir share and no group key: key deliveries pass
through it sealed, and the decryption shares it fuses are masked and padded, so the
fused result is still unreadable to it.  It sees the plaintext part of each update (the
coordinates the mask leaves clear) and the FedAvg weights; each client is told only its
own weight and applies it before encrypting, so the aggregator's sum is additions only.

Dropouts are found at deadlines, when a client says it is leaving, or when the
transport sees it go offline: the culprits are dropped and the stage goes on without
them: key agreement restarts, uploads are redone by the survivors (so the weights stay
exact), a missing decryption share is replaced by another set of t key holders (blind
fusion, :mod:`protocols.fusion`; nobody's key is rebuilt), at once when the member's
connection ends, and keys are rotated before the decryption budget of the noise
flooding runs out.  Below ``t`` survivors the session aborts and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from protocols.deadlines import (
    grace_deadline,
    key_agreement_culprits,
    stage_timeout,
    upload_culprits,
)
from protocols.events import (
    Aborted,
    Finished,
    KeyAgreed,
    MaskAgreed,
    PartyDropped,
    PartyRefused,
    RoundCompleted,
    Step,
)
from protocols.fusion import BlindDecryption, QueryBudget, choose_set
from protocols.key_agreement import (
    add_public_share,
    check_relay,
    confirmation_refusal,
    hello_refusal,
    key_contributors,
    key_holders,
    relayed,
)
from protocols.ledger import StepLedger
from protocols.machine import Handler, Machine, Randomness
from protocols.manifest import Manifest, Mode, Role
from protocols.messages import (
    Abort,
    Aggregate,
    DecryptionShare,
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
    DEFAULT_PART_BYTES,
    UploadRound,
    checked_weights,
    encode_plain,
    require_decryption_room,
)
from protocols.session import known_mask, plaintext_key_id
from protocols.states import (
    AGGREGATOR_OTHER_TARGETS,
    AGGREGATOR_STAGES,
    AGGREGATOR_TARGETS,
    AggregatorState,
)
from threshold_fl.crypto.keys import PublicKey
from threshold_fl.crypto.vectors import ciphertext_count
from threshold_fl.errors import ForgedMessage, MalformedMessage, ParameterError, UnexpectedMessage
from threshold_fl.identity import Identity, PartyId
from threshold_fl.ml.mask import EncryptionMask

__all__ = ["AggregatorMachine", "AggregatorState"]

A = AggregatorState
_UPLOADS = (A.MASK_UPLOAD, A.ROUND_UPLOAD)
_DECRYPTIONS = (A.MASK_DECRYPTION, A.ROUND_DECRYPTION)
_ROUNDS = (A.ROUND_UPLOAD, A.ROUND_DECRYPTION)


class AggregatorMachine(Machine[AggregatorState]):
    """Sans-I/O aggregator.  ``weights`` (party -> weight) override the default FedAvg
    weights (the clients' sample counts); decryptions stream in parts of ``part_bytes``."""

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
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        super().__init__(manifest, identity, randomness, A.IDLE)
        require_decryption_room(self.context, part_bytes)  # now, not mid-session
        self.part_bytes = part_bytes
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
        self.mask: EncryptionMask | None = known_mask(manifest)  # None: agreed at run time
        self._ledger = StepLedger()  # what was accepted, to refuse duplicates and replays
        self._done: dict[PartyId, str] = {}  # confirmations of the current step
        self._pending_confirms: dict[PartyId, Message] = {}  # key confirms ahead of the key
        self._last_progress: float | None = None  # when this step last accepted a message
        self._uploads: UploadRound | None = None  # this attempt's uploads and their sums
        self._decryption: BlindDecryption | None = None  # the joint decryption running
        self._unreachable: set[PartyId] = set()  # connection ended (Last Will), not yet dropped
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
        where = f"round {self._round} " if self.state in _ROUNDS else ""
        what, who, of, until = "clients", self._culprits(), len(self.alive), ""
        if self.state in _UPLOADS and self._uploads is not None:
            until = self._uploads.parts_note(who)
        if self.state in _DECRYPTIONS and self._decryption is not None:
            what, who, of, until = self._decryption.waiting(
                self.alive, self._done, self._unreachable, self._attempt)
        return f"{where}{self.state.value}: " + self._waiting(what, who, of) + until

    # -- setup and keys -----------------------------------------------------------------
    def _on_hello(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, Hello)
        self._require_sender(message, self.manifest.client_ids, "a client")
        self._require_step(message, (Stage.SETUP, 0, 0, 0))
        self._require_new(self._ledger.hellos, message.header.sender, message)
        refusal = hello_refusal(self.manifest, self.me, message.header.sender, message.body)
        if refusal is not None:  # turned away at once, and told why; it may come back
            return Step(sends=[self._send([message.header.sender], Abort(refusal), self.step)],
                        events=[PartyRefused(message.header.sender, refusal)])
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
        self._holders = key_holders(self.alive, self._unreachable, self.manifest.threshold)
        self._public_shares = {}
        self._key_id = (
            plaintext_key_id(self.manifest.session, self._epoch)
            if self.manifest.mode is Mode.PLAINTEXT else None
        )
        self._group_check = None
        self._budget = QueryBudget(self.manifest.params.decryption_queries)
        self._reset_step(now, self.manifest.timeouts.keys_s)
        body = KeygenStart(self._holders, self.manifest.threshold, self.manifest.fingerprint())
        recipients = list(self._holders)
        if self.manifest.key_authority is not None:
            recipients.append(self.manifest.key_authority.party_id)
        return Step(sends=self._sends(recipients, body, self.step))

    def _key_contributors(self) -> tuple[PartyId, ...]:
        return key_contributors(self.manifest, self._holders)

    def _on_public_share(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, PublicShare)
        sender = message.header.sender
        self._require_sender(message, self._key_contributors(), "a key contributor")
        self._require_relay(message, broadcast=True)
        self._require_new(self._ledger.broadcasts, sender, message)
        shares, key_id = add_public_share(self.context, self.manifest.mode, self._holders,
                                          self._public_shares, sender, message.body.key_frame)
        key_id = key_id or self._key_id
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
        refusal = confirmation_refusal(message.header.sender, message.body.key_id,
                                       self._key_id, message.body.group_check, self._group_check)
        if refusal is not None:
            return self._abort(refusal)
        self._group_check = message.body.group_check
        self._done[message.header.sender] = message.body.key_id
        return self._progress(now)

    def _keys_agreed(self, now: float) -> Step:
        assert self._key_id is not None
        step = self._events(KeyAgreed(self._epoch, self._key_id, tuple(self.alive)))
        if self.mask is None:
            return step.extend(self._start_upload(now, A.MASK_UPLOAD, 0))
        if self._round == 0 and self.manifest.mask.everything:  # no mask agreement
            step.events.append(MaskAgreed(self.mask))
        return step.extend(self._start_upload(now, A.ROUND_UPLOAD, self._round + 1))

    # -- uploads --------------------------------------------------------------------------
    def _start_upload(self, now: float, state: AggregatorState, round_: int, *,
                      retry: bool = False) -> Step:
        assert self._key_id is not None and self._group_check is not None
        self.state = state
        self._attempt = self._attempt + 1 if retry else 1
        self._round = round_
        self._decryption = None
        self._reset_step(now, self.manifest.timeouts.upload_s)
        uploads = self._uploads = UploadRound(
            self.manifest.mode, self.context, self._key_id, self._protected_length(),
            self.manifest.model_length, self.alive, self._weights or self._samples)
        # Each uploader is told its own FedAvg weight and applies it before encrypting,
        # so the sum needs additions only (no level spent; one-limb uploads).
        sends = [self._send([party], self._upload_start(uploads.weight(party)), self.step)
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

    def _on_upload(self, message: Message, now: float) -> Step:
        sender, uploads = message.header.sender, self._uploads
        assert isinstance(message.body, SensitivityUpload | UpdateUpload) and uploads is not None
        self._require_sender(message, [p for p in uploads.expected if p in self.alive],
                             "an active client expected to upload in this attempt")
        self._require_step(message, self.step)
        self._require_new(self._ledger.uploads, sender, message)
        if sender == self.me or message.header.recipient != self.me:
            raise ForgedMessage("an upload must be addressed to the aggregator")
        if uploads.add(sender, message.body):  # True once its last part is in
            self._ledger.uploads.add(sender)
        return self._progress(now)

    def _broadcast_aggregate(self, now: float) -> Step:
        assert self._uploads is not None
        self.state = A.MASK_DECRYPTION if self.state is A.MASK_UPLOAD else A.ROUND_DECRYPTION
        if self.manifest.mode is Mode.THRESHOLD and self._protected_length() > 0:
            assert self._key_id is not None
            self._decryption = BlindDecryption.of(
                self.context, self._key_id, self._protected_length(),
                self._uploads.take().ring_parts(), self._uploads.plain.size, self.part_bytes)
            return self._start_decryption(now, retry=False)
        protected, _ = self._uploads.take().result()
        self._reset_step(now, self.manifest.timeouts.decrypt_s)
        body = Aggregate(protected, encode_plain(self._uploads.plain))
        step = Step(sends=[self._send(self.alive, body, self.step, addressed="*")])
        return step.extend(self._progress(now))

    # -- joint decryption by blind fusion, and confirmations ------------------------------
    def _start_decryption(self, now: float, *, retry: bool, reachable: bool = False
                          ) -> Step:
        """Ask a set of t live holders for their shares (again, for the parts not fused,
        after a member dropped or lost its connection: attempt + 1), avoiding those whose
        connection is lost if t others are live; with *reachable*, only then."""
        decryption = self._decryption
        assert decryption is not None
        members = choose_set(self._holders, self.alive, self.manifest.threshold, self._round,
                             avoid=self._unreachable)
        if reachable and (members is None or self._unreachable & set(members)):
            return Step()  # too few others: wait for the share, the drop or the deadline
        if members is None:
            return self._abort(self._too_few(self.state.value))
        refusal = self._budget.refusal(decryption.remaining(), self._epoch)
        if refusal is not None:
            return self._abort(refusal)
        self._attempt += 1 if retry else 0
        order, parts = decryption.request(members)
        self._reset_step(now, self.manifest.timeouts.decrypt_s)
        # one member's message at a time: a part's c1 signed for all t members at once
        # would hold t copies of it
        return Step(later=[decryption.requests(order, parts, self._send, self.step)])

    def _on_decryption_share(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, DecryptionShare)
        decryption, sender = self._decryption, message.header.sender
        if decryption is None or decryption.complete:
            raise UnexpectedMessage("no decryption set is waiting for shares; discarded")
        # the step first: a late share of a replaced set (common, with parts in flight)
        # is stale, not forged
        self._require_step(message, self.step)
        self._require_sender(message, [m for m in decryption.members if m in self.alive],
                             "a live member of this attempt's decryption set")
        if message.header.recipient != self.me:
            raise ForgedMessage("a decryption share must be addressed to the aggregator")
        if not decryption.accept(sender, message.body):
            return self._progress(now)
        assert self._uploads is not None
        body = decryption.fuse(message.body.part, self._uploads.plain)
        self._deadline = now + self.manifest.timeouts.decrypt_s
        step = Step(sends=[self._send(self.alive, body, self.step, addressed="*")],
                    later=[decryption.next_requests(self._send, self.step)])
        return step.extend(self._progress(now))

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
        if self._decryption is not None and not self._decryption.complete and (
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
            assert self._uploads is not None
            if any(party in self.dropped for party in self._uploads.missing()):
                return self._start_upload(now, self.state, self._round, retry=True)
            if not self._uploads.missing():
                return self._broadcast_aggregate(now)
        elif self.state in _DECRYPTIONS:
            decryption = self._decryption
            if decryption is not None and decryption.failed(self.dropped):
                return self._start_decryption(now, retry=True)
            if (decryption is None or decryption.complete) and set(self._done) >= set(self.alive):
                return self._decryption_done(now)
        return Step()

    def _decryption_done(self, now: float) -> Step:
        if self.state is A.MASK_DECRYPTION:
            assert self.mask is not None
            return self._events(MaskAgreed(self.mask)).extend(self._next_round(now, 1))
        assert self._uploads is not None
        uploaders = tuple(sorted(self._uploads.uploaders))
        step = self._events(RoundCompleted(self._round, uploaders, None))
        if self._round >= self.manifest.rounds:
            self.state = A.FINISHED
            body = FinishedBody(self._round)
            return step.extend(Step(sends=self._sends(self.alive, body, self.step),
                                    events=[Finished(self._round)]))
        return step.extend(self._next_round(now, self._round + 1))

    def _next_round(self, now: float, round_: int) -> Step:
        """Round *round_*'s uploads, after new keys if this key epoch cannot decrypt
        another round (twice: a retry included; only threshold keys have a budget)."""
        assert self.mask is not None
        if self.manifest.mode is Mode.THRESHOLD and not self._budget.allows(
                2 * ciphertext_count(self.context, self.mask.count)):
            return self._start_keys(now)
        return self._start_upload(now, A.ROUND_UPLOAD, round_)

    def _deadline_passed(self, now: float) -> Step:
        if self.state is A.JOINING:
            self.alive = sorted(self._samples)
            late = [party for party in self.manifest.client_ids if party not in self._samples]
            return self._drop(late, "did not join in time (not started, or started with "
                                    "another manifest)").extend(self._start_keys(now))
        timeout = stage_timeout(self.state, self.manifest.timeouts)
        extended = grace_deadline(self._last_progress, now, timeout)
        self._deadline, self._last_progress = extended, None
        if extended is not None:
            return Step()
        step = self._drop(self._culprits(), f"missed the {self.state.value} deadline")
        self._deadline = now + timeout
        return step.extend(self._after_drop(now))

    def _culprits(self) -> list[PartyId]:
        if self.state is A.KEY_AGREEMENT:
            return key_agreement_culprits(self._key_contributors(), self._public_shares,
                                          self._holders, self._ledger.deliveries, self.alive,
                                          self._done)
        if self.state in _UPLOADS:
            assert self._uploads is not None
            return upload_culprits(self._uploads.expected, self._uploads.uploaders)
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
            self._unreachable.discard(party)
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

    def party_unreachable(self, party: PartyId, now: float) -> Step:
        """The transport saw *party*'s connection end (an MQTT Last Will) but has not
        judged it gone yet (``party_offline`` follows after a grace time, unless it comes
        back: ``party_reachable``).  If it owes a share to the current decryption set and
        t other live holders remain, another set without it is asked at once (attempt
        + 1); otherwise nothing changes but that sets avoid it while it is away."""
        if self.state in self.TERMINAL or party not in self.alive:
            return Step()
        self._unreachable.add(party)
        if self._decryption is None or not self._decryption.owes(party):  # none, or fused
            return Step()
        return self._start_decryption(now, retry=True, reachable=True)

    def party_reachable(self, party: PartyId, now: float) -> Step:
        """*party*'s connection is back: later decryption sets may include it again.  In
        a key agreement that left it out (``key_holders``), it restarts with it."""
        self._unreachable.discard(party)
        if self.state is A.KEY_AGREEMENT and party in self.alive and party not in self._holders:
            return self._start_keys(now)
        return Step()

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
        return (f"only {len(self.alive)} client(s) left during {stage}, fewer than the "
                f"{self.manifest.threshold} the manifest requires (threshold t); aborting")

    # -- relaying ----------------------------------------------------------------------------
    def _require_relay(self, message: Message, *, broadcast: bool) -> None:
        self._require_step(message, self.step)
        check_relay(message, self.alive, broadcast=broadcast)

    def handle(self, message: Message, now: float) -> Step:
        step = super().handle(message, now)
        self._last_progress = now
        return step

    def _relay(self, message: Message, now: float) -> Step:
        return Step(sends=[relayed(message, self.alive)])

    def _reset_step(self, now: float, timeout: float) -> None:
        self._ledger = self._ledger.next_step()
        self._done, self._pending_confirms, self._last_progress = {}, {}, None
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

