"""Who the aggregator blames at a deadline, and its bookkeeping of a joint decryption
by blind fusion: pure logic (no crypto, no network), then the aggregator itself at a
decryption deadline on a simulated network."""

from __future__ import annotations

import numpy as np
from protocol_harness import Network, build_manifest, run_until

from protocols.aggregator import AggregatorState
from protocols.deadlines import key_agreement_culprits, upload_culprits
from protocols.fusion import BlindDecryption, choose_set
from threshold_fl.crypto import context_for, threshold_params
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


CONTEXT = context_for(threshold_params(3))


def _decryption(members: tuple[PartyId, ...]) -> BlindDecryption:
    zeros = np.zeros((1, 1, 4), dtype=np.uint64)  # c0, c1 and shares: shapes only
    decryption = BlindDecryption(CONTEXT, "0" * 64, 4, zeros, zeros)
    decryption.request(members)  # one part, asked for
    return decryption


def test_a_decryption_set_is_t_live_holders_rotating_with_the_round() -> None:
    assert choose_set(ALL, ALL, 2, 0) == (A, B)
    assert choose_set(ALL, ALL, 2, 1) == (B, C)
    assert choose_set(ALL, ALL, 2, 2) == (A, C)  # sorted, whatever the offset
    assert choose_set(ALL, ALL, 3, 5) == ALL
    # Dropped holders are skipped; live parties that hold no key are never asked.
    assert choose_set(ALL, {A, C}, 2, 1) == (A, C)
    assert choose_set((A, B), {A, B, C}, 2, 0) == (A, B)
    assert choose_set(ALL, {B}, 2, 0) is None  # fewer than t: nobody can decrypt



def test_a_set_avoids_holders_whose_connection_is_lost_while_t_others_are_live() -> None:
    assert choose_set(ALL, ALL, 2, 2, avoid={C}) == (A, B)
    assert choose_set(ALL, {A, C}, 2, 1, avoid={C}) == (A, C)  # no others: still asked
    assert choose_set(ALL, {B}, 2, 0, avoid={C}) is None


def test_the_missing_shares_are_the_members_not_heard_from() -> None:
    decryption = _decryption((A, B))
    assert decryption.missing() == [A, B]
    decryption.shares[0][B] = decryption.c0
    assert decryption.missing() == [A]
    decryption.shares[0][A] = decryption.c0
    assert decryption.missing() == []


def test_a_set_fails_only_when_a_member_drops_before_its_share() -> None:
    decryption = _decryption((A, B))
    decryption.shares[0][A] = decryption.c0
    assert not decryption.failed({C})  # not a member: the set can still complete
    assert not decryption.failed({A})  # its share is in already
    assert decryption.failed({B})
    decryption.shares[0][B] = decryption.c0
    decryption.complete = True  # the result went out: nothing left to fail
    assert not decryption.failed({A, B})


def test_the_blame_moves_from_missing_shares_to_missing_confirmations() -> None:
    decryption = _decryption((A, B))
    decryption.shares[0][A] = decryption.c0
    assert decryption.culprits([A, B, C], []) == [B]  # C is not a member
    assert decryption.culprits([A, C], []) == []  # B is gone already
    decryption.complete = True
    assert decryption.culprits([A, B, C], [A]) == [B, C]


# -- the aggregator at a decryption deadline ------------------------------------------------
def test_a_decryption_deadline_blames_missing_shares_then_missing_confirmations() -> None:
    """N = 5, t = 3, one round.  Round 1's set is (client2, client3, client4); client3's
    share and client1's confirmation are lost.  Before the fused result goes out only
    client3 is to blame: client1 and client5 (not members) and client2 and client4
    (members that shared) wait for the result and owe nothing yet.  Then another set,
    (client2, client4, client5), decrypts, and once the result is out, whoever has not
    confirmed it is to blame: client1."""
    net = Network(build_manifest(5, threshold=3, length=12, rounds=1))
    aggregator = net.aggregator

    def lose(sender: str, recipient: str, kind: str, now: float) -> list[float]:
        lost = {("client3", "DecryptionShare"), ("client1", "RoundDone")}
        in_round_1 = sender in net.clients and net.clients[sender]._round == 1
        return [] if in_round_1 and (sender, kind) in lost else [0.0]

    net.faults = lose
    net.start()

    def quiet_in_decryption() -> bool:  # everything delivered, the deadline still ahead
        return aggregator.state is AggregatorState.ROUND_DECRYPTION and not net._queue

    assert run_until(net, quiet_in_decryption)
    decryption = aggregator._decryption
    assert decryption is not None and decryption.members == ("client2", "client3", "client4")
    assert not decryption.complete and sorted(decryption.shares[0]) == ["client2", "client4"]
    assert aggregator._culprits() == ["client3"]
    assert aggregator.waiting_for() == (
        "round 1 round decryption: waiting for 1 of 3 decryption shares (attempt 1): "
        "'client3'; another set as soon as a missing member's connection is reported lost, "
        "or at the deadline")

    assert run_until(net, lambda: bool(aggregator.dropped))
    assert set(aggregator.dropped) == {"client3"}
    assert "missed the round decryption deadline" in aggregator.dropped["client3"]
    assert aggregator.step[3] == 2  # the next set is asked in attempt 2

    assert run_until(net, quiet_in_decryption)
    decryption = aggregator._decryption
    assert decryption is not None and decryption.members == ("client2", "client4", "client5")
    assert decryption.complete and decryption.missing() == []
    assert aggregator._culprits() == ["client1"]  # the others confirmed
    assert aggregator.waiting_for().endswith(
        "waiting for 1 of 4 clients to confirm the fused result: 'client1'")

    net.run()
    assert set(aggregator.dropped) == {"client1", "client3"}
    assert all(net.finished(name) for name in ("client2", "client4", "client5"))
    (completed,) = net.completed_rounds("aggregator")  # every upload counts
    assert completed.contributors == ("client1", "client2", "client3", "client4", "client5")
