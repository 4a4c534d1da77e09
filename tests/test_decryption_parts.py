"""The joint decryption streamed in parts: the real state machines, real OpenFHE, a
simulated network.

An aggregate larger than the aggregator's ``part_bytes`` is decrypted part by part:
each member gets part k's c1 (``DecryptRequest`` part k of n), returns its share of it,
and once every member's share of part k is in, the aggregator broadcasts ``Fused`` part
k and drops those shares, asking for the next part; a client decodes each fused part
into place and finishes the step when the last is in.  A member whose parts stop coming
is a dropout: another set is asked for the parts not fused yet.  A member gives one
share of each part per attempt.
"""

from __future__ import annotations

from typing import Any

import pytest
from protocol_harness import (
    AGGREGATOR,
    Network,
    assert_models_match_fedavg,
    build_manifest,
    counter_randomness,
    identity,
    run_until,
)

from protocols.aggregator import AggregatorMachine
from protocols.events import Outgoing
from protocols.messages import Body, DecryptionShare, DecryptRequest, Fused, Message, Stage
from protocols.protection import part_span, require_part_room
from protocols.states import AggregatorState
from threshold_fl.crypto.vectors import ciphertext_count
from threshold_fl.crypto.wire import PolynomialRole, encode_polynomials
from threshold_fl.errors import DuplicateMessage, MalformedMessage, ParameterError
from threshold_fl.identity import PartyId

#: Five ciphertexts' worth of values and a bit; 60 % encrypted in the rounds: four
#: ciphertexts, each c1 about 66 kB, and about 16,000 float32 values in the clear.
LENGTH = 5 * 8192 + 100
PART_BYTES = 150_000  # two ciphertexts' c1 and change: several parts per decryption


class PartsNetwork(Network):
    """Records, after every delivery, how many parts' shares the aggregator holds."""

    def __init__(self, manifest: Any) -> None:
        super().__init__(manifest)
        self.aggregator.part_bytes = PART_BYTES
        self.most_parts_held = 0

    def _deliver(self, pending: Any) -> None:
        super()._deliver(pending)
        decryption = self.aggregator._decryption
        if decryption is not None:
            self.most_parts_held = max(self.most_parts_held, len(decryption.shares))


def streaming_network(clients: int = 3, threshold: int = 2) -> PartsNetwork:
    return PartsNetwork(build_manifest(clients, threshold=threshold, length=LENGTH,
                                       fraction=0.6, rounds=2))


def sent(net: Network, kind: str, sender: str | None = None) -> list[Message]:
    return [net_decode(net, data) for name, what, data in net.history
            if what == kind and (sender is None or name == sender)]


def net_decode(net: Network, data: bytes) -> Message:
    from protocols.codec import decode_message
    return decode_message(data, net.manifest.directory)


def assert_models_correct(net: Network, survivors: list[str]) -> None:
    assert [event.round for event in net.completed_rounds(AGGREGATOR)] == [1, 2]
    assert_models_match_fedavg(net, survivors)


def test_a_large_aggregate_decrypts_in_parts_each_under_part_bytes() -> None:
    net = streaming_network()
    net.start()
    net.run()
    assert net.finished(AGGREGATOR) and not net.rejections
    assert_models_correct(net, list(net.clients))
    context = net.aggregator.context
    mask = net.clients["client1"].mask
    assert mask is not None
    for stage, count in ((Stage.MASK, ciphertext_count(context, LENGTH)),
                         (Stage.ROUND, ciphertext_count(context, mask.count))):
        for kind in ("DecryptRequest", "DecryptionShare", "Fused"):
            messages = [m for m in sent(net, kind) if m.header.stage is stage]
            parts = {m.body.parts for m in messages}  # type: ignore[union-attr]
            assert len(parts) == 1 and 1 < parts.pop() <= count, (stage, kind)
            assert all(len(m.raw) <= PART_BYTES for m in messages), (stage, kind)
        fused = [m for m in sent(net, "Fused") if m.header.stage is stage and m.header.round <= 1]
        assert sorted(m.body.part for m in fused) == list(range(fused[0].body.parts))  # type: ignore[union-attr]
    # the aggregator asks for two parts at a time, and drops a part's shares once fused
    assert net.most_parts_held == 2


def test_one_part_for_a_small_aggregate_as_before() -> None:
    net = Network(build_manifest(3, length=LENGTH, fraction=0.6, rounds=2))  # 256 MiB parts
    net.start()
    net.run()
    assert_models_correct(net, list(net.clients))
    for kind in ("DecryptRequest", "DecryptionShare", "Fused"):
        assert {(m.body.part, m.body.parts) for m in sent(net, kind)} == {(0, 1)}  # type: ignore[union-attr]


def test_a_member_whose_parts_stop_is_replaced_for_the_parts_not_fused() -> None:
    """client3's shares stop after its first one in round 1: at the deadline it is
    dropped, and a new set (attempt 2) is asked for the parts not fused yet only."""
    net = streaming_network(clients=4, threshold=3)
    given: list[int] = []

    def stop_after_first(sender: str, recipient: str, kind: str, now: float) -> list[float]:
        client = net.clients.get(sender)
        if kind == "DecryptionShare" and client is not None and client._round == 1 and (
                sender == "client3"):
            given.append(1)
            return [0.0] if len(given) == 1 else []
        return [0.0]

    net.faults = stop_after_first
    net.start()
    net.run()
    assert set(net.aggregator.dropped) == {"client3"}
    assert "missed the round decryption deadline" in net.aggregator.dropped["client3"]
    assert_models_correct(net, ["client1", "client2", "client4"])
    round_1 = [m for m in sent(net, "DecryptRequest") if m.header.round == 1]
    first = {m.body.part for m in round_1 if m.header.attempt == 1}  # type: ignore[union-attr]
    again = {m.body.part for m in round_1 if m.header.attempt == 2}  # type: ignore[union-attr]
    fused = [m for m in sent(net, "Fused") if m.header.round == 1]
    fused_first = {m.body.part for m in fused if m.header.attempt == 1}  # type: ignore[union-attr]
    parts = fused[0].body.parts  # type: ignore[union-attr]
    assert len(given) >= 2 and fused_first and again  # some parts fused by each set
    assert again == set(range(parts)) - fused_first and not again & fused_first
    assert first >= fused_first
    assert sorted(m.body.part for m in fused) == list(range(parts))  # type: ignore[union-attr]
    assert all("client3" not in m.body.members for m in round_1 if m.header.attempt == 2)  # type: ignore[union-attr]


def test_a_member_gives_one_share_of_each_part_per_attempt() -> None:
    """A second request for a part of this attempt, replayed or with other c1 (an
    aggregator fishing for two shares of one part), is refused; the next part is not."""
    net = streaming_network()
    net.start()
    member = "client1"
    client = net.clients[member]

    def asked_twice() -> bool:
        requests = [m for m in sent(net, "DecryptRequest") if m.header.recipient == member]
        return len({m.body.part for m in requests}) >= 2  # type: ignore[union-attr]

    assert run_until(net, asked_twice)
    first = next(m for m in sent(net, "DecryptRequest") if m.header.recipient == member)
    assert isinstance(first.body, DecryptRequest) and first.body.part == 0
    assert run_until(net, lambda: (first.header.attempt, 0) in client._shares_given.given)
    with pytest.raises(DuplicateMessage, match="second decryption request for this attempt "
                                               "and part 0"):
        client.receive(first.raw, net.now)
    # the same part with other c1, signed by the aggregator: still one share only
    context, body = net.aggregator.context, first.body
    decryption = net.aggregator._decryption
    assert decryption is not None
    start, stop = decryption.span(0)
    other = encode_polynomials(context, PolynomialRole.C1, decryption.key_id,
                               decryption.length, decryption.c1[start:stop][::-1].copy(),
                               first=start)
    forged = DecryptRequest(body.members, tuple(other), 0, body.parts)
    data = net.aggregator._send([member], forged, first.header.step).data
    with pytest.raises(DuplicateMessage):
        client.receive(data, net.now)
    net.run()
    assert net.finished(AGGREGATOR)
    shares = [m for m in sent(net, "DecryptionShare", member)
              if m.header.step == first.header.step]
    assert sorted(m.body.part for m in shares) == list(range(body.parts))  # type: ignore[union-attr]


def test_a_member_refuses_a_second_split_of_the_same_aggregate() -> None:
    """Another split of the same step's aggregate would bind its ciphertexts anew (fresh
    noise for the same ciphertexts): refused, whatever part it names."""
    net = streaming_network()
    net.start()
    member = "client1"
    client = net.clients[member]
    assert run_until(net, lambda: bool(client._shares_given.given))
    first = next(m for m in sent(net, "DecryptRequest") if m.header.recipient == member)
    assert isinstance(first.body, DecryptRequest)
    decryption = net.aggregator._decryption
    assert decryption is not None and decryption.parts > 2
    parts = decryption.parts - 1
    part = parts - 1  # a part index this member has not been asked for yet
    start, stop = part_span(decryption.c1.shape[0], parts, part)
    frames = encode_polynomials(net.aggregator.context, PolynomialRole.C1, decryption.key_id,
                                decryption.length, decryption.c1[start:stop], first=start)
    resplit = DecryptRequest(first.body.members, tuple(frames), part, parts)
    data = net.aggregator._send([member], resplit, first.header.step).data
    with pytest.raises(MalformedMessage, match="split one way only"):
        client.receive(data, net.now)
    net.run()
    assert net.finished(AGGREGATOR)


def test_the_aggregator_refuses_a_share_of_a_part_twice_or_not_asked_for() -> None:
    net = streaming_network()
    net.start()
    aggregator = net.aggregator

    def first_share_in() -> bool:
        decryption = aggregator._decryption
        return decryption is not None and any(decryption.shares.values())

    assert run_until(net, first_share_in)
    assert aggregator.state in (AggregatorState.MASK_DECRYPTION,
                                AggregatorState.ROUND_DECRYPTION)
    share = sent(net, "DecryptionShare")[0]
    assert isinstance(share.body, DecryptionShare)
    with pytest.raises(DuplicateMessage, match="share of decryption part 0 came again"):
        aggregator.receive(share.raw, net.now)
    decryption = aggregator._decryption
    assert decryption is not None and decryption.parts > 2
    sender = share.header.sender
    unasked = DecryptionShare(share.body.members, share.body.c1_digest, share.body.shares,
                              decryption.parts - 1, decryption.parts)
    data = net.clients[sender]._send([AGGREGATOR], unasked, share.header.step).data
    with pytest.raises(Exception, match="was not asked for"):
        aggregator.receive(data, net.now)
    net.run()
    assert net.finished(AGGREGATOR)


def test_a_fused_part_is_decoded_once() -> None:
    net = streaming_network()
    net.start()
    client = net.clients["client2"]
    assert run_until(net, lambda: client._fused is not None and bool(client._fused.received))
    fused = next(m for m in sent(net, "Fused") if m.header.stage is Stage.MASK)
    assert isinstance(fused.body, Fused)
    with pytest.raises(DuplicateMessage, match=f"fused part {fused.body.part} of "
                                               f"{fused.body.parts} came again"):
        client.receive(fused.raw, net.now)
    net.run()
    assert net.finished(AGGREGATOR)


def test_a_part_fused_by_a_replaced_set_is_taken_after_the_new_sets_messages() -> None:
    """Set 1 fuses some parts (attempt 1) before client3's shares stop; set 2 (attempt 2)
    is asked for the rest.  client1 gets set 2's messages before set 1's fused parts
    (a transport may reorder): it still takes them, and completes."""
    net = streaming_network(clients=4, threshold=3)
    aggregator, client = net.aggregator, net.clients["client1"]
    held: list[bytes] = []
    shares_of_client3: list[int] = []

    def rule(sender: str, recipient: str, kind: str, now: float) -> list[float]:
        in_round_1 = aggregator.state is AggregatorState.ROUND_DECRYPTION and (
            aggregator._round == 1)
        if in_round_1 and sender == "client3" and kind == "DecryptionShare":
            shares_of_client3.append(1)
            return [0.0] if len(shares_of_client3) == 1 else []
        if in_round_1 and aggregator.step[3] == 1 and kind == "Fused" and (
                recipient == "client1"):
            held.append(net.history[-1][2])  # the message being sent
            return []
        return [0.0]

    net.faults = rule
    net.start()
    assert run_until(net, lambda: client._step[0] is Stage.ROUND and client._step[3] == 2)
    assert held and set(aggregator.dropped) == {"client3"}
    for data in held:  # set 1's fused parts, after set 2's request
        net._apply("client1", client.receive(data, net.now))
    assert client._step[3] == 2  # the attempt does not go back
    net.run()
    assert net.finished(AGGREGATOR) and net.aborted("client1") is None
    assert_models_correct(net, ["client1", "client2", "client4"])


def _decrypting_aggregator() -> tuple[PartsNetwork, Any]:
    net = streaming_network()
    net.start()
    assert run_until(net, lambda: net.aggregator._decryption is not None)
    decryption = net.aggregator._decryption
    assert decryption is not None and decryption.parts > 2
    return net, decryption


@pytest.mark.parametrize("same_members", [False, True])
def test_requests_are_bound_to_the_set_when_made_not_when_first_taken(
        same_members: bool) -> None:
    net, decryption = _decrypting_aggregator()
    requests = decryption.requests(list(decryption.members), [decryption.parts - 1],
                                   net.aggregator._send, net.aggregator.step)
    # another set replaces this one; one of the same members is still another set
    other = decryption.members if same_members else tuple(
        PartyId(name) for name in sorted(net.clients) if name != decryption.members[0])
    decryption.request(other)
    assert list(requests) == []
    current = decryption.requests(list(other), [decryption.parts - 1],
                                  net.aggregator._send, net.aggregator.step)
    assert len(list(current)) == len(other)  # the new set's own requests do go out


def test_a_request_is_signed_for_one_member_at_a_time() -> None:
    net, decryption = _decrypting_aggregator()
    signed: list[list[PartyId]] = []

    def send(to: Any, body: Body, step: tuple[Stage, int, int, int]) -> Outgoing:
        signed.append(list(to))
        return net.aggregator._send(to, body, step)

    members = list(decryption.members)
    requests = decryption.requests(members, [decryption.parts - 1], send,
                                   net.aggregator.step)
    assert signed == []  # nothing made before it is taken
    first = next(requests)
    assert signed == [members[:1]] and first.recipients == (members[0],)
    assert [out.recipients for out in requests] == [(member,) for member in members[1:]]
    assert signed == [[member] for member in members]


def test_the_aggregator_refuses_part_bytes_too_small_for_a_part_at_once() -> None:
    manifest = build_manifest(3, length=LENGTH, fraction=0.6, rounds=1)
    with pytest.raises(ParameterError, match="part_bytes 1000 is too small: a decryption "
                                             "part carries") as refused:
        AggregatorMachine(manifest, identity(AGGREGATOR), counter_randomness(AGGREGATOR),
                          part_bytes=1000)
    # sized for its decryption parts (one polynomial each), not for uploads (two)
    smallest = int(str(refused.value).rsplit(" ", 1)[1])
    machine = AggregatorMachine(manifest, identity(AGGREGATOR),
                                counter_randomness(AGGREGATOR), part_bytes=smallest)
    with pytest.raises(ParameterError, match="an upload part carries at least one"):
        require_part_room(manifest.mode, machine.context, smallest)
