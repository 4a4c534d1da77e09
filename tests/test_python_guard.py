"""``import threshold_fl`` on anything but Python 3.10 fails early and clearly.

OpenFHE 1.6.1 wheels contain only a CPython 3.10 extension, so on another Python the
import must stop at the version guard (threshold_fl/_pyversion.py) with a message naming
the cause and the fix, not with an ImportError from deep inside openfhe.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import threshold_fl
from threshold_fl import _pyversion
from threshold_fl.errors import EnvironmentError_, ThresholdFLError

REPO = Path(__file__).resolve().parent.parent

_PROBE = "import sys; print(sys.executable); print('%d %d' % tuple(sys.version_info[:2]))"


def _probe(exe: str) -> tuple[str, tuple[int, int]] | None:
    try:
        proc = subprocess.run(
            [exe, "-E", "-s", "-c", _PROBE], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.split()
    if proc.returncode != 0 or len(lines) != 3:
        return None  # e.g. a pyenv shim for a version that is not selected
    return lines[0], (int(lines[1]), int(lines[2]))


def _other_pythons() -> dict[tuple[int, int], str]:
    """One interpreter per Python 3 version other than 3.10 found on this machine."""
    candidates: list[str] = []
    for name in ("python3.11", "python3.12", "python3.13", "python3.9", "python3"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    candidates += ["/usr/bin/python3", "/usr/local/bin/python3"]
    roots = {os.environ.get("PYENV_ROOT", ""), "/root/.pyenv", os.path.expanduser("~/.pyenv")}
    for root in sorted(r for r in roots if r):
        candidates += sorted(glob.glob(os.path.join(root, "versions", "3.*", "bin", "python")))
    found_by_version: dict[tuple[int, int], str] = {}
    for exe in candidates:
        if not os.path.exists(exe):
            continue
        probed = _probe(exe)
        if probed is None:
            continue
        real, version = probed
        if version[0] == 3 and version != (3, 10):
            found_by_version.setdefault(version, real)
    return found_by_version


OTHER_PYTHONS = _other_pythons()


@pytest.mark.parametrize(
    "version",
    sorted(OTHER_PYTHONS) or [None],
    ids=lambda v: "none-found" if v is None else f"py{v[0]}.{v[1]}",
)
def test_import_on_other_python_fails_clearly(
    version: tuple[int, int] | None, tmp_path: Path
) -> None:
    if version is None:
        # Skipping is justified only here: the check needs a second interpreter, and this
        # machine has no Python 3 other than 3.10. (Our machines have 3.11 at /usr/bin/python3.)
        pytest.skip("no Python 3 interpreter other than 3.10 on this machine")
    exe = OTHER_PYTHONS[version]
    code = f"import sys; sys.path.insert(0, {str(REPO)!r}); import threshold_fl"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    proc = subprocess.run(
        [exe, "-E", "-s", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    err = proc.stderr
    assert proc.returncode != 0, f"import threshold_fl succeeded on Python {version}"
    assert "threshold-fl needs Python 3.10" in err, err
    assert "OpenFHE" in err, err
    assert f"Python {version[0]}.{version[1]}" in err, err
    assert "make test" in err, err
    # Failed at the guard, not deep inside an import.
    assert "ModuleNotFoundError" not in err, err
    assert "ImportError" not in err, err
    assert "No module named" not in err, err
    if version >= (3, 7):  # older ones cannot parse errors.py and get a RuntimeError
        assert "threshold_fl.errors.EnvironmentError_: threshold-fl needs Python 3.10" in err, err


@pytest.mark.parametrize("version", [(3, 9), (3, 11), (3, 12), (3, 13), (4, 0)])
def test_check_rejects_other_versions(version: tuple[int, int]) -> None:
    with pytest.raises(EnvironmentError_) as info:
        _pyversion.check(version, "/some/python")
    text = str(info.value)
    assert f"Python {version[0]}.{version[1]} (/some/python)" in text
    assert "Python 3.10" in text
    assert "OpenFHE" in text
    assert "python3.10 -m venv .venv" in text
    assert isinstance(info.value, ThresholdFLError)


def test_check_accepts_310() -> None:
    _pyversion.check((3, 10, 13, "final", 0))
    _pyversion.check()  # the test suite itself runs on 3.10


def test_import_is_light() -> None:
    # `import threshold_fl` must not load OpenFHE or torch (seconds, gigabytes).
    code = (
        "import sys, threshold_fl\n"
        "heavy = [m for m in ('openfhe', 'torch') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"import threshold_fl loaded {proc.stdout.strip()}"


def test_public_names() -> None:
    assert isinstance(threshold_fl.__version__, str)
    assert threshold_fl.__version__.count(".") >= 2
    assert threshold_fl.EnvironmentError_ is EnvironmentError_
    for name in threshold_fl.__all__:
        assert hasattr(threshold_fl, name), name
