"""`snapctl status` and `backup --textfile` as a user runs them: exit codes, the published JSON
schema and node_exporter textfiles (--watch: test_status_watch.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from snapctl.config import parse_inventory
from snapctl.errors import ExitCode
from snapctl.health import assess
from snapctl.status import ClusterStatus, SnapshotMemory
from tests.conftest import LOOPBACK, free_port
from tests.status.conftest import VALIDATOR, load, record_run, sqlite_nodes, validated, write_inventory
from tests.status.promtext import parse, value
from tests.status.test_health import probe


def snapctl(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_STATE_HOME": str(cwd / "state")}
    return subprocess.run([sys.executable, "-m", "snapctl.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=timeout, check=False)


def status_json(tmp_path: Path, *args: str) -> tuple[int, dict]:
    result = snapctl("status", "-i", "inventory.yaml", "-o", "json", *args, cwd=tmp_path)
    document = json.loads(result.stdout)
    VALIDATOR.validate(document)
    return result.returncode, document


def test_healthy_exits_0_and_the_document_matches_the_published_schema(tmp_path):
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 2)))
    record_run(inventory, "r-old-failure", "failed", age_s=600, error="node n2: prepare did not answer")
    record_run(inventory, "r-good", "succeeded", age_s=60)
    code, doc = status_json(tmp_path)
    data = doc["data"]
    assert code == ExitCode.OK == data["verdict"]["exit_code"]
    assert data["verdict"]["level"] == "healthy" and data["verdict"]["safe_to_back_up"] is True
    assert [n["node"] for n in data["nodes"]] == ["n1", "n2"] and all(n["engine"]["up"] for n in data["nodes"])
    assert data["backups"]["latest_success"]["run_id"] == "r-good" and 60 <= data["backups"]["latest_success"]["age_s"]
    assert data["backups"]["latest_failure"]["error"] == "node n2: prepare did not answer"
    assert data["backups"]["latest_success"]["snapshots_unconfirmed"] is False


def test_a_newest_backup_made_with_no_wait_is_said_to_have_unconfirmed_snapshots(tmp_path):
    # Its snapshots may yet fail (a cloud's in error, a local one its host restarted before syncing):
    # the RPO it meets is that of a backup that may turn out to be none.
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-waited", "succeeded", age_s=600)
    record_run(inventory, "r-nowait", "succeeded", age_s=60, waited=False)
    _, doc = status_json(tmp_path)
    newest = doc["data"]["backups"]["latest_success"]
    assert newest["run_id"] == "r-nowait" and newest["snapshots_unconfirmed"] is True
    text = " ".join(snapctl("status", "-i", "inventory.yaml", cwd=tmp_path).stdout.split())  # rich wraps it
    assert "newest good backup: r-nowait" in text and "its snapshots not confirmed complete (backup --no-wait)" in text


def test_no_backup_yet_is_degraded_exit_5(tmp_path):
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    code, doc = status_json(tmp_path)
    assert code == ExitCode.DEGRADED == 5
    # A catalog whose directory does not exist: the first backup makes it, or catalog.path is mistyped.
    [finding] = doc["data"]["verdict"]["findings"]
    assert finding["message"] == (f"no successful backup yet: the catalog at {inventory.resolve(inventory.catalog.path)} "
                                  "does not exist (a first backup makes it; else check catalog.path, and that its "
                                  "share is mounted)")
    inventory.resolve(inventory.catalog.path).mkdir(parents=True)
    code, doc = status_json(tmp_path)
    assert code == ExitCode.DEGRADED == 5
    assert doc["data"]["verdict"]["findings"] == [
        {"severity": "degraded", "subject": "backups", "message": "no successful backup yet", "hint": None,
         "forceable": True}]


def test_an_unreachable_node_or_a_backup_older_than_the_rpo_is_critical_exit_6(tmp_path):
    (tmp_path / "gone").mkdir()
    nodes = sqlite_nodes(tmp_path, 1) + [{"name": "gone", "agent": f"http://{LOOPBACK}:{free_port()}",
                                          "volumes": [{"name": "data", "path": "gone"}]}]
    inventory = load(write_inventory(tmp_path, nodes, rpo="1h"))
    record_run(inventory, "r-stale", "succeeded", age_s=7200)
    code, doc = status_json(tmp_path)
    assert code == ExitCode.CRITICAL == 6
    findings = {(f["severity"], f["subject"]) for f in doc["data"]["verdict"]["findings"]}
    assert {("critical", "gone"), ("critical", "backups")} <= findings
    gone = doc["data"]["nodes"][1]
    assert gone["reachable"] is False and gone["engine"] is None and "cannot reach" in gone["error"]
    assert [f["subject"] for f in doc["data"]["verdict"]["preflight_refusals"]] == ["gone"], \
        "an old backup never refuses a new one"

    text = snapctl("status", "-i", "inventory.yaml", cwd=tmp_path)
    assert text.returncode == ExitCode.CRITICAL
    assert "verdict: critical (exit 6)" in text.stdout and "unreachable" in text.stdout


@pytest.mark.parametrize(("rpo", "age_s", "said"), [("1s", 30, r"\d+s old, over the RPO of 1s"),
                                                    ("250ms", 5, r"\d+s old, over the RPO of 250ms"),
                                                    ("15m", 3600, r"60m old, over the RPO of 15m"),
                                                    ("24h", 30 * 3600, r"30\.0h old, over the RPO of 24\.0h")])
def test_the_age_of_a_backup_over_the_rpo_is_said_in_the_unit_that_fits(tmp_path, rpo, age_s, said):
    from snapctl.status import collect_status

    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), rpo=rpo))
    record_run(inventory, "r-old", "succeeded", age_s=age_s)
    findings = asyncio.run(collect_status(inventory)).verdict.findings
    [message] = [f.message for f in findings if f.subject == "backups" and f.severity == "critical"]
    assert re.fullmatch(f"newest successful backup r-old is {said}", message), message


def test_a_newest_backup_that_started_in_the_future_is_a_wrong_clock_not_a_fresh_backup(tmp_path):
    # A control host whose clock ran two days ahead made the newest run: its age was negative
    # ("-172800s ago"), under any RPO, so status said healthy while no backup was made for two days.
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), rpo="24h"))
    record_run(inventory, "r-ahead", "succeeded", age_s=-2 * 86400)
    code, doc = status_json(tmp_path)
    assert code == ExitCode.DEGRADED
    [finding] = [f for f in doc["data"]["verdict"]["findings"] if f["subject"] == "backups"]
    assert finding["severity"] == "degraded"
    assert re.match(r"newest successful backup r-ahead started 48\.0h in the future by this host's clock, so the RPO "
                    r"cannot be checked", finding["message"]), finding
    text = snapctl("status", "-i", "inventory.yaml", cwd=tmp_path)
    assert "newest good backup: r-ahead, started 48.0h in the future (RPO 24.0h)" in text.stdout, text.stdout


def test_node_filter_and_unknown_node(tmp_path):
    nodes = sqlite_nodes(tmp_path, 1) + [{"name": "gone", "agent": f"http://{LOOPBACK}:{free_port()}"}]
    write_inventory(tmp_path, nodes)
    code, doc = status_json(tmp_path, "--node", "n1")
    assert code == ExitCode.DEGRADED and [n["node"] for n in doc["data"]["nodes"]] == ["n1"]
    assert doc["data"]["filters"] == {"nodes": ["n1"], "groups": []}
    unknown = snapctl("status", "-i", "inventory.yaml", "--node", "n9", cwd=tmp_path)
    assert unknown.returncode == ExitCode.BAD_INPUT and "no node named 'n9'" in unknown.stderr


@pytest.mark.parametrize("provider", [{"type": "ibm"}, {"type": "aws", "regoin": "eu-west-1"},
                                      {"type": "local", "reflnk": "auto"}, {"type": "aws"}],
                         ids=["unknown-type", "aws-unknown-key", "local-unknown-key", "aws-missing-region"])
def test_a_provider_block_backup_would_refuse_is_bad_input_for_status_too(tmp_path, provider):
    write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), provider=provider)
    status = snapctl("status", "-i", "inventory.yaml", cwd=tmp_path)
    backup = snapctl("backup", "--dry-run", "-i", "inventory.yaml", cwd=tmp_path)
    assert status.returncode == backup.returncode == ExitCode.BAD_INPUT, status.stdout
    assert status.stderr == backup.stderr and status.stderr.startswith("snapctl: error: inventory.yaml:")
    assert "safe to back up" not in status.stdout


def test_status_checks_a_cloud_provider_block_without_importing_its_sdk(tmp_path):
    write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), provider={"type": "aws", "region": "eu-west-1"})
    code = ("import sys\n"
            "sys.argv = ['snapctl', 'status', '-i', 'inventory.yaml']\n"
            "from snapctl.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    print('EXIT', exc.code)\n"
            "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in {'boto3', 'botocore'}))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=90,
                            env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}, check=False)
    assert f"EXIT {ExitCode.DEGRADED}" in result.stdout and "LOADED []" in result.stdout, result.stdout + result.stderr


def test_a_held_lease_validates_too():
    inventory = parse_inventory("cluster: c\nprovider: {type: local}\nnodes: [{name: a, agent: 'http://127.0.0.1:1'}]")
    probes = [probe("a", lease=True)]
    now = datetime.now(UTC)
    status = ClusterStatus("c", now, probes, assess(inventory, probes), 3600.0,
                           preflight=assess(inventory, probes, for_backup=True).at_least("critical"))
    doc = validated(status)
    lease = doc["data"]["nodes"][0]["lease"]
    assert lease["run_id"] == "r1" and 0 < lease["expires_in_s"] <= 30
    assert doc["data"]["verdict"]["safe_to_back_up"] is False


def test_busy_snapshot_ages_survive_across_runs(tmp_path):
    from node_agent.models import RaftGroup

    group = RaftGroup(group="g", member="m1", snapshot_status="SAVING", last_snapshot_index=7)
    path = tmp_path / "state" / "c.json"
    first = SnapshotMemory(path, clock=lambda: 100.0)
    assert first.age("a", group) == 0.0
    assert first.commit({"a"}) is None and path.exists()
    second = SnapshotMemory(path, clock=lambda: 250.0)
    assert second.age("a", group) == 150.0
    second.commit({"a"})
    third = SnapshotMemory(path, clock=lambda: 300.0)
    third.commit({"a"})  # not busy any more on a node that answered: forgotten
    assert SnapshotMemory(path, clock=lambda: 400.0).age("a", group) == 0.0


def test_backup_textfile_after_a_success_and_after_a_refusal(tmp_path):
    write_inventory(tmp_path, sqlite_nodes(tmp_path, 2))
    (tmp_path / "prom").mkdir()
    ok = snapctl("backup", "-i", "inventory.yaml", "--textfile", "prom/snapctl-backup.prom", cwd=tmp_path)
    assert ok.returncode == ExitCode.OK, ok.stderr
    good = parse((tmp_path / "prom" / "snapctl-backup.prom").read_text())
    assert value(good, "snapctl_backup_last_run_success", cluster="st") == 1
    succeeded_at = value(good, "snapctl_backup_last_success_timestamp_seconds", cluster="st")
    assert abs(succeeded_at - datetime.now(UTC).timestamp()) < timedelta(minutes=5).total_seconds()
    assert value(good, "snapctl_backup_freeze_seconds", cluster="st", node="n1") > 0
    assert value(good, "snapctl_backup_snapshots", cluster="st", node="n2") == 1
    assert value(good, "snapctl_backup_snapshot_bytes", cluster="st", node="n2") >= 0

    (tmp_path / "n2" / "data.db").write_bytes(b"not a database" * 100)  # engine down: preflight refuses
    refused = snapctl("backup", "-i", "inventory.yaml", "--textfile", "prom/snapctl-backup.prom", cwd=tmp_path)
    assert refused.returncode == ExitCode.PREFLIGHT_REFUSED, refused.stderr
    bad = parse((tmp_path / "prom" / "snapctl-backup.prom").read_text())
    assert value(bad, "snapctl_backup_last_run_success", cluster="st") == 0
    assert value(bad, "snapctl_backup_last_success_timestamp_seconds", cluster="st") == succeeded_at

    wrong = snapctl("backup", "-i", "inventory.yaml", "--textfile", "prom/backup.txt", cwd=tmp_path)
    assert wrong.returncode == ExitCode.BAD_INPUT and ".prom" in wrong.stderr
    assert "never awaited" not in wrong.stderr

    # A dry run checks the path as the real run would; a file where the directory should be is named.
    planned = snapctl("backup", "-i", "inventory.yaml", "--dry-run", "--textfile", "prom/snapctl-backup.prom/x.prom",
                      cwd=tmp_path)
    assert planned.returncode == ExitCode.BAD_INPUT
    assert "--textfile prom/snapctl-backup.prom/x.prom: prom/snapctl-backup.prom is not a directory" in planned.stderr


def test_a_run_in_progress_makes_backing_up_unsafe_but_the_cluster_healthy(tmp_path):
    from snapctl.catalog import open_catalog
    from snapctl.status import collect_status

    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    lock = open_catalog(inventory).acquire_lock("ops@cron:42", "r-running", 60)
    try:
        status = asyncio.run(collect_status(inventory))
    finally:
        lock.release()
    assert status.verdict.level == "healthy"
    (refusal,) = status.preflight
    assert "refused (exit 4): run r-running by ops@cron:42 holds the cluster lock" in refusal.message
    assert validated(status)["data"]["verdict"]["safe_to_back_up"] is False
    assert asyncio.run(collect_status(inventory)).preflight == [], "released: safe again"


@pytest.mark.parametrize(("volumes", "refusal"), [
    ([{"name": "data", "path": "n2", "foo": 1}], "node n2: volumes[0]: unknown key 'foo'"),
    ([{"name": "data", "path": "nodir"}], "volume data path"),
], ids=["unknown key", "missing path"])
def test_status_is_not_safe_to_back_up_where_backup_would_refuse_the_volumes(tmp_path, volumes, refusal):
    # It said "healthy ... safe to back up: yes" (exit 0) for inventories `backup` refuses (exit 2);
    # then "healthy", exit 0, with "safe to back up: no": `snapctl status || alert` in cron stayed
    # silent while every backup exited 2.
    nodes = sqlite_nodes(tmp_path, 2)
    nodes[1]["volumes"] = volumes
    inventory = load(write_inventory(tmp_path, nodes))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    code, doc = status_json(tmp_path)
    assert code == ExitCode.DEGRADED
    [refused] = doc["data"]["verdict"]["preflight_refusals"]
    assert refused["subject"] == "inventory" and refusal in refused["message"] and refused["forceable"] is False
    [finding] = doc["data"]["verdict"]["findings"]
    assert (finding["severity"], finding["subject"]) == ("degraded", "inventory")
    assert finding["message"].startswith("a backup now would be refused: ") and refusal in finding["message"]
    assert doc["data"]["verdict"]["safe_to_back_up"] is False
    planned = snapctl("backup", "-i", "inventory.yaml", "--dry-run", cwd=tmp_path)
    assert planned.returncode == ExitCode.BAD_INPUT and refusal in planned.stderr


def test_a_refusal_of_the_provider_store_gives_its_fix_as_the_findings_hint_not_in_its_message(tmp_path):
    # `hint` was null and the fix sat in `message` as "... (hint: set provider.store to ...)":
    # the refusal's text was built with str() of the error, which appends its hint.
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    (tmp_path / "snapshots").write_text("a file where the local store's directory should be")
    said = f"provider.store {tmp_path / 'snapshots'}: {tmp_path / 'snapshots'} is not a directory"
    hint = "set provider.store to a directory; snapctl creates it if it is missing"

    code, doc = status_json(tmp_path)

    assert code == ExitCode.DEGRADED
    [refused] = doc["data"]["verdict"]["preflight_refusals"]
    [finding] = doc["data"]["verdict"]["findings"]
    assert refused["message"].endswith(said) and refused["hint"] == hint
    assert finding["message"] == f"a backup now would be refused: {refused['message']}" and finding["hint"] == hint
    text = snapctl("status", "-i", "inventory.yaml", cwd=tmp_path)
    assert f"degraded inventory: {finding['message']} (hint: {hint})" in " ".join(text.stdout.split())


def test_an_inventory_that_lists_no_volumes_only_watches_the_agents_and_stays_healthy(tmp_path):
    nodes = sqlite_nodes(tmp_path, 2)
    for node in nodes:
        del node["volumes"]
    inventory = load(write_inventory(tmp_path, nodes))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    code, doc = status_json(tmp_path)
    assert code == ExitCode.OK and doc["data"]["verdict"]["findings"] == []
    assert doc["data"]["verdict"]["safe_to_back_up"] is False  # still: a backup would refuse it
    [refused] = doc["data"]["verdict"]["preflight_refusals"]
    assert refused["subject"] == "inventory" and "no volumes listed" in refused["message"]


def test_with_the_only_successful_manifest_unreadable_status_does_not_say_there_is_none(tmp_path):
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    (tmp_path / "catalog" / "st" / "manifests" / "r-good.json").write_text("{ not json")
    code, doc = status_json(tmp_path)
    assert code == ExitCode.DEGRADED
    messages = [f["message"] for f in doc["data"]["verdict"]["findings"]]
    assert "no readable successful backup (see the unreadable manifests)" in messages
    assert "no successful backup yet" not in messages
    assert any(m.startswith("unreadable manifest: run r-good") for m in messages)


def test_safe_to_back_up_is_no_when_the_backup_would_refuse_a_database_outside_its_volumes(tmp_path):
    # Reproduced with a real etcd cluster and agents on loopback: `snapctl status` said "safe to back
    # up: yes", and `snapctl backup` right after refused (exit 3): the engines kept data in their
    # backup_dir, in none of the nodes' volumes.
    nodes = sqlite_nodes(tmp_path, 2)
    (tmp_path / "elsewhere").mkdir()
    nodes[1]["volumes"] = [{"name": "data", "path": "elsewhere"}]
    inventory = load(write_inventory(tmp_path, nodes))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    code, doc = status_json(tmp_path)
    verdict = doc["data"]["verdict"]
    # Every backup is refused on it, forced or not: status exits 5 for it, as a cron job must hear.
    assert code == ExitCode.DEGRADED and verdict["safe_to_back_up"] is False
    assert [(f["severity"], f["subject"], f["forceable"]) for f in verdict["preflight_refusals"]] == [
        ("critical", "n2", False)]
    assert "in none of its volumes" in verdict["preflight_refusals"][0]["message"]
    assert [(f["severity"], f["subject"]) for f in verdict["findings"]] == [("degraded", "n2")]
    dry = snapctl("backup", "--dry-run", "-i", "inventory.yaml", cwd=tmp_path)
    assert dry.returncode == ExitCode.PREFLIGHT_REFUSED and "in none of its volumes" in dry.stderr


def test_the_newest_backups_age_counts_from_when_its_data_was_taken_not_from_its_end():
    # A cloud's snapshots took 5 h to complete: counted from the end, the data looked 5 h younger
    # than it was, and an RPO of 24 h was over by 5 h before status said so.
    from snapctl.manifest import IndexEntry

    inventory = parse_inventory("cluster: c\nprovider: {type: local}\nnodes: [{name: a, agent: 'http://127.0.0.1:1'}]")
    probes = [probe("a")]
    now = datetime.now(UTC)
    newest = IndexEntry(run_id="r1", status="succeeded", started_at=now - timedelta(hours=26),
                        finished_at=now - timedelta(hours=21), nodes=1, snapshots=1)
    status = ClusterStatus("c", now, probes, assess(inventory, probes), 86400.0, latest_success=newest)
    assert status.latest_success_age_s == pytest.approx(26 * 3600)


def test_an_engine_that_is_down_is_said_with_its_hint(tmp_path):
    nodes = sqlite_nodes(tmp_path, 1) + [
        {"name": "t1", "agent": "embedded", "volumes": [{"name": "data", "path": "t1"}],
         "engine": {"type": "tarantool", "host": LOOPBACK, "port": free_port(), "work_dir": "t1", "timeout_s": 1}}]
    (tmp_path / "t1").mkdir()
    inventory = load(write_inventory(tmp_path, nodes))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    (tmp_path / "n1" / "data.db").unlink()  # moved away since the inventory was written
    code, doc = status_json(tmp_path)
    assert code == ExitCode.CRITICAL
    said = {f["subject"]: (f["message"], f["hint"]) for f in doc["data"]["verdict"]["findings"]}
    assert said["n1"] == (f"engine sqlite is down: no sqlite database at {tmp_path / 'n1' / 'data.db'}",
                          "check engine.path (relative paths resolve against the config file's directory)")
    assert said["t1"][0].startswith("engine tarantool is down: tarantool at ")
    assert said["t1"][1] == "is tarantool running and listening there?"
    text = snapctl("status", "-i", "inventory.yaml", cwd=tmp_path).stdout
    assert "(hint: is tarantool running and listening there?)" in text  # the text says it after the message
