"""The models suite and the per-role process harness it runs on (real OpenFHE, one OS
process per role, tiny vectors)."""

from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np
import pytest

from threshold_fl.app.cli import main as cli_main
from threshold_fl.bench import roles, runner
from threshold_fl.bench.output import peak_mib, reset_peak
from threshold_fl.bench.roles import Upload, layout_for
from threshold_fl.bench.runner import run_he_round, run_plain_round
from threshold_fl.crypto import (
    MAX_VECTOR_LENGTH,
    CkksParams,
    ciphertext_count,
    context_for,
    encrypt_chunks,
    lead_keygen,
    threshold_params,
)
from threshold_fl.crypto.ring import build
from threshold_fl.crypto.rounding import ShareRounding


def _fresh_ciphertext_bytes(params: CkksParams) -> int:
    """What one serialised upload ciphertext weighs under ``params``."""
    context = context_for(params)
    key = lead_keygen(context, 1).public_share
    (ciphertext,) = encrypt_chunks(context, key, np.full(10, 0.05))
    return len(build(ciphertext))


def test_models_suite_writes_markdown_json_and_png(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    lengths = (101, 20_000)
    assert cli_main(["bench", "models", "--lengths", *map(str, lengths), "--clients", "2",
                     "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "models.json").read_text())
    assert [row["values"] for row in data["rows"]] == list(lengths)
    assert data["machine"]["cores"] >= 1 and data["baseline_mib"] > 0
    params = CkksParams.from_dict(data["params"])
    context, per_ciphertext = context_for(params), _fresh_ciphertext_bytes(params)
    for row in data["rows"]:
        count = ciphertext_count(context, row["values"])
        # the upload is its ciphertexts plus one frame header (under 1 KiB) per group
        frames = -(-count // roles.GROUP_CIPHERTEXTS)
        assert 0 <= row["upload_bytes"] - count * per_ciphertext <= 1024 * frames
        assert row["plain_bytes"] == 4 * row["values"]
        assert row["bytes_ratio"] == pytest.approx(row["upload_bytes"] / row["plain_bytes"])
        assert row["bytes_ratio"] > 1 and row["time_ratio"] > 1
        assert row["he_s"] > row["plain_s"] > 0
        assert row["he_s"] == pytest.approx(row["encrypt_s"] + row["aggregate_s"]
                                            + row["share_s"] + row["fuse_s"] + row["decode_s"])
        assert min(row["share_s"], row["fuse_s"], row["decode_s"]) > 0
        # flooding for 2^16 shares per key: a bound of about 1e-4 here
        assert row["max_error"] < row["error_bound"] < 1e-3
        assert row["plain_max_error"] < 1e-7  # float32 rounding of values below 0.1
        assert row["aggregator_mib"] > 0 and row["client_mib"] > 0
        assert row["aggregator_mib"] >= 0.9 * row["baseline_mib"]
    markdown = (tmp_path / "models.md").read_text()
    assert "Measured on" in markdown and "| 20,000 |" in markdown
    assert "2 of 2 decrypted averages are within" in markdown
    assert (tmp_path / "models.png").read_bytes()[:4] == b"\x89PNG"
    assert "the encrypted round takes" in capsys.readouterr().out


def test_vectors_over_the_library_limit_go_as_whole_group_segments() -> None:
    values_per_ciphertext = 8192
    assert layout_for(109_482_240, values_per_ciphertext).segments == ((0, 109_482_240),)
    length = MAX_VECTOR_LENGTH + 5 * values_per_ciphertext  # beyond the limit: two segments
    layout = layout_for(length, values_per_ciphertext)
    assert len(layout.segments) == 2
    assert layout.segments[0][0] == 0 and layout.segments[-1][1] == length
    for (_, stop), (start, _) in zip(layout.segments, layout.segments[1:], strict=False):
        assert stop == start and start % layout.chunk == 0
    assert all(stop - start <= MAX_VECTOR_LENGTH for start, stop in layout.segments)
    assert layout_for(101, values_per_ciphertext).segments == ((0, 101),)


def test_a_segmented_round_decrypts_the_exact_weighted_average(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A small limit stands in for 10^8: the children follow the parent's layout.
    monkeypatch.setattr(roles, "MAX_VECTOR_LENGTH", 2 * 8 * 8192)
    length, uploads = 140_000, [Upload(0, 0.25), Upload(1, 0.75)]
    params = threshold_params(2)
    layout = layout_for(length, context_for(params).values_per_ciphertext)
    assert len(layout.segments) == 2
    (tmp_path / "he").mkdir()
    he = run_he_round(params, uploads, length, 7, tmp_path / "he")
    assert he.decrypted_ciphertexts == he.ciphertexts == 18  # 16 + 2
    assert he.max_error < he.error_bound
    assert len(he.encrypt_s) == 2 and len(he.share_s) == he.members == 2  # t = 2 of 2
    # a member downloads c1 and uploads one share, every client downloads the fused
    # result: one polynomial of one limb per ciphertext each, c1 at 8 bytes a value,
    # the share and the fused result rounded to 4
    context = context_for(params)
    polynomial = context.ring.ring_dimension * he.ciphertexts
    width = ShareRounding.of(context).width
    assert width == 4
    for sent, word in ((he.c1_bytes, 8), (he.share_bytes, width), (he.fused_bytes, width)):
        assert word * polynomial <= sent <= 1.02 * word * polynomial + 4096, (sent, word)
    plain = run_plain_round(uploads, layout, 7, tmp_path)
    assert plain.upload_bytes == 4 * length and plain.max_error < 1e-7


def test_a_role_reports_its_own_peak_not_its_parents() -> None:
    # ru_maxrss survives fork + exec, so a role started by a big parent (``bench all``
    # after the selective suite) used to report the parent's peak as its own.
    ballast = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
    parent_peak = peak_mib()
    assert parent_peak >= 400
    assert runner.baseline_peak_mib() < parent_peak - 300
    del ballast


def test_reset_peak_starts_the_peak_afresh() -> None:
    # An anonymous map is returned to the kernel on close, whatever malloc the
    # process runs (OpenFHE's keeps freed memory, so a freed array would not do).
    size = 300 * 2**20
    with mmap.mmap(-1, size) as ballast:
        ballast[::4096] = b"\x01" * (size // 4096)  # touch every page
        before = peak_mib()
    reset_peak()
    assert before >= 300
    assert peak_mib() < before - 200
