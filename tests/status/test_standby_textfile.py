"""Two control hosts back up one cluster through a shared catalog; the cluster lock lets one run a
night and the other exits 4 (it stands by). What the standby's `backup --textfile` says then must
not read as a failed or stale backup, and the documented alerts must stay right for both hosts."""

from __future__ import annotations

import time
from pathlib import Path

from snapctl.catalog import open_catalog
from snapctl.errors import ExitCode
from tests.status.conftest import load, record_run, sqlite_nodes, write_inventory
from tests.status.promtext import parse, value
from tests.status.test_cli_status import snapctl

DOCS = Path(__file__).resolve().parents[2] / "docs" / "status.md"
DAY = 86400


def _backup(tmp_path: Path, host: str) -> tuple[int, dict]:
    """`snapctl backup --textfile` as ``host``'s cron runs it: its own node_exporter directory."""
    prom = tmp_path / host / "snapctl-backup.prom"
    prom.parent.mkdir(exist_ok=True)
    result = snapctl("backup", "-i", "inventory.yaml", "--textfile", str(prom), cwd=tmp_path)
    return result.returncode, parse(prom.read_text())


def test_a_standby_host_refused_by_the_lock_says_so_and_keeps_no_stale_run_to_alert_on(tmp_path):
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 2)))
    record_run(inventory, "r-yesterday", "succeeded", age_s=DAY + 3600)
    yesterday = open_catalog(inventory).load("r-yesterday").finished_at.timestamp()

    # Night 1: host b's run is refused by the preflight (n2's database unreadable): a real failure, on b.
    good_db = (tmp_path / "n2" / "data.db").read_bytes()
    (tmp_path / "n2" / "data.db").write_bytes(b"not a database" * 100)
    code, b_failed = _backup(tmp_path, "host-b")
    assert code == ExitCode.PREFLIGHT_REFUSED
    assert value(b_failed, "snapctl_backup_last_attempt_exit_code", cluster="st") == 3
    assert value(b_failed, "snapctl_backup_last_run_success", cluster="st") == 0
    (tmp_path / "n2" / "data.db").write_bytes(good_db)

    # Night 2: host a's run holds the cluster lock when host b's starts: b stands by (exit 4).
    lock = open_catalog(inventory).acquire_lock("ops@host-a:4242", "r-tonight", 600)
    try:
        before = time.time()
        code, standby = _backup(tmp_path, "host-b")
    finally:
        lock.release()
    assert code == ExitCode.LOCK_HELD
    assert value(standby, "snapctl_backup_last_attempt_exit_code", cluster="st") == 4
    assert value(standby, "snapctl_backup_last_attempt_timestamp_seconds", cluster="st") >= before
    # The newest success it saw, as it was: a's run tonight had not finished when b looked.
    assert value(standby, "snapctl_backup_last_success_timestamp_seconds", cluster="st") == yesterday
    # Night 1's failure, read back from the catalog while a's run was under way, would keep a
    # "last run failed" alert firing on b all day: b ran nothing, and says nothing about runs.
    assert not any(name.startswith("snapctl_backup_last_run_") for name, _ in standby), sorted(standby)

    # Host a's run (here, the next one to take the lock) succeeds and writes a's textfile.
    code, active = _backup(tmp_path, "host-a")
    assert code == ExitCode.OK
    assert value(active, "snapctl_backup_last_attempt_exit_code", cluster="st") == 0
    assert value(active, "snapctl_backup_last_run_success", cluster="st") == 1

    # The documented alerts, over both hosts' textfiles as Prometheus would see them.
    docs = " ".join(DOCS.read_text().split())
    rpo_alert = "time() - max by (cluster) (snapctl_backup_last_success_timestamp_seconds) > 86400"
    failed_alert = "snapctl_backup_last_attempt_exit_code > 0 unless snapctl_backup_last_attempt_exit_code == 4"
    assert f"`{rpo_alert}`" in docs and f"`{failed_alert}`" in docs
    hosts = {"host-a": active, "host-b": standby}
    newest = max(value(s, "snapctl_backup_last_success_timestamp_seconds", cluster="st") for s in hosts.values())
    assert time.time() - newest < DAY, "the cluster's newest backup is fresh: no RPO alert"
    assert time.time() - value(standby, "snapctl_backup_last_success_timestamp_seconds", cluster="st") > DAY, \
        "b's own view is a day behind: an RPO alert per host would fire on the standby"
    assert [h for h, s in hosts.items() if value(s, "snapctl_backup_last_attempt_exit_code", cluster="st") not in (0, 4)] \
        == [], "no host's last attempt failed"
