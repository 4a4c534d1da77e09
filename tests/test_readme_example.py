"""The README's Python examples run exactly as shown and print what they say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
#: The HTML comment (invisible on GitHub) that stands right before the embedding example.
EMBEDDING_MARKER = (
    "<!-- embedding example: tests/test_readme_example.py runs the next block as a script -->"
)
CLIENTS = ("alice", "bob", "carol")
ROUNDS = 3
#: Largest |global model - plain FedAvg| accepted: the CKKS decryption error for 3 clients
#: is below 1.9e-4 per value (CkksContext.error_bound, flooding for 2^16 shares), float32
#: rounding far less here.
TOLERANCE = 2e-4


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def _embedding_block() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(re.escape(EMBEDDING_MARKER) + r"\n```python\n(.*?)```", text, flags=re.S)
    assert match is not None, f"README.md has no ```python block right after {EMBEDDING_MARKER}"
    return match.group(1)


def test_readme_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    """The crypto layer's example (the block that fuses decryption shares blind)."""
    blocks = [block for block in _python_blocks() if "blind_fusion" in block]
    assert len(blocks) == 1, "README should have one crypto example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    values = np.array([float(v) for v in re.findall(r"[-\d.e]+", printed)])
    np.testing.assert_allclose(values, np.full(5, 0.9), atol=TOLERANCE)


def test_readme_embedding_example_runs_as_shown(tmp_path: Path) -> None:
    """The embedding example, saved as a file and run by the venv's Python outside the
    checkout: every client gets every round's global model, the same one, and the example's
    own check against plain FedAvg passes within the crypto tolerance."""
    script = tmp_path / "embed_readme.py"
    script.write_text(_embedding_block(), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the README example failed:\n{done.stdout}\n{done.stderr}"

    models: dict[tuple[str, int], list[float]] = {}
    for name, round_, values in re.findall(r"^(\w+) round (\d+): \[([^\]]*)\]$", done.stdout,
                                           flags=re.M):
        models[name, int(round_)] = [float(value) for value in values.split()]
    assert sorted(models) == [(name, r) for name in CLIENTS for r in range(1, ROUNDS + 1)], (
        done.stdout)
    for round_ in range(1, ROUNDS + 1):  # all clients decrypted the same global model
        assert len({tuple(models[name, round_]) for name in CLIENTS}) == 1, done.stdout
        assert len(models["alice", round_]) == 6

    final = re.search(r"^(\d+) rounds, global model == plain FedAvg \(max error (\S+)\)$",
                      done.stdout, flags=re.M)
    assert final is not None, done.stdout
    assert int(final[1]) == ROUNDS
    assert 0 <= float(final[2]) < TOLERANCE
