"""A catalog directory that cannot be made where the inventory (or $XDG_STATE_HOME) puts it is bad
input, said in one line with the fix: under /proc (mkdir says ENOENT though the parent exists, and
snapctl recursed until RecursionError), or below a dangling symlink (mkdir said "file exists")."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml

from snapctl.errors import ExitCode
from tests.restore.conftest import SqliteCluster


def backup_cli(cluster: SqliteCluster, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapctl.cli", "backup", "--no-prune", "-i",
                           str(cluster.inventory_path)], cwd=cluster.directory, capture_output=True, text=True,
                          timeout=120, check=False, env={**os.environ, **env})


def one_line_and_hint(result: subprocess.CompletedProcess) -> tuple[str, str]:
    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    assert "Traceback" not in result.stderr
    error, hint = result.stderr.strip().splitlines()[-2:]
    assert hint.startswith("  hint: ")
    return error, hint


def test_a_state_home_where_no_directory_can_be_made_is_refused_in_one_line(sqlite_cluster):
    data = yaml.safe_load(sqlite_cluster.inventory_path.read_text())
    del data["catalog"]  # the default catalog, under $XDG_STATE_HOME
    sqlite_cluster.inventory_path.write_text(yaml.safe_dump(data, sort_keys=False))

    error, hint = one_line_and_hint(backup_cli(sqlite_cluster, XDG_STATE_HOME="/proc/1"))

    assert error.startswith("snapctl: error: cannot create /proc/1/snapctl: /proc/1 is on a file system that "
                            "holds no new directories")
    assert "XDG_STATE_HOME" in hint
    assert not os.path.exists("/proc/1/snapctl")


def test_a_catalog_path_that_is_a_dangling_symlink_is_named_with_its_target(sqlite_cluster, tmp_path):
    target = tmp_path / "mounted" / "catalog"  # a share not mounted, say
    (sqlite_cluster.directory / "catalog-link").symlink_to(target)
    sqlite_cluster.edit(catalog={"path": "catalog-link"})

    error, hint = one_line_and_hint(backup_cli(sqlite_cluster))

    link = sqlite_cluster.directory / "catalog-link"
    assert error == (f"snapctl: error: {sqlite_cluster.inventory_path}:6: catalog.path {link} is a dangling symlink "
                     f"(to {target}, which does not exist)")
    assert hint == f"  hint: create its target (mkdir -p {target}), or fix catalog.path"
