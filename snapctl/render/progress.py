"""Progress of long runs on stderr: a live table on a terminal, timestamped lines otherwise."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime

from rich.console import Console
from rich.live import Live
from rich.table import Table


class LineProgress:
    """Progress for logs and cron: one timestamped line per event on stderr."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            self.console.print(f"{datetime.now(UTC):%H:%M:%S} {text}", markup=False, highlight=False)

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
    """On a terminal: a live table of nodes and their phases (counts only for big clusters)."""

    MAX_ROWS = 20

    def __init__(self, console: Console) -> None:
        super().__init__(console)
        self.phases: dict[str, tuple[str, str]] = {}
        self.current = "starting"
        self.started = time.monotonic()
        self.live = Live(self._table(), console=console, transient=True, refresh_per_second=8)
        self.live.start()

    def _table(self) -> Table:
        table = Table(title=f"{self.current}  ({time.monotonic() - self.started:.1f}s)", title_justify="left")
        if len(self.phases) > self.MAX_ROWS:
            table.add_column("phase")
            table.add_column("nodes", justify="right")
            for phase, count in Counter(p for p, _ in self.phases.values()).most_common():
                table.add_row(phase, str(count))
            return table
        table.add_column("node")
        table.add_column("phase")
        table.add_column("detail")
        for node, (phase, detail) in self.phases.items():
            table.add_row(node, phase, detail)
        return table

    def step(self, name: str, message: str) -> None:
        self.current = message
        self.live.update(self._table())

    def node(self, node: str, phase: str, detail: str | None = None) -> None:
        self.phases[node] = (phase, detail or "")
        self.live.update(self._table())

    def finished(self, manifest) -> None:
        self.close()

    def close(self) -> None:
        self.live.stop()
