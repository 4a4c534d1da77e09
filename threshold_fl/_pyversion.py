"""Python version guard for threshold-fl.

Imported first by ``threshold_fl/__init__.py``.  It must itself import on any
Python, so it uses only syntax and library calls valid on every Python 3 (and
Python 2.7): no f-strings, no annotations, no ``from __future__`` imports.

Why Python 3.10 exactly: the only OpenFHE wheel that loads on these machines,
``openfhe==1.6.1.0.22.4``, contains a CPython 3.10 extension built for
glibc 2.35 (the 24.04 builds are CPython 3.12 for glibc 2.39).  On any other
Python, ``import openfhe`` would fail deep inside with an ImportError that does
not say what to do, so we fail early with a message that does.
"""

import sys

MYPY = False
if MYPY:  # type checkers only; `typing` is not needed (nor imported) at run time
    from typing import Any, Optional, Sequence, Type  # noqa: F401  (used in type comments)

REQUIRED = (3, 10)

_FIX = (
    "threshold-fl needs Python 3.10, but this is Python {found} ({exe}).\n"
    "Cause: OpenFHE 1.6.1 (openfhe==1.6.1.0.22.4) ships only a CPython 3.10 "
    "extension (built for glibc 2.35), so it cannot be imported on Python {found}.\n"
    "Fix: run `make test` or `make demo` in the repository; they find Python 3.10 "
    "and create a Python 3.10 virtual environment at .venv.  Or create one yourself:\n"
    "    python3.10 -m venv .venv && .venv/bin/pip install -e '.[dev]'\n"
    "(with pyenv, Python 3.10 is usually at ~/.pyenv/versions/3.10.*/bin/python; "
    "`pyenv install 3.10` gets one), then use .venv/bin/python."
)


def message(version_info=None, executable=None):
    # type: (Optional[Sequence[Any]], Optional[str]) -> str
    """The error text for an unsupported interpreter."""
    info = sys.version_info if version_info is None else version_info
    exe = (sys.executable or "unknown interpreter") if executable is None else executable
    found = "%d.%d" % (info[0], info[1])
    return _FIX.format(found=found, exe=exe)


def _error_class():
    # type: () -> Type[Exception]
    # errors.py is plain Python 3.7+; on an older interpreter it may not even
    # parse, and the guard must still speak clearly.
    try:
        from threshold_fl.errors import EnvironmentError_
    except Exception:  # SyntaxError on very old Pythons, anything else too
        return RuntimeError
    return EnvironmentError_


def check(version_info=None, executable=None):
    # type: (Optional[Sequence[Any]], Optional[str]) -> None
    """Raise ``threshold_fl.errors.EnvironmentError_`` unless running on Python 3.10."""
    info = sys.version_info if version_info is None else version_info
    if tuple(info[:2]) != REQUIRED:
        raise _error_class()(message(info, executable))
