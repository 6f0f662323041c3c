"""Where a path lies within its filesystem, read from a mount table: a directory bind-mounted from
inside a volume is inside it, though its parents are elsewhere."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml

from snapctl.mounts import filesystem_place, inside_by_mounts

# mount id, parent id, major:minor, root (the directory of its filesystem it shows), mount point, ...
TABLE = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 8:1 /vol/db /srv/db rw,relatime shared:1 - ext4 /dev/sda1 rw
41 22 8:17 / /mnt/other rw,relatime shared:2 - ext4 /dev/sdb1 rw
42 22 8:1 /vol/with\\040space /srv/spaced rw,relatime shared:1 - ext4 /dev/sda1 rw
43 22 8:17 /elsewhere /srv/db rw,relatime shared:2 - ext4 /dev/sdb1 rw
"""


@pytest.fixture
def table(tmp_path: Path) -> Path:
    path = tmp_path / "mountinfo"
    path.write_text(TABLE)
    return path


def test_a_bind_mounted_directory_lies_where_its_source_does(table):
    first = table.with_name("first")
    first.write_text(TABLE.splitlines(keepends=True)[0] + TABLE.splitlines(keepends=True)[1])
    assert filesystem_place(Path("/srv/db/app.db"), first) == ("8:1", "/vol/db/app.db")
    assert inside_by_mounts(Path("/srv/db"), [Path("/vol")], first)
    assert not inside_by_mounts(Path("/srv/db"), [Path("/srv/other"), Path("/vol/logs")], first)


def test_the_later_of_two_mounts_on_one_point_is_the_one_seen(table):
    # 43 hides 40: /srv/db shows another filesystem, not /vol/db.
    assert filesystem_place(Path("/srv/db"), table) == ("8:17", "/elsewhere")
    assert not inside_by_mounts(Path("/srv/db"), [Path("/vol")], table)


def test_another_filesystem_at_the_same_path_within_is_not_inside(table):
    assert filesystem_place(Path("/mnt/other/vol/x"), table) == ("8:17", "/vol/x")
    assert not inside_by_mounts(Path("/mnt/other/vol/x"), [Path("/vol")], table)


def test_escaped_names_and_a_missing_table(table, tmp_path):
    assert filesystem_place(Path("/srv/spaced/a"), table) == ("8:1", "/vol/with space/a")
    assert inside_by_mounts(Path("/srv/spaced"), [Path("/vol")], table)
    assert filesystem_place(Path("/srv/db"), tmp_path / "no-such-table") is None
    assert not inside_by_mounts(Path("/srv/db"), [Path("/vol")], tmp_path / "no-such-table")


def test_a_database_bind_mounted_from_inside_its_volume_is_backed_up_not_refused(tmp_path):
    from snapctl.config import load_inventory
    from snapctl.orchestrator import BackupOptions, backup

    (tmp_path / "vol" / "db").mkdir(parents=True)
    (tmp_path / "srv" / "db").mkdir(parents=True)
    bound = subprocess.run(["mount", "--bind", str(tmp_path / "vol" / "db"), str(tmp_path / "srv" / "db")],
                           capture_output=True, text=True, check=False)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.strip()}")
    try:
        with sqlite3.connect(tmp_path / "srv" / "db" / "app.db") as conn:
            conn.execute("CREATE TABLE t (x)")
        inventory = tmp_path / "inventory.yaml"
        inventory.write_text(yaml.safe_dump({
            "cluster": "c", "provider": {"type": "local", "store": "store"}, "catalog": {"path": "catalog"},
            "nodes": [{"name": "n1", "agent": "embedded", "engine": {"type": "sqlite", "path": "srv/db/app.db"},
                       "volumes": [{"name": "data", "path": "vol"}]}]}))

        manifest = asyncio.run(backup(load_inventory(inventory), BackupOptions()))

        assert manifest.status == "succeeded" and not manifest.forced
        assert [p.relative_to(tmp_path / "store").parts[-3:] for p in (tmp_path / "store").rglob("app.db")] == [
            ("data", "db", "app.db")]
    finally:
        subprocess.run(["umount", "-l", str(tmp_path / "srv" / "db")], check=False)
