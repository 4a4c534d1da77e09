"""Random network faults: drops, delays, reordering, duplicates and a client dying.

A hypothesis state machine drives a federation of 3 clients (threshold mode: N=3,
t=2; plaintext mode as the baseline) on the deterministic harness network.  Its rules
add faults to the network (aimed at one message kind and/or sender, or seeded random
noise on every message), advance the simulation a few events at a time, and kill one
client at a random moment or just before it sends a given message.  At the end the
network runs until nothing is left to do.

Invariants, checked after every rule and at the end:

* only MessageRejected is ever caught (the harness catches nothing else, so any other
  exception from a machine fails the example);
* every global model a client completes equals the plaintext FedAvg of the updates
  the aggregator summed for that round (2e-6 in threshold mode, 1e-6 in plaintext
  mode), and the aggregator's RoundCompleted names exactly those contributors;
* all clients that completed a round hold bit-for-bit the same model;
* the simulation settles: every machine is terminal or dead, and the virtual clock
  stays below :func:`time_bound`, derived from the manifest's timeouts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import event as note_event
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from protocol_harness import AGGREGATOR, Network, build_manifest, run_until

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
    "SensitivityUpload", "Aggregate", "PartialShare", "RecoveryRequest", "RecoveryShare",
    "MaskConfirm", "RoundStart", "UpdateUpload", "RoundDone", "Finished", "Abort",
)
ACTIONS = ("drop", "duplicate", "delay", "reorder", "duplicate-late")
#: Any delay, or one that lands a message just around a stage deadline (all stages of the
#: harness manifest last 10 s), where races between a late message and a timeout live.
DELAYS = st.floats(0.0, MAX_DELAY, allow_nan=False) | st.sampled_from(
    (9.9, 9.95, 9.97, 9.98, 9.99, 10.0, 10.01, 10.02, 10.05)
)
TOLERANCE = {Mode.THRESHOLD: 2e-6, Mode.PLAINTEXT: 1e-6}
TERMINAL = {AggregatorState.FINISHED, AggregatorState.ABORTED, ClientState.FINISHED,
            ClientState.ABORTED}


def time_bound(manifest: Manifest) -> float:
    """Latest virtual time at which anything can still happen.

    The aggregator ends a stage within one stage timeout unless a deadline drops
    someone; each drop costs at most one more stage timeout (the stage is redone or
    recovered) and one more key agreement (threshold keys are rotated).  At most
    N - t + 1 clients can be dropped before too few are left and the session aborts.
    So the aggregator is terminal by

        join + keys + (rounds + 1) x (upload + decrypt) + drops x (longest + keys)

    (the "+1" round is mask agreement, which has an upload and a decryption).  A client
    that misses the end waits its patience after the last word it heard (no later than
    that), and a copy delayed by the network arrives up to MAX_DELAY later still.
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
    """Applied to the next ``times`` messages that match kind, sender and the sender's
    FedAvg round (None: any)."""

    kind: str | None
    sender: str | None
    round: int | None
    action: str
    delay: float
    times: int

    def matches(self, sender: str, kind: str, round_: int) -> bool:
        return self.times > 0 and self.kind in (None, kind) and self.sender in (
            None, sender) and self.round in (None, round_)


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
        if (name == AGGREGATOR and name not in self.dead and aggregator._round >= 1
                and any(outgoing.kind == "Aggregate" for outgoing in step.sends)):
            assert aggregator._round not in self.summed, "two aggregates for one round"
            self.summed[aggregator._round] = tuple(sorted(aggregator._uploaders))
        super()._apply(name, step)


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

    @initialize()
    def start(self) -> None:
        manifest = build_manifest(len(CLIENTS), mode=self.MODE, length=LENGTH, rounds=ROUNDS,
                                  fraction=0.25)
        self.net = RecordingNetwork(manifest)
        self.net.faults = self.rule_for
        self.net.start()

    # -- rules ---------------------------------------------------------------------------------
    @rule(kind=st.none() | st.sampled_from(KINDS),
          sender=st.none() | st.sampled_from((AGGREGATOR, *CLIENTS)),
          round_=st.none() | st.integers(0, ROUNDS),
          action=st.sampled_from(ACTIONS),
          delay=DELAYS,
          times=st.integers(1, 3))
    def add_fault(self, kind: str | None, sender: str | None, round_: int | None, action: str,
                  delay: float, times: int) -> None:
        self.faults.append(Fault(kind, sender, round_, action, delay, times))

    @rule(seed=st.integers(0, 2**32 - 1), rate=st.sampled_from((0.01, 0.03, 0.08)))
    def add_noise(self, seed: int, rate: float) -> None:
        self.noise = (random.Random(seed), rate)

    @rule(events=st.integers(1, 80))
    def advance(self, events: int) -> None:
        assert self.net is not None
        done = [-1]  # run_until also asks before the first event

        def enough() -> bool:
            done[0] += 1
            return done[0] >= events

        run_until(self.net, enough)

    @precondition(lambda self: self.killed is None and self.kill_on is None)
    @rule(victim=st.sampled_from(CLIENTS))
    def kill_now(self, victim: str) -> None:
        assert self.net is not None
        self.killed = victim
        self.net.kill(victim)

    @precondition(lambda self: self.killed is None and self.kill_on is None)
    @rule(victim=st.sampled_from(CLIENTS),
          kind=st.sampled_from(("PublicShare", "KeyDelivery", "KeyConfirm",
                                "SensitivityUpload", "PartialShare", "RecoveryShare",
                                "MaskConfirm", "UpdateUpload", "RoundDone")))
    def kill_when_sending(self, victim: str, kind: str) -> None:
        self.kill_on = (victim, kind)

    # -- invariants ------------------------------------------------------------------------------
    @invariant()
    def models_are_the_fedavg_of_what_was_summed(self) -> None:
        if self.net is None:
            return
        net = self.net
        tolerance = TOLERANCE[self.MODE]
        for event in net.completed_rounds(AGGREGATOR):
            assert event.contributors == net.summed.get(event.round), (
                f"round {event.round}: the aggregator reports {event.contributors}, but "
                f"summed {net.summed.get(event.round)}"
            )
        for name in CLIENTS:
            for event in net.completed_rounds(name):
                assert event.round in net.summed, f"{name} completed round {event.round}, " \
                    "which the aggregator never aggregated"
                assert event.model is not None
                expected = net.expected_global(event.round, net.summed[event.round])
                error = float(np.abs(event.model - expected).max())
                assert error <= tolerance, (
                    f"{name}'s round {event.round} model is off by {error:.2e} from the FedAvg "
                    f"of {net.summed[event.round]}"
                )

    @invariant()
    def clients_agree_bit_for_bit(self) -> None:
        if self.net is None:
            return
        models: dict[int, list[tuple[str, RoundCompleted]]] = {}
        for name in CLIENTS:
            for event in self.net.completed_rounds(name):
                models.setdefault(event.round, []).append((name, event))
        for round_, held in models.items():
            first_name, first = held[0]
            for name, event in held[1:]:
                assert np.array_equal(event.model, first.model), (
                    f"round {round_}: {name} and {first_name} hold different global models "
                    f"(max difference {np.abs(event.model - first.model).max():.2e})"
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
        note_event(f"aggregator {net.aggregator.state.name}, {len(net.summed)} round(s) summed, "
              f"{dropped} dropped")
        note_event(f"{len(net.rejections)} messages rejected")
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
TestThresholdFaults.settings = settings(max_examples=45, **_SETTINGS)  # type: ignore[arg-type]
TestPlaintextFaults = PlaintextFaultyFederation.TestCase
TestPlaintextFaults.settings = settings(max_examples=30, **_SETTINGS)  # type: ignore[arg-type]


def test_time_bound_covers_a_full_run_with_a_dropout() -> None:
    """The bound is not vacuous: a clean run ends far below it, and it grows with the
    timeouts that make it up."""
    manifest = build_manifest(3, length=LENGTH, rounds=ROUNDS)
    net = Network(manifest)
    net.start()
    net.run()
    assert all(net.finished(name) for name in CLIENTS)
    assert net.now < 1.0 < time_bound(manifest) < 400.0
