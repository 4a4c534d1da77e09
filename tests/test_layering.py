"""The dependency direction between layers (docs/architecture.md), checked on the source.

- the library (``threshold_fl.crypto``, ``ml``, ``identity``, ``node`` and the other
  top-level modules, ``protocols``, ``transports``) never imports the application
  (``threshold_fl.app``), the benchmarks (``threshold_fl.bench``) or the peers
  (``threshold_fl.peers``);
- ``threshold_fl.crypto`` and ``threshold_fl.ml`` import neither ``protocols`` nor
  ``transports``;
- ``protocols`` imports no ``transports``, no I/O (asyncio, socket, MQTT clients), no clock
  (``time``) and no randomness source (``random``, ``secrets``, ``os.urandom``): time and
  randomness are passed in;
- ``transports`` imports no ``protocols`` and no crypto backend (``threshold_fl.crypto``,
  ``openfhe``);
- ``threshold_fl/sealing.py`` (seals and keyed checks) imports no ``openfhe``, no
  ``threshold_fl.crypto`` and neither ``protocols`` nor ``transports``.

Imports are found with :mod:`ast` (nothing is imported), including relative imports,
``from package import module``, attribute use such as ``os.urandom`` after ``import os``,
and literal ``importlib.import_module("...")`` / ``__import__("...")`` calls.  Imports under
``if TYPE_CHECKING:`` count too: the rule is about the design, not only about run time.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Rule:
    scope: str  # directory relative to the repository root
    forbidden: tuple[str, ...]  # dotted module (or module.attribute) names
    why: str


APPLICATION = ("threshold_fl.app", "threshold_fl.bench", "threshold_fl.peers")
# The library's top-level modules (threshold_fl/*.py); the packages have their own rules.
LIBRARY_MODULES = ("__init__", "_checks", "_pyversion", "arrays", "errors", "heap", "identity",
                   "node", "progress", "sealing")

RULES = (
    Rule(
        "threshold_fl/crypto",
        ("protocols", "transports", *APPLICATION),
        "the crypto foundation is below the protocol and transport layers",
    ),
    Rule(
        "threshold_fl/ml",
        ("protocols", "transports", *APPLICATION),
        "the ML bridge is below the protocol and transport layers",
    ),
    Rule(
        "protocols",
        (
            "transports",
            "asyncio",
            "socket",
            "aiomqtt",
            "paho",
            "time",
            "random",
            "secrets",
            "os.urandom",
            *APPLICATION,
        ),
        "protocols are sans-I/O state machines; time and randomness are passed in",
    ),
    Rule(
        "transports",
        ("protocols", "threshold_fl.crypto", "openfhe", *APPLICATION),
        "transports know bytes, topics and identities, not protocols or the HE backend",
    ),
    Rule(
        "threshold_fl/sealing.py",
        ("openfhe", "threshold_fl.crypto", "protocols", "transports", *APPLICATION),
        "seals and keyed checks are plain symmetric crypto below the protocols, usable "
        "without the HE backend",
    ),
    # One rule per scope, so sealing (which has its own, stricter rule) is left out here.
    *(Rule(f"threshold_fl/{name}.py", APPLICATION,
           "the library never imports the application, the benchmarks or the peers")
      for name in LIBRARY_MODULES if name != "sealing"),
)


def module_name(path: Path, root: Path = REPO) -> tuple[str, bool]:
    """Dotted module name of a source file, and whether it is a package ``__init__``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts.pop()
    return ".".join(parts), is_package


def _resolve_relative(module: str | None, level: int, current: str, is_package: bool) -> str:
    if level == 0:
        return module or ""
    package = current.split(".") if is_package else current.split(".")[:-1]
    base = package[: len(package) - (level - 1)] if level > 1 else package
    return ".".join([*base, *([module] if module else [])])


def _dotted(node: ast.expr) -> list[str] | None:
    """``a.b.c`` as ["a", "b", "c"]; None for anything that is not a plain name chain."""
    names: list[str] = []
    while isinstance(node, ast.Attribute):
        names.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    names.append(node.id)
    return names[::-1]


def imported_names(
    source: str, current: str = "", is_package: bool = False
) -> list[tuple[int, str]]:
    """Every module (or module attribute) a source file reaches, with its line number."""
    tree = ast.parse(source)
    found: list[tuple[int, str]] = []
    aliases: dict[str, str] = {}  # local name -> dotted name it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((node.lineno, alias.name))
                if alias.asname:
                    aliases[alias.asname] = alias.name
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = top
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_relative(node.module, node.level, current, is_package)
            if base:
                found.append((node.lineno, base))
            for alias in node.names:
                if alias.name == "*":
                    continue
                full = f"{base}.{alias.name}" if base else alias.name
                found.append((node.lineno, full))
                aliases[alias.asname or alias.name] = full
        elif isinstance(node, ast.Call) and node.args:
            func = _dotted(node.func)
            first = node.args[0]
            if (
                func in (["importlib", "import_module"], ["import_module"], ["__import__"])
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.append((node.lineno, first.value))
    # Second pass, now that every alias is known: attribute use such as `os.urandom(16)`.
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if chain and chain[0] in aliases:
                found.append((node.lineno, ".".join([aliases[chain[0]], *chain[1:]])))
    return found


def _matches(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(forbidden + ".")


def violations(
    source: str, forbidden: tuple[str, ...], current: str = "", is_package: bool = False
) -> list[str]:
    """``"line N: name (forbidden: f)"`` for each forbidden reach in ``source``."""
    out = []
    for lineno, name in imported_names(source, current, is_package):
        for bad in forbidden:
            if _matches(name, bad):
                out.append(f"line {lineno}: {name} (forbidden: {bad})")
    return sorted(set(out))


def _rule(scope: str) -> Rule:
    return next(r for r in RULES if r.scope == scope)


# ------------------------------------------------------------- the detector can fail


@pytest.mark.parametrize(
    ("scope", "current", "source"),
    [
        ("threshold_fl/crypto", "threshold_fl.crypto.keys", "import transports.mqtt\n"),
        ("threshold_fl/crypto", "threshold_fl.crypto.keys", "from protocols import stage1\n"),
        ("threshold_fl/ml", "threshold_fl.ml.model", "import protocols as p\n"),
        ("protocols", "protocols.stage1", "import asyncio\n"),
        ("protocols", "protocols.stage1", "from time import monotonic\n"),
        ("protocols", "protocols.stage1", "import time as t\n"),
        ("protocols", "protocols.stage1", "import secrets\n"),
        ("protocols", "protocols.stage1", "from random import random\n"),
        ("protocols", "protocols.stage1", "from os import urandom\n"),
        ("protocols", "protocols.stage1", "import os\nkey = os.urandom(32)\n"),
        ("protocols", "protocols.stage1", "import os as o\nkey = o.urandom(32)\n"),
        ("protocols", "protocols.stage1", "import socket\n"),
        ("protocols", "protocols.stage1", "from .. import transports\n"),
        ("protocols", "protocols.stage1", "from transports.memory import Bus\n"),
        ("protocols", "protocols.stage1", "import importlib\nimportlib.import_module('asyncio')\n"),
        (
            "protocols",
            "protocols.stage1",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import transports\n",
        ),
        ("transports", "transports.mqtt", "import openfhe\n"),
        ("transports", "transports.mqtt", "from threshold_fl import crypto\n"),
        ("transports", "transports.mqtt", "from threshold_fl.crypto.context import Ctx\n"),
        ("transports", "transports.mqtt", "import protocols.messages\n"),
        ("transports", "transports.mqtt", "__import__('openfhe')\n"),
        ("threshold_fl/node.py", "threshold_fl.node", "from threshold_fl.app import party\n"),
        ("threshold_fl/sealing.py", "threshold_fl.sealing", "import openfhe\n"),
        ("threshold_fl/sealing.py", "threshold_fl.sealing", "from .crypto import context\n"),
        ("threshold_fl/crypto", "threshold_fl.crypto.keys", "import threshold_fl.bench.crypto\n"),
        ("protocols", "protocols.client", "from threshold_fl.peers import tenseal_flare\n"),
    ],
)
def test_detector_flags_violation(scope: str, current: str, source: str) -> None:
    assert violations(source, _rule(scope).forbidden, current), source


@pytest.mark.parametrize(
    ("scope", "current", "source"),
    [
        (
            "protocols",
            "protocols.stage1",
            "from __future__ import annotations\n"
            "import numpy as np\n"
            "from datetime import timedelta\n"
            "from threshold_fl.crypto import params\n"
            "from . import messages\n"
            "rng = np.random.default_rng(1)\n"
            "import os\n"
            "p = os.path.join('a', 'b')\n",
        ),
        ("transports", "transports.mqtt", "import asyncio\nimport aiomqtt\nimport msgpack\n"),
        ("transports", "transports.mqtt", "from threshold_fl.identity import Identity\n"),
        (
            "threshold_fl/crypto",
            "threshold_fl.crypto.keys",
            "import openfhe\nfrom . import params\n",
        ),
    ],
)
def test_detector_accepts_allowed_imports(scope: str, current: str, source: str) -> None:
    assert violations(source, _rule(scope).forbidden, current) == []


def test_relative_imports_resolve() -> None:
    names = {n for _, n in imported_names("from ..x import y\n", "protocols.a.b", False)}
    assert names == {"protocols.x", "protocols.x.y"}
    names = {n for _, n in imported_names("from . import y\n", "transports", True)}
    assert names == {"transports", "transports.y"}


# ------------------------------------------------------------- the real source tree


def _sources(scope: str) -> list[Path]:
    root = REPO / scope
    if root.suffix == ".py":
        return [root] if root.is_file() else []
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def test_layer_packages_are_scanned() -> None:
    # Guards against a vacuous pass (a renamed directory, a wrong REPO).
    assert (REPO / "protocols" / "__init__.py") in _sources("protocols")
    assert (REPO / "transports" / "__init__.py") in _sources("transports")
    for name in LIBRARY_MODULES:
        assert _sources(f"threshold_fl/{name}.py"), name


def test_every_top_level_module_is_library_or_named_application() -> None:
    """A new threshold_fl/*.py must be declared library (and so checked) or moved into
    the application package."""
    top = {p.stem for p in (REPO / "threshold_fl").glob("*.py")}
    assert top == set(LIBRARY_MODULES)


@pytest.mark.parametrize("rule", RULES, ids=[r.scope for r in RULES])
def test_source_tree_respects_layering(rule: Rule) -> None:
    problems = []
    for path in _sources(rule.scope):
        current, is_package = module_name(path)
        for v in violations(path.read_text(encoding="utf-8"), rule.forbidden, current, is_package):
            problems.append(f"{path.relative_to(REPO)} {v}")
    assert not problems, f"layering rule broken ({rule.why}):\n" + "\n".join(problems)
