"""The targets tables (protocols/states.py) against the code and the doc.

Statically: every ``self.state = ...`` in a role module is reached from some entry of
the tables (a ``TRANSITIONS`` handler or an ``OTHER_TARGETS`` method), following
``self.method(...)`` calls, and each state it assigns is declared by an entry that
reaches it; each declared target is assigned somewhere its entry reaches (no stale
names).  The static reach ignores which branch runs, so the per-entry tables (checked
at run time by ``Machine._checked`` in every protocol test) stay the precise ones.
"""

from __future__ import annotations

import ast
import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from protocols import AggregatorMachine, ClientMachine, KeyAuthorityMachine
from protocols.machine import Machine
from protocols.tables import state_table

ROOT = Path(__file__).resolve().parent.parent
MACHINES: dict[type[Machine[enum.Enum]], tuple[str, ...]] = {
    ClientMachine: ("protocols/client.py",),
    AggregatorMachine: ("protocols/aggregator.py",),
    KeyAuthorityMachine: ("protocols/authority.py",),
}
#: Calls that dispatch again: the nested dispatch is checked as its own entry.
NESTED = {"handle", "_replay"}


@dataclass(frozen=True)
class Site:
    """One ``self.state = ...``: where, and the state names (or parameter) assigned."""

    where: str
    names: frozenset[str]
    parameter: str | None = None


def _is_self_state(node: ast.expr) -> bool:
    return (isinstance(node, ast.Attribute) and node.attr == "state"
            and isinstance(node.value, ast.Name) and node.value.id == "self")


def _state_names(value: ast.expr, where: str) -> frozenset[str]:
    if isinstance(value, ast.Attribute) and isinstance(value.value, ast.Name):
        return frozenset({value.attr})  # C.X, A.X, K.X
    if isinstance(value, ast.IfExp):
        return _state_names(value.body, where) | _state_names(value.orelse, where)
    raise AssertionError(f"{where}: self.state assigned in a form this test does not read")


class Module:
    """The methods of a role's classes, their state assignments and self-calls."""

    def __init__(self, paths: tuple[str, ...]) -> None:
        self.methods: dict[str, ast.FunctionDef] = {}
        self.where: dict[str, str] = {}
        for path in paths:
            tree = ast.parse((ROOT / path).read_text(), path)
            for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
                for node in cls.body:
                    if isinstance(node, ast.FunctionDef):
                        self.methods[node.name] = node
                        self.where[node.name] = f"{path}:{cls.name}.{node.name}"

    def sites(self, name: str) -> Iterator[Site]:
        function = self.methods[name]
        params = [a.arg for a in function.args.args]
        for node in ast.walk(function):
            targets: list[ast.expr] = []
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    targets += target.elts if isinstance(target, ast.Tuple) else [target]
            elif isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            if not any(_is_self_state(t) for t in targets):
                continue
            where = f"{self.where[name]}, line {node.lineno}"
            assert isinstance(node, ast.Assign) and len(targets) == 1, (
                f"{where}: only `self.state = ...` is read by this test")
            value = node.value
            if isinstance(value, ast.Name) and value.id in params:
                yield Site(where, frozenset(), value.id)
            else:
                yield Site(where, _state_names(value, where))

    def calls(self, name: str) -> Iterator[ast.Call]:
        for node in ast.walk(self.methods[name]):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "self"
                    and node.func.attr in self.methods and node.func.attr not in NESTED):
                yield node

    def argument(self, name: str, parameter: str) -> frozenset[str]:
        """The states passed for ``parameter`` at every call of ``name`` (staying put,
        ``self.state``, passes none)."""
        function = self.methods[name]
        index = [a.arg for a in function.args.args].index(parameter) - 1  # after self
        found: set[str] = set()
        for caller in self.methods:
            for call in self.calls(caller):
                if call.func.attr != name:  # type: ignore[attr-defined]
                    continue
                given = [k.value for k in call.keywords if k.arg == parameter] or [
                    call.args[index]]
                if not _is_self_state(given[0]):
                    found |= _state_names(given[0], f"a call of {name} in {caller}")
        return frozenset(found)

    def reach(self, name: str) -> dict[Site, frozenset[str]]:
        """Every assignment reachable from ``name``, with the states it may assign."""
        seen, todo, found = {name}, [name], {}
        while todo:
            current = todo.pop()
            for site in self.sites(current):
                names = site.names or self.argument(current, site.parameter or "")
                found[site] = names
            for call in self.calls(current):
                callee = call.func.attr  # type: ignore[attr-defined]
                if callee not in seen:
                    seen.add(callee)
                    todo.append(callee)
        return found

    def all_sites(self) -> set[Site]:
        return {site for name in self.methods for site in self.sites(name)}


def _entries(machine: type[Machine[enum.Enum]]) -> list[tuple[str, str, frozenset[str]]]:
    """(label, method, declared target names) for every table entry and other move."""
    entries = [
        (f"{state.name}/{body.__name__}", handler.__name__,
         frozenset(s.name for s in machine.TARGETS[state][body]))
        for state, row in machine.TRANSITIONS.items() for body, handler in row.items()
    ]
    entries += [(method, method, frozenset(s.name for s in targets))
                for method, targets in machine.OTHER_TARGETS.items()]
    return entries


ROLES = pytest.mark.parametrize("machine", list(MACHINES), ids=lambda m: m.__name__)


@ROLES
def test_the_targets_table_has_the_shape_of_the_transitions(
        machine: type[Machine[enum.Enum]]) -> None:
    assert {s: set(row) for s, row in machine.TARGETS.items()} == {
        s: set(row) for s, row in machine.TRANSITIONS.items()}


@ROLES
def test_every_state_assignment_is_declared_by_an_entry_that_reaches_it(
        machine: type[Machine[enum.Enum]]) -> None:
    module = Module(MACHINES[machine])
    entries = _entries(machine)
    reached = {label: module.reach(method) for label, method, _ in entries}
    for site in module.all_sites():
        reaching = [(label, declared) for label, _, declared in entries
                    if site in reached[label]]
        assert reaching, f"{site.where} is reached from no entry of the tables"
        names = next(iter(r[site] for r in reached.values() if site in r))
        for name in names:
            assert any(name in declared for _, declared in reaching), (
                f"{site.where} assigns {name}, which no entry reaching it declares "
                f"(entries: {sorted(label for label, _ in reaching)})")


@ROLES
def test_every_declared_target_is_assigned_where_its_entry_reaches(
        machine: type[Machine[enum.Enum]]) -> None:
    module = Module(MACHINES[machine])
    for label, method, declared in _entries(machine):
        assigned = set().union(*module.reach(method).values())
        assert declared <= assigned, f"{label} declares {sorted(declared - assigned)}, " \
                                     f"which {method} never assigns"


@ROLES
def test_every_declared_target_is_in_the_table_or_terminal(
        machine: type[Machine[enum.Enum]]) -> None:
    declared = {s for row in machine.TARGETS.values() for to in row.values() for s in to}
    declared |= {s for to in machine.OTHER_TARGETS.values() for s in to}
    for state in declared:
        assert state in machine.TRANSITIONS or state in machine.TERMINAL or (
            # states left by an application call (submit_*) rather than a message
            any(state in machine.OTHER_TARGETS[m] for m in machine.OTHER_TARGETS
                if m.startswith("submit_"))), state
    states = list(type(next(iter(machine.TERMINAL))))
    assert set(states[1:]) <= declared, "a state nothing leads to"


def test_an_undeclared_move_is_refused_at_run_time(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocols.machine import UndeclaredTransition
    from protocols.states import KeyAuthorityState as K

    class Probe:  # just enough of a machine for Machine._checked
        me, state, _reached = "probe", K.WAITING, []

    def move() -> object:
        Probe.state = K.DONE
        return None

    with pytest.raises(UndeclaredTransition, match="from WAITING to DONE on KeygenStart"):
        Machine._checked(Probe(), frozenset({K.ABORTED}), "KeygenStart", move)  # type: ignore[arg-type]


@ROLES
def test_the_doc_holds_the_rendered_state_table(machine: type[Machine[enum.Enum]]) -> None:
    doc = (ROOT / "docs/protocol.md").read_text()
    assert state_table(machine) in doc, (
        f"docs/protocol.md section 8 differs from protocols.tables.state_table("
        f"{machine.__name__}); paste its output there")
    assert doc.count("| state (value) | accepts → may lead to |") == len(MACHINES)
