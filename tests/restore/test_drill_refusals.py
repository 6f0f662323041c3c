"""A drill that cannot begin, whatever stops it: the command's one-line error (its JSON document
with ``-o json``) and exit code, and a JUnit report saying why, so that CI shows the reason."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from snapctl.catalog import open_catalog
from snapctl.drill import run_drill
from snapctl.errors import BadInputError, ExitCode
from tests.restore.conftest import SqliteCluster


def drill_cli(cluster: SqliteCluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapctl.cli", "drill", "latest", "-i", str(cluster.inventory_path),
                           *args], cwd=cluster.directory, capture_output=True, text=True, timeout=120, check=False)


def refusal(junit: Path) -> ET.Element:
    root = ET.parse(junit).getroot()
    assert (root.get("tests"), root.get("errors"), root.get("failures")) == ("1", "1", "0")
    [error] = root.iter("error")
    return error


@pytest.fixture
def catalog_a_file(sqlite_cluster: SqliteCluster) -> SqliteCluster:
    """A catalog.path that names a file: refused as the drill opens its catalog."""
    (sqlite_cluster.directory / "catalog-file").write_text("not a directory")
    sqlite_cluster.edit(catalog={"path": "catalog-file"})
    return sqlite_cluster


def test_a_drill_whose_catalog_cannot_be_opened_exits_2_saying_why_in_one_line(catalog_a_file, tmp_path):
    # It crashed: UnboundLocalError (the refusal read a catalog never opened), a traceback, exit 1.
    junit = tmp_path / "reports" / "drill.xml"
    result = drill_cli(catalog_a_file, "--junit", str(junit))

    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert "Traceback" not in result.stderr
    error, hint = result.stderr.strip().splitlines()[-2:]
    assert error.startswith("snapctl: error: ") and "catalog.path" in error and error.endswith("is not a directory")
    assert hint.startswith("  hint: ")
    assert refusal(junit).get("message").startswith("the drill could not begin: ")
    assert "catalog.path" in refusal(junit).get("message")


def test_a_drill_whose_catalog_cannot_be_opened_prints_the_error_document_with_o_json(catalog_a_file, tmp_path):
    junit = tmp_path / "drill.xml"
    result = drill_cli(catalog_a_file, "--junit", str(junit), "-o", "json")

    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    document = json.loads(result.stdout)  # exactly one document: the error's
    assert document["exit_code"] == ExitCode.BAD_INPUT and document["schema_version"] == 1
    assert "catalog.path" in document["error"] and document["error"].endswith("is not a directory")
    assert document["hint"]
    assert "Traceback" not in result.stderr
    assert "catalog.path" in refusal(junit).get("message")


def test_a_drill_whose_scratch_directory_cannot_be_made_writes_its_junit_report_and_finishes_its_record(
        sqlite_cluster, tmp_path):
    # docs/restore.md promises a report for a drill that cannot begin: this one wrote none.
    run_id = sqlite_cluster.backup()
    (tmp_path / "a-file").write_text("not a directory")
    sqlite_cluster.edit(drill={"scratch_dir": "a-file/scratch"})
    junit = tmp_path / "drill.xml"

    with pytest.raises(BadInputError, match="cannot create the drill's scratch directory"):
        run_drill(sqlite_cluster.inventory, run_id, junit=junit)

    error = refusal(junit)
    assert error.get("message").startswith("the drill could not begin: cannot create the drill's scratch directory")
    assert "hint: set drill.scratch_dir" in error.text
    catalog = open_catalog(sqlite_cluster.inventory)
    [key] = catalog.store.list("restore-test/drills/")
    record = json.loads(catalog.store.read(key))
    assert record["finished_at"] is not None and record["error"].startswith("cannot create the drill's scratch")
