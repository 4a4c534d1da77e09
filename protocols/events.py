"""What a state machine tells its application, and what it asks it to send."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Union

from threshold_fl.arrays import FloatArray
from threshold_fl.errors import SessionAborted
from threshold_fl.identity import PartyId
from threshold_fl.ml.mask import EncryptionMask

__all__ = [
    "Aborted",
    "Event",
    "Finished",
    "KeyAgreed",
    "MaskAgreed",
    "Outgoing",
    "PartyDropped",
    "PartyRefused",
    "RoundCompleted",
    "SensitivityNeeded",
    "Step",
    "UpdateNeeded",
]



@dataclass(frozen=True)
class Outgoing:
    """Bytes to deliver to each of ``recipients`` (already signed)."""

    recipients: tuple[PartyId, ...]
    data: bytes = field(repr=False)
    kind: str  # message type, for logs and byte accounting


@dataclass(frozen=True)
class KeyAgreed:
    epoch: int
    key_id: str
    participants: tuple[PartyId, ...]


@dataclass(frozen=True)
class MaskAgreed:
    mask: EncryptionMask


@dataclass(frozen=True)
class SensitivityNeeded:
    """Client only: compute the local sensitivity map and call ``submit_sensitivity``."""


@dataclass(frozen=True)
class UpdateNeeded:
    """Client only: train round ``round`` from ``model`` (None: your initial model) and
    call ``submit_update``."""

    round: int
    model: FloatArray | None = field(repr=False)


@dataclass(frozen=True)
class RoundCompleted:
    """A FedAvg round is done.  ``model`` is the new global model at clients, None at
    the aggregator (which never sees it)."""

    round: int
    contributors: tuple[PartyId, ...]
    model: FloatArray | None = field(repr=False)


@dataclass(frozen=True)
class PartyDropped:
    party: PartyId
    reason: str


@dataclass(frozen=True)
class PartyRefused:
    """Aggregator only: *party* was turned away (told with an Abort) and has not joined;
    for example it runs another manifest.  The session waits on for the others."""

    party: PartyId
    reason: str


@dataclass(frozen=True)
class Finished:
    rounds: int


@dataclass(frozen=True)
class Aborted:
    reason: str
    #: What a driver raises for it (a subclass such as ManifestMismatch names the cause).
    error: type[SessionAborted] = SessionAborted


Event = Union[  # noqa: UP007 - runtime alias
    KeyAgreed,
    MaskAgreed,
    SensitivityNeeded,
    UpdateNeeded,
    RoundCompleted,
    PartyDropped,
    PartyRefused,
    Finished,
    Aborted,
]


@dataclass
class Step:
    """The result of feeding a machine: messages to send and events for the app.

    ``later`` holds messages made one at a time as they are taken, after ``sends``: a
    large upload's parts, each encrypted only once the previous one has gone, so that a
    client never holds its whole encrypted upload.  Take them with :meth:`outgoing`.
    """

    sends: list[Outgoing] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    later: list[Iterator[Outgoing]] = field(default_factory=list)

    def extend(self, other: Step) -> Step:
        if self.later and other.sends:  # keep the order: after what is still to be made
            self.later.append(iter(other.sends))
        else:
            self.sends.extend(other.sends)
        self.later.extend(other.later)
        self.events.extend(other.events)
        return self

    def outgoing(self) -> Iterator[Outgoing]:
        """Every message to send, in order, each let go of by the step as it is taken
        (a sent upload part is not kept); the ones in ``later`` made only then."""
        while self.sends:
            yield self.sends.pop(0)
        while self.later:
            yield from self.later.pop(0)
