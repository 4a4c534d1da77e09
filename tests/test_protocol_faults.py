"""Random network faults: drops, delays, reordering, duplicates and a client dying.

A hypothesis state machine drives a federation of 3 clients (threshold mode: N=3,
t=2; plaintext mode as the baseline) on the deterministic harness network.  It draws
a fault schedule and optional seeded noise when the network starts; its rules add
more faults (each aimed at a message kind, optionally at one sender and one FedAvg
round), advance the simulation a few events at a time, and kill one client at a
random moment or just before it sends a given message.  At the end the network runs
until nothing is left to do.  The fault rule is a pure function of the drawn data and
of the (deterministic) order of the messages.

Invariants, checked after every rule and at the end:

* only MessageRejected is ever caught (the harness catches nothing else, so any other
  exception from a machine fails the example);
* every global model a client completes equals the plaintext FedAvg of the updates
  the aggregator summed for that round (the crypto bound in threshold mode, float32
  rounding in plaintext mode), and the aggregator's RoundCompleted names exactly those contributors;
* all clients that completed a round hold bit-for-bit the same model;
* the simulation settles: every machine is terminal or dead, and the virtual clock
  stays below :func:`time_bound`, derived from the manifest's timeouts.

A second property, :func:`test_benign_faults_cost_nobody_their_place`, allows only
duplicates and sub-second reordering, which no timeout should notice: then nobody may
be dropped and every round must complete everywhere.

A client dropped at a decryption deadline may still decode a fused result of the set it
was in while the survivors decode another set's (other noise): both are FedAvg within
the crypto bound, so bit-for-bit agreement is required only among the clients the
aggregator kept.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from protocol_harness import AGGREGATOR, Network, build_manifest, crypto_bound, run_until

from protocols import Manifest, Mode
from protocols.aggregator import AggregatorState
from protocols.client import ClientState
from protocols.events import PartyDropped, RoundCompleted, Step

CLIENTS = ("client1", "client2", "client3")
ROUNDS = 2
LENGTH = 16
MAX_DELAY = 25.0  # longer than every stage timeout (10 s): a delay can cause a dropout
KINDS = (
    "Hello", "KeygenStart", "PublicShare", "KeyDelivery", "KeyConfirm", "MaskStart",
    "SensitivityUpload", "Aggregate", "DecryptRequest", "DecryptionShare", "Fused",
    "MaskConfirm", "RoundStart", "UpdateUpload", "RoundDone", "Finished", "Abort",
)
ACTIONS = ("drop", "duplicate", "delay", "reorder", "duplicate-late")
#: Any delay, or one that lands a message just around a stage deadline (all stages of the
#: harness manifest last 10 s), where races between a late message and a timeout live.
DELAYS = st.floats(0.0, MAX_DELAY, allow_nan=False) | st.sampled_from(
    (9.9, 9.95, 9.97, 9.98, 9.99, 10.0, 10.01, 10.02, 10.05)
)
TERMINAL = {AggregatorState.FINISHED, AggregatorState.ABORTED, ClientState.FINISHED,
            ClientState.ABORTED}


def time_bound(manifest: Manifest) -> float:
    """Latest virtual time at which anything can still happen.

    The aggregator ends a stage within one stage timeout unless a deadline drops
    someone; each drop costs at most one more stage timeout (the stage is redone, or
    another set decrypts) and one more key agreement (when it happens during key
    agreement).  At most
    N - t + 1 clients can be dropped before too few are left and the session aborts.
    So the aggregator is terminal by

        join + keys + (rounds + 1) x (upload + decrypt) + drops x (longest + keys)

    (the "+1" round is mask agreement, which has an upload and a decryption).  A client
    that misses the end waits its patience after the last word it heard (no later than
    that), and a copy delayed by the network arrives up to MAX_DELAY later still.
    For the harness manifest: 10 + 10 + 3 x 20 + 2 x 20 = 120 s (threshold, t = 2) or
    140 s (plaintext, t = 1), plus 80 + 25 + 1.
    """
    t = manifest.timeouts
    drops = len(manifest.clients) - manifest.threshold + 1
    longest = max(t.keys_s, t.upload_s, t.decrypt_s)
    aggregator_done = (
        t.join_s + t.keys_s + (manifest.rounds + 1) * (t.upload_s + t.decrypt_s)
        + drops * (longest + t.keys_s)
    )
    return aggregator_done + t.client_patience_s + MAX_DELAY + 1.0


@dataclass
class Fault:
    """Applied to the next ``times`` messages of ``kind`` that match the sender and the
    sender's FedAvg round (None: any)."""

    kind: str
    sender: str | None
    round: int | None
    action: str
    delay: float
    times: int

    def matches(self, sender: str, kind: str, round_: int) -> bool:
        return self.times > 0 and self.kind == kind and self.sender in (
            None, sender) and self.round in (None, round_)


FAULTS = st.builds(
    Fault,
    kind=st.sampled_from(KINDS),
    sender=st.none() | st.sampled_from((AGGREGATOR, *CLIENTS)),
    round=st.none() | st.integers(0, ROUNDS),
    action=st.sampled_from(ACTIONS),
    delay=DELAYS,
    times=st.integers(1, 3),
)


def delays_for(action: str, delay: float) -> list[float]:
    """Extra delays of the copies a message is delivered as (see FaultRule)."""
    if action == "drop":
        return []
    if action == "duplicate":
        return [0.0, 0.0]
    if action == "duplicate-late":
        return [0.0, delay]
    if action == "reorder":  # overtaken by what is sent in the next few latencies
        return [0.005 + delay / MAX_DELAY * 0.05]
    return [delay]


class RecordingNetwork(Network):
    """Remembers, per round, whom the aggregator's sum was made of when it sent it."""

    def __init__(self, manifest: Manifest) -> None:
        super().__init__(manifest)
        self.summed: dict[int, tuple[str, ...]] = {}

    def _apply(self, name: str, step: Step) -> None:
        aggregator = self.aggregator
        sends = list(step.outgoing())  # DecryptRequests are made as taken (Step.later)
        kinds = {outgoing.kind for outgoing in sends}
        if name == AGGREGATOR and name not in self.dead and aggregator._round >= 1 and (
                kinds & {"Aggregate", "DecryptRequest"}):
            uploaders = tuple(sorted(aggregator._uploads.uploaders))
            # a decryption retried by another set decrypts the same sum
            assert self.summed.get(aggregator._round, uploaders) == uploaders, (
                "two different sums for one round")
            self.summed[aggregator._round] = uploaders
        super()._apply(name, Step(sends=sends, events=step.events))


class FaultyFederation(RuleBasedStateMachine):
    MODE = Mode.THRESHOLD

    def __init__(self) -> None:
        super().__init__()
        self.net: RecordingNetwork | None = None
        self.faults: list[Fault] = []
        self.noise: tuple[random.Random, float] | None = None
        self.kill_on: tuple[str, str] | None = None  # (client, kind): dies sending it
        self.killed: str | None = None

    # -- the fault rule the network consults for every copy it sends ----------------------
    def rule_for(self, sender: str, recipient: str, kind: str, now: float) -> list[float]:
        assert self.net is not None
        if self.kill_on == (sender, kind):
            self.kill_on = None
            self.killed = sender
            self.net.kill(sender)
            return []
        return self._delays(sender, kind)

    def _delays(self, sender: str, kind: str) -> list[float]:
        assert self.net is not None
        machine = self.net.machines[sender]
        round_ = machine._round if sender in self.net.clients else self.net.aggregator._round
        for fault in self.faults:
            if fault.matches(sender, kind, round_):
                fault.times -= 1
                return delays_for(fault.action, fault.delay)
        if self.noise is not None:
            generator, rate = self.noise
            if generator.random() < rate:
                action = generator.choice(ACTIONS)
                return delays_for(action, generator.uniform(0.0, MAX_DELAY))
        return [0.0]

    @initialize(schedule=st.lists(FAULTS, max_size=4),
                noise=st.none() | st.tuples(st.integers(0, 2**32 - 1),
                                            st.sampled_from((0.01, 0.03, 0.08))))
    def start(self, schedule: list[Fault], noise: tuple[int, float] | None) -> None:
        manifest = build_manifest(len(CLIENTS), mode=self.MODE, length=LENGTH, rounds=ROUNDS,
                                  fraction=0.25)
        self.faults = [dataclasses.replace(fault) for fault in schedule]  # they count down
        if noise is not None:
            self.noise = (random.Random(noise[0]), noise[1])
        self.net = RecordingNetwork(manifest)
        self.net.faults = self.rule_for
        self.net.start()

    # -- rules ---------------------------------------------------------------------------------
    @rule(fault=FAULTS)
    def add_fault(self, fault: Fault) -> None:
        self.faults.append(dataclasses.replace(fault))

    @rule(events=st.integers(1, 80))
    def advance(self, events: int) -> None:
        assert self.net is not None
        done = [-1]  # run_until also asks before the first event

        def enough() -> bool:
            done[0] += 1
            return done[0] >= events

        run_until(self.net, enough)

    # At most one client dies: a second kill rule does nothing (no precondition, so
    # that drawing a rule never has to be retried).
    @rule(victim=st.sampled_from(CLIENTS))
    def kill_now(self, victim: str) -> None:
        assert self.net is not None
        if self.killed is None and self.kill_on is None:
            self.killed = victim
            self.net.kill(victim)

    @rule(victim=st.sampled_from(CLIENTS),
          kind=st.sampled_from(("PublicShare", "KeyDelivery", "KeyConfirm",
                                "SensitivityUpload", "DecryptionShare",
                                "MaskConfirm", "UpdateUpload", "RoundDone")))
    def kill_when_sending(self, victim: str, kind: str) -> None:
        if self.killed is None and self.kill_on is None:
            self.kill_on = (victim, kind)

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def models_are_the_fedavg_of_what_was_summed(self) -> None:
        if self.net is None:
            return
        net = self.net
        tolerance = crypto_bound(net)
        for completed in net.completed_rounds(AGGREGATOR):
            assert completed.contributors == net.summed.get(completed.round), (
                f"round {completed.round}: the aggregator reports {completed.contributors}, "
                f"but summed {net.summed.get(completed.round)}"
            )
        for name in CLIENTS:
            for completed in net.completed_rounds(name):
                round_ = completed.round
                assert round_ in net.summed, (
                    f"{name} completed round {round_}, which the aggregator never aggregated"
                )
                assert completed.model is not None
                expected = net.expected_global(round_, net.summed[round_])
                error = float(np.abs(completed.model - expected).max())
                assert error <= tolerance, (
                    f"{name}'s round {round_} model is off by {error:.2e} from the FedAvg "
                    f"of {net.summed[round_]}"
                )

    @invariant()
    def clients_agree_bit_for_bit(self) -> None:
        if self.net is None:
            return
        models: dict[int, list[tuple[str, RoundCompleted]]] = {}
        for name in CLIENTS:
            if name in self.net.aggregator.dropped:
                continue  # see the module docstring
            for completed in self.net.completed_rounds(name):
                models.setdefault(completed.round, []).append((name, completed))
        for round_, held in models.items():
            first_name, first = held[0]
            for name, completed in held[1:]:
                assert np.array_equal(completed.model, first.model), (
                    f"round {round_}: {name} and {first_name} hold different global models "
                    f"(max difference {np.abs(completed.model - first.model).max():.2e})"
                )

    @invariant()
    def clock_stays_bounded(self) -> None:
        if self.net is not None:
            assert self.net.now <= time_bound(self.net.manifest), self.net.now

    def teardown(self) -> None:
        net = self.net
        if net is None:
            return
        net.run()  # raises if the simulation does not settle
        self.models_are_the_fedavg_of_what_was_summed()
        self.clients_agree_bit_for_bit()
        self.clock_stays_bounded()
        for name, machine in net.machines.items():
            assert name in net.dead or machine.state in TERMINAL, (
                f"{name} is stuck in {machine.state.name} at t={net.now:.2f} with nothing "
                "left to deliver and no deadline"
            )
        dropped = sum(isinstance(e, PartyDropped) for e in net.events[AGGREGATOR])
        note_event(f"aggregator {net.aggregator.state.name}, {len(net.summed)} round(s) "
                   f"summed, {dropped} dropped")
        if not net.dead and not self.faults and self.noise is None:
            # A clean run completes every round at every client.
            assert all(net.finished(name) for name in CLIENTS)


class PlaintextFaultyFederation(FaultyFederation):
    MODE = Mode.PLAINTEXT


_SETTINGS = {
    "deadline": None,
    "stateful_step_count": 10,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}

TestThresholdFaults = FaultyFederation.TestCase
TestThresholdFaults.settings = settings(max_examples=130, **_SETTINGS)  # type: ignore[arg-type]
TestPlaintextFaults = PlaintextFaultyFederation.TestCase
TestPlaintextFaults.settings = settings(max_examples=150, **_SETTINGS)  # type: ignore[arg-type]


def test_time_bound_is_not_vacuous() -> None:
    """A clean run ends far below the bound, and the bound is what the docstring says."""
    manifest = build_manifest(3, length=LENGTH, rounds=ROUNDS)
    net = Network(manifest)
    net.start()
    net.run()
    assert all(net.finished(name) for name in CLIENTS)
    assert net.now < 1.0
    assert time_bound(manifest) == 120 + 80 + MAX_DELAY + 1
    plaintext = build_manifest(3, mode=Mode.PLAINTEXT, length=LENGTH, rounds=ROUNDS)
    assert time_bound(plaintext) == 140 + 80 + MAX_DELAY + 1


def test_a_lost_update_is_a_dropout_the_federation_survives() -> None:
    """The fault machinery works: losing one client's round-1 upload drops that client,
    and the others finish with exactly the FedAvg of the two remaining updates."""
    machine = FaultyFederation()
    machine.start(schedule=[Fault("UpdateUpload", "client3", 1, "drop", 0.0, 1)], noise=None)
    assert machine.net is not None
    machine.net.run()
    net = machine.net
    assert [e.contributors for e in net.completed_rounds(AGGREGATOR)] == [
        ("client1", "client2"), ("client1", "client2")
    ]
    assert net.aggregator.dropped.keys() == {"client3"}
    assert all(net.finished(name) for name in ("client1", "client2"))
    machine.models_are_the_fedavg_of_what_was_summed()
    machine.clients_agree_bit_for_bit()


# ------------------------------------------------------------------ benign faults only
#: Faults no timeout should notice: duplicates and delays far below every stage timeout.
BENIGN = st.builds(
    Fault,
    kind=st.sampled_from(KINDS),
    sender=st.none() | st.sampled_from((AGGREGATOR, *CLIENTS)),
    round=st.none() | st.integers(0, ROUNDS),
    action=st.sampled_from(("duplicate", "duplicate-late", "delay", "reorder")),
    delay=st.floats(0.0, 1.0, allow_nan=False),
    times=st.integers(1, 3),
)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mode=st.sampled_from((Mode.THRESHOLD, Mode.PLAINTEXT)),
       schedule=st.lists(BENIGN, min_size=1, max_size=6))
def test_benign_faults_cost_nobody_their_place(mode: Mode, schedule: list[Fault]) -> None:
    """Duplicates and reordering within a second: nobody is dropped, every round
    completes at every client with the exact FedAvg, and the session finishes."""
    machine = PlaintextFaultyFederation() if mode is Mode.PLAINTEXT else FaultyFederation()
    machine.start(schedule=schedule, noise=None)
    net = machine.net
    assert net is not None
    faults = net.faults
    assert faults is not None
    net.faults = faults
    net.run()
    assert not [e for e in net.events[AGGREGATOR] if isinstance(e, PartyDropped)], (
        net.aggregator.dropped
    )
    assert net.aggregator.state is AggregatorState.FINISHED
    assert all(net.finished(name) for name in CLIENTS)
    assert [len(net.completed_rounds(name)) for name in CLIENTS] == [ROUNDS] * len(CLIENTS)
    machine.models_are_the_fedavg_of_what_was_summed()
    machine.clients_agree_bit_for_bit()
