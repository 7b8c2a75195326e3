"""Tables described as columns, and their GitHub Markdown.

A ``Table`` is a list of ``Column`` (a header, an alignment, and how to get a row's text) and the
rows; ``Table.markdown()`` (or ``markdown_table`` on plain lists) writes it. Building a table
thus says what each column shows, and nothing about pipes or dashes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

ALIGNMENTS = ("l", "r")


@dataclass(frozen=True)
class Column:
    """One column: its header, 'l' or 'r' alignment, and a function from a row to its value
    (written with ``str``)."""

    header: str
    value: Callable[[Any], object]
    align: str = "l"

    def __post_init__(self) -> None:
        if self.align not in ALIGNMENTS:
            raise ValueError(
                f"column {self.header!r}: align must be 'l' or 'r', not {self.align!r}"
            )


@dataclass
class Table:
    """Columns and the rows they are read from (any objects the columns' functions take)."""

    columns: Sequence[Column]
    rows: Sequence[Any]

    def cells(self) -> list[list[object]]:
        """The body: each row's value per column."""
        return [[column.value(row) for column in self.columns] for row in self.rows]

    def markdown(self) -> str:
        return markdown_table(
            [c.header for c in self.columns], self.cells(), [c.align for c in self.columns]
        )


def optional(present: bool, column: Column) -> list[Column]:
    """``[column]`` when the data has it, else nothing: ``[a, *optional(has_b, b), c]``."""
    return [column] if present else []


def _cell(value: object) -> str:
    """A value as one table cell: line breaks flattened, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown_table(
    headers: Sequence[str], rows: Iterable[Sequence[object]], align: Sequence[str] | None = None
) -> str:
    """A GitHub Markdown table; ``align`` holds 'l' or 'r' per column. Pipes in cells are
    escaped and line breaks flattened so a cell never breaks the table."""
    align = align or ["l"] * len(headers)
    lines = [
        "| " + " | ".join(_cell(h) for h in headers) + " |",
        "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
