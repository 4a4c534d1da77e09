"""Joint decryption by blind fusion: who decrypts, what a share is bound to, and the
aggregator's record of one decryption.

The aggregator picks a decryption set S of t live key holders and sends each member
the aggregate's c1 parts only; each member returns one masked share
(:func:`threshold_fl.crypto.threshold.decryption_shares`); the aggregator adds c0 and
the shares and broadcasts the fused polynomials, still under the pad only clients can
remove.  A member that drops, or whose connection is reported lost, makes the attempt
fail: the aggregator picks another set (attempt + 1), and the masks keep the failed
set's shares meaningless.  Nobody rebuilds a key and no key rotation follows a dropout.

Every share is bound to (session, key epoch, round, stage, the digest of the c1 it
decrypts, the set); the pad also to the attempt.  Binding the noise and masks to the
c1 bytes themselves matters: with the same noise for two different c1, the difference
of two shares would give the key away.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from protocols.messages import DecryptionShare, Fused, Stage
from threshold_fl.arrays import U64Array
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.crypto.threshold import DecryptionSet, blind_fusion, derive_key
from threshold_fl.crypto.wire import PolynomialRole, decode_polynomials, encode_polynomials
from threshold_fl.errors import MalformedMessage
from threshold_fl.identity import Identity, PartyId, PublicIdentity

__all__ = ["BlindDecryption", "QueryBudget", "choose_set", "c1_digest", "decryption_set",
           "pair_key"]


def c1_digest(c1: U64Array) -> str:
    """SHA-256 of the c1 arrays as sent (little-endian limbs)."""
    return hashlib.sha256(c1.astype("<u8", copy=False).tobytes()).hexdigest()


def decryption_set(session: str, holders: Sequence[PartyId], members: Sequence[PartyId],
                   threshold: int, step: tuple[Stage, int, int, int], digest: str
                   ) -> DecryptionSet:
    """The crypto layer's set for ``members`` (party indices in the key's order), bound
    to the session, the step (without the attempt) and the c1 digest."""
    stage, epoch, round_, _ = step
    binding = hashlib.sha256(
        b"threshold-fl/decryption/v1\0" + f"{session}\0{epoch}\0{round_}\0{int(stage)}\0"
        f"{digest}".encode()).digest()
    indices = tuple(holders.index(member) + 1 for member in members)
    return DecryptionSet(indices, threshold, binding)


def pair_key(identity: Identity, peer: PublicIdentity, session: str, epoch: int) -> bytes:
    """The mask key this party shares with ``peer`` for one key epoch (from their X25519
    keys; the aggregator cannot compute it)."""
    return derive_key(identity.shared_secret(peer), "pair",
                      session.encode(), epoch.to_bytes(8, "big"))


def choose_set(holders: Sequence[PartyId], alive: Collection[PartyId], threshold: int,
               round_: int, *, avoid: Collection[PartyId] = ()) -> tuple[PartyId, ...] | None:
    """t live holders, starting at an offset that moves with the round (so the work
    rotates among the clients), without those in *avoid* (connection lost, not yet
    dropped) if t others are alive; None if fewer than t are alive."""
    live = [holder for holder in holders if holder in alive]
    if len(live) < threshold:
        return None
    pool = [holder for holder in live if holder not in avoid]
    pool = pool if len(pool) >= threshold else live
    start = round_ % len(pool)
    return tuple(sorted((pool[start:] + pool[:start])[:threshold]))


@dataclass
class BlindDecryption:
    """The aggregator's record of one aggregate's joint decryption, and its frames: c1 for
    the members, their shares in, the fused result out (``length`` protected values
    under ``key_id``)."""

    context: CkksContext
    key_id: str
    length: int
    c0: U64Array
    c1: U64Array
    members: tuple[PartyId, ...] = ()
    shares: dict[PartyId, U64Array] = field(default_factory=dict)
    fused: bool = False  # the fused polynomials went out
    asked: set[PartyId] = field(default_factory=set)  # members of any set asked so far

    @cached_property
    def digest(self) -> str:
        """Of c1, hashed once: every share and the fused result are checked against it."""
        return c1_digest(self.c1)

    def request(self, members: tuple[PartyId, ...]
                ) -> tuple[list[PartyId], tuple[bytes, ...]]:
        """Start a set (a new attempt): forget any earlier set's shares.  The members in
        the order to send them c1, those asked for the first time first (a member of an
        earlier set may still be making its share for it, while a new one's c1 would
        otherwise queue behind that member's upload), and the c1 frames."""
        order = sorted(members, key=lambda member: member in self.asked)  # stable
        self.members, self.shares = members, {}
        self.asked.update(members)
        return order, tuple(encode_polynomials(self.context, PolynomialRole.C1, self.key_id,
                                               self.length, self.c1))

    def take(self, member: PartyId, frames: Sequence[bytes]) -> None:
        """Decode and keep a member's share (checked frames, values below the moduli)."""
        self.shares[member] = decode_polynomials(self.context, frames, PolynomialRole.SHARE,
                                                 key_id=self.key_id, length=self.length)

    def accept(self, member: PartyId, body: DecryptionShare) -> bool:
        """Keep a member's share if it is for this set and this c1; whether the set is
        now complete."""
        if body.members != self.members or body.c1_digest != self.digest:
            raise MalformedMessage("the decryption share is for another set or aggregate")
        self.take(member, body.shares)
        return not self.missing()

    def fuse(self) -> tuple[bytes, ...]:
        """c0 plus every member's share, still padded, as frames."""
        fused = blind_fusion(self.c0, list(self.shares.values()),
                             ShareRounding.of(self.context))
        self.fused = True
        return tuple(encode_polynomials(self.context, PolynomialRole.FUSED, self.key_id,
                                        self.length, fused))

    def fused_body(self, plain: bytes) -> Fused:
        """The broadcast of the fused result, with the aggregate's *plain* part."""
        return Fused(self.members, self.digest, self.fuse(), plain)

    def missing(self) -> list[PartyId]:
        """The members of the current set whose share has not come."""
        return [member for member in self.members if member not in self.shares]

    def failed(self, dropped: Collection[PartyId]) -> bool:
        """Whether a member of the current set dropped before the set completed."""
        return not self.fused and any(member in dropped for member in self.missing())

    def culprits(self, alive: Sequence[PartyId], confirmed: Collection[PartyId]
                 ) -> list[PartyId]:
        """At the deadline: the live members whose share is missing; once the fused
        result went out, the live clients that have not confirmed it."""
        if not self.fused:
            return [member for member in self.missing() if member in alive]
        return [party for party in alive if party not in confirmed]

    def waiting(self, alive: Sequence[PartyId], confirmed: Collection[PartyId],
                unreachable: Collection[PartyId], attempt: int
                ) -> tuple[str, list[PartyId], int, str]:
        """What the aggregator waits for: (what, who, of how many) for
        ``Machine._waiting``, and what ends the wait."""
        who = self.culprits(alive, confirmed)
        lost = ", ".join(repr(party) for party in who if party in unreachable)
        if self.fused:
            until = f"; {lost} lost the connection: waiting for its drop" if lost else ""
            return "clients to confirm the fused result", who, len(alive), until
        until = (f"; {lost} lost the connection: another set as soon as t other holders are "
                 "live, else at the drop or the deadline" if lost else
                 "; another set as soon as a missing member's connection is reported lost, "
                 "or at the deadline")
        return f"decryption shares (attempt {attempt})", who, len(self.members), until


@dataclass
class QueryBudget:
    """Decryption shares one key epoch has given, against the Q its flooding is sized
    for (``CkksParams.decryption_queries``): each ciphertext of each share counts."""

    limit: int
    used: int = 0

    def allows(self, count: int) -> bool:
        return self.used + count <= self.limit

    def refusal(self, count: int, epoch: int) -> str | None:
        """Spend *count* shares, or say why key epoch *epoch* cannot."""
        if not self.allows(count):
            return (f"key epoch {epoch} has no decryption budget left ({self.used} of "
                    f"{self.limit} shares used)")
        self.spend(count)
        return None

    def spend(self, count: int) -> None:
        self.used += count
