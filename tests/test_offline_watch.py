"""The aggregator's presence-driven drops (threshold_fl.app.party.OfflineWatch).

A fake link stands in for the MQTT transport's presence view; the decisions are
the watch's own.  The CI failure this guards against: the broker went away, the
clients' Last Wills arrived first, and the aggregator, with its own link down,
dropped two live clients and aborted instead of reporting the broker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from threshold_fl.app.party import OfflineWatch

GRACE = 0.05


@dataclass
class FakeLink:
    """A named fake of the transport's presence view."""

    online: set[str] = field(default_factory=set)
    closed: bool = False
    connected_for_s: float = 10.0

    def online_peers(self) -> frozenset[str]:
        return frozenset(self.online)


async def settle(grace_multiple: float = 3) -> None:
    await asyncio.sleep(GRACE * grace_multiple)


async def test_a_client_offline_for_the_grace_time_is_dropped() -> None:
    dropped: list[str] = []
    watch = OfflineWatch(FakeLink(online={"c2"}), dropped.append, grace_s=GRACE)
    watch.offline("c1")
    assert dropped == []  # not before the grace time
    await settle()
    assert dropped == ["c1"]


async def test_a_client_back_online_within_the_grace_time_is_kept() -> None:
    link = FakeLink()
    dropped: list[str] = []
    watch = OfflineWatch(link, dropped.append, grace_s=GRACE)
    watch.offline("c1")
    link.online.add("c1")  # it reconnected
    await settle()
    assert dropped == []


async def test_nobody_is_dropped_while_our_own_link_is_down() -> None:
    link = FakeLink(connected_for_s=0.0)
    dropped: list[str] = []
    watch = OfflineWatch(link, dropped.append, grace_s=GRACE)
    watch.offline("c1")
    watch.offline("c3")
    await settle(6)
    assert dropped == []  # still waiting: a dead broker looks like dead clients
    link.connected_for_s = GRACE  # back, and up for the grace time: presence is current
    await settle()
    assert sorted(dropped) == ["c1", "c3"]


async def test_the_clients_that_came_back_with_the_broker_are_kept() -> None:
    link = FakeLink(connected_for_s=0.0)
    dropped: list[str] = []
    watch = OfflineWatch(link, dropped.append, grace_s=GRACE)
    for party in ("c1", "c2"):
        watch.offline(party)
    await settle()
    link.connected_for_s, link.online = GRACE, {"c1"}  # c2 never reconnected
    await settle()
    assert dropped == ["c2"]


async def test_after_the_link_gave_up_nothing_is_dropped() -> None:
    link = FakeLink(connected_for_s=0.0)
    dropped: list[str] = []
    OfflineWatch(link, dropped.append, grace_s=GRACE).offline("c1")
    link.closed = True  # the transport failed: the run ends with the broker's error
    await settle(6)
    assert dropped == []


async def test_a_lost_connection_is_said_at_once_and_the_drop_waits_for_the_grace() -> None:
    link = FakeLink(online={"c2"})
    dropped: list[str] = []
    lost: list[str] = []
    back: list[str] = []
    watch = OfflineWatch(link, dropped.append, grace_s=GRACE, unreachable=lost.append,
                         reachable=back.append)
    watch.offline("c1")
    assert lost == ["c1"] and dropped == []  # the decryption set is replaced now
    watch.offline("c3")
    link.online.add("c3")
    watch.online("c3")  # c3 blipped: back before the grace time
    await settle()
    assert dropped == ["c1"] and back == ["c3"]


async def test_no_lost_connection_is_said_while_our_own_link_is_unsettled() -> None:
    link = FakeLink(connected_for_s=0.0)
    lost: list[str] = []
    watch = OfflineWatch(link, lambda party: None, grace_s=GRACE, unreachable=lost.append)
    watch.offline("c1")  # retained presence replayed at our reconnect: maybe stale
    assert lost == []
    link.connected_for_s, link.closed = GRACE, True
    watch.offline("c1")
    assert lost == []  # the transport failed: the run ends with the broker's error
