"""Stopping what a bench started, on every way out (an error, a deadline, Ctrl-C): a
process, or a process and everything it started (its process group)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

__all__ = ["stop", "stop_group"]

_GRACE_S = 5.0


def stop(process: subprocess.Popen[Any], grace_s: float = _GRACE_S) -> int:
    """Terminate *process* if it still runs, kill it if it has not exited *grace_s*
    later, reap it and close its pipes; its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
    code = process.wait()
    _close(process)
    return code


def stop_group(process: subprocess.Popen[Any], grace_s: float = _GRACE_S) -> int:
    """Like :func:`stop`, for a process started with ``start_new_session=True``, and
    every process in its group (those it started, unless they left it): SIGTERM to the
    group, SIGKILL to what is left of it *grace_s* later; the leader's exit status."""
    _signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(grace_s)
    _signal_group(process, signal.SIGKILL)  # the stragglers, the leader gone or not
    code = process.wait()
    _close(process)
    return code


def _signal_group(process: subprocess.Popen[Any], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)


def _close(process: subprocess.Popen[Any]) -> None:
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()
