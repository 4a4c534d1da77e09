"""The key authority of single-key mode (kept for comparison with FedML-HE and FLARE).

It makes one key pair, hands the secret key to every client sealed for that client
alone, publishes the public key, and is done: the aggregator never gets the secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from protocols.events import Aborted, KeyAgreed, Step
from protocols.machine import Handler, Machine, Randomness
from protocols.manifest import Manifest, Role, abort_error
from protocols.messages import Abort, KeyDelivery, KeygenStart, Message, PublicShare
from protocols.session import pack_mapping, seal_context
from protocols.states import AUTHORITY_OTHER_TARGETS, AUTHORITY_TARGETS, KeyAuthorityState
from threshold_fl.crypto.keys import generate_keypair
from threshold_fl.crypto.noise import wipe
from threshold_fl.crypto.wire import encode_public_key, encode_secret_key
from threshold_fl.errors import ProtocolError, StaleMessage, UnexpectedMessage
from threshold_fl.identity import Identity
from threshold_fl.sealing import GROUP_KEY_SIZE, seal_for

__all__ = ["KeyAuthorityMachine", "KeyAuthorityState"]




K = KeyAuthorityState


class KeyAuthorityMachine(Machine[KeyAuthorityState]):
    ROLE = Role.KEY_AUTHORITY
    TERMINAL = frozenset({K.DONE, K.ABORTED})
    TARGETS, OTHER_TARGETS = AUTHORITY_TARGETS, AUTHORITY_OTHER_TARGETS

    def __init__(self, manifest: Manifest, identity: Identity, randomness: Randomness) -> None:
        super().__init__(manifest, identity, randomness, K.IDLE)

    def start(self, now: float) -> Step:
        if self.state is not K.IDLE:
            raise ProtocolError("the key authority was already started")
        self.state = K.WAITING
        self._deadline = now + self.manifest.timeouts.client_patience_s
        return Step()

    def waiting_for(self) -> str:
        if self.state is K.WAITING:
            return "waiting for the aggregator to start key agreement"
        return super().waiting_for()

    def _on_keygen_start(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, KeygenStart)
        aggregator = self.manifest.aggregator.party_id
        self._require_sender(message, [aggregator], "the aggregator")
        if message.header.epoch != 1:
            raise StaleMessage("single-key mode has one key epoch; discarded")
        refusal = self.manifest.mismatch(self.me, aggregator, message.body.manifest)
        if refusal is not None:  # before the rest, which another manifest may well fail
            self.state = K.ABORTED
            return Step(sends=[self._send([aggregator], Abort(refusal), message.header.step)],
                        events=[Aborted(refusal, abort_error(refusal))])
        if not set(message.body.participants) <= set(self.manifest.client_ids):
            raise UnexpectedMessage("the key agreement names parties not in the manifest")
        pair = generate_keypair(self.context)
        group_key = self._randomness(GROUP_KEY_SIZE)
        step = message.header.step
        frame = encode_public_key(self.context, pair.public)
        out = Step(sends=[self._send([aggregator], PublicShare(frame), step, addressed="*")])
        secret = encode_secret_key(self.context, pair.secret)
        for client in message.body.participants:
            header = self._header(client, step)
            packed = pack_mapping({"secret_key": secret, "group_key": group_key})
            sealed = seal_for(self._identity, self._directory[client], packed,
                              context=seal_context(header, "key-delivery"),
                              nonce=self._randomness(12))
            wipe(packed)
            out.sends.append(self._send([aggregator], KeyDelivery(sealed), step, addressed=client))
        wipe(secret)  # the serialised secret key: only the seals carry it on
        self.state = K.DONE
        out.events.append(KeyAgreed(1, pair.public.key_id, message.body.participants))
        return out

    def _on_abort(self, message: Message, now: float) -> Step:
        assert isinstance(message.body, Abort)
        self._require_sender(message, [self.manifest.aggregator.party_id], "the aggregator")
        if self.state in self.TERMINAL:
            raise UnexpectedMessage("an abort after the key authority finished; discarded")
        self.state = K.ABORTED
        return self._events(Aborted(message.body.reason))

    def _deadline_passed(self, now: float) -> Step:
        self.state = K.ABORTED
        return self._events(Aborted("no key request from the aggregator in time"))

    TRANSITIONS: ClassVar[Mapping[KeyAuthorityState, Mapping[type, Handler]]] = {
        K.WAITING: {KeygenStart: _on_keygen_start},
    }
