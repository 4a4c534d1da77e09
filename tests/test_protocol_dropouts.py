"""The dropout matrix: one client vanishes at each stage and step, two vanish with
N=5, t=3, and below t the session aborts cleanly.  A client 'vanishes' just before
it would send the named message: from then on it neither sends nor receives."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from protocol_harness import (
    AGGREGATOR,
    TIMEOUTS,
    FaultRule,
    Network,
    build_manifest,
    crypto_bound,
)

from protocols import KeyAgreed, KeyRecovered, Mode, PartyDropped


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
    contributors = []
    for event in net.completed_rounds(AGGREGATOR):
        expected = net.expected_global(event.round, event.contributors)
        for name in survivors:
            model = next(r.model for r in net.completed_rounds(name) if r.round == event.round)
            assert model is not None
            assert np.abs(model - expected).max() <= crypto_bound(net)
        contributors.append(event.contributors)
    assert [e.round for e in net.completed_rounds(AGGREGATOR)] == [1, 2]
    assert all(net.finished(name) for name in survivors)
    return contributors


def dropped(net: Network) -> set[str]:
    return {e.party for e in net.events[AGGREGATOR] if isinstance(e, PartyDropped)}


def key_epochs(net: Network) -> int:
    return sum(isinstance(e, KeyAgreed) for e in net.events[AGGREGATOR])


ALL = {"client1", "client2", "client3"}


@pytest.mark.parametrize(
    ("victim", "kind", "round_", "epochs", "round1"),
    [
        # key agreement: restarted without the vanished client (lead or member)
        ("client1", "Hello", None, 1, ("client2", "client3")),
        ("client1", "PublicShare", None, 1, ("client2", "client3")),
        ("client2", "PublicShare", None, 1, ("client1", "client3")),
        ("client3", "KeyDelivery", None, 1, ("client1", "client2")),
        ("client2", "KeyConfirm", None, 1, ("client1", "client3")),
        # mask stage: survivors re-upload; its key is recovered for the decryption
        ("client2", "SensitivityUpload", None, 2, ("client1", "client3")),
        ("client2", "PartialShare", 0, 2, ("client1", "client3")),
        ("client2", "MaskConfirm", None, 2, ("client1", "client3")),
        # rounds: before uploading, after uploading (key recovered), after decrypting
        ("client2", "UpdateUpload", 1, 2, ("client1", "client3")),
        ("client2", "PartialShare", 1, 2, ("client1", "client2", "client3")),
        ("client2", "RoundDone", 1, 2, ("client1", "client2", "client3")),
        ("client1", "PartialShare", 1, 2, ("client1", "client2", "client3")),
    ],
)
def test_one_client_vanishes(victim: str, kind: str, round_: int | None, epochs: int,
                             round1: tuple[str, ...]) -> None:
    net = run_with_deaths(3, {victim}, kind, round_)
    assert net.aborted(AGGREGATOR) is None
    assert dropped(net) == {victim}
    contributors = assert_correct_rounds(net, ALL - {victim})
    assert contributors[0] == round1
    assert contributors[1] == tuple(sorted(ALL - {victim}))
    # A recovered key is exposed, so keys are always rotated before the next round.
    assert key_epochs(net) == epochs
    recovered = [e for name in net.clients for e in net.events[name]
                 if isinstance(e, KeyRecovered)]
    assert bool(recovered) == (kind in ("PartialShare", "SensitivityUpload", "UpdateUpload"))
    assert net.now < 10 * TIMEOUTS.decrypt_s


def test_two_of_five_vanish_after_uploading() -> None:
    victims = {"client2", "client4"}
    net = run_with_deaths(5, victims, "PartialShare", 1, threshold=3)
    assert dropped(net) == victims
    contributors = assert_correct_rounds(net, {"client1", "client3", "client5"})
    assert len(contributors[0]) == 5 and contributors[1] == ("client1", "client3", "client5")


def test_two_of_five_vanish_before_uploading() -> None:
    net = run_with_deaths(5, {"client1", "client5"}, "UpdateUpload", 1, threshold=3)
    contributors = assert_correct_rounds(net, {"client2", "client3", "client4"})
    assert contributors == [("client2", "client3", "client4")] * 2


@pytest.mark.parametrize("kind", ["PublicShare", "UpdateUpload", "PartialShare"])
def test_below_threshold_aborts_cleanly(kind: str) -> None:
    net = run_with_deaths(5, {"client2", "client4", "client5"}, kind, 1 if kind != "PublicShare"
                          else None, threshold=3)
    reason = net.aborted(AGGREGATOR)
    assert reason is not None and "fewer than the 3" in reason
    for name in ("client1", "client3"):
        assert net.aborted(name) == reason  # survivors are told why
    assert net.completed_rounds(AGGREGATOR) == [] or kind == "PartialShare"


@pytest.mark.parametrize("mode", [Mode.SINGLE_KEY, Mode.PLAINTEXT])
@pytest.mark.parametrize("kind", ["UpdateUpload", "RoundDone"])
def test_other_modes_go_on_with_survivors(mode: Mode, kind: str) -> None:
    net = run_with_deaths(3, {"client3"}, kind, 1, mode=mode)
    assert dropped(net) == {"client3"}
    contributors = assert_correct_rounds(net, {"client1", "client2"})
    assert key_epochs(net) == 1  # nothing to rotate: no key was recovered
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
    net = run_with_deaths(3, {AGGREGATOR}, "Aggregate", None)
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


def lost_partial(victim: str, round_: int, delays: list[float]) -> Callable[[Network], FaultRule]:
    def rule_for(net: Network) -> FaultRule:
        def rule(sender: str, recipient: str, kind: str, now: float) -> list[float]:
            if (sender, kind) == (victim, "PartialShare") and net.clients[victim]._round == round_:
                return delays
            return [0.0]

        return rule

    return rule_for


@pytest.mark.parametrize(("round_", "delays"), [(1, []), (2, [12.0]), (0, [])])
def test_a_lost_partial_is_recovered_although_its_sender_fused(round_: int,
                                                               delays: list[float]) -> None:
    """The sender fused the round and confirmed it; its own partial never went out.
    The survivors fuse a recovered partial, so what the dropped client confirmed must
    not count (this used to abort the session on a model-check mismatch)."""
    net = run_with_fault(lost_partial("client2", round_, delays))
    assert net.aborted(AGGREGATOR) is None and net.finished(AGGREGATOR)
    assert set(net.aggregator.dropped) == {"client2"}
    assert_correct_rounds(net, {"client1", "client3"})


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
    """A partial relayed just before the decryption deadline: the others need a moment
    to fuse and confirm, so the deadline is extended once instead of dropping them."""
    net = run_with_fault(lost_partial("client2", 1, [9.97]))
    assert net.finished(AGGREGATOR) and net.aggregator.dropped == {}
    assert_correct_rounds(net, ALL)
