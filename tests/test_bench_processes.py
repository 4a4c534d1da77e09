"""Benches leave no process behind: real processes, stopped on a deadline or a timeout.

``threshold_fl.bench.processes`` stops a process (SIGTERM, then SIGKILL) or a whole
process group; ``bench large`` stops parties still running at its deadline, and ``bench
network`` a federation that outlasts ``--timeout``, the processes it started included.
The namespace pair's veths are told apart whatever their tags, and memory figures
come from one reader of ``/proc/<pid>/status``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from threshold_fl.bench.large import _collect, _exit_codes
from threshold_fl.bench.netns import NamespacePair
from threshold_fl.bench.network import _run_in
from threshold_fl.bench.output import peak_mib, status_mib
from threshold_fl.bench.processes import stop, stop_group
from threshold_fl.bench.scale import _proc_usage
from threshold_fl.errors import ThresholdFLError

#: A process that starts a child, writes the child's pid to argv[1], says "ready" and
#: sleeps: only a stop reaches it, and only a group stop reaches its child.
PARENT = ("import subprocess, sys, time\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
          "open(sys.argv[1], 'w').write(str(child.pid))\n"
          "print('ready', flush=True)\n"
          "time.sleep(600)\n")


def _gone(pid: int) -> bool:
    """Whether *pid* has exited (no such process, or a zombie nobody reaped yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _wait_gone(pid: int) -> bool:
    """Whether *pid* exits within 10 s: a SIGKILL is delivered, not waited for."""
    for _ in range(200):
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


def _child_pid(path: Path) -> int:
    for _ in range(400):
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError(f"the parent never wrote its child's pid to {path}")


def test_a_process_that_ignores_sigterm_is_killed_and_reaped() -> None:
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
         "signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == "ready\n"
    assert stop(stubborn, grace_s=0.5) == -9
    assert stubborn.returncode == -9 and stubborn.stdout.closed
    assert stop(stubborn) == -9  # again: nothing left to do


def test_a_group_stop_reaches_the_children(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(tmp_path / "pid")],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = _child_pid(tmp_path / "pid")
    try:
        assert not _gone(child)
        assert stop_group(parent) == -15
        assert _wait_gone(child), f"the child {child} outlived the group stop"
    finally:
        stop_group(parent)


def test_bench_large_stops_the_parties_still_running_at_its_deadline() -> None:
    sleeper = [sys.executable, "-c", "print('up', flush=True); import time; time.sleep(600)"]
    processes = {name: subprocess.Popen(sleeper, stdout=subprocess.PIPE, text=True)
                 for name in ("aggregator", "client1")}
    try:
        assert _collect(processes, time.monotonic() + 1.0) == []  # no results by then
        assert _exit_codes(processes, 0.0) == {"aggregator": None, "client1": None}
        assert all(process.returncode == -15 for process in processes.values())
    finally:
        for process in processes.values():
            stop(process)


class _HereNotInANamespace:
    def exec_argv(self, argv: list[str]) -> list[str]:
        return argv


def test_bench_network_stops_a_federation_past_its_timeout_children_included(
        tmp_path: Path) -> None:
    argv = [sys.executable, "-c", PARENT, str(tmp_path / "pid"), "--out", str(tmp_path)]
    with pytest.raises(ThresholdFLError, match=r"the slow federation did not finish within "
                                               r"2 s \(--timeout\); it was stopped; see the "
                                               r"logs under"):
        _run_in(_HereNotInANamespace(), argv, "threshold", "slow",  # type: ignore[arg-type]
                2.0)
    assert _wait_gone(_child_pid(tmp_path / "pid"))


def test_veths_of_pairs_with_tags_alike_have_names_of_their_own() -> None:
    pairs = [NamespacePair(tag=tag) for tag in ("probe", "parties", "probe", "")]
    devices = [name for pair in pairs for name in (pair.broker_dev, pair.party_dev)]
    assert len(set(devices)) == len(devices), devices
    assert all(len(name) <= 15 for name in devices)  # the kernel's limit


def test_memory_figures_come_from_one_reader_for_this_process_and_others() -> None:
    resident, peak = status_mib("VmRSS"), status_mib("VmHWM")
    assert resident is not None and peak is not None and 0 < resident <= peak
    assert peak_mib() >= peak  # VmHWM, which only grows
    # The child says when it has started: until then its peak still grows between reads.
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys; print('up', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "up\n"
        cpu_s, child_peak = _proc_usage(child.pid)  # bench scale's view of the broker
        assert cpu_s >= 0 and child_peak == status_mib("VmHWM", child.pid) and child_peak > 0
    finally:
        stop(child)
    assert status_mib("VmHWM", child.pid) is None  # gone: nothing to read
