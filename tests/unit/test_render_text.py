"""Text output quotes what agents, engines, clouds and people wrote: square brackets in it are
shown as they are, never taken for rich markup (which would drop "[fd00::1]" or fail on "[/x]")."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from node_agent.models import JobResult
from snapctl import render
from snapctl.errors import BadInputError
from snapctl.health import Finding, Verdict
from snapctl.manifest import Manifest, NodeRecord
from snapctl.providers import SnapshotRef
from snapctl.render import Renderer
from snapctl.render.progress import LiveProgress
from snapctl.trigger import NodeJobs

QUOTED = "[/x] [fd00::1] [bold]not bold"


def renderer() -> Renderer:
    r = Renderer()
    r.out = Console(file=io.StringIO(), width=400, highlight=False)
    r.err = Console(file=io.StringIO(), width=400, highlight=False)
    return r


def test_an_error_message_is_printed_as_it_is(capsys, monkeypatch):
    monkeypatch.setattr(render, "_json_mode", False)
    render.error(BadInputError(f"'http://{QUOTED}' is not an agent address", hint=f"see {QUOTED}"))
    err = capsys.readouterr().err
    assert f"snapctl: error: 'http://{QUOTED}' is not an agent address" in err
    assert f"hint: see {QUOTED}" in err


def test_a_manifest_shows_its_errors_and_engine_words_as_they_are():
    r = renderer()
    m = Manifest(cluster="c", run_id="r1", provider="local", snapctl_version="0", owner="u@h:1",
                 started_at=datetime.now(UTC), status="failed", error=f"run failed: {QUOTED}",
                 nodes={"n1": NodeRecord(name="n1", error=f"agent said {QUOTED}")})
    r.manifest(m)
    text = r.out.file.getvalue()
    assert f"error: run failed: {QUOTED}" in text
    assert f"error: agent said {QUOTED}" in text


def test_show_says_a_run_was_forced_and_what_it_was_forced_past():
    # `backup --force` records the preflight's findings in the manifest; `show` printed neither.
    r = renderer()
    m = Manifest(cluster="c", run_id="r1", provider="local", snapctl_version="0", owner="u@h:1",
                 started_at=datetime.now(UTC), status="succeeded", forced=True,
                 degradations=["e1: its engine keeps its data in /d, in none of its volumes"],
                 nodes={"n1": NodeRecord(name="n1")})
    r.manifest(m)
    text = r.out.file.getvalue()
    assert "forced: backed up with --force" in text
    assert "degraded: e1: its engine keeps its data in /d, in none of its volumes" in text


def test_show_names_both_skews_as_the_backup_summary_does():
    # `show` printed one bare "skew", the prepare skew, and never the hold skew the README describes.
    r = renderer()
    m = Manifest(cluster="c", run_id="r1", provider="local", snapctl_version="0", owner="u@h:1",
                 started_at=datetime.now(UTC), status="succeeded", nodes={"n1": NodeRecord(name="n1")},
                 hold_skew_s=0.015, prepare_skew_s=0.014)
    r.manifest(m)
    text = r.out.file.getvalue()
    assert "holds began within 15 ms, prepare skew 14 ms" in text


def test_findings_list_warnings_and_trigger_results_keep_their_brackets():
    r = renderer()
    r._findings(Verdict(findings=[Finding("critical", "n1", f"unreachable: {QUOTED}")]))
    r.run_list([], [f"run r9: {QUOTED}"])
    r.trigger_result([NodeJobs("n1", error=f"boom {QUOTED}"),
                      NodeJobs("n2", jobs=[JobResult(target=f"t {QUOTED}", status="failed", detail=f"d {QUOTED}")])])
    out, err = r.out.file.getvalue(), r.err.file.getvalue()
    assert f"n1: unreachable: {QUOTED}" in out
    assert f"warning: run r9: {QUOTED}" in err
    assert f"boom {QUOTED}" in out and f"t {QUOTED}" in out and f"d {QUOTED}" in out


@pytest.mark.parametrize("detail", [QUOTED, "[/]"])
def test_the_live_table_shows_a_node_detail_and_a_step_as_they_are(detail):
    console = Console(file=io.StringIO(), width=400, highlight=False, force_terminal=True)
    progress = LiveProgress(console)
    try:
        progress.step("lock", f"locking cluster c in /tmp/{detail}")
        progress.node("n1", "preflight", detail)
        plain = Console(file=io.StringIO(), width=400, highlight=False)
        plain.print(progress._table())
    finally:
        progress.live.stop()
    title, _, rows = plain.file.getvalue().partition("\n\u250f")  # the title wraps at the table's width
    assert f"locking cluster c in /tmp/{detail}" in " ".join(title.split())
    assert f"\u2502 {detail} " in rows


def test_a_long_line_is_one_line_in_a_log_not_cut_at_the_console_width():
    r = renderer()
    r.out = Console(file=io.StringIO(), width=80, highlight=False)  # what rich assumes when stdout is a file
    path = "/var/lib/snapctl/" + "very-long-directory-name/" * 6 + "demo.db"
    r.manifest(Manifest(cluster="c", run_id="r1", provider="local", snapctl_version="0", owner="u@h:1",
                        started_at=datetime.now(UTC), status="failed", error=f"cannot read {path}: permission denied"))
    assert f"error: cannot read {path}: permission denied\n" in r.out.file.getvalue()


def test_a_run_table_written_to_a_pipe_is_not_cut_to_eighty_columns(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    snapshots = [SnapshotRef(provider="local", snapshot_id=f"20261206T083257Z-d8c3eb-node{i}-data", node=f"node{i}",
                             volume="data", state="completed", bytes=352256) for i in (1, 2)]
    manifest = Manifest(cluster="c", run_id="20261206T083257Z-d8c3eb", provider="local", snapctl_version="0",
                        owner="u@h:1", started_at=datetime.now(UTC), status="succeeded",
                        nodes={s.node: NodeRecord(name=s.node, snapshots=[s], freeze_window_s=0.049)
                               for s in snapshots})
    Renderer().backup_result(manifest)
    rows = [line for line in capsys.readouterr().out.splitlines() if "-data" in line]
    assert len(rows) == 2 and all("20261206T083257Z-d8c3eb-node" in r and "completed" in r for r in rows), rows


def _listed_with_a_long_error(terminal: bool, width: int = 400) -> tuple[str, str]:
    from snapctl.manifest import IndexEntry

    error = ("rolled back: node n2: agent http://10.0.0.12:7700 did not answer prepare within 5s; the "
             "snapshots of n1 were deleted: the useful end is here")
    r = renderer()
    r.out = Console(file=io.StringIO(), width=width, highlight=False, force_terminal=terminal, color_system=None)
    r.run_list([IndexEntry(run_id="20261206T083257Z-d8c3eb", status="failed", started_at=datetime.now(UTC),
                           nodes=2, snapshots=0, error=error)], [])
    return r.out.file.getvalue(), error


def test_list_on_a_terminal_ends_a_cut_error_with_an_ellipsis_and_says_where_the_whole_one_is():
    # The error column was cut at 80 characters with no sign, its useful end lost.
    text, error = _listed_with_a_long_error(terminal=True)
    assert error[:79] + "…" in text and error not in text
    assert "errors cut at 80 characters (…): `snapctl show RUN` prints a run's whole error" in text


def test_list_to_a_pipe_or_a_log_keeps_every_error_whole():
    text, error = _listed_with_a_long_error(terminal=False)
    assert error in text and "…" not in text and "cut" not in text


@pytest.mark.parametrize("terminal", [True, False])
def test_list_at_80_columns_puts_the_errors_below_the_table_rather_than_dropping_them(terminal):
    # At 80 columns rich squeezed the error column to nothing: a terminal of the default size (or
    # COLUMNS=80 into a pipe) showed no error at all.
    from snapctl.manifest import IndexEntry

    r = renderer()
    r.out = Console(file=io.StringIO(), width=80, highlight=False, force_terminal=terminal, color_system=None)
    r.run_list([IndexEntry(run_id="20261206T083257Z-d8c3eb", status="failed", started_at=datetime.now(UTC),
                           nodes=2, snapshots=0, error="rolled back: node n2: prepare did not answer"),
                IndexEntry(run_id="20261205T083257Z-aaaaaa", status="succeeded", started_at=datetime.now(UTC),
                           nodes=2, snapshots=2)], [])
    text = r.out.file.getvalue()
    assert "  20261206T083257Z-d8c3eb: rolled back: node n2: prepare did not answer\n" in text
    rows = [line.split() for line in text.splitlines() if line.startswith("  2026120")]
    assert [row[:2] for row in rows[:2]] == [["20261206T083257Z-d8c3eb", "failed"],
                                             ["20261205T083257Z-aaaaaa", "succeeded"]]
    assert "error" not in text.splitlines()[2]  # no column for it
    assert all(len(line) <= 80 for line in text.splitlines()[:6])


def test_list_at_80_columns_on_a_terminal_cuts_the_errors_below_the_table_to_fit_their_lines():
    # Below the table each error line was the run id and 80 characters of error: 106 columns, wrapped
    # by an 80-column terminal under the table. A pipe keeps them whole (the test above).
    text, error = _listed_with_a_long_error(terminal=True, width=80)
    [line] = [line for line in text.splitlines() if line.startswith("  20261206T083257Z-d8c3eb: ")]
    assert len(line) == 80 and line.endswith("…") and error[:len(line) - 28] in line, line
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "errors cut to fit the screen (…): `snapctl show RUN` prints a run's whole error" in text
