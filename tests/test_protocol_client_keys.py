"""EpochKeys (protocols/client_keys.py) by itself: the key agreement without a machine."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from protocol_harness import build_manifest, counter_randomness

from protocols import client_keys
from protocols.client_keys import EpochKeys, Mismatch
from protocols.manifest import Mode
from threshold_fl.crypto import threshold, wire
from threshold_fl.crypto.context import CkksContext, context_for
from threshold_fl.crypto.keys import PartyKeys, PublicKey, lead_keygen
from threshold_fl.crypto.wire import encode_public_key
from threshold_fl.errors import FrameError, MalformedMessage
from threshold_fl.identity import PartyId

MANIFEST = build_manifest(3)
HOLDERS = tuple(PartyId(p) for p in MANIFEST.client_ids)


def _epoch() -> dict[PartyId, EpochKeys]:
    return {party: EpochKeys(MANIFEST, party, 1, HOLDERS) for party in HOLDERS}


def _lead_started() -> tuple[CkksContext, dict[PartyId, EpochKeys], PartyKeys]:
    """A fresh epoch whose lead has started: its keys, and its key pair to deal."""
    context = context_for(MANIFEST.params)
    keys = _epoch()
    own = keys[HOLDERS[0]].start(context, counter_randomness(HOLDERS[0]))
    assert own is not None
    return context, keys, own


def _record_deals(monkeypatch: pytest.MonkeyPatch) -> list[dict[int, dict[int, np.ndarray]]]:
    """What each deal() of EpochKeys makes, kept (a shallow copy: deal pops its own share)."""
    made: list[dict[int, dict[int, np.ndarray]]] = []

    def recording_deal(*args: Any, **kwargs: Any) -> dict[int, dict[int, np.ndarray]]:
        dealt = threshold.deal(*args, **kwargs)
        made.append(dict(dealt))
        return dealt

    monkeypatch.setattr(client_keys, "deal", recording_deal)
    return made


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
    context, keys, own = _lead_started()
    lead, member, third = HOLDERS
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
    context, keys, own = _lead_started()
    lead, member = HOLDERS[0], HOLDERS[1]
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


def _all_zero(shares: dict[int, dict[int, np.ndarray]]) -> bool:
    return all(not limb.any() for limbs in shares.values() for limb in limbs.values())


def test_dealing_keeps_my_share_and_wipes_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    made = _record_deals(monkeypatch)
    context, keys, own = _lead_started()
    lead = HOLDERS[0]
    keys[lead].deal(context, own)
    (dealt,) = made
    assert _all_zero({j: limbs for j, limbs in dealt.items() if j != 1})
    assert keys[lead].held_shares[1][1] is dealt[1] and not _all_zero({1: dealt[1]})
    keys[lead].wipe()
    assert _all_zero(dealt) and not keys[lead].held_shares and keys[lead].group_key is None


def test_dealing_wipes_every_share_when_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    made = _record_deals(monkeypatch)
    calls = itertools.count()

    def failing_encode(*args: Any, **kwargs: Any) -> bytes:
        if next(calls) == 1:
            raise FrameError("the second share does not encode")
        return wire.encode_key_share(*args, **kwargs)

    monkeypatch.setattr(client_keys, "encode_key_share", failing_encode)
    context, keys, own = _lead_started()
    lead = HOLDERS[0]
    with pytest.raises(FrameError, match="does not encode"):
        keys[lead].deal(context, own)
    (dealt,) = made
    assert len(dealt) == 3 and _all_zero(dealt)
    assert not keys[lead].held_shares and not keys[lead].dealt


def test_a_refused_share_is_wiped(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[dict[int, np.ndarray]] = []

    def recording_decode(*args: Any) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
        meta, limbs = wire.decode_key_share(*args)
        decoded.append(limbs)
        return meta, limbs

    monkeypatch.setattr(client_keys, "decode_key_share", recording_decode)
    context, keys, own = _lead_started()
    lead, member, third = HOLDERS
    fields = keys[lead].deal(context, own)
    with pytest.raises(MalformedMessage, match="Shamir share is for another sharing"):
        keys[member].take_delivery(context, lead, fields[third])
    assert len(decoded) == 1 and _all_zero({0: decoded[0]})
