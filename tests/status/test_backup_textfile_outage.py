"""`backup --textfile` when the catalog cannot be read: the attempt's own series are still
written. Before, nothing was, and node_exporter kept showing the previous attempt's exit code and
time through the very outage (an S3 catalog not answering) that made the run fail."""

from __future__ import annotations

import time
from pathlib import Path

from snapctl.errors import ExitCode
from tests.conftest import free_port
from tests.moto_server import DUMMY_AWS_ENV
from tests.status.conftest import sqlite_nodes, write_inventory
from tests.status.promtext import parse, value
from tests.status.test_cli_status import snapctl

STALE = """\
snapctl_backup_last_attempt_timestamp_seconds{cluster="st"} 1000.0
snapctl_backup_last_attempt_exit_code{cluster="st"} 4
snapctl_backup_last_success_timestamp_seconds{cluster="st"} 900.0
"""


def test_a_backup_failing_on_an_unreachable_s3_catalog_still_records_its_attempt(tmp_path, monkeypatch):
    # A refused port on loopback: every call to the catalog fails, as in an S3 outage.
    catalog = {"url": "s3://snapctl-nowhere/cat", "endpoint_url": f"http://127.0.0.1:{free_port()}",
               "region": "us-east-1"}
    write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), catalog=catalog)
    for key, val in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(key, val)
    prom = tmp_path / "prom" / "snapctl.prom"
    prom.parent.mkdir()
    prom.write_text(STALE)  # the previous attempt's, as node_exporter would go on showing it
    before = time.time()

    result = snapctl("backup", "-i", "inventory.yaml", "--textfile", str(prom), cwd=tmp_path, timeout=240)

    assert result.returncode == ExitCode.RUN_FAILED, result.stderr
    samples = parse(prom.read_text())
    assert value(samples, "snapctl_backup_last_attempt_exit_code", cluster="st") == 1
    assert value(samples, "snapctl_backup_last_attempt_timestamp_seconds", cluster="st") >= before
    assert value(samples, "snapctl_backup_catalog_read", cluster="st") == 0
    # What only the catalog says is left out, not carried over from before.
    assert ("snapctl_backup_last_success_timestamp_seconds", frozenset({("cluster", "st")})) not in samples
    assert "monitoring sees the previous textfile" not in result.stderr


def test_a_bad_flag_after_the_textfile_was_checked_is_recorded_as_exit_2(tmp_path: Path):
    write_inventory(tmp_path, sqlite_nodes(tmp_path, 1))
    prom = tmp_path / "snapctl.prom"
    prom.write_text(STALE)

    result = snapctl("backup", "-i", "inventory.yaml", "--textfile", str(prom), "--consistency", "sometimes",
                     cwd=tmp_path)

    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert "--consistency" in result.stderr
    samples = parse(prom.read_text())
    assert value(samples, "snapctl_backup_last_attempt_exit_code", cluster="st") == 2
    assert value(samples, "snapctl_backup_catalog_read", cluster="st") == 1
