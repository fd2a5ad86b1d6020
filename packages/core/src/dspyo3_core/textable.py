"""Plain-text tables for the CLI's listing commands (``plugins``, ``lm list``).

Those commands run on every ``dspyo3`` start-up path a user touches first, and rich's console alone costs about
40 ms of import time there; a listing needs aligned columns, not a renderer. Commands that print rarely (``doctor``,
evaluations) keep rich.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["render"]


def _clean(cell: object) -> str:
    """One line per cell: newlines and tabs become spaces (a table row never spans lines)."""
    return " ".join(str(cell).split()) if cell is not None else ""


def render(headers: Sequence[str], rows: Sequence[Sequence[object]], *, gap: int = 2) -> str:
    """``rows`` under ``headers`` as aligned columns with a rule under the header; the last column is not padded
    (long values there, such as a plugin's hook list, run to the end of the line).

    >>> print(render(["name", "status"], [["core", "loaded"], ["rag", "disabled"]]))
    name  status
    ────  ────────
    core  loaded
    rag   disabled
    """
    table = [[_clean(h) for h in headers]] + [[_clean(c) for c in row] for row in rows]
    columns = len(headers)
    for row in table:
        if len(row) != columns:
            raise ValueError(f"a row has {len(row)} cells for {columns} columns: {row!r}")
    widths = [max(len(row[i]) for row in table) for i in range(columns)]
    spacer = " " * gap

    def line(cells: Sequence[str]) -> str:
        padded = [cell.ljust(widths[i]) if i < columns - 1 else cell for i, cell in enumerate(cells)]
        return spacer.join(padded).rstrip()

    rule = spacer.join("─" * max(width, 1) for width in widths)
    return "\n".join([line(table[0]), rule, *(line(row) for row in table[1:])])
