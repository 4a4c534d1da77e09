"""Who the aggregator blames when a stage's deadline passes.

Pure functions of what the aggregator saw in the stage, so the judgement is easy to
read and to test on its own.  Each returns the clients to drop; an empty list means
nobody can be blamed yet.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from threshold_fl.identity import PartyId

__all__ = ["key_agreement_culprits", "upload_culprits"]


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
