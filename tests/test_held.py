"""HeldMessages: held messages stay in arrival order, in bounded memory (the rest in
temporary files that are deleted once drained), and none is lost when a file fails."""

from __future__ import annotations

import io
import os
import tempfile
from typing import IO

import pytest

from threshold_fl.errors import ParameterError
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


def test_invalid_budgets_are_refused() -> None:
    with pytest.raises(ParameterError, match="held memory"):
        HeldMessages(memory_bytes=-1)
    with pytest.raises(ParameterError, match="segments"):
        HeldMessages(segment_bytes=0)
