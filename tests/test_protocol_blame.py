"""Who the aggregator blames at a deadline, and its bookkeeping of a relayed joint
decryption (pure logic: no crypto, no network)."""

from __future__ import annotations

from protocols.deadlines import key_agreement_culprits, upload_culprits
from protocols.relay import DecryptionRelay
from threshold_fl.identity import PartyId

A, B, C = PartyId("a"), PartyId("b"), PartyId("c")
ALL = (A, B, C)
DELIVERED = {(s, r) for s in ALL for r in ALL if s != r}


def test_key_agreement_blames_the_lead_alone_when_its_share_is_missing() -> None:
    assert key_agreement_culprits(ALL, [B], ALL, set(), ALL, []) == [A]


def test_key_agreement_blames_members_missing_shares_once_the_lead_shared() -> None:
    assert key_agreement_culprits(ALL, [A], ALL, set(), ALL, []) == [B, C]


def test_key_agreement_blames_whoever_owes_a_delivery() -> None:
    delivered = DELIVERED - {(B, C)}
    assert key_agreement_culprits(ALL, ALL, ALL, delivered, ALL, []) == [B]


def test_key_agreement_blames_the_unconfirmed_last() -> None:
    assert key_agreement_culprits(ALL, ALL, ALL, DELIVERED, ALL, [A, C]) == [B]
    assert key_agreement_culprits(ALL, ALL, ALL, DELIVERED, ALL, ALL) == []


def test_uploads_blame_whoever_was_expected_and_did_not_upload() -> None:
    assert upload_culprits(ALL, [B]) == [A, C]
    assert upload_culprits(ALL, ALL) == []


def test_only_the_holder_or_its_recoverer_may_send_its_partial() -> None:
    relay = DecryptionRelay("digest", running=True, recovering={C: A})
    assert relay.may_send(A, A, ALL)
    assert relay.may_send(A, C, ALL)
    assert not relay.may_send(B, C, ALL)
    assert not relay.may_send(B, A, ALL)
    assert not relay.may_send(A, PartyId("stranger"), ALL)


def test_recoveries_go_to_dropped_holders_without_a_live_recoverer() -> None:
    relay = DecryptionRelay("digest", running=True, relayed={B})
    assert relay.assign_recoveries(ALL, {C}, A) == [C]
    assert relay.recovering == {C: A}
    assert relay.assign_recoveries(ALL, {C}, A) == []  # A is still on it
    # A dropped too: its own partial and C's go to B; B's partial already went out.
    assert relay.assign_recoveries(ALL, {A, C}, B) == [A, C]
    assert relay.recovering == {A: B, C: B}


def test_no_recovery_without_a_joint_decryption() -> None:
    relay = DecryptionRelay("digest", running=False)
    assert relay.assign_recoveries(ALL, {C}, A) == []


def test_decryption_blames_missing_partials_then_missing_confirmations() -> None:
    relay = DecryptionRelay("digest", running=True, relayed={A}, recovering={C: B})
    # B owes its own partial and C's (as recoverer); C is gone already.
    assert relay.culprits(ALL, (A, B), []) == [B]
    relay.relayed |= {B, C}
    assert relay.culprits(ALL, (A, B), [A]) == [B]
    assert relay.culprits(ALL, (A, B), [A, B]) == []


def test_without_a_joint_decryption_only_confirmations_count() -> None:
    relay = DecryptionRelay("digest", running=False)
    assert relay.culprits(ALL, ALL, [A]) == [B, C]
