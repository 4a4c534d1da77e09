"""Who the aggregator blames when a stage's deadline passes, and when it may blame.

Pure functions of what the aggregator saw in the stage, so the judgement is easy to
read and to test on its own.  The culprit functions return the clients to drop; an
empty list means nobody can be blamed yet.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from protocols.manifest import Timeouts
from protocols.states import AggregatorState
from threshold_fl.identity import PartyId

__all__ = ["GRACE", "grace_deadline", "key_agreement_culprits", "stage_timeout",
           "upload_culprits"]

#: At a deadline, progress within this fraction of the stage timeout earns one extension.
GRACE = 0.25


def stage_timeout(state: AggregatorState, timeouts: Timeouts) -> float:
    """The aggregator's timeout for a stage of *state* (joining aside)."""
    if state is AggregatorState.KEY_AGREEMENT:
        return timeouts.keys_s
    uploads = (AggregatorState.MASK_UPLOAD, AggregatorState.ROUND_UPLOAD)
    return timeouts.upload_s if state in uploads else timeouts.decrypt_s


def grace_deadline(last_progress: float | None, now: float, timeout: float) -> float | None:
    """At a deadline: if something arrived just before it (within GRACE of the stage's
    *timeout*), the others may not have had time to answer, so blaming them now would
    drop punctual clients: the extended deadline; None to blame now."""
    grace = GRACE * timeout
    if last_progress is not None and now - last_progress < grace:
        return last_progress + grace
    return None


def key_agreement_culprits(
    contributors: Sequence[PartyId],
    shared: Collection[PartyId],
    holders: Sequence[PartyId],
    delivered: Collection[tuple[PartyId, PartyId]],
    alive: Sequence[PartyId],
    confirmed: Collection[PartyId],
) -> list[PartyId]:
    """Key agreement: first whoever owes a public share (the lead alone if it is one of
    them: the others may be waiting for it), then whoever owes a key delivery
    ``(sender, recipient)``, then whoever has not confirmed the key."""
    missing_shares = [party for party in contributors if party not in shared]
    if missing_shares:
        lead = contributors[0]
        return [lead] if lead in missing_shares else missing_shares
    silent = [
        sender for sender in contributors
        if any((sender, recipient) not in delivered for recipient in holders
               if recipient != sender)
    ]
    if silent:
        return silent
    return [party for party in alive if party not in confirmed]


def upload_culprits(expected: Sequence[PartyId], uploaders: Collection[PartyId]
                    ) -> list[PartyId]:
    """An upload stage: every client expected to upload that has not."""
    return [party for party in expected if party not in uploaders]
