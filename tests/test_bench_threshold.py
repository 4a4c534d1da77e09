"""``threshold-fl bench threshold``: single-key vs threshold step by step (blind fusion, and
OpenFHE's N-of-N threshold decryption as the reference), fixed vs flooded decryption noise
(real OpenFHE, small vectors)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from threshold_fl.app.cli import main as cli_main
from threshold_fl.bench.threshold import (
    CONFIGURATIONS,
    FIXED,
    FLOODING,
    FLOODING_OPENFHE,
    SINGLE_KEY,
    StepRow,
    measure,
    noise_rows,
)
from threshold_fl.crypto import context_for, threshold_params
from threshold_fl.crypto.rounding import ShareRounding

WORD = 8  # bytes per RNS coefficient


def layout_bytes(row: StepRow, polynomials: int, limbs: int, word: int = WORD) -> int:
    """Bytes of the ciphertexts (or shares) for row.values values, before framing."""
    ciphertexts = math.ceil(row.values / row.values_per_ciphertext)
    return ciphertexts * polynomials * limbs * row.ring_dimension * word


def rounded_width(row: StepRow) -> int:
    """Bytes a value of our shares and fused polynomials take (rounded, coefficient form)."""
    params = threshold_params(3, flooding=row.configuration != FIXED)
    return ShareRounding.of(context_for(params)).width


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
    assert "flooding makes the round's decryption work" in out
    assert "Blind fusion's decryption work (t = 2 members' shares" in out
    # t = N // 2 + 1 of the N parties decrypt; the reference uses all N
    for row in data["rows"]:
        expected = {SINGLE_KEY: 1, FLOODING_OPENFHE: row["clients"]}.get(
            row["configuration"], row["clients"] // 2 + 1)
        assert row["decryptors"] == expected, row


def test_every_round_decrypts_the_average_within_its_bound(rows: list[StepRow]) -> None:
    assert [row.configuration for row in rows] == list(CONFIGURATIONS)
    for row in rows:
        assert 0 < row.max_error < row.error_bound, row
        assert row.encrypt_per_client_s > 0 and row.aggregate_s > 0 and row.decrypt_s > 0
        assert row.decode_per_client_s > 0 or row.configuration == FLOODING_OPENFHE
        steps = (row.keygen_s + row.encrypt_per_client_s + row.aggregate_s
                 + row.share_per_member_s + row.fuse_s + row.decode_per_client_s)
        assert row.latency_s == pytest.approx(steps)
        # decryption: t members' shares, one fusion, every client's decoding (the
        # reference: all N partial decryptions and one fusion; single-key: one decryption)
        decoders = 1 if row.configuration == SINGLE_KEY else 3
        assert row.decrypt_s == pytest.approx(
            row.decryptors * row.share_per_member_s + row.fuse_s
            + decoders * row.decode_per_client_s)
        assert row.he_compute_s == pytest.approx(
            3 * row.encrypt_per_client_s + row.aggregate_s + row.decrypt_s)
        if row.configuration == SINGLE_KEY:
            assert row.decryptors == 1 and row.share_per_member_s == row.fuse_s == 0
        else:
            assert row.decryptors == (3 if row.configuration == FLOODING_OPENFHE else 2)
            assert row.share_per_member_s >= row.share_only_s > 0 and row.fuse_s > 0


def test_bytes_match_the_ciphertext_layout(rows: list[StepRow]) -> None:
    for row in rows:
        # an upload is fresh ciphertexts: 2 polynomials of `limbs` RNS limbs each
        limbs = round(row.upload_bytes_per_client / layout_bytes(row, 2, 1))
        assert limbs in (1, 2), row
        assert_framed(row.upload_bytes_per_client, layout_bytes(row, 2, limbs))
        # the aggregate is rescaled to one limb before it is decrypted: single-key
        # downloads it (2 polynomials); the reference the aggregate and N - 1 = 2
        # partials; a member of our set c1 (8 bytes a value) and the fused result
        # (rounded: 4 bytes with flooding, 6 with fixed noise), whatever N
        if row.configuration in (SINGLE_KEY, FLOODING_OPENFHE):
            polynomials = 4 if row.configuration == FLOODING_OPENFHE else 2
            assert_framed(row.download_bytes_per_client, layout_bytes(row, polynomials, 1))
        else:
            width = rounded_width(row)
            assert width == (4 if row.configuration == FLOODING else 6)
            assert_framed(row.download_bytes_per_client,
                          layout_bytes(row, 1, 1) + layout_bytes(row, 1, 1, width))
        if row.configuration == SINGLE_KEY:
            assert row.share_bytes_per_member == 0 and row.share_per_member_s == 0
        elif row.configuration == FLOODING_OPENFHE:  # one polynomial of one limb a ciphertext
            assert_framed(row.share_bytes_per_member, layout_bytes(row, 1, 1))
        else:  # our share: one rounded polynomial a ciphertext
            assert_framed(row.share_bytes_per_member, layout_bytes(row, 1, 1, rounded_width(row)))


def test_the_noise_table_compares_fixed_and_flooded_decryption(rows: list[StepRow]) -> None:
    table = noise_rows(rows)
    assert [(line[0], line[1]) for line in table] == [
        (3, "fixed"), (3, "flooding"), (3, "flooding, OpenFHE N-of-N")]
    flooded = next(row for row in rows if row.configuration == FLOODING)
    # the reported scale is the one OpenFHE chose, not necessarily the requested one
    assert table[1][2] == f"{flooded.scale_bits:.0f}"
    for line in table:
        assert 0 < float(str(line[-1])) < 1  # error / bound


def test_one_configuration_alone_writes_no_noise_table(tmp_path: Path) -> None:
    assert cli_main(["bench", "threshold", "--length", "100", "--clients", "2",
                     "--configurations", "single-key", "--out", str(tmp_path)]) == 0
    assert "Noise flooding" not in (tmp_path / "threshold.md").read_text()
