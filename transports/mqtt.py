"""The MQTT transport: :class:`MqttTransport` implements :class:`~transports.base.Transport`.

Topics, all under ``tfl/<session>/``:

- ``to/<party>``: a party's inbox, the only data topic it subscribes to (QoS 1);
- ``ack/<party>``: acknowledgements coming back to a sender (QoS 0: a lost ack only
  costs a retransmission, which the receiver recognises and acks again);
- ``presence/<party>``: retained JSON ``{"party", "online", "ts"}``; the Last Will
  publishes ``online: false`` retained, so a crashed party is seen offline once the
  broker notices (at once on a closed socket, else after 1.5 keepalives).

Every message travels as a signed chunked transfer (:mod:`transports.frames`) whose
frames carry all metadata, so plain MQTT 3.1.1 suffices.  Each frame is acked by the
receiver: aiomqtt ignores PUBACK reason codes and a broker may silently drop a message
(mosquitto does for oversized ones on 3.1.1), so only an end-to-end ack proves arrival.
The sender keeps at most ``window`` frames per recipient unacked, retransmits after
an adaptive timeout (at least ``ack_timeout_s``, raised per recipient from measured
round trips, times ``backoff`` per try) and gives up on a transfer after
``max_tries`` (logged and counted: delivery stays best effort, as :mod:`transports.base`
promises); that bookkeeping is the sans-I/O :class:`~transports.window.SendWindow`.
A receiver whose inbox is full holds a complete message unacked and answers *busy*
(:mod:`transports.inbox`): its sender waits without counting tries, however long.

A lost broker connection is retried with capped exponential backoff (one warning per
outage); subscriptions are renewed and unacked frames resent.  If the broker stays away
for ``give_up_after`` seconds the transport fails: ``connect``, ``send`` and ``receive``
raise :class:`TransportError` (not logged as well: the caller reports it, once).

Whoever may publish to the broker can send garbage or forgeries: every refusal is
counted, but logged at most ``log_burst`` times per claimed sender and reason every
``log_period_s``, then summed up (:mod:`transports.lograte`): nobody can flood the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeAlias

import aiomqtt
from aiomqtt.exceptions import MqttConnectError

from threshold_fl.errors import (
    AuthenticationError,
    FrameError,
    ParameterError,
    TransportClosed,
    TransportError,
)
from transports.broker import TOPIC_ROOT, BrokerConfig, topic
from transports.chunks import Reassembler
from transports.frames import (
    TRANSFER_ID_SIZE,
    ChunkPlan,
    Signer,
    Transfer,
    Verifier,
    decode_ack,
    rejection_reason,
    validate_id,
)
from transports.held import HeldMessages
from transports.inbox import Inbox
from transports.lograte import Outage, RateLimitedLog, printable
from transports.mqtt_options import MqttOptions, MqttStats
from transports.presence import parse_presence, presence_payload
from transports.window import OutgoingTransfer, SendWindow

if TYPE_CHECKING:
    from transports.base import Transport

__all__ = ["MqttOptions", "MqttStats", "MqttTransport"]

_LOG = logging.getLogger(__name__)
# CONNACK reasons that retrying cannot fix: bad protocol, client id, credentials, ban.
_PERMANENT = {132, 133, 134, 135, 138, 140}
_PLAN_IN_THREAD = 8 << 20  # hash payloads above this off the event loop
#: (topic, ack frame) pairs: filled by the reader, published by the acker.
_Acks: TypeAlias = "asyncio.Queue[tuple[str, bytes]]"


_COUNTERS = tuple(f for f in MqttStats.__dataclass_fields__
                  if f not in ("last_rejections", "ack_timeouts"))


# --------------------------------------------------------------------------- transport


async def _cancel_all(tasks: list[asyncio.Task[None] | asyncio.Task[bool]]) -> None:
    """Cancel until every task ended: Python 3.10's ``asyncio.wait_for`` (in aiomqtt)
    swallows a cancel that coincides with its result, leaving a reader waiting forever."""
    while pending := [t for t in tasks if not t.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the caller re-raises what matters


class MqttTransport:
    """One party's connection to a federation over an MQTT broker.

    Use ``async with MqttTransport(...) as t:`` (or :meth:`connect` / :meth:`close`).
    ``sign`` signs manifests as this party; ``verify(sender, data, signature)`` checks
    other parties' manifests: identities stay with the composition layer.
    """

    def __init__(self, party_id: str, session: str, broker: BrokerConfig | str, *,
                 sign: Signer, verify: Verifier,
                 random_bytes: Callable[[int], bytes] = os.urandom,
                 options: MqttOptions | None = None,
                 on_presence: Callable[[str, bool], None] | None = None) -> None:
        self._party_id = validate_id("party id", party_id)
        self.session = validate_id("session", session)
        self.broker = broker if isinstance(broker, BrokerConfig) else BrokerConfig.from_url(broker)
        self.options = options or MqttOptions()
        self._sign, self._random, self._callback = sign, random_bytes, on_presence
        self._reassembler = Reassembler(party_id, session, verify, self.options.limits)
        self._counts: Counter[str] = Counter()
        self._rejections: deque[str] = deque(maxlen=10)
        self._refusals = RateLimitedLog(_LOG, burst=self.options.log_burst,
                                        period_s=self.options.log_period_s,
                                        prefix=f"party {party_id!r}: ")
        self._window = SendWindow(window=self.options.window,
                                  ack_timeout_s=self.options.ack_timeout_s,
                                  backoff=self.options.backoff, max_tries=self.options.max_tries,
                                  max_ack_timeout_s=self.options.max_ack_timeout_s)
        self._senders: dict[OutgoingTransfer, asyncio.Future[None]] = {}  # waiting send()s
        # Complete messages; those that find it full are held unacked (back-pressure).
        opt = self.options
        self._inbox = Inbox(opt.inbox_limit, HeldMessages(opt.held_memory_bytes), self._counts,
                            ack_topic=lambda sender: self._topic("ack", sender),
                            per_sender=opt.held_per_sender, max_bytes=opt.held_max_bytes)
        self._acks: _Acks | None = None  # the live connection's ack queue
        self._peers: dict[str, bool] = {}
        self._wake = asyncio.Event()  # new frames to send or acks that freed the window
        self._connected = asyncio.Event()
        self._connected_at = 0.0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: aiomqtt.Client | None = None  # the live connection, for sever()
        self._closed = False
        self._failure: TransportError | None = None

    # ----------------------------------------------------------------- public API

    @property
    def party_id(self) -> str:
        return self._party_id

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def closed(self) -> bool:
        """True once closed, or once it gave up on the broker."""
        return self._closed or self._failure is not None

    @property
    def connected_for_s(self) -> float:
        """Seconds the current broker connection has been up; 0 while it is down.

        What a party hears about others' presence is only current once our own link
        has been up a while (the broker replays retained presence after a reconnect).
        """
        if not self._connected.is_set():
            return 0.0
        return self._now() - self._connected_at

    @property
    def stats(self) -> MqttStats:
        counts = {name: self._counts[name] for name in _COUNTERS}
        window = self._window  # it counts what it decides: retransmits, acks, give-ups
        counts.update(retransmits=window.retransmits, transfers_acked=window.transfers_acked,
                      transfers_failed=window.transfers_failed, busy=window.busy_answers,
                      spilled=self._inbox.held.spilled)
        return MqttStats(**counts, last_rejections=tuple(self._rejections),
                         ack_timeouts=tuple(window.ack_timeouts().items()))

    def online_peers(self) -> frozenset[str]:
        """Other parties whose latest presence says online.

        Presence is what the broker retained: after a broker restart without
        persistence, a party that vanished during the outage keeps its last state.
        """
        return frozenset(p for p, online in self._peers.items() if online)

    async def connect(self) -> None:
        """Start the connection; return once connected, or raise TransportError.

        Retries for ``give_up_after`` seconds; a refusal that retrying cannot fix (bad
        credentials, not authorised) fails at once.
        """
        if self._closed:
            raise TransportClosed(f"party {self._party_id!r}: transport closed")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"mqtt-{self._party_id}")
        waiter = asyncio.create_task(self._connected.wait())
        await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        if not self._connected.is_set():
            raise self._failure or TransportClosed(f"party {self._party_id!r}: closed")

    async def send(self, recipients: Sequence[str], data: bytes) -> None:
        """Queue one transfer per recipient; return once all went out (not when acked).

        Waits while the recipient's window is full or the broker away (up to
        ``give_up_after``), but not for a recipient whose presence says offline.
        Cancelling the call does not withdraw what was queued.
        """
        self._check_usable()
        if isinstance(recipients, str):
            raise ParameterError(f"recipients must be a sequence of party ids, not {recipients!r}")
        targets = [validate_id("recipient", r) for r in recipients]
        if len(data) > self.options.limits.max_payload:
            raise ParameterError(f"payload of {len(data)} bytes exceeds max_payload "
                                 f"{self.options.limits.max_payload}")
        plan = await self._plan(bytes(data))
        self._check_usable()  # it may have failed or closed while a big plan was hashed
        loop = asyncio.get_running_loop()
        outs = [self._window.add(self._transfer(plan, r)) for r in targets]
        waiters = {out: loop.create_future() for out in outs}
        self._senders.update(waiters)
        self._counts["messages_sent"] += len(outs)
        self._counts["bytes_sent"] += len(outs) * plan.total
        self._wake.set()
        for out, waiter in waiters.items():
            if self._peers.get(out.recipient) is not False:  # offline: don't wait
                await waiter
        if self._failure is not None:
            raise self._failure
        if self._closed and any(not o.all_handed_out and o.failure is None for o in outs):
            raise TransportClosed(f"party {self._party_id!r}: closed while sending")

    async def receive(self) -> bytes:
        """The next message; after close or failure, what already arrived, then an error."""
        if self._task is None and not self._closed:
            raise TransportError(f"party {self._party_id!r}: not connected; call connect()")
        item = await self._inbox.get()
        self._release_held()
        if item is None:
            raise self._end_error()
        return item

    async def close(self) -> None:
        """Linger briefly for unacked frames, say offline, disconnect; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None and not self._task.done():
            await self._linger()
            self._stop.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task),
                                       self.options.operation_timeout_s + 1)
            except asyncio.TimeoutError:
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        self._wind_down()

    def sever(self) -> None:
        """Vanish as a crashed machine does (tests, benchmarks): the TCP connection is
        shut without an MQTT DISCONNECT, so the broker publishes our Last Will, and
        nothing more is sent; receivers get :class:`TransportClosed`.  Other transports
        in the same process are untouched."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()  # no reconnect
        client = self._client
        sock = None if client is None else client._client.socket()  # paho's
        if isinstance(sock, socket.socket):  # shut before any goodbye can go out
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._task is not None:
            self._task.cancel()
        self._wind_down()

    async def __aenter__(self) -> MqttTransport:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    # ----------------------------------------------------------------- helpers

    def _topic(self, kind: str, party: str) -> str:
        return topic(self.session, kind, party)

    @property
    def _presence_prefix(self) -> str:
        return f"{TOPIC_ROOT}/{self.session}/presence/"

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _check_usable(self) -> None:
        if self._closed:
            raise TransportClosed(f"party {self._party_id!r}: send on a closed transport")
        if self._failure is not None:
            raise self._failure
        if self._task is None:
            raise TransportError(f"party {self._party_id!r}: not connected; call connect()")

    def _end_error(self) -> TransportError:
        if self._closed or self._failure is None:
            return TransportClosed(f"party {self._party_id!r}: transport closed")
        return self._failure

    def _wind_down(self) -> None:
        """Closed or failed: release senders, wake receivers, drop what is held (its
        files too), log pending counts."""
        self._window.abort()
        self._settle()
        self._inbox.stop()
        self._refusals.flush(self._now(), final=True)

    async def _plan(self, data: bytes) -> ChunkPlan:
        # Hashing hundreds of MB would stall keepalives and acks: do big ones in a thread.
        if len(data) > _PLAN_IN_THREAD:
            return await asyncio.to_thread(ChunkPlan.of, data, self.options.chunk_size)
        return ChunkPlan.of(data, self.options.chunk_size)

    def _transfer(self, plan: ChunkPlan, recipient: str) -> Transfer:
        transfer_id = self._random(TRANSFER_ID_SIZE)
        if not isinstance(transfer_id, bytes) or len(transfer_id) != TRANSFER_ID_SIZE:
            raise ParameterError(f"random_bytes({TRANSFER_ID_SIZE}) returned {transfer_id!r}")
        return plan.transfer(sender=self._party_id, recipient=recipient, channel=self.session,
                             transfer_id=transfer_id, sign=self._sign)

    def _fail(self, error: TransportError) -> None:
        # Not logged: connect/send/receive raise it, and the caller reports it once.
        self._connected.clear()
        self._failure = error
        self._wind_down()

    def _settle(self) -> None:
        """Act on what the window decided: wake released senders, log give-ups."""
        for out in self._window.take_released():
            waiter = self._senders.pop(out, None)
            if waiter is not None and not waiter.done():  # done: its send() was cancelled
                waiter.set_result(None)
        for out in self._window.take_given_up():
            _LOG.warning("gave up on transfer %s to %r: %s",
                         out.transfer.transfer_id.hex()[:12], out.recipient, out.failure)

    async def _linger(self) -> None:
        deadline = self._now() + self.options.close_linger_s
        while not self._window.idle and self._connected.is_set() and self._now() < deadline:
            await asyncio.sleep(0.02)

    def _presence_payload(self, online: bool) -> bytes:
        return presence_payload(self._party_id, online, time.time())

    # ----------------------------------------------------------------- connection

    def _new_client(self) -> aiomqtt.Client:
        b, opt = self.broker, self.options
        tls = (aiomqtt.TLSParameters(ca_certs=b.ca_file, certfile=b.cert_file,
                                     keyfile=b.key_file) if b.tls else None)
        return aiomqtt.Client(
            b.host, b.port, username=b.username, password=b.password,
            identifier=f"tfl-{self.session}-{self._party_id}",
            protocol=aiomqtt.ProtocolVersion.V5 if opt.mqtt5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if opt.mqtt5 else True,
            will=aiomqtt.Will(self._topic("presence", self._party_id),
                              self._presence_payload(False), qos=1, retain=True),
            keepalive=opt.keepalive, timeout=opt.operation_timeout_s, tls_params=tls,
            # Bounds memory (frames of up to 4 MiB); a frame dropped here is resent later.
            max_queued_incoming_messages=opt.frame_queue_limit,
            # Nagle's algorithm against the peer's delayed ACK held each small packet
            # (a PUBACK, an ack frame) about 40 ms: every QoS 1 publish waited that long.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)] if opt.tcp_nodelay
            else [],
        )

    async def _run(self) -> None:
        """Connect, serve, reconnect with capped backoff; fail after give_up_after."""
        opt, sessions, last_error = self.options, 0, "no connection attempt finished"
        outage = Outage(_LOG, f"party {self._party_id!r}: broker {self.broker.url}",
                        initial_s=opt.reconnect_initial_s, max_s=opt.reconnect_max_s,
                        give_up_after=opt.give_up_after, now=self._now())
        while not self._stop.is_set():
            try:
                async with self._new_client() as client:
                    self._client = client
                    await self._setup(client)
                    self._counts["reconnects"], sessions = sessions, sessions + 1
                    self._connected_at = self._now()
                    self._connected.set()
                    outage.connected(self._connected_at)
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                if self._permanent(exc):
                    return
                last_error = str(exc) or type(exc).__name__
            except TransportError as exc:  # a refusal found during setup
                return self._fail(exc)
            except Exception as exc:  # a bug: fail loudly rather than hang callers
                _LOG.exception("party %r: transport task crashed", self._party_id)
                return self._fail(TransportError(
                    f"party {self._party_id!r}: MQTT transport crashed: {exc!r}"))
            finally:
                self._connected.clear()
                self._client = None
            if self._stop.is_set():
                return
            wait = outage.failed(last_error, self._now())
            if wait is None:
                return self._fail(TransportError(
                    f"party {self._party_id!r}: broker {self.broker.url} unreachable for "
                    f"{opt.give_up_after:g} s (give_up_after); giving up; last error: "
                    f"{last_error}"))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), wait)

    def _permanent(self, exc: aiomqtt.MqttError) -> bool:
        rc = getattr(exc, "rc", None)
        if isinstance(exc, MqttConnectError) and getattr(rc, "value", rc) in _PERMANENT:
            self._fail(TransportError(
                f"party {self._party_id!r}: broker {self.broker.url} refused the connection "
                f"({exc}); check username, password and ACL; retrying will not help"))
            return True
        return False

    async def _setup(self, client: aiomqtt.Client) -> None:
        """Subscribe to our own topics (the ACL may forbid others), then say online."""
        for name in (self._topic("to", self._party_id), self._topic("ack", self._party_id),
                     self._presence_prefix + "+"):
            codes = await client.subscribe(name, qos=1)
            if any(getattr(c, "is_failure", False) or c == 0x80 for c in codes):
                raise TransportError(f"broker {self.broker.url} refused subscription to {name!r} "
                                     "(check the broker's ACL)")
        await client.publish(self._topic("presence", self._party_id),
                             self._presence_payload(True), qos=1, retain=True)

    async def _serve(self, client: aiomqtt.Client) -> None:
        """Run reader and sender until the connection drops (MqttError) or we stop."""
        acks: _Acks = asyncio.Queue()
        self._acks = acks
        tasks = [asyncio.create_task(self._read(client)),
                 asyncio.create_task(self._pump(client)),
                 asyncio.create_task(self._acker(client, acks)),
                 asyncio.create_task(self._flusher())]
        stopper = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._acks = None
            await _cancel_all([*tasks, stopper])
        for task in tasks:
            if task in done:
                task.result()  # re-raise why the connection ended
        with contextlib.suppress(aiomqtt.MqttError):  # a clean DISCONNECT skips the Will
            await client.publish(self._topic("presence", self._party_id),
                                 self._presence_payload(False), qos=1, retain=True, timeout=2)

    async def _pump(self, client: aiomqtt.Client) -> None:
        self._window.resume(self._now())
        while True:
            self._wake.clear()
            frame = self._window.next_frame(self._now())
            self._settle()  # finding the next frame may have given transfers up
            if frame is None:
                deadline = self._window.next_deadline()
                timeout = None if deadline is None else max(0.0, deadline - self._now())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            data = frame.transfer.transfer.frame(frame.seq)
            await client.publish(self._topic("to", frame.transfer.recipient), data, qos=1)
            self._counts["frames_sent"] += 1
            self._counts["frame_bytes_sent"] += len(data)
            self._window.sent(frame, self._now())
            self._settle()

    # ----------------------------------------------------------------- receiving

    async def _flusher(self) -> None:
        # Summaries of suppressed refusals are due when a period ends, flood over or not.
        while True:
            await asyncio.sleep(min(self.options.log_period_s, 5.0))
            self._refusals.flush(self._now())

    async def _acker(self, client: aiomqtt.Client, acks: _Acks) -> None:
        # Not in the reader: aiomqtt's publish waits out its timeout when the connection
        # drops, and a reader stuck there would notice the outage only that late.
        while True:
            name, frame = await acks.get()
            await client.publish(name, frame, qos=0)

    async def _read(self, client: aiomqtt.Client) -> None:
        inbox, my_acks = self._topic("to", self._party_id), self._topic("ack", self._party_id)
        presence = self._presence_prefix
        async for message in client.messages:
            name, payload = message.topic.value, bytes(message.payload)
            if name == inbox:
                self._on_frame(payload)
            elif name == my_acks:
                self._on_ack(payload)
            elif name.startswith(presence):
                self._on_presence(name[len(presence):], payload)

    def _on_frame(self, frame: bytes) -> None:
        if self.closed:  # failed while the reader runs: nothing is delivered or acked
            return
        self._counts["frames_received"] += 1
        self._counts["frame_bytes_received"] += len(frame)
        if deferral := self._inbox.deferral(self._reassembler, frame, self._now()):
            return self._send_ack(*deferral)  # its sender is at a held bound: it waits
        try:
            got = self._reassembler.accept(frame, self._now())
        except (FrameError, AuthenticationError) as exc:
            return self._reject(self._reassembler.claimed_sender(frame), exc)
        finally:
            for dropped in self._reassembler.take_expired():  # expired or evicted
                self._counts["expired"] += 1
                self._log(dropped.sender, dropped.kind, dropped.reason)
        self._counts["duplicates"] += got.duplicate
        failure = self._inbox.take(got, self._send_ack)  # acked once delivered, else busy
        if failure is not None:  # the file failed: kept in memory, so not lost
            self._log(got.sender, "spill failed", failure)

    def _send_ack(self, name: str, frame: bytes) -> None:
        if self._acks is not None:  # else the sender's resend is acked when it comes
            self._acks.put_nowait((name, frame))

    def _release_held(self) -> None:
        try:
            self._inbox.release(self._send_ack)
        except TransportError as exc:  # it stays held, unacked: its sender knows
            self._stop.set()  # the connection ends; receive() drains the inbox, then raises
            self._fail(TransportError(f"party {self._party_id!r}: {exc}; the transport "
                                      "stopped (check TMPDIR's disk)"))

    def _on_ack(self, frame: bytes) -> None:
        try:
            transfer_id, seq, busy = decode_ack(frame)
        except FrameError as exc:
            return self._reject(None, exc, "on the ack topic: ")
        if busy:  # held by a busy recipient: resent only as a probe, tries not counted
            self._window.busy(transfer_id, seq, self._now())
        elif self._window.ack(transfer_id, seq, self._now()):
            self._wake.set()

    def _reject(self, sender: str | None, error: Exception, where: str = "") -> None:
        self._counts["rejected"] += 1
        self._rejections.append(where + str(error))
        kind = rejection_reason(error) + (" on the ack topic" if where else "")
        self._log(sender or "unknown", kind, where + str(error))

    def _log(self, sender: str, kind: str, message: str) -> None:
        """A warning, rate-limited per (claimed) sender and kind: senders can flood."""
        self._refusals.log(sender, kind, message, self._now())

    def _on_presence(self, party: str, payload: bytes) -> None:
        online = parse_presence(party, payload)
        if online is None:
            return self._log(party, "malformed presence",
                             f"ignoring malformed presence for {printable(party)}")
        if party == self._party_id:
            return
        if online and self._window.kick(party, self._now()):  # re-announced: resend to it
            self._wake.set()
        if not online:
            self._window.release(party)
            self._settle()
        if self._peers.get(party) == online:
            return
        self._peers[party] = online
        if self._callback is not None:
            try:
                self._callback(party, online)
            except Exception:  # a faulty callback must not kill the connection
                _LOG.exception("on_presence callback failed")


if TYPE_CHECKING:

    def _conforms(transport: MqttTransport) -> Transport:
        """mypy checks here that MqttTransport satisfies the Transport protocol."""
        return transport
