"""The in-memory transport: delivery, scripted and random faults, limits and life cycle."""

from __future__ import annotations

import asyncio

import pytest

from threshold_fl.errors import ParameterError, TransportClosed, TransportError
from transports import Fault, FaultPlan, MemoryHub, MemoryTransport, Transport
from transports.memory import Decision, Envelope, HubStats, PartyTraffic


def script(faults: dict[int, Decision]) -> FaultPlan:
    """A plan applying ``faults`` by envelope index; every other envelope is delivered."""
    return FaultPlan(lambda env: faults.get(env.index, Fault.DELIVER))


async def receive_now(transport: MemoryTransport) -> bytes:
    """Receive something that must already be there (fails fast instead of hanging)."""
    return await asyncio.wait_for(transport.receive(), timeout=0.5)


async def drain(transport: MemoryTransport) -> list[bytes]:
    """Everything waiting in the inbox now, in order."""
    return [await transport.receive() for _ in range(transport.pending)]


# ----------------------------------------------------------------- plain delivery


async def test_delivers_to_one_recipient() -> None:
    hub = MemoryHub()
    a, b = hub.connect("a"), hub.connect("b")
    await a.send(["b"], b"hello")
    assert await receive_now(b) == b"hello"
    assert a.pending == 0 and b.pending == 0
    assert hub.stats == HubStats(sent=1, sent_bytes=5, delivered=1, delivered_bytes=5)


async def test_delivers_to_several_recipients_including_self() -> None:
    hub = MemoryHub()
    a, b, c = (hub.connect(p) for p in "abc")
    await a.send(["a", "b", "c"], b"x")
    assert [await receive_now(t) for t in (a, b, c)] == [b"x", b"x", b"x"]
    assert hub.stats.sent == 3 and hub.stats.delivered == 3


async def test_order_is_preserved_without_faults() -> None:
    hub = MemoryHub()
    a, b = hub.connect("a"), hub.connect("b")
    messages = [i.to_bytes(2, "big") for i in range(200)]
    for m in messages:
        await a.send(["b"], m)
    assert await drain(b) == messages


async def test_unknown_recipient_is_dropped_and_counted() -> None:
    hub = MemoryHub()
    a, b = hub.connect("a"), hub.connect("b")
    await a.send(["nobody", "b"], b"abc")
    assert await receive_now(b) == b"abc"
    assert hub.stats.dropped == 1 and hub.stats.dropped_bytes == 3
    assert hub.stats.delivered == 1


async def test_memory_transport_satisfies_transport_protocol() -> None:
    hub = MemoryHub()

    async def echo(t: Transport) -> bytes:  # typed against the interface only
        await t.send([t.party_id], b"me")
        return await t.receive()

    assert await echo(hub.connect("a")) == b"me"


async def test_rejects_a_string_as_recipient_list() -> None:
    hub = MemoryHub()
    a = hub.connect("a")
    with pytest.raises(ParameterError, match="sequence of party ids"):
        await a.send("bob", b"x")
    assert hub.stats.sent == 0


# ----------------------------------------------------------------- scripted faults


async def test_drop() -> None:
    hub = MemoryHub(faults=script({1: Fault.DROP}))
    a, b = hub.connect("a"), hub.connect("b")
    for m in (b"0", b"1", b"2"):
        await a.send(["b"], m)
    assert await drain(b) == [b"0", b"2"]
    assert hub.stats.dropped == 1 and hub.stats.delivered == 2


async def test_duplicate_gives_exactly_two_copies() -> None:
    hub = MemoryHub(faults=script({0: Fault.DUPLICATE}))
    a, b = hub.connect("a"), hub.connect("b")
    await a.send(["b"], b"twice")
    await a.send(["b"], b"once")
    assert await drain(b) == [b"twice", b"twice", b"once"]
    assert hub.stats.duplicated == 1 and hub.stats.delivered == 3


async def test_delay_arrives_later_and_after_a_later_message() -> None:
    hub = MemoryHub(faults=script({0: (Fault.DELAY, 0.05)}))
    a, b = hub.connect("a"), hub.connect("b")
    loop = asyncio.get_running_loop()
    start = loop.time()
    await a.send(["b"], b"slow")
    await a.send(["b"], b"fast")
    assert await receive_now(b) == b"fast"
    assert b.pending == 0
    assert await receive_now(b) == b"slow"
    assert loop.time() - start >= 0.05 - 1e-3
    assert hub.stats.delayed == 1 and hub.stats.delivered == 2


async def test_bare_delay_uses_the_plans_max_delay() -> None:
    plan = FaultPlan(lambda env: Fault.DELAY, max_delay_s=0.02)
    hub = MemoryHub(faults=plan)
    a, b = hub.connect("a"), hub.connect("b")
    loop = asyncio.get_running_loop()
    start = loop.time()
    await a.send(["b"], b"x")
    assert await receive_now(b) == b"x"
    assert loop.time() - start >= 0.02 - 1e-3


async def test_reorder_swaps_with_the_next_message() -> None:
    hub = MemoryHub(faults=script({0: Fault.REORDER}))
    a, b = hub.connect("a"), hub.connect("b")
    for m in (b"first", b"second", b"third"):
        await a.send(["b"], m)
    assert await drain(b) == [b"second", b"first", b"third"]
    assert hub.stats.reordered == 1 and hub.stats.delivered == 3


async def test_reorder_only_waits_for_the_same_recipient() -> None:
    hub = MemoryHub(faults=script({0: Fault.REORDER}))
    a, b, c = (hub.connect(p) for p in "abc")
    await a.send(["b"], b"held")
    await a.send(["c"], b"other")
    assert await receive_now(c) == b"other"
    assert b.pending == 0  # a message to c does not release b's held message
    await a.send(["b"], b"next")
    assert await drain(b) == [b"next", b"held"]


async def test_reorder_without_a_next_message_arrives_after_its_hold_time() -> None:
    hub = MemoryHub(faults=script({0: (Fault.REORDER, 0.02)}))
    a, b = hub.connect("a"), hub.connect("b")
    loop = asyncio.get_running_loop()
    start = loop.time()
    await a.send(["b"], b"alone")
    assert b.pending == 0
    assert await receive_now(b) == b"alone"
    assert loop.time() - start >= 0.02 - 1e-3


async def test_plan_sees_sender_recipient_data_and_running_index() -> None:
    seen: list[Envelope] = []

    def record(env: Envelope) -> Decision:
        seen.append(env)
        return Fault.DELIVER

    hub = MemoryHub(faults=FaultPlan(record))
    a, b = hub.connect("a"), hub.connect("b")
    await a.send(["b", "a"], b"m0")
    await b.send(["a"], b"m1")
    assert seen == [
        Envelope("a", "b", b"m0", 0),
        Envelope("a", "a", b"m0", 1),
        Envelope("b", "a", b"m1", 2),
    ]


# ----------------------------------------------------------------- per-party traffic


async def test_traffic_counts_each_party_per_recipient_and_per_label() -> None:
    # The label is the first byte of the message, standing in for a protocol stage.
    hub = MemoryHub(label=lambda data: data[:1].decode(), faults=script({3: Fault.DROP}))
    a, b, c = (hub.connect(p) for p in "abc")
    await a.send(["b", "c"], b"k-key")  # envelopes 0, 1: one payload per recipient
    await b.send(["a"], b"r-round")  # envelope 2
    await a.send(["b", "c"], b"r-xy")  # envelope 3 to b is dropped, 4 reaches c
    await drain(b), await drain(c), await drain(a)
    assert hub.traffic("a") == PartyTraffic(sent=4, sent_bytes=2 * 5 + 2 * 4,
                                            received=1, received_bytes=7)
    assert hub.traffic("b") == PartyTraffic(sent=1, sent_bytes=7, received=1, received_bytes=5)
    assert hub.traffic("c") == PartyTraffic(received=2, received_bytes=5 + 4)
    assert hub.traffic("a", "k") == PartyTraffic(sent=2, sent_bytes=10)
    assert hub.traffic("c", "r") == PartyTraffic(received=1, received_bytes=4)
    assert hub.traffic("nobody") == PartyTraffic() and hub.labels == {"k", "r"}
    # the per-party sums agree with the hub's totals
    parties = [hub.traffic(p) for p in "abc"]
    assert sum(t.sent_bytes for t in parties) == hub.stats.sent_bytes
    assert sum(t.received_bytes for t in parties) == hub.stats.delivered_bytes


async def test_traffic_counts_duplicates_and_delays_when_they_arrive() -> None:
    hub = MemoryHub(faults=script({0: Fault.DUPLICATE, 1: (Fault.DELAY, 0.01)}))
    a, b = hub.connect("a"), hub.connect("b")
    await a.send(["b"], b"twice")
    await a.send(["b"], b"later")
    assert hub.traffic("b") == PartyTraffic(received=2, received_bytes=10)
    await asyncio.sleep(0.05)
    assert hub.traffic("b") == PartyTraffic(received=3, received_bytes=15) and b.pending == 3
    assert hub.traffic("a") == PartyTraffic(sent=2, sent_bytes=10) and hub.labels == {""}


# ----------------------------------------------------------------- random plans


def _fates(plan: FaultPlan, n: int = 300) -> list[tuple[Fault, float]]:
    return [plan.choose(Envelope("a", "b", b"", i)) for i in range(n)]


def test_random_plan_is_deterministic_per_seed() -> None:
    def make(seed: int) -> FaultPlan:
        return FaultPlan.random(
            seed, drop=0.2, duplicate=0.2, delay=0.2, reorder=0.2, max_delay_s=0.01
        )

    first, again, other = _fates(make(7)), _fates(make(7)), _fates(make(8))
    assert first == again
    assert first != other
    assert {fault for fault, _ in first} == set(Fault)  # every kind occurs
    assert all(0 <= s <= 0.01 for fault, s in first if fault is Fault.DELAY)


def test_random_plan_with_zero_probabilities_always_delivers() -> None:
    assert {f for f, _ in _fates(FaultPlan.random(1))} == {Fault.DELIVER}


async def _run_random_federation(seed: int) -> tuple[HubStats, list[bytes]]:
    plan = FaultPlan.random(seed, drop=0.2, duplicate=0.2, delay=0.2, reorder=0.2, max_delay_s=0.01)
    hub = MemoryHub(faults=plan)
    a, b = hub.connect("a"), hub.connect("b")
    for i in range(60):
        await a.send(["b"], bytes([i]))
    await asyncio.sleep(0.3)  # well past every delay and reorder hold, even on a busy machine
    return hub.stats, await drain(b)


async def test_random_plan_replays_end_to_end() -> None:
    stats, received = await _run_random_federation(3)
    again, received_again = await _run_random_federation(3)
    # The fault decisions replay exactly; the order delayed copies land in follows the
    # event loop's timers, so compare what arrived, not in which order.
    assert (stats, sorted(received)) == (again, sorted(received_again))
    assert stats.sent == 60 and stats.dropped > 0 and stats.duplicated > 0
    assert stats.delivered == 60 - stats.dropped + stats.duplicated == len(received)


def test_invalid_plans_are_rejected() -> None:
    with pytest.raises(ParameterError):
        FaultPlan.random(0, drop=0.7, delay=0.7)
    with pytest.raises(ParameterError):
        FaultPlan.random(0, drop=-0.1)
    with pytest.raises(ParameterError):
        FaultPlan(max_delay_s=-1)
    with pytest.raises(ParameterError):
        FaultPlan(lambda env: (Fault.DELAY, -1.0)).choose(Envelope("a", "b", b""))
    with pytest.raises(ParameterError):
        MemoryHub(inbox_limit=0)


# ----------------------------------------------------------------- limits and life cycle


async def test_full_inbox_drops_and_counts() -> None:
    hub = MemoryHub(inbox_limit=3)
    a, b = hub.connect("a"), hub.connect("b")
    for i in range(5):
        await a.send(["b"], bytes([i]))
    assert hub.stats.dropped == 2 and hub.stats.delivered == 3
    assert await drain(b) == [b"\x00", b"\x01", b"\x02"]
    await a.send(["b"], b"room again")
    assert await receive_now(b) == b"room again"


async def test_disconnect_drops_messages_and_closes_the_party() -> None:
    hub = MemoryHub()
    a, b = hub.connect("a"), hub.connect("b")
    hub.disconnect("b")
    hub.disconnect("b")  # idempotent
    assert b.closed and hub.parties == {"a"}
    await a.send(["b"], b"into the void")  # not an error for the sender
    assert hub.stats.dropped == 1 and hub.stats.delivered == 0
    with pytest.raises(TransportClosed):
        await b.receive()
    with pytest.raises(TransportClosed):
        await b.send(["a"], b"ghost")


async def test_delayed_message_to_a_party_that_vanished_is_dropped() -> None:
    hub = MemoryHub(faults=script({0: (Fault.DELAY, 0.01)}))
    a, _ = hub.connect("a"), hub.connect("b")
    await a.send(["b"], b"late")
    hub.disconnect("b")
    await asyncio.sleep(0.02)
    assert hub.stats.delayed == 1 and hub.stats.dropped == 1 and hub.stats.delivered == 0


async def test_send_after_close_raises() -> None:
    hub = MemoryHub()
    a = hub.connect("a")
    await a.close()
    await a.close()  # idempotent
    with pytest.raises(TransportClosed, match="closed"):
        await a.send(["a"], b"x")
    assert issubclass(TransportClosed, TransportError)


async def test_receive_after_close_drains_then_raises() -> None:
    hub = MemoryHub()
    a, b = hub.connect("a"), hub.connect("b")
    await a.send(["b"], b"m1")
    await a.send(["b"], b"m2")
    await b.close()
    assert b.pending == 2
    assert await drain(b) == [b"m1", b"m2"]
    with pytest.raises(TransportClosed):
        await b.receive()
    with pytest.raises(TransportClosed):  # and keeps raising
        await b.receive()


async def test_close_wakes_blocked_receivers() -> None:
    hub = MemoryHub()
    a = hub.connect("a")
    waiters = [asyncio.create_task(a.receive()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    await a.close()
    for waiter in waiters:
        with pytest.raises(TransportClosed):
            await asyncio.wait_for(waiter, timeout=0.5)


async def test_connect_twice_raises_and_reconnect_after_close_works() -> None:
    hub = MemoryHub()
    a, first = hub.connect("a"), hub.connect("b")
    with pytest.raises(TransportError, match="already connected"):
        hub.connect("b")
    await first.close()
    second = hub.connect("b")
    await a.send(["b"], b"to the new one")
    assert await receive_now(second) == b"to the new one"
    assert first.pending == 0
    await first.close()  # closing the old transport again must not evict the new one
    assert hub.parties == {"a", "b"}


async def test_reconnect_after_disconnect() -> None:
    hub = MemoryHub()
    a = hub.connect("a")
    hub.disconnect("a")
    again = hub.connect("a")
    await again.send(["a"], b"back")
    assert await receive_now(again) == b"back" and a.closed and not again.closed


async def test_async_with_closes_on_exit() -> None:
    hub = MemoryHub()
    async with hub.connect("a") as a:
        assert hub.parties == {"a"} and a.pending == 0
    assert a.closed and hub.parties == frozenset()
    with pytest.raises(TransportClosed):
        await a.send(["a"], b"x")
