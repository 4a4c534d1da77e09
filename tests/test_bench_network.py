"""``bench network check``, quick: the demo federation across two network namespaces of
its own with the veth between them shaped by ``tc``; then ``predict`` on its trace.

Needs root, iproute2, tc and mosquitto (the CI machine runs as root); skipped with the
reason otherwise.  Figures are the benchmark's business: this checks that the whole
federation's traffic went through the shaped link (the qdisc counted at least every
message's payload, and not much more), that every phase was compared, and that the
namespaces are gone afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from threshold_fl.bench.netns import (
    DEFAULT_CONGESTION,
    PREFIX,
    NamespacePair,
    NetworkSetupError,
    namespaces_usable,
    remove_stale,
)
from threshold_fl.bench.network import _federation_argv, _parser, main

# Justified: creating network namespaces, veth pairs and tc qdiscs needs root; CI runs
# as root, so there these tests always run.
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture(scope="module")
def checked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = namespaces_usable()
    if reason is not None:
        # Justified: namespaces_usable tries `ip netns add` and a tbf qdisc for real and
        # names what failed; without them there is no shaped link to measure (CI is root).
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("network")
    assert main(["check", "--model", "mlp", "--rounds", "1", "--mbit", "20",
                 "--out", str(out)]) == 0
    return out


def _ours() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    return [line.split()[0] for line in listed.splitlines()
            if line.startswith(f"{PREFIX}{os.getpid()}")]


def test_the_shaped_run_carries_the_whole_federation(checked: Path) -> None:
    report = json.loads((checked / "network.json").read_text())
    run = report["runs"]["20 Mbit/s"]
    payload = run["payload_bytes"]
    assert payload > 4_000_000  # an MLP session's keys alone are about 4 MB
    for direction in ("up", "down"):
        moved = run["tc"][direction]["bytes"]
        # every message crosses the veth once each way; TCP/IP headers, MQTT, frames,
        # acks and presence add a few per cent
        assert payload <= moved <= 1.25 * payload, (direction, moved, payload)
    labels = [row["label"] for row in run["rows"]]
    # the demo's default, mask fraction 1: no mask agreement, so no mask phases
    assert labels == ["keys", "round 1 upload", "round 1 shares", "round 1 broadcast",
                      "set-up (keys)", "round 1", "session"]
    for row in run["rows"]:
        assert row["predicted_s"] == pytest.approx(row["compute_s"] + row["network_s"])
        assert row["measured_s"] > 0
    assert "profile for 20 Mbit/s" in report["runs"]
    assert report["settings"]["congestion_control"] == DEFAULT_CONGESTION
    assert report["settings"]["fraction"] == 1.0
    assert (checked / "network.md").read_text().count("| keys |") == 1
    assert _ours() == []


def test_predict_reads_the_runs_trace(checked: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    trace = checked / "network-runs" / "20mbit" / "threshold" / "server.trace.jsonl"
    assert main(["predict", "--trace", str(trace), "--mbit", "20", "--rtt-ms", "5"]) == 0
    printed = capsys.readouterr().out
    assert ("| phase | MB | profile s | infiniband s (network) | region s (network) | "
            "cross-region s (network) |") in printed
    assert "| round 1 shares |" in printed and "20 Mbit/s: broker 20 Mbit/s" in printed



def test_stale_namespaces_and_veths_of_dead_runs_are_removed() -> None:
    reason = namespaces_usable()
    if reason is not None:
        # Justified: namespaces_usable tries `ip netns add` and a tbf qdisc for real and
        # names what failed; without them there is no shaped link to measure (CI is root).
        pytest.skip(reason)
    dead = subprocess.Popen(["true"])  # a pid nobody has any more
    dead.wait()
    names = [f"{PREFIX}{dead.pid}-broker", f"tnl{dead.pid}b", f"tnl{dead.pid}p"]
    subprocess.run(["ip", "netns", "add", names[0]], check=True)
    subprocess.run(["ip", "link", "add", names[1], "type", "veth", "peer", "name", names[2]],
                   check=True)
    try:
        assert set(names) <= set(remove_stale())
        assert names[0] not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                              text=True, check=True).stdout
        assert names[1] not in subprocess.run(["ip", "-o", "link", "show"],
                                              capture_output=True, text=True,
                                              check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "delete", names[0]], check=False, capture_output=True)
        subprocess.run(["ip", "link", "delete", names[1]], check=False, capture_output=True)


def _sysctl(*argv: str) -> str:
    return subprocess.run(["sysctl", "-n", *argv], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_pair_runs_the_congestion_control_it_is_given() -> None:
    reason = namespaces_usable()
    if reason is not None:
        # Justified: as in the fixture: no namespaces, nothing to configure (CI is root).
        pytest.skip(reason)
    allowed = _sysctl("net.ipv4.tcp_allowed_congestion_control").split()
    with NamespacePair("cc") as pair:
        # a namespace starts with the machine's own choice
        assert pair.congestion_control("system") == _sysctl("net.ipv4.tcp_congestion_control")
        for name in allowed:
            assert pair.congestion_control(name) == name
            inside = subprocess.run(pair.exec_argv(["sysctl", "-n",
                                                    "net.ipv4.tcp_congestion_control"]),
                                    capture_output=True, text=True, check=True).stdout
            assert inside.strip() == name
        with pytest.raises(NetworkSetupError, match="tcp_allowed_congestion_control is "):
            pair.congestion_control("no-such-cc")
    assert DEFAULT_CONGESTION in allowed  # the check's default can be chosen here


def test_the_federation_gets_the_checks_mask_settings(tmp_path: Path) -> None:
    args = _parser().parse_args(["check", "--fraction", "0.1", "--no-first-last"])
    argv = _federation_argv(args, "mqtt://10.231.0.1:1883", tmp_path)
    assert argv[argv.index("--fraction") + 1] == "0.1" and "--no-first-last" in argv
    federation = _parser().parse_args(argv[3:])  # what runs in the parties' namespace
    assert (federation.fraction, federation.no_first_last) == (0.1, True)
    default = _federation_argv(_parser().parse_args(["check"]), "mqtt://h:1", tmp_path)
    assert default[default.index("--fraction") + 1] == "1.0"
    assert "--no-first-last" not in default
