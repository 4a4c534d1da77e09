"""Tests for threshold_fl.heap: freed heap pages go back to the operating system."""

from __future__ import annotations

import platform

import pytest

from threshold_fl.heap import release_freed_heap


def _rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_freed_chunks_below_a_live_one_are_returned() -> None:
    # 200 MiB of 32 KiB chunks (below glibc's mmap threshold: they live in the heap),
    # the last kept alive so that glibc cannot shrink the heap from its top
    chunks = [bytearray(b"\x01" * 32768) for _ in range(6400)]
    kept = chunks.pop()
    chunks.clear()
    before = _rss_mib()
    assert release_freed_heap()
    assert before - _rss_mib() > 100, "malloc_trim returned less than half the freed chunks"
    assert kept[0] == 1
