"""Run one party of a federation as its own process, over an MQTT broker.

The composition layer: a manifest and an identity from files, the MQTT transport (signing
its transfer manifests with the party's key and checking peers' against the manifest's
directory), the protocol node, and for clients a :class:`~threshold_fl.ml.LocalLearner`
that trains the named model on this client's part of the digits.  Clients print one
row per round and can append JSON lines to a report file.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from protocols import AggregatorMachine, ClientState, Manifest, Mode, Role
from protocols.codec import decode_message
from protocols.events import Event, Outgoing, RoundCompleted, UpdateNeeded
from protocols.messages import DecryptRequest, PublicShare, Stage
from threshold_fl.app.client_plan import ClientPlan, check_drop_stage, client_learner
from threshold_fl.app.rounds import RoundRow
from threshold_fl.app.trace import TracingLink
from threshold_fl.errors import (
    AuthenticationError,
    MessageRejected,
    ParameterError,
    SessionAborted,
    ThresholdFLError,
    TransportClosed,
)
from threshold_fl.identity import Identity, PartyId
from threshold_fl.node import Aggregator, FederatedClient, KeyAuthority
from transports import Transport
from transports.broker import BrokerConfig
from transports.mqtt import MqttOptions, MqttStats, MqttTransport

__all__ = ["OfflineWatch", "mqtt_transport",
           "run_aggregator", "run_client", "run_key_authority"]

#: A client seen offline this long (its MQTT Last Will, no reconnect) is dropped at once.
PRESENCE_GRACE_S = 2.0
#: Messages the aggregator's node takes from its transport ahead of handling them.  The
#: transport's own inbox buffers more and then holds senders back; the Node default of
#: 256 on top let relayed key material pile up with N.
AGGREGATOR_INBOX = 8


class PresenceView(Protocol):
    """What :class:`OfflineWatch` needs of a transport (MqttTransport has it)."""

    @property
    def closed(self) -> bool: ...

    @property
    def connected_for_s(self) -> float: ...

    def online_peers(self) -> frozenset[str]: ...


class OfflineWatch:
    """Drops a client whose presence says offline for *grace_s* while our link is up.

    A blip (a reconnect, a broker restart) is forgiven. While our own link is down, or
    only just back, we cannot tell a dead client from a dead broker, so the judgement
    waits until the link has been up for *grace_s* (retained presence is replayed then).
    Before the judgement, an offline report heard while our link has been up that long
    is passed on at once to *unreachable* (the aggregator replaces a decryption set
    waiting for that client), and an online one to *reachable*.
    """

    def __init__(self, link: PresenceView, drop: Callable[[str], None],
                 grace_s: float = PRESENCE_GRACE_S, *,
                 unreachable: Callable[[str], None] | None = None,
                 reachable: Callable[[str], None] | None = None) -> None:
        self._link, self._drop, self._grace_s = link, drop, grace_s
        self._unreachable, self._reachable = unreachable, reachable
        self._loop = asyncio.get_running_loop()

    def offline(self, party: str) -> None:
        """The transport reports *party* offline: say so now if our link is settled, and
        check again after the grace time."""
        link = self._link
        if self._unreachable is not None and not link.closed and (
                party not in link.online_peers() and link.connected_for_s >= self._grace_s):
            self._unreachable(party)
        self._loop.call_later(self._grace_s, self._check, party)

    def online(self, party: str) -> None:
        """The transport reports *party* online (again)."""
        if self._reachable is not None:
            self._reachable(party)

    def _check(self, party: str) -> None:
        link = self._link
        if party in link.online_peers() or link.closed:
            return
        if link.connected_for_s < self._grace_s:
            self._loop.call_later(self._grace_s - link.connected_for_s, self._check, party)
            return
        self._drop(party)


def mqtt_transport(manifest: Manifest, identity: Identity, broker: BrokerConfig,
                   options: MqttOptions | None = None,
                   on_presence: Callable[[str, bool], None] | None = None) -> MqttTransport:
    """The party's MQTT link: transfers signed as *identity*, peers checked against the
    manifest (a party not in it cannot get a transfer accepted)."""
    directory = manifest.directory

    def verify(sender: str, data: bytes, signature: bytes) -> bool:
        party = directory.get(PartyId(sender))
        if party is None:
            return False
        try:
            party.verify(data, signature)
        except AuthenticationError:
            return False
        return True

    return MqttTransport(identity.party_id, manifest.session, broker, sign=identity.sign,
                         verify=verify, options=options, on_presence=on_presence)


def _check_role(manifest: Manifest, identity: Identity, role: Role) -> None:
    actual = manifest.role_of(identity.party_id)
    if actual is not role:  # the Role's value is also the command's name
        raise ParameterError(f"{identity.party_id!r} is the {actual.value} in this manifest, "
                             f"not a {role.value}; start it with 'threshold-fl {actual.value}'")


class _RoundMeter:
    """Per-round deltas of a party's clock, bytes and compute time, turned into rows that
    are printed and, with a report file, appended as JSON lines."""

    def __init__(self, party: str, link: MqttTransport, say: Callable[[str], None],
                 report: Path | None) -> None:
        self.party, self.link, self.say, self.report = party, link, say, report
        self.last_time, self.last_sent, self.last_received = time.perf_counter(), 0, 0
        self.last_compute: dict[str, float] = {}

    def spent(self, compute_s: dict[str, float], work: str) -> float:
        """Seconds of *work* since the previous row."""
        return compute_s.get(work, 0.0) - self.last_compute.get(work, 0.0)

    def row(self, round_: int, compute_s: dict[str, float], stage_s: dict[str, float],
            **scores: Any) -> RoundRow:
        now, stats = time.perf_counter(), self.link.stats
        row = RoundRow(self.party, round_, now - self.last_time,
                       stats.bytes_sent - self.last_sent,
                       stats.bytes_received - self.last_received, stage_s, **scores)
        self.last_time, self.last_sent = now, stats.bytes_sent
        self.last_received, self.last_compute = stats.bytes_received, dict(compute_s)
        self.say(row.line())
        if self.report is not None:
            with self.report.open("a", encoding="utf-8") as file:
                file.write(row.as_json() + "\n")
        return row


class _DecryptionMeter:
    """The aggregator's joint decryption per round, from the messages it sends: seconds
    from handing the first DecryptRequest to the transport to handing over the Fused
    broadcast, how many decryption sets (attempts) were asked in between, and the
    seconds from asking the last of them (what a replaced set cost apart from waiting
    to hear that a member was gone)."""

    def __init__(self, attempt: Callable[[], int]) -> None:
        self.attempt = attempt  # the machine's current attempt number
        self.started: float | None = None
        self.last_set: float | None = None
        self.seconds: float | None = None
        self.last_set_s: float | None = None
        self.attempts: set[int] = set()

    def sent(self, outgoing: Outgoing) -> None:
        now = time.perf_counter()
        if outgoing.kind == "DecryptRequest":
            if self.started is None or self.seconds is not None:  # a new decryption
                self.started, self.seconds, self.attempts = now, None, set()
            attempt = self.attempt()
            if attempt not in self.attempts:  # one request per member: the set's first
                self.attempts.add(attempt)
                self.last_set = now
        elif outgoing.kind == "Fused" and self.started is not None and self.seconds is None:
            assert self.last_set is not None
            self.seconds, self.last_set_s = now - self.started, now - self.last_set

    def take(self) -> dict[str, Any]:
        """The row's fields for the decryption that just ended (none if there was none)."""
        figures: dict[str, Any] = {}
        if self.seconds is not None:
            figures = {"decryption_s": self.seconds, "attempts": len(self.attempts),
                       "last_set_s": self.last_set_s}
        self.started, self.last_set, self.seconds, self.attempts = None, None, None, set()
        self.last_set_s = None
        return figures


async def run_aggregator(manifest: Manifest, identity: Identity, broker: BrokerConfig,
                         *, options: MqttOptions | None = None, report: Path | None = None,
                         trace: Path | None = None,
                         observe: Callable[[Event | Outgoing], None] | None = None,
                         say: Callable[[str], None] = print) -> dict[str, Any]:
    """Serve the session to its end; *trace*: write every message it moves there
    (:mod:`threshold_fl.app.trace`); *observe* sees every event and every message as it
    goes to the transport (benchmarks time the stages with it)."""
    _check_role(manifest, identity, Role.AGGREGATOR)
    started = time.perf_counter()
    watch: OfflineWatch | None = None
    early: list[str] = []  # offline before the watch exists (retained presence at connect)
    traced: TracingLink | None = None

    def on_presence(party: str, online: bool) -> None:
        if party not in manifest.client_ids:
            return
        if traced is not None:
            traced.presence(party, online)
        if watch is not None and online:
            watch.online(party)
        elif not online:
            if watch is None:
                early.append(party)
            else:
                watch.offline(party)

    async with mqtt_transport(manifest, identity, broker, options, on_presence) as link:
        meter = _RoundMeter(str(identity.party_id), link, say, report)

        def attempt() -> int:
            assert isinstance(aggregator.machine, AggregatorMachine)
            return aggregator.machine.step[3]

        decryption = _DecryptionMeter(attempt)

        def on_send(outgoing: Outgoing) -> None:
            decryption.sent(outgoing)
            if observe is not None:
                observe(outgoing)

        def on_event(event: Event) -> None:
            if observe is not None:
                observe(event)
            if isinstance(event, RoundCompleted):
                compute_s = aggregator.summary.compute_s
                meter.row(event.round, compute_s,
                          {"aggregate": meter.spent(compute_s, "receive")},
                          contributors=len(event.contributors), **decryption.take())

        say(_connected(manifest, identity, broker))
        traced = None if trace is None else TracingLink(link, trace)
        aggregator = Aggregator(manifest, identity, link if traced is None else traced,
                                on_event=on_event, on_send=on_send, progress=say,
                                inbox_size=AGGREGATOR_INBOX)

        def drop(party: str) -> None:
            say(f"aggregator: {party} went offline")
            aggregator.party_offline(party)

        watch = OfflineWatch(link, drop, unreachable=aggregator.party_unreachable,
                             reachable=aggregator.party_reachable)
        for party in early:
            watch.offline(party)
        try:
            summary = await aggregator.run()
        finally:
            if traced is not None:
                traced.finish()
        stats = link.stats
    say(f"aggregator: finished {summary.rounds} round(s); dropped: "
        f"{summary.dropped or 'none'}; {stats.bytes_sent / 1e6:.1f} MB sent, "
        f"{stats.bytes_received / 1e6:.1f} MB received; {_resent(stats)}")
    return {"rounds": summary.rounds, "dropped": summary.dropped,
            "bytes_sent": stats.bytes_sent, "bytes_received": stats.bytes_received,
            "seconds": time.perf_counter() - started}


async def run_key_authority(manifest: Manifest, identity: Identity, broker: BrokerConfig,
                            *, options: MqttOptions | None = None,
                            say: Callable[[str], None] = print) -> None:
    _check_role(manifest, identity, Role.KEY_AUTHORITY)
    async with mqtt_transport(manifest, identity, broker, options) as link:
        say(_connected(manifest, identity, broker))
        await KeyAuthority(manifest, identity, link, progress=say).run()


def _die() -> None:
    """Vanish like a crashed machine: no goodbye, no Last-Will courtesy from us."""
    os.kill(os.getpid(), signal.SIGKILL)


class _ClientRun:
    """The scripted vanishing of one client (``--drop-at``) and its training time."""

    def __init__(self, plan: ClientPlan, link: MqttTransport,
                 on_trained: Callable[[int, Any], None] | None = None) -> None:
        self.plan, self.link, self.on_trained = plan, link, on_trained
        self.loop = asyncio.get_running_loop()
        self.train_s = 0.0
        self.vanished = False

    def die(self) -> None:
        """Vanish as the plan says: the process, or only this client's connection."""
        self.vanished = True
        if self.plan.vanish == "process":
            _die()
        self.link.sever()

    def on_event(self, event: Event) -> None:
        stage = self.plan.drop_at
        if isinstance(event, UpdateNeeded) and event.round == self.plan.drop_round and (
                stage == "before-upload"):
            self.die()

    def before_sensitivity(self) -> None:
        if self.plan.drop_at == "mask":
            self.loop.call_soon_threadsafe(self.die)

    def trained(self, round_: int, seconds: float, model: Any) -> None:
        """Called from the training thread just before the update is handed back."""
        self.train_s = seconds
        if self.on_trained is not None:
            self.on_trained(round_, model)
        if self.plan.drop_at == "after-upload" and round_ == self.plan.drop_round:
            acked = self.link.stats.transfers_acked  # the upload is the next transfer acked
            self.loop.call_soon_threadsafe(
                lambda: self.loop.create_task(self._die_once_acked(acked)))

    async def _die_once_acked(self, acked_before: int) -> None:
        while self.link.stats.transfers_acked <= acked_before:
            await asyncio.sleep(0.05)
        self.die()

    def trigger(self) -> Callable[[Any], bool] | None:
        """Which received message makes this client vanish (before it acts on it): the
        first relayed PublicShare (``keys``: the lead's, which every other client waits
        for, so that all such dropouts happen at once, early in key agreement) or round
        *drop_round*'s DecryptRequest (``decrypt``)."""
        stage, round_ = self.plan.drop_at, self.plan.drop_round
        if stage == "keys":
            return lambda message: isinstance(message.body, PublicShare)
        if stage in ("decrypt", "decrypt-frozen"):
            return lambda message: (isinstance(message.body, DecryptRequest) and (
                message.header.stage is Stage.ROUND and message.header.round == round_))
        return None


class _DyingLink:
    """A client's link that makes the client vanish (*die*) or, *frozen*, stops the
    process when a received message fits *trigger*, before the client acts on it: the
    aggregator hears of it only through the broker's Last Will."""

    def __init__(self, link: Transport, manifest: Manifest, trigger: Callable[[Any], bool],
                 die: Callable[[], None], *, frozen: bool = False) -> None:
        self._link, self._directory, self._trigger = link, manifest.directory, trigger
        self._die, self._frozen = die, frozen

    @property
    def party_id(self) -> str:
        return self._link.party_id

    async def send(self, recipients: Sequence[str], data: bytes) -> None:
        await self._link.send(recipients, data)

    async def receive(self) -> bytes:
        data = await self._link.receive()
        try:
            message = decode_message(data, self._directory)
        except MessageRejected:
            return data  # the node refuses it as usual
        if self._trigger(message):
            if self._frozen:
                os.kill(os.getpid(), signal.SIGSTOP)  # hangs like a frozen machine
            else:
                self._die()
                raise TransportClosed(f"{self.party_id}: vanished (scripted drop)")
        return data

    async def close(self) -> None:
        await self._link.close()


def _save_model(directory: Path, round_: int, model: Any) -> None:
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / f"global-round-{round_}.npy", np.asarray(model, dtype=np.float64))


async def run_client(manifest: Manifest, identity: Identity, broker: BrokerConfig,
                     plan: ClientPlan, *, options: MqttOptions | None = None,
                     report: Path | None = None, save_models: Path | None = None,
                     on_trained: Callable[[int, Any], None] | None = None,
                     say: Callable[[str], None] = print) -> list[RoundRow]:
    """Train and take part until the session ends; one row per round.  With
    *save_models*, each round's decrypted global model is saved there as a flat
    float64 vector (``global-round-N.npy``; :func:`threshold_fl.ml.restore_state`
    turns it back into a state dict); *on_trained(round, model)* sees each locally
    trained model (from the training thread).  A client that vanished as its plan says
    (``vanish="connection"``) returns the rows it has."""
    _check_role(manifest, identity, Role.CLIENT)
    check_drop_stage(plan.drop_at, manifest.mask.fraction)
    learner, test = client_learner(manifest, identity.party_id, plan)
    if plan.drop_at in ("keys", "mask"):
        say(f"{identity.party_id}: will vanish during the {plan.drop_at} stage (--drop)")
    rows: list[RoundRow] = []
    from threshold_fl.app.federation import learner_client

    watch = AggregatorWatch(manifest, broker)
    async with mqtt_transport(manifest, identity, broker, options, watch.presence) as link:
        say(_connected(manifest, identity, broker))
        run = _ClientRun(plan, link, on_trained)
        meter = _RoundMeter(str(identity.party_id), link, say, report)
        transport: Transport = link
        trigger = run.trigger()
        if trigger is not None:
            transport = _DyingLink(link, manifest, trigger, run.die,
                                   frozen=plan.drop_at == "decrypt-frozen")
        client = learner_client(manifest, identity, transport, learner, on_event=run.on_event,
                                after_training=run.trained,
                                before_sensitivity=run.before_sensitivity, progress=say)
        try:
            async with client:
                watch.start(client, say)
                async for result in client.rounds():
                    if save_models is not None:
                        _save_model(save_models, result.round, result.model)
                    scores = learner.evaluate(result.model, test)
                    compute_s = client.summary.compute_s
                    stage_s = {"train": run.train_s,
                               "encrypt": meter.spent(compute_s, "update"),
                               "decrypt": meter.spent(compute_s, "receive")}
                    rows.append(meter.row(result.round, compute_s, stage_s,
                                          accuracy=scores.accuracy, loss=scores.loss,
                                          encrypted_fraction=client.encrypted_fraction))
        except SessionAborted:
            if not run.vanished:
                raise
            say(f"{identity.party_id}: vanished as planned ({plan.drop_at})")
        say(f"{identity.party_id}: {_resent(link.stats)}")
    return rows


def _resent(stats: MqttStats) -> str:
    """Frames sent again (an ack not back within the ack timeout), their bytes, and the
    adaptive ack timeout each recipient ended with."""
    timeouts = ", ".join(f"{party} {seconds:.1f} s" for party, seconds in stats.ack_timeouts)
    return (f"{stats.retransmits} of {stats.frames_sent} frames sent again "
            f"({stats.frame_bytes_sent / 1e6:.1f} MB of frames in all); "
            f"ack timeouts now: {timeouts or 'none measured'}")


def _connected(manifest: Manifest, identity: Identity, broker: BrokerConfig) -> str:
    return (f"{identity.party_id}: connected to {broker.url} for session "
            f"{manifest.session!r} (manifest fingerprint {manifest.fingerprint()[:16]})")


class AggregatorWatch:
    """Notices a client whose aggregator is not on the broker, and says why it waits.

    The aggregator's presence is retained by the broker, so a client hears at once
    whether an aggregator of its session is (or was) there.  If none is online by the
    manifest's join deadline and the client is still waiting to be let in, it leaves with
    the likely cause: most often a manifest that differs from the organiser's (every run
    of 'threshold-fl manifest' draws a new session id, and topics are per session).
    """

    #: Say what we wait for this soon if the aggregator is not there.
    HINT_AFTER_S = 3.0

    def __init__(self, manifest: Manifest, broker: BrokerConfig) -> None:
        self.manifest, self.broker = manifest, broker
        self.aggregator = manifest.aggregator.party_id
        self.online: bool | None = None  # None: no presence of the aggregator heard

    def presence(self, party: str, online: bool) -> None:
        """The transport's on_presence callback."""
        if party == self.aggregator:
            self.online = online

    def absence(self) -> str:
        """Why the aggregator is not here, as far as the broker tells."""
        where = (f"session {self.manifest.session!r} on {self.broker.url} (manifest "
                 f"fingerprint {self.manifest.fingerprint()[:16]})")
        if self.online is None:
            return (f"no aggregator {self.aggregator!r} has been present for {where}: it is "
                    "not started yet, or this client's manifest differs from the organiser's "
                    "(every 'threshold-fl manifest' run draws a new session); compare the "
                    "fingerprint with the organiser's")
        return (f"the aggregator {self.aggregator!r} of {where} is offline: it ended or "
                "crashed; ask the organiser whether the session is still on")

    def start(self, client: FederatedClient, say: Callable[[str], None]) -> None:
        """Watch *client*: a hint soon, and leaving at the join deadline."""
        loop = asyncio.get_running_loop()
        join_s = self.manifest.timeouts.join_s
        me = client.machine.me

        def waiting() -> bool:
            return self.online is not True and client.machine.state is ClientState.JOINING

        def hint() -> None:
            if waiting():
                say(f"{me}: {self.absence()}; waiting up to {join_s:g} s")

        def give_up() -> None:
            if waiting():
                client.leave(f"gave up after {join_s:g} s: {self.absence()}")

        loop.call_later(min(self.HINT_AFTER_S, join_s), hint)
        loop.call_later(join_s, give_up)


def mode_label(manifest: Manifest) -> str:
    return "plaintext" if manifest.mode is Mode.PLAINTEXT else manifest.mode.value


def load_party(manifest_path: Path, identity_dir: Path,
               fingerprint: str | None) -> tuple[Manifest, Identity]:
    """The manifest and this party's identity, with the fingerprint checked if given."""
    manifest = Manifest.load(manifest_path)
    if fingerprint is not None and manifest.fingerprint() != fingerprint.lower():
        raise ThresholdFLError(
            f"{manifest_path} has fingerprint {manifest.fingerprint()}, not the expected "
            f"{fingerprint}; get the manifest again from the federation's organiser")
    return manifest, Identity.load(identity_dir)
