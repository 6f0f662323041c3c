"""`snapctl list` as text: the runs' table, its notes, and the catalog's problems."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from snapctl.errors import ExitCode
from snapctl.render import _seconds, _status_text

ERROR_WIDTH = 80  # a run's error on a terminal
# Narrower than this beside the table, the errors go below it: at 80 columns rich squeezed the
# error column to nothing, and every error was gone.
MIN_ERROR_COLUMN = 30


def run_list_text(renderer: Any, entries: list, problems: list[str], where: str, older: int) -> int:
    # Asked once: asked for every row, a catalog of 10,000 runs whose only errors were its
    # oldest took seconds (O(N^2)).
    errors = any(e.error for e in entries)
    rows = [([e.run_id, _status_text(e.status), f"{e.started_at:%m-%d %H:%M:%S}", str(e.nodes), str(e.snapshots),
              _seconds(e.max_freeze_window_s)], e.error or "") for e in entries]
    beside = errors and _width(renderer, rows) + MIN_ERROR_COLUMN <= renderer.out.width
    # A screen keeps one line or two per run; a pipe or a log keeps every error whole. Below the
    # table an error has the rest of its run's line: longer, the screen wrapped it under the table.
    was_cut = False
    if errors and renderer.out.is_terminal:
        for i, (cells, whole) in enumerate(rows):
            room = ERROR_WIDTH if beside else max(MIN_ERROR_COLUMN, renderer.out.width - len(f"  {cells[0]}: "))
            if (error := _cut(whole, min(room, ERROR_WIDTH))) != whole:
                rows[i], was_cut = (cells, error), True
    table = _table(beside)
    for cells, error in rows:
        table.add_row(*cells, *([escape(error)] if beside else []))
    if not entries:  # which catalog: cron's user, CI and you may each have one (catalog: unset)
        renderer.line(f"no backups yet in {where}")
    else:
        renderer.out.print(table)
    if errors and not beside:
        for cells, error in rows:
            if error:
                renderer.line(f"  {cells[0]}: {error}")
    if was_cut:
        cut = f"at {ERROR_WIDTH} characters" if beside else "to fit the screen"
        renderer.line(f"errors cut {cut} (…): `snapctl show RUN` prints a run's whole error")
    if older:
        renderer.line(f"{older} older run{'s' if older > 1 else ''} not shown: --limit 0 lists every run")
    for problem in problems:
        renderer.err.print(f"[yellow]warning:[/] {escape(problem)}", soft_wrap=True)
    return ExitCode.OK


def _table(with_errors: bool) -> Table:
    table = Table(title="backups (newest first)", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("run", no_wrap=True)  # operators copy run ids: never cut them
    table.add_column("status", no_wrap=True)
    table.add_column("started (UTC)", no_wrap=True)
    for column in ("nodes", "snaps", "freeze"):
        table.add_column(column, no_wrap=True, justify="right", min_width=len(column))
    if with_errors:
        table.add_column("error")
    return table


def _width(renderer: Any, rows: list) -> int:
    """The table's width without the error column: one row of each column's widest cell, measured
    (not every row: a catalog of 10,000 runs would be laid out twice)."""
    probe = _table(False)
    if rows:
        # A set: the status column holds a few markup strings, the others plain text.
        probe.add_row(*(max({cells[i] for cells, _ in rows}, key=_visible) for i in range(len(rows[0][0]))))
    return renderer.out.measure(probe).maximum


def _visible(cell: str) -> int:
    return Text.from_markup(cell).cell_len if "[" in cell else len(cell)


def _cut(text: str, width: int | None) -> str:
    return text if width is None or len(text) <= width else text[:width - 1] + "…"
