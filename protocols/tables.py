"""docs/protocol.md's state tables, rendered from the machines' tables, and the edges its
state diagrams may draw.

The doc holds exactly what :func:`state_table` returns for each role (a test compares
them), so the "leads to" column cannot drift from ``TARGETS`` and ``OTHER_TARGETS``; the
hand-drawn diagrams (their edge labels say why) are checked against :func:`edges`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from protocols.machine import Machine

__all__ = ["Edges", "edges", "state_table"]


def _names(states: Iterable[enum.Enum], order: list[enum.Enum]) -> str:
    return ", ".join(f"`{state.name}`" for state in sorted(states, key=order.index))


def state_table(machine: type[Machine[enum.Enum]]) -> str:
    """One row per state: what it accepts and where each message may lead; the moves
    outside the table (``start()``, deadlines, ``Abort``...) are listed below it."""
    states: type[enum.Enum] = type(next(iter(machine.TERMINAL)))  # the role's enum
    order: list[enum.Enum] = list(states)
    lines = ["| state (value) | accepts → may lead to |", "|---|---|"]
    for state in order:
        row = machine.TARGETS.get(state)
        if row:
            cells = [f"`{body.__name__}`" + (f" → {_names(to, order)}" if to else "")
                     for body, to in row.items()]
            accepts = "<br>".join(cells)
        else:
            accepts = "none (terminal)" if state in machine.TERMINAL else "none"
        lines.append(f'| `{state.name}` ("{state.value}") | {accepts} |')
    lines.append("")
    lines.append("Outside the table:")
    for method, to in machine.OTHER_TARGETS.items():
        call = f"`{method}()`" if not method.startswith("_") else {
            "_on_abort": "`Abort`", "_deadline_passed": "the deadline"}.get(method, method)
        lines.append(f"- {call} → {_names(to, order)}")
    return "\n".join(lines)



@dataclass(frozen=True)
class Edges:
    """A role's possible moves: ``by_message`` from the table (a state to another, on a
    message); ``anywhere`` the states the moves outside the table reach, from any state
    (``start()``, deadlines, ``Abort``...)."""

    by_message: frozenset[tuple[str, str]]
    anywhere: frozenset[str]

    def allows(self, source: str, target: str) -> bool:
        """Whether a diagram may draw *source* --> *target* (staying is always allowed)."""
        return source == target or (source, target) in self.by_message or (
            target in self.anywhere)


def edges(machine: type[Machine[enum.Enum]]) -> Edges:
    by_message = {(state.name, target.name) for state, row in machine.TARGETS.items()
                  for targets in row.values() for target in targets if target != state}
    anywhere = {target.name for targets in machine.OTHER_TARGETS.values() for target in targets}
    return Edges(frozenset(by_message), frozenset(anywhere))
