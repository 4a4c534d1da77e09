"""Judgements in key agreement: which public shares make the key and whether a client's
confirmation fits it (the aggregator's), and whether a KeygenStart fits (a client's).

Pure helpers over what the aggregator relayed; :class:`protocols.aggregator.
AggregatorMachine` checks headers, relays, keeps the results and moves between states.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from protocols.manifest import Manifest, Mode
from protocols.messages import KeygenStart
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.keys import PublicKey, combine_public_shares
from threshold_fl.crypto.wire import decode_public_key
from threshold_fl.errors import ForgedMessage, MalformedMessage
from threshold_fl.identity import PartyId

__all__ = ["add_public_share", "confirmation_refusal", "keygen_refusal"]


def add_public_share(context: CkksContext, mode: Mode, holders: Sequence[PartyId],
                     shares: Mapping[PartyId, PublicKey], sender: PartyId, frame: bytes
                     ) -> tuple[dict[PartyId, PublicKey], str | None]:
    """Check *sender*'s public share (its index among *holders*; the key authority's key
    has index 0) and add it to *shares*: the shares so far, and the key id once it is
    known (single-key: the authority's key; threshold: when every holder's share is in)."""
    index, share = decode_public_key(context, frame)
    expected = holders.index(sender) + 1 if sender in holders else 0
    if index != expected:
        raise MalformedMessage(f"{sender!r} sent a key share for index {index}, not {expected}")
    added = {**shares, sender: share}
    if mode is Mode.SINGLE_KEY:
        return added, share.key_id
    if len(added) < len(holders):
        return added, None
    by_index = {holders.index(party) + 1: key for party, key in added.items()}
    return added, combine_public_shares(context, by_index, 1).key_id


def confirmation_refusal(sender: PartyId, confirmed: str, key_id: str | None,
                         group_check: str, known_check: str | None) -> str | None:
    """Why key agreement fails on *sender*'s confirmation of key *confirmed* with
    *group_check*, when the shares add up to *key_id* and other clients confirmed
    *known_check* (None: nobody yet); None if it fits."""
    if confirmed != key_id:
        return (f"{sender!r} confirmed key {confirmed[:16]}, which is not the key the shares "
                f"add up to ({(key_id or 'none')[:16]}); key agreement failed")
    if known_check not in (None, group_check):
        return "clients hold different group keys; key agreement failed"
    return None


def keygen_refusal(manifest: Manifest, me: PartyId, body: KeygenStart) -> str | None:
    """Why client *me* cannot take part in the key agreement *body* starts: the aggregator
    runs another manifest (:meth:`Manifest.mismatch`); None if it fits.  Raises
    ForgedMessage if it names a threshold or parties that *manifest* does not."""
    refusal = manifest.mismatch(me, manifest.aggregator.party_id, body.manifest)
    if refusal is not None:
        return refusal
    if body.threshold != manifest.threshold or not set(body.participants) <= set(
            manifest.client_ids):
        raise ForgedMessage("the key agreement names parties or a threshold not in the manifest")
    return None
