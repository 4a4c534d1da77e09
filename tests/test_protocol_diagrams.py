"""docs/protocol.md's state diagrams against the machines' target tables: each drawn edge
is a move the code allows, and every move a message may cause is drawn (moves to a state
reached from anywhere, such as ABORTED, may be left to the notes)."""

from __future__ import annotations

import enum
import re
from pathlib import Path

import pytest

from protocols import AggregatorMachine, ClientMachine, KeyAuthorityMachine
from protocols.machine import Machine
from protocols.tables import Edges, edges

DOC = Path(__file__).resolve().parent.parent / "docs/protocol.md"
#: Each role's section title in docs/protocol.md section 8, and its machine.
SECTIONS: dict[str, type[Machine[enum.Enum]]] = {
    "### Aggregator": AggregatorMachine,
    "### Client": ClientMachine,
    "### Key authority": KeyAuthorityMachine,
}
_EDGE = re.compile(r"^\s*(\[\*\]|\w+)\s*-->\s*(\[\*\]|\w+)\s*(?::.*)?$")


def drawn(section: str) -> set[tuple[str, str]]:
    """The edges of the first state diagram after *section* (start and end left out)."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(section)
    block = text.index("stateDiagram-v2", start)
    body = text[block:text.index("```", block)]
    found = {match.groups() for line in body.splitlines()[1:]
             if (match := _EDGE.match(line)) is not None}
    return {(a, b) for a, b in found if "[*]" not in (a, b)}


@pytest.mark.parametrize("section", list(SECTIONS))
def test_every_drawn_edge_is_allowed_and_every_message_move_drawn(section: str) -> None:
    allowed: Edges = edges(SECTIONS[section])
    diagram = drawn(section)
    assert diagram, f"no state diagram under {section!r}"
    states = {state.name for state in type(next(iter(SECTIONS[section].TERMINAL)))}
    assert {name for edge in diagram for name in edge} <= states
    assert not [edge for edge in diagram if not allowed.allows(*edge)]
    # Moves to a state reached from anywhere (ABORTED, say) may be left to the doc's notes.
    missing = {(a, b) for a, b in allowed.by_message - diagram if b not in allowed.anywhere}
    assert not missing, f"moves on a message missing from the diagram: {sorted(missing)}"


def test_the_check_sees_a_wrong_edge() -> None:
    allowed = edges(ClientMachine)
    assert not allowed.allows("IDLE", "TRAINING")  # no message or method does that
    assert allowed.allows("TRAINING", "ABORTED")  # the deadline, from anywhere
    assert ("KEYS_CONFIRMED", "MASK_COMPUTING") in allowed.by_message
