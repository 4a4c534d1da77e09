"""``threshold-fl bench scale`` small: 8 real clients over a real mosquitto, packed 4 per
process, the aggregator in its own process, 3 of them vanishing (during key agreement,
before their upload, on their DecryptRequest) by shutting their connections so that the
broker's Last Will tells the aggregator."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from protocols.fusion import choose_set
from threshold_fl.bench.scale import main, plan_drops, power_fit, run_scale
from threshold_fl.errors import ParameterError
from threshold_fl.identity import PartyId

NAMES = [f"client-{n:03d}" for n in range(1, 11)]


def test_drops_take_the_stages_in_turn_and_hit_the_decryption_set() -> None:
    drops = plan_drops(NAMES, threshold=6, count=4)
    assert sorted(drops.values()) == ["after-upload", "before-upload", "decrypt", "keys"]
    assert NAMES[0] not in drops  # the key agreement's lead stays
    holders = [PartyId(n) for n in NAMES if drops.get(n) != "keys"]
    (victim,) = [n for n, stage in drops.items() if stage == "decrypt"]
    alive = [p for p in holders if p not in drops or p == victim]  # when it is asked
    assert PartyId(victim) in (choose_set(holders, alive, 6, 1) or ())
    with pytest.raises(ParameterError, match="fewer than t = 6 to decrypt"):
        plan_drops(NAMES, threshold=6, count=5)


def test_power_fit_recovers_an_exponent() -> None:
    a, k = power_fit([10, 25, 50, 100], [0.5 * n**2 for n in (10, 25, 50, 100)])
    assert a == pytest.approx(0.5) and k == pytest.approx(2.0)


def test_eight_parties_with_three_dropouts_complete_and_match_fedavg(tmp_path: Path) -> None:
    row = run_scale(8, out=tmp_path, per_process=4, rounds=2, drop=0.375, deadline_s=240.0)
    assert row.threshold == 5 and row.processes == 2
    assert row.planned_drops == {"keys": 1, "before-upload": 1, "decrypt": 1,
                                 "after-upload": 0}
    assert row.dropped == 3  # each through its Last Will (run_scale checks the reasons)
    # round 1: the key-agreement and before-upload dropouts never contributed, the
    # decryption-set member did; round 2: the 5 survivors
    assert row.contributors == [6, 5]
    assert row.key_attempts == 2  # restarted without the key-agreement dropout
    assert 0 <= row.max_error <= row.error_bound
    assert row.aggregator_peak_mib > 0 and row.broker_peak_mib > 0 and row.clients_cpu_s > 0
    assert row.client_sent_mean > 0 and row.client_received_mean > 0
    # the figures as the suite writes them, redrawn with per-role figures beside them
    (tmp_path / "scale.json").write_text(json.dumps({"rows": [dataclasses.asdict(row)]}))
    roles = tmp_path / "clients.json"
    roles.write_text(json.dumps({"rows": [{"clients": 8, "aggregate_s": 1.0, "fuse_s": 0.5,
                                           "encrypt_per_client_s": 1.0,
                                           "share_per_member_s": 0.2,
                                           "decode_per_client_s": 0.3}]}))
    assert main(["--replot", str(tmp_path / "scale.json"), "--roles", str(roles),
                 "--out", str(tmp_path / "plot")]) == 0
    assert (tmp_path / "plot" / "scale.png").stat().st_size > 10_000
    runs = tmp_path / "scale-runs" / "n008"
    log = (runs / "logs" / "server.log").read_text()
    assert log.count("went offline (its connection to the broker ended)") >= 3


def test_the_command_refuses_a_bad_roles_file(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "clients.json"
    bad.write_text(json.dumps({"nothing": []}))
    assert main(["--clients", "8", "--roles", str(bad), "--out", str(tmp_path)]) == 1
    assert "not a 'bench clients' result" in capsys.readouterr().err
