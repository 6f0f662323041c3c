"""A restore killed outright (SIGKILL, the OOM killer) mid-copy leaves its hidden staging copy and
an unfinished marker beside its target. The rerun into the same place said "another restore is
writing" until both were removed by hand. It now clears them once the marker's process is proven
gone from this host, and leaves a running restore's alone, naming exactly what is in the way.

The restore to be killed is the real CLI in a process of its own, stopped mid-copy (``paused``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapctl.errors import BadInputError
from snapctl.restore import restore_run
from tests.restore.conftest import ROWS, SqliteCluster

_PAUSED = """
import os, sys, threading
from pathlib import Path
import snapctl.cli as cli, snapctl_local.restores as restores

reached = sys.argv[1]
original = restores.copy_tree


def copy_tree(source, staging, *args, **kwargs):
    result = original(source, staging, *args, **kwargs)
    Path(reached).write_text(str(staging))
    threading.Event().wait()  # until the test kills this process
    return result


restores.copy_tree = copy_tree
sys.argv = ["snapctl", *sys.argv[2:]]
cli.main()
"""


def paused_restore(cluster: SqliteCluster, target: Path | None, tmp_path: Path,
                   run: str = "latest") -> tuple[subprocess.Popen, Path]:
    """`snapctl restore RUN --to target` (None: to each node's restore.path), stopped for good with
    n1's copy made in its staging directory."""
    reached = tmp_path / "reached"
    to = ["--to", str(target)] if target is not None else []
    process = subprocess.Popen([sys.executable, "-c", _PAUSED, str(reached), "restore", run, *to,
                                "-i", str(cluster.inventory_path)], cwd=cluster.directory,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not reached.exists() or not reached.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the restore never reached its copy: {process.communicate()[1]}")
        time.sleep(0.05)
    return process, Path(reached.read_text())


def test_the_rerun_clears_what_a_killed_restore_left_and_never_a_running_ones(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    target = tmp_path / "restored"
    process, staging = paused_restore(sqlite_cluster, target, tmp_path)
    marker = target / "n1" / "data.snapctl-restore.json"
    try:
        assert staging.parent == target / "n1" and (staging / "app.db").exists() and marker.exists()

        with pytest.raises(BadInputError) as busy:  # its restore is running: nothing of it is touched
            restore_run(sqlite_cluster.inventory, "latest", target)
        assert busy.value.message.startswith(f"node n1: another restore is writing to {target / 'n1' / 'data'} by ")
        assert busy.value.hint.endswith(f"remove {marker} and {staging}")
        assert (staging / "app.db").exists() and marker.exists()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    result = restore_run(sqlite_cluster.inventory, "latest", target)

    assert result.ok and not staging.exists()
    assert sorted(p.name for p in (target / "n1").iterdir()) == ["data", marker.name]
    assert json.loads(marker.read_text())["finished_at"]
    assert len(result.nodes) == 2 and all(n.facts and n.facts.tables["items"].rows == ROWS for n in result.nodes)


def test_gc_lists_and_removes_what_a_killed_restore_left_and_never_a_running_ones(sqlite_cluster, tmp_path):
    # Restored elsewhere after the kill, the hidden copy stayed for good: gc listed nothing of it.
    from snapctl.prune import gc

    sqlite_cluster.backup()
    target = tmp_path / "restored"
    process, staging = paused_restore(sqlite_cluster, target, tmp_path)
    marker = target / "n1" / "data.snapctl-restore.json"
    try:
        assert gc(sqlite_cluster.inventory).killed_restores == [], "a running restore is nobody's leftover"
        assert gc(sqlite_cluster.inventory, delete=True).killed_restores == []
        assert (staging / "app.db").exists() and marker.exists()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()

    [listed] = gc(sqlite_cluster.inventory).killed_restores
    assert listed.startswith(f"{target / 'n1' / 'data'}: a killed restore's staging copy {staging}, ")
    assert staging.exists(), "listing removes nothing"

    deleted = gc(sqlite_cluster.inventory, delete=True)
    assert deleted.ok and deleted.killed_restores_cleaned == [f"{listed}: removed"]
    assert not staging.exists() and not marker.exists()
    assert gc(sqlite_cluster.inventory).killed_restores == []


def test_a_place_gc_cannot_look_into_is_named_not_a_traceback(sqlite_cluster, tmp_path):
    """An unfinished record naming a place this user cannot look into (another user's directory;
    here, a name too long for the filesystem, as root may enter anywhere) failed every gc listing."""
    from snapctl.providers import open_provider

    provider = open_provider(sqlite_cluster.inventory)
    place = str(tmp_path / ("x" * 300) / "n1" / "data")
    assert provider.find_killed_restores({place: None}) == ([], {place: "file name too long"})


def test_a_killed_restores_record_is_finished_by_gc_once_its_process_is_proven_gone(sqlite_cluster, tmp_path):
    # gc removed the staging copy and marker but left the record unfinished: prune kept the run
    # "being restored" for a day after the restore had died.
    from snapctl.catalog import open_catalog
    from snapctl.prune import gc, prune
    from snapctl.restore import RestoreRecord

    old = sqlite_cluster.backup()
    sqlite_cluster.backup()
    sqlite_cluster.edit(retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    inventory = sqlite_cluster.inventory
    catalog = open_catalog(inventory)
    target = tmp_path / "restored"
    process, staging = paused_restore(sqlite_cluster, target, tmp_path, run=old)
    [key] = catalog.store.list("restore-test/restores/")

    def kept_for() -> list[str]:
        return next(v.reasons for v in prune(inventory, dry_run=True).kept if v.run_id == old)

    try:
        assert gc(inventory).abandoned_restores == [], "a running restore is nobody's leftover"
        assert gc(inventory, delete=True).abandoned_restores == []
        assert kept_for()[0].startswith("being restored (restore ")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    record = RestoreRecord.model_validate_json(catalog.store.read(key))
    assert record.finished_at is None and record.owner_process and record.owner_process["pid"] == process.pid
    assert kept_for() == [f"restore {record.restore_id} (started {record.started_at:%Y-%m-%d %H:%M}Z) whose "
                          f"process {record.owner} is gone left its record unfinished: `snapctl gc --delete` "
                          "finishes it"]
    # An older snapctl's record names no process to prove gone: judged by its start, as before.
    legacy = record.model_copy(update={"restore_id": "20261207T000000Z-0ld0", "owner_process": None})
    catalog.store.write(legacy.key, legacy.model_dump_json(exclude={"owner_process", "abandoned"}).encode())
    assert kept_for()[0].startswith(f"being restored (restore {legacy.restore_id}, "), "one under way comes first"
    listed = gc(inventory)
    said = f"restore {record.restore_id} of run {old} ({record.owner}, no longer running): its record"
    assert listed.abandoned_restores == [said] and len(listed.killed_restores) == 1
    assert RestoreRecord.model_validate_json(catalog.store.read(key)).finished_at is None, "listing writes nothing"

    deleted = gc(inventory, delete=True)

    assert deleted.ok and deleted.abandoned_restores_finished == [f"{said} marked abandoned"]
    assert not staging.exists() and len(deleted.killed_restores_cleaned) == 1
    finished = RestoreRecord.model_validate_json(catalog.store.read(key))
    assert finished.finished_at and finished.outcome == "interrupted" and finished.abandoned
    assert finished.error.startswith(f"abandoned: its process {record.owner} was gone before the restore finished; "
                                     "finished by gc gc-")
    assert gc(inventory).abandoned_restores == []
    assert RestoreRecord.model_validate_json(catalog.store.read(legacy.key)).finished_at is None
    assert kept_for() == [f"being restored (restore {legacy.restore_id}, started "
                          f"{legacy.started_at:%Y-%m-%d %H:%M}Z)"]

    catalog.store.delete(legacy.key)
    assert [v.run_id for v in prune(inventory).deleted] == [old]


def test_a_killed_restores_record_stays_open_while_gc_cannot_look_at_one_of_its_places(sqlite_cluster, tmp_path):
    # gc --delete finished the record of a restore killed into a share not mounted while gc ran (a
    # stand-in for another user's directory): no later gc looked there, and the copy stayed for good.
    from snapctl.catalog import open_catalog
    from snapctl.prune import gc
    from snapctl.restore import RestoreRecord

    sqlite_cluster.backup()
    inventory = sqlite_cluster.inventory
    catalog = open_catalog(inventory)
    share = tmp_path / "share"
    target = share / "restored"
    process, staging = paused_restore(sqlite_cluster, target, tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait()
    [key] = catalog.store.list("restore-test/restores/")
    record = RestoreRecord.model_validate_json(catalog.store.read(key))
    share.rename(tmp_path / "unmounted")
    share.mkdir()  # the empty mount point

    deleted = gc(inventory, delete=True)

    said = f"restore {record.restore_id} of run {record.run_id} ({record.owner}, no longer running): its record"
    unseen = "".join(f"; could not look at {target / n / 'data'}: {target / n} is not there (a share not mounted?); "
                     "if nothing should be there, make it an empty directory and gc looks again" for n in ("n1", "n2"))
    assert deleted.abandoned_restores_finished == [f"{said}{unseen}; left unfinished for the next gc to look again"]
    assert gc(inventory).abandoned_restores == [f"{said}{unseen}"]
    assert RestoreRecord.model_validate_json(catalog.store.read(key)).finished_at is None

    share.rmdir()
    (tmp_path / "unmounted").rename(share)  # mounted again; n2's directory was never made (killed in n1)
    assert not (target / "n2").exists()
    deleted = gc(inventory, delete=True)

    assert deleted.ok and len(deleted.killed_restores_cleaned) == 1 and not staging.exists()
    assert deleted.abandoned_restores_finished == [f"{said} marked abandoned"]
    finished = RestoreRecord.model_validate_json(catalog.store.read(key))
    assert finished.abandoned and finished.places == [str(target / "n1" / "data"), str(target / "n2" / "data")]


def test_gc_looks_where_a_killed_restore_went_though_restore_path_changed_since(sqlite_cluster, tmp_path):
    # The places were those of the inventory as it is now: after restore.path moved, gc looked at
    # the new (empty) ones, finished the record, and the copy at the old place was never listed.
    from snapctl.catalog import open_catalog
    from snapctl.prune import gc
    from snapctl.restore import RestoreRecord

    sqlite_cluster.backup()
    old = {n: tmp_path / "old" / n for n in ("n1", "n2")}
    for place in old.values():
        place.mkdir(parents=True)
    sqlite_cluster.edit(**{f"node_{n}": {"restore": {"path": str(path)}} for n, path in old.items()})
    process, staging = paused_restore(sqlite_cluster, None, tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert staging.parent == old["n1"]
    sqlite_cluster.edit(**{f"node_{n}": {"restore": {"path": str(tmp_path / "new" / n)}} for n in old})

    deleted = gc(sqlite_cluster.inventory, delete=True)

    assert deleted.ok and len(deleted.killed_restores_cleaned) == 1 and not staging.exists()
    [finished] = deleted.abandoned_restores_finished
    assert finished.endswith("marked abandoned")
    catalog = open_catalog(sqlite_cluster.inventory)
    [key] = catalog.store.list("restore-test/restores/")
    assert RestoreRecord.model_validate_json(catalog.store.read(key)).abandoned


def test_a_restore_path_not_there_keeps_an_older_records_restore_open(sqlite_cluster, tmp_path):
    # An older snapctl's record names no places: gc goes by restore.path as the inventory has it
    # now, and one that is not there is no proof that nothing was left.
    from snapctl.catalog import open_catalog
    from snapctl.prune import gc
    from snapctl.restore import RestoreRecord

    sqlite_cluster.backup()
    sqlite_cluster.edit(**{f"node_{n}": {"restore": {"path": str(tmp_path / "gone" / n)}} for n in ("n1", "n2")})
    catalog = open_catalog(sqlite_cluster.inventory)
    process, _ = paused_restore(sqlite_cluster, tmp_path / "restored", tmp_path)
    process.send_signal(signal.SIGKILL)
    process.wait()
    [key] = catalog.store.list("restore-test/restores/")
    record = RestoreRecord.model_validate_json(catalog.store.read(key))
    legacy = record.model_copy(update={"target": "each node's restore target"})
    catalog.store.write(key, legacy.model_dump_json(exclude={"places"}).encode())

    [line] = gc(sqlite_cluster.inventory, delete=True).abandoned_restores_finished

    assert f"; could not look at {tmp_path / 'gone' / 'n1' / 'data'}: {tmp_path / 'gone' / 'n1'} is not there" in line
    assert line.endswith("; left unfinished for the next gc to look again")
    assert RestoreRecord.model_validate_json(catalog.store.read(key)).finished_at is None
