"""The clients suite: N clients fed round-robin from a pool of encrypted uploads, the
blind-fusion decryption by t = N // 2 + 1 members real (real OpenFHE, one OS process per
role, tiny vectors)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from threshold_fl.app.cli import main as cli_main


def test_clients_suite_writes_markdown_json_and_png(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    # 100,000 values are 13 ciphertexts; the parties decrypt the first group of 8.
    assert cli_main(["bench", "clients", "--part", "roles", "--clients-list", "5", "2",
                     "--length", "100000",
                     "--pool", "2", "--decrypt-ciphertexts", "8", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "clients.json").read_text())
    rows = data["rows"]
    assert [row["clients"] for row in rows] == [2, 5]
    assert data["machine"]["cores"] >= 1 and data["baseline_mib"] > 0
    for row in rows:
        assert row["values"] == 100_000 and row["distinct_uploads"] == 2
        assert row["decrypted_fraction"] == pytest.approx(8 / 13)
        assert row["max_error"] < row["error_bound"] < 2e-3  # flooding for 2^16 shares per key
        assert row["aggregate_per_upload_s"] == pytest.approx(row["aggregate_s"]
                                                              / row["clients"])
        assert row["members"] == row["clients"] // 2 + 1
        for step in ("encrypt_per_client_s", "share_per_member_s", "fuse_s",
                     "decode_per_client_s"):
            assert row[step] > 0
        assert row["aggregator_mib"] >= 0.9 * row["baseline_mib"] > 0
    # the streaming claim: the aggregator holds one running sum whatever N is
    few, many = rows[0]["aggregator_mib"], rows[1]["aggregator_mib"]
    assert many < 1.5 * few + 50
    markdown = (tmp_path / "clients.md").read_text()
    assert "Measured on" in markdown and "Reused: only min(N, 2) distinct uploads" in markdown
    assert "on 62% of the aggregate's ciphertexts" in markdown
    assert "within the error bound in 2 of 2 rounds" in markdown
    assert (tmp_path / "clients.png").read_bytes()[:4] == b"\x89PNG"
    assert "The aggregator's process peaks at" in capsys.readouterr().out


def test_a_round_that_cannot_fit_on_disk_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def no_space(path: Any) -> SimpleNamespace:
        return SimpleNamespace(total=10**12, used=10**12 - 1000, free=1000)

    monkeypatch.setattr("threshold_fl.bench.runner.shutil.disk_usage", no_space)
    assert cli_main(["bench", "clients", "--part", "roles", "--clients-list", "2",
                     "--length", "1000", "--out", str(tmp_path)]) == 1
    error = capsys.readouterr().err
    assert "threshold-fl bench clients: error:" in error and "GiB of disk" in error
    assert not (tmp_path / "clients.json").exists()
