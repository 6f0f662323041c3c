"""Every time snapctl writes for scripts is one form, RFC 3339 UTC to the microsecond with a `Z`:
in each command's `-o json` document, the catalog's files, the snapshot store's records and the
agents' answers, as real processes write them. Catalogs written with `+00:00` times (earlier
versions) still load, and are shown with `Z` too."""

from __future__ import annotations

import json
import re
import signal
import time
from typing import Any

import pytest

from snapctl.errors import ExitCode
from tests.e2e.test_cloud_backup import _aws_disks, _azure_disks, _gcp_disks, backed_up, cloud_cluster

WRITTEN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
LOOKS_LIKE_A_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}")


def _times(document: Any, where: str, found: dict[str, str]) -> dict[str, str]:
    """Every string in ``document`` that is a date and time, by its path (``where.key.0.key``)."""
    if isinstance(document, dict):
        for key, value in document.items():
            _times(value, f"{where}.{key}", found)
    elif isinstance(document, list):
        for i, value in enumerate(document):
            _times(value, f"{where}.{i}", found)
    elif isinstance(document, str) and LOOKS_LIKE_A_TIME.match(document):
        found[where] = document
    return found


def _assert_written_form(found: dict[str, str]) -> None:
    wrong = {where: text for where, text in found.items() if not WRITTEN.match(text)}
    assert not wrong, f"times not in the form YYYY-MM-DDTHH:MM:SS.ffffffZ: {wrong}"


def _keys(found: dict[str, str]) -> set[str]:
    return {where.rsplit(".", 1)[-1] for where in found}


def _json(result) -> dict[str, Any]:
    # 1: `status` while a node is held and the cluster is degraded; 5: `status` after the killed
    # run, still marked running until a backup closes it. The document is what is checked.
    assert result.returncode in (ExitCode.OK, ExitCode.RUN_FAILED, ExitCode.DEGRADED), result.stderr
    return json.loads(result.stdout)


def _wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_every_time_the_commands_the_catalog_and_the_agents_write_is_rfc3339_utc_with_z(cluster, tmp_path):
    found: dict[str, str] = {}
    backup = _json(cluster.snapctl("backup", "-o", "json"))
    run_id = backup["data"]["run_id"]
    _times(backup, "backup", found)

    # Held: the agents' answers and `status` carry the lease and the hold's start.
    slow = cluster.write_inventory(cluster.directory / "slow.yaml",
                                   provider={"type": "slow", "store": ".snapctl-demo/snapshots", "delay_s": 60})
    process = cluster.popen("backup", "-i", str(slow))
    try:
        def held_answers():
            answers = [cluster.agent_status(n) for n in cluster.nodes]
            return answers if all(a["lease"] and a["engine"]["held_since"] for a in answers) else None

        _times(_wait_until(held_answers, 30, "every node to be held"), "agent_status", found)
        _times(_json(cluster.snapctl("status", "-o", "json")), "status_held", found)
    finally:
        process.send_signal(signal.SIGKILL)  # the slow snapshot would be awaited: the leases end it
        process.wait(10)
    _wait_until(lambda: not any(cluster.agent_status(n)["lease"] for n in cluster.nodes), 15, "the holds to end")

    _times(_json(cluster.snapctl("list", "-o", "json")), "list", found)
    _times(_json(cluster.snapctl("show", run_id, "-o", "json")), "show", found)
    _times(_json(cluster.snapctl("verify", run_id, "-o", "json")), "verify", found)
    _times(_json(cluster.snapctl("restore", run_id, "--to", str(tmp_path / "restored"), "-o", "json")), "restore",
           found)
    _times(_json(cluster.snapctl("drill", run_id, "--junit", str(tmp_path / "drill.xml"), "-o", "json")), "drill",
           found)
    _times(_json(cluster.snapctl("status", "-o", "json")), "status", found)
    _times(_json(cluster.snapctl("prune", "--dry-run", "-o", "json")), "prune", found)
    _times(_json(cluster.snapctl("gc", "-o", "json")), "gc", found)
    # Takes the killed run's lock over, closes that run as abandoned, and releases the lock.
    _times(_json(cluster.snapctl("backup", "-o", "json")), "backup_after_kill", found)
    # What they left on disk: the catalog (manifests, index, lock, restore and drill records), the
    # local store's records of each snapshot, and the markers beside restored directories.
    for root in (cluster.directory / ".snapctl-demo", tmp_path / "restored"):
        for path in root.rglob("*.json"):
            if path.is_file() and ".tmp-" not in path.name:
                _times(json.loads(path.read_text()), str(path.relative_to(root)), found)

    _assert_written_form(found)
    assert {"started_at", "finished_at", "prepared_at", "hold_at", "prepare_sent_at", "prepare_acked_at",
            "complete_acked_at", "created_at", "completed_at", "acquired_at", "expires_at", "released_at",
            "held_since", "checked_at", "restored_at"} <= _keys(found), sorted(_keys(found))


@pytest.mark.parametrize("disks", [_aws_disks, _gcp_disks, _azure_disks], ids=["aws", "gcp", "azure"])
def test_each_clouds_snapshot_times_are_written_in_the_same_form(tmp_path, disks):
    """A snapshot's creation time as the SDK gives it (a datetime from boto3 and Azure's SDK, GCP's
    RFC 3339 text with its offset), when the snapshot is made and when it is found again."""
    with disks() as (provider, volumes, _, _), cloud_cluster(tmp_path, provider, volumes) as cluster:
        manifest = backed_up(cluster)
        backed_up(cluster)  # gc looks for orphans only in a catalog that has runs
        # Forgotten by the catalog, the run's snapshots are listed (as of a run it does not know) as
        # the cloud describes them.
        catalog = cluster.directory / ".snapctl-demo" / "catalog" / "e2e"
        (catalog / "manifests" / f"{manifest['run_id']}.json").unlink()
        (catalog / "index.json").unlink()
        listed = _json(cluster.snapctl("gc", "-o", "json"))
        assert "data" in listed, listed
        # Of this run only: the moto server is every test's, and other tests back up cluster e2e there too.
        orphans = [o for o in listed["data"]["unknown_runs"] if o["tags"].get("snapctl-run") == manifest["run_id"]]
        assert len(orphans) == 3
        found = _times(manifest, "backup", {})
        _times(orphans, "gc", found)
        _assert_written_form(found)
        assert {where.split(".")[0] for where, _ in found.items() if where.endswith(".created_at")} == {"backup", "gc"}


def _offset_form(text: str) -> str:
    """A catalog file as an earlier snapctl wrote it: every time with ``+00:00``, some to the second."""
    def old(match: re.Match) -> str:
        seconds, fraction = match[1], match[2]
        return f"{seconds}+00:00" if fraction.endswith("0") else f"{seconds}{fraction}+00:00"
    return re.sub(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?Z", old, text)


def test_a_catalog_written_with_offset_times_still_loads_and_is_shown_with_z(cluster):
    backup = _json(cluster.snapctl("backup", "-o", "json"))["data"]
    catalog = cluster.directory / ".snapctl-demo" / "catalog" / "e2e"
    rewritten = 0
    for path in [catalog / "index.json", catalog / "lock.json", *catalog.glob("manifests/*.json")]:
        text = path.read_text()
        path.write_text(_offset_form(text))
        rewritten += path.read_text() != text
    assert rewritten == 3 and "+00:00" in (catalog / "manifests" / f"{backup['run_id']}.json").read_text()

    listed = _json(cluster.snapctl("list", "-o", "json"))
    assert [r["run_id"] for r in listed["data"]["runs"]] == [backup["run_id"]] and not listed["data"]["problems"]
    shown = _json(cluster.snapctl("show", "latest", "-o", "json"))["data"]
    assert shown["run_id"] == backup["run_id"]
    assert shown["started_at"][:19] == backup["started_at"][:19]
    status = _json(cluster.snapctl("status", "-o", "json"))
    assert status["data"]["backups"]["latest_success"]["run_id"] == backup["run_id"]
    found = _times(listed, "list", {})
    _times(shown, "show", found)
    _times(status, "status", found)
    _assert_written_form(found)
    assert {"started_at", "finished_at", "prepared_at", "created_at", "checked_at"} <= _keys(found)

    # And the next backup takes the lock over from the record written the old way.
    again = _json(cluster.snapctl("backup", "-o", "json"))["data"]
    assert again["status"] == "succeeded"
