"""The manifest bound into the protocol (issue 18, item 5): ``Hello`` and ``KeygenStart``
carry the sender's manifest fingerprint, and a party that runs another manifest is
refused at once, with both fingerprints named and told what to do, in both directions."""

from __future__ import annotations

import dataclasses

import pytest
from protocol_harness import AGGREGATOR, AUTHORITY, Network, build_manifest, identity
from protocol_harness import counter_randomness as randomness

from protocols import (
    AggregatorMachine,
    ClientMachine,
    KeyAuthorityMachine,
    Manifest,
    Mode,
    PartyRefused,
)
from protocols.aggregator import AggregatorState
from protocols.authority import KeyAuthorityState
from protocols.client import ClientState
from protocols.codec import decode_message, encode_message
from protocols.events import Aborted
from protocols.messages import Abort, Header, Hello, KeygenStart, Message, Stage
from threshold_fl.errors import ManifestMismatch, SessionAborted

REMEDY = "every party must run the same manifest file"


def _manifests(mode: Mode = Mode.THRESHOLD) -> tuple[Manifest, Manifest]:
    """The organiser's manifest and a copy with one setting changed (same session, same
    parties and keys: every message still authenticates)."""
    organisers = build_manifest(3, mode=mode)
    other = dataclasses.replace(organisers, rounds=organisers.rounds + 1)
    assert other.session == organisers.session
    assert other.fingerprint() != organisers.fingerprint()
    return organisers, other


def _names_both(reason: str, refuser: tuple[str, Manifest], refused: tuple[str, Manifest]
                ) -> None:
    """The reason names who runs which fingerprint (not swapped) and what to do."""
    (me, mine), (them, theirs) = refuser, refused
    assert f"{them!r} runs manifest fingerprint {theirs.fingerprint()[:16]}" in reason
    assert f"{me!r} runs {mine.fingerprint()[:16]}" in reason
    assert REMEDY in reason


def _client(manifest: Manifest, name: str = "client1") -> ClientMachine:
    return ClientMachine(manifest, identity(name), randomness(name), samples=10)


def test_messages_carry_the_senders_fingerprint() -> None:
    net = Network(build_manifest(3))
    net.start()
    net.run()
    directory = net.manifest.directory
    sent = {kind: decode_message(data, directory).body for _, kind, data in net.history
            if kind in ("Hello", "KeygenStart")}
    assert isinstance(sent["Hello"], Hello) and isinstance(sent["KeygenStart"], KeygenStart)
    assert sent["Hello"].manifest == net.manifest.fingerprint()
    assert sent["KeygenStart"].manifest == net.manifest.fingerprint()
    assert all(net.finished(name) for name in net.clients)


def test_a_hello_from_another_manifest_is_refused_and_the_client_told() -> None:
    organisers, other = _manifests()
    aggregator = AggregatorMachine(organisers, identity(AGGREGATOR), randomness(AGGREGATOR))
    aggregator.start(0.0)
    stale = _client(other)
    (hello,) = stale.start(0.0).sends
    step = aggregator.receive(hello.data, 0.1)

    # Refused at once: told with an Abort, the operator with an event; it has not joined.
    (refused,) = step.events
    assert isinstance(refused, PartyRefused) and refused.party == "client1"
    _names_both(refused.reason, (AGGREGATOR, organisers), ("client1", other))
    assert aggregator.state is AggregatorState.JOINING and "client1" in aggregator.waiting_for()
    (answer,) = step.sends
    assert answer.recipients == ("client1",) and answer.kind == "Abort"
    abort = decode_message(answer.data, other.directory)
    assert isinstance(abort.body, Abort) and abort.body.reason == refused.reason

    # The client stops waiting, with the cause as a ManifestMismatch.
    (ended,) = stale.receive(answer.data, 0.2).events
    assert stale.state is ClientState.ABORTED
    assert isinstance(ended, Aborted) and ended.error is ManifestMismatch
    assert issubclass(ManifestMismatch, SessionAborted)
    _names_both(ended.reason, (AGGREGATOR, organisers), ("client1", other))

    # Restarted with the organiser's manifest, it joins: the refusal was not held against it.
    others = [_client(organisers, name) for name in ("client2", "client3")]
    for client in [_client(organisers), *others]:
        step = aggregator.receive(client.start(1.0).sends[0].data, 1.0)
        assert not any(isinstance(event, PartyRefused) for event in step.events)
    assert aggregator.state is AggregatorState.KEY_AGREEMENT


def _keygen_start(sender_manifest: Manifest, to: str, *, fingerprint: str) -> bytes:
    """The KeygenStart of epoch 1 that an aggregator running *sender_manifest* sends."""
    header = Header(sender_manifest.session, AGGREGATOR, to, Stage.KEYS, 1, 0, 1)
    body = KeygenStart(sender_manifest.client_ids, sender_manifest.threshold, fingerprint)
    return encode_message(identity(AGGREGATOR), Message(header, body))


# A changed setting, or another list of clients (whose participants this client's
# manifest does not know): the fingerprint is named either way, not a forgery.
OTHER = pytest.mark.parametrize("changed", ["rounds", "clients"])


def _other(organisers: Manifest, other: Manifest, changed: str) -> Manifest:
    return other if changed == "rounds" else build_manifest(4, mode=organisers.mode)


@OTHER
def test_a_keygen_start_from_another_manifest_makes_the_client_leave(changed: str) -> None:
    organisers, other = _manifests()
    other = _other(organisers, other, changed)
    client = _client(organisers)
    client.start(0.0)
    step = client.receive(_keygen_start(other, "client1", fingerprint=other.fingerprint()), 0.1)

    assert client.state is ClientState.ABORTED
    (ended,) = step.events
    assert isinstance(ended, Aborted) and ended.error is ManifestMismatch
    _names_both(ended.reason, ("client1", organisers), (AGGREGATOR, other))
    (told,) = step.sends  # the aggregator hears why, rather than waiting for a deadline
    assert told.recipients == (AGGREGATOR,) and told.kind == "Abort"
    abort = decode_message(told.data, organisers.directory)
    assert isinstance(abort.body, Abort) and abort.body.reason == ended.reason


def test_a_keygen_start_with_the_same_manifest_starts_key_agreement() -> None:
    # Control for the test above: the same message with the client's own fingerprint.
    organisers, _ = _manifests()
    client = _client(organisers)
    client.start(0.0)
    data = _keygen_start(organisers, "client1", fingerprint=organisers.fingerprint())
    step = client.receive(data, 0.1)
    assert client.state is ClientState.KEY_AGREEMENT
    assert not any(isinstance(event, Aborted) for event in step.events)


@OTHER
def test_the_key_authority_refuses_another_manifest(changed: str) -> None:
    organisers, other = _manifests(Mode.SINGLE_KEY)
    other = _other(organisers, other, changed)
    authority = KeyAuthorityMachine(organisers, identity(AUTHORITY), randomness(AUTHORITY))
    authority.start(0.0)
    step = authority.receive(_keygen_start(other, AUTHORITY, fingerprint=other.fingerprint()),
                             0.1)
    assert authority.state is KeyAuthorityState.ABORTED
    (ended,) = step.events
    assert isinstance(ended, Aborted) and ended.error is ManifestMismatch
    _names_both(ended.reason, (AUTHORITY, organisers), (AGGREGATOR, other))
    (told,) = step.sends  # no key is made or sent
    assert told.recipients == (AGGREGATOR,) and told.kind == "Abort"


@pytest.mark.parametrize("reason", ["the aggregator was silent for 60 s", "dropped: late"])
def test_other_aborts_stay_plain_session_aborts(reason: str) -> None:
    organisers, _ = _manifests()
    client = _client(organisers)
    client.start(0.0)
    header = Header(organisers.session, AGGREGATOR, "client1", Stage.SETUP, 0, 0, 0)
    data = encode_message(identity(AGGREGATOR), Message(header, Abort(reason)))
    (ended,) = client.receive(data, 0.1).events
    assert isinstance(ended, Aborted) and ended.error is SessionAborted
