"""``threshold-fl bench selective``: encrypted fraction vs plaintext FedAvg (real OpenFHE,
small vectors)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import threshold_fl.bench.selective as selective
from threshold_fl.app.cli import main as cli_main
from threshold_fl.bench.selective import client_vectors, encrypted_part, plaintext_fedavg
from threshold_fl.crypto import context_for, threshold_params

LENGTH = 20_000
WORD = 8  # bytes per RNS coefficient


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("selective")
    code = cli_main(["bench", "selective", "--length", str(LENGTH), "--percents", "100", "0",
                     "50", "10", "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "selective.json").read_text())


def test_suite_writes_markdown_json_and_png(suite: tuple[Path, dict[str, Any]]) -> None:
    out, data = suite
    assert [row["percent"] for row in data["rows"]] == [0, 10, 50, 100]  # sorted
    assert [row["encrypted_values"] for row in data["rows"]] == [0, 2000, 10_000, LENGTH]
    assert data["machine"]["cores"] >= 1 and data["peak_memory_mib"] > 0
    markdown = (out / "selective.md").read_text()
    assert "Measured on" in markdown and "| 100 % | 20,000 |" in markdown
    assert (out / "selective.png").read_bytes()[:4] == b"\x89PNG"


def test_bytes_start_at_plaintext_and_grow_with_the_fraction(
        suite: tuple[Path, dict[str, Any]]) -> None:
    rows, plaintext = suite[1]["rows"], suite[1]["plaintext"]
    assert plaintext["upload_bytes"] == 4 * LENGTH  # float32
    assert rows[0]["upload_bytes_per_client"] == plaintext["upload_bytes"]
    assert rows[0]["bytes_ratio"] == 1.0 and rows[0]["he_compute_s"] == 0
    uploads = [row["upload_bytes_per_client"] for row in rows]
    assert uploads == sorted(uploads) and len(set(uploads)) == len(uploads)
    for row in rows[1:]:
        assert row["bytes_ratio"] > 1 and row["he_compute_s"] > 0
        assert row["total_s"] == pytest.approx(row["he_compute_s"] + row["clear_sum_s"])
        assert row["time_ratio"] == pytest.approx(row["total_s"] / plaintext["seconds"])


def test_encrypted_bytes_match_the_ciphertext_layout(suite: tuple[Path, dict[str, Any]]) -> None:
    data = suite[1]
    for row in data["rows"][1:]:
        encrypted = row["upload_bytes_per_client"] - 4 * (LENGTH - row["encrypted_values"])
        ciphertexts = math.ceil(row["encrypted_values"] / data["values_per_ciphertext"])
        one_limb = ciphertexts * 2 * data["ring_dimension"] * WORD  # 2 polynomials
        limbs = round(encrypted / one_limb)
        assert limbs in (1, 2)
        assert limbs * one_limb <= encrypted <= 1.02 * limbs * one_limb + 4096


def test_errors_stay_below_the_bound(suite: tuple[Path, dict[str, Any]]) -> None:
    rows = suite[1]["rows"]
    assert rows[0]["error_bound"] == 0 and rows[0]["max_error"] < 1e-7  # float32 rounding
    for row in rows[1:]:
        assert 0 < row["max_error"] < row["error_bound"]


def test_slices_add_up_to_one_round(monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, weights = client_vectors(LENGTH, 3, seed=4)
    context = context_for(threshold_params(3))
    whole = encrypted_part(context, inputs, weights, LENGTH)
    monkeypatch.setattr(selective, "SLICE_CIPHERTEXTS", 1)
    sliced = encrypted_part(context, inputs, weights, LENGTH)
    assert sliced.values == whole.values == LENGTH
    # the same ciphertexts, framed in three messages instead of one
    assert whole.upload_bytes <= sliced.upload_bytes <= whole.upload_bytes + 3 * 4096
    assert sliced.max_error < sliced.error_bound


def test_client_vectors_are_float32_in_range_with_fedavg_weights() -> None:
    inputs, weights = client_vectors(1000, 3, seed=1)
    assert all(v.dtype == np.float32 and np.abs(v).max() <= 0.1 for v in inputs)
    assert weights.sum() == pytest.approx(1.0) and (weights > 0).all()
    plain = plaintext_fedavg(inputs, weights)
    assert plain.values == 1000 and plain.upload_bytes == 4000 and plain.max_error < 1e-7
