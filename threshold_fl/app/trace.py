"""A message trace: every message a party sends and receives, timed, as JSON lines.

``threshold-fl aggregator --trace FILE`` wraps the aggregator's transport in a
:class:`TracingLink`.  The federation is a star through the aggregator (relayed
messages included), so its trace holds every protocol message of the session: when
it was handed to the transport and when the transport let go of it (every frame
published), when one arrived, its type, stage, key epoch and round (from the
unauthenticated header, :func:`protocols.codec.peek_step`: for
accounting only), the peer and the payload bytes.  :mod:`threshold_fl.bench.linkmodel`
turns it into a profile.

Times are ``time.monotonic()``: one clock for every process on the machine.

Each line: ``{"t": seconds, "event": "send" | "sent" | "recv", "kind": str,
"stage": str, "epoch": int, "round": int, "peers": [party, ...], "bytes": payload bytes}`` (a
send's peers are its recipients, a receipt's its envelope's sender).  The broker's news
of a client's connection is traced too: event ``"offline"`` or ``"online"``, kind
``"presence"``, the client as the one peer, stage ``"-"``, epoch and round 0 and no bytes (it is
how ``bench dropout`` times hearing of a killed client).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any

from protocols.codec import MAGIC, peek_step
from threshold_fl.errors import ParameterError
from transports import Transport

__all__ = ["EVENTS", "PRESENCE", "TraceEvent", "TracingLink", "read_trace"]

EVENTS = ("send", "sent", "recv", "offline", "online")
PRESENCE = "presence"  # the kind of the offline/online events


@dataclass(frozen=True)
class TraceEvent:
    """One line of a trace (see the module docstring)."""

    t: float
    event: str
    kind: str
    stage: str
    epoch: int  # the key epoch: grows with each key agreement (a restart, a rotation)
    round: int
    peers: tuple[str, ...]
    bytes: int

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ParameterError(f"trace event must be one of {EVENTS}, got {self.event!r}")
        for name in ("kind", "stage"):
            if not isinstance(getattr(self, name), str):
                raise ParameterError(f"trace {name} must be a string")
        if not all(isinstance(peer, str) for peer in self.peers):
            raise ParameterError("trace peers must be strings")
        numbers = {"t": (self.t, int | float), "epoch": (self.epoch, int),
                   "round": (self.round, int), "bytes": (self.bytes, int)}
        for name, (value, kind) in numbers.items():  # NaN fails 0 <= value
            if isinstance(value, bool) or not isinstance(value, kind) or not (
                    0 <= value < float("inf")):
                what = "a finite number" if name == "t" else "an integer"
                raise ParameterError(f"trace {name} must be {what} >= 0, got {value!r}")

    def as_json(self) -> str:
        return json.dumps({"t": self.t, "event": self.event, "kind": self.kind,
                           "stage": self.stage, "epoch": self.epoch, "round": self.round,
                           "peers": list(self.peers), "bytes": self.bytes})

    @classmethod
    def from_json(cls, text: str) -> TraceEvent:
        try:
            data: Any = json.loads(text)
        except json.JSONDecodeError as error:
            raise ParameterError(f"trace line is not JSON: {error}") from None
        names = tuple(spec.name for spec in fields(cls))
        if not isinstance(data, dict) or set(data) != set(names):
            raise ParameterError(f"trace line must be an object with the fields {names} "
                                 "(a trace from an older version lacks the epoch: record "
                                 "it again)")
        if not isinstance(data["peers"], list):
            raise ParameterError("trace peers must be a list")
        return cls(**{**data, "peers": tuple(data["peers"])})


def read_trace(path: Path) -> list[TraceEvent]:
    """Every event of a trace file; :class:`ParameterError` names the bad line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ParameterError(f"cannot read the trace {path}: {error}") from None
    events = []
    for number, text in enumerate(lines, 1):
        if text.strip():
            try:
                events.append(TraceEvent.from_json(text))
            except ParameterError as error:
                raise ParameterError(f"{path}, line {number}: {error}") from None
    return events


def _sender(data: bytes) -> str:
    """The sender an envelope claims (unauthenticated), '?' if it is not one."""
    if len(data) < 6 or data[:4] != MAGIC:
        return "?"
    return data[6:6 + data[5]].decode("utf-8", errors="replace")


class TracingLink:
    """A transport that writes a :class:`TraceEvent` for each message it moves."""

    def __init__(self, link: Transport, path: Path,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._link, self._clock = link, clock
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = path.open("w", encoding="utf-8", buffering=1)  # line-buffered

    @property
    def party_id(self) -> str:
        return self._link.party_id

    async def send(self, recipients: Sequence[str], data: bytes) -> None:
        self._write("send", data, tuple(recipients))
        await self._link.send(recipients, data)
        self._write("sent", data, tuple(recipients))

    async def receive(self) -> bytes:
        data = await self._link.receive()
        self._write("recv", data, (_sender(data),))
        return data

    async def close(self) -> None:
        await self._link.close()
        self.finish()

    def presence(self, party: str, online: bool) -> None:
        """Note that the broker says *party* is online or offline (its Last Will)."""
        if not self._file.closed:
            event = TraceEvent(self._clock(), "online" if online else "offline", PRESENCE,
                               "-", 0, 0, (party,), 0)
            self._file.write(event.as_json() + "\n")

    def finish(self) -> None:
        """Close the trace file (the wrapped link's owner closes the link)."""
        self._file.close()

    def _write(self, event: str, data: bytes, peers: tuple[str, ...]) -> None:
        if self._file.closed:
            return
        peeked = peek_step(data)
        kind, stage, epoch, round_ = (("?", "?", 0, 0) if peeked is None else (
            peeked.kind, peeked.stage.name, peeked.epoch, peeked.round))
        self._file.write(TraceEvent(self._clock(), event, kind, stage, epoch,
                                    round_, peers, len(data)).as_json() + "\n")
