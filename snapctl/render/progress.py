"""Progress of long runs on stderr: a live table on a terminal, timestamped lines otherwise.

rich is imported by the live table only: `-o json` writes the lines, and never loads it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING

from snapctl.printable import printable

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table


class LineProgress:
    """Progress for logs and cron: one timestamped line per event on stderr (``file``).

    A backup reports five events per node, and those of the holds come in bursts on the event loop
    that sends the completes; ``Console.print`` cost about 0.1 ms a line there, which every node
    still held waited for. A plain line needs none of rich's rendering: it is written as it is."""

    def __init__(self, file: IO[str]) -> None:
        self.file = file
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        # The date too, and that it is UTC: cron appends night after night to one log.
        line = f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} {printable(text)}\n"  # one line: a path may hold a newline
        with self._lock:
            self.file.write(line)
            self.file.flush()

    def step(self, name: str, message: str) -> None:
        self._line(f"{name}: {message}")

    def node(self, node: str, phase: str, detail: str | None = None) -> None:
        self._line(f"  {node}: {phase}" + (f" ({detail})" if detail else ""))

    def finding(self, finding) -> None:
        self._line(f"  {finding.severity}: {finding}")

    def snapshot_progress(self, ref) -> None:
        pass

    def finished(self, manifest) -> None:
        self._line(f"run {manifest.run_id} {manifest.status}")

    def close(self) -> None:
        pass


class LiveProgress(LineProgress):
    """On a terminal: a live table of nodes and their phases (counts only for big clusters).

    Events only record; the table is built when the display refreshes (8 times a second, in rich's
    refresh thread). Built on every event, it cost the event loop O(nodes) per event inside the
    holds: quadratic over a run."""

    MAX_ROWS = 20

    def __init__(self, console: Console) -> None:
        from rich.live import Live

        super().__init__(console.file)
        self.console = console
        self.phases: dict[str, tuple[str, str]] = {}
        self.current = "starting"
        self.started = time.monotonic()
        self.live = Live(console=console, transient=True, refresh_per_second=8, get_renderable=self._table)
        self.live.start()

    def _table(self) -> Table:
        from rich.table import Table
        from rich.text import Text

        phases = list(self.phases.items())  # one copy: the loop keeps adding nodes while this renders
        table = Table(title=Text(f"{self.current}  ({time.monotonic() - self.started:.1f}s)"), title_justify="left")
        if len(phases) > self.MAX_ROWS:
            table.add_column("phase")
            table.add_column("nodes", justify="right")
            for phase, count in Counter(p for _, (p, _) in phases).most_common():
                table.add_row(phase, str(count))
            return table
        table.add_column("node")
        table.add_column("phase")
        table.add_column("detail")
        for node, (phase, detail) in phases:
            table.add_row(node, phase, Text(detail))  # an agent's or a cloud's words, not markup
        return table

    def step(self, name: str, message: str) -> None:
        self.current = printable(message)

    def node(self, node: str, phase: str, detail: str | None = None) -> None:
        self.phases[node] = (phase, detail or "")

    def finished(self, manifest) -> None:
        self.close()

    def close(self) -> None:
        self.live.stop()
