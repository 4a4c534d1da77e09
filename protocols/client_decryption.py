"""A client's side of the joint decryption, part by part: a member's share of one part
of c1, and the fused result assembled as its parts arrive.

A large aggregate's decryption streams (``DecryptRequest``, ``DecryptionShare`` and
``Fused`` carry ``part``/``parts``; part k is ciphertexts ``part_span(count, parts, k)``).
Each part's masks, noise and pad are bound to the part and to the digest of that part's
c1 (:func:`protocols.fusion.decryption_set`), so a part's shares mean something only
summed over the whole set, and a member gives one share of each part per attempt.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from protocols.client_keys import EpochKeys
from protocols.fusion import c1_digest, decryption_set, pair_key
from protocols.manifest import Manifest
from protocols.messages import DecryptionShare, DecryptRequest, Fused, Stage
from protocols.protection import decode_plain, part_span
from threshold_fl.arrays import FloatArray, U64Array
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.rounding import ShareRounding
from threshold_fl.crypto.shares import decode_sums
from threshold_fl.crypto.threshold import ThresholdKey, decryption_shares, threshold_kit, unpad
from threshold_fl.crypto.vectors import ciphertext_count
from threshold_fl.crypto.wire import PolynomialRole, decode_polynomials, encode_polynomials
from threshold_fl.errors import DuplicateMessage, MalformedMessage
from threshold_fl.identity import Identity, PartyId, PublicIdentity

__all__ = ["FusedParts", "MemberKeys", "ShareOrder", "SharesGiven", "decode_request",
           "member_keys", "part_of", "share_part"]


def part_of(context: CkksContext, length: int, part: int, parts: int) -> tuple[int, int]:
    """The ciphertexts part *part* of *parts* of a decryption of *length* values carries;
    MalformedMessage if there cannot be that many parts (one ciphertext each at most)."""
    count = ciphertext_count(context, length)
    if parts > max(count, 1):
        raise MalformedMessage(f"a decryption in {parts} parts of {count} ciphertexts: at "
                               "most one part per ciphertext; discarded")
    return part_span(count, parts, part)


@dataclass
class SharesGiven:
    """The shares this member gave in the current step: one per (attempt, part), and
    all of them over one split of the aggregate.  A set asked again (a new attempt)
    then gives the very same shares, its noise being derived from the binding; a second
    split would bind the same ciphertexts anew and draw fresh noise for them."""

    parts: int | None = None  # the step's split, fixed by its first request
    given: set[tuple[int, int]] = field(default_factory=set)  # (attempt, part)

    def check(self, attempt: int, part: int, parts: int) -> None:
        if self.parts is not None and parts != self.parts:
            raise MalformedMessage(
                f"a decryption request in {parts} parts where this step's earlier ones "
                f"came in {self.parts}: an aggregate is split one way only (another split "
                "would decrypt its ciphertexts twice); discarded")
        if (attempt, part) in self.given:
            raise DuplicateMessage(f"a second decryption request for this attempt and part "
                                   f"{part} (one share of each); discarded")

    def record(self, attempt: int, part: int, parts: int) -> None:
        self.parts = parts
        self.given.add((attempt, part))


@dataclass(frozen=True)
class MemberKeys:
    """What a member of the set decrypts with (its threshold key, noise seed, the pair
    keys of the set's other members, the pad if it is the set's first member)."""

    key_id: str
    holders: tuple[PartyId, ...]
    index: int  # this member's, in the key's order (1-based)
    threshold_key: ThresholdKey
    noise_seed: bytes
    pair_keys: dict[int, bytes]
    group_key: bytes | None  # the pad, only for the set's pad holder


def member_keys(identity: Identity, directory: Mapping[PartyId, PublicIdentity],
                keys: EpochKeys, members: tuple[PartyId, ...], session: str, epoch: int
                ) -> MemberKeys:
    """This member's keys for a share to *members*: the pair keys with each other member
    (for key epoch *epoch*) and its epoch keys."""
    assert keys.key_id is not None and keys.threshold_key is not None
    assert keys.noise_seed is not None
    pairs = {keys.index_of(member): pair_key(identity, directory[member], session, epoch)
             for member in members if member != identity.party_id}
    return MemberKeys(keys.key_id, keys.holders, keys.index, keys.threshold_key,
                      keys.noise_seed, pairs, keys.group_key)


@dataclass(frozen=True)
class ShareOrder:
    """One part of c1 decoded, and what a share of it is bound to."""

    c1: U64Array
    digest: str
    first: int

    @property
    def count(self) -> int:
        return int(self.c1.shape[0])


def decode_request(context: CkksContext, key_id: str, length: int, body: DecryptRequest
                   ) -> ShareOrder:
    """A request's part of c1, checked to be exactly the ciphertexts its index names."""
    start, stop = part_of(context, length, body.part, body.parts)
    c1 = decode_polynomials(context, body.c1, PolynomialRole.C1, key_id=key_id,
                            length=length, span=(start, stop))
    return ShareOrder(c1, c1_digest(c1), start)


def share_part(context: CkksContext, manifest: Manifest, keys: MemberKeys, length: int,
               body: DecryptRequest, order: ShareOrder, step: tuple[Stage, int, int, int]
               ) -> DecryptionShare:
    """This member's masked (and, for the first member, padded) share of one part of c1:
    each ciphertext's masks and noise keyed to the set, its index and the c1 received."""
    dset = decryption_set(manifest.session, keys.holders, body.members, manifest.threshold,
                          step)
    pad = keys.group_key if dset.pad_holder == keys.index else None
    shares = decryption_shares(
        order.c1, ShareRounding.of(context), keys.threshold_key, dset,
        sigma=threshold_kit(context).sigma, noise_seed=keys.noise_seed,
        pair_keys=keys.pair_keys, group_key=pad, attempt=step[3], first=order.first)
    frames = tuple(encode_polynomials(context, PolynomialRole.SHARE, keys.key_id, length,
                                      shares, first=order.first))
    return DecryptionShare(body.members, order.digest, frames, body.part, body.parts)


@dataclass
class FusedParts:
    """The fused result of one step's decryption as its parts arrive: each part's pad
    removed and its values decoded into place at once, so only the decoded values (and
    the plain ones) are held, never the fused polynomials of all parts."""

    context: CkksContext
    length: int  # protected values
    plain_length: int
    parts: int
    values: FloatArray = field(init=False)
    plain: FloatArray = field(init=False)
    received: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.values = np.empty(self.length)
        self.plain = np.empty(self.plain_length)

    def add(self, manifest: Manifest, key_id: str, holders: tuple[PartyId, ...],
            group_key: bytes, body: Fused, step: tuple[Stage, int, int, int]) -> bool:
        """Decode part ``body.part`` into place; whether every part is now in."""
        if body.parts != self.parts:
            raise MalformedMessage(f"fused part {body.part} says the decryption has "
                                   f"{body.parts} parts, earlier parts said {self.parts}; "
                                   "discarded")
        if body.part in self.received:
            raise DuplicateMessage(f"fused part {body.part} of {body.parts} came again; "
                                   "discarded")
        start, stop = part_of(self.context, self.length, body.part, body.parts)
        low, high = part_span(self.plain_length, body.parts, body.part)
        plain = decode_plain(body.plain, high - low, "the fused aggregate's plain part")
        fused = decode_polynomials(self.context, body.fused, PolynomialRole.FUSED,
                                   key_id=key_id, length=self.length, span=(start, stop))
        dset = decryption_set(manifest.session, holders, body.members, manifest.threshold,
                              step)
        clear = unpad(fused, group_key, dset, step[3], ShareRounding.of(self.context),
                      first=start)
        step_values = self.context.values_per_ciphertext
        first, last = start * step_values, min(stop * step_values, self.length)
        self.values[first:last] = decode_sums(self.context, clear, last - first,
                                              coefficients=True)
        self.plain[low:high] = plain
        self.received.add(body.part)
        return len(self.received) == self.parts

    def take(self) -> FloatArray:
        """The decoded values, handed over (not kept here)."""
        values, self.values = self.values, np.empty(0)
        return values
