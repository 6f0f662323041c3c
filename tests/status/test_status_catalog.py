"""`snapctl status` and `backup --dry-run` when the catalog is the trouble: a cluster lock or a
catalog that cannot be read, a catalog block or default directory every command refuses, a catalog
that cannot be written, a lock another run holds (the rest of status: test_cli_status.py)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml

from snapctl.errors import ExitCode
from tests.status.conftest import load, record_run, sqlite_nodes, write_inventory
from tests.status.test_cli_status import snapctl, status_json


def _catalog_findings(doc: dict) -> tuple[list[str], list[str]]:
    verdict = doc["data"]["verdict"]
    return ([f["message"] for f in verdict["findings"] if f["subject"] == "catalog"],
            [f["message"] for f in verdict["preflight_refusals"] if f["subject"] == "catalog"])


def _catalog_hints(doc: dict) -> tuple[list[str | None], list[str | None]]:
    verdict = doc["data"]["verdict"]
    return ([f["hint"] for f in verdict["findings"] if f["subject"] == "catalog"],
            [f["hint"] for f in verdict["preflight_refusals"] if f["subject"] == "catalog"])


@pytest.mark.parametrize("text", [
    "{",
    # Times without an offset (edited by hand) crashed every command with a traceback.
    '{"owner": "x@h:1", "run_id": "r", "acquired_at": "2026-12-06T11:00:00", "expires_at": "2026-12-06T11:00:00"}',
], ids=["not json", "naive times"])
def test_an_unreadable_cluster_lock_makes_backing_up_unsafe_and_the_newest_backup_still_shows(tmp_path, text):
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    lock = tmp_path / "catalog" / "st" / "lock.json"
    lock.write_text(text)

    code, doc = status_json(tmp_path)

    assert code == ExitCode.DEGRADED
    assert doc["data"]["backups"]["latest_success"]["run_id"] == "r-good"
    assert "no successful backup yet" not in json.dumps(doc)
    findings, refusals = _catalog_findings(doc)
    # The fix in `hint`, not in the message's text, which left `hint` null (docs/status.md).
    hint = "no run can take it over safely; remove it by hand if no backup is running"
    assert findings == [f"the cluster lock {lock} is unreadable"]
    assert refusals == [f"a backup now would fail: {findings[0]}"]
    assert _catalog_hints(doc) == ([hint], [hint])
    assert doc["data"]["verdict"]["safe_to_back_up"] is False

    # The dry run refuses as a preflight does, for what the real run then fails on; and writes nothing.
    planned = snapctl("backup", "-i", "inventory.yaml", "--dry-run", "-o", "json", cwd=tmp_path)
    assert planned.returncode == ExitCode.PREFLIGHT_REFUSED, planned.stderr
    [critical] = [f for f in json.loads(planned.stdout)["data"]["verdict"]["findings"] if f["severity"] == "critical"]
    # Not forceable: --force overrides the preflight, not the run's first step.
    assert critical == {"severity": "critical", "subject": "catalog", "message": refusals[0], "hint": hint,
                        "forceable": False}
    shown = snapctl("backup", "-i", "inventory.yaml", "--dry-run", cwd=tmp_path)
    assert f"critical catalog: {refusals[0]} (hint: {hint})" in " ".join(shown.stdout.split())
    assert lock.read_text() == text and [p.name for p in (tmp_path / "catalog" / "st" / "manifests").glob("*.json")] == [
        "r-good.json"]
    real = snapctl("backup", "-i", "inventory.yaml", cwd=tmp_path)
    assert real.returncode == ExitCode.RUN_FAILED and f"the cluster lock {lock} is unreadable" in real.stderr


def test_a_catalog_that_cannot_be_read_is_not_taken_for_an_empty_one(tmp_path):
    # The inventory's catalog.path is a directory (a file there is bad input, below); inside it,
    # a file where the cluster's directory should be.
    write_inventory(tmp_path, sqlite_nodes(tmp_path, 1))
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "st").write_text("a file where the cluster's directory should be")

    code, doc = status_json(tmp_path)

    # Critical: every backup fails on it, and whether the newest is within the RPO nobody can tell;
    # degraded (exit 5) passed CI's `status || [ $? -eq 5 ]` as a warning.
    assert code == ExitCode.CRITICAL
    index = tmp_path / "catalog" / "st" / "index.json"
    findings, refusals = _catalog_findings(doc)
    assert {f["severity"] for f in doc["data"]["verdict"]["findings"] if f["subject"] == "catalog"} == {"critical"}
    assert findings == [f"cannot read the catalog: cannot read {index}: not a directory"]
    assert refusals == [f"a backup now would fail: {findings[0]}"]
    assert "no successful backup yet" not in json.dumps(doc)  # nobody can tell
    text = snapctl("status", "-i", "inventory.yaml", cwd=tmp_path)
    assert "newest good backup: unknown (the catalog cannot be read)" in text.stdout
    planned = snapctl("backup", "-i", "inventory.yaml", "--dry-run", cwd=tmp_path)
    assert planned.returncode == ExitCode.PREFLIGHT_REFUSED
    assert f"critical catalog: a backup now would fail: cannot read the catalog: cannot read {index}" in planned.stdout


SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCY"


@pytest.mark.parametrize(("catalog", "key", "said", "hint"), [
    ({"path": "catalog-file"}, "path", "catalog.path {catalog} is not a directory",
     "set catalog.path to a directory; snapctl creates it if it is missing"),
    ({"path": "catalog-file/deeper"}, "path", "catalog.path {catalog}/deeper: {catalog} is not a directory",
     "set catalog.path to a directory; snapctl creates it if it is missing"),
    ({"url": f"s3://AKIAUSER:{SECRET}@bucket/p"}, "url",
     "catalog.url: an s3 url takes no user or password (s3://<redacted>@bucket)",
     "use s3://bucket/prefix; boto3 finds the credentials (environment, profile, role)"),
], ids=["path-a-file", "path-below-a-file", "url-with-a-secret"])
def test_a_catalog_block_every_command_refuses_is_bad_input_for_status_too(tmp_path, catalog, key, said, hint):
    # `list` said "cannot read .../catalog-file/st/index.json: not a directory" (exit 1), with no
    # file:line and no hint; status called either mistake a degraded catalog (exit 5).
    inventory = write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), catalog=catalog)
    (tmp_path / "catalog-file").write_text("a file where the catalog's directory should be")
    line = next(number for number, text in enumerate(inventory.read_text().splitlines(), 1)
                if text.strip().startswith(f"{key}:"))
    expected = [f"snapctl: error: inventory.yaml:{line}: " + said.format(catalog=tmp_path / "catalog-file"),
                f"  hint: {hint}"]

    for command in (["status"], ["list"], ["show", "latest"], ["backup", "--dry-run"], ["backup"]):
        result = snapctl(*command, "-i", "inventory.yaml", cwd=tmp_path)
        assert result.returncode == ExitCode.BAD_INPUT, (command, result.stdout, result.stderr)
        assert result.stderr.splitlines()[-2:] == expected, (command, result.stderr)
        assert SECRET not in result.stdout + result.stderr
    assert not (tmp_path / "state" / "snapctl" / "catalog").exists()  # no other catalog was taken instead


@contextmanager
def _unwritable(directory: Path) -> Iterator[None]:
    """A directory this process may not write in: by its mode, or for root (whom modes do not
    stop), immutable."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(0o755)
        return
    made = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot make {directory} immutable here: {made.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_an_unwritable_catalog_refuses_a_dry_run_where_the_real_run_would_fail(tmp_path):
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    record_run(inventory, "r-good", "succeeded", age_s=60)
    manifests = tmp_path / "catalog" / "st" / "manifests"

    with _unwritable(manifests):
        code, doc = status_json(tmp_path)
        planned = snapctl("backup", "-i", "inventory.yaml", "--dry-run", cwd=tmp_path)
        real = snapctl("backup", "-i", "inventory.yaml", cwd=tmp_path)

    assert code == ExitCode.DEGRADED and doc["data"]["backups"]["latest_success"]["run_id"] == "r-good"
    findings, refusals = _catalog_findings(doc)
    assert findings == [f"cannot write the catalog in {manifests}: this process may not write there"]
    assert refusals == [f"a backup now would fail: {findings[0]}"]
    [hint], [refusal_hint] = _catalog_hints(doc)
    assert hint and refusal_hint == hint and "(hint: " not in hint
    assert planned.returncode == ExitCode.PREFLIGHT_REFUSED
    assert f"a backup now would fail: {findings[0]} (hint: {hint})" in " ".join(planned.stdout.split())
    assert real.returncode == ExitCode.RUN_FAILED and f"cannot write {manifests}/" in real.stderr


def test_a_dry_run_while_another_run_holds_the_lock_says_the_real_run_would_be_refused(tmp_path):
    from snapctl.catalog import open_catalog

    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1)))
    lock = open_catalog(inventory).acquire_lock("ops@cron:42", "r-running", 60)
    try:
        planned = snapctl("backup", "-i", "inventory.yaml", "--dry-run", cwd=tmp_path)
    finally:
        lock.release()
    assert planned.returncode == ExitCode.PREFLIGHT_REFUSED
    assert "a backup now would be refused (exit 4): run r-running by ops@cron:42 holds the cluster lock" in planned.stdout
    assert snapctl("backup", "-i", "inventory.yaml", "--dry-run", cwd=tmp_path).returncode == ExitCode.OK


@pytest.mark.parametrize("below", ["", "/snapctl"], ids=["the-directory-a-file", "a-parent-a-file"])
def test_a_default_catalog_directory_that_is_a_file_is_bad_input_naming_it_and_the_fix(tmp_path, below):
    # No catalog block: the default under $XDG_STATE_HOME. A file there failed `list` with "cannot
    # read .../catalog/st/index.json: not a directory" (exit 1), naming no fix.
    inventory = write_inventory(tmp_path, sqlite_nodes(tmp_path, 1))
    data = yaml.safe_load(inventory.read_text())
    del data["catalog"]
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))
    default = tmp_path / "state" / "snapctl" / "catalog"
    the_file = tmp_path / "state" / "snapctl" / "catalog" if not below else tmp_path / "state" / "snapctl"
    the_file.parent.mkdir(parents=True, exist_ok=True)
    the_file.write_text("not a catalog")
    expected = [f"snapctl: error: the default catalog directory {default} is not a directory: {the_file} is a file",
                f"  hint: move {the_file} out of the way, or set catalog.path in the inventory"]

    for command in (["status"], ["list"], ["backup", "--dry-run"], ["backup"]):
        result = snapctl(*command, "-i", "inventory.yaml", cwd=tmp_path)
        assert result.returncode == ExitCode.BAD_INPUT, (command, result.stdout, result.stderr)
        assert result.stderr.splitlines()[-2:] == expected, (command, result.stderr)
    assert the_file.read_text() == "not a catalog"
