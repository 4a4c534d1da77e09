"""The composition layer: protocol state machines bound to a transport, for asyncio apps.

Each party runs as one :class:`Node`: a reader task moves bytes from the transport
into a bounded inbox, the main loop feeds them (and the application's answers) to
the state machine one at a time and turns its deadline into a timer, and the
application's work (training, sensitivity maps) runs as separate tasks so that the
node keeps answering while it trains.  All tasks belong to the node's session and
are cancelled together when it ends.

Embedding a client takes a few lines::

    async with FederatedClient(manifest, identity, transport, samples=len(data),
                               train=train, sensitivity=sensitivity) as client:
        async for result in client.rounds():
            print(result.round, result.model[:4])
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, TypeVar, Union

from protocols import (
    Aborted,
    AggregatorMachine,
    ClientMachine,
    Event,
    Finished,
    KeyAuthorityMachine,
    Manifest,
    MaskAgreed,
    Mode,
    Outgoing,
    PartyDropped,
    PartyRefused,
    RoundCompleted,
    SensitivityNeeded,
    Step,
    UpdateNeeded,
)
from protocols.protection import DEFAULT_PART_BYTES, require_part_room
from threshold_fl.arrays import FloatArray
from threshold_fl.errors import (
    ForgedMessage,
    MalformedMessage,
    MessageRejected,
    ParameterError,
    SessionAborted,
    ThresholdFLError,
    TransportError,
)
from threshold_fl.heap import release_freed_heap
from threshold_fl.identity import Identity, PartyId
from threshold_fl.ml.mask import EncryptionMask
from threshold_fl.progress import WaitReporter
from transports import Transport
from transports.lograte import RateLimitedLog

__all__ = [
    "Aggregator",
    "FederatedClient",
    "KeyAuthority",
    "Node",
    "RoundResult",
    "SessionSummary",
]

log = logging.getLogger("threshold_fl.node")
_N = TypeVar("_N", bound="Node")
_TRIM_AFTER_BYTES = 64 << 20  # a step sending this much (upload, shares) then trims the heap

MaybeAwaitable = Union[FloatArray, Awaitable[FloatArray]]  # noqa: UP007
TrainFn = Callable[[int, Union[FloatArray, None]], MaybeAwaitable]  # noqa: UP007
SensitivityFn = Callable[[], MaybeAwaitable]
Machine = Union[AggregatorMachine, ClientMachine, KeyAuthorityMachine]  # noqa: UP007


# -- the node's inbox: everything the main loop handles, one type per kind ---------------
# ``WORK`` names the entry of SessionSummary.compute_s that the handling time is added to.
@dataclass(frozen=True)
class Received:
    """Bytes the transport delivered, for the state machine."""

    WORK: ClassVar[str] = "receive"
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Closed:
    """The transport closed (or the broker stayed unreachable): the session ends."""

    reason: str


@dataclass(frozen=True)
class Failed:
    """The application's callback raised: the session ends."""

    error: Exception


@dataclass(frozen=True)
class Leave:
    """The application asked the client to leave (``FederatedClient.leave``)."""

    WORK: ClassVar[str] = "leave"
    reason: str


@dataclass(frozen=True)
class Offline:
    """The transport saw a party go offline (``Aggregator.party_offline``)."""

    WORK: ClassVar[str] = "offline"
    party: PartyId


@dataclass(frozen=True)
class Presence:
    """The transport saw a party's connection end (its Last Will: not yet judged gone)
    or come back (``Aggregator.party_unreachable`` / ``party_reachable``)."""

    WORK: ClassVar[str] = "offline"
    party: PartyId
    online: bool


@dataclass(frozen=True, eq=False)  # arrays have no plain equality
class WorkDone:
    """The application's answer to a request of the client machine, as it returned it:
    ``submit_*`` checks it and converts it to float64."""

    WORK: ClassVar[str]
    result: FloatArray = field(repr=False)


@dataclass(frozen=True, eq=False)
class SensitivityReady(WorkDone):
    """The local sensitivity map, answering SensitivityNeeded."""

    WORK: ClassVar[str] = "sensitivity"


@dataclass(frozen=True, eq=False)
class UpdateReady(WorkDone):
    """The locally trained model, answering UpdateNeeded."""

    WORK: ClassVar[str] = "update"


#: What ``_submit`` hands to the machine; each role takes its own kinds, passes the rest on.
Submitted = Union[Leave, Offline, Presence, SensitivityReady, UpdateReady]  # noqa: UP007
InboxItem = Union[Received, Closed, Failed, Submitted]  # noqa: UP007


@dataclass(frozen=True)
class RoundResult:
    """One completed FedAvg round as a client sees it."""

    round: int
    model: FloatArray = field(repr=False)


@dataclass
class SessionSummary:
    """How a node's session ended."""

    party: str
    finished: bool = False
    aborted: str | None = None
    #: What ``run``/``wait`` raise for the abort (ManifestMismatch: a peer's manifest differs).
    abort_error: type[SessionAborted] = SessionAborted
    rounds: int = 0
    dropped: dict[str, str] = field(default_factory=dict)
    rejected: int = 0  # messages discarded (duplicates, late, forged...)
    #: Seconds the state machine spent on each kind of work: "receive" (checking and
    #: handling peers' messages: aggregation and blind fusion at the aggregator, decryption
    #: shares and decoding at clients), "update" and "sensitivity" (encrypting the client's
    #: own).
    compute_s: dict[str, float] = field(default_factory=dict)
    bytes_sent: int = 0
    events: list[Event] = field(default_factory=list, repr=False)


class Node:
    """A state machine driven over a transport; see the module docstring."""

    def __init__(
        self,
        machine: Machine,
        transport: Transport,
        *,
        clock: Callable[[], float] = time.monotonic,
        inbox_size: int = 256,
        on_event: Callable[[Event], None] | None = None,
        on_send: Callable[[Outgoing], None] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if transport.party_id != machine.me:
            raise ValueError(
                f"the transport is connected as {transport.party_id!r}, the machine is "
                f"{machine.me!r}"
            )
        self.machine = machine
        self._transport = transport
        self._clock = clock
        self._inbox: asyncio.Queue[InboxItem] = asyncio.Queue(maxsize=inbox_size)
        self._on_event = on_event
        self._on_send = on_send  # sees each message just before it goes to the transport
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[SessionSummary] | None = None
        self.summary = SessionSummary(machine.me)
        self._say = progress
        self._waits = None if progress is None else WaitReporter(
            lambda line: progress(f"{machine.me}: {line}"))
        # Refusals are logged per sender and kind, rate-limited: anyone who can reach our
        # inbox could otherwise grow the log at will.
        self._refusals = RateLimitedLog(log)  # malformed or forged: warnings
        self._notices = RateLimitedLog(log, level=logging.INFO)  # late, duplicate: normal
        self._last_refusal: dict[str, str] = {}  # sender -> why its latest message failed

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self: _N) -> _N:
        self._runner = asyncio.create_task(self.run(), name=f"node {self.machine.me}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._runner is not None and not self._runner.done():
            if exc_type is None:
                with contextlib.suppress(SessionAborted):
                    await self._runner
            else:
                self._runner.cancel()
                with contextlib.suppress(asyncio.CancelledError, SessionAborted):
                    await self._runner

    async def wait(self) -> SessionSummary:
        """Wait for the session to end; raises SessionAborted if it aborted."""
        if self._runner is None:
            return await self.run()
        return await self._runner

    async def run(self) -> SessionSummary:
        """Run the session to its end (the task group: reader, app work, main loop)."""
        self._spawn(self._read(), "reader")
        try:
            await self._feed(self._start(self._clock()))
            self._report_wait()
            await self._main_loop()
        finally:
            await self._cancel_all()
            for refusals in (self._refusals, self._notices):  # counts not yet said
                refusals.flush(self._clock(), final=True)
        if self.summary.aborted is not None:
            raise self.summary.abort_error(f"{self.machine.me}: {self.summary.aborted}")
        return self.summary

    def _start(self, now: float) -> Step:
        return self.machine.start(now)

    async def _main_loop(self) -> None:
        while not self._terminal():
            item = await self._next_item()
            if item is None:
                await self._feed(self.machine.on_deadline(self._clock()))
                self._report_wait()
                continue
            if isinstance(item, Closed):
                self.summary.aborted = f"the transport closed: {item.reason}"
                return
            if isinstance(item, Failed):
                await self._feed(self._failed(item.error))
                return
            await self._handle(item)
            if self._terminal():
                return
            self._report_wait()

    def _terminal(self) -> bool:
        return self.machine.state in self.machine.TERMINAL

    def _report_wait(self) -> None:
        now = self._clock()
        self._refusals.flush(now)
        self._notices.flush(now)
        if self._waits is not None:
            self._waits.update(self.machine.waiting_for(), now)

    async def _next_item(self) -> InboxItem | None:
        times = [self.machine.next_deadline(), None if self._waits is None else self._waits.due()]
        deadline = min((t for t in times if t is not None), default=None)
        timeout = None if deadline is None else max(0.0, deadline - self._clock())
        try:
            return await asyncio.wait_for(self._inbox.get(), timeout)
        except asyncio.TimeoutError:
            return None

    async def _handle(self, item: Received | Submitted) -> None:
        now = self._clock()
        try:
            if isinstance(item, Received):
                try:
                    step = await asyncio.to_thread(self.machine.receive, item.data, now)
                except MessageRejected as exc:
                    self._refused(exc, now)
                    return
            else:
                step = await self._submit(item, now)
        finally:
            spent = self._clock() - now
            work = item.WORK
            self.summary.compute_s[work] = self.summary.compute_s.get(work, 0.0) + spent
        await self._feed(step)

    def _refused(self, exc: MessageRejected, now: float) -> None:
        """Count and log a refused message.  Malformed or forged ones are warnings: from
        an authenticated peer they mean it runs with other parameters or software."""
        self.summary.rejected += 1
        sender = exc.sender or "an unauthenticated sender"
        serious = isinstance(exc, MalformedMessage | ForgedMessage)
        message = f"{self.machine.me} discarded a message from {sender!r}: {exc}"
        if serious and exc.sender is not None:
            self._last_refusal[exc.sender] = str(exc)
            message += (f" (if all of {exc.sender!r}'s messages fail like this, its manifest "
                        f"differs from this party's, fingerprint "
                        f"{self.machine.manifest.fingerprint()[:16]}: every party must use "
                        "the organiser's manifest)")
        (self._refusals if serious else self._notices).log(
            sender, type(exc).__name__, message, now)

    async def _submit(self, item: Submitted, now: float) -> Step:
        """Roles override this for the kinds they take, and pass the rest on."""
        raise ValueError(f"{type(self).__name__} takes no inbox item {item!r}")

    def _failed(self, error: BaseException) -> Step:
        raise error

    async def _feed(self, step: Step) -> None:
        """Send what the machine produced, then hand its events to the application."""
        before = self.summary.bytes_sent
        for outgoing in step.outgoing():  # each let go once sent, made late: uploads are large
            self.summary.bytes_sent += len(outgoing.data) * len(outgoing.recipients)
            if self._on_send is not None:
                self._on_send(outgoing)
            try:
                await self._transport.send(outgoing.recipients, outgoing.data)
            except TransportError as exc:
                log.warning("%s could not send %s: %s", self.machine.me, outgoing.kind, exc)
        if self.summary.bytes_sent - before >= _TRIM_AFTER_BYTES:  # their buffers are freed
            release_freed_heap()
        for event in step.events:
            self._record(event)
            await self._on_machine_event(event)

    def _record(self, event: Event) -> None:
        self.summary.events.append(event)
        if isinstance(event, Aborted):
            self.summary.aborted, self.summary.abort_error = event.reason, event.error
        elif isinstance(event, PartyRefused):
            self._last_refusal[event.party] = event.reason  # named if it is dropped later
            if self._say is not None:
                self._say(f"{self.machine.me}: refused {event.party!r}: {event.reason}")
        elif isinstance(event, Finished):
            self.summary.finished = True
        elif isinstance(event, RoundCompleted):
            self.summary.rounds = event.round
        if isinstance(event, MaskAgreed | RoundCompleted):  # a stage's garbage is freed
            release_freed_heap()
        elif isinstance(event, PartyDropped):
            reason = event.reason
            if event.party in self._last_refusal:  # the real cause, not just the deadline
                reason += f"; its last message was refused: {self._last_refusal[event.party]}"
            self.summary.dropped[event.party] = reason
            if self._say is not None:
                self._say(f"{self.machine.me}: dropped {event.party!r}: {reason}")
        if self._on_event is not None:
            self._on_event(event)

    async def _on_machine_event(self, event: Event) -> None:
        """Subclasses start application work here."""

    # -- tasks ---------------------------------------------------------------------------
    async def _read(self) -> None:
        while True:
            try:
                data = await self._transport.receive()
            except TransportError as exc:  # closed, or the broker stayed unreachable
                await self._inbox.put(Closed(str(exc)))
                return
            await self._inbox.put(Received(data))  # bounded: waits when the node is busy

    def _spawn(self, coroutine: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coroutine)
        task.set_name(f"{self.machine.me} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class FederatedClient(Node):
    """A federated-learning client: give it a training and a sensitivity callback.

    ``train(round, global_model_or_None)`` returns the locally trained flat model;
    ``sensitivity()`` returns the local sensitivity map (one value per parameter).  It
    is needed only for selective encryption (mask fraction below 1); when the manifest
    encrypts everything there is no mask agreement, and it may be left out.
    Either may be a coroutine function; plain functions run in a worker thread.
    """

    def __init__(
        self,
        manifest: Manifest,
        identity: Identity,
        transport: Transport,
        *,
        samples: int,
        train: TrainFn,
        sensitivity: SensitivityFn | None = None,
        randomness: Callable[[int], bytes] = os.urandom,
        part_bytes: int = DEFAULT_PART_BYTES,
        **options: Any,
    ) -> None:
        if sensitivity is None and not manifest.mask.everything:
            raise ParameterError(
                f"the manifest encrypts the top {manifest.mask.fraction:g} of the "
                "coordinates, chosen from the clients' sensitivity maps: pass "
                "sensitivity= (a function returning this client's map), or use a "
                "manifest that encrypts everything (mask fraction 1)")
        machine = ClientMachine(manifest, identity, randomness, samples=samples,
                                part_bytes=part_bytes)
        require_part_room(manifest.mode, machine.context, part_bytes)  # now, not mid-session
        super().__init__(machine, transport, **options)
        self._client = machine
        self._train = train
        self._sensitivity = sensitivity
        self._results: asyncio.Queue[RoundResult | None] = asyncio.Queue()

    @property
    def mask(self) -> EncryptionMask | None:
        """The encryption mask: all ones from the start when the manifest encrypts
        everything (fraction 1), else the agreed mask, None before mask agreement.
        Training callbacks use it, e.g. to add local-DP noise to the plaintext part."""
        return self._client.mask

    @property
    def encrypted_fraction(self) -> float:
        """Share of the coordinates this client sends encrypted: 0 before mask agreement
        (at fraction 1 there is none: 1 from the start) and in plaintext mode (which
        agrees on a mask but encrypts nothing)."""
        mask = self._client.mask
        if mask is None or self._client.manifest.mode is Mode.PLAINTEXT:
            return 0.0
        return mask.fraction

    def leave(self, reason: str) -> None:
        """Leave the session now, telling the aggregator *reason*; the session then ends
        as aborted.  Call it from the event loop while the client runs."""
        self._spawn(self._inbox.put(Leave(reason)), "leave")

    async def rounds(self) -> AsyncIterator[RoundResult]:
        """Each round's global model as it completes; ends when the session ends."""
        if self._runner is None:
            raise RuntimeError("use 'async with FederatedClient(...)' before iterating rounds")
        while True:
            result = await self._results.get()
            if result is None:
                await self._runner  # raises SessionAborted if it aborted
                return
            yield result

    async def run(self) -> SessionSummary:
        try:
            return await super().run()
        finally:
            self._results.put_nowait(None)

    async def _on_machine_event(self, event: Event) -> None:
        if isinstance(event, SensitivityNeeded):
            # Checked at creation: the machine asks only when the mask is selective.
            assert self._sensitivity is not None, "sensitivity asked at mask fraction 1"
            self._spawn(self._work(SensitivityReady, self._sensitivity), "sensitivity")
        elif isinstance(event, UpdateNeeded):
            self._spawn(self._work(UpdateReady, self._train, event.round, event.model),
                        "training")
        elif isinstance(event, RoundCompleted) and event.model is not None:
            self._results.put_nowait(RoundResult(event.round, event.model))

    async def _work(self, done: type[SensitivityReady] | type[UpdateReady],
                    function: Callable[..., MaybeAwaitable], *args: Any) -> None:
        try:
            if inspect.iscoroutinefunction(function):
                result = await function(*args)
            else:
                result = await asyncio.to_thread(function, *args)
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:  # the application's failure ends this client's session
            await self._inbox.put(Failed(exc))
            return
        # As returned: the machine checks and converts it (the one conversion on the way in).
        await self._inbox.put(done(result))

    def _failed(self, error: BaseException) -> Step:
        """The application's callback raised: leave the session, saying why."""
        log.error("%s: the application failed: %r", self.machine.me, error)
        return self._client.abort(f"the application failed: {error!r}", self._clock())

    async def _submit(self, item: Submitted, now: float) -> Step:
        if isinstance(item, SensitivityReady | UpdateReady):
            submit = (self._client.submit_sensitivity if isinstance(item, SensitivityReady)
                      else self._client.submit_update)
            try:
                return await asyncio.to_thread(submit, item.result, now)
            except ThresholdFLError as exc:  # e.g. values outside the bound: tell the others
                log.error("%s: the application's %s was refused: %s", self.machine.me,
                          item.WORK, exc)
                return self._client.abort(f"its {item.WORK} was refused: {exc}", now)
        if isinstance(item, Leave):
            return self._client.abort(item.reason, now)
        return await super()._submit(item, now)


class Aggregator(Node):
    """The aggregation server.  ``weights`` override the sample-count FedAvg weights; a
    joint decryption larger than ``part_bytes`` streams in parts of at most that."""

    def __init__(
        self,
        manifest: Manifest,
        identity: Identity,
        transport: Transport,
        *,
        weights: Mapping[str, float] | None = None,
        randomness: Callable[[int], bytes] = os.urandom,
        part_bytes: int = DEFAULT_PART_BYTES,
        **options: Any,
    ) -> None:
        machine = AggregatorMachine(manifest, identity, randomness, weights=weights,
                                    part_bytes=part_bytes)
        super().__init__(machine, transport, **options)
        self._aggregator = machine

    def party_offline(self, party: str) -> None:
        """Tell the aggregator that the transport saw *party* go offline (e.g. its MQTT
        Last Will), so that it is dropped now rather than at the stage deadline.  Call it
        from the event loop while the node runs."""
        self._spawn(self._inbox.put(Offline(PartyId(party))), f"offline {party}")

    def party_unreachable(self, party: str) -> None:
        """Tell the aggregator that *party*'s connection ended (e.g. its MQTT Last Will)
        before it is judged gone: a decryption set waiting for its share is replaced at
        once.  Call it from the event loop while the node runs."""
        self._spawn(self._inbox.put(Presence(PartyId(party), False)), f"unreachable {party}")

    def party_reachable(self, party: str) -> None:
        """*party*'s connection is back (its presence says online again)."""
        self._spawn(self._inbox.put(Presence(PartyId(party), True)), f"reachable {party}")

    async def _submit(self, item: Submitted, now: float) -> Step:
        if isinstance(item, Offline):
            return self._aggregator.party_offline(item.party, now)
        if isinstance(item, Presence) and item.online:
            return self._aggregator.party_reachable(item.party, now)
        if isinstance(item, Presence):
            return self._aggregator.party_unreachable(item.party, now)
        return await super()._submit(item, now)


class KeyAuthority(Node):
    """Single-key mode's key authority (for comparison runs)."""

    def __init__(
        self,
        manifest: Manifest,
        identity: Identity,
        transport: Transport,
        *,
        randomness: Callable[[int], bytes] = os.urandom,
        **options: Any,
    ) -> None:
        machine = KeyAuthorityMachine(manifest, identity, randomness)
        super().__init__(machine, transport, **options)
