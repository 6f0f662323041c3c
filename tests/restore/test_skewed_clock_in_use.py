"""A restore or drill whose clock runs behind the prune's still keeps its run: its record's start,
by its own clock, looked older than the record's time budget, and `snapctl prune` deleted the run
being read (the restore then failed `snapshot ... not found`, the drill `no run R in the catalog`).

Each runs as the real CLI in a process of its own under libfaketime, stopped once on record; the
prune runs on the real clock."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapctl.catalog import open_catalog
from snapctl.drill import run_drill
from snapctl.errors import CatalogError
from tests.restore.conftest import SqliteCluster
from tests.restore.test_killed_restore import _PAUSED

_FAKETIME = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
needs_faketime = pytest.mark.skipif(not _FAKETIME, reason="needs libfaketime (Debian package faketime)")

_DRILL_PAUSED = """
import sys, time
from pathlib import Path
import snapctl.cli as cli, snapctl.drill as drill

reached, release = Path(sys.argv[1]), Path(sys.argv[2])
original = drill._drill_node


def paused(d, name):
    reached.write_text(name)
    while not release.exists():
        time.sleep(0.05)
    return original(d, name)


drill._drill_node = paused
sys.argv = ["snapctl", *sys.argv[3:]]
cli.main()
"""


def _older_of_two_due_for_pruning(cluster: SqliteCluster) -> str:
    older = cluster.backup()
    cluster.backup()
    cluster.edit(retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    return older


def _behind(offset: str) -> dict[str, str]:
    return {**os.environ, "LD_PRELOAD": _FAKETIME[0], "FAKETIME": offset}


def _until(reached: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not reached.exists() or not reached.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"it never got under way: {process.communicate()[1]}")
        time.sleep(0.05)


def _prune(cluster: SqliteCluster) -> dict:
    done = subprocess.run([sys.executable, "-m", "snapctl.cli", "prune", "-i", str(cluster.inventory_path), "-o",
                           "json"], cwd=cluster.directory, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["data"]


@needs_faketime
def test_a_restore_two_days_behind_the_prunes_clock_keeps_its_run(sqlite_cluster, tmp_path):
    older = _older_of_two_due_for_pruning(sqlite_cluster)
    reached = tmp_path / "reached"
    restore = subprocess.Popen([sys.executable, "-c", _PAUSED, str(reached), "restore", older, "--to",
                                str(tmp_path / "restored"), "-i", str(sqlite_cluster.inventory_path)],
                               cwd=sqlite_cluster.directory, env=_behind("-2d"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        _until(reached, restore)

        pruned = _prune(sqlite_cluster)
    finally:
        restore.send_signal(signal.SIGKILL)
        restore.communicate()

    assert pruned["deleted"] == []
    [kept] = [v for v in pruned["kept"] if v["run_id"] == older]
    assert kept["reasons"][0].startswith("being restored (restore ")
    assert open_catalog(sqlite_cluster.inventory).load(older).status == "succeeded"


@needs_faketime
def test_a_drill_an_hour_behind_the_prunes_clock_keeps_its_run_and_passes(sqlite_cluster, tmp_path):
    older = _older_of_two_due_for_pruning(sqlite_cluster)  # drill.timeout_s 30m: its record's budget 40m
    reached, release = tmp_path / "reached", tmp_path / "release"
    drill = subprocess.Popen([sys.executable, "-c", _DRILL_PAUSED, str(reached), str(release), "drill", older,
                              "--junit", str(tmp_path / "drill.xml"), "-i", str(sqlite_cluster.inventory_path)],
                             cwd=sqlite_cluster.directory, env=_behind("-1h"), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        _until(reached, drill)

        pruned = _prune(sqlite_cluster)
    finally:
        release.write_text("go")
        _, err = drill.communicate(timeout=120)

    assert pruned["deleted"] == []
    [kept] = [v for v in pruned["kept"] if v["run_id"] == older]
    assert kept["reasons"][0].startswith("being drilled (drill ")
    assert drill.returncode == 0, err
    assert open_catalog(sqlite_cluster.inventory).load(older).last_drill.ok


def test_a_run_deleted_while_it_was_drilled_is_said_so_not_no_run_in_the_catalog(sqlite_cluster, tmp_path,
                                                                                 monkeypatch):
    import snapctl.drill

    older = _older_of_two_due_for_pruning(sqlite_cluster)
    drill_node = snapctl.drill._drill_node

    def deleted_first(drill, name):  # its manifest deleted by hand (or a prune on a clock far ahead)
        open_catalog(sqlite_cluster.inventory).delete(older)
        return drill_node(drill, name)

    monkeypatch.setattr(snapctl.drill, "_drill_node", deleted_first)
    with pytest.raises(CatalogError) as caught:
        run_drill(sqlite_cluster.inventory, older, junit=tmp_path / "drill.xml")

    store = open_catalog(sqlite_cluster.inventory).store
    [key] = store.list(f"restore-test/drills/{older}-")
    assert caught.value.message == (f"run {older} was deleted from the catalog while the drill ran: what the drill "
                                    f"found is in its report and its record {key}, not on the run")
    assert caught.value.exit_code == 1 and "snapctl list" in caught.value.hint
    assert json.loads(store.read(key))["finished_at"], "the drill's record is finished all the same"
