"""The MQTT transport's tuning (:class:`MqttOptions`) and counters (:class:`MqttStats`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from threshold_fl.errors import ParameterError
from transports.chunks import ReassemblyLimits
from transports.frames import DEFAULT_CHUNK_SIZE
from transports.held import DEFAULT_HELD_MEMORY

__all__ = ["MqttOptions", "MqttStats"]


@dataclass(frozen=True)
class MqttOptions:
    """Tuning of an :class:`MqttTransport`; the defaults suit a LAN or one machine."""

    keepalive: int = 5  # seconds; a frozen peer is seen offline after 1.5 times this
    window: int = 8  # frames sent but not yet acked
    ack_timeout_s: float = 5.0  # first retransmission at least; times `backoff` per try
    max_ack_timeout_s: float = 60.0  # measured round trips raise the timeout up to this
    backoff: float = 2.0
    max_tries: int = 5  # sends of one frame before its transfer is given up
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 5.0
    give_up_after: float = 60.0  # broker unreachable this long: the transport fails
    operation_timeout_s: float = 30.0  # connect, subscribe, one publish
    close_linger_s: float = 2.0  # close() waits this long for unacked frames
    chunk_size: int = DEFAULT_CHUNK_SIZE
    limits: ReassemblyLimits = field(default_factory=ReassemblyLimits)
    inbox_limit: int = 1000  # complete messages waiting for receive(); beyond: held
    # unacked, answered busy, so their senders wait (back-pressure) (transports.inbox)
    held_memory_bytes: int = DEFAULT_HELD_MEMORY  # held payloads kept in memory; beyond:
    # in temporary files (transports.held), so memory does not grow with the senders
    held_per_sender: int = 16  # messages held per sender (its window's worth and more);
    held_max_bytes: int = 1 << 30  # held payload bytes, memory and files; at either
    # bound a sender's frames are answered busy unread, and wait with it
    frame_queue_limit: int = 256  # frames read but not yet processed; beyond: dropped
    mqtt5: bool = False  # MQTT 3.1.1 by default; nothing here needs 5
    tcp_nodelay: bool = True  # send small packets at once (no Nagle): see _new_client
    log_burst: int = 3  # refusals logged per claimed sender and reason per period; then
    log_period_s: float = 60.0  # counted, and summed up in one line per period

    def __post_init__(self) -> None:
        positive = ("ack_timeout_s", "max_ack_timeout_s", "reconnect_initial_s", "reconnect_max_s",
                    "give_up_after", "operation_timeout_s", "log_period_s")
        bad = [n for n in positive if not getattr(self, n) > 0]
        bad += [n for n in ("keepalive", "window", "max_tries", "inbox_limit",
                            "frame_queue_limit", "log_burst", "held_per_sender",
                            "held_max_bytes") if getattr(self, n) < 1]
        bad += ["held_memory_bytes"] if self.held_memory_bytes < 0 else []
        if bad or self.backoff < 1 or self.close_linger_s < 0:
            raise ParameterError(f"invalid MqttOptions: {bad or 'backoff/close_linger_s'}")
        if not self.max_ack_timeout_s < self.limits.expiry_s:
            # a busy receiver's deferred transfers live on its senders' probes, which
            # come every max_ack_timeout_s (transports.inbox)
            raise ParameterError(
                f"invalid MqttOptions: max_ack_timeout_s={self.max_ack_timeout_s} must be "
                f"below limits.expiry_s={self.limits.expiry_s}, or a transfer deferred "
                "by a busy receiver expires between two probes; raise expiry_s or lower "
                "max_ack_timeout_s")


@dataclass(frozen=True)
class MqttStats:
    """A snapshot of an :class:`MqttTransport`'s counters.

    ``messages_sent``/``bytes_sent`` count payloads per recipient; ``frames_sent`` and
    ``frame_bytes_sent`` what went on the wire, retransmissions included.
    """

    messages_sent: int = 0
    bytes_sent: int = 0
    messages_received: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frame_bytes_sent: int = 0
    frames_received: int = 0
    frame_bytes_received: int = 0
    retransmits: int = 0
    transfers_acked: int = 0
    transfers_failed: int = 0
    duplicates: int = 0
    rejected: int = 0
    expired: int = 0
    held: int = 0  # complete messages that found the inbox full and waited, unacked
    spilled: int = 0  # of those, held in a temporary file (beyond held_memory_bytes)
    deferred: int = 0  # frames answered busy unread: their sender was at a held bound
    busy: int = 0  # busy answers received: a recipient held our frame, not yet delivered
    reconnects: int = 0
    last_rejections: tuple[str, ...] = ()
    ack_timeouts: tuple[tuple[str, float], ...] = ()  # per recipient with RTT samples, now
