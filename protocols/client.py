"""The client's state machine: key agreement, mask agreement and FedAvg rounds.

The application is asked for work through events (:class:`SensitivityNeeded`,
:class:`UpdateNeeded`) and answers with :meth:`ClientMachine.submit_sensitivity` and
:meth:`ClientMachine.submit_update`.  Key material, the group key and the Shamir
shares this client holds live only here, in one :class:`EpochKeys` per key epoch
(:mod:`protocols.client_keys`: how its pieces are checked and what they lead to).
Joint decryption is by blind fusion (:mod:`protocols.fusion`): a member of the
decryption set sends one masked share, and every client removes the pad from the
fused result the aggregator broadcasts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import numpy as np

from protocols.client_decryption import (
    FusedParts,
    SharesGiven,
    decode_request,
    member_keys,
    share_part,
)
from protocols.client_keys import DELIVERY_FIELDS, EpochKeys, Mismatch
from protocols.events import (
    Aborted,
    KeyAgreed,
    MaskAgreed,
    Outgoing,
    RoundCompleted,
    SensitivityNeeded,
    Step,
    UpdateNeeded,
)
from protocols.events import Finished as FinishedEvent
from protocols.fusion import QueryBudget
from protocols.key_agreement import keygen_refusal
from protocols.machine import Handler, Machine, Randomness
from protocols.manifest import Manifest, Mode, Role, abort_error
from protocols.messages import (
    Abort,
    Aggregate,
    DecryptRequest,
    Finished,
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
    Stage,
)
from protocols.protection import (
    DEFAULT_PART_BYTES,
    check_bound,
    checked_vector,
    decode_plain,
    implausible,
    open_protected,
    upload_parts,
)
from protocols.session import known_mask, model_check, open_mapping, pack_mapping, seal_context
from protocols.states import CLIENT_OTHER_TARGETS, CLIENT_TARGETS, CLIENT_WAITING, ClientState
from threshold_fl.arrays import FloatArray
from threshold_fl.crypto.keys import PartyKeys
from threshold_fl.crypto.noise import wipe
from threshold_fl.crypto.vectors import decrypt_vector
from threshold_fl.crypto.wire import encode_public_key
from threshold_fl.errors import (
    MalformedMessage,
    ParameterError,
    ProtocolError,
    StaleMessage,
    UnexpectedMessage,
)
from threshold_fl.identity import Identity, PartyId
from threshold_fl.ml.mask import EncryptionMask, select_top_fraction
from threshold_fl.sealing import open_from, seal_for

__all__ = ["ClientMachine", "ClientState"]

C = ClientState


class ClientMachine(Machine[ClientState]):
    """Sans-I/O client.  ``samples`` is the local data size (the default FedAvg weight)."""

    ROLE = Role.CLIENT
    TERMINAL = frozenset({C.FINISHED, C.ABORTED})
    TARGETS, OTHER_TARGETS = CLIENT_TARGETS, CLIENT_OTHER_TARGETS

    def __init__(
        self, manifest: Manifest, identity: Identity, randomness: Randomness, *, samples: int,
        part_bytes: int = DEFAULT_PART_BYTES,
    ) -> None:
        super().__init__(manifest, identity, randomness, C.IDLE)
        for name, value in (("samples", samples), ("part_bytes", part_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ParameterError(f"{name} must be a positive integer, got {value!r}")
        self._samples = samples
        self.part_bytes = part_bytes  # an upload larger than this streams in parts
        self._aggregator = manifest.aggregator.party_id
        self._step: tuple[Stage, int, int, int] = (Stage.SETUP, 0, 0, 0)
        self._keys = EpochKeys(manifest, self.me)  # the current key epoch's material
        self._early_keys: list[Message] = []  # key messages that overtook their KeygenStart
        self._mask = known_mask(manifest)  # None: agreed at run time
        self._mask_announced = False
        self._round = 0
        self.model: FloatArray | None = None  # the latest global model
        # What this client uploads, unweighted: kept for a retry after a dropout, which
        # comes with a new weight (so the upload is encrypted again).
        self._upload_values: tuple[FloatArray, FloatArray | None] | None = None
        self._weight = 1.0  # this attempt's FedAvg weight, announced by the aggregator
        self._plain_part: FloatArray | None = None
        self._shares_given = SharesGiven()  # this step's: never two shares of one part
        self._fused: FusedParts | None = None  # this step's fused result, part by part
        self._uploaded_at = 0  # attempt of this step's last upload: its decryption's first
        self._budget = QueryBudget(manifest.params.decryption_queries)  # this key epoch's

    # -- the application's side --------------------------------------------------------
    def start(self, now: float) -> Step:
        """Say hello to the aggregator."""
        if self.state is not C.IDLE:
            raise ProtocolError("the client was already started")
        self.state = C.JOINING
        self._heard(now)
        hello = Hello(self._samples, self.manifest.fingerprint())
        return Step(sends=self._sends([self._aggregator], hello, self._step))

    def waiting_for(self) -> str:
        return CLIENT_WAITING.get(self.state, self.state.value).format(
            aggregator=self._aggregator, round=self._round, next=self._round + 1)

    @property
    def mask(self) -> EncryptionMask | None:
        """The encryption mask: the manifest's when it encrypts everything (fraction 1),
        else the agreed one once mask agreement is done (None before)."""
        return self._mask

    def submit_sensitivity(self, sensitivity: FloatArray, now: float) -> Step:
        """Upload the local sensitivity map (one non-negative value per parameter)."""
        self._require_state(C.MASK_COMPUTING, "a sensitivity map")
        values = checked_vector(sensitivity, self.manifest.model_length, "sensitivity map")
        if np.any(values < 0):
            raise ParameterError("sensitivity values must be non-negative")
        peak = float(values.max())
        normalised = values / peak if peak > 0 else values  # comparable across clients
        self._upload_values = (normalised, None)
        step = self._send_upload()
        self.state = C.MASK_UPLOADED
        return step

    def submit_update(self, model: FloatArray, now: float) -> Step:
        """Upload the locally trained model for the current round."""
        self._require_state(C.TRAINING, "a model update")
        assert self._mask is not None
        values = checked_vector(model, self.manifest.model_length, "model update")
        if self.manifest.mode is not Mode.PLAINTEXT:
            # Every coordinate, not only the encrypted ones: which are encrypted is agreed
            # at run time, so a bound that held only for some would hold by chance.
            check_bound(values, self.manifest.params.value_bound)
        self._upload_values = self._mask.gather(values)  # all-ones mask: no copy
        step = self._send_upload()  # raises (e.g. values out of bound) before any change
        self.state = C.UPDATE_UPLOADED
        return step

    def _send_upload(self) -> Step:
        """Weight, protect and send the stored values (again, after a dropout), in parts
        of at most ``part_bytes``, each made only when the previous one has been taken
        (:attr:`Step.later`): the whole encrypted upload is never held."""
        assert self._upload_values is not None
        protected, plain = self._upload_values
        if self.manifest.mode is not Mode.PLAINTEXT and self._keys.public_key is None:
            raise ParameterError("no public key yet: key agreement has not finished")
        parts = upload_parts(self.manifest.mode, self.context, self._keys.public_key,
                             protected, self._weight, plain, part_bytes=self.part_bytes)
        step, to = self._step, [self._aggregator]
        self._uploaded_at = step[3]
        return Step(later=[(self._send(to, part.body(), step) for part in parts)])

    def _require_state(self, state: ClientState, what: str) -> None:
        if self.state is not state:
            raise ProtocolError(
                f"{what} was submitted while the client is {self.state.value}, not "
                f"{state.value}; wait for the event that asks for it"
            )

    # -- key agreement -----------------------------------------------------------------------
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
        refusal = keygen_refusal(self.manifest, self.me, message.body)  # another manifest: leave
        if refusal is not None:
            return self._abort_locally(refusal)
        self._heard(now)
        if self.me not in message.body.participants:
            return self._abort_locally("excluded from the new key epoch", notify=False)
        self.state = C.KEY_AGREEMENT
        self._step = message.header.step
        self._keys.wipe()  # the old epoch's secrets are done with
        self._keys = EpochKeys(self.manifest, self.me, self._step[1], message.body.participants)
        self._budget = QueryBudget(self.manifest.params.decryption_queries)
        own = self._keys.start(self.context, self._randomness)
        return self._maybe_confirm() if own is None else self._deal(own)

    def _deal(self, own: PartyKeys) -> Step:
        """Publish my public share and send each other holder its Shamir share of my key."""
        deliveries = self._keys.deal(self.context, own)
        frame = encode_public_key(self.context, own.public_share, party_index=own.index)
        step = Step(sends=[self._send([self._aggregator], PublicShare(frame), self._step,
                                      addressed="*")])
        step.sends += [self._deliver(holder, fields) for holder, fields in deliveries.items()]
        return step.extend(self._maybe_confirm())

    def _deliver(self, holder: PartyId, fields: dict[str, bytes]) -> Outgoing:
        """A KeyDelivery sealed for ``holder`` alone, relayed by the aggregator."""
        header = self._header(holder, self._step)
        packed = pack_mapping(fields)
        sealed = seal_for(self._identity, self._directory[holder], packed,
                          context=seal_context(header, "key-delivery"), nonce=self._randomness(12))
        for secret in (packed, fields["shamir"]):  # fresh copies of the share (not group_key)
            wipe(secret)
        return self._send([self._aggregator], KeyDelivery(sealed), self._step, addressed=holder)

    def _on_public_share(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, PublicShare)
        if message.header.epoch > self._step[1]:
            return self._on_early_key(message, now)
        self._require_key_part(message, self._keys.shares_from)
        self._keys.take_public_share(self.context, message.header.sender,
                                     message.body.key_frame)
        self._heard(now)
        own = self._keys.member_keys(self.context)
        return self._maybe_confirm() if own is None else self._deal(own)

    def _on_key_delivery(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, KeyDelivery)
        if message.header.epoch > self._step[1]:
            return self._on_early_key(message, now)
        sender = message.header.sender
        self._require_key_part(message, self._keys.deliveries_from)
        plaintext = open_from(self._identity, self._directory[sender], message.body.sealed,
                              context=seal_context(message.header, "key-delivery"))
        fields: dict[str, bytes] = {}
        try:
            fields = open_mapping(plaintext, DELIVERY_FIELDS, "the key delivery")
            self._keys.take_delivery(self.context, sender, fields)
        finally:  # the opened share or secret key, in bytes (the group key is kept)
            wipe(plaintext)
            for name in ("shamir", "secret_key"):
                if name in fields:
                    wipe(fields[name])
        self._heard(now)
        return self._maybe_confirm()

    def _require_key_part(self, message: Message, taken: set[PartyId]) -> None:
        """A part of this epoch's key, from one who contributes to it, the first from them."""
        self._require_step(message, self._step)
        contributors = [p for p in self._keys.contributors if p != self.me]
        self._require_sender(message, contributors, "a key dealer")
        self._require_new(taken, message.header.sender, message)

    def _maybe_confirm(self) -> Step:
        """Confirm the key once all of its parts are in (threshold: shares and group key)."""
        if self.state is not C.KEY_AGREEMENT:
            return Step()
        key_id = self._keys.outcome(self.context)
        if isinstance(key_id, Mismatch):
            return self._abort_locally(key_id.reason)
        if key_id is None:
            return Step()
        self.state = C.KEYS_CONFIRMED
        body = KeyConfirm(key_id, self._keys.group_check())
        return Step(
            sends=self._sends([self._aggregator], body, self._step),
            events=[KeyAgreed(self._step[1], key_id, self._keys.holders)],
        )

    # -- mask agreement and rounds: announcements --------------------------------------------
    def _on_mask_start(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, MaskStart)
        retry = self._check_announcement(message, Stage.MASK, 0)
        if not self._keys.matches(message.body.key_id, message.body.group_check):
            return self._abort_locally("the aggregator announced a key other parties do not hold")
        self._step = message.header.step
        self._weight = message.body.weight
        self._heard(now)
        if retry:
            return self._reupload()
        self.state = C.MASK_COMPUTING
        return self._events(SensitivityNeeded())

    def _on_round_start(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, RoundStart)
        if self._mask is None:
            raise UnexpectedMessage("a round announcement before the mask was agreed")
        retry = self._check_announcement(message, Stage.ROUND, self._round + 1)
        body = message.body
        if not self._keys.matches(body.key_id, body.group_check) or (
            body.mask_digest != self._mask.digest()
        ):
            return self._abort_locally("the aggregator announced a key or mask we do not share")
        self._step = message.header.step
        self._weight = body.weight
        self._heard(now)
        if retry:
            return self._reupload()
        self._round = message.header.round
        self.state = C.TRAINING
        step = Step()
        if not self._mask_announced:
            self._mask_announced = True
            step.events.append(MaskAgreed(self._mask))
        step.events.append(UpdateNeeded(self._round, self.model))
        return step

    def _check_announcement(self, message: Message, stage: Stage, next_round: int) -> bool:
        """True for a retry of the current upload; False for a new step; else raise."""
        self._require_from_aggregator(message)
        header = message.header
        retrying = self.state in (C.MASK_COMPUTING, C.MASK_UPLOADED, C.TRAINING, C.UPDATE_UPLOADED)
        if retrying:
            expected = (stage, self._step[1], self._step[2])
            if (header.stage, header.epoch, header.round) == expected and (
                header.attempt > self._step[3]
            ):
                return True
        elif (header.stage, header.epoch, header.round) == (stage, self._step[1], next_round):
            return False  # any attempt: a retry may overtake the first announcement
        raise StaleMessage(
            f"{message.kind} for epoch {header.epoch}, round {header.round}, attempt "
            f"{header.attempt} does not follow this client's step {self._step}; discarded"
        )

    def _reupload(self) -> Step:
        """Survivors upload again after a dropout, with their new FedAvg weights."""
        if self._upload_values is None or self.state in (C.MASK_COMPUTING, C.TRAINING):
            return Step()
        return self._send_upload()

    # -- the aggregate and its decryption -------------------------------------------------------
    def _on_aggregate(self, message: Message, now: float) -> Step:
        """Single-key and plaintext modes (and nothing encrypted): decrypt locally."""
        assert isinstance(message.body, Aggregate)
        self._require_from_aggregator(message)
        self._require_step(message, self._step)
        length = self._protected_length()
        if self.manifest.mode is Mode.THRESHOLD and length:
            raise UnexpectedMessage("threshold mode decrypts jointly: no Aggregate is sent")
        plain = self._plain_of(message.body.plain, length, "the aggregate's plain part")
        assert self._keys.key_id is not None
        opened = open_protected(self.manifest.mode, self.context, self._keys.key_id,
                                message.body.protected, length)
        self._heard(now)
        self._plain_part = plain
        if isinstance(opened, np.ndarray):
            return self._decrypted(opened)
        if self.manifest.mode is Mode.SINGLE_KEY:
            assert self._keys.secret is not None
            return self._decrypted(decrypt_vector(self.context, self._keys.secret, opened))
        return self._decrypted(np.zeros(0))

    def _in_mask(self) -> bool:
        return self.state in (C.MASK_UPLOADED, C.MASK_DECRYPTING)

    def _protected_length(self) -> int:
        if self._in_mask():
            return self.manifest.model_length
        assert self._mask is not None
        return self._mask.count

    def _plain_length(self, length: int) -> int:
        """Values sent in the clear besides *length* protected ones (none for the mask)."""
        return 0 if self._in_mask() else self.manifest.model_length - length

    def _plain_of(self, data: bytes, length: int, what: str) -> FloatArray:
        return decode_plain(data, self._plain_length(length), what)

    def _require_decryption_step(self, message: Message, members: tuple[PartyId, ...],
                                 oldest: int) -> None:
        """A joint-decryption message of my stage, epoch and round, of attempt *oldest*
        or later, for a set of t or more holders."""
        if self.manifest.mode is not Mode.THRESHOLD:
            raise UnexpectedMessage(f"{message.kind}: only threshold mode decrypts jointly")
        self._require_from_aggregator(message)
        header, (stage, epoch, round_, _) = message.header, self._step
        if (header.stage, header.epoch, header.round) != (stage, epoch, round_) or (
                header.attempt < oldest):
            raise StaleMessage(f"{message.kind} for step {header.step} does not follow this "
                               f"client's step {self._step}; discarded")
        if not set(members) <= set(self._keys.holders) or len(members) < (
                self.manifest.threshold):
            raise MalformedMessage(f"the decryption set {list(members)} is not t holders of "
                                   "the key")

    def _on_decrypt_request(self, message: Message, now: float) -> Step:
        """A member of the decryption set: decrypt one part of c1 for the set, masked and
        padded; once per part and attempt."""
        assert isinstance(message.body, DecryptRequest)
        body = message.body
        self._require_decryption_step(message, body.members, self._step[3])
        if self.me not in body.members:
            raise MalformedMessage("a decryption request for a set I am not in")
        self._shares_given.check(message.header.attempt, body.part, body.parts)
        assert self._keys.key_id is not None and self._keys.threshold_key is not None
        length = self._protected_length()
        order = decode_request(self.context, self._keys.key_id, length, body)
        if not self._budget.allows(order.count):
            return self._abort_locally(
                f"this key epoch has given {self._budget.used} decryption shares of the "
                f"{self._budget.limit} its noise flooding allows; the aggregator must rotate "
                "keys first")
        keys = member_keys(self._identity, self._directory, self._keys, body.members,
                           self.manifest.session, self._step[1])
        body_out = share_part(self.context, self.manifest, keys, length, body, order,
                              message.header.step)
        self._budget.spend(order.count)
        self._shares_given.record(message.header.attempt, body.part, body.parts)
        self._upload_values = None  # final once decrypting: no retry can ask for it again
        self._step = message.header.step
        self.state = C.MASK_DECRYPTING if self._in_mask() else C.ROUND_DECRYPTING
        self._heard(now)
        return Step(sends=self._sends([self._aggregator], body_out, self._step))

    def _on_fused(self, message: Message, now: float) -> Step:
        """A part of the set's fused polynomials: remove the pad and decode it into
        place; once every part is in, check the values and finish the step."""
        assert isinstance(message.body, Fused)
        body = message.body
        # any attempt of this decryption: a part fused by an earlier set may come after a
        # later set's messages (transports reorder); each is unpadded with its own attempt
        self._require_decryption_step(message, body.members, self._uploaded_at)
        assert self._keys.key_id is not None and self._keys.group_key is not None
        length = self._protected_length()
        fused = self._fused or FusedParts(self.context, length, self._plain_length(length),
                                          body.parts)
        done = fused.add(self.manifest, self._keys.key_id, self._keys.holders,
                         self._keys.group_key, body, message.header.step)  # or raise
        self._fused, self._step = fused, max(self._step, message.header.step)  # never back
        self._upload_values = None  # final once decrypting: no retry can ask for it again
        self._heard(now)
        if not done:
            return Step()
        self._plain_part, self._fused = fused.plain, None
        problem = implausible(fused.values, sensitivities=self._in_mask(),
                              value_bound=self.manifest.params.value_bound,
                              error=self.context.error_bound(len(self.manifest.clients)))
        if problem is not None:  # a wrong pad or share: the garbage must not be used
            stage = "the sensitivity sum" if self._in_mask() else f"round {self._round}'s model"
            return self._abort_locally(f"the fused result for {stage} is implausible: {problem} "
                                       "(a wrong share or pad: a misbehaving aggregator or client)")
        if self._in_mask():
            return self._decrypted(fused.take())
        assert self._mask is not None
        # scattered here, so that the fused values are freed before the model is copied
        return self._round_done(self._mask.scatter(fused.take(), fused.plain))

    def _decrypted(self, values: FloatArray) -> Step:
        """The protected part is in the clear (for this client only): finish the step."""
        if self._in_mask():
            self._shares_given = SharesGiven()
            return self._select_mask(values)
        assert self._mask is not None and self._plain_part is not None
        return self._round_done(self._mask.scatter(values, self._plain_part))

    def _round_done(self, model: FloatArray) -> Step:
        """This round's global model is in the clear (for this client only)."""
        self._shares_given = SharesGiven()
        self.model = model
        self.state = C.ROUND_DONE
        self._upload_values = None
        assert self._keys.group_key is not None
        where = f"{self.manifest.session}/{self._step[1]}/{self._round}".encode()
        check = model_check(self._keys.group_key, where, model.data.cast("B"))
        return Step(
            sends=self._sends([self._aggregator], RoundDone(check), self._step),
            events=[RoundCompleted(self._round, (), model.copy())],
        )

    def _select_mask(self, sensitivity: FloatArray) -> Step:
        policy = self.manifest.mask
        ranges = self.manifest.always_encrypt if policy.first_and_last else ()
        np.maximum(sensitivity, 0.0, out=sensitivity)  # in place: a copy is 0.9 GB at BERT
        mask = select_top_fraction(sensitivity, policy.fraction, always_include=ranges)
        self._mask = mask
        self.state = C.MASK_CONFIRMED
        self._upload_values = None
        body = MaskConfirm(mask.bits(), mask.digest())
        return Step(sends=self._sends([self._aggregator], body, self._step))

    # -- end of the session ------------------------------------------------------------------
    def _on_finished(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, Finished)
        self._require_from_aggregator(message)
        if message.body.rounds != self._round or message.header.round != self._round:
            raise StaleMessage("the end of session names another round than this client's")
        self.state = C.FINISHED
        self._keys.wipe()
        return self._events(FinishedEvent(self._round))

    def _on_abort(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, Abort)
        self._require_from_aggregator(message)
        if self.state in self.TERMINAL:
            raise UnexpectedMessage("an abort after the session ended; discarded")
        if message.header.epoch < self._step[1]:
            raise StaleMessage("an abort from an earlier key epoch (a replay); discarded")
        self.state = C.ABORTED
        self._keys.wipe()
        return self._events(Aborted(message.body.reason, abort_error(message.body.reason)))

    def _deadline_passed(self, now: float) -> Step:
        patience = self.manifest.timeouts.client_patience_s
        return self._abort_locally(f"the aggregator was silent for {patience:g} s")

    def abort(self, reason: str, now: float) -> Step:
        """Leave the session (e.g. the application failed); the aggregator is told."""
        if self.state in self.TERMINAL:
            return Step()
        return self._abort_locally(reason)

    def _abort_locally(self, reason: str, *, notify: bool = True) -> Step:
        self.state = C.ABORTED
        self._keys.wipe()
        sends = self._sends([self._aggregator], Abort(reason), self._step) if notify else []
        return Step(sends=sends, events=[Aborted(reason, abort_error(reason))])

    def _require_from_aggregator(self, message: Message) -> None:
        self._require_sender(message, [self._aggregator], "the aggregator")

    def _heard(self, now: float) -> None:
        self._deadline = now + self.manifest.timeouts.client_patience_s

    # -- the transitions table (targets: protocols/states.py) --------------------------------
    _EARLY_KEYS: ClassVar[Mapping[type, Handler]] = {
        PublicShare: _on_early_key,
        KeyDelivery: _on_early_key,
    }
    _DECRYPTION: ClassVar[Mapping[type, Handler]] = {
        DecryptRequest: _on_decrypt_request,
        Fused: _on_fused,
    }
    TRANSITIONS: ClassVar[Mapping[ClientState, Mapping[type, Handler]]] = {
        C.JOINING: {KeygenStart: _on_keygen_start, **_EARLY_KEYS},
        C.KEY_AGREEMENT: {
            KeygenStart: _on_keygen_start,
            PublicShare: _on_public_share,
            KeyDelivery: _on_key_delivery,
        },
        C.KEYS_CONFIRMED: {
            **_EARLY_KEYS,
            KeygenStart: _on_keygen_start,
            MaskStart: _on_mask_start,
            RoundStart: _on_round_start,
        },
        C.MASK_COMPUTING: {MaskStart: _on_mask_start},
        C.MASK_UPLOADED: {MaskStart: _on_mask_start, Aggregate: _on_aggregate, **_DECRYPTION},
        C.MASK_DECRYPTING: _DECRYPTION,
        C.MASK_CONFIRMED: {
            **_EARLY_KEYS,
            KeygenStart: _on_keygen_start,
            RoundStart: _on_round_start,
        },
        C.TRAINING: {RoundStart: _on_round_start},
        C.UPDATE_UPLOADED: {RoundStart: _on_round_start, Aggregate: _on_aggregate,
                            **_DECRYPTION},
        C.ROUND_DECRYPTING: _DECRYPTION,
        C.ROUND_DONE: {
            **_EARLY_KEYS,
            KeygenStart: _on_keygen_start,
            RoundStart: _on_round_start,
            Finished: _on_finished,
        },
    }
