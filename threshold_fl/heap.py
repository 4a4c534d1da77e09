"""Give the C heap's free pages back to the operating system after a large stage.

A stage of a BERT-size session (a mask agreement, a round) makes and frees millions of
small native buffers (OpenFHE polynomials, message parts).  glibc keeps freed chunks
in its heap for reuse and returns only the top of it, so after the mask stage each
party still held 4-5x its live memory (at 10M values a client sat at 584 MiB, 202
once trimmed): the next stage's numpy arrays, which glibc maps on their own, came on
top.  ``malloc_trim(0)`` releases every free page of the heap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

__all__ = ["release_freed_heap"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim: Callable[[int], int] = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_freed_heap() -> bool:
    """Return the heap's free pages to the OS; True if the C library could (glibc).

    It takes a walk over the heap (milliseconds for gigabytes), so call it when a stage
    ends, not per message.
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
