"""Progress lines that say what a party waits for, without flooding.

A party that waits says what it waits for: :class:`WaitReporter` turns the state
machine's ``waiting_for()`` text into lines for a ``say`` callback.  A new text is said
at once (several changes within ``min_gap_s`` are coalesced into the latest one), and an
unchanged one is repeated every ``repeat_s`` with how long it has lasted.  It reads no
clock: the node passes ``now`` in and asks :meth:`due` when to call :meth:`tick`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["WaitReporter"]


class WaitReporter:
    """See the module docstring."""

    def __init__(self, say: Callable[[str], None], *, min_gap_s: float = 2.0,
                 repeat_s: float = 30.0) -> None:
        if not 0 <= min_gap_s <= repeat_s:
            raise ValueError(f"need 0 <= min_gap_s <= repeat_s, got {min_gap_s}, {repeat_s}")
        self._say, self._min_gap_s, self._repeat_s = say, min_gap_s, repeat_s
        self._text = ""  # the latest text
        self._since = 0.0  # when the latest text first appeared
        self._said = ""  # the text last said
        self._said_at = -math.inf

    def update(self, text: str, now: float) -> None:
        """The party's current wait is *text*: say it if it is new and a line is due."""
        if text != self._text:
            self._text, self._since = text, now
        self.tick(now)

    def due(self) -> float | None:
        """When :meth:`tick` has something to say (None: nothing to report yet)."""
        if not self._text:
            return None
        if self._text != self._said:
            return self._said_at + self._min_gap_s
        return self._said_at + self._repeat_s

    def tick(self, now: float) -> None:
        """Say the pending new text, or repeat an old one that has lasted."""
        due = self.due()
        if due is None or now < due:
            return
        if self._text != self._said:
            line = self._text
        else:
            line = f"{self._text} (still, after {now - self._since:.0f} s)"
        self._said, self._said_at = self._text, now
        self._say(line)
