"""``threshold-fl bench params``: batch size x scaling bits on real trained models (real
OpenFHE, real torch; the small MLP and one epoch, to keep it quick)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from threshold_fl.app.cli import main as cli_main
from threshold_fl.bench.params import LocalModels, he_average, measure_cell, train_models
from threshold_fl.crypto import context_for, threshold_params

WORD = 8  # bytes per RNS coefficient


@pytest.fixture(scope="module")
def models() -> LocalModels:
    return train_models("mlp", clients=3, epochs=1, seed=0)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("params")
    code = cli_main(["bench", "params", "--model", "mlp", "--epochs", "1",
                     "--batch-sizes", "1024", "4096", "8192", "--scaling-bits", "30", "59",
                     "--out", str(out)])
    assert code == 0
    return out, (out / "params.md").read_text()


def rows_of(out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((out / "params.json").read_text())["rows"]
    return rows


def test_the_local_models_are_real_and_averaged_by_samples(models: LocalModels) -> None:
    assert len(models.vectors) == 3 and models.weights.sum() == pytest.approx(1.0)
    assert models.vectors[0].size == 4810  # the MLP at 8x8
    assert not np.allclose(models.vectors[0], models.vectors[1])  # trained on other data
    expected = sum(w * v for w, v in zip(models.weights, models.vectors, strict=True))
    np.testing.assert_allclose(models.plain_average, expected)
    assert models.plain_accuracy > 0.5  # ten classes: training worked


def test_he_average_returns_the_decrypted_average(models: LocalModels) -> None:
    context = context_for(threshold_params(3, batch_size=2048))
    result, decrypted = he_average(context, models)
    error = float(np.abs(decrypted - models.plain_average).max())
    assert error == pytest.approx(result.max_error) and error < result.error_bound
    # decrypted as the protocol does: blind fusion by t = 2 of the 3 parties
    assert result.decryption == "blind fusion" and result.decryptors == 2


def test_suite_writes_markdown_json_png_and_the_skipped_cells(suite: tuple[Path, str]) -> None:
    out, markdown = suite
    data = json.loads((out / "params.json").read_text())
    cells = [(r["noise"], r["batch_size"], r["scaling_bits"]) for r in data["rows"]]
    noises = ("flooding", "flooding-1q", "fixed")
    assert cells == [(noise, batch, bits) for noise in noises
                     for batch in (1024, 4096) for bits in (30, 59)]
    # 8192 slots need a ring of 16384: refused by the parameters, reported, not measured
    assert [(s["noise"], s["batch_size"]) for s in data["skipped"]] == [
        (noise, 8192) for noise in noises for _ in range(2)]
    assert all("batch_size" in s["reason"] for s in data["skipped"])
    assert data["machine"]["cores"] >= 1 and 0.5 < data["plain_accuracy"] <= 1
    assert "Measured on" in markdown and "Skipped: fixed, batch 8192" in markdown
    assert "| fixed | 4096 | 59 | 59 | 8192 |" in markdown
    assert (out / "params.png").read_bytes()[:4] == b"\x89PNG"


def test_bytes_follow_the_batch_size_and_the_ciphertext_layout(suite: tuple[Path, str]) -> None:
    for row in rows_of(suite[0]):
        values = row["values"]
        ciphertexts = math.ceil(values / (2 * row["batch_size"]))  # two reals per slot
        one_limb = ciphertexts * 2 * row["ring_dimension"] * WORD / values  # 2 polynomials
        limbs = round(row["upload_bytes_per_value"] / one_limb)
        assert limbs in (1, 2)
        assert (limbs * one_limb <= row["upload_bytes_per_value"]
                <= 1.02 * limbs * one_limb + 4096 / values)


def test_the_cost_of_flooding_for_2_16_shares_is_shown(suite: tuple[Path, str]) -> None:
    """sqrt(2^16) = 256x the noise of flooding for one share: errors about that much larger."""
    rows = {(r["noise"], r["batch_size"], r["scaling_bits"]): r for r in rows_of(suite[0])}
    for (noise, batch, bits), row in rows.items():
        if noise == "flooding":
            one = rows[("flooding-1q", batch, bits)]
            assert 50 < row["max_error"] / one["max_error"] < 1000, (row, one)
            # each context measures its own noise estimate B (a random sample, to about
            # 0.2 bits), so the ratio of two bounds is 256 up to 2^(+-0.3)
            assert row["error_bound"] / one["error_bound"] == pytest.approx(256, rel=0.25)


def test_errors_stay_in_bound_and_the_scale_is_reported(suite: tuple[Path, str]) -> None:
    for row in rows_of(suite[0]):
        assert 0 < row["max_error"] < row["error_bound"], row
        if row["noise"] == "fixed":
            assert row["scale_bits"] == pytest.approx(row["scaling_bits"])
        if row["max_error"] < 1e-5:  # far below the weights' scale: the same predictions
            assert abs(row["accuracy_delta_points"]) <= 1.0, row
        plain = row["accuracy"] - row["accuracy_delta_points"] / 100
        assert plain == pytest.approx(json.loads((suite[0] / "params.json").read_text())
                                      ["plain_accuracy"])


def test_a_30_bit_scale_with_fixed_noise_destroys_the_model(suite: tuple[Path, str]) -> None:
    # 20-bit decryption noise against a 2^30 scale and values divided by 32: errors of
    # order 1 on weights of order 0.1, so the model is noise
    for row in rows_of(suite[0]):
        if row["noise"] == "fixed" and row["scaling_bits"] == 30:
            assert row["max_error"] > 0.1 and row["accuracy_delta_points"] < -20


def test_a_grid_with_no_valid_cell_is_an_error(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path) -> None:
    assert cli_main(["bench", "params", "--model", "logreg", "--epochs", "1", "--noise",
                     "fixed", "--batch-sizes", "8192", "--out", str(tmp_path)]) == 1
    assert "threshold-fl bench params: error: every cell" in capsys.readouterr().err


def test_measure_cell_refuses_a_batch_larger_than_the_ring(models: LocalModels) -> None:
    from threshold_fl.errors import ParameterError

    with pytest.raises(ParameterError, match="batch_size"):
        measure_cell(models, "fixed", 4096, 40, 4096)
