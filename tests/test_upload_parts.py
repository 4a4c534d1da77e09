"""Uploads streamed in parts: the real state machines, real OpenFHE, a simulated network.

A client whose upload is larger than its ``part_bytes`` sends it as several signed
messages (part, parts); the aggregator adds each into its running sum as it arrives,
in any order, holding no more than one part besides the sum.  Repeated parts, parts
that disagree on their count, carry other ciphertexts than their index says, or come
from an earlier round are refused by name; a missing part, or a client that dies
mid-stream, is an ordinary dropout.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
from protocol_harness import (
    AGGREGATOR,
    Network,
    assert_models_match_fedavg,
    build_manifest,
    identity,
    run_until,
)

from protocols import Mode, PartyDropped
from protocols.codec import decode_message, encode_message
from protocols.messages import Message, Stage, UpdateUpload
from protocols.protection import check_part_bytes, part_span, upload_parts
from protocols.states import AggregatorState
from threshold_fl.crypto.vectors import ciphertext_count
from threshold_fl.errors import DuplicateMessage, MalformedMessage, ParameterError, StaleMessage
from threshold_fl.node import FederatedClient
from transports import MemoryHub

#: Five ciphertexts' worth of values and a bit: with 60 % encrypted, a round's upload
#: is four ciphertexts (about 132 kB each) and about 16,000 float32 values.
LENGTH = 5 * 8192 + 100
PART_BYTES = 150_000  # a ciphertext and change per part: several parts per upload


def streaming_network(mode: Mode = Mode.THRESHOLD) -> Network:
    net = Network(build_manifest(3, mode=mode, length=LENGTH, fraction=0.6, rounds=2))
    for client in net.clients.values():
        client.part_bytes = PART_BYTES
    return net


def parts_sent(net: Network, sender: str, kind: str = "UpdateUpload") -> list[Message]:
    return [decode_message(data, net.manifest.directory)
            for name, sent, data in net.history if name == sender and sent == kind]


def assert_rounds_correct(net: Network, survivors: list[str]) -> None:
    assert [event.round for event in net.completed_rounds(AGGREGATOR)] == [1, 2]
    assert_models_match_fedavg(net, survivors)


@pytest.mark.parametrize("mode", list(Mode))
def test_an_upload_larger_than_a_part_streams_in_parts_into_the_sum(mode: Mode) -> None:
    net = streaming_network(mode)
    net.start()
    net.run()
    assert_rounds_correct(net, list(net.clients))
    assert not net.rejections
    sensitivity = parts_sent(net, "client1", "SensitivityUpload")
    updates = [m for m in parts_sent(net, "client1") if m.header.round == 1]
    for parts in (sensitivity, updates):
        count = parts[0].body.parts  # type: ignore[union-attr]
        assert count > 1 and len(parts) == count
        assert sorted(m.body.part for m in parts) == list(range(count))  # type: ignore[union-attr]
        assert all(len(m.raw) <= PART_BYTES for m in parts)  # a maximum, every byte counted
    # The aggregator held at most one part's ciphertexts besides its running sum.
    assert net.clients["client1"].mask is not None
    encrypted = net.clients["client1"].mask.count
    items = encrypted if mode is Mode.PLAINTEXT else ciphertext_count(
        net.aggregator.context, encrypted)
    count = updates[0].body.parts  # type: ignore[union-attr]
    largest = max(b - a for a, b in (part_span(items, count, k) for k in range(count)))
    uploads = net.aggregator._uploads
    assert uploads is not None
    assert 0 < uploads.peak_staged <= largest < items


@pytest.mark.parametrize("mode", list(Mode))
def test_part_bytes_is_the_most_bytes_of_any_part_message(mode: Mode) -> None:
    """Every part's signed message is at most ``part_bytes``, from the smallest
    ``part_bytes`` allowed (one ciphertext or value a part) to one part for it all; a
    ``part_bytes`` below that, or over the transport's max_payload, is refused by name."""
    net = streaming_network(mode)
    net.start()
    assert run_until(net, lambda: net.aggregator.state is AggregatorState.MASK_UPLOAD)
    client = net.clients["client1"]
    values, plain = np.linspace(-1, 1, 2 * 8192 + 5), np.linspace(0, 1, 3000)

    def sizes(part_bytes: int) -> list[int]:
        parts = list(upload_parts(mode, client.context, client._keys.public_key, values, 0.5,
                                  plain, part_bytes=part_bytes))
        assert [p.part for p in parts] == list(range(parts[0].parts))
        return [len(client._send([AGGREGATOR], p.body(), (Stage.ROUND, 1, 1, 1)).data)
                for p in parts]

    with pytest.raises(ParameterError, match=r"part_bytes 1000 is too small: .* make "
                                             r"part_bytes at least \d+") as refused:
        sizes(1000)
    found = re.search(r"at least (\d+)$", str(refused.value))
    assert found is not None
    smallest = int(found.group(1))
    most = max(values.size if mode is Mode.PLAINTEXT else 3, plain.size)  # 3 ciphertexts
    (whole,) = sizes(10**8)
    for part_bytes in (smallest, smallest + 40_000, whole // 2):
        sent = sizes(part_bytes)
        assert max(sent) <= part_bytes, (part_bytes, sent)
        assert 2 <= len(sent) <= most
    with pytest.raises(ParameterError, match="exceed the transport's max_payload of 1000 "
                                             "bytes, and be refused"):
        check_part_bytes(1001, 1000)
    check_part_bytes(1000, 1000)


def test_a_federated_client_refuses_a_part_bytes_too_small_when_made() -> None:
    """Not at its first upload, minutes into the session: when it is made."""
    manifest = build_manifest(3, length=LENGTH, fraction=0.6, rounds=1)
    with pytest.raises(ParameterError, match=r"part_bytes 50000 is too small: an upload "
                                             r"part carries at least one ciphertext"):
        FederatedClient(manifest, identity("client1"), MemoryHub().connect("client1"),
                        samples=1, train=lambda round_, model: np.zeros(LENGTH),
                        sensitivity=lambda: np.zeros(LENGTH), part_bytes=50_000)


def held_back(net: Network, victim: str, keep: Callable[[int], bool]) -> None:
    """The network delivers only the round-1 update parts of *victim* that ``keep(n)``
    accepts (n counts its update messages from 0); the others are lost."""
    sent = [0]

    def rule(sender: str, recipient: str, kind: str, now: float) -> list[float]:
        if sender == victim and kind == "UpdateUpload" and net.clients[victim]._round == 1:
            sent[0] += 1
            return [0.0] if keep(sent[0] - 1) else []
        return [0.0]

    net.faults = rule


def resigned(message: Message, **changes: object) -> bytes:
    body = message.body
    assert isinstance(body, UpdateUpload)
    fields = {"protected": body.protected, "plain": body.plain, "part": body.part,
              "parts": body.parts, **changes}
    return encode_message(identity(message.header.sender),
                          Message(message.header, UpdateUpload(**fields)))  # type: ignore[arg-type]


def test_parts_in_any_order_and_every_bad_part_refused_by_name() -> None:
    net = streaming_network()
    held_back(net, "client1", lambda n: False)  # all of them: this test feeds them itself
    net.start()
    assert run_until(net, lambda: len(parts_sent(net, "client1")) > 0
                     and net.aggregator.state is AggregatorState.ROUND_UPLOAD)
    parts = parts_sent(net, "client1")
    count = parts[0].body.parts  # type: ignore[union-attr]
    assert count >= 4 and len(parts) == count
    aggregator = net.aggregator
    with pytest.raises(MalformedMessage, match=r"part 0 from 'client1' says the upload has "
                                               r"100000 parts, more than the \d+ an upload of "
                                               r"this size can have"):
        aggregator.receive(resigned(parts[0], parts=100_000), net.now)
    assert aggregator._uploads is not None and not aggregator._uploads.progress("client1")
    aggregator.receive(parts[0].raw, net.now)
    assert aggregator._uploads is not None
    waiting = f"(upload parts in: 'client1' 1/{count})"
    assert aggregator.waiting_for().endswith(waiting), aggregator.waiting_for()

    with pytest.raises(DuplicateMessage, match=f"upload part 0 of {count} from 'client1' "
                                               "arrived again"):
        aggregator.receive(parts[0].raw, net.now)
    with pytest.raises(MalformedMessage, match=f"says the upload has {count + 1} parts, its "
                                               f"earlier parts said {count}"):
        aggregator.receive(resigned(parts[1], parts=count + 1), net.now)
    with pytest.raises(MalformedMessage, match="the plain part of upload part 1 of "
                                               f"{count} has .* bytes, expected"):
        aggregator.receive(resigned(parts[2], part=1), net.now)  # part 2's values as part 1
    plain_1 = parts[1].body.plain  # type: ignore[union-attr]
    with pytest.raises(MalformedMessage, match=r"UpdateUpload from 'client1' failed a check: "
                                               r".*missing, duplicated or out of order"):
        aggregator.receive(resigned(parts[3], part=1, plain=plain_1), net.now)
    with pytest.raises(MalformedMessage, match=f"upload part {count} is out of range: the "
                                               f"upload has {count} parts"):
        UpdateUpload(protected=(), plain=b"", part=count, parts=count)
    with pytest.raises(MalformedMessage, match="1 to 100000 parts, got 0"):
        UpdateUpload(protected=(), plain=b"", part=0, parts=0)
    assert aggregator.waiting_for().endswith(waiting)  # the refused parts changed nothing

    for message in reversed(parts[1:]):  # the rest, last first
        net._apply(AGGREGATOR, aggregator.receive(message.raw, net.now))
    assert "client1" in aggregator._uploads.uploaders
    net.run()
    assert_rounds_correct(net, list(net.clients))
    assert all(event.contributors == ("client1", "client2", "client3")
               for event in net.completed_rounds(AGGREGATOR))


def test_a_part_replayed_from_an_earlier_round_is_stale() -> None:
    net = streaming_network()
    net.start()
    assert run_until(net, lambda: net.aggregator.state is AggregatorState.ROUND_UPLOAD
                     and net.aggregator.step[2] == 2)
    old = next(m for m in parts_sent(net, "client1") if m.header.round == 1)
    with pytest.raises(StaleMessage, match="round 1, attempt 1; the current step is ROUND, "
                                           "epoch 1, round 2"):
        net.aggregator.receive(old.raw, net.now)


@pytest.mark.parametrize("how", ["a part lost", "dies mid-stream"])
def test_an_upload_that_breaks_off_is_a_dropout(how: str) -> None:
    net = streaming_network()
    if how == "a part lost":
        held_back(net, "client1", lambda n: n != 1)
    else:
        def rule(sender: str, recipient: str, kind: str, now: float) -> list[float]:
            if sender == "client1" and kind == "UpdateUpload":
                sent.append(kind)
                if len(sent) == 3:  # two parts went out: it dies sending the third
                    net.kill("client1")
                    return []
            return [0.0]

        sent: list[str] = []
        net.faults = rule
    net.start()
    net.run()
    dropped = [e for e in net.events[AGGREGATOR] if isinstance(e, PartyDropped)]
    assert [e.party for e in dropped] == ["client1"]
    assert "round upload deadline" in dropped[0].reason
    assert all(event.contributors == ("client2", "client3")
               for event in net.completed_rounds(AGGREGATOR))
    assert_rounds_correct(net, ["client2", "client3"])
