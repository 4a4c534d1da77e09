"""HeldMessages: held messages stay in arrival order, in bounded memory (the rest in
temporary files that are deleted once drained), and none is lost when a file fails."""

from __future__ import annotations

import io
import os
import tempfile
from typing import IO

import pytest

from threshold_fl.errors import ParameterError, TransportError
from transports.held import HeldMessage, HeldMessages


def message(n: int, size: int) -> HeldMessage:
    return HeldMessage(f"client-{n % 7}", os.urandom(size), f"ack/client-{n % 7}",
                       n.to_bytes(4, "big"))


class Files:
    """Temporary files that remember whether they were closed."""

    def __init__(self) -> None:
        self.made: list[IO[bytes]] = []

    def __call__(self) -> IO[bytes]:
        file = tempfile.TemporaryFile()  # noqa: SIM115 (HeldMessages closes it)
        self.made.append(file)
        return file

    @property
    def open(self) -> int:
        return sum(not file.closed for file in self.made)


def test_messages_come_back_in_order_with_memory_bounded() -> None:
    files = Files()
    held = HeldMessages(memory_bytes=10_000, segment_bytes=30_000, spill_file=files)
    sent = [message(n, 3_000 + 17 * n) for n in range(40)]
    for item in sent[:30]:
        assert held.hold(item) is None
        assert held.in_memory <= 10_000
    assert held.spilled == 30 - 3  # three fit in memory (3,000 + 3,017 + 3,034 bytes)
    assert all(held.holds(item.ack) for item in sent[:30])
    out = [held.pop() for _ in range(20)]
    for item in sent[30:]:  # room in memory again, while older ones are still in files
        held.hold(item)
        assert held.in_memory <= 10_000
    out += [held.pop() for _ in range(len(held))]
    assert out == sent
    assert held.in_memory == 0 and not held.holds(sent[0].ack)


def test_drained_spill_files_are_deleted_so_disk_use_follows_what_is_held() -> None:
    files = Files()
    held = HeldMessages(memory_bytes=0, segment_bytes=5_000, spill_file=files)
    for n in range(20):  # 20 x 1,000 bytes: four files of five messages
        held.hold(message(n, 1_000))
    assert held.files == files.open == 4
    for _ in range(11):
        held.pop()
    assert held.files == files.open == 2  # the two drained files are gone
    while len(held):
        held.pop()
    assert held.files == files.open == 1  # the last one is kept, rewritten from its start
    held.hold(message(99, 1_000))
    assert files.made[-1].seek(0, io.SEEK_END) == 5_000  # reused, not appended to
    held.close()
    assert files.open == 0 and len(held) == 0


def test_a_failing_spill_file_keeps_the_message_in_memory() -> None:
    def broken() -> IO[bytes]:
        raise OSError(28, "No space left on device")

    held = HeldMessages(memory_bytes=1_000, spill_file=broken)
    first, second = message(1, 800), message(2, 800)
    assert held.hold(first) is None
    failure = held.hold(second)
    assert failure is not None and "No space left" in failure and "TMPDIR" in failure
    assert held.in_memory == 1_600 and held.spilled == 0
    assert [held.pop(), held.pop()] == [first, second]


def test_a_full_disk_behind_a_buffered_file_is_seen_at_write_time() -> None:
    # /dev/full takes a buffered write and fails its flush: the message must not count
    # as spilled (and later read back as garbage); it stays in memory instead.
    files: list[IO[bytes]] = []

    def full_disk() -> IO[bytes]:
        files.append(open("/dev/full", "r+b"))  # noqa: SIM115 (HeldMessages closes it)
        return files[-1]

    held = HeldMessages(memory_bytes=0, spill_file=full_disk)
    first, second = message(1, 500), message(2, 500)
    for item in (first, second):
        failure = held.hold(item)
        assert failure is not None and "No space left" in failure
    assert held.spilled == 0 and held.in_memory == 1_000
    assert held.files == 0 and all(file.closed for file in files)  # none left half-written
    assert [held.pop(), held.pop()] == [first, second]


class FailingReads:
    """Temporary files whose reads fail while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = False

    def __call__(self) -> IO[bytes]:
        file = tempfile.TemporaryFile()  # noqa: SIM115 (HeldMessages closes it)
        read = file.read

        def flaky(size: int | None = -1) -> bytes:
            if self.failing:
                raise OSError(5, "Input/output error")
            return read(size)

        file.read = flaky  # type: ignore[method-assign]
        return file


def test_a_failed_read_back_keeps_the_message_held() -> None:
    files = FailingReads()
    held = HeldMessages(memory_bytes=0, spill_file=files)
    first, second = message(1, 300), message(2, 300)
    held.hold(first)
    held.hold(second)
    files.failing = True
    with pytest.raises(TransportError, match="Input/output error"):
        held.pop()
    assert len(held) == 2 and held.holds(first.ack)  # its ack is still withheld
    files.failing = False
    assert [held.pop(), held.pop()] == [first, second]


def test_close_deletes_everything_and_can_be_repeated() -> None:
    files = Files()
    held = HeldMessages(memory_bytes=500, spill_file=files)
    sent = [message(n, 400) for n in range(3)]
    for item in sent:
        held.hold(item)
    assert held.files == 1 and held.in_memory == 400
    for _ in range(2):
        held.close()
        assert len(held) == 0 and held.in_memory == 0 and held.files == files.open == 0
        assert not held.holds(sent[0].ack)


def test_what_is_held_is_counted_per_sender_and_in_bytes_memory_and_files_together() -> None:
    held = HeldMessages(memory_bytes=1_000, spill_file=Files())
    sent = [message(n, 600) for n in (0, 7, 1)]  # client-0 twice, then client-1
    for item in sent:
        held.hold(item)
    assert held.bytes == 1_800 and held.in_memory == 600  # two of them in a file
    assert (held.count("client-0"), held.count("client-1"), held.count("client-2")) == (2, 1, 0)
    held.pop()
    assert held.bytes == 1_200 and held.count("client-0") == 1
    held.close()
    assert held.bytes == 0 and held.count("client-1") == 0


def test_invalid_budgets_are_refused() -> None:
    with pytest.raises(ParameterError, match="held memory"):
        HeldMessages(memory_bytes=-1)
    with pytest.raises(ParameterError, match="segments"):
        HeldMessages(segment_bytes=0)
