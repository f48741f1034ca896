"""Plain-text tables for the CLI that fit the terminal (``events list``, ``followup
results``).

Plain aligned columns rather than boxes: one row per line whatever the width (a table
that wraps an id over several lines cannot be read or grepped), and no rich import on
the start-up path. Columns that are too wide for the terminal give up characters in
a fixed order: an id column is cut in the middle, keeping its head and its tail
(``igwn:S230…liminary:1``), where revisions differ; text columns are cut at the
end. ``wide=True`` cuts nothing. Numbers are right-aligned.

The width is ``COLUMNS`` when set, else the terminal's, else 100 (output to a pipe or
file).
"""

from __future__ import annotations

import shutil
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

ELLIPSIS = "…"
GAP = "  "
DEFAULT_WIDTH = 100
"""Width when stdout is not a terminal and ``COLUMNS`` is unset."""


@dataclass(frozen=True)
class Column:
    """One column.

    Attributes
    ----------
    header : str
    cut : {"middle", "end", None}
        How cells are shortened when the table is too wide; None: never.
    min_width : int
        Narrowest the column gets by cutting.
    right : bool
        Right-align (numbers).
    """

    header: str
    cut: str | None = None
    min_width: int = 8
    right: bool = False


def cell_width(text: str) -> int:
    """Terminal cells ``text`` takes: East Asian wide characters count 2, combining
    marks 0."""
    if text.isascii():
        return len(text)
    n = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        n += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return n


def _take(text: str, cells: int, from_end: bool = False) -> str:
    """The longest head (or tail) of ``text`` that fits ``cells``."""
    out, n = [], 0
    for ch in (reversed(text) if from_end else text):
        w = cell_width(ch)
        if n + w > cells:
            break
        out.append(ch)
        n += w
    return "".join(reversed(out)) if from_end else "".join(out)


def cut_middle(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells: its head and tail around an ellipsis.

    >>> cut_middle("igwn:S230518h:preliminary:1", 20)
    'igwn:S230…liminary:1'
    """
    if cell_width(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    room = width - 1
    head = room // 2
    return _take(text, head) + ELLIPSIS + _take(text, room - head, from_end=True)


def cut_end(text: str, width: int) -> str:
    """``text`` in at most ``width`` cells, cut at the end with an ellipsis."""
    if cell_width(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    return _take(text, width - 1) + ELLIPSIS


def terminal_width() -> int:
    """``COLUMNS``, else the terminal's width, else :data:`DEFAULT_WIDTH`; at least 40."""
    return max(40, shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns)


def fit(columns: Sequence[Column], rows: Sequence[Sequence[str]], width: int,
        order: Sequence[tuple[int, int]] | None = None) -> list[int]:
    """Column widths: the natural ones, narrowed until the table fits ``width``.

    Parameters
    ----------
    order : sequence of (column index, width), optional
        Which column gives up characters first, and down to what width: e.g.
        ``[(2, 12), (0, 20), (2, 7)]`` narrows column 2 to 12, then column 0 to 20,
        then column 2 further to 7. Default: each cuttable column, widest first, to
        its ``min_width``. A column never gets narrower than its header.
    """
    widths = [max([cell_width(c.header)] + [cell_width(r[i]) for r in rows]) for i, c in enumerate(columns)]
    if order is None:
        order = sorted(((i, c.min_width) for i, c in enumerate(columns) if c.cut), key=lambda s: -widths[s[0]])
    excess = sum(widths) + len(GAP) * (len(columns) - 1) - width
    for i, floor in order:
        if excess <= 0:
            break
        floor = max(floor, cell_width(columns[i].header), 1)
        step = min(excess, max(0, widths[i] - floor))
        widths[i] -= step
        excess -= step
    return widths


def render(columns: Sequence[Column], rows: Sequence[Sequence[str]], *, width: int | None = None,
           wide: bool = False, order: Sequence[tuple[int, int]] | None = None) -> str:
    """The table as text (header line, then one line per row), no trailing newline.

    Parameters
    ----------
    columns : sequence of Column
    rows : sequence of sequence of str
        Printable cells (see :func:`broker.text.printable`).
    width : int, optional
        Cells available (default :func:`terminal_width`).
    wide : bool
        Cut nothing.
    order : sequence of (column index, width), optional
        Which columns give up characters first (:func:`fit`).
    """
    rows = [[str(c) for c in r] for r in rows]
    if wide:
        widths = [max([cell_width(c.header)] + [cell_width(r[i]) for r in rows]) for i, c in enumerate(columns)]
    else:
        widths = fit(columns, rows, terminal_width() if width is None else width, order)

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, (c, text, w) in enumerate(zip(columns, cells, widths)):
            if cell_width(text) > w:
                text = cut_middle(text, w) if c.cut == "middle" else cut_end(text, w)
            pad = " " * (w - cell_width(text))
            last = i == len(columns) - 1
            parts.append(pad + text if c.right else text + ("" if last else pad))
        return GAP.join(parts).rstrip()

    return "\n".join([line([c.header for c in columns])] + [line(r) for r in rows])
