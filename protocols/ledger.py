"""What the aggregator has accepted, by kind, so that a second copy is refused.

Each set names what it holds, so a check or a filter says what it means; the joint
decryption's shares have their own record (:class:`protocols.fusion.BlindDecryption`),
and the confirmations theirs in the aggregator.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from threshold_fl.identity import PartyId

__all__ = ["StepLedger"]


@dataclass
class StepLedger:
    """The messages accepted in the current step (hellos: in the whole session)."""

    hellos: set[PartyId] = field(default_factory=set)  # clients that joined
    broadcasts: set[PartyId] = field(default_factory=set)  # whose PublicShare was relayed
    #: (sender, recipient) of each KeyDelivery relayed: who still owes whom a delivery.
    deliveries: set[tuple[PartyId, PartyId]] = field(default_factory=set)
    uploads: set[PartyId] = field(default_factory=set)  # senders of the step's upload

    def next_step(self) -> StepLedger:
        """A ledger for the next step: a hello is sent once per session, so it stays."""
        return StepLedger(hellos=self.hellos)
