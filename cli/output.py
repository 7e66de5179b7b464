"""Rendering: rich tables for people, --json for programs, one-line errors on stderr.

Tables fit the terminal without cutting what matters: a column empty in every row is dropped;
key columns (a node's name, its state, its rate) are never wrapped or cut; other columns fold
their text onto more lines, and when even that does not fit, the least important of them are
dropped (named under the table) rather than any key column being cut.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

#: a non-key column folds no narrower than its longest word, or this when a word is longer
_FOLD_MIN = 16


@dataclass(frozen=True)
class Column:
    """A table column. ``key``: shown whole or the table drops others first. ``drop_rank``: among
    non-key columns, the lowest rank is dropped first when the terminal is too narrow (default:
    the rightmost first)."""

    title: str
    key: bool = False
    justify: str = "left"
    drop_rank: int | None = None


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_default) + "\n")


def console():  # noqa: ANN201 - rich is imported only when something is rendered
    from rich.console import Console

    return Console()


def print_table(title: str | None, columns: Sequence[str | Column], rows: Sequence[Sequence[Any]]) -> None:
    out = console()
    out.print(build_table(title, columns, rows, width=out.width))


def build_table(title: str | None, columns: Sequence[str | Column], rows: Sequence[Sequence[Any]], *,
                width: int):  # noqa: ANN201 - a rich Table
    """The rich Table for ``rows``, fitted to ``width`` terminal columns (see the module doc)."""
    from rich.table import Table

    specs = [c if isinstance(c, Column) else Column(c) for c in columns]
    cells = [["" if cell is None else str(cell) for cell in row] for row in rows]
    shown = [i for i in range(len(specs)) if not cells or any(row[i].strip() for row in cells)]
    full = {i: _full_width(specs[i], cells, i) for i in range(len(specs))}
    least = {i: full[i] if specs[i].key else min(full[i], _longest_word(specs[i], cells, i)) for i in full}
    dropped: list[str] = []
    # Too wide with its outer border: the border goes first (two columns), then the least important columns.
    edge = _frame(len(shown), edge=True) + sum(full[i] for i in shown) <= width
    while _frame(len(shown), edge=edge) + sum(least[i] for i in shown) > width:
        victim = _next_to_drop(specs, shown)
        if victim is None:
            break  # only key columns left: rich does what it can
        shown.remove(victim)
        dropped.append(specs[victim].title)
    widths = _fit(specs, shown, full, least, width - _frame(len(shown), edge=edge))
    caption = f"not shown at this width: {', '.join(dropped)} (widen the terminal or use --json)" if dropped else None
    table = Table(title=title, title_justify="left", caption=caption, caption_justify="left", show_edge=edge)
    for i in shown:
        spec = specs[i]
        # Fixed widths only where the table had to shrink: a table that fits is rich's own layout.
        fixed = widths[i] if widths is not None else None
        table.add_column(spec.title, justify=spec.justify, width=fixed, no_wrap=spec.key,
                         overflow="ellipsis" if spec.key else "fold")
    for row in cells:
        table.add_row(*(row[i] for i in shown))
    return table


def _frame(count: int, *, edge: bool) -> int:
    """Columns taken by rich's default box: a separator between columns, a space of padding on
    each side of each cell, and the outer border when shown."""
    return 3 * count + (1 if edge else -1)


def _fit(specs: list[Column], shown: list[int], full: dict[int, int], least: dict[int, int],
         room: int) -> dict[int, int] | None:
    """Each shown column's width, narrowing the widest non-key column first, never below its
    longest word; None when every column fits whole."""
    widths = {i: full[i] for i in shown}
    excess = sum(widths.values()) - room
    if excess <= 0:
        return None
    while excess > 0:
        narrowable = [i for i in shown if not specs[i].key and widths[i] > least[i]]
        if not narrowable:
            break
        widest = max(narrowable, key=lambda i: (widths[i], i))
        widths[widest] -= 1
        excess -= 1
    return widths


def _full_width(spec: Column, cells: list[list[str]], i: int) -> int:
    from rich.cells import cell_len

    lines = [spec.title, *(line for row in cells for line in row[i].splitlines())]
    return max((cell_len(line) for line in lines), default=1)


def _longest_word(spec: Column, cells: list[list[str]], i: int) -> int:
    """How narrow a folded column may get: its longest word, at most ``_FOLD_MIN``."""
    from rich.cells import cell_len

    words = [w for text in (spec.title, *(row[i] for row in cells)) for w in text.split()]
    return min(_FOLD_MIN, max((cell_len(w) for w in words), default=1))


def _next_to_drop(specs: list[Column], shown: list[int]) -> int | None:
    candidates = [i for i in shown if not specs[i].key]
    if not candidates:
        return None
    return min(candidates, key=lambda i: (specs[i].drop_rank if specs[i].drop_rank is not None else 1_000_000, -i))


def print_error(message: str, hint: str | None = None) -> None:
    line = f"error: {message}"
    if hint:
        line += f" (hint: {hint})"
    sys.stderr.write(line.replace("\n", " ") + "\n")


def usd_per_hour(value: Any) -> str:
    """A rate for a table: three decimals, more for rates under a cent (a volume's $0.00100/h)."""
    if value is None:
        return "?"
    return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.5f}"
