"""``threshold-fl bench threshold``: single-key vs threshold step by step, fixed vs flooded
decryption noise (real OpenFHE, small vectors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from threshold_fl.app.cli import main as cli_main
from threshold_fl.bench.threshold import (
    CONFIGURATIONS,
    FLOODING,
    SINGLE_KEY,
    StepRow,
    measure,
    noise_rows,
)

WORD = 8  # bytes per RNS coefficient


def layout_bytes(row: StepRow, polynomials: int, limbs: int) -> int:
    """Bytes of the ciphertexts (or shares) for row.values values, before framing."""
    ciphertexts = math.ceil(row.values / row.values_per_ciphertext)
    return ciphertexts * polynomials * limbs * row.ring_dimension * WORD


def assert_framed(measured: int, layout: int) -> None:
    """*measured* wire bytes are *layout* plus a little framing (headers, digests)."""
    assert layout <= measured <= 1.02 * layout + 4096, (measured, layout)


@pytest.fixture(scope="module")
def rows() -> list[StepRow]:
    return measure(20_000, clients=3, seed=2)


def test_threshold_suite_writes_markdown_json_and_png(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "threshold", "--length", "3000", "--clients", "2", "3",
                     "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "threshold.json").read_text())
    measured = [(row["configuration"], row["clients"]) for row in data["rows"]]
    assert measured == [(c, n) for n in (2, 3) for c in CONFIGURATIONS]
    assert data["machine"]["cores"] >= 1 and data["machine"]["openfhe"]
    markdown = (tmp_path / "threshold.md").read_text()
    assert "Measured on" in markdown and "## Noise flooding's cost" in markdown
    assert "| threshold, flooding | 3 |" in markdown
    assert (tmp_path / "threshold.png").read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert f"N=3: {len(CONFIGURATIONS)} rounds of 3,000 values" in out
    assert "flooding makes partial decryption" in out and "Our ring kernels make" in out


def test_every_round_decrypts_the_average_within_its_bound(rows: list[StepRow]) -> None:
    assert [row.configuration for row in rows] == list(CONFIGURATIONS)
    for row in rows:
        assert 0 < row.max_error < row.error_bound, row
        assert row.encrypt_per_client_s > 0 and row.aggregate_s > 0 and row.decrypt_s > 0
        steps = (row.keygen_s + row.encrypt_per_client_s + row.aggregate_s
                 + row.partial_decrypt_per_client_s + row.decrypt_s)
        assert row.latency_s == pytest.approx(steps)
        # HE compute counts every client's encryption and partial decryption
        assert row.he_compute_s == pytest.approx(
            3 * row.encrypt_per_client_s + row.aggregate_s
            + 3 * row.partial_decrypt_per_client_s + row.decrypt_s)


def test_bytes_match_the_ciphertext_layout(rows: list[StepRow]) -> None:
    for row in rows:
        # an upload is fresh ciphertexts: 2 polynomials of `limbs` RNS limbs each
        limbs = round(row.upload_bytes_per_client / layout_bytes(row, 2, 1))
        assert limbs in (1, 2), row
        assert_framed(row.upload_bytes_per_client, layout_bytes(row, 2, limbs))
        # the aggregate is rescaled to one limb before it is sent for decryption
        assert_framed(row.download_bytes, layout_bytes(row, 2, 1))
        if row.configuration == SINGLE_KEY:
            assert row.partial_bytes_per_client == 0 and row.partial_decrypt_per_client_s == 0
        else:  # a partial decryption is one polynomial of one limb per ciphertext
            assert_framed(row.partial_bytes_per_client, layout_bytes(row, 1, 1))


def test_the_noise_table_compares_fixed_and_flooded_decryption(rows: list[StepRow]) -> None:
    table = noise_rows(rows)
    assert [(line[0], line[1]) for line in table] == [
        (3, "fixed"), (3, "flooding"), (3, "flooding, OpenFHE kernels")]
    flooded = next(row for row in rows if row.configuration == FLOODING)
    # the reported scale is the one OpenFHE chose, not necessarily the requested one
    assert table[1][2] == f"{flooded.scale_bits:.0f}"
    for line in table:
        assert 0 < float(str(line[-1])) < 1  # error / bound


def test_one_configuration_alone_writes_no_noise_table(tmp_path: Path) -> None:
    assert cli_main(["bench", "threshold", "--length", "100", "--clients", "2",
                     "--configurations", "single-key", "--out", str(tmp_path)]) == 0
    assert "Noise flooding" not in (tmp_path / "threshold.md").read_text()
