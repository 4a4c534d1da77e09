"""The dropout matrix: one client vanishes at each stage and step, two vanish with
N=5, t=3, and below t the session aborts cleanly.  A client 'vanishes' just before
it would send the named message: from then on it neither sends nor receives."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from protocol_harness import (
    AGGREGATOR,
    TIMEOUTS,
    FaultRule,
    Network,
    assert_models_match_fedavg,
    build_manifest,
    run_until,
)

from protocols import KeyAgreed, Mode, PartyDropped
from protocols.codec import decode_message
from protocols.messages import KeygenStart
from threshold_fl.identity import PartyId


def run_with_deaths(clients: int, victims: set[str], kind: str, round_: int | None = None, *,
                    mode: Mode = Mode.THRESHOLD, threshold: int | None = None) -> Network:
    manifest = build_manifest(clients, mode=mode, threshold=threshold, rounds=2, length=24)
    net = Network(manifest)

    def rule(sender: str, recipient: str, message_kind: str, now: float) -> list[float]:
        client = net.clients.get(sender)
        if sender in victims and message_kind == kind and (
            round_ is None or (client is not None and client._round == round_)
        ):
            net.kill(sender)
            return []
        return [0.0]

    net.faults = rule
    net.start()
    net.run()
    return net


def assert_correct_rounds(net: Network, survivors: set[str]) -> list[tuple[str, ...]]:
    contributors = assert_models_match_fedavg(net, survivors)
    assert [e.round for e in net.completed_rounds(AGGREGATOR)] == [1, 2]
    assert all(net.finished(name) for name in survivors)
    return contributors


def dropped(net: Network) -> set[str]:
    return {e.party for e in net.events[AGGREGATOR] if isinstance(e, PartyDropped)}


def key_epochs(net: Network) -> int:
    return sum(isinstance(e, KeyAgreed) for e in net.events[AGGREGATOR])


ALL = {"client1", "client2", "client3"}


# N = 3, t = 2: the decryption set is 2 live holders from an offset that moves with the
# round: (client1, client2) for the mask, (client2, client3) in round 1.
@pytest.mark.parametrize(
    ("victim", "kind", "round_", "round1"),
    [
        # key agreement: restarted without the vanished client (lead or member)
        ("client1", "Hello", None, ("client2", "client3")),
        ("client1", "PublicShare", None, ("client2", "client3")),
        ("client2", "PublicShare", None, ("client1", "client3")),
        ("client3", "KeyDelivery", None, ("client1", "client2")),
        ("client2", "KeyConfirm", None, ("client1", "client3")),
        # mask stage: survivors re-upload; another set decrypts
        ("client2", "SensitivityUpload", None, ("client1", "client3")),
        ("client2", "DecryptionShare", 0, ("client1", "client3")),
        ("client2", "MaskConfirm", None, ("client1", "client3")),
        # rounds: before uploading, a member before its share, after decrypting
        ("client2", "UpdateUpload", 1, ("client1", "client3")),
        ("client2", "DecryptionShare", 1, ("client1", "client2", "client3")),
        ("client3", "DecryptionShare", 1, ("client1", "client2", "client3")),
        ("client2", "RoundDone", 1, ("client1", "client2", "client3")),
    ],
)
def test_one_client_vanishes(victim: str, kind: str, round_: int | None,
                             round1: tuple[str, ...]) -> None:
    net = run_with_deaths(3, {victim}, kind, round_)
    assert net.aborted(AGGREGATOR) is None
    assert dropped(net) == {victim}
    contributors = assert_correct_rounds(net, ALL - {victim})
    assert contributors[0] == round1
    assert contributors[1] == tuple(sorted(ALL - {victim}))
    # Nobody's key is rebuilt, so a dropout needs no new key (key agreement itself
    # restarts when a holder vanishes during it).
    assert key_epochs(net) == 1
    assert net.now < 10 * TIMEOUTS.decrypt_s


def test_two_of_five_vanish_after_uploading() -> None:
    victims = {"client2", "client4"}  # both in round 1's set (client2, client3, client4)
    net = run_with_deaths(5, victims, "DecryptionShare", 1, threshold=3)
    assert dropped(net) == victims
    contributors = assert_correct_rounds(net, {"client1", "client3", "client5"})
    assert len(contributors[0]) == 5 and contributors[1] == ("client1", "client3", "client5")
    assert key_epochs(net) == 1


def test_a_member_of_the_retry_set_vanishes_too() -> None:
    """client2 vanishes in round 1's first set (client2, client3, client4); client5, asked
    only in the retry (client3, client4, client5), vanishes there: a third set decrypts."""
    victims = {"client2", "client5"}
    net = run_with_deaths(5, victims, "DecryptionShare", 1, threshold=3)
    assert dropped(net) == victims
    assert_correct_rounds(net, {"client1", "client3", "client4"})
    requests = [decode_message(data, net.manifest.directory) for _, kind, data in net.history
                if kind == "DecryptRequest"]
    assert sorted({m.header.attempt for m in requests if m.header.round == 1}) == [1, 2, 3]
    assert key_epochs(net) == 1


def test_clients_lost_together_in_key_agreement_restart_it_once() -> None:
    """client2 and client4 vanish on their first key delivery; both Last Wills arrive,
    then client2 is judged gone: the restart leaves out client4 too, so judging it gone
    later needs no third key agreement (at N = 50 of the scale bench, four dropouts in
    key agreement cost five key agreements)."""
    victims = ["client2", "client4"]
    net = Network(build_manifest(5, threshold=3, rounds=2, length=24))

    def rule(sender: str, recipient: str, kind: str, now: float) -> list[float]:
        if sender in victims and kind == "KeyDelivery":
            net.kill(sender)
            return []
        return [0.0]

    net.faults = rule
    net.start()
    assert run_until(net, lambda: net.dead >= set(victims))
    aggregator = net.aggregator
    for victim in victims:  # their Last Wills: connections lost, not yet judged
        net._apply(AGGREGATOR, aggregator.party_unreachable(PartyId(victim), net.now))
    net._apply(AGGREGATOR, aggregator.party_offline(PartyId(victims[0]), net.now))
    assert not run_until(net, lambda: False, until=net.now + 2.0)  # the grace time
    net._apply(AGGREGATOR, aggregator.party_offline(PartyId(victims[1]), net.now))
    net.run()
    starts = [decode_message(data, net.manifest.directory) for sender, kind, data
              in net.history if kind == "KeygenStart"]
    by_epoch = {m.header.epoch: m.body for m in starts if isinstance(m.body, KeygenStart)}
    assert sorted(by_epoch) == [1, 2]
    assert by_epoch[2].participants == ("client1", "client3", "client5")
    assert dropped(net) == set(victims)
    assert_correct_rounds(net, {"client1", "client3", "client5"})


def test_two_of_five_vanish_before_uploading() -> None:
    net = run_with_deaths(5, {"client1", "client5"}, "UpdateUpload", 1, threshold=3)
    contributors = assert_correct_rounds(net, {"client2", "client3", "client4"})
    assert contributors == [("client2", "client3", "client4")] * 2


@pytest.mark.parametrize("kind", ["PublicShare", "UpdateUpload", "DecryptionShare"])
def test_below_threshold_aborts_cleanly(kind: str) -> None:
    net = run_with_deaths(5, {"client2", "client4", "client5"}, kind, 1 if kind != "PublicShare"
                          else None, threshold=3)
    reason = net.aborted(AGGREGATOR)
    assert reason is not None and "fewer than the 3" in reason
    for name in ("client1", "client3"):
        assert net.aborted(name) == reason  # survivors are told why
    assert net.completed_rounds(AGGREGATOR) == [] or kind == "DecryptionShare"


@pytest.mark.parametrize("mode", [Mode.SINGLE_KEY, Mode.PLAINTEXT])
@pytest.mark.parametrize("kind", ["UpdateUpload", "RoundDone"])
def test_other_modes_go_on_with_survivors(mode: Mode, kind: str) -> None:
    net = run_with_deaths(3, {"client3"}, kind, 1, mode=mode)
    assert dropped(net) == {"client3"}
    contributors = assert_correct_rounds(net, {"client1", "client2"})
    assert key_epochs(net) == 1  # nothing to rotate
    assert contributors[1] == ("client1", "client2")


def test_key_authority_that_never_answers_aborts() -> None:
    manifest = build_manifest(3, mode=Mode.SINGLE_KEY)
    net = Network(manifest)
    net.kill("authority")
    net.start()
    net.run()
    reason = net.aborted(AGGREGATOR)
    assert reason is not None and "key authority" in reason


def test_aggregator_that_vanishes_leaves_clients_aborting_at_their_deadline() -> None:
    net = run_with_deaths(3, {AGGREGATOR}, "DecryptRequest", None)
    for name in net.clients:
        reason = net.aborted(name)
        assert reason is not None and "silent" in reason
    assert net.now <= TIMEOUTS.client_patience_s + 100


def run_with_fault(rule_for: Callable[[Network], FaultRule]) -> Network:
    net = Network(build_manifest(3, rounds=2, length=16))
    net.faults = rule_for(net)
    net.start()
    net.run()
    return net


def late_share(victim: str, round_: int, delays: list[float]) -> Callable[[Network], FaultRule]:
    def rule_for(net: Network) -> FaultRule:
        def rule(sender: str, recipient: str, kind: str, now: float) -> list[float]:
            if (sender, kind) == (victim, "DecryptionShare") and (
                    net.clients[victim]._round == round_):
                return delays
            return [0.0]

        return rule

    return rule_for


@pytest.mark.parametrize(("round_", "delays"), [(1, []), (1, [25.0]), (0, [25.0])])
def test_a_member_falsely_declared_dropped(round_: int, delays: list[float]) -> None:
    """client2's share is lost, or comes after the decryption deadline: the aggregator
    drops it although it is alive, and another set decrypts.  The late share of the old
    set is discarded, and what client2 confirmed does not count."""
    net = run_with_fault(late_share("client2", round_, delays))
    assert net.aborted(AGGREGATOR) is None and net.finished(AGGREGATOR)
    assert set(net.aggregator.dropped) == {"client2"}
    assert_correct_rounds(net, {"client1", "client3"})
    assert key_epochs(net) == 1
    if delays:
        late = [reason for name, reason in net.rejections
                if name == AGGREGATOR and reason.startswith("DecryptionShare from 'client2'")]
        assert late, "the late share of the replaced set should have been refused"


@pytest.mark.parametrize("delay", [0.05, 9.95])
def test_a_key_confirmation_that_overtakes_a_key_share_counts(delay: float) -> None:
    """A client's KeyConfirm may reach the aggregator before that client's own
    PublicShare; a reordering, or progress just before the deadline, drops nobody."""
    def rule_for(net: Network) -> FaultRule:
        def rule(sender: str, recipient: str, kind: str, now: float) -> list[float]:
            return [delay] if (sender, kind) == ("client2", "PublicShare") else [0.0]

        return rule

    net = run_with_fault(rule_for)
    assert net.finished(AGGREGATOR) and net.aggregator.dropped == {}
    assert_correct_rounds(net, ALL)


def test_progress_just_before_a_deadline_does_not_blame_the_punctual() -> None:
    """A share that completes the set just before the decryption deadline: the others
    need a moment to decode and confirm, so the deadline is extended once instead of
    dropping them."""
    net = run_with_fault(late_share("client2", 1, [9.97]))
    assert net.finished(AGGREGATOR) and net.aggregator.dropped == {}
    assert_correct_rounds(net, ALL)
