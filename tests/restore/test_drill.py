"""Drills of embedded SQLite nodes: pass, mismatch, errors, teardown, the record, a scratch agent."""

from __future__ import annotations

import errno
import sqlite3
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

import snapctl.junit
from snapctl.catalog import open_catalog
from snapctl.drill import run_drill
from snapctl.errors import BadInputError, ExitCode, SnapctlError, SnapshotNotFound
from snapctl.restore import restore_run
from tests.conftest import free_port
from tests.restore.conftest import ROWS, checkpointed, node_without_engine_block, scratch_agent

OLDER_RECORD_KEYS = {  # snapctl 68714bc's DrillReport fields
    "cluster", "run_id", "drill_id", "provider", "started_at", "finished_at", "rto_s", "nodes", "scratch_dir",
    "owner", "owner_process", "abandoned", "cleaned_up", "kept", "interrupted", "leftovers", "teardown_errors",
    "junit", "record", "warnings", "error", "hint"}


def junit_cases(path: Path) -> dict[str, ET.Element]:
    return {case.get("name"): case for case in ET.parse(path).getroot().iter("testcase")}


def test_a_drill_restores_verifies_records_and_tears_down(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    sqlite_cluster.write("n1", 7)  # the live database moves on; the drill must find the backup's rows

    # reports/ does not exist, as in a CI job's fresh checkout (deploy/ci/nightly-drill.yml)
    report = run_drill(sqlite_cluster.inventory, "latest", junit=tmp_path / "reports" / "drill.xml")

    assert report.ok and report.exit_code == ExitCode.OK
    assert [(n.node, n.verdict, n.runs_on) for n in report.nodes] == [("n1", "passed", "this machine"),
                                                                      ("n2", "passed", "this machine")]
    for node in report.nodes:
        assert node.facts.tables["items"].rows == ROWS
        assert node.facts.tables["items"].checksum == node.expected.tables["items"].checksum
        assert 0 < node.rto_s <= report.rto_s
    assert not any((sqlite_cluster.directory / "scratch").iterdir()), "scratch data is torn down"

    cases = junit_cases(tmp_path / "reports" / "drill.xml")
    assert set(cases) == {"node n1 (sqlite)", "node n2 (sqlite)", "cluster restore-test"}
    assert not any(case.find("failure") is not None or case.find("error") is not None for case in cases.values())

    catalog = open_catalog(sqlite_cluster.inventory)
    stored = yaml.safe_load(catalog.store.read(report.record))
    assert stored["run_id"] == run_id and stored["nodes"][0]["verdict"] == "passed"
    summary = catalog.load(run_id).last_drill
    assert summary.ok and summary.report == report.record and summary.failed_nodes == []
    # What a snapctl from before `interrupted_by` knows of a record (its DrillReport forbids any
    # other key, and its status passed over every record with one): a drill no signal stopped
    # writes none other.
    assert set(stored) <= OLDER_RECORD_KEYS, set(stored) - OLDER_RECORD_KEYS


def test_a_changed_row_in_a_snapshot_fails_the_drill_naming_node_and_table(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    with sqlite3.connect(sqlite_cluster.snapshot_data("n2", run_id) / "app.db") as conn:
        conn.execute("UPDATE items SET payload = 'n2 tampered' WHERE id = 3")  # same length: same file size
    checkpointed(sqlite_cluster.snapshot_data("n2", run_id) / "app.db")

    report = run_drill(sqlite_cluster.inventory, run_id[:10], junit=tmp_path / "drill.xml")

    assert report.exit_code == ExitCode.VERIFY_MISMATCH and not report.ok
    n1, n2 = report.nodes
    assert n1.verdict == "passed"
    assert n2.verdict == "mismatch"
    [mismatch] = n2.mismatches
    assert mismatch.startswith("table items: checksum ")
    failure = junit_cases(tmp_path / "drill.xml")["node n2 (sqlite)"].find("failure")
    assert failure.get("message").startswith("node n2: table items: checksum")
    assert open_catalog(sqlite_cluster.inventory).load(run_id).last_drill.failed_nodes == ["n2"]
    assert report.rto_s is None
    assert not any((sqlite_cluster.directory / "scratch").iterdir())


def test_an_unreachable_scratch_agent_refuses_the_drill_before_any_node_is_restored(sqlite_cluster, tmp_path):
    # It was an error for its node alone, found once that node's volumes were restored: the drill
    # asks every scratch agent up front, as restore does (tests/restore/test_scratch_agent_paths.py).
    sqlite_cluster.backup()
    url = f"http://127.0.0.1:{free_port()}"
    sqlite_cluster.edit(node_n2={"restore": {"path": "n2-scratch", "agent": url}})

    with pytest.raises(BadInputError) as refused:
        run_drill(sqlite_cluster.inventory, junit=tmp_path / "drill.xml")

    assert refused.value.message.startswith(f"node n2: scratch agent {url} (restore.agent) did not answer, asked "
                                            "before restoring anything: cannot reach the agent at ")
    cases = junit_cases(tmp_path / "drill.xml")
    [error] = cases.pop("cluster restore-test").findall("error")
    assert error.get("message") == f"refused before restoring anything: {refused.value.message}" and cases == {}
    assert not (sqlite_cluster.directory / "n2-scratch").exists() and not any(
        (sqlite_cluster.directory / "scratch").iterdir()), "no node is restored"


def test_a_drill_refuses_what_restore_refuses_before_restoring_any_node(sqlite_cluster, tmp_path):
    # Before, the drill had none of restore's checks up front: n1 was copied and drilled, and n2
    # failed on its own ("not an empty directory") once it came to restoring.
    run_id = sqlite_cluster.backup()
    sqlite_cluster.edit(node_n1={"restore": {"path": "n1-restore"}}, node_n2={"restore": {"path": "n2-restore"}})
    in_the_way = sqlite_cluster.directory / "n2-restore" / "data"
    in_the_way.mkdir(parents=True)
    (in_the_way / "app.db").write_bytes(b"")
    with pytest.raises(BadInputError) as restore_said:
        restore_run(sqlite_cluster.inventory, run_id)

    with pytest.raises(BadInputError) as drill_said:
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")

    assert drill_said.value.message == restore_said.value.message == (f"node n2: restore target {in_the_way} is not "
                                                                       "an empty directory")
    assert drill_said.value.hint == restore_said.value.hint
    assert not (sqlite_cluster.directory / "n1-restore").exists(), "nothing was restored"
    assert not any((sqlite_cluster.directory / "scratch").iterdir())
    cases = junit_cases(tmp_path / "drill.xml")
    [error] = cases.pop("cluster restore-test").findall("error")
    assert error.get("message") == f"refused before restoring anything: {restore_said.value.message}"
    assert error.text.endswith(f"hint: {restore_said.value.hint}") and cases == {}
    catalog = open_catalog(sqlite_cluster.inventory)
    summary = catalog.load(run_id).last_drill
    assert summary is not None and not summary.ok
    assert yaml.safe_load(catalog.store.read(summary.report))["error"] == restore_said.value.message


def test_a_snapshot_gone_from_the_store_fails_the_drill_before_any_node_is_restored(sqlite_cluster, tmp_path):
    import shutil

    run_id = sqlite_cluster.backup()
    shutil.rmtree(sqlite_cluster.snapshot_data("n2", run_id).parent)

    with pytest.raises(SnapshotNotFound, match=r"^node n2: snapshot \S+-n2-data not found in "):
        run_drill(sqlite_cluster.inventory, junit=tmp_path / "drill.xml")

    assert not any((sqlite_cluster.directory / "scratch").iterdir()), "n1 was not restored meanwhile"
    assert not open_catalog(sqlite_cluster.inventory).load(run_id).last_drill.ok


def test_a_drill_past_its_time_budget_fails_with_the_setting_to_raise(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    sqlite_cluster.edit(drill={"scratch_dir": "scratch", "timeout_s": "1ms"})
    time.sleep(0.01)

    report = run_drill(sqlite_cluster.inventory, junit=tmp_path / "drill.xml")

    assert {n.verdict for n in report.nodes} == {"error"}
    assert "ran out of its 0.001s" in report.nodes[0].error and report.nodes[0].hint == "raise drill.timeout_s"


def test_keep_leaves_the_restored_data_for_inspection(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    report = run_drill(sqlite_cluster.inventory, junit=tmp_path / "drill.xml", keep=True)
    assert report.ok and report.kept
    assert sorted(Path(p).parent.name for p in report.leftovers) == ["n1", "n2"]
    assert all((Path(p) / "app.db").is_file() for p in report.leftovers)


def test_a_node_with_a_scratch_agent_is_verified_by_that_agent(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    token_file = tmp_path / "agent-token"
    token_file.write_text("scratch-agent-token\n")
    target = tmp_path / "n1-scratch"
    with scratch_agent(tmp_path, token_file, target / "data" / "app.db") as url:
        sqlite_cluster.edit(auth={"token_file": str(token_file)},
                            node_n1={"restore": {"path": str(target), "agent": url}})
        report = run_drill(sqlite_cluster.inventory, junit=tmp_path / "drill.xml")

    assert report.ok, [n.error for n in report.nodes]
    n1, n2 = report.nodes
    assert n1.runs_on == url and n2.runs_on == "this machine"
    assert n1.facts.tables["items"].rows == ROWS and n1.start_s is not None
    assert n1.volumes == {"data": str(target / "data")}
    assert not (target / "data").exists(), "the restored volume is torn down after the drill"


def test_a_node_without_an_engine_block_is_drilled_from_what_the_run_recorded(sqlite_cluster, tmp_path):
    with node_without_engine_block(sqlite_cluster, "n1"):
        sqlite_cluster.backup()

    report = run_drill(sqlite_cluster.inventory, junit=tmp_path / "drill.xml")

    assert report.ok, [n.error for n in report.nodes]
    n1, _ = report.nodes
    assert (n1.engine, n1.runs_on, n1.facts.tables["items"].rows) == ("sqlite", "this machine", ROWS)


def test_a_node_whose_record_cannot_start_its_engine_fails_its_drill_asking_for_the_block(sqlite_cluster, tmp_path):
    with node_without_engine_block(sqlite_cluster, "n1"):
        run_id = sqlite_cluster.backup()
    catalog = open_catalog(sqlite_cluster.inventory)
    manifest = catalog.load(run_id)
    manifest.nodes["n1"].state.engine = "tarantool"  # its record names files, not how to start it
    catalog.save(manifest)

    report = run_drill(sqlite_cluster.inventory, junit=tmp_path / "drill.xml")

    n1, n2 = report.nodes
    assert report.exit_code == ExitCode.RUN_FAILED and n2.verdict == "passed"
    assert (n1.verdict, n1.engine, n1.volumes) == ("error", "tarantool", {}), "nothing is restored for it"
    assert n1.error == ("no engine block in the inventory, and the run recorded too little of its tarantool engine "
                        "to start it")
    assert n1.hint == "add the node's engine block to the inventory, as in its agent's config"


def test_show_prints_the_runs_last_drill(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    cli = [sys.executable, "-m", "snapctl.cli", "show", run_id, "-i", str(sqlite_cluster.inventory_path)]
    assert "last drill" not in subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True).stdout

    passed = run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "passed.xml")
    shown = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"last drill {passed.drill_id}: passed, RTO " in shown and f"; report {passed.record}" in shown

    with sqlite3.connect(sqlite_cluster.snapshot_data("n2", run_id) / "app.db") as conn:
        conn.execute("DELETE FROM items WHERE id = 1")
    checkpointed(sqlite_cluster.snapshot_data("n2", run_id) / "app.db")
    failed = run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "failed.xml")
    shown = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True).stdout
    assert f"last drill {failed.drill_id}: failed (n2), finished " in shown and passed.drill_id not in shown


def test_only_a_succeeded_run_can_be_drilled(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    catalog = open_catalog(sqlite_cluster.inventory)
    manifest = catalog.load(run_id)
    manifest.status = "failed"
    catalog.save(manifest)
    with pytest.raises(BadInputError, match=f"run {run_id} failed: it has nothing to restore"):
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")


def test_a_scratch_dir_that_cannot_be_made_is_bad_input_and_nothing_is_recorded(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    (tmp_path / "a-file").write_text("not a directory")
    sqlite_cluster.edit(drill={"scratch_dir": "a-file/scratch"})
    with pytest.raises(BadInputError, match=r"cannot create the drill's scratch directory .*/a-file/scratch: "
                                            r"not a directory") as info:
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")
    assert "drill.scratch_dir" in info.value.hint
    assert open_catalog(sqlite_cluster.inventory).load(run_id).last_drill is None
    assert (tmp_path / "drill.xml").exists(), "a drill that cannot begin still leaves CI a report saying why"


def test_a_junit_path_that_is_a_directory_is_refused_before_anything_starts(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    with pytest.raises(BadInputError, match=f"cannot write the junit report to {tmp_path}: it is a directory") as info:
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path)
    assert info.value.hint == f"name a file, e.g. --junit {tmp_path / 'drill.xml'}"
    assert open_catalog(sqlite_cluster.inventory).load(run_id).last_drill is None


def test_a_junit_directory_that_cannot_be_made_is_refused_before_anything_starts(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    (tmp_path / "reports").write_text("a file where the directory would go")
    with pytest.raises(BadInputError, match=f"cannot write the junit report to {tmp_path}/reports/ci/drill.xml: "
                                            f"cannot create {tmp_path}/reports/ci: not a directory"):
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "reports" / "ci" / "drill.xml")
    assert open_catalog(sqlite_cluster.inventory).load(run_id).last_drill is None


def test_a_junit_directory_that_refuses_files_is_refused_before_anything_starts(sqlite_cluster, tmp_path, mounted):
    # Found after the whole drill (restores, engines started, verified), where the directory's
    # refusal was plain before it began: a read-only mount here, an immutable flag or a mode elsewhere.
    run_id = sqlite_cluster.backup()
    reports = mounted(tmp_path / "reports")
    subprocess.run(["mount", "-o", "remount,ro", str(reports)], check=True)
    with pytest.raises(BadInputError, match=f"cannot write the junit report to {reports}/drill.xml: read-only file "
                                            f"system in {reports} \\(hint: "):
        run_drill(sqlite_cluster.inventory, run_id, junit=reports / "drill.xml")
    assert open_catalog(sqlite_cluster.inventory).load(run_id).last_drill is None
    scratch = sqlite_cluster.directory / "scratch"
    assert not scratch.exists() or not any(scratch.iterdir()), "no node was restored"


def test_a_report_that_cannot_be_written_still_leaves_the_drill_on_record(sqlite_cluster, tmp_path, monkeypatch):
    run_id = sqlite_cluster.backup()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapctl.junit, "open", disk_full, raising=False)  # the report's file only
    with pytest.raises(SnapctlError, match=r"cannot write the junit report to .*drill.xml: no space left") as info:
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")
    assert "snapctl show" in info.value.hint
    summary = open_catalog(sqlite_cluster.inventory).load(run_id).last_drill
    assert summary is not None and summary.ok  # the drill itself passed, and its record says so
    assert not any((sqlite_cluster.directory / "scratch").iterdir())


def _older_of_two_backups_due_for_pruning(cluster) -> str:
    older = cluster.backup()
    cluster.backup()
    cluster.edit(retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})
    return older


def test_a_prune_during_a_drill_spares_the_run_being_drilled(sqlite_cluster, tmp_path, monkeypatch):
    import snapctl.drill
    from snapctl.prune import prune

    older = _older_of_two_backups_due_for_pruning(sqlite_cluster)
    pruned_meanwhile = []
    drill_node = snapctl.drill._drill_node

    def prune_first(drill, name):  # cron's backup and its retention, while the drill restores
        if name == "n1":
            pruned_meanwhile.append(prune(sqlite_cluster.inventory))
        return drill_node(drill, name)

    monkeypatch.setattr(snapctl.drill, "_drill_node", prune_first)
    report = run_drill(sqlite_cluster.inventory, older, junit=tmp_path / "drill.xml")

    assert report.ok, [n.error for n in report.nodes]
    [during] = pruned_meanwhile
    assert during.deleted == [] and any(v.run_id == older and v.reasons[0].startswith("being drilled")
                                        for v in during.kept)
    assert [v.run_id for v in prune(sqlite_cluster.inventory).deleted] == [older]  # the drill is over


def test_a_drill_that_read_its_run_just_before_a_prune_began_still_keeps_it(sqlite_cluster, tmp_path, monkeypatch):
    # The drill read the run's status, then cleaned up after killed drills and made its scratch
    # directory before it put itself on record: a prune (cron's backup) in between found no drill,
    # deleted the run, and the drill ended "no run R in the catalog" (exit 2), CI's drill red.
    import snapctl.drill_leftovers
    from snapctl.prune import prune

    older = _older_of_two_backups_due_for_pruning(sqlite_cluster)
    pruned_meanwhile = []
    clean_up = snapctl.drill_leftovers.clean_up_killed_drills

    def prune_first(*args, **kwargs):  # the drill has read its run, and is about to begin
        pruned_meanwhile.append(prune(sqlite_cluster.inventory))
        return clean_up(*args, **kwargs)

    monkeypatch.setattr(snapctl.drill_leftovers, "clean_up_killed_drills", prune_first)
    report = run_drill(sqlite_cluster.inventory, older, junit=tmp_path / "drill.xml")

    assert report.ok, (report.error, [n.error for n in report.nodes])
    [during] = pruned_meanwhile
    assert during.deleted == [] and any(v.run_id == older and v.reasons[0].startswith("being drilled")
                                        for v in during.kept)
    assert open_catalog(sqlite_cluster.inventory).load(older).last_drill.ok


def test_a_prune_as_a_drill_finishes_neither_fails_the_drill_nor_brings_its_run_back(sqlite_cluster, tmp_path,
                                                                                      monkeypatch):
    # The drill finished its record, then read the run's manifest to put `last_drill` on it: a
    # prune between the two deleted the run (its drill was over), and the drill, which had passed,
    # ended "no run R in the catalog" (exit 2); a prune between that read and its save had the
    # save write the deleted run's manifest back, a succeeded backup whose snapshots were gone.
    import snapctl.drill
    from snapctl.prune import prune

    older = sqlite_cluster.backup()
    sqlite_cluster.backup()
    sqlite_cluster.edit(retention={"keep_last": 1, "daily": 0, "weekly": 0, "monthly": 0})  # `older` is due
    pruned = []

    class PruneOnceTheDrillIsOver:  # the real store; cron's prune runs the moment the drill's record is finished
        def __init__(self, store):
            self._store = store

        def __getattr__(self, name):
            return getattr(self._store, name)

        def write(self, key, data):
            self._store.write(key, data)
            if "/drills/" in key and yaml.safe_load(data)["finished_at"] and not pruned:
                pruned.append(prune(sqlite_cluster.inventory))

    def catalog_of(inventory):
        catalog = open_catalog(inventory)
        catalog.store = PruneOnceTheDrillIsOver(catalog.store)
        return catalog

    monkeypatch.setattr(snapctl.drill, "open_catalog", catalog_of)
    report = run_drill(sqlite_cluster.inventory, older, junit=tmp_path / "drill.xml")

    assert report.ok, (report.error, [n.error for n in report.nodes])
    assert [v.run_id for v in pruned[0].deleted] == [older]  # the drill was over: its run may go
    catalog = open_catalog(sqlite_cluster.inventory)
    assert older not in {e.run_id for e in catalog.list()[0]} and not catalog.store.read(
        f"restore-test/manifests/{older}.json"), "a pruned run stays deleted"


def test_a_drill_refused_after_it_went_on_record_finishes_its_record(sqlite_cluster, tmp_path):
    run_id = sqlite_cluster.backup()
    sqlite_cluster.edit(provider={"type": "aws", "region": "eu-west-1"})  # the run's provider is local

    with pytest.raises(BadInputError, match=f"run {run_id} was made with the local provider"):
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")

    catalog = open_catalog(sqlite_cluster.inventory)
    [key] = catalog.store.list("restore-test/drills/")
    record = yaml.safe_load(catalog.store.read(key))
    assert record["finished_at"] is not None, "an unfinished record would keep the run from prune for 40 minutes"
    assert record["error"].startswith(f"run {run_id} was made with the local provider")


def test_a_drill_that_cannot_begin_still_writes_a_junit_report_saying_why(sqlite_cluster, tmp_path):
    # The nightly CI drill of a cluster whose backups had all failed exited 2 with no report: the
    # publishing step found "no test results", or last night's passing report where it was kept.
    report_path = tmp_path / "reports" / "drill.xml"
    report_path.parent.mkdir()
    report_path.write_text("<testsuites name='snapctl drill' tests='4' failures='0' errors='0'/>")  # last night's

    with pytest.raises(BadInputError, match="no succeeded backup of cluster restore-test"):
        run_drill(sqlite_cluster.inventory, "latest", junit=report_path)

    root = ET.parse(report_path).getroot()
    assert (root.get("tests"), root.get("errors"), root.get("failures")) == ("1", "1", "0")
    [error] = junit_cases(report_path)["cluster restore-test"].findall("error")
    assert error.get("message").startswith("the drill could not begin: no succeeded backup of cluster restore-test")
    assert "hint: the catalog is the inventory's catalog.path" in error.text


def test_a_control_character_in_an_error_leaves_the_junit_report_readable(tmp_path):
    # A scratch engine's last log line with an ANSI colour code (or a NUL) went into the report as
    # is: not XML, and the CI job's report parser rejected the whole file.
    from datetime import UTC, datetime

    from snapctl.drill import DrillReport, NodeDrill

    report = DrillReport(cluster="c", run_id="r1", drill_id="d1", provider="local", started_at=datetime.now(UTC),
                         finished_at=datetime.now(UTC),
                         nodes=[NodeDrill(node="n1", engine="tarantool", verdict="error",
                                          error="tarantool exited with code 1: \x1b[31mfatal\x1b[0m \x00 bad")])
    snapctl.junit.write_junit(report, tmp_path / "drill.xml")

    error = junit_cases(tmp_path / "drill.xml")["node n1 (tarantool)"].find("error")
    assert error.get("message") == "node n1: tarantool exited with code 1: \ufffd[31mfatal\ufffd[0m \ufffd bad"


def test_the_junit_report_is_readable_by_the_ci_step_that_publishes_it(tmp_path):
    # Written through mkstemp it was 0600: a publisher running as another user could not read it.
    import os
    import stat
    from datetime import UTC, datetime

    from snapctl.drill import DrillReport, NodeDrill

    report = DrillReport(cluster="c", run_id="r1", drill_id="d1", provider="local", started_at=datetime.now(UTC),
                         finished_at=datetime.now(UTC), nodes=[NodeDrill(node="n1", engine="sqlite", verdict="passed")])
    old = os.umask(0o022)
    try:
        snapctl.junit.write_junit(report, tmp_path / "drill.xml")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "drill.xml").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["drill.xml"]  # no temp file left beside it


def test_a_volume_renamed_in_the_inventory_since_the_run_is_named_not_taken_for_data_outside_the_volumes(
        sqlite_cluster, tmp_path):
    # `volumes: [{name: data}]` became `{name: db}` (same directory): every older run's drill failed
    # "none of the engine's paths lies on a restored volume", hint "the node's volumes must cover
    # the engine's data paths", which they do; restore said the same and exited 0.
    run_id = sqlite_cluster.backup()
    for node in ("n1", "n2"):
        sqlite_cluster.edit(**{f"node_{node}": {"volumes": [{"name": "db", "path": f"{node}/data"}]}})

    report = run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")
    assert [n.verdict for n in report.nodes] == ["error", "error"]
    assert "the run's volume data is not among the node's volumes in the inventory (db), renamed since the run?" \
        in report.nodes[0].error, report.nodes[0].error
    assert report.nodes[0].hint.startswith("give the volume back the name it had in the run")

    restored = restore_run(sqlite_cluster.inventory, run_id, tmp_path / "restored", record_it=False)
    assert "renamed since the run?" in restored.nodes[0].note, restored.nodes[0].note


def test_a_scratch_dir_inside_a_live_volume_is_refused_before_anything_is_made_there(sqlite_cluster, tmp_path):
    # Refused only once the scratch directory was made, as a restore target inside a volume, with
    # restore's hint (--to DIR): the drill's directories stayed in the live volume, in every later snapshot.
    run_id = sqlite_cluster.backup()
    sqlite_cluster.edit(drill={"scratch_dir": "n1/data/drills"})
    with pytest.raises(BadInputError, match=r"the drill's scratch directory .*/n1/data/drills lies inside node n1's "
                                            r"volume data \(.*/n1/data\)") as info:
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")
    assert "drill.scratch_dir" in info.value.hint
    assert not (sqlite_cluster.directory / "n1" / "data" / "drills").exists()
