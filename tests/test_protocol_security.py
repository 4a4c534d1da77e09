"""Security properties of the protocol and adversarial messages, on real OpenFHE.

Each adversarial message must be rejected with a clear MessageRejected subclass and
leave the receiving machine exactly as it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from protocol_harness import AGGREGATOR, Network, build_manifest, identity, snapshot

from protocols import make_manifest
from protocols.codec import decode_message, encode_message
from protocols.messages import Header, Message, PartialShare
from threshold_fl.crypto.keys import PartyKeys, SecretKey, ShamirShare, ThresholdSecret
from threshold_fl.crypto.vectors import PartialDecryption
from threshold_fl.errors import (
    AuthenticationError,
    ForgedMessage,
    MessageRejected,
    StaleMessage,
)
from threshold_fl.identity import Identity
from threshold_fl.sealing import open_from


def assert_rejected(machine: Any, data: bytes, error: type[MessageRejected], now: float) -> str:
    before = snapshot(machine)
    with pytest.raises(error) as caught:
        machine.receive(data, now)
    assert snapshot(machine) == before, "a rejected message changed the machine"
    return str(caught.value)


class ProbingNetwork(Network):
    """Calls ``probe(net, recipient, data)`` right after each successful delivery."""

    probe: Callable[[Network, str, bytes], None] = staticmethod(lambda net, r, d: None)

    def _deliver(self, pending: Any) -> None:
        count = len(self.rejections)
        super()._deliver(pending)
        if len(self.rejections) == count and pending.recipient not in self.dead:
            self.probe(self, pending.recipient, pending.data)



def kind_of(net: Network, data: bytes) -> Message:
    return decode_message(data, net.manifest.directory)


def run_probing(probe: Callable[[Network, str, bytes], None], **options: Any) -> ProbingNetwork:
    net = ProbingNetwork(build_manifest(3, rounds=2, **options))
    net.probe = probe  # type: ignore[method-assign]
    net.start()
    net.run()
    assert net.aborted(AGGREGATOR) is None
    return net


def test_duplicate_messages_are_rejected_everywhere_without_effect() -> None:
    """Every message delivered a second time is rejected and changes nothing, at every
    step (this covers a second partial decryption from the same party)."""
    seen: list[str] = []

    def probe(net: Network, recipient: str, data: bytes) -> None:
        machine = net.machines[recipient]
        if machine.state in machine.TERMINAL:
            return
        message = kind_of(net, data)
        try:
            before = snapshot(machine)
            machine.receive(data, net.now)
        except MessageRejected as exc:
            assert snapshot(machine) == before
            seen.append(f"{message.kind}:{type(exc).__name__}")
            return
        raise AssertionError(f"{recipient} accepted a duplicate {message.kind}")

    run_probing(probe)
    assert "PartialShare:DuplicateMessage" in seen  # one partial per party per ciphertext
    assert "UpdateUpload:DuplicateMessage" in seen
    assert "KeyConfirm:DuplicateMessage" in seen


def test_replay_from_an_earlier_round_is_stale() -> None:
    replays: list[str] = []

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if recipient != AGGREGATOR or message.kind != "UpdateUpload" or message.header.round != 2:
            return
        if net.aggregator.state.name != "ROUND_UPLOAD":
            return
        old = [d for sender, _, d in net.history
               if sender == message.header.sender and kind_of(net, d).kind == "UpdateUpload"
               and kind_of(net, d).header.round == 1]
        for data_1 in old:
            replays.append(assert_rejected(net.aggregator, data_1, StaleMessage, net.now))

    run_probing(probe)
    assert replays and "round 1" in replays[0]


def test_forged_sender_bad_signature_wrong_session_and_outsider() -> None:
    checked: list[str] = []
    other = make_manifest(
        session="another-session", aggregator=identity(AGGREGATOR).public,
        clients=[identity(f"client{i}").public for i in (1, 2, 3)], model_length=40,
    )

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if recipient != AGGREGATOR or message.kind != "UpdateUpload" or checked:
            return
        machine = net.aggregator
        signed_by_other = encode_message(identity("client3"), Message(
            Header(**{**vars(message.header), "sender": "client3"}), message.body))
        forged = signed_by_other.replace(b"client3", message.header.sender.encode(), 1)
        checked.append(assert_rejected(machine, forged, ForgedMessage, net.now))
        tampered = data[:-1] + bytes([data[-1] ^ 1])
        checked.append(assert_rejected(machine, tampered, ForgedMessage, net.now))
        header = Header(**{**vars(message.header), "session": other.session})
        wrong_session = encode_message(identity(message.header.sender), Message(header,
                                                                                message.body))
        checked.append(assert_rejected(machine, wrong_session, StaleMessage, net.now))
        stranger = Identity.from_seed("mallory", bytes(32))
        outsider = encode_message(stranger, Message(
            Header(**{**vars(message.header), "sender": "mallory"}), message.body))
        checked.append(assert_rejected(machine, outsider, ForgedMessage, net.now))

    run_probing(probe)
    assert len(checked) == 4
    assert "bad signature" in checked[0] and "bad signature" in checked[1]
    assert "another-session" in checked[2]
    assert "not in the manifest" in checked[3]


def test_partial_share_for_someone_else_is_forged() -> None:
    """A client may not send a partial decryption on behalf of another live client."""
    outcomes: list[str] = []

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if recipient != AGGREGATOR or message.kind != "PartialShare" or outcomes:
            return
        assert isinstance(message.body, PartialShare)
        victim = next(n for n in net.clients if n != message.header.sender)
        body = PartialShare(victim, message.body.vector_digest, message.body.sealed)
        forged = encode_message(identity(message.header.sender), Message(message.header, body))
        outcomes.append(assert_rejected(net.aggregator, forged, MessageRejected, net.now))

    run_probing(probe)
    assert outcomes


def walk(value: Any, seen: set[int] | None = None, depth: int = 0) -> list[Any]:
    seen = set() if seen is None else seen
    if id(value) in seen or depth > 8:
        return []
    seen.add(id(value))
    found = [value]
    children: list[Any] = []
    if isinstance(value, dict):
        children = [*value.keys(), *value.values()]
    elif isinstance(value, list | tuple | set | frozenset):
        children = list(value)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        children = list(vars(value).values())
    for child in children:
        found.extend(walk(child, seen, depth + 1))
    return found


def test_aggregator_never_holds_secrets_or_anything_it_could_fuse() -> None:
    snapshots: list[list[Any]] = []
    group_keys: set[bytes] = set()

    def probe(net: Network, recipient: str, data: bytes) -> None:
        snapshots.append(walk(net.aggregator))
        for client in net.clients.values():
            if client._keys.group_key:
                group_keys.add(client._keys.group_key)

    net = run_probing(probe, fraction=1.0)
    forbidden = (SecretKey, ThresholdSecret, ShamirShare, PartialDecryption, PartyKeys)
    for objects in snapshots:
        assert not [o for o in objects if isinstance(o, forbidden)]
        assert not [o for o in objects if isinstance(o, bytes) and o in group_keys]
        assert not [o for o in objects
                    if isinstance(o, np.ndarray) and o.dtype.kind == "f" and o.size == 40]
    assert group_keys and net.aggregator.mask is not None


def test_key_deliveries_are_sealed_for_their_recipient_alone() -> None:
    opened: list[str] = []

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if message.kind != "KeyDelivery" or recipient == AGGREGATOR:
            return
        from protocols.session import seal_context

        sender = net.manifest.directory[message.header.sender]
        context = seal_context(message.header, "key-delivery")
        sealed = message.body.sealed  # type: ignore[union-attr]
        for outsider in (AGGREGATOR, *(n for n in net.clients if n != recipient)):
            if outsider == message.header.sender:
                continue
            with pytest.raises(AuthenticationError):
                open_from(identity(outsider), sender, sealed, context=context)
        assert open_from(identity(recipient), sender, sealed, context=context)
        opened.append(recipient)

    run_probing(probe)
    assert len(opened) == 6  # 3 dealers x 2 recipients


def test_partial_decryptions_travel_under_the_group_key() -> None:
    sealed_blobs: list[bytes] = []

    def probe(net: Network, recipient: str, data: bytes) -> None:
        message = kind_of(net, data)
        if recipient == AGGREGATOR and message.kind == "PartialShare":
            sealed_blobs.append(message.body.sealed)  # type: ignore[union-attr]

    run_probing(probe)
    assert sealed_blobs
    for blob in sealed_blobs:
        assert b"TFLF" not in blob  # no crypto frame is visible to the aggregator or broker
