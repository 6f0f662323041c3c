"""A drill killed outright (SIGKILL: the OOM killer, a CI runner's hard kill) tears nothing down:
its scratch directory of restored volumes stays, so do its scratch engines, and its record stays
unfinished. The next drill on the host cleans that up, and only that: a drill still running, a
drill of another host, and a directory that is not provably a drill's scratch are left alone.

Every drill here is the real CLI in a process of its own; the one to be killed stops at a known
step (``paused_at``) and gets a real SIGKILL from the test."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from snapctl.catalog import Catalog, LocalBlobStore, open_catalog
from snapctl.drill_leftovers import LOOK_BACK_DAYS, clean_abandoned, find_abandoned, identity, write_marker
from snapctl.errors import ExitCode
from tests.restore.conftest import SqliteCluster

REPO = Path(__file__).resolve().parents[2]

_PAUSED_AT = """
import os, sys, threading
from pathlib import Path
import snapctl.cli as cli, snapctl.drill as drill

node, phase, reached = sys.argv[1:4]
original = drill._step


def step(d, name, at, detail=None):
    result = original(d, name, at, detail)
    if (name, at) == (node, phase):
        Path(reached).write_text(str(os.getpid()))
        threading.Event().wait()  # until the test kills (or lets go of) this process
    return result


drill._step = step
sys.argv = ["snapctl", *sys.argv[4:]]
cli.main()
"""


def paused_at(cluster: SqliteCluster, node: str, phase: str, tmp_path: Path) -> subprocess.Popen:
    """`snapctl drill latest` in its own process, stopped for good once ``node`` has reached ``phase``."""
    reached = tmp_path / f"reached-{node}-{phase}"
    process = subprocess.Popen([sys.executable, "-c", _PAUSED_AT, node, phase, str(reached), "drill", "latest",
                                "-i", str(cluster.inventory_path)], cwd=cluster.directory,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not reached.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the drill never reached {node} {phase}: {process.communicate()[1]}")
        time.sleep(0.05)
    return process


def killed(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def drill(cluster: SqliteCluster) -> dict:
    result = subprocess.run([sys.executable, "-m", "snapctl.cli", "drill", "latest", "-i", str(cluster.inventory_path),
                             "-o", "json"], cwd=cluster.directory, capture_output=True, text=True, timeout=180,
                            check=False)
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    return json.loads(result.stdout)["data"]


def records(cluster: SqliteCluster) -> dict[str, dict]:
    catalog = open_catalog(cluster.inventory)
    return {json.loads(catalog.store.read(key))["drill_id"]: json.loads(catalog.store.read(key))
            for key in catalog.store.list("restore-test/drills/")}


def only_unfinished(cluster: SqliteCluster) -> dict:
    [record] = [r for r in records(cluster).values() if r["finished_at"] is None]
    return record


def rewrite(cluster: SqliteCluster, record: dict, **changes: object) -> None:
    open_catalog(cluster.inventory).store.write(f"restore-test/drills/{record['run_id']}-{record['drill_id']}.json",
                                                json.dumps({**record, **changes}).encode())


def assert_left_alone(cluster: SqliteCluster, record: dict) -> None:
    """The next drill cleans up nothing of ``record``'s drill: its data and its unfinished record stay."""
    assert drill(cluster)["cleaned_up"] == []
    assert (Path(record["scratch_dir"]) / "n1" / "data" / "app.db").exists()
    assert records(cluster)[record["drill_id"]]["finished_at"] is None


def test_the_scratch_of_a_drill_killed_outright_is_removed_by_the_next_drill(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    victim = paused_at(sqlite_cluster, "n1", "starting", tmp_path)  # n1's volume restored into its scratch
    killed(victim)
    dead = only_unfinished(sqlite_cluster)
    scratch = Path(dead["scratch_dir"])
    assert (scratch / "n1" / "data" / "app.db").exists(), "the killed drill left its restored data"

    data = drill(sqlite_cluster)

    assert not scratch.exists()
    [line] = data["cleaned_up"]
    assert line.startswith(f"drill {dead['drill_id']} of run {dead['run_id']} (") and "no longer running" in line
    assert f"removed its scratch directory {scratch} (" in line and line.endswith("; record marked abandoned")
    after = records(sqlite_cluster)
    assert after[dead["drill_id"]]["abandoned"] is True and after[dead["drill_id"]]["finished_at"] is not None
    assert after[dead["drill_id"]]["error"].startswith("abandoned: its process ")
    assert not Path(data["scratch_dir"]).exists() and os.listdir(sqlite_cluster.directory / "scratch") == []

    assert drill(sqlite_cluster)["cleaned_up"] == [], "cleaned up once, said once"


def test_the_cleanup_of_a_killed_drill_is_in_the_next_drills_junit_report(sqlite_cluster, tmp_path):
    # It was on stderr and in the record only: the CI check never showed last night's drill was killed.
    sqlite_cluster.backup()
    killed(paused_at(sqlite_cluster, "n1", "starting", tmp_path))
    dead = only_unfinished(sqlite_cluster)
    junit = tmp_path / "drill.xml"

    result = subprocess.run([sys.executable, "-m", "snapctl.cli", "drill", "latest", "-i",
                             str(sqlite_cluster.inventory_path), "--junit", str(junit)], cwd=sqlite_cluster.directory,
                            capture_output=True, text=True, timeout=180, check=False)

    assert result.returncode == ExitCode.OK, result.stderr
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    out = cases["cluster restore-test"].find("system-out")
    assert out is not None and out.text is not None
    [line] = [line for line in out.text.splitlines() if line.startswith("cleanup: ")]
    assert line.startswith(f"cleanup: drill {dead['drill_id']} of run {dead['run_id']} (")
    assert line.endswith("; record marked abandoned") and f"cleanup: {line[len('cleanup: '):]}" in result.stderr


def test_a_live_drills_scratch_is_left_alone(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    running = paused_at(sqlite_cluster, "n1", "starting", tmp_path)
    try:
        live = only_unfinished(sqlite_cluster)

        data = drill(sqlite_cluster)

        assert data["cleaned_up"] == []
        assert (Path(live["scratch_dir"]) / "n1" / "data" / "app.db").exists()
        assert records(sqlite_cluster)[live["drill_id"]]["finished_at"] is None
        assert running.poll() is None
    finally:
        killed(running)


def test_a_killed_drill_of_another_host_is_left_alone(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    killed(paused_at(sqlite_cluster, "n1", "starting", tmp_path))
    dead = only_unfinished(sqlite_cluster)
    user, pid = dead["owner"].partition("@")[0], dead["owner"].rpartition(":")[2]
    rewrite(sqlite_cluster, dead, owner=f"{user}@another-host:{pid}")  # that pid, elsewhere, may well run

    assert_left_alone(sqlite_cluster, dead)


def test_a_killed_drill_of_another_pid_namespace_on_a_same_named_host_is_left_alone(sqlite_cluster, tmp_path):
    # Two containers given one host name, sharing the catalog and the scratch volume: the other's
    # drill pid is not one this host can see, which proves nothing about that drill.
    sqlite_cluster.backup()
    killed(paused_at(sqlite_cluster, "n1", "starting", tmp_path))
    dead = only_unfinished(sqlite_cluster)
    rewrite(sqlite_cluster, dead, owner_process={**dead["owner_process"], "pid_ns": "pid:[1]"})

    assert_left_alone(sqlite_cluster, dead)


def test_a_directory_without_the_drills_marker_is_left_alone(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    killed(paused_at(sqlite_cluster, "n1", "starting", tmp_path))
    dead = only_unfinished(sqlite_cluster)
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("not a drill's")
    rewrite(sqlite_cluster, dead, scratch_dir=str(precious))  # a record edited, or a directory reused since

    [line] = drill(sqlite_cluster)["cleaned_up"]

    assert (precious / "keep.txt").read_text() == "not a drill's"
    assert f"left {precious} alone: it holds no .snapctl-drill.json naming this drill" in line
    assert "hint: remove it by hand" in line
    assert records(sqlite_cluster)[dead["drill_id"]]["abandoned"] is True


@pytest.fixture
def tarantool_cluster(tmp_path):
    """One real Tarantool node, backed up, drilled with a scratch Tarantool instance."""
    import yaml

    from tests.realdb.tarantool import TarantoolReplicaSet

    with TarantoolReplicaSet(tmp_path / "tt", size=1) as rs:
        rs.write(20)
        inventory = {"cluster": "restore-test", "provider": {"type": "local", "store": "store"},
                     "catalog": {"path": "catalog"}, "drill": {"scratch_dir": "scratch", "start_timeout_s": "60s"},
                     "nodes": [{"name": "t1", "agent": "embedded", "engine": rs.engine_settings(0),
                                "volumes": [{"name": "work", "path": str(rs.instances[0].work_dir)}]}]}
        path = tmp_path / "inventory.yaml"
        path.write_text(yaml.safe_dump(inventory, sort_keys=False))
        cluster = SqliteCluster(tmp_path, path)
        cluster.backup()
        try:
            yield cluster
        finally:  # a test that failed may leave a scratch engine: every process working in this test's directory
            for pid in working_in(tmp_path / "scratch"):
                os.kill(pid, signal.SIGKILL)


def working_in(directory: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cwd = Path(os.readlink(entry / "cwd").removesuffix(" (deleted)"))
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and (cwd == directory or directory in cwd.parents):
            found.append(int(entry.name))
    return found


def running(pid: int) -> bool:
    """Running code: a zombie waiting for a parent that does not reap it (pid 1 in some containers) is not."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_the_scratch_engine_of_a_drill_killed_outright_is_stopped_by_the_next_drill(tarantool_cluster, tmp_path):
    killed(paused_at(tarantool_cluster, "t1", "verifying", tmp_path))  # its scratch tarantool up
    dead = only_unfinished(tarantool_cluster)
    [pid_file] = (Path(dead["scratch_dir"]) / ".engines" / "t1").glob("*.pid.json")
    engine = json.loads(pid_file.read_text())["pid"]
    assert running(engine), "the killed drill left its scratch tarantool running"

    [line] = drill(tarantool_cluster)["cleaned_up"]

    assert not running(engine)
    assert f"stopped tarantool pid {engine}" in line and not Path(dead["scratch_dir"]).exists()


def test_a_recorded_engine_pid_now_another_process_is_left_running(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    killed(paused_at(sqlite_cluster, "n1", "starting", tmp_path))
    dead = only_unfinished(sqlite_cluster)
    stranger = subprocess.Popen(["sleep", "300"], cwd=Path(dead["scratch_dir"]), start_new_session=True)
    try:
        # As after a reboot or a pid reused: the pid file's pid is now a process that began at another time.
        from snapctl.drill_leftovers import identity

        workdir = Path(dead["scratch_dir"]) / ".engines" / "n1"
        workdir.mkdir(parents=True, exist_ok=True)
        recorded = {**identity(stranger.pid), "started": identity(stranger.pid)["started"] - 1}
        (workdir / "tarantool.pid.json").write_text(json.dumps(recorded))

        [line] = drill(sqlite_cluster)["cleaned_up"]

        assert stranger.poll() is None, "a process that is not the recorded engine is not killed"
        assert "stopped" not in line and "removed its scratch directory" in line
    finally:
        stranger.kill()
        stranger.wait()


def gc(cluster: SqliteCluster, *flags: str) -> dict:
    result = subprocess.run([sys.executable, "-m", "snapctl.cli", "gc", *flags, "-i", str(cluster.inventory_path),
                             "-o", "json"], cwd=cluster.directory, capture_output=True, text=True, timeout=180,
                            check=False)
    assert result.returncode == ExitCode.OK, result.stdout + result.stderr
    return json.loads(result.stdout)["data"]


def test_gc_lists_what_a_drill_killed_outright_left_and_delete_cleans_it_up(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    killed(paused_at(sqlite_cluster, "n1", "starting", tmp_path))
    dead = only_unfinished(sqlite_cluster)
    scratch = Path(dead["scratch_dir"])

    [listed] = gc(sqlite_cluster)["killed_drills"]

    assert listed == f"drill {dead['drill_id']} of run {dead['run_id']} ({dead['owner']}, no longer running): " \
                     f"scratch directory {scratch}"
    assert (scratch / "n1" / "data" / "app.db").exists(), "listing removes nothing"

    deleted = gc(sqlite_cluster, "--delete")

    [line] = deleted["killed_drills_cleaned"]
    assert f"removed its scratch directory {scratch}" in line and not scratch.exists()
    assert records(sqlite_cluster)[dead["drill_id"]]["abandoned"] is True
    assert gc(sqlite_cluster)["killed_drills"] == []


def test_only_drills_begun_in_the_last_month_are_read_for_leftovers(tmp_path):
    # Years of nightly drills leave a record each: every drill and gc read them all (on S3, a
    # request each) to find the one a kill left unfinished, which the next night's drill finds.
    catalog = Catalog(LocalBlobStore(tmp_path / "catalog"), "c")
    gone = _a_pid_no_process_has()
    owner = f"ops@{socket.gethostname()}:{gone}"  # a drill process gone from this host
    process = {**identity(os.getpid()), "pid": gone}
    recent = datetime.now(UTC) - timedelta(days=LOOK_BACK_DAYS - 1)
    old = datetime.now(UTC) - timedelta(days=LOOK_BACK_DAYS + 1)
    for began in (recent, old):
        drill_id = f"{began:%Y%m%dT%H%M%SZ}-ab12"
        key = f"c/drills/20240101T000000Z-abcdef-{drill_id}.json"
        scratch = tmp_path / "scratch" / drill_id
        scratch.mkdir(parents=True)
        write_marker(scratch, cluster="c", drill_id=drill_id, record=key, owner=owner)
        catalog.store.write(key, json.dumps({"drill_id": drill_id, "run_id": "20240101T000000Z-abcdef",
                                             "owner": owner, "owner_process": process, "scratch_dir": str(scratch),
                                             "started_at": began.isoformat(), "finished_at": None}).encode())

    assert [d.drill_id for d in find_abandoned(catalog)] == [f"{recent:%Y%m%dT%H%M%SZ}-ab12"]


def test_a_record_another_cleaner_finished_meanwhile_is_said_so_not_marked_twice(tmp_path):
    catalog = Catalog(LocalBlobStore(tmp_path / "catalog"), "c")
    gone = _a_pid_no_process_has()
    owner = f"ops@{socket.gethostname()}:{gone}"
    drill_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-ab12"
    key = f"c/drills/20240101T000000Z-abcdef-{drill_id}.json"
    catalog.store.write(key, json.dumps({"drill_id": drill_id, "run_id": "20240101T000000Z-abcdef", "owner": owner,
                                         "owner_process": {**identity(os.getpid()), "pid": gone},
                                         "scratch_dir": str(tmp_path / "gone-already"),
                                         "finished_at": None}).encode())
    [found] = find_abandoned(catalog)
    theirs = json.dumps({"drill_id": drill_id, "finished_at": "2026-01-01T00:00:00Z", "abandoned": True}).encode()
    catalog.store.write(key, theirs)  # the gc of another shell, between our look and our write

    [(line, done)] = clean_abandoned(catalog, [found], "drill d")

    assert done and line.endswith("is already gone; its record was finished meanwhile, by another"), line
    assert catalog.store.read(key) == theirs


def _a_pid_no_process_has() -> int:
    for pid in range(os.getpid() + 50_000, 4_194_304):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except OSError:
            continue
    raise AssertionError("every pid is taken")
