"""Logging that whoever reaches a party cannot flood: rate limits per sender and reason.

Anyone who may publish to the broker can make every party refuse frames, so a log line
per refusal would let them grow every party's log at will.  :class:`RateLimitedLog`
writes the first ``burst`` lines per (sender, reason) in each period of ``period_s``,
counts the rest, and writes one summary line per key once its period has ended.  Sender
names are attacker-chosen: they are quoted and cut (:func:`printable`), and at most
:data:`MAX_KEYS` keys are tracked, further senders sharing one key.  Like the rest of
the transport's bookkeeping it reads no clock: callers pass ``now`` (never decreasing).

:class:`Outage` keeps a lost connection's retries from doing the same: it schedules
them (capped exponential backoff, give-up) and logs one warning per outage.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

__all__ = ["MAX_KEYS", "OTHERS", "Outage", "RateLimitedLog", "printable"]

#: (sender, reason) pairs tracked at once; beyond, senders share the key :data:`OTHERS`.
MAX_KEYS = 256
OTHERS = "other senders"
_NAME_LIMIT = 64


def printable(name: str, limit: int = _NAME_LIMIT) -> str:
    """*name* quoted, escaped and cut to *limit* characters: safe in a log line."""
    return repr(name[:limit]) + ("..." if len(name) > limit else "")


@dataclass
class _Period:
    start: float
    written: int = 0
    suppressed: int = 0


class RateLimitedLog:
    """See the module docstring."""

    def __init__(self, logger: logging.Logger, *, level: int = logging.WARNING,
                 burst: int = 3, period_s: float = 60.0, prefix: str = "") -> None:
        if burst < 1 or not period_s > 0:
            raise ValueError(f"need burst >= 1 and period_s > 0, got {burst}, {period_s}")
        self._logger, self._level, self._prefix = logger, level, prefix  # prefix: every line
        self._burst, self._period_s = burst, period_s
        self._periods: dict[tuple[str, str], _Period] = {}  # in order of start

    def log(self, sender: str, reason: str, message: str, now: float) -> bool:
        """Log *message* unless (sender, reason) already logged *burst* times in the
        current period; returns whether it was written.  Suppressed ones are counted."""
        self.flush(now)
        key = self._key(sender, reason)
        period = self._periods.setdefault(key, _Period(now))
        if period.written >= self._burst:
            period.suppressed += 1
            return False
        period.written += 1
        self._logger.log(self._level, "%s%s", self._prefix, message)
        return True

    def flush(self, now: float, *, final: bool = False) -> None:
        """For each key whose period has ended with suppressed messages, write one summary
        line: '<N> more <reason> from <sender> suppressed in the last <P> s', and start a
        new period.  ``final`` (at shutdown) ends the periods still running too."""
        while self._periods:
            key, period = next(iter(self._periods.items()))
            if not final and now - period.start < self._period_s:
                break  # the others started later still
            del self._periods[key]  # the key's next line starts its new period
            if period.suppressed:
                sender, reason = key
                self._logger.log(self._level, "%s%d more %s from %s suppressed in the last %g s",
                                 self._prefix, period.suppressed, reason, sender,
                                 round(max(now - period.start, 0.0), 1))

    def _key(self, sender: str, reason: str) -> tuple[str, str]:
        key = (printable(sender), reason)
        if key not in self._periods and len(self._periods) >= MAX_KEYS:
            return (OTHERS, reason)  # invented names must not grow the table
        return key


class Outage:
    """Backoff for a lost connection, and what to log about it; reads no clock either.

    Attempts wait ``initial_s``, doubling up to ``max_s``; once the connection has been
    down for ``give_up_after`` seconds, :meth:`failed` says to give up.  The first failed
    attempt of an outage is a WARNING saying how long retrying goes on, further ones are
    DEBUG and the recovery INFO: one line per attempt at most, one warning per outage.
    """

    def __init__(self, logger: logging.Logger, what: str, *, initial_s: float, max_s: float,
                 give_up_after: float, now: float) -> None:
        self._logger, self._what = logger, what  # `what` prefixes every line
        self._initial_s, self._max_s, self._give_up_after = initial_s, max_s, give_up_after
        self._delay, self._since, self._attempts = initial_s, now, 0  # down until connected

    def connected(self, now: float) -> None:
        if self._attempts:
            self._logger.info("%s: connected after %.1f s and %d failed attempt(s)",
                              self._what, now - self._since, self._attempts)
        self._delay, self._since, self._attempts = self._initial_s, math.inf, 0

    def failed(self, error: str, now: float) -> float | None:
        """An attempt failed or the connection dropped: the seconds to wait before the
        next attempt, or None when it has been down for ``give_up_after``: give up."""
        self._since = min(self._since, now)  # the outage began now, or earlier
        left = self._since + self._give_up_after - now
        if left <= 0:
            return None
        wait, self._delay = min(self._delay, left), min(self._delay * 2, self._max_s)
        self._attempts += 1
        if self._attempts == 1:
            self._logger.warning("%s: %s; retrying for up to %g s (give_up_after)",
                                 self._what, error, self._give_up_after)
        else:
            self._logger.debug("%s: attempt %d failed: %s; next in %.2g s",
                               self._what, self._attempts, error, wait)
        return wait
