"""The hand-written tables of docs/reference/states-errors.md say what the code says."""

from __future__ import annotations

import re
from pathlib import Path

from batchtasks.core.states import STATE_CODES, WRITES, TaskState

PAGE = Path(__file__).resolve().parent.parent / "docs" / "reference" / "states-errors.md"


def table_after(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading``, as cells without backticks."""
    text = PAGE.read_text().split(heading, 1)[1]
    rows = []
    for line in text.splitlines():
        if line.startswith("|"):
            rows.append([cell.strip().replace("`", "") for cell in line.strip("|").split("|")])
        elif rows:
            break
    return rows[2:]


def states_in(cell: str) -> set[str]:
    return {word for word in re.findall(r"[a-z_]+", cell) if word in TaskState.values}


def test_the_states_table_has_every_state_with_its_code() -> None:
    rows = table_after("## Task states")
    assert {row[0]: int(row[1]) for row in rows} == dict(STATE_CODES)
    final = {row[0] for row in rows if row[3] == "yes"}
    assert final == {state for state in TaskState.values if TaskState(state).is_final}


def test_the_writes_table_is_the_table_of_writes() -> None:
    documented: dict[str, tuple[set[str], set[str]]] = {}
    for name_cell, _by, sources, targets in table_after("### The writes between them"):
        sources_set = (
            set(WRITES["delete"].sources) if sources == "any final state" else states_in(sources)
        )
        for name in name_cell.split(", "):
            documented[name] = (sources_set, states_in(targets))
    assert documented == {
        name: (set(write.sources), set(write.targets)) for name, write in WRITES.items()
    }
