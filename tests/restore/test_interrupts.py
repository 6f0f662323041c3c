"""`snapctl restore` and `snapctl drill` stopped by SIGTERM (how CI's and cron's timeouts stop a
command) unwind as on Ctrl-C: a restore leaves no half-copied directory, a drill tears down and
still writes its JUnit report and its record; both say so and exit 130. The signal comes from
inside the command, after one step of its work (``snapctl_sigtermed_after``)."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from snapctl.catalog import open_catalog
from snapctl.errors import ExitCode
from tests.conftest import snapctl_sigtermed_after
from tests.restore.conftest import SqliteCluster

INTERRUPTED = "snapctl: error: interrupted (SIGTERM)"


def stopped_after(module: str, function: str, *snapctl_args: str, cluster: SqliteCluster,
                  signal_name: str = "SIGTERM") -> None:
    """``snapctl SNAPCTL-ARGS`` on ``cluster``, SIGTERMed (or ``signal_name``) once ``module.function``
    has run: it must say it was interrupted, by that signal, and exit 130."""
    result = snapctl_sigtermed_after(module, function, *snapctl_args, "-i", str(cluster.inventory_path),
                                     cwd=cluster.directory, signal_name=signal_name)
    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    assert result.stderr.splitlines()[-1] == f"snapctl: error: interrupted ({signal_name})"


def files_under(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if not path.is_dir()]


def test_a_restore_stopped_mid_copy_leaves_no_partial_directory(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    target = tmp_path / "restored"

    # The first volume's files are copied into the restore's staging directory, then SIGTERM.
    stopped_after("snapctl_local.restores", "copy_tree", "restore", run_id, "--to", str(target),
                  cluster=sqlite_cluster)

    assert files_under(target) == [], "neither the staging copy nor the restore marker is left"

    again = subprocess.run([sys.executable, "-m", "snapctl.cli", "restore", run_id, "--to", str(target),
                            "-i", str(sqlite_cluster.inventory_path), "-o", "json"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == ExitCode.OK, again.stderr  # the target was left empty: a retry just works
    assert all(node["mismatches"] == [] for node in yaml.safe_load(again.stdout)["data"]["nodes"])


def test_a_restore_stopped_by_sigterm_finishes_its_record_so_it_protects_its_run_no_longer(sqlite_cluster, tmp_path):
    from snapctl.restore import RestoreRecord

    run_id = sqlite_cluster.backup()
    stopped_after("snapctl_local.restores", "copy_tree", "restore", run_id, "--to", str(tmp_path / "restored"),
                  cluster=sqlite_cluster)

    catalog = open_catalog(sqlite_cluster.inventory)
    [key] = catalog.store.list(f"restore-test/restores/{run_id}-")
    record = RestoreRecord.model_validate_json(catalog.store.read(key))
    assert record.finished_at is not None
    assert (record.outcome, record.error, record.volumes) == ("interrupted", "interrupted (SIGTERM)", {})


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_a_drill_stopped_by_sigterm_tears_down_and_still_writes_its_report(sqlite_cluster, tmp_path, signal_name):
    # A SIGHUP (the ssh session a drill was started from gone) was reported as "Ctrl-C or SIGTERM".
    run_id = sqlite_cluster.backup()
    junit = tmp_path / "drill.xml"

    # The first node's drill starts (its volumes are restored next), then SIGTERM (or SIGHUP).
    stopped_after("snapctl.drill", "_step", "drill", run_id, "--junit", str(junit), cluster=sqlite_cluster,
                  signal_name=signal_name)

    assert not any((sqlite_cluster.directory / "scratch").iterdir()), "restored data and scratch engines are gone"

    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"node n1 (sqlite)", "node n2 (sqlite)", "cluster restore-test"}
    cluster_error = cases["cluster restore-test"].find("error")
    assert cluster_error is not None and f"the drill was interrupted ({signal_name})" in cluster_error.get("message")
    for name in ("node n1 (sqlite)", "node n2 (sqlite)"):  # before restoring, or its copy stopped at once
        error = cases[name].find("error")
        assert error is not None and f"interrupted ({signal_name})" in error.get("message"), name

    catalog = open_catalog(sqlite_cluster.inventory)
    summary = catalog.load(run_id).last_drill
    assert summary is not None and not summary.ok and set(summary.failed_nodes) == {"n1", "n2"}
    stored = yaml.safe_load(catalog.store.read(summary.report))
    assert stored["interrupted"] is True and stored["leftovers"] == [] and stored["teardown_errors"] == []


def test_a_drill_stopped_mid_copy_stops_the_copy_instead_of_finishing_it(sqlite_cluster, tmp_path):
    for node in ("n1", "n2"):  # more files than copy threads, so a copy stopped after one has work left
        for i in range(12):
            (sqlite_cluster.directory / node / "data" / f"extra-{i:02d}.bin").write_bytes(b"x" * 4096)
    run_id = sqlite_cluster.backup()
    junit = tmp_path / "drill.xml"

    # One file of a node's restore is copied, then SIGTERM; that copy waits until it is told to stop.
    stopped_after("snapctl_local.copy", "_copy_one", "drill", run_id, "--junit", str(junit), cluster=sqlite_cluster)

    assert not any((sqlite_cluster.directory / "scratch").iterdir()), "no staging copy, no restored data"
    errors = [error.get("message") for case in ET.parse(junit).getroot().iter("testcase")
              if case.get("name").startswith("node ") for error in case.iter("error")]
    # Before, that copy went on to its last file and its node stopped before its next step. (The
    # other node may have finished its drill before the signal came: it then passed.)
    assert any("restore of snapshot" in error and "was interrupted (SIGTERM)" in error
               for error in errors), errors
    assert all("interrupted (SIGTERM)" in error for error in errors), errors
    assert not any(error.count("node n") > 1 for error in errors), "the report names the node once"


def test_a_restore_stopped_after_some_volumes_names_them_as_a_failure_does(sqlite_cluster, tmp_path):
    """SIGTERM (or Ctrl-C) once n1 was restored said only "interrupted (SIGTERM)": n1's
    complete copy stayed, unnamed, and the rerun into the same place failed on it, "restore target
    .../n1/data is not an empty directory"."""
    import json

    run_id = sqlite_cluster.backup()
    target = tmp_path / "restored"

    result = snapctl_sigtermed_after("snapctl.restore", "_prepare_and_check", "restore", run_id, "--to", str(target),
                                     "-i", str(sqlite_cluster.inventory_path), "-o", "json",
                                     cwd=sqlite_cluster.directory)

    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    document = json.loads(result.stdout)
    assert document["error"] == "interrupted (SIGTERM)"
    assert document["hint"] == (f"restored before this failure: n1/data at {target / 'n1' / 'data'}; remove them, and "
                                "the .snapctl-restore.json beside each, before restoring into the same place again")
    assert result.stderr.splitlines()[-2:] == [INTERRUPTED, f"  hint: {document['hint']}"]
    assert files_under(target / "n2") == [], "n2's copy was not under way, or went with its staging directory"


def test_a_drill_stopped_as_it_tears_down_still_writes_its_report_and_record(sqlite_cluster, tmp_path):
    """SIGTERM (a CI job's timeout) once both nodes had passed, as the drill tore down: the
    command exited 130 without writing its JUnit report, so the previous drill's stayed at the
    path for CI to publish, and its record stayed unfinished (keeping the run from prune), with no
    `last_drill`. Ctrl-C pressed again during a teardown cut the teardown itself short likewise."""
    run_id = sqlite_cluster.backup()
    junit = tmp_path / "drill.xml"
    junit.write_text("<testsuites name='an older drill'/>")

    stopped_after("snapctl.drill", "teardown", "drill", run_id, "--junit", str(junit), cluster=sqlite_cluster)

    assert not any((sqlite_cluster.directory / "scratch").iterdir()), "restored data and scratch engines are gone"
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert set(cases) == {"node n1 (sqlite)", "node n2 (sqlite)", "cluster restore-test"}
    assert cases["node n1 (sqlite)"].find("error") is None and cases["node n2 (sqlite)"].find("error") is None
    cluster_error = cases["cluster restore-test"].find("error")
    assert cluster_error is not None and "the drill was interrupted (SIGTERM)" in cluster_error.get("message")

    catalog = open_catalog(sqlite_cluster.inventory)
    summary = catalog.load(run_id).last_drill
    assert summary is not None and not summary.ok and summary.failed_nodes == []
    stored = yaml.safe_load(catalog.store.read(summary.report))
    assert stored["interrupted"] is True and stored["finished_at"] is not None and stored["leftovers"] == []


_SIGNALLED_PREAMBLE = """
import signal, sys, threading, time
from pathlib import Path

import snapctl.cli as cli
import snapctl_local.copy as copy

original = copy._copy_one
sent = threading.Event()


def main_thread_in(function, in_file):
    frame = sys._current_frames().get(threading.main_thread().ident)
    while frame is not None:
        if frame.f_code.co_name == function and in_file(frame.f_code.co_filename):
            return True
        frame = frame.f_back
    return False


def until(condition, seconds):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
"""


_SIGNALLED_TO_A_WORKER = _SIGNALLED_PREAMBLE + """

def main_thread_waits_for_the_nodes():
    return main_thread_in("wait", lambda name: name.endswith("concurrent/futures/_base.py"))


def signalled_here(durability, copier, src, dst, st, as_root, stopped):
    if not sent.is_set():
        sent.set()
        until(main_thread_waits_for_the_nodes, 30)
        # The kernel hands a process-directed signal to any thread that does not block it: here,
        # one of the copy's. Python runs its handler in the main thread, at its next bytecode.
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)
    # The copy goes on until the drill tells it to stop, or, never told, for a while: then it
    # ends, as a long copy would, and its node passes.
    until(stopped, 15)
    return original(durability, copier, src, dst, st, as_root, stopped)


copy._copy_one = signalled_here
sys.argv = ["snapctl", *sys.argv[1:]]
cli.main()
"""


def test_a_drill_signalled_through_another_thread_stops_its_copies_instead_of_waiting_for_them(
        sqlite_cluster, tmp_path):
    """A SIGTERM sent during a drill's restore was once not acted on until node1's copy had
    finished, 8.5 s later: the main thread waited for the nodes with no timeout, and a signal the
    kernel delivered to another thread (or one that landed just before that wait began) only runs
    its handler when the main thread next runs Python code."""
    run_id = sqlite_cluster.backup()
    junit = tmp_path / "drill.xml"

    result = subprocess.run([sys.executable, "-c", _SIGNALLED_TO_A_WORKER, "drill", run_id, "--junit", str(junit),
                             "-i", str(sqlite_cluster.inventory_path)], cwd=sqlite_cluster.directory,
                            capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    errors = [error.get("message") for case in ET.parse(junit).getroot().iter("testcase")
              if case.get("name").startswith("node ") for error in case.iter("error")]
    assert any("restore of snapshot" in error and "was interrupted" in error for error in errors), errors
    assert not any((sqlite_cluster.directory / "scratch").iterdir())


_RESTORE_SIGNALLED_TO_A_COPY_THREAD = _SIGNALLED_PREAMBLE + """
said = Path(sys.argv[1])


def main_thread_waits_for_the_copies():
    # For the last ones: woken by none of the others' ends, only by this one's.
    return main_thread_in("finish", lambda name: name == copy.__file__)


def signalled_here(durability, copier, src, dst, st, as_root, stopped):
    if not sent.is_set():
        sent.set()
        until(main_thread_waits_for_the_copies, 30)
        signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # a copy thread takes the signal
        until(stopped, 15)
        said.write_text("stopped" if stopped() else "finished: never told to stop")
    return original(durability, copier, src, dst, st, as_root, stopped)


copy._copy_one = signalled_here
sys.argv = ["snapctl", *sys.argv[2:]]
cli.main()
"""


def test_a_restore_signalled_through_a_copy_thread_stops_the_copy_under_way(sqlite_cluster, tmp_path):
    """`snapctl restore` copies in its main thread's pool: a SIGTERM the kernel gave one of the copy
    threads ran its handler only once the main thread's wait for a file's copy ended, so a large
    file was copied to its end first."""
    for node in ("n1", "n2"):  # more files than copy threads
        for i in range(12):
            (sqlite_cluster.directory / node / "data" / f"extra-{i:02d}.bin").write_bytes(b"x" * 4096)
    run_id = sqlite_cluster.backup()
    said = tmp_path / "copy-said"

    result = subprocess.run([sys.executable, "-c", _RESTORE_SIGNALLED_TO_A_COPY_THREAD, str(said), "restore", run_id,
                             "--to", str(tmp_path / "restored"), "-i", str(sqlite_cluster.inventory_path)],
                            cwd=sqlite_cluster.directory, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    assert said.read_text() == "stopped"
    assert files_under(tmp_path / "restored") == []


def test_a_drill_interrupted_as_it_defers_interrupts_for_its_nodes_still_writes_its_report(sqlite_cluster, tmp_path,
                                                                                           monkeypatch):
    """A signal handled between the swaps that begin the deferral around the nodes' submits raised
    there, before any node had a future: `_drill_all` then failed on its unbound `futures`
    (UnboundLocalError), and the drill ended on that, with no JUnit report."""
    import contextlib

    import snapctl.drill
    from snapctl.drill import run_drill
    from snapctl.runner import interrupts_deferred

    begun: list[bool] = []

    @contextlib.contextmanager
    def interrupted_as_it_begins():
        if not begun:  # the first deferral is the one around the submits
            begun.append(True)
            raise KeyboardInterrupt
        with interrupts_deferred():
            yield

    monkeypatch.setattr(snapctl.drill, "interrupts_deferred", interrupted_as_it_begins)
    run_id = sqlite_cluster.backup()
    junit = tmp_path / "drill.xml"

    with pytest.raises(KeyboardInterrupt):
        run_drill(sqlite_cluster.inventory, run_id, junit=junit)

    [cluster_case] = ET.parse(junit).getroot().iter("testcase")
    error = cluster_case.find("error")
    assert error is not None and "the drill was interrupted" in error.get("message")
    assert not any((sqlite_cluster.directory / "scratch").iterdir())


_ONE_NODE_STUCK = _SIGNALLED_PREAMBLE + """
import os

import snapctl.drill as drill
import snapctl.drill_threads as drill_threads

drill_threads.STOP_GRACE_S = 1.0
original_restore = drill.restore_volumes
never = threading.Event()


def main_thread_waits_for_the_nodes():
    return main_thread_in("wait_for", lambda name: name == drill_threads.__file__)


def stuck_on_n1(provider, node, record, **kwargs):
    if node.name != "n1":
        return original_restore(provider, node, record, **kwargs)
    until(main_thread_waits_for_the_nodes, 30)
    os.kill(os.getpid(), signal.SIGTERM)
    never.wait()  # a restore that never looks at the stop: a hung mount, a call with no timeout


drill.restore_volumes = stuck_on_n1
sys.argv = ["snapctl", *sys.argv[1:]]
cli.main()
"""


def test_a_drill_stopped_with_a_node_stuck_tears_down_reports_and_exits_without_it(sqlite_cluster, tmp_path):
    """A SIGTERM while one node's restore was stuck (never looking at the stop) held the drill
    for good: leaving the nodes' ThreadPoolExecutor joined its threads with no timeout, so there
    was no teardown, no JUnit report, no record and no exit until SIGKILL."""
    run_id = sqlite_cluster.backup()
    junit = tmp_path / "drill.xml"

    result = subprocess.run([sys.executable, "-c", _ONE_NODE_STUCK, "drill", run_id, "--junit", str(junit),
                             "-i", str(sqlite_cluster.inventory_path)], cwd=sqlite_cluster.directory,
                            capture_output=True, text=True, timeout=60, check=False)

    assert result.returncode == ExitCode.INTERRUPTED, result.stderr
    assert result.stderr.splitlines()[-1] == INTERRUPTED
    assert not any((sqlite_cluster.directory / "scratch").iterdir()), "the teardown ran"
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    stuck = cases["node n1 (sqlite)"].find("error")
    assert stuck is not None and stuck.get("message").startswith(
        "node n1: still restoring this node 1s after the drill was interrupted (SIGTERM): left running as the drill tore down")

    catalog = open_catalog(sqlite_cluster.inventory)
    summary = catalog.load(run_id).last_drill
    assert summary is not None and "n1" in summary.failed_nodes
    stored = yaml.safe_load(catalog.store.read(summary.report))
    assert stored["interrupted"] is True and stored["finished_at"] is not None
    [left] = stored["teardown_errors"]
    assert left.startswith("node n1: its drill was left running (restoring) 1s after the stop; what it restores or "
                           "starts from now on (volumes tagged snapctl-drill=")
    [n1] = [node for node in stored["nodes"] if node["node"] == "n1"]
    assert (n1["verdict"], n1["engine"]) == ("error", "sqlite")


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_an_interrupted_drill_records_the_signal_and_show_and_status_say_it(sqlite_cluster, tmp_path, signal_name):
    """The drill's record said `interrupted: true` and no more: which signal it was (a CI timeout's
    SIGTERM, an ssh session's SIGHUP, a Ctrl-C) was in the JUnit report only, gone with the job."""
    import json

    run_id = sqlite_cluster.backup()
    stopped_after("snapctl.drill", "_step", "drill", run_id, "--junit", str(tmp_path / "drill.xml"),
                  cluster=sqlite_cluster, signal_name=signal_name)

    catalog = open_catalog(sqlite_cluster.inventory)
    manifest = catalog.load(run_id)
    stored = json.loads(catalog.store.read(manifest.last_drill.report))
    assert (stored["interrupted"], stored["interrupted_by"]) == (True, signal_name)

    def snapctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snapctl.cli", *args, "-i", str(sqlite_cluster.inventory_path)],
                              cwd=sqlite_cluster.directory, capture_output=True, text=True, timeout=120, check=False)

    shown = snapctl("show", run_id)
    [line] = [line for line in shown.stdout.splitlines() if line.startswith("last drill ")]
    assert line.startswith(f"last drill {stored['drill_id']}: failed (n1, n2), interrupted by {signal_name}, "), line
    document = json.loads(snapctl("show", run_id, "-o", "json").stdout)["data"]
    assert document["extra"]["last_drill_interrupted_by"] == {"drill_id": stored["drill_id"], "signal": signal_name}
    status = snapctl("status", "-o", "json").stdout
    assert f"failed at {stored['finished_at'][:10]}" in status and f"interrupted ({signal_name})" in status

    # The next drill, not interrupted, takes its place: the signal is the old drill's, no longer said.
    again = subprocess.run([sys.executable, "-m", "snapctl.cli", "drill", run_id, "--junit", str(tmp_path / "2.xml"),
                            "-i", str(sqlite_cluster.inventory_path)], cwd=sqlite_cluster.directory,
                           capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == ExitCode.OK, again.stderr
    assert "last_drill_interrupted_by" not in catalog.load(run_id).extra
    assert "interrupted by" not in snapctl("show", run_id).stdout


def test_records_from_before_interrupted_by_still_read_and_show_no_signal(sqlite_cluster, tmp_path):
    """A drill record an older snapctl wrote has `interrupted` alone; a `last_drill` an older
    snapctl recorded after a newer one's interrupted drill leaves that drill's signal beside it."""
    import json

    from snapctl.drill import DrillReport
    from snapctl.manifest import DRILL_INTERRUPTED_BY, last_drill_interrupted_by
    from snapctl.status_drills import look_at_drills

    run_id = sqlite_cluster.backup()
    stopped_after("snapctl.drill", "_step", "drill", run_id, "--junit", str(tmp_path / "drill.xml"),
                  cluster=sqlite_cluster)
    catalog = open_catalog(sqlite_cluster.inventory)
    manifest = catalog.load(run_id)
    older = json.loads(catalog.store.read(manifest.last_drill.report))
    del older["interrupted_by"]
    catalog.store.write(manifest.last_drill.report, json.dumps(older).encode())

    report = DrillReport.model_validate_json(catalog.store.read(manifest.last_drill.report))
    assert report.interrupted and report.interrupted_by is None
    newest = look_at_drills(catalog).newest
    assert newest is not None and newest.drill_id == report.drill_id

    manifest.last_drill = manifest.last_drill.model_copy(update={"drill_id": "a-later-drill"})
    assert last_drill_interrupted_by(manifest) is None, "the signal was another drill's"
    assert manifest.extra[DRILL_INTERRUPTED_BY]["drill_id"] == report.drill_id
