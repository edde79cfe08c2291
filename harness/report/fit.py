"""Terminal tables that fit the console: as they are when they fit; else each column as narrow as its longest
word (a header may wrap, a cell wraps only between words; the first column, a row's label, never wraps), and
without the least needed columns, in a given order, until the table fits. The caller names the dropped
columns under the table. Used by the run table (harness.report.render) and `harness export`'s table."""
from __future__ import annotations

from typing import Iterable


def make_table(title: str, heads: list[str], rows: list[list[str]], keep: list[int], widths=None,
               left: Iterable[str] = ()):
    from rich.markup import escape
    from rich.table import Table

    left = set(left)
    table = Table(title=escape(title), title_justify="left")  # plain text: "[stand-in: ...]" is no markup
    for i in keep:
        table.add_column(heads[i], justify="left" if i == 0 or heads[i] in left else "right", no_wrap=i == 0,
                         width=widths[i] if widths else None)
    for row in rows:
        table.add_row(*[row[i] for i in keep])
    return table


def fit_table(console, title: str, heads: list[str], rows: list[list[str]], drop_order: Iterable[str],
              left: Iterable[str] = ()):
    """The table for `console` (see the module's doc). Returns (table, the headers of the dropped columns)."""
    from rich.cells import cell_len
    from rich.measure import Measurement

    keep = list(range(len(heads)))
    table = make_table(title, heads, rows, keep, left=left)
    if Measurement.get(console, console.options.update_width(10_000), table).maximum <= console.width:
        return table, []
    widths = [max(cell_len(w) for text in [heads[i]] + [r[i] for r in rows] for w in text.split() or [""])
              for i in range(len(heads))]
    widths[0] = max(cell_len(t) for t in [heads[0]] + [r[0] for r in rows])  # the label: whole, on one line
    dropped: list[str] = []
    for name in drop_order:
        if sum(widths[i] + 3 for i in keep) + 1 <= console.width:  # padding 1+1 and a border per column
            break
        if name in heads and heads.index(name) in keep:
            keep.remove(heads.index(name))
            dropped.append(name)
    return make_table(title, heads, rows, keep, widths, left), dropped
