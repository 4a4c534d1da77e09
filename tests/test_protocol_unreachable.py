"""A member of the decryption set whose connection ends (the transport's report, over
MQTT its Last Will) is replaced at once by another set, before the grace time after
which it is dropped (``AggregatorMachine.party_unreachable`` / ``party_reachable``).

On the simulated network: in every aggregator state the report drops nobody and moves
no state but to ask another set; in a decryption it asks that set at once (attempt + 1,
without the lost member), the late share of the replaced set is refused, and the round
decrypts the right model; with fewer than t others it waits and says so.  A key
agreement restarted without a lost client restarts again with it when it comes back."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from protocol_harness import AGGREGATOR, Network, build_manifest, crypto_bound, run_until
from test_protocol_dropouts import assert_correct_rounds
from test_protocol_transitions import AGGREGATOR_SCENARIOS, Scenario, _id, reach

from protocols.aggregator import AggregatorState
from protocols.codec import decode_message
from protocols.events import PartyDropped, Step
from protocols.messages import DecryptionShare, DecryptRequest, KeygenStart
from threshold_fl.errors import StaleMessage
from threshold_fl.identity import PartyId

A = AggregatorState


def _withhold(net: Network, victim: str, kept: list[bytes]) -> Callable[..., list[float]]:
    """A fault rule that keeps *victim*'s round-1 decryption share from the aggregator."""
    def rule(sender: str, recipient: str, kind: str, now: float) -> list[float]:
        if sender == victim and kind == "DecryptionShare" and net.clients[sender]._round == 1:
            kept.append(next(data for name, k, data in reversed(net.history)
                             if name == sender and k == kind))
            return []
        return [0.0]
    return rule


def _quiet_in_decryption(net: Network) -> Callable[[], bool]:
    return lambda: net.aggregator.state is A.ROUND_DECRYPTION and not net._queue


def _stalled(clients: int, threshold: int, withheld: str) -> tuple[Network, list[bytes]]:
    """A one-round federation in its decryption, *withheld*'s share kept back."""
    net = Network(build_manifest(clients, threshold=threshold, length=12, rounds=1))
    kept: list[bytes] = []
    net.faults = _withhold(net, withheld, kept)
    net.start()
    assert run_until(net, _quiet_in_decryption(net))
    return net, kept


def test_a_member_whose_connection_ends_is_replaced_at_once() -> None:
    net, kept = _stalled(5, 3, "client3")
    aggregator = net.aggregator
    first = aggregator._decryption
    assert first is not None and first.members == ("client2", "client3", "client4")
    assert sorted(first.shares[0]) == ["client2", "client4"]  # one part: part 0

    net.kill("client3")  # its connection ended; the broker's Last Will says so
    step = aggregator.party_unreachable(PartyId("client3"), net.now)
    assert not aggregator.dropped and not any(isinstance(e, PartyDropped) for e in step.events)
    sends = list(step.outgoing())  # made as they are taken (Step.later)
    requests = [decode_message(o.data, net.manifest.directory) for o in sends]
    assert all(isinstance(m.body, DecryptRequest) for m in requests)
    # the member new to this decryption first: the others may still be making their
    # first share, and its c1 should not queue behind their uploads
    assert [m.header.recipient for m in requests] == ["client5", "client2", "client4"]
    assert {m.header.attempt for m in requests} == {2}
    assert aggregator.step[3] == 2 and aggregator.state is A.ROUND_DECRYPTION
    assert "client3" in aggregator.alive  # dropped only when judged gone
    again = aggregator.party_unreachable(PartyId("client3"), net.now)
    assert list(again.outgoing()) == []  # once

    late = kept[0]  # the replaced set's share, arriving now, is refused: stale, not forged
    assert isinstance(decode_message(late, net.manifest.directory).body, DecryptionShare)
    with pytest.raises(StaleMessage, match="a late or replayed message"):
        aggregator.receive(late, net.now)
    assert aggregator._decryption is not None and aggregator._decryption.shares == {0: {}}

    net._apply(AGGREGATOR, Step(sends=sends))
    assert run_until(net, lambda: bool(aggregator._decryption and aggregator._decryption.complete))
    assert "'client3' lost the connection: waiting for its drop" in aggregator.waiting_for()
    net._apply(AGGREGATOR, aggregator.party_offline(PartyId("client3"), net.now))
    net.run()
    assert net.finished(AGGREGATOR) and set(aggregator.dropped) == {"client3"}
    (completed,) = net.completed_rounds(AGGREGATOR)
    assert len(completed.contributors) == 5  # client3's upload still counts
    expected = net.expected_global(1, completed.contributors)
    for name in ("client1", "client2", "client4", "client5"):
        (result,) = net.completed_rounds(name)
        assert result.model is not None
        assert np.abs(result.model - expected).max() <= crypto_bound(net)


def test_with_fewer_than_t_others_the_set_waits_and_says_why() -> None:
    net, _ = _stalled(3, 2, "client2")
    aggregator = net.aggregator
    decryption = aggregator._decryption
    assert decryption is not None and decryption.members == ("client2", "client3")
    assert decryption.missing() == ["client2"]
    no_member = aggregator.party_unreachable(PartyId("client1"), net.now)
    assert list(no_member.outgoing()) == []
    assert list(aggregator.party_unreachable(PartyId("client2"), net.now).outgoing()) == []
    assert aggregator.step[3] == 1  # two of three lost: no set of t reachable holders
    assert aggregator.waiting_for().endswith(
        "waiting for 1 of 2 decryption shares (attempt 1): 'client2'; 'client2' lost the "
        "connection: another set as soon as t other holders are live, else at the drop or "
        "the deadline")
    aggregator.party_reachable(PartyId("client1"), net.now)  # back: the next report may use it
    step = aggregator.party_unreachable(PartyId("client2"), net.now)
    assert sorted(o.recipients for o in step.outgoing()) == [("client1",), ("client3",)]
    assert aggregator.step[3] == 2


def _keygen_starts(net: Network) -> dict[int, tuple[str, ...]]:
    """Epoch -> participants of every KeygenStart sent so far."""
    starts = [decode_message(data, net.manifest.directory) for _, kind, data in net.history
              if kind == "KeygenStart"]
    return {m.header.epoch: m.body.participants for m in starts
            if isinstance(m.body, KeygenStart)}


def test_a_client_back_during_a_key_agreement_that_left_it_out_is_included() -> None:
    """client2's connection is reported lost during key agreement; client4 is then judged
    gone, so key agreement restarts without both (``key_holders``); client2 comes back
    before it is judged gone: key agreement restarts again with it, rather than wait for
    a confirmation it cannot send and drop a healthy client at the keys deadline."""
    net = Network(build_manifest(5, threshold=3, length=24, rounds=2))
    away: set[str] = set()  # whose connection is down: nothing reaches it or comes from it

    def rule(sender: str, recipient: str, kind: str, now: float) -> list[float]:
        if sender == "client4" and kind == "KeyDelivery":
            net.kill(sender)
            return []
        return [] if sender in away or recipient in away else [0.0]

    net.faults = rule
    net.start()
    assert run_until(net, lambda: "client4" in net.dead)
    away.add("client2")
    aggregator = net.aggregator
    net._apply(AGGREGATOR, aggregator.party_unreachable(PartyId("client2"), net.now))
    net._apply(AGGREGATOR, aggregator.party_offline(PartyId("client4"), net.now))
    assert _keygen_starts(net)[2] == ("client1", "client3", "client5")
    assert not run_until(net, lambda: aggregator.state is not A.KEY_AGREEMENT,
                         until=net.now + 1.0)  # the others are done; client2 is owed
    assert aggregator.step[1] == 2 and "client2" in aggregator.alive

    away.clear()  # its connection is back
    step = aggregator.party_reachable(PartyId("client2"), net.now)
    net._apply(AGGREGATOR, step)
    assert _keygen_starts(net)[3] == ("client1", "client2", "client3", "client5")
    net.run()
    assert net.finished(AGGREGATOR), net.aborted(AGGREGATOR)
    assert set(aggregator.dropped) == {"client4"}
    contributors = assert_correct_rounds(net, {"client1", "client2", "client3", "client5"})
    assert contributors == [("client1", "client2", "client3", "client5")] * 2
    holder = aggregator.party_reachable(PartyId("client2"), net.now)
    assert list(holder.outgoing()) == []


@pytest.mark.parametrize("scenario", AGGREGATOR_SCENARIOS, ids=_id)
def test_a_connection_reported_lost_in_state(scenario: Scenario) -> None:
    """``party_unreachable`` then ``party_reachable`` in every aggregator state: nobody
    is dropped, the state stays (a decryption may ask another set, attempt + 1), and the
    session then ends as it would have."""
    net = reach(scenario)
    machine = net.aggregator
    alive = [client for client in machine.alive if client not in net.dead]
    victim = PartyId(alive[-1] if alive else "client3")
    before, attempt = machine.state, machine.step[3]
    step = machine.party_unreachable(victim, net.now)
    sends = list(step.outgoing())  # a DecryptRequest is made as it is taken
    assert list(machine.party_reachable(victim, net.now).outgoing()) == []  # it was a holder
    assert machine.state is before and not step.events and not machine.dropped.keys() - set(
        net.dead)
    kinds = {decode_message(o.data, net.manifest.directory).body.__class__ for o in sends}
    assert kinds <= {DecryptRequest}
    if sends:
        assert before in (A.MASK_DECRYPTION, A.ROUND_DECRYPTION)
        assert machine.step[3] == attempt + 1
        assert all(victim not in o.recipients for o in sends)
    net._apply(AGGREGATOR, Step(sends=sends))
    net.run()
    if scenario.state is A.IDLE or scenario.state in machine.TERMINAL:
        assert not sends  # not started, or over: nothing to do
        return
    survivors = [client for client in net.clients if client not in net.dead]
    if len(survivors) < net.manifest.threshold:
        assert net.aborted(AGGREGATOR) is not None
        return
    assert net.finished(AGGREGATOR), net.aborted(AGGREGATOR)
