"""Progress on stderr: one plain line per event for logs, a live table on a terminal. Events come
in bursts while nodes are held, so neither may do its rendering work per event."""

from __future__ import annotations

import io
import re
import time

from rich.console import Console

from snapctl.render.progress import LineProgress, LiveProgress


def test_log_lines_are_plain_timestamped_lines_one_per_event():
    out = io.StringIO()
    progress = LineProgress(out)
    progress.step("prepare", "preparing 2 nodes [not markup]")
    progress.node("n1", "held")
    progress.node("n2", "released", "frozen 0.352s")
    lines = out.getvalue().splitlines()
    stamp = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ "  # the date too: cron appends night after night to one log
    assert [re.sub(stamp, "", line) for line in lines] == [
        "prepare: preparing 2 nodes [not markup]", "  n1: held", "  n2: released (frozen 0.352s)"]
    assert all(re.match(stamp, line) for line in lines)


def test_the_live_table_is_built_when_the_display_refreshes_not_per_event(monkeypatch):
    built = []
    original = LiveProgress._table
    monkeypatch.setattr(LiveProgress, "_table", lambda self: built.append(1) or original(self))
    progress = LiveProgress(Console(file=io.StringIO(), force_terminal=True, width=100))
    try:
        started = len(built)
        for phase in ("preparing", "held", "snapshotting", "released"):
            for i in range(1000):
                progress.node(f"n{i:04d}", phase)
        elapsed = time.monotonic() - progress.started
        # 4000 events: at 8 refreshes a second the table is built a handful of times, not 4000.
        assert len(built) - started <= 8 * elapsed + 2
        assert progress.phases["n0999"] == ("released", "")
        rendered = io.StringIO()
        Console(file=rendered, width=100).print(original(progress))
        assert re.search(r"released\s+│\s+1000", rendered.getvalue())  # counts, not 1000 rows
    finally:
        progress.close()


def test_a_control_character_in_a_progress_message_stays_on_its_line():
    # `restore --to $'rel\nline'` split "checking a restore of run R into .../rel" from "line".
    out = io.StringIO()
    progress = LineProgress(out)
    progress.step("restore", "dry run: checking a restore of run r1 into /srv/rel\nline\x1b[31m")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(" restore: dry run: checking a restore of run r1 into /srv/rel\\nline\\x1b[31m")
