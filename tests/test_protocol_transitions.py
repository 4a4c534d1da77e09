"""Every (state, message type) pair of every role: probes never crash a machine.

Each state of each role is reached on a real network, stopped as soon as the machine
is in it (threshold mode for the client and the aggregator, single-key mode for the
key authority; single-key and plaintext clients and aggregators as extras, and a few
later visits: a joint decryption retried by another set after a member vanished,
before and after the receiver answered it, the confirmations of a fused result, a
retried upload, a restarted key agreement).  The other parties are then run on,
without the target, to collect what would reach it next.  Every body type of the
protocol is fed to the machine as an authentic, well-formed message aimed at its
current step, from a plausible sender:

* ``bogus``: random frames, fake digests;
* ``replay-first`` / ``replay-last``: the first and last real body of that type this
  network has sent (same keys), re-signed for the current step;
* ``next`` / ``retry`` / ``consistent``: the header of the step that would follow, or
  the contents the aggregator really holds (key id, group check, mask, the decryption
  set and the aggregate's digest), with well-formed polynomial frames (all zero) for
  the joint decryption; a share comes from a member that still owes one;
* ``other-manifest``: a Hello or KeygenStart carrying another manifest's fingerprint;
* ``in-flight-from-...`` (later visits only): the real bytes about to arrive, unchanged.

Whatever the content, ``receive`` must return a Step or raise a MessageRejected; a
rejected message must leave the machine exactly as it was (compared with
:func:`snapshot`); a type the transition table does not list for the state (other
than Abort) must be rejected; and whatever the machine sends is signed by itself (or
relays the probe's bytes).  An accepted probe changes the machine, so the state is
reached again on a fresh network before the next probe.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import heapq
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from protocol_harness import (
    AGGREGATOR,
    AUTHORITY,
    Network,
    assert_models_match_fedavg,
    build_manifest,
    identity,
    run_until,
    snapshot,
)

from protocols import AggregatorMachine, ClientMachine, KeyAuthorityMachine, Manifest, Mode
from protocols.aggregator import AggregatorState
from protocols.authority import KeyAuthorityState
from protocols.client import ClientState
from protocols.codec import decode_message, encode_message
from protocols.events import Event, PartyDropped, SensitivityNeeded, Step, UpdateNeeded
from protocols.messages import (
    BODY_TYPES,
    Abort,
    Aggregate,
    DecryptionShare,
    DecryptRequest,
    Finished,
    Fused,
    Header,
    Hello,
    KeyConfirm,
    KeyDelivery,
    KeygenStart,
    MaskConfirm,
    MaskStart,
    Message,
    PublicShare,
    RoundDone,
    RoundStart,
    SensitivityUpload,
    Stage,
    UpdateUpload,
)
from protocols.protection import encode_plain
from threshold_fl.crypto.vectors import ciphertext_count
from threshold_fl.crypto.wire import PolynomialRole, encode_polynomials
from threshold_fl.errors import MessageRejected
from threshold_fl.ml.mask import EncryptionMask

A, C, K = AggregatorState, ClientState, KeyAuthorityState
LENGTH = 12
TARGET_CLIENT = "client2"  # not the key-agreement lead, so every dealer is someone else
OTHER_CLIENT = "client1"

# Only the aggregator sends these (the plausible sender of a probe of that type).
ANNOUNCEMENTS = (KeygenStart, MaskStart, RoundStart, Aggregate, DecryptRequest, Fused,
                 Finished)
BROADCASTS = (PublicShare, Aggregate, Fused)  # header recipient "*"
CLIENT_TO_CLIENT = (KeyDelivery,)  # relayed by the aggregator
DECRYPTIONS = (A.MASK_DECRYPTION, A.ROUND_DECRYPTION)

Machine = AggregatorMachine | ClientMachine | KeyAuthorityMachine


def changed(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


# ------------------------------------------------------------------------ reaching states
class ProbeNetwork(Network):
    """A network that records every message sent, and whose application can hold back
    its answer to one client's event."""

    def __init__(self, manifest: Manifest, *, hold: tuple[str, type] | None = None) -> None:
        super().__init__(manifest)
        self.hold = hold
        self.held: list[Event] = []

    def _play_application(self, name: str, event: Any) -> None:
        if self.hold is not None and (name, type(event)) == self.hold:
            self.held.append(event)  # the application is still computing
            return
        super()._play_application(name, event)

    def sent_bodies(self, body_type: type, sender: str) -> list[Any]:
        """The first and the last body of that type sent so far, preferring those sent
        by ``sender`` (decoded lazily: decoding every message would double the cost)."""
        sent = [data for _, kind, data in self.history if kind == body_type.__name__]
        decoded = {}

        def message(index: int) -> Message:
            if index not in decoded:
                decoded[index] = decode_message(sent[index], self.manifest.directory)
            return decoded[index]

        order = range(len(sent))
        first = next((i for i in order if message(i).header.sender == sender), None)
        last = next((i for i in reversed(order) if message(i).header.sender == sender), None)
        if first is None or last is None:
            first, last = 0, len(sent) - 1
        picked = [message(i).body for i in sorted({first, last}) if 0 <= i < len(sent)]
        return picked

    def run_others(self, frozen: str, *, max_events: int = 10_000) -> list[bytes]:
        """Deliver what is in flight to everyone but ``frozen`` (no deadline fires, the
        clock stays): the bytes that would reach ``frozen`` next, in arrival order."""
        now, arriving = self.now, []
        for _ in range(max_events):
            if not self._queue:
                self.now = now
                return arriving
            pending = heapq.heappop(self._queue)
            if pending.recipient == frozen:
                arriving.append(pending.data)
                continue
            self.now = max(now, pending.time)
            self._deliver(pending)
        raise AssertionError("the other parties did not settle")


@dataclass(frozen=True)
class Scenario:
    mode: Mode
    party: str
    state: enum.Enum
    started: bool = True
    hold: type | None = None  # event the target client's application does not answer yet
    kill: tuple[str, ...] = ()  # parties dead from the start
    vanish: tuple[str, str, int] | None = None  # (client, kind, round): dies sending it
    when: str | None = None  # a further condition (see WHEN) on top of the state
    fraction: float = 0.25  # below 1: the mask stage runs (at 1 there is none)


def _asked_again(net: Network, party: str) -> bool:
    """The aggregator has just asked a second set (a member vanished), and ``party`` has
    not answered that request yet."""
    aggregator = net.aggregator
    return (aggregator.state in DECRYPTIONS and aggregator.step[3] == 2
            and (party == AGGREGATOR or current_step(net, party)[3] == 1))


def _fused(net: Network, party: str) -> bool:
    decryption = net.aggregator._decryption
    return decryption is not None and decryption.complete


#: Conditions that pick a later visit of a state than the first one: a retried
#: decryption or upload, the result out, a restarted key agreement.
WHEN: dict[str, Callable[[Network, str], bool]] = {
    "asked-again": _asked_again,
    "retry": lambda net, party: current_step(net, party)[3] == 2,
    "fused": _fused,
    "epoch2": lambda net, party: current_step(net, party)[1] == 2,
}


@functools.cache
def manifest_for(mode: Mode, fraction: float) -> Manifest:
    return build_manifest(3, mode=mode, length=LENGTH, rounds=2, fraction=fraction)


def reach(scenario: Scenario) -> ProbeNetwork:
    """A fresh network stopped as soon as the scenario's machine is in its state."""
    hold = (scenario.party, scenario.hold) if scenario.hold is not None else None
    net = ProbeNetwork(manifest_for(scenario.mode, scenario.fraction), hold=hold)
    for name in scenario.kill:
        net.kill(name)
    machine = net.machines[scenario.party]
    if scenario.vanish is not None:
        victim, kind, round_ = scenario.vanish

        def vanish(sender: str, recipient: str, sent: str, now: float) -> list[float]:
            if (sender, sent) == (victim, kind) and net.clients[victim]._round == round_:
                net.kill(victim)
                return []
            return [0.0]

        net.faults = vanish
    when = WHEN[scenario.when] if scenario.when is not None else (lambda net, party: True)
    if scenario.started:
        net.start()
        reached = run_until(
            net, lambda: machine.state is scenario.state and when(net, scenario.party)
        )
    else:
        reached = machine.state is scenario.state
    assert reached, f"{scenario} not reached: {scenario.party} ended in {machine.state}"
    return net


ALL_CLIENTS = ("client1", "client2", "client3")
# Unanswered sensitivity request: the aggregator drops the client at the upload deadline
# and tells it so (works whatever t is).
_CLIENT_ABORTED = {"hold": SensitivityNeeded}


def _role_scenarios(mode: Mode, transient: frozenset[enum.Enum]) -> list[Scenario]:
    special: dict[enum.Enum, dict[str, Any]] = {
        C.IDLE: {"started": False},
        C.MASK_COMPUTING: {"hold": SensitivityNeeded},
        C.TRAINING: {"hold": UpdateNeeded},
        C.ABORTED: _CLIENT_ABORTED,
        A.IDLE: {"started": False},
        A.ABORTED: {"kill": ALL_CLIENTS},  # nobody joins: too few for key agreement
    }
    out = [
        Scenario(mode, party, state, **special.get(state, {}))
        for party, states in ((TARGET_CLIENT, ClientState), (AGGREGATOR, AggregatorState))
        for state in states
        if state not in transient
    ]
    return out


#: States a machine passes through within one delivery in a mode, so no network can be
#: stopped in them: without joint decryption a client decrypts the aggregate at once.
INSTANT_WITHOUT_JOINT_DECRYPTION = frozenset({C.MASK_DECRYPTING, C.ROUND_DECRYPTING})
#: Plaintext mode has no key to agree on: a client confirms as soon as it is told to start.
INSTANT_IN_PLAINTEXT = INSTANT_WITHOUT_JOINT_DECRYPTION | {C.KEY_AGREEMENT}

SCENARIOS = [
    *_role_scenarios(Mode.THRESHOLD, frozenset()),
    Scenario(Mode.SINGLE_KEY, AUTHORITY, K.IDLE, started=False),
    Scenario(Mode.SINGLE_KEY, AUTHORITY, K.WAITING),
    Scenario(Mode.SINGLE_KEY, AUTHORITY, K.DONE),
    # The aggregator aborts when nobody joins and tells the authority.
    Scenario(Mode.SINGLE_KEY, AUTHORITY, K.ABORTED, kill=ALL_CLIENTS),
    *_role_scenarios(Mode.SINGLE_KEY, INSTANT_WITHOUT_JOINT_DECRYPTION),
    *_role_scenarios(Mode.PLAINTEXT, INSTANT_IN_PLAINTEXT),
    # Later visits (threshold mode, N = 3, t = 2).  The decryption sets are (client1,
    # client2) for the mask, (client2, client3) in round 1 and (client1, client3) in
    # round 2; a member that vanishes instead of sending its share makes the aggregator
    # ask the two survivors in attempt 2 at the decryption deadline.
    *(
        Scenario(Mode.THRESHOLD, party, state, vanish=vanish, when=when)
        for party, state, vanish, when in (
            # the retry requested: the shares of attempt 2 are on their way
            (AGGREGATOR, A.MASK_DECRYPTION, ("client1", "DecryptionShare", 0), "asked-again"),
            (AGGREGATOR, A.ROUND_DECRYPTION, ("client3", "DecryptionShare", 1),
             "asked-again"),
            # client2 shared in attempt 1; the request of attempt 2 is on its way
            (TARGET_CLIENT, C.MASK_DECRYPTING, ("client1", "DecryptionShare", 0),
             "asked-again"),
            (TARGET_CLIENT, C.ROUND_DECRYPTING, ("client3", "DecryptionShare", 1),
             "asked-again"),
            # client2 shared in attempt 2 too; the retry set's fused result is on its way
            (TARGET_CLIENT, C.MASK_DECRYPTING, ("client1", "DecryptionShare", 0), "retry"),
            (TARGET_CLIENT, C.ROUND_DECRYPTING, ("client3", "DecryptionShare", 1), "retry"),
            # client2, not in round 2's first set, is asked in the retry
            (TARGET_CLIENT, C.UPDATE_UPLOADED, ("client3", "DecryptionShare", 2),
             "asked-again"),
            # the fused result is out: the confirmations are on their way
            (AGGREGATOR, A.MASK_DECRYPTION, None, "fused"),
            (AGGREGATOR, A.ROUND_DECRYPTION, None, "fused"),
            # an upload retried without client3
            (AGGREGATOR, A.ROUND_UPLOAD, ("client3", "UpdateUpload", 1), "retry"),
            (TARGET_CLIENT, C.UPDATE_UPLOADED, ("client3", "UpdateUpload", 1), "retry"),
            # key agreement restarted without client3 (the only way to a new epoch here:
            # a dropout after key agreement no longer rotates the key)
            (AGGREGATOR, A.KEY_AGREEMENT, ("client3", "KeyConfirm", 0), "epoch2"),
            (TARGET_CLIENT, C.KEY_AGREEMENT, ("client3", "KeyConfirm", 0), "epoch2"),
            (TARGET_CLIENT, C.KEYS_CONFIRMED, ("client3", "KeyConfirm", 0), "epoch2"),
        )
    ),
    # Mask fraction 1 (everything encrypted): no mask agreement.  A client with keys
    # confirmed takes round 1's RoundStart; mask-stage messages are refused everywhere.
    *(Scenario(Mode.THRESHOLD, party, state, fraction=1.0, **extra)
      for party, state, extra in (
          (TARGET_CLIENT, C.KEYS_CONFIRMED, {}),
          (TARGET_CLIENT, C.TRAINING, {"hold": UpdateNeeded}),
          (TARGET_CLIENT, C.ROUND_DONE, {}),
          (AGGREGATOR, A.KEY_AGREEMENT, {}),
          (AGGREGATOR, A.ROUND_UPLOAD, {}),
          (AGGREGATOR, A.ROUND_DECRYPTION, {}),
      )),
]


def test_every_state_of_every_role_is_probed() -> None:
    """Threshold mode reaches every client and aggregator state; single-key mode every
    state of the key authority (the extra modes skip only the instant states)."""
    reached = {(s.mode, s.party, s.state) for s in SCENARIOS}
    for party, states, mode in (
        (TARGET_CLIENT, ClientState, Mode.THRESHOLD),
        (AGGREGATOR, AggregatorState, Mode.THRESHOLD),
        (AUTHORITY, KeyAuthorityState, Mode.SINGLE_KEY),
    ):
        missing = [s.name for s in states if (mode, party, s) not in reached]
        assert not missing, f"{party} states never probed in {mode.value} mode: {missing}"
    for mode, instant in ((Mode.SINGLE_KEY, INSTANT_WITHOUT_JOINT_DECRYPTION),
                          (Mode.PLAINTEXT, INSTANT_IN_PLAINTEXT)):
        skipped = {s for s in ClientState if (mode, TARGET_CLIENT, s) not in reached}
        assert skipped == instant
        assert all((mode, AGGREGATOR, s) in reached for s in AggregatorState)


# ------------------------------------------------------------------------------ probes
@dataclass(frozen=True)
class Probe:
    label: str
    sender: str
    message: Message
    data: bytes | None = None  # real bytes in flight; None: sign ``message`` as ``sender``

    def encode(self) -> bytes:
        if self.data is not None:
            return self.data
        return encode_message(identity(self.sender), self.message)


def _fake_digest(tag: str) -> str:
    return hashlib.sha256(f"probe/{tag}".encode()).hexdigest()


def _random(tag: str, size: int) -> bytes:
    return np.random.default_rng(int(_fake_digest(tag)[:8], 16)).bytes(size)


def current_step(net: Network, party: str) -> tuple[Stage, int, int, int]:
    if party == AGGREGATOR:
        return net.aggregator.step
    if party == AUTHORITY:  # the authority keeps no step: it follows the aggregator's
        return net.aggregator.step
    return net.clients[party]._step


def _stage_for(body_type: type, stage: Stage) -> Stage:
    """The receiver's stage if the body may carry it, else the nearest one it may."""
    allowed: frozenset[Stage] = body_type.STAGES  # type: ignore[attr-defined]
    if stage in allowed:
        return stage
    return min(allowed, key=lambda s: (abs(s - stage), s))


def _sender_of(body_type: type, party: str, mode: Mode) -> str:
    if body_type is Abort:
        return OTHER_CLIENT if party == AGGREGATOR else AGGREGATOR
    if body_type in ANNOUNCEMENTS:
        return AGGREGATOR
    if body_type in (PublicShare, KeyDelivery) and mode is Mode.SINGLE_KEY:
        return AUTHORITY
    return OTHER_CLIENT if party != OTHER_CLIENT else TARGET_CLIENT


def _recipient_of(body_type: type, party: str, sender: str) -> str:
    if body_type in BROADCASTS:
        return "*"
    if party != AGGREGATOR:
        return party
    if body_type in CLIENT_TO_CLIENT or sender == AGGREGATOR:
        return TARGET_CLIENT  # relayed, or an announcement reflected to the aggregator
    return AGGREGATOR


def _bogus_body(body_type: type, net: Network) -> Any:
    manifest, aggregator = net.manifest, net.aggregator
    plain_length = LENGTH - (aggregator.mask.count if aggregator.mask is not None else LENGTH)
    plain = encode_plain(np.zeros(plain_length))
    frames = (_random(body_type.__name__, 96),)
    fake = _fake_digest(body_type.__name__)
    pair = (OTHER_CLIENT, TARGET_CLIENT)  # sorted: t = 2 holders
    bodies: dict[type, Callable[[], Any]] = {
        Hello: lambda: Hello(7, manifest.fingerprint()),
        KeygenStart: lambda: KeygenStart(manifest.client_ids, manifest.threshold,
                                         manifest.fingerprint()),
        PublicShare: lambda: PublicShare(frames[0]),
        KeyDelivery: lambda: KeyDelivery(frames[0]),
        KeyConfirm: lambda: KeyConfirm(fake, fake),
        MaskStart: lambda: MaskStart(fake, fake, 0.5),
        SensitivityUpload: lambda: SensitivityUpload(frames),
        Aggregate: lambda: Aggregate(frames, plain),
        DecryptRequest: lambda: DecryptRequest(pair, frames),
        DecryptionShare: lambda: DecryptionShare(pair, fake, frames),
        Fused: lambda: Fused(pair, fake, frames, plain),
        MaskConfirm: lambda: MaskConfirm(_random("bits", (LENGTH + 7) // 8), fake),
        RoundStart: lambda: RoundStart(fake, fake, fake, 0.5),
        UpdateUpload: lambda: UpdateUpload(frames, plain),
        RoundDone: lambda: RoundDone(fake),
        Finished: lambda: Finished(current_step(net, AGGREGATOR)[2]),
        Abort: lambda: Abort("a probe"),
    }
    assert set(bodies) == set(BODY_TYPES)
    return bodies[body_type]()


Variant = tuple[str, tuple[Stage, int, int, int], Any, str | None]  # name, step, body, sender


def _zeros(net: Network, party: str, role: PolynomialRole, stage: Stage) -> tuple[bytes, ...]:
    """Well-formed polynomial frames (all zero) of the receiver's key and length."""
    aggregator = net.aggregator
    assert aggregator._key_id is not None
    mask = net.clients[party]._mask if party != AGGREGATOR else aggregator.mask
    length = mask.count if stage is Stage.ROUND and mask is not None else LENGTH
    context = aggregator.context
    limbs = context.ring.limbs - context.upload_level
    shape = (ciphertext_count(context, length), limbs, context.ring.ring_dimension)
    return tuple(encode_polynomials(context, role, aggregator._key_id, length,
                                    np.zeros(shape, dtype=np.uint64)))


def _decryption_variants(net: Network, party: str, body_type: type,
                         step: tuple[Stage, int, int, int]) -> list[Variant]:
    """Joint-decryption messages with real keys, lengths, sets and digests: a request
    and a fused result for the receiver's step (and the next attempt), a share from a
    member of the aggregator's set that still owes one."""
    aggregator, manifest = net.aggregator, net.manifest
    stage, _, _, attempt = step
    if manifest.mode is not Mode.THRESHOLD or aggregator._key_id is None or (
            stage not in (Stage.MASK, Stage.ROUND)):
        return []
    decryption = aggregator._decryption
    if party == AGGREGATOR:
        if body_type is not DecryptionShare or decryption is None or decryption.complete:
            return []
        owing = [m for m in decryption.missing() if m in aggregator.alive]
        if not owing:
            return []
        body = DecryptionShare(decryption.members, decryption.digest,
                               _zeros(net, party, PolynomialRole.SHARE, stage))
        return [("consistent", step, body, owing[0])]
    members = (decryption.members if decryption is not None and party in decryption.members
               else tuple(sorted({party, OTHER_CLIENT if party != OTHER_CLIENT
                                  else TARGET_CLIENT})))
    if body_type is DecryptRequest:
        body = DecryptRequest(members, _zeros(net, party, PolynomialRole.C1, stage))
    elif body_type is Fused:
        client = net.clients[party]
        plain_length = LENGTH - client._mask.count if (
            stage is Stage.ROUND and client._mask is not None) else 0
        digest = decryption.digest if decryption is not None else _fake_digest("c1")
        body = Fused(members, digest, _zeros(net, party, PolynomialRole.FUSED, stage),
                     encode_plain(np.zeros(plain_length)))
    else:
        return []
    retry = (stage, step[1], step[2], attempt + 1)
    return [("consistent", step, body, None), ("retry", retry, body, None)]


def _consistent(net: Network, party: str, body_type: type,
                step: tuple[Stage, int, int, int]) -> list[Variant]:
    """Variants with the contents the aggregator really holds, for the steps to come."""
    return [*((*variant, None) for variant in _announcements(net, body_type, step)),
            *_decryption_variants(net, party, body_type, step)]


def _announcements(net: Network, body_type: type, step: tuple[Stage, int, int, int]) -> list[
    tuple[str, tuple[Stage, int, int, int], Any]
]:
    aggregator = net.aggregator
    _, epoch, round_, attempt = step
    key_id = aggregator._key_id or _fake_digest("key")
    check = aggregator._group_check or _fake_digest("check")
    mask = aggregator.mask or EncryptionMask.full(LENGTH)
    other = _fake_digest("another manifest")
    if body_type is Hello:  # from a client that runs another manifest
        return [("other-manifest", (Stage.SETUP, 0, 0, 0), Hello(7, other))]
    if body_type is KeygenStart:
        manifest = net.manifest
        body = KeygenStart(manifest.client_ids, manifest.threshold, manifest.fingerprint())
        foreign = KeygenStart(manifest.client_ids, manifest.threshold, other)
        return [("next", (Stage.KEYS, epoch + 1, round_, 1), body),
                ("other-manifest", (Stage.KEYS, epoch + 1, round_, 1), foreign)]
    if body_type is MaskStart:
        body = MaskStart(key_id, check, 0.5)
        return [("next", (Stage.MASK, epoch, 0, 1), body),
                ("retry", (Stage.MASK, epoch, 0, attempt + 1), body)]
    if body_type is RoundStart:
        body = RoundStart(key_id, mask.digest(), check, 0.5)
        return [("next", (Stage.ROUND, epoch, round_ + 1, 1), body),
                ("retry", (Stage.ROUND, epoch, round_, attempt + 1), body)]
    if body_type is KeyConfirm:
        return [("consistent", step, KeyConfirm(key_id, check))]
    if body_type is MaskConfirm:
        return [("consistent", step, MaskConfirm(mask.bits(), mask.digest()))]
    return []


def build_probes(net: ProbeNetwork, party: str, *, in_flight: bool) -> dict[str, Probe]:
    """Every probe for ``party`` in its current state, by label (labels do not depend on
    the keys, so the same probe can be built again on a fresh network)."""
    mode = net.manifest.mode
    step = current_step(net, party)
    arriving = net.run_others(party)
    probes: dict[str, Probe] = {}
    for body_type in BODY_TYPES:
        sender = _sender_of(body_type, party, mode)
        recipient = _recipient_of(body_type, party, sender)
        variants: list[Variant] = [("bogus", step, _bogus_body(body_type, net), None)]
        # Real bodies of this network (same keys): sent before, or by the others since.
        real = net.sent_bodies(body_type, sender)
        if real:
            variants.append(("replay-first", step, real[0], None))
        if len(real) > 1 and real[-1] != real[0]:
            variants.append(("replay-last", step, real[-1], None))
        variants += _consistent(net, party, body_type, step)
        for name, (stage, epoch, round_, attempt), body, by in variants:
            header = Header(net.manifest.session, by or sender, recipient,
                            _stage_for(body_type, stage), epoch, round_, attempt)
            label = f"{body_type.__name__}/{name}"
            probes[label] = Probe(label, by or sender, Message(header, body))
    # What would really arrive next, as it is (its own sender, header and signature):
    # the normal path on a first visit (the end-to-end tests cover it), so only after a
    # dropout.
    counts: dict[tuple[str, str], int] = {}
    for data in arriving if in_flight else []:
        message = decode_message(data, net.manifest.directory)
        key = (message.kind, message.header.sender)
        counts[key] = counts.get(key, 0) + 1
        label = f"{message.kind}/in-flight-from-{key[1]}-{counts[key]}"
        probes[label] = Probe(label, message.header.sender, message, data)
    return probes


def prepare(scenario: Scenario) -> tuple[ProbeNetwork, Machine, dict[str, Probe]]:
    net = reach(scenario)
    probes = build_probes(net, scenario.party, in_flight=scenario.when is not None)
    return net, net.machines[scenario.party], probes


# ------------------------------------------------------------------------------- the test
def _check_sends(step: Step, machine: Machine, data: bytes, net: Network) -> str | None:
    """Every outgoing message is signed by the machine (or relays the probe unchanged)."""
    for outgoing in step.outgoing():
        if outgoing.data == data:
            continue
        message = decode_message(outgoing.data, net.manifest.directory)
        if message.header.sender != machine.me:
            return f"sent a message signed by {message.header.sender!r}"
        if not outgoing.recipients or not set(outgoing.recipients) <= set(net.machines):
            return f"sent to unknown recipients {outgoing.recipients}"
    return None


def _id(scenario: Scenario) -> str:
    out = f"{scenario.mode.value}-{scenario.party}-{scenario.state.name}"
    if scenario.when is not None:
        out += f"-{scenario.when}"
    if scenario.vanish is not None:
        out += f"-{scenario.vanish[0]}-gone"
    if scenario.fraction == 1.0:
        out += "-fraction1"
    return out


@pytest.mark.parametrize("scenario", SCENARIOS, ids=_id)
def test_every_message_type_in_state(scenario: Scenario) -> None:
    net, machine, probes = prepare(scenario)
    listed = type(machine).TRANSITIONS.get(scenario.state, {})
    assert {label.split("/")[0] for label in probes} >= {t.__name__ for t in BODY_TYPES}
    failures: list[str] = []
    outcomes = {"accepted": 0, "rejected": 0}
    for label in list(probes):
        if label not in probes:  # the fresh network after a reset has no such message
            continue
        probe = probes[label]
        before = snapshot(machine)
        data = probe.encode()
        where = f"{label} from {probe.sender} (header {probe.message.header.step})"
        reset = True
        try:
            step = machine.receive(data, net.now)
        except MessageRejected as exc:
            outcomes["rejected"] += 1
            diff = changed(before, snapshot(machine))
            if diff:
                failures.append(f"{where}: rejected ({type(exc).__name__}: {exc}) but changed "
                                f"{diff}")
            reset = bool(diff)
        except Exception:
            failures.append(f"{where}: raised\n{traceback.format_exc()}")
        else:
            outcomes["accepted"] += 1
            if type(probe.message.body) not in listed and type(probe.message.body) is not Abort:
                failures.append(f"{where}: accepted, but {scenario.state.name} lists no handler")
            if not isinstance(step, Step):
                failures.append(f"{where}: returned {step!r}, not a Step")
            elif (problem := _check_sends(step, machine, data, net)) is not None:
                failures.append(f"{where}: {problem}")
            reset = bool(changed(before, snapshot(machine)))
        if reset:  # probes are independent: start again from the state
            net, machine, probes = prepare(scenario)
    assert not failures, (
        f"{_id(scenario)}: {len(failures)} probes failed:\n" + "\n".join(failures)
    )
    assert outcomes["rejected"] > 0 and sum(outcomes.values()) >= len(BODY_TYPES)


@pytest.mark.parametrize("mode", [Mode.SINGLE_KEY, Mode.PLAINTEXT], ids=lambda m: m.value)
def test_joint_decryption_is_refused_outside_threshold_mode(mode: Mode) -> None:
    """Only threshold mode decrypts jointly: elsewhere a client decrypts the Aggregate
    itself, so a DecryptRequest or a Fused (well formed, from the aggregator, for the
    client's step and a set of t holders with the client in it) must be refused as
    unexpected and change nothing, as an Aggregate is in threshold mode."""
    problems: list[str] = []
    for state in (C.MASK_UPLOADED, C.UPDATE_UPLOADED):
        scenario = Scenario(mode, TARGET_CLIENT, state)
        net = reach(scenario)
        client = net.clients[TARGET_CLIENT]
        stage = client._step[0]
        plain_length = LENGTH - client._mask.count if client._mask is not None else 0
        members = tuple(sorted((OTHER_CLIENT, TARGET_CLIENT)))
        bodies = [
            DecryptRequest(members, _zeros(net, TARGET_CLIENT, PolynomialRole.C1, stage)),
            Fused(members, _fake_digest("c1"),
                  _zeros(net, TARGET_CLIENT, PolynomialRole.FUSED, stage),
                  encode_plain(np.zeros(plain_length))),
        ]
        for body in bodies:
            header = Header(net.manifest.session, AGGREGATOR, TARGET_CLIENT, *client._step)
            data = encode_message(identity(AGGREGATOR), Message(header, body))
            before = snapshot(client)
            where = f"{state.name}: {type(body).__name__}"
            try:
                client.receive(data, net.now)
            except MessageRejected as exc:
                if changed(before, snapshot(client)):
                    problems.append(f"{where}: rejected ({exc}) but changed the client")
            except Exception as exc:  # the bug shows as an AssertionError
                problems.append(f"{where}: raised {type(exc).__name__}: {exc}")
            else:
                problems.append(f"{where}: accepted, now {client.state.name}")
            if changed(before, snapshot(client)):
                net = reach(scenario)
                client = net.clients[TARGET_CLIENT]
    assert not problems, "\n".join(problems)


# ---------------------------------------------------- the transport says a client is gone
AGGREGATOR_SCENARIOS = [s for s in SCENARIOS if s.party == AGGREGATOR]


@pytest.mark.parametrize("scenario", AGGREGATOR_SCENARIOS, ids=_id)
def test_a_client_seen_offline_in_state(scenario: Scenario) -> None:
    """``party_offline`` in every aggregator state: while the session runs the client is
    dropped at once, not at the deadline; before the join deadline and after the end it
    changes nothing.  The session then ends as it does without that client."""
    net = reach(scenario)
    machine = net.aggregator
    alive = [client for client in machine.alive if client not in net.dead]
    victim = alive[-1] if alive else "client3"
    before = snapshot(machine)
    net.kill(victim)
    step = machine.party_offline(victim, net.now)
    if scenario.state in (A.IDLE, A.JOINING) or scenario.state in machine.TERMINAL:
        assert not step.sends and not step.events
        assert not changed(before, snapshot(machine))
        return
    assert "went offline" in machine.dropped[victim]
    assert [e.party for e in step.events if isinstance(e, PartyDropped)] == [victim]
    again = machine.party_offline(victim, net.now)  # a repeated report changes nothing
    assert not again.sends and not again.events
    net._apply(AGGREGATOR, step)
    net.run()
    survivors = [client for client in net.clients if client not in net.dead]
    if len(survivors) < net.manifest.threshold:
        assert net.aborted(AGGREGATOR) is not None
        return
    assert net.finished(AGGREGATOR), net.aborted(AGGREGATOR)
    assert_models_match_fedavg(net, survivors)
