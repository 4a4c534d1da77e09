"""The send window's adaptive ack timeout (RFC 6298 per recipient, Karn's rule, timers
restarted from the head of the line), driven directly: no broker, no clock."""

from __future__ import annotations

import heapq

import pytest
from test_window import LARGE, SMALL, ack, send_next, transfer, window

from transports.window import InFlightFrame, SendWindow


def slow_samples(w: SendWindow, recipient: str, rtt: float, count: int) -> None:
    """``count`` frames to ``recipient``, one at a time, each acked ``rtt`` after its send."""
    now = 1000.0
    for _ in range(count):
        w.add(transfer(recipient))
        for _ in range(2):  # manifest and chunk
            frame = send_next(w, now)
            now += rtt
            assert ack(w, frame, now)


def test_samples_raise_the_timeout_of_a_slow_recipient() -> None:
    w = window(ack_timeout_s=1.0)
    assert w.ack_timeout("bob") == 1.0 and w.rtt("bob") is None  # no sample: the floor
    slow_samples(w, "bob", 8.0, 3)
    estimate = w.rtt("bob")
    assert estimate is not None and estimate.samples == 6 and estimate.largest == 8.0
    assert estimate.srtt == pytest.approx(8.0)
    assert 8.0 < w.ack_timeout("bob") < 60.0  # SRTT + 4 RTTVAR, RTTVAR decaying
    w.add(transfer("bob"))
    frame = send_next(w, 2000.0)
    assert frame.deadline == pytest.approx(2000.0 + w.ack_timeout("bob"))
    assert w.next_deadline() == frame.deadline > 2008.5  # an 8 s ack is no loss any more


def test_karns_rule_a_resent_frame_gives_no_sample() -> None:
    w = window(ack_timeout_s=1.0)
    w.add(transfer())
    manifest = send_next(w, 0.0)
    again = w.next_frame(1.0)
    assert again is manifest
    w.sent(again, 1.0)
    assert ack(w, manifest, 30.0)  # which send does it answer? neither counts
    assert w.rtt("bob") is None and w.ack_timeout("bob") == 2.0  # still backed off


def test_karns_rule_a_frame_made_due_by_kick_gives_no_sample() -> None:
    w = window(ack_timeout_s=1.0)
    w.add(transfer())
    manifest = send_next(w, 0.0)
    assert w.kick("bob", 40.0)  # bob was away; its ack may come before our resend
    assert ack(w, manifest, 40.5)
    assert w.rtt("bob") is None  # 40.5 s says nothing about the path


def run_link(w: SendWindow, recipient: str, frames_per_s: float, transfers: int) -> float:
    """Send ``transfers`` LARGE transfers over a link carrying ``frames_per_s`` frames a
    second in order, each acked when carried; returns the longest send-to-ack time."""
    for _ in range(transfers):
        w.add(transfer(recipient, LARGE))
    now, link_free, longest = 0.0, 0.0, 0.0
    acks: list[tuple[float, int, InFlightFrame, float]] = []  # (when, tie, frame, sent at)
    while not w.idle:
        while (frame := w.next_frame(now)) is not None:
            w.sent(frame, now)
            link_free = max(link_free, now) + 1 / frames_per_s
            heapq.heappush(acks, (link_free, id(frame), frame, now))
        deadline = w.next_deadline() or float("inf")
        if acks and acks[0][0] <= deadline:
            now, _, frame, sent_at = heapq.heappop(acks)
            longest = max(longest, now - sent_at)
            ack(w, frame, now)
        else:
            now = deadline
    return longest


def test_a_saturated_slow_link_triggers_no_resends() -> None:
    # 0.5 frames/s: the eighth frame of a window waits 16 s for the seven ahead of it,
    # far beyond the 5 s floor, yet nothing was lost: the timers restart on each ack.
    w = window(ack_timeout_s=5.0, max_tries=5)
    longest = run_link(w, "bob", frames_per_s=0.5, transfers=8)
    assert longest >= 15.0  # a fixed 5 s timer from each send would have resent
    assert w.retransmits == 0 and w.transfers_acked == 8 and w.transfers_failed == 0
    estimate = w.rtt("bob")
    # Samples run from each send: a full window queues 8 frames of 2 s each.
    assert estimate is not None and estimate.srtt == pytest.approx(16.0, rel=0.05)


def test_a_lost_frame_on_a_fast_link_is_resent_after_about_ack_timeout_s() -> None:
    w = window(ack_timeout_s=1.0)
    slow_samples(w, "bob", 0.01, 3)  # a fast recipient: SRTT 10 ms
    assert w.ack_timeout("bob") == 1.0
    w.add(transfer("bob", LARGE))
    frames = [send_next(w, 0.0) for _ in range(5)]
    assert ack(w, frames[0], 0.01)  # restarts the others' timers at 0.01
    for later in frames[2:]:  # frames[1] was lost; the ones behind it arrive
        assert ack(w, later, 0.02)
    assert frames[1].deadline == pytest.approx(1.01)  # not pushed back by later acks
    assert w.next_frame(1.0) is None
    assert w.next_frame(1.02) is frames[1] and w.retransmits == 1


def test_recipients_are_timed_independently_and_a_slow_one_delays_no_fast_one() -> None:
    w = window(ack_timeout_s=1.0, window=2)
    slow_samples(w, "bob", 10.0, 2)
    slow_samples(w, "carol", 0.02, 2)
    assert w.ack_timeout("bob") > 10.0 and w.ack_timeout("carol") == 1.0
    assert set(w.ack_timeouts()) == {"bob", "carol"}
    w.add(transfer("bob"))
    w.add(transfer("carol"))
    sent = [send_next(w, 0.0) for _ in range(4)]
    to_bob = [f for f in sent if f.transfer.recipient == "bob"]
    to_carol = [f for f in sent if f.transfer.recipient == "carol"]
    assert all(f.deadline == pytest.approx(1.0) for f in to_carol)  # lost: due at 1 s
    assert all(f.deadline > 10.0 for f in to_bob)
    assert w.next_frame(1.0) is to_carol[0]
    # An ack from bob restarts bob's later frames only.
    assert ack(w, to_bob[0], 0.5)
    assert to_carol[1].deadline == pytest.approx(1.0)


def test_the_timeout_is_capped_but_never_below_the_fixed_schedule() -> None:
    w = window(ack_timeout_s=1.0, max_ack_timeout_s=20.0, max_tries=5)
    slow_samples(w, "bob", 100.0, 1)
    assert w.ack_timeout("bob") == 20.0  # SRTT + 4 RTTVAR would be 300 s
    w.add(transfer("bob"))
    frame = send_next(w, 0.0)
    assert frame.deadline == 20.0
    w.sent(w.next_frame(20.0) or pytest.fail("no retransmission"), 20.0)
    assert frame.deadline == 40.0  # backed off, capped again
    high = window(ack_timeout_s=15.0, max_ack_timeout_s=20.0, max_tries=5)
    slow_samples(high, "bob", 100.0, 1)
    high.add(transfer("bob"))
    frame = send_next(high, 0.0)
    assert frame.deadline == 20.0
    for now in (20.0, 50.0):
        high.sent(high.next_frame(now) or pytest.fail("no retransmission"), now)
    assert frame.deadline == 50.0 + 60.0  # the fixed 15 * 2**2 exceeds the cap: it holds


def test_kick_and_resume_still_make_frames_due_at_once_with_a_long_timeout() -> None:
    w = window(ack_timeout_s=1.0)
    slow_samples(w, "bob", 30.0, 2)
    assert w.ack_timeout("bob") > 30.0
    w.add(transfer("bob", LARGE))
    frames = [send_next(w, 0.0) for _ in range(3)]
    w.resume(2.0)
    assert all(f.deadline == 2.0 for f in frames)
    assert ack(w, frames[0], 2.1)  # an ack before the resends must not postpone them
    assert frames[1].deadline == frames[2].deadline == 2.0
    assert w.next_frame(2.1) is frames[1]
    kicked = window(ack_timeout_s=1.0)
    slow_samples(kicked, "carol", 30.0, 2)
    kicked.add(transfer("carol", SMALL))
    manifest, chunk = send_next(kicked, 3.0), send_next(kicked, 3.0)
    assert manifest.deadline > 30.0
    assert kicked.kick("carol", 4.0) and manifest.deadline == chunk.deadline == 4.0
    assert kicked.next_frame(4.0) is manifest


# ------------------------------------------------------------------ Karn's algorithm


def test_a_sample_runs_from_the_frames_send_not_from_its_timer_restart() -> None:
    w = window(ack_timeout_s=10.0)
    w.add(transfer())
    manifest, chunk = send_next(w, 0.0), send_next(w, 0.0)
    assert ack(w, manifest, 5.0)  # restarts the chunk's timer at 5.0
    assert chunk.started == 5.0
    assert ack(w, chunk, 6.0)  # 6 s after its send, though 1 s after the restart
    estimate = w.rtt("bob")
    assert estimate is not None and estimate.samples == 2 and estimate.largest == 6.0
    assert estimate.srtt == pytest.approx(5.0 + (6.0 - 5.0) / 8)


def test_the_backed_off_timeout_stays_for_new_frames_until_a_valid_sample() -> None:
    w = window(ack_timeout_s=1.0, max_tries=4)
    w.add(transfer())
    manifest = send_next(w, 0.0)
    for now in (1.0, 3.0):  # two timeouts: 1 s, then 2 s
        w.sent(w.next_frame(now) or pytest.fail("no retransmission"), now)
    assert manifest.deadline == 3.0 + 4.0
    assert ack(w, manifest, 3.5)  # a resent frame's ack: no sample, so no reset
    assert w.ack_timeout("bob") == 4.0
    chunk = send_next(w, 4.0)  # a new frame, never resent: starts backed off
    assert chunk.tries == 1 and chunk.deadline == 4.0 + 4.0
    w.add(transfer("carol"))
    to_carol = send_next(w, 4.0)
    assert to_carol.deadline == 5.0  # other recipients are not backed off
    assert ack(w, to_carol, 4.1)
    assert ack(w, chunk, 4.2)  # a valid sample (0.2 s): the adaptive timeout is back
    assert w.ack_timeout("bob") == 1.0
    w.add(transfer())
    assert send_next(w, 5.0).deadline == 6.0


def test_the_kept_backoff_is_capped_at_the_last_try_of_the_fixed_schedule() -> None:
    w = window(ack_timeout_s=1.0, max_tries=3)
    for _ in range(3):  # each transfer's manifest times out as often as it may
        w.add(transfer())
        frame = send_next(w, 0.0)
        while frame.tries < 3:
            now = frame.deadline
            w.sent(w.next_frame(now) or pytest.fail("no retransmission"), now)
        assert ack(w, frame, frame.deadline - 0.1)
    assert w.ack_timeout("bob") == 4.0  # 1 s * 2 ** (max_tries - 1), not beyond


def test_kick_ends_the_kept_backoff() -> None:
    w = window(ack_timeout_s=1.0)
    w.add(transfer(plan=LARGE))
    first = send_next(w, 0.0)
    w.sent(w.next_frame(1.0) or pytest.fail("no retransmission"), 1.0)
    assert w.ack_timeout("bob") == 2.0
    assert w.kick("bob", 2.0)  # back after an absence: the old path says nothing
    assert w.ack_timeout("bob") == 1.0 and first.exponent == 0
