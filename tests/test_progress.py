"""What a waiting party says (issue 13, items 1, 2, 4 and 8): progress lines from the
state machines' ``waiting_for``, a client that leaves when no aggregator of its session
is on the broker, refusals logged with their real reason, and a refused update that
ends in an Abort instead of a silent exit."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from protocol_harness import identity, local_model, sensitivity_map
from test_node import LENGTH, NAMES, Federation, manifest_for

from protocols import AggregatorMachine, ClientMachine, Mode, Timeouts, make_manifest
from threshold_fl.app.party import AggregatorWatch
from threshold_fl.errors import ManifestMismatch, SessionAborted
from threshold_fl.node import Aggregator, FederatedClient
from threshold_fl.progress import WaitReporter
from transports import MemoryHub
from transports.broker import BrokerConfig

# -- WaitReporter ----------------------------------------------------------------------


def test_a_new_wait_is_said_at_once_and_an_old_one_repeated_with_its_age() -> None:
    lines: list[str] = []
    reporter = WaitReporter(lines.append, min_gap_s=2, repeat_s=30)
    assert reporter.due() is None
    reporter.update("waiting for 'a'", now=100)
    assert lines == ["waiting for 'a'"]
    reporter.update("waiting for 'a'", now=101)  # unchanged: nothing new to say
    assert reporter.due() == 130
    reporter.tick(129.9)
    assert len(lines) == 1
    reporter.tick(130)
    assert lines[-1] == "waiting for 'a' (still, after 30 s)"


def test_quick_changes_are_coalesced_into_the_latest() -> None:
    lines: list[str] = []
    reporter = WaitReporter(lines.append, min_gap_s=2, repeat_s=30)
    reporter.update("one", now=0)
    reporter.update("two", now=0.5)
    reporter.update("three", now=1.0)
    assert lines == ["one"]
    assert reporter.due() == 2
    reporter.tick(2)
    assert lines == ["one", "three"]


def test_the_reporter_refuses_a_repeat_shorter_than_the_gap() -> None:
    with pytest.raises(ValueError, match="min_gap_s <= repeat_s"):
        WaitReporter(print, min_gap_s=5, repeat_s=1)


# -- waiting_for of the machines -----------------------------------------------------


def test_the_aggregator_names_the_clients_it_waits_for() -> None:
    manifest = manifest_for(Mode.THRESHOLD)
    machine = AggregatorMachine(manifest, identity("aggregator"), bytes)
    machine.start(0.0)
    assert machine.waiting_for() == (
        "waiting for 3 of 3 clients to join: 'client1', 'client2', 'client3'")


def test_a_long_list_of_parties_is_cut_short() -> None:
    names = [f"c{i:03d}" for i in range(20)]
    manifest = make_manifest(session="many", aggregator=identity("aggregator").public,
                             clients=[identity(name).public for name in names],
                             model_length=LENGTH, mode=Mode.PLAINTEXT)
    machine = AggregatorMachine(manifest, identity("aggregator"), bytes)
    machine.start(0.0)
    assert machine.waiting_for().endswith("'c007' and 12 more")


def test_a_client_says_it_waits_for_the_aggregator() -> None:
    machine = ClientMachine(manifest_for(Mode.THRESHOLD), identity("client1"), bytes,
                            samples=3)
    machine.start(0.0)
    assert "waiting for the aggregator 'aggregator' to start key agreement" in (
        machine.waiting_for())


async def test_every_party_reports_progress_through_a_whole_session() -> None:
    hub, manifest = MemoryHub(), manifest_for(Mode.THRESHOLD, rounds=1)
    lines: list[str] = []
    aggregator = Aggregator(manifest, identity("aggregator"), hub.connect("aggregator"),
                            progress=lines.append)

    async def client(name: str) -> None:
        node = FederatedClient(manifest, identity(name), hub.connect(name), samples=5,
                               train=lambda r, m: local_model(name, r, LENGTH),
                               sensitivity=lambda: sensitivity_map(name, LENGTH),
                               progress=lines.append)
        await node.run()

    await asyncio.wait_for(asyncio.gather(aggregator.run(), *map(client, NAMES)), 60)
    said = "\n".join(lines)
    assert "aggregator: waiting for 3 of 3 clients to join" in said
    for name in NAMES:
        assert f"{name}: joined; waiting for the aggregator 'aggregator'" in said


# -- a refused update ends in an Abort (item 4) -----------------------------------------


async def test_an_update_outside_the_value_bound_is_reported_to_the_aggregator() -> None:
    federation = Federation(manifest_for(Mode.THRESHOLD), MemoryHub())
    federation.out_of_bound["client3"] = 1
    aggregator = await federation.run()
    reason = aggregator.summary.dropped["client3"]
    assert reason.startswith("left the session: its update was refused")
    assert "missed" not in reason  # told at once, not blamed at the deadline
    assert "its update was refused" in str(federation.errors["client3"])
    assert f"at index {federation.plain_index} exceeds the manifest's value_bound" in reason
    federation.check(aggregator, ("client1", "client2"))


async def test_the_machine_converts_what_the_application_returns_once() -> None:
    # The node hands the callback's result on as it is; the machine converts it on the
    # way in (a list or float32 is fine) and refuses what is not a vector of numbers.
    federation = Federation(manifest_for(Mode.THRESHOLD), MemoryHub())
    federation.returns["client1"] = (1, lambda update: update.tolist())
    federation.returns["client2"] = (1, lambda update: update.astype(np.float32))
    federation.returns["client3"] = (1, lambda update: "not a model")
    aggregator = await federation.run()
    reason = aggregator.summary.dropped["client3"]
    assert reason.startswith("left the session: its update was refused"), reason
    assert f"must be a flat vector of {LENGTH} values, got shape ()" in reason
    assert [r for r, _ in federation.results["client1"]] == [1, 2]
    assert [r for r, _ in federation.results["client2"]] == [1, 2]


# -- refusals say the real reason (item 2) ----------------------------------------------


async def test_a_client_with_another_manifest_is_dropped_with_the_real_reason() -> None:
    """Same session, other rounds and so other CKKS parameters: the aggregator refuses
    the client's Hello at once for its manifest fingerprint (before any frame made under
    other parameters is sent), and names that reason when it drops the client at the
    join deadline; the others go on."""
    fast = Timeouts(join_s=3, keys_s=1.5, upload_s=5, decrypt_s=1.5)
    ours = make_manifest(session="node-test", aggregator=identity("aggregator").public,
                         clients=[identity(name).public for name in NAMES],
                         model_length=LENGTH, mode=Mode.THRESHOLD, rounds=1, timeouts=fast)
    other = make_manifest(session="node-test", aggregator=identity("aggregator").public,
                          clients=[identity(name).public for name in NAMES],
                          model_length=LENGTH, mode=Mode.THRESHOLD, rounds=40, timeouts=fast)
    assert ours.params.fingerprint() != other.params.fingerprint()
    hub = MemoryHub()
    aggregator = Aggregator(ours, identity("aggregator"), hub.connect("aggregator"))
    nodes = [FederatedClient(other if name == "client1" else ours, identity(name),
                             hub.connect(name), samples=5,
                             train=lambda r, m: np.zeros(LENGTH),
                             sensitivity=lambda: np.ones(LENGTH)) for name in NAMES]
    results = await asyncio.wait_for(asyncio.gather(
        aggregator.run(), *(node.run() for node in nodes), return_exceptions=True), 60)
    assert not isinstance(results[0], BaseException), results[0]
    assert isinstance(results[1], ManifestMismatch), results[1]
    reason = aggregator.summary.dropped["client1"]
    assert "did not join in time" in reason
    assert "its last message was refused: manifest mismatch" in reason
    assert ours.fingerprint()[:16] in reason and other.fingerprint()[:16] in reason
    assert aggregator.summary.finished


# -- the aggregator watch (item 1) --------------------------------------------------------


def test_the_watch_names_the_likely_cause_of_an_absent_aggregator() -> None:
    manifest = manifest_for(Mode.THRESHOLD)
    watch = AggregatorWatch(manifest, BrokerConfig.from_url("mqtt://127.0.0.1:1883"))
    assert "differs from the organiser's" in watch.absence()
    assert manifest.session in watch.absence() and manifest.fingerprint()[:16] in (
        watch.absence())
    watch.presence("client2", True)  # someone else's presence changes nothing
    assert watch.online is None
    watch.presence("aggregator", False)
    assert "is offline" in watch.absence()


async def test_a_client_whose_aggregator_never_shows_up_leaves_with_the_cause() -> None:
    manifest = make_manifest(session="alone", aggregator=identity("aggregator").public,
                             clients=[identity(name).public for name in NAMES],
                             model_length=LENGTH, mode=Mode.THRESHOLD,
                             timeouts=Timeouts(join_s=0.5))
    watch = AggregatorWatch(manifest, BrokerConfig.from_url("mqtt://127.0.0.1:1883"))
    hub = MemoryHub()
    lines: list[str] = []
    node = FederatedClient(manifest, identity("client1"), hub.connect("client1"), samples=5,
                           train=lambda r, m: np.zeros(LENGTH),
                           sensitivity=lambda: np.ones(LENGTH))
    with pytest.raises(SessionAborted, match="no aggregator 'aggregator' has been present"):
        async with node:
            watch.start(node, lines.append)
            await asyncio.wait_for(node.wait(), 30)
    assert any("waiting up to 0.5 s" in line for line in lines)
