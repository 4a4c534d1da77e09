"""``threshold-fl bench large``: a real round over a private mosquitto, each party its
own process, with uploads over every transport's ``max_payload`` (about 25 s)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from threshold_fl.bench.large import main

LENGTH = 20 * 8192  # 20 ciphertexts: a fully encrypted upload is about 2.7 MB


def test_a_round_with_uploads_over_max_payload_completes_and_reports_each_party(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--length", str(LENGTH), "--part-mib", "1", "--max-payload-mib", "2",
                 "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert code == 0, printed[-3000:]
    results = {r["party"]: r for r in json.loads((tmp_path / f"large-{LENGTH}-100.json")
                                                 .read_text())}
    assert sorted(results) == ["aggregator", "client1", "client2"]
    for name in ("client1", "client2"):
        party = results[name]
        assert party["finished"] and party["encrypted"] == LENGTH
        assert party["max_error"] <= party["bound"]
        # Its upload is over 2 MiB, the most a transport sends or accepts: only as parts
        # does it get through.  (Fully encrypted: no sensitivity map goes before it.)
        assert party["bytes_sent"] > 2 << 20
        assert party["marks"]["MaskAgreed"] >= party["marks"]["KeyAgreed"]
    assert all(r["peak_mib"] > 0 and r["marks"]["RoundCompleted"] > 0
               for r in results.values())
    report = (tmp_path / f"large-{LENGTH}-100.md").read_text()
    assert "max_payload 2 MiB" in report and "| client1 |" in report


def test_arguments_out_of_range_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--length", "0"])
    assert "--length: 0 must be in [1, 250000000]" in capsys.readouterr().err


def test_parts_over_max_payload_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--part-mib", "3", "--max-payload-mib", "2"])
    assert ("--part-mib 3 over --max-payload-mib 2: upload parts of up to 3145728 bytes would "
            "exceed the transport's max_payload of 2097152 bytes") in capsys.readouterr().err
