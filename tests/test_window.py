"""The sans-I/O send window (transports.window), driven directly: no broker, no clock."""

from __future__ import annotations

import itertools

import pytest
from test_layering import REPO, violations

from threshold_fl.errors import ParameterError
from transports.frames import MANIFEST_SEQ, ChunkPlan, Transfer
from transports.window import InFlightFrame, OutgoingTransfer, SendWindow

MiB = 1 << 20
SMALL = ChunkPlan.of(b"hello")  # one chunk: two frames with the manifest
LARGE = ChunkPlan.of(bytes(3 * MiB + 1))  # four 1 MiB chunks: five frames
_ids = itertools.count(1)


def transfer(recipient: str = "bob", plan: ChunkPlan = SMALL) -> Transfer:
    return plan.transfer(sender="alice", recipient=recipient, channel="s1",
                         transfer_id=next(_ids).to_bytes(16, "big"), sign=lambda _: b"sig")


def window(**options: float) -> SendWindow:
    settings: dict[str, float] = {"window": 8, "ack_timeout_s": 1.0, "backoff": 2.0,
                                  "max_tries": 3, "max_ack_timeout_s": 60.0, **options}
    return SendWindow(window=int(settings["window"]), ack_timeout_s=settings["ack_timeout_s"],
                      backoff=settings["backoff"], max_tries=int(settings["max_tries"]),
                      max_ack_timeout_s=settings["max_ack_timeout_s"])


def send_next(w: SendWindow, now: float = 0.0) -> InFlightFrame:
    """What the transport does per frame: take it, publish it (here: nothing), say so."""
    frame = w.next_frame(now)
    assert frame is not None, "the window offered no frame"
    w.sent(frame, now)
    return frame


def ack(w: SendWindow, frame: InFlightFrame, now: float = 0.0) -> bool:
    return w.ack(frame.transfer.transfer.transfer_id, frame.seq, now)


# ------------------------------------------------------------------ order and release


def test_manifest_first_then_chunks_in_order_and_released_once_all_went_out() -> None:
    w = window()
    out = w.add(transfer(plan=LARGE))
    frames = []
    while (frame := w.next_frame(0.0)) is not None:
        assert w.take_released() == []  # not before the last frame went out
        w.sent(frame, 0.0)
        frames.append(frame)
    assert [f.seq for f in frames] == [MANIFEST_SEQ, 0, 1, 2, 3]
    assert [f.last for f in frames] == [False] * 4 + [True]
    assert w.take_released() == [out] and out.released and out.all_handed_out
    assert w.take_released() == []  # each release is reported once
    assert not out.acked and w.in_flight() == 5


def test_a_transfer_is_acked_once_every_frame_is() -> None:
    w = window()
    out = w.add(transfer())
    manifest, chunk = send_next(w), send_next(w)
    assert ack(w, chunk) and out.unacked == 1
    assert ack(w, manifest) and out.unacked == 0 and out.acked
    assert w.transfers_acked == 1  # counted once, when its last frame was acked
    assert w.idle and w.next_deadline() is None


# ------------------------------------------------------------------ the window


def test_the_window_bounds_unacked_frames_per_recipient() -> None:
    w = window(window=2)
    w.add(transfer("bob", LARGE))
    first, second = send_next(w), send_next(w)
    assert w.next_frame(0.0) is None  # two unacked: bob's window is full
    assert w.in_flight("bob") == 2
    assert ack(w, first)
    third = send_next(w)
    assert third.seq == 1 and w.next_frame(0.0) is None
    assert ack(w, second) and ack(w, third)
    assert w.in_flight("bob") == 0 and send_next(w).seq == 2


def test_a_silent_recipient_does_not_stall_the_others() -> None:
    w = window(window=2)
    ghost = w.add(transfer("ghost", LARGE))
    send_next(w), send_next(w)  # ghost never acks: its window stays full
    bob = w.add(transfer("bob"))
    assert [send_next(w).transfer for _ in range(2)] == [bob, bob]
    assert w.take_released() == [bob] and not ghost.released
    assert w.in_flight("ghost") == 2 and w.in_flight() == 4


# ------------------------------------------------------------------ acks


def test_duplicate_and_unknown_acks_are_ignored() -> None:
    w = window()
    out = w.add(transfer())
    manifest = send_next(w)
    assert ack(w, manifest)
    assert not ack(w, manifest)  # duplicate (a retransmission acked twice)
    assert not w.ack(bytes(16), MANIFEST_SEQ, 0.0)  # a transfer we never sent
    assert not w.ack(out.transfer.transfer_id, 7, 0.0)  # a chunk it does not have
    assert out.unacked == 1 and w.transfers_acked == 0


def test_an_ack_arriving_while_the_frame_is_being_published_starts_no_timer() -> None:
    w = window()
    w.add(transfer())
    frame = w.next_frame(0.0)
    assert frame is not None and w.next_deadline() is None  # being published: no timer
    assert ack(w, frame)  # the ack overtook the end of our publish
    w.sent(frame, 0.0)
    assert w.next_deadline() is None and w.in_flight() == 0


# ------------------------------------------------------------------ retransmission


def test_unacked_frames_are_resent_after_a_growing_deadline() -> None:
    w = window(ack_timeout_s=1.0, backoff=2.0, max_tries=5)
    w.add(transfer())
    manifest, _ = send_next(w, 10.0), send_next(w, 10.0)
    assert w.next_deadline() == 11.0
    assert w.next_frame(10.9) is None  # not due yet
    again = w.next_frame(11.0)
    assert again is manifest and again.tries == 2 and w.retransmits == 1
    w.sent(again, 11.0)
    assert manifest.deadline == 13.0  # ack_timeout_s * backoff ** (tries - 1)


def test_a_due_retransmission_goes_before_new_frames() -> None:
    w = window()
    w.add(transfer("bob"))
    manifest = send_next(w, 0.0)
    w.add(transfer("carol"))
    assert w.next_frame(5.0) is manifest  # bob's manifest is due; carol's waits


def test_a_transfer_is_given_up_after_max_tries() -> None:
    w = window(window=2, ack_timeout_s=1.0, backoff=1.0, max_tries=2)
    out = w.add(transfer(plan=LARGE))
    send_next(w, 0.0), send_next(w, 0.0)
    w.sent(w.next_frame(1.0) or pytest.fail("no retransmission"), 1.0)
    w.sent(w.next_frame(1.0) or pytest.fail("no retransmission"), 1.0)
    assert w.take_given_up() == []
    assert w.next_frame(2.0) is None  # both frames reached max_tries: the transfer ends
    assert w.take_given_up() == [out]
    assert out.failure == "manifest unacked after 2 tries" and w.transfers_failed == 1
    assert w.take_released() == [out]  # its sender must not wait any longer
    assert w.idle  # its unsent chunks are dropped too
    assert not w.ack(out.transfer.transfer_id, MANIFEST_SEQ, 9.0)  # a late ack changes nothing


# ------------------------------------------------------------------ busy recipients


def busy(w: SendWindow, frame: InFlightFrame, now: float) -> bool:
    return w.busy(frame.transfer.transfer.transfer_id, frame.seq, now)


def test_a_busy_recipient_is_probed_without_tries_counted_for_as_long_as_it_is_busy() -> None:
    w = window(ack_timeout_s=1.0, max_tries=2, max_ack_timeout_s=30.0, window=2)
    out = w.add(transfer())
    manifest, chunk = send_next(w, 0.0), send_next(w, 0.0)
    assert ack(w, manifest, 0.1)
    now = 0.1
    for _ in range(10):  # 300 s busy; without busy answers it gave up after 3 s
        assert busy(w, chunk, now)
        assert chunk.tries == 0 and chunk.deadline == now + 30.0
        assert w.next_frame(now + 29.0) is None
        now += 30.0
        w.sent(w.next_frame(now) or pytest.fail("no probe"), now)  # the probe
    assert w.take_given_up() == [] and w.in_flight("bob") == 1  # its slot stays taken
    assert w.ack_timeout("bob") == 1.0  # probes are no losses: no backoff
    assert ack(w, chunk, now + 0.5)  # delivered at last
    assert out.acked and w.transfers_acked == 1 and w.transfers_failed == 0
    assert w.busy_answers == 10 and w.retransmits == 10


def test_a_busy_recipient_that_dies_is_given_up_after_max_tries_more_sends() -> None:
    w = window(ack_timeout_s=1.0, max_tries=3, max_ack_timeout_s=30.0)
    w.add(transfer())
    manifest, chunk = send_next(w, 0.0), send_next(w, 0.0)
    assert ack(w, chunk, 0.1) and busy(w, manifest, 0.1)
    for now in (30.1, 31.1, 33.1):  # the probe, then the usual 1 s and 2 s timeouts (4 s next)
        assert w.next_frame(now - 0.01) is None
        w.sent(w.next_frame(now) or pytest.fail("no resend"), now)
    assert manifest.tries == 3 and w.next_frame(37.0) is None and w.next_frame(37.1) is None
    assert [out.failure for out in w.take_given_up()] == ["manifest unacked after 3 tries"]


def test_busy_for_nothing_awaited_is_ignored_and_one_during_publish_starts_no_timer() -> None:
    w = window()
    w.add(transfer())
    manifest = w.next_frame(0.0) or pytest.fail("no frame")
    assert not w.busy(b"\0" * 16, 0, 0.0)
    assert busy(w, manifest, 0.0)  # it overtook the publish
    assert manifest.deadline == float("inf")
    w.sent(manifest, 0.5)
    assert manifest.deadline == 1.5 and manifest.tries == 0


# ------------------------------------------------------------------ presence and outages


def test_an_offline_recipient_releases_its_senders_but_keeps_its_frames() -> None:
    w = window(window=1)
    gone = w.add(transfer("carol", LARGE))
    other = w.add(transfer("bob", LARGE))
    send_next(w)
    w.release("carol")
    assert w.take_released() == [gone] and not other.released
    assert w.in_flight("carol") == 1  # kept: retried if carol comes back
    w.release("carol")
    assert w.take_released() == []  # released once


def test_a_returning_recipient_gets_its_frames_again_at_once_with_fresh_tries() -> None:
    w = window(max_tries=2)
    w.add(transfer("carol"))
    manifest, _ = send_next(w, 0.0), send_next(w, 0.0)
    w.sent(w.next_frame(1.0) or pytest.fail("no retransmission"), 1.0)
    assert manifest.tries == 2  # one more missed deadline would give up
    assert not w.kick("bob", 1.5)  # nothing in flight to bob
    assert w.kick("carol", 1.5)
    assert manifest.tries == 1 and w.next_deadline() == 1.5
    assert w.next_frame(1.5) is manifest and w.take_given_up() == []


def test_resume_makes_every_unacked_frame_due_even_one_cut_mid_publish() -> None:
    w = window()
    w.add(transfer())
    manifest = send_next(w, 0.0)
    cut = w.next_frame(0.0)  # the connection dropped during this publish: no sent()
    assert cut is not None and w.next_deadline() == 1.0
    w.resume(0.2)
    assert manifest.deadline == cut.deadline == 0.2
    assert w.next_frame(0.2) is manifest and w.next_frame(0.2) is cut


def test_abort_forgets_everything_and_releases_every_sender() -> None:
    w = window(window=1)
    outs = [w.add(transfer("bob", LARGE)), w.add(transfer("carol")), w.add(transfer("bob"))]
    send_next(w), send_next(w)
    w.abort()
    assert w.idle and w.next_frame(0.0) is None
    assert sorted(map(id, w.take_released())) == sorted(map(id, outs))
    assert all(out.failure is None for out in outs)  # aborted, not given up
    assert w.take_given_up() == []


def test_invalid_settings_are_refused() -> None:
    for bad in ({"window": 0}, {"max_tries": 0}, {"ack_timeout_s": 0.0}, {"backoff": 0.5},
                {"max_ack_timeout_s": 0.0}):
        with pytest.raises(ParameterError, match="invalid send window"):
            window(**bad)


def test_outgoing_transfer_counts_the_manifest_as_a_frame() -> None:
    out = OutgoingTransfer(transfer(plan=LARGE))
    assert out.frames == 5 and out.unacked == 5 and out.recipient == "bob"


def test_the_window_module_stays_sans_io() -> None:
    # The layering rules cover packages; this module promises more: no I/O, no clock,
    # no logging, no event loop (what it decided is taken by the caller instead).
    source = (REPO / "transports" / "window.py").read_text(encoding="utf-8")
    forbidden = ("asyncio", "socket", "aiomqtt", "paho", "time", "logging", "threading",
                 "random", "secrets", "os")
    assert violations(source, forbidden, "transports.window") == []
    assert violations("import time\n", forbidden, "transports.window")  # the check can fail
