"""The aggregator's view of one joint decryption, which it relays but cannot open.

It tracks whose partial decryption went out (one per key holder, never two) and who
recovers a dropped holder's, so that it can refuse a late or forged partial, ask a
survivor to recover, and say who is to blame at the deadline.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from threshold_fl.identity import PartyId

__all__ = ["DecryptionRelay"]


@dataclass
class DecryptionRelay:
    """One aggregate's joint decryption; ``running`` is False where nothing is decrypted
    jointly (plaintext and single-key modes, or nothing encrypted)."""

    digest: str | None = None
    running: bool = False
    relayed: set[PartyId] = field(default_factory=set)  # whose partial went out
    recovering: dict[PartyId, PartyId] = field(default_factory=dict)  # holder -> recoverer

    def may_send(self, sender: PartyId, owner: PartyId, holders: Sequence[PartyId]) -> bool:
        """May ``sender`` send the partial decryption of ``owner``'s key share?"""
        return owner in holders and (owner == sender or self.recovering.get(owner) == sender)

    def assign_recoveries(self, holders: Sequence[PartyId], dropped: Collection[PartyId],
                          recoverer: PartyId) -> list[PartyId]:
        """Hand ``recoverer`` every dropped holder whose partial is missing and who has
        no live recoverer yet; the holders newly assigned."""
        if not self.running:
            return []
        assigned = [
            holder for holder in holders
            if holder in dropped and holder not in self.relayed
            and self.recovering.get(holder, holder) in dropped
        ]
        for holder in assigned:
            self.recovering[holder] = recoverer
        return assigned

    def culprits(self, holders: Sequence[PartyId], alive: Sequence[PartyId],
                 confirmed: Collection[PartyId]) -> list[PartyId]:
        """At the deadline: the live holders whose partial is missing and the recoverers
        stalled on a dropped holder's; once every partial went out, whoever has not
        confirmed the result."""
        missing = [holder for holder in holders if holder not in self.relayed] if (
            self.running) else []
        if missing:
            owners = [holder for holder in missing if holder in alive]
            stalled = [self.recovering[holder] for holder in missing
                       if holder in self.recovering]
            return sorted(set(owners + stalled) & set(alive))
        return [party for party in alive if party not in confirmed]
