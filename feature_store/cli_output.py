"""Tables of the command line, readable at any width: names are never cut.

Cells wrap at spaces only, so a name (a view, a feature reference, a path) is never truncated or broken
across lines. Each column gets at least its longest word and the spare width goes to the columns that want
more; when even that does not fit, every row prints as a block of ``column: value`` lines instead. On a
terminal a table has rich's borders; in a pipe or a CI log it is plain text (no colours, no box characters).
The width is rich's: the terminal's, or ``COLUMNS``, else 80.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

GAP = 2  # spaces between the columns of a plain table
MIN_VALUE_WIDTH = 20  # a block's values get at least this much room, even on a very narrow console


@dataclass(frozen=True)
class Col:
    header: str
    right: bool = False  # numbers


class Grid:
    """A titled table: ``Grid("Views", "name", Col("rows", right=True))``, then add_row, then show."""

    def __init__(self, title: str, *columns: str | Col) -> None:
        self.title = title
        self.columns = [c if isinstance(c, Col) else Col(c) for c in columns]
        self.rows: list[list[Text]] = []

    def add_row(self, *cells: str | Text) -> None:
        """Plain strings are shown as they are (no rich markup is read from them); Text carries styles."""
        if len(cells) != len(self.columns):
            raise ValueError(f"table {self.title!r} has {len(self.columns)} columns, got {len(cells)} cells")
        self.rows.append([c if isinstance(c, Text) else Text(c) for c in cells])

    def show(self, console: Console) -> None:
        if not self.rows:
            console.print(Text(self.title, style="bold"), Text("(none)", style="dim"), highlight=False)
            return
        framed = console.is_terminal
        # A framed table spends 3 characters a column (padding and a border) plus 1; a plain one GAP between.
        overhead = 3 * len(self.columns) + 1 if framed else GAP * (len(self.columns) - 1)
        widths = column_widths(self._cells(), console.width - overhead)
        if widths is None:
            self._show_blocks(console)
        elif framed:
            self._show_framed(console, widths)
        else:
            self._show_plain(console, widths)

    def _cells(self) -> list[list[Text]]:
        """Each column's header and cells."""
        return [[Text(c.header), *(row[i] for row in self.rows)] for i, c in enumerate(self.columns)]

    def _show_framed(self, console: Console, widths: list[int]) -> None:
        table = Table(title=self.title, title_justify="left", box=box.HEAVY_HEAD)
        for column, width in zip(self.columns, widths, strict=True):
            table.add_column(column.header, width=width, justify="right" if column.right else "left",
                             overflow="fold")
        for row in self.rows:
            table.add_row(*row)
        console.print(table)

    def _show_plain(self, console: Console, widths: list[int]) -> None:
        console.print(self.title, style="bold", highlight=False)
        header = [Text(c.header, style="bold") for c in self.columns]
        lines = self._plain_row(console, header, widths)
        lines.append(Text((" " * GAP).join("-" * w for w in widths)))
        for row in self.rows:
            lines += self._plain_row(console, row, widths)
        for line in lines:
            console.print(line, soft_wrap=True, highlight=False)

    def _plain_row(self, console: Console, cells: list[Text], widths: list[int]) -> list[Text]:
        wrapped = [wrap(console, cell, width) for cell, width in zip(cells, widths, strict=True)]
        lines = []
        for i in range(max(len(w) for w in wrapped)):
            line = Text()
            for j, (column, width) in enumerate(zip(self.columns, widths, strict=True)):
                part = wrapped[j][i] if i < len(wrapped[j]) else Text()
                pad = " " * (width - part.cell_len)
                line.append_text(Text(pad) + part if column.right else part + Text(pad))
                if j < len(widths) - 1:
                    line.append(" " * GAP)
            line.rstrip()
            lines.append(line)
        return lines

    def _show_blocks(self, console: Console) -> None:
        """One block of 'column: value' lines per row, for tables too wide to show side by side."""
        console.print(self.title, style="bold", highlight=False)
        label = max(len(c.header) for c in self.columns) + 2
        width = max(console.width - label, MIN_VALUE_WIDTH)
        for n, row in enumerate(self.rows):
            if n:
                console.print()
            for column, cell in zip(self.columns, row, strict=True):
                for i, part in enumerate(wrap(console, cell, width)):
                    head = Text(f"{column.header}:".ljust(label), style="bold") if i == 0 else Text(" " * label)
                    console.print(head + part, soft_wrap=True, highlight=False)


def column_widths(columns: list[list[Text]], available: int) -> list[int] | None:
    """Widths that keep every word whole within ``available`` characters, or None when none do.

    ``columns`` holds each column's header, then its cells.
    Each column starts at its longest word. The spare width first puts whole columns on one line, those
    that lack the least first (a column of short cells then never wraps), then goes a character at a time
    to the column that lacks the most, so that the long ones wrap about evenly.
    """
    need = [max(longest_word(cell) for cell in cells) for cells in columns]
    # The cells say how wide a column would like to be; a long header wraps instead (at its spaces).
    want = [max(longest_word(cells[0]), *(longest_line(cell) for cell in cells[1:])) for cells in columns]
    if sum(need) > available:
        return None
    widths = list(need)
    spare = available - sum(widths)
    for i in sorted(range(len(widths)), key=lambda i: want[i] - widths[i]):
        if want[i] - widths[i] > spare:
            break
        spare -= want[i] - widths[i]
        widths[i] = want[i]
    while spare > 0:
        lack, i = max((w - c, i) for i, (w, c) in enumerate(zip(want, widths, strict=True)))
        if lack <= 0:
            break
        widths[i] += 1
        spare -= 1
    return widths


def wrap(console: Console, cell: Text, width: int) -> list[Text]:
    """The cell's lines at ``width``, broken at spaces and newlines only (a longer word stays whole)."""
    if not cell.plain:
        return [Text()]
    lines = list(cell.wrap(console, max(width, longest_word(cell)), overflow="fold"))
    for line in lines:
        line.rstrip()
    return lines


def longest_word(cell: Text) -> int:
    return max((Text(word).cell_len for word in cell.plain.split()), default=1)


def longest_line(cell: Text) -> int:
    return max((Text(line).cell_len for line in cell.plain.splitlines()), default=1)
