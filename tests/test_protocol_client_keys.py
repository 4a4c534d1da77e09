"""EpochKeys (protocols/client_keys.py) by itself: the key agreement without a machine."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from protocol_harness import build_manifest, counter_randomness

from protocols.client_keys import EpochKeys, Mismatch
from protocols.manifest import Mode
from threshold_fl.crypto.context import CkksContext, context_for
from threshold_fl.crypto.keys import PartyKeys, PublicKey, lead_keygen
from threshold_fl.crypto.wire import encode_public_key
from threshold_fl.errors import MalformedMessage
from threshold_fl.identity import PartyId

MANIFEST = build_manifest(3)
HOLDERS = tuple(PartyId(p) for p in MANIFEST.client_ids)


def _epoch() -> dict[PartyId, EpochKeys]:
    return {party: EpochKeys(MANIFEST, party, 1, HOLDERS) for party in HOLDERS}


def _agree(context: CkksContext, keys: dict[PartyId, EpochKeys],
           public_of: Callable[[PartyKeys], PublicKey] = lambda dealt: dealt.public_share,
           ) -> dict[PartyId, str | Mismatch | None]:
    """Run the key agreement from the pieces alone (dealers send ``public_of(keys)`` as
    their public share); each holder's outcome."""
    lead, *members = HOLDERS
    own = keys[lead].start(context, counter_randomness(lead))
    assert own is not None and all(keys[m].start(context, counter_randomness(m)) is None
                                   for m in members)
    dealers = [(lead, own)]
    while dealers:
        dealer, dealt = dealers.pop()
        deliveries = keys[dealer].deal(context, dealt)
        frame = encode_public_key(context, public_of(dealt), party_index=dealt.index)
        for holder, fields in deliveries.items():
            keys[holder].take_public_share(context, dealer, frame)
            keys[holder].take_delivery(context, dealer, fields)
            member = keys[holder].member_keys(context)
            if member is not None:
                dealers.append((holder, member))
    return {party: keys[party].outcome(context) for party in HOLDERS}


def test_the_holders_agree_on_one_key_from_the_pieces_alone() -> None:
    context = context_for(MANIFEST.params)
    keys = _epoch()
    outcomes = _agree(context, keys)
    lead = HOLDERS[0]
    assert len(set(outcomes.values())) == 1
    assert isinstance(outcomes[lead], str) and outcomes[lead] == keys[lead].key_id
    assert len({keys[party].group_check() for party in HOLDERS}) == 1


def test_a_share_of_another_dealer_or_key_is_refused() -> None:
    context = context_for(MANIFEST.params)
    keys = _epoch()
    lead, member, third = HOLDERS
    own = keys[lead].start(context, counter_randomness(lead))
    assert own is not None
    fields = keys[lead].deal(context, own)
    # The lead's share for member, relayed as if the third party had dealt it.
    with pytest.raises(MalformedMessage, match="Shamir share is for another sharing"):
        keys[member].take_delivery(context, third, {"shamir": fields[member]["shamir"]})
    # A share meant for another holder.
    with pytest.raises(MalformedMessage, match="Shamir share is for another sharing"):
        keys[member].take_delivery(context, lead, fields[third])
    assert not keys[member].held_shares and not keys[member].deliveries_from
    # Shares of a key other than the public share the dealer announced: no joint key.
    stranger = lead_keygen(context, 1).public_share
    outcomes = _agree(context, _epoch(),
                      lambda dealt: stranger if dealt.index == 1 else dealt.public_share)
    for party in (member, third):
        outcome = outcomes[party]
        assert isinstance(outcome, Mismatch)
        assert outcome.reason == "party 1's Shamir share is not of its key"


def test_a_delivery_with_a_bad_group_key_is_refused_and_nothing_is_taken() -> None:
    context = context_for(MANIFEST.params)
    keys = _epoch()
    lead, member = HOLDERS[0], HOLDERS[1]
    own = keys[lead].start(context, counter_randomness(lead))
    assert own is not None
    fields = keys[lead].deal(context, own)[member]
    with pytest.raises(MalformedMessage, match="the group key has the wrong size"):
        keys[member].take_delivery(context, lead, {**fields, "group_key": b"short"})
    assert not keys[member].deliveries_from and not keys[member].held_shares
    assert keys[member].group_key is None
    keys[member].take_delivery(context, lead, fields)  # the good copy is still welcome
    assert keys[member].deliveries_from == {lead}


def test_plaintext_mode_agrees_at_once() -> None:
    manifest = build_manifest(2, mode=Mode.PLAINTEXT)
    keys = EpochKeys(manifest, PartyId(manifest.client_ids[0]), 1, HOLDERS[:2])
    context = context_for(manifest.params)
    assert keys.start(context, counter_randomness("x")) is None
    key_id = keys.outcome(context)
    assert isinstance(key_id, str) and keys.matches(key_id, keys.group_check())
