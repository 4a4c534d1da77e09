"""The README's crypto example runs and prints what it says."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def test_readme_python_example_runs(capsys) -> None:  # type: ignore[no-untyped-def]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})
    printed = capsys.readouterr().out
    values = np.array([float(v) for v in re.findall(r"[-\d.e]+", printed)])
    np.testing.assert_allclose(values, np.full(5, 0.9), atol=1e-5)
