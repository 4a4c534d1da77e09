"""``threshold-fl bench SUITE`` and the peers suite: ours vs FLARE's TenSEAL round on the
same vectors (real OpenFHE, real TenSEAL, small vectors)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from threshold_fl.app.cli import main as cli_main
from threshold_fl.bench.peers import CNN_LENGTH, layer_sizes, measure
from threshold_fl.crypto import context_for, threshold_params
from threshold_fl.crypto.rounding import ShareRounding


def test_peers_suite_writes_markdown_json_and_png(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "peers", "--lengths", "101", "5000", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "peers.json").read_text())
    systems = [(row["system"], row["values"]) for row in data["rows"]]
    assert systems == [(system, length) for length in (101, 5000) for system in
                       ("ours, threshold", "OpenFHE N-of-N threshold (reference)",
                        "ours, single-key", "FLARE (TenSEAL)")]
    assert data["machine"]["cores"] >= 1 and data["machine"]["tenseal"]
    markdown = (tmp_path / "peers.md").read_text()
    assert "Measured on" in markdown and "| FLARE (TenSEAL) | 5,000 |" in markdown
    assert (tmp_path / "peers.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "HE compute is" in out and "faster than OpenFHE's MultipartyDecryptMain" in out


def test_every_system_averages_the_same_vectors_correctly() -> None:
    rows = measure(3000, clients=3, seed=1)
    assert len(rows) == 4
    # all four decrypt the same weighted average; threshold within the flooding bound
    flooded = context_for(threshold_params(3)).error_bound(3)
    for row in rows:
        assert row.max_error < (flooded if "threshold" in row.system else 1e-5), row
        assert row.he_compute_s >= row.aggregate_s > 0
    by_system = {row.system: row for row in rows}
    ours = by_system["ours, threshold"]
    reference = by_system["OpenFHE N-of-N threshold (reference)"]
    # a member's share and a partial decryption are timed, per ciphertext; the other
    # systems have none
    assert ours.share_per_ciphertext_ms > 0 and reference.share_per_ciphertext_ms > 0
    assert by_system["FLARE (TenSEAL)"].share_per_ciphertext_ms == 0
    # blind fusion: a member downloads c1 (8 bytes a coefficient) and the fused result
    # (rounded: 4), against an upload's 2 x 8; the reference's clients download the
    # aggregate and N - 1 = 2 partial decryptions of 8 bytes: 4 x 8, same context
    width = ShareRounding.of(context_for(threshold_params(3))).width
    assert width == 4
    upload = ours.upload_bytes_per_value
    assert ours.download_bytes_per_value == pytest.approx((8 + width) / 16 * upload, rel=0.02)
    assert reference.download_bytes_per_value == pytest.approx(2 * upload, rel=0.02)
    # one CKKS ciphertext carries at most N values; FLARE packs N/2 = 4096 reals into
    # two 40-60-bit limbs, at least 2 * 2 * 8192 * 100 bits / 4096 values = 100 bytes
    # before compression; SEAL's zstd gets it to about half: more than 40 B/value.
    assert by_system["FLARE (TenSEAL)"].upload_bytes_per_value > 40


def test_the_cnn_vector_is_split_like_the_paper_cnn() -> None:
    sizes = layer_sizes(CNN_LENGTH)
    assert sum(sizes) == CNN_LENGTH and len(sizes) == 8
    assert layer_sizes(5000) == [5000]


def test_a_suite_gets_its_own_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli_main(["bench", "peers", "--help"])
    assert info.value.code == 0
    assert "usage: threshold-fl bench peers" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        cli_main(["bench"])
    assert info.value.code == 2
    assert "SUITE" in capsys.readouterr().err


def test_bench_all_runs_the_suites_in_order_and_combines_their_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runner's logic, with fake suites standing in for the real (minutes-long) ones."""
    import threshold_fl.bench as bench

    calls: list[tuple[str, list[str]]] = []

    def fake_suite(suite: str) -> Callable[[list[str]], int]:
        def run(argv: list[str]) -> int:
            calls.append((suite, argv))
            (tmp_path / f"{suite}.md").write_text(f"# {suite} title\n\n| a |\n|---|\n| 1 |\n")
            if suite == "models":
                (tmp_path / "models.png").write_bytes(b"\x89PNG")
                (tmp_path / "models-part.md").write_text("# models part title\n")
            return 1 if suite == "clients" else 0
        return run

    monkeypatch.setattr(bench, "_suite_main", fake_suite)
    code = cli_main(["bench", "all", "--out", str(tmp_path), "--large",
                     "--only", "clients", "models", "peers"])
    assert code == 1  # clients failed
    assert [suite for suite, _ in calls] == ["peers", "models", "clients"]  # ALL_ORDER
    assert dict(calls)["models"] == ["--out", str(tmp_path), "--large"]
    assert dict(calls)["peers"] == ["--out", str(tmp_path)]
    combined = (tmp_path / "all.md").read_text()
    assert "## peers title" in combined and "![models](models.png)" in combined
    assert combined.index("## models title") < combined.index("## models part title")
    assert "clients title" not in combined  # a failed suite's stale report is left out
    assert "FAILED: clients" in capsys.readouterr().out
