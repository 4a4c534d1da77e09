"""Judgements in key agreement: whether a Hello may join, which public shares make the
key, whether a client's confirmation fits it and what may be relayed (the aggregator's),
and whether a KeygenStart fits (a client's).

Pure helpers over what the aggregator relayed; :class:`protocols.aggregator.
AggregatorMachine` checks headers, relays, keeps the results and moves between states.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from protocols.events import Outgoing
from protocols.manifest import Manifest, Mode
from protocols.messages import Hello, KeygenStart, Message
from threshold_fl.crypto.context import CkksContext
from threshold_fl.crypto.keys import PublicKey, combine_public_shares
from threshold_fl.crypto.wire import decode_public_key
from threshold_fl.errors import ForgedMessage, MalformedMessage
from threshold_fl.identity import PartyId

__all__ = ["add_public_share", "check_relay", "confirmation_refusal", "hello_refusal",
           "key_contributors", "key_holders", "keygen_refusal", "relayed"]


def hello_refusal(manifest: Manifest, me: PartyId, sender: PartyId, body: Hello
                  ) -> str | None:
    """Why aggregator *me* turns away *sender*'s Hello: it runs another manifest
    (:meth:`Manifest.mismatch`); None if it may join.  Raises MalformedMessage for an
    announcement of fewer than one training sample."""
    if body.samples < 1:
        raise MalformedMessage("a client announced fewer than 1 training sample")
    return manifest.mismatch(me, sender, body.manifest)


def key_contributors(manifest: Manifest, holders: tuple[PartyId, ...]
                     ) -> tuple[PartyId, ...]:
    """Who sends key shares: the holders (threshold), the key authority (single-key),
    nobody (plaintext)."""
    if manifest.mode is Mode.THRESHOLD:
        return holders
    if manifest.key_authority is not None:
        return (manifest.key_authority.party_id,)
    return ()


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


# -- relaying: the aggregator forwards key shares and sealed deliveries as signed ------
def check_relay(message: Message, alive: Sequence[PartyId], *, broadcast: bool) -> None:
    """A key share must be addressed to every client (*broadcast*), a sealed delivery to
    one active client other than its sender: ForgedMessage otherwise."""
    header = message.header
    if broadcast and header.recipient != "*":
        raise ForgedMessage(f"{message.kind} must be addressed to every client")
    if not broadcast and (header.recipient not in alive or header.recipient == header.sender):
        raise ForgedMessage(f"{message.kind} for {header.recipient!r}, not an active client")


def relayed(message: Message, alive: Sequence[PartyId]) -> Outgoing:
    """*message*'s signed bytes, to its recipient or, addressed to every client, to every
    active client but its sender."""
    header = message.header
    if header.recipient == "*":
        recipients = tuple(party for party in alive if party != header.sender)
    else:
        recipients = (PartyId(header.recipient),)
    assert message.raw, "a relay forwards the sender's signed bytes: received ones only"
    return Outgoing(recipients, message.raw, message.kind)


def key_holders(alive: Sequence[PartyId], unreachable: Collection[PartyId], threshold: int
                ) -> tuple[PartyId, ...]:
    """Who is asked to hold the next key: the live clients without those whose connection
    was lost (a Last Will seen, not yet judged gone), if t others remain.  A holder lost
    during key agreement restarts it; several lost at once would otherwise restart it
    once each, N^2 sealed deliveries every time.  One left out that comes back before it
    is judged gone restarts it again, with it (``AggregatorMachine.party_reachable``)."""
    reachable = tuple(party for party in alive if party not in unreachable)
    return reachable if len(reachable) >= threshold else tuple(alive)
