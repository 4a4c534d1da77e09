"""Joint decryption by blind fusion: who decrypts, what a share is bound to, and the
aggregator's record of one decryption.

The aggregator picks a decryption set S of t live key holders and sends each member
the aggregate's c1 parts only; each member returns one masked share
(:func:`threshold_fl.crypto.threshold.decryption_shares`); the aggregator adds c0 and
the shares and broadcasts the fused polynomials, still under the pad only clients can
remove.  A member that drops, or whose connection is reported lost, makes the attempt
fail: the aggregator picks another set (attempt + 1), and the masks keep the failed
set's shares meaningless.  Nobody rebuilds a key and no key rotation follows a dropout.

Every share is bound to (session, key epoch, round, stage, the set) and, per
ciphertext, its noise and masks to the ciphertext's index and the digest of its own
c1, its pad to its index and the attempt, whatever message part carries it.  Binding
the noise and masks to the c1 bytes themselves matters: with the same noise for two
different c1, the difference of two shares would give the key away.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from protocols.events import Outgoing
from protocols.messages import Body, DecryptionShare, DecryptRequest, Fused, Stage
from protocols.protection import decryption_parts, encode_plain, part_span
from threshold_fl.arrays import FloatArray, U64Array
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.crypto.threshold import DecryptionSet, blind_fusion, derive_key
from threshold_fl.crypto.wire import PolynomialRole, decode_polynomials, encode_polynomials
from threshold_fl.errors import DuplicateMessage, MalformedMessage
from threshold_fl.identity import Identity, PartyId, PublicIdentity

#: ``Machine._send``: one body signed for its recipient, at a step.
Send = Callable[[Sequence[PartyId], Body, tuple[Stage, int, int, int]], Outgoing]

__all__ = ["BlindDecryption", "QueryBudget", "choose_set", "c1_digest", "decryption_set",
           "pair_key"]


def c1_digest(c1: U64Array) -> str:
    """SHA-256 of the c1 arrays as sent (little-endian limbs)."""
    return hashlib.sha256(c1.astype("<u8", copy=False).tobytes()).hexdigest()


def decryption_set(session: str, holders: Sequence[PartyId], members: Sequence[PartyId],
                   threshold: int, step: tuple[Stage, int, int, int]) -> DecryptionSet:
    """The crypto layer's set for ``members`` (party indices in the key's order), bound
    to the session and the step without the attempt.  Each ciphertext's masks and noise
    are keyed to this and to the ciphertext itself (its index and its c1's digest,
    :func:`threshold_fl.crypto.threshold.ciphertext_id`), whatever part carries it; its
    pad to this, its index and the attempt."""
    stage, epoch, round_, _ = step
    binding = hashlib.sha256(
        b"threshold-fl/decryption/v3\0" + f"{session}\0{epoch}\0{round_}\0{int(stage)}"
        .encode()).digest()
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
    under ``key_id``), in ``parts`` parts (ciphertexts ``part_span(count, parts, k)``).

    A set is asked for at most ``window`` parts at a time; once every member's share of
    a part is in, the part is fused, broadcast and its shares dropped, and the next part
    is asked for: the shares held are at most ``window`` parts' worth per member.  A part
    fused stays fused: a set that replaces a failed one is asked only for the rest."""

    context: CkksContext
    key_id: str
    length: int
    c0: U64Array
    c1: U64Array
    parts: int = 1
    window: int = 2
    members: tuple[PartyId, ...] = ()
    shares: dict[int, dict[PartyId, U64Array]] = field(default_factory=dict)  # by part
    complete: bool = False  # every part's fused polynomials went out
    asked: set[PartyId] = field(default_factory=set)  # members of any set asked so far
    done: set[int] = field(default_factory=set)  # parts fused, by any set
    pending: list[int] = field(default_factory=list)  # parts this set is yet to be asked for
    sets: int = 0  # sets asked so far: binds a set's requests (members may repeat)
    _digests: dict[int, str] = field(default_factory=dict)

    @cached_property
    def digest(self) -> str:
        """Of c1, hashed once: every share and the fused result are checked against it
        (against their part's digest, :meth:`part_digest`, when there are parts)."""
        return c1_digest(self.c1)

    def span(self, part: int) -> tuple[int, int]:
        """The ciphertexts part *part* carries."""
        return part_span(self.c1.shape[0], self.parts, part)

    def part_digest(self, part: int) -> str:
        if self.parts == 1:
            return self.digest
        if part not in self._digests:
            start, stop = self.span(part)
            self._digests[part] = c1_digest(self.c1[start:stop])
        return self._digests[part]

    def remaining(self) -> int:
        """Ciphertexts of the parts not fused yet (what a new set spends of the budget)."""
        return sum(stop - start for start, stop in map(self.span, self.undone()))

    def undone(self) -> list[int]:
        return [part for part in range(self.parts) if part not in self.done]

    def request(self, members: tuple[PartyId, ...]) -> tuple[list[PartyId], list[int]]:
        """Start a set (a new attempt): forget any earlier set's shares.  The members in
        the order to send them c1, those asked for the first time first (a member of an
        earlier set may still be making its share for it, while a new one's c1 would
        otherwise queue behind that member's upload), and the parts to ask for now."""
        order = sorted(members, key=lambda member: member in self.asked)  # stable
        self.members = members
        self.sets += 1
        self.asked.update(members)
        undone = self.undone()
        first, self.pending = undone[:self.window], undone[self.window:]
        self.shares = {part: {} for part in first}
        return order, first

    @classmethod
    def of(cls, context: CkksContext, key_id: str, length: int,
           ring_parts: tuple[U64Array, U64Array], plain_length: int, part_bytes: int
           ) -> BlindDecryption:
        """The decryption of an aggregate's (c0, c1), in as many parts as messages of at
        most *part_bytes* need (:func:`protocols.protection.decryption_parts`)."""
        c0, c1 = ring_parts
        parts = decryption_parts(context, c1.shape[0], plain_length, part_bytes)
        return cls(context, key_id, length, c0, c1, parts)

    def requests(self, order: list[PartyId], parts: list[int], send: Send,
                 step: tuple[Stage, int, int, int]) -> Iterator[Outgoing]:
        """Each of *parts*' c1 to each member, each message made as it is taken (one
        part's frames and one signed message held at a time); none once another set
        replaced this one.  The set is bound now, not at the first message taken."""
        return self._requests(self.sets, self.members, order, parts, send, step)

    def _requests(self, set_: int, members: tuple[PartyId, ...], order: list[PartyId],
                  parts: list[int], send: Send, step: tuple[Stage, int, int, int]
                  ) -> Iterator[Outgoing]:
        for part in parts:
            if self.sets != set_:
                return
            start, stop = self.span(part)
            frames = tuple(encode_polynomials(self.context, PolynomialRole.C1, self.key_id,
                                              self.length, self.c1[start:stop], first=start))
            body = DecryptRequest(members, frames, part, self.parts)
            for member in order:
                if self.sets != set_:
                    return
                yield send([member], body, step)

    def accept(self, member: PartyId, body: DecryptionShare) -> bool:
        """Keep a member's share of a part asked for, if it is for this set and that
        part's c1; whether the part is now complete."""
        if body.members != self.members or body.parts != self.parts or (
                body.part in self.shares and body.c1_digest != self.part_digest(body.part)):
            raise MalformedMessage("the decryption share is for another set or aggregate")
        if body.part not in self.shares:
            if body.part in self.done:
                raise DuplicateMessage(f"a share of decryption part {body.part}, which was "
                                       "fused already; discarded")
            raise MalformedMessage(f"a share of decryption part {body.part}, which this set "
                                   "was not asked for; discarded")
        if member in self.shares[body.part]:
            raise DuplicateMessage(f"{member!r}'s share of decryption part {body.part} came "
                                   "again; discarded")
        start, stop = self.span(body.part)
        self.shares[body.part][member] = decode_polynomials(
            self.context, body.shares, PolynomialRole.SHARE, key_id=self.key_id,
            length=self.length, span=(start, stop))
        return len(self.shares[body.part]) == len(self.members)

    def fuse(self, part: int, plain: FloatArray) -> Fused:
        """Part *part*'s c0 plus every member's share of it, still padded, with its
        share of the aggregate's *plain* values; the part's shares are dropped."""
        start, stop = self.span(part)
        shares = self.shares.pop(part)
        fused = blind_fusion(self.c0[start:stop], [shares[m] for m in self.members],
                             ShareRounding.of(self.context))
        del shares
        self.done.add(part)
        self.complete = len(self.done) == self.parts
        frames = tuple(encode_polynomials(self.context, PolynomialRole.FUSED, self.key_id,
                                          self.length, fused, first=start))
        low, high = part_span(plain.size, self.parts, part)
        return Fused(self.members, self.part_digest(part), frames,
                     encode_plain(plain[low:high]), part, self.parts)

    def next_requests(self, send: Send, step: tuple[Stage, int, int, int]
                      ) -> Iterator[Outgoing]:
        """As a part is fused: the next part's requests (none once all are asked)."""
        if not self.pending:
            return iter(())
        part = self.pending.pop(0)
        self.shares[part] = {}
        return self.requests(list(self.members), [part], send, step)

    def missing(self) -> list[PartyId]:
        """The members of the current set who owe a share (of a part asked for, or yet
        to be asked for)."""
        return [member for member in self.members
                if any(member not in shares for shares in self.shares.values())]

    def owes(self, member: PartyId) -> bool:
        """Whether *member* of the current set still owes a share (of a part asked for,
        or of one yet to be asked for)."""
        return member in self.members and not self.complete and (
            bool(self.pending) or member in self.missing())

    def failed(self, dropped: Collection[PartyId]) -> bool:
        """Whether a member of the current set dropped before the set completed."""
        return any(self.owes(member) for member in dropped)

    def culprits(self, alive: Sequence[PartyId], confirmed: Collection[PartyId]
                 ) -> list[PartyId]:
        """At the deadline: the live members whose share is missing; once the fused
        result went out, the live clients that have not confirmed it."""
        if not self.complete:
            return [member for member in self.missing() if member in alive]
        return [party for party in alive if party not in confirmed]

    def waiting(self, alive: Sequence[PartyId], confirmed: Collection[PartyId],
                unreachable: Collection[PartyId], attempt: int
                ) -> tuple[str, list[PartyId], int, str]:
        """What the aggregator waits for: (what, who, of how many) for
        ``Machine._waiting``, and what ends the wait."""
        who = self.culprits(alive, confirmed)
        lost = ", ".join(repr(party) for party in who if party in unreachable)
        if self.complete:
            until = f"; {lost} lost the connection: waiting for its drop" if lost else ""
            return "clients to confirm the fused result", who, len(alive), until
        until = (f"; {lost} lost the connection: another set as soon as t other holders are "
                 "live, else at the drop or the deadline" if lost else
                 "; another set as soon as a missing member's connection is reported lost, "
                 "or at the deadline")
        parts = f", {len(self.done)} of {self.parts} parts fused" if self.parts > 1 else ""
        return (f"decryption shares (attempt {attempt}{parts})", who, len(self.members),
                until)


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
