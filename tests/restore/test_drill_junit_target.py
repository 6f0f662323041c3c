"""Where a drill's JUnit report goes when --junit names no regular file: a character device or a
FIFO (/dev/stdout, /dev/null, a CI log pipe) is written into, never replaced (as root, the temp
file renamed over it turned /dev/null into a regular file); a block device or a socket is refused."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from snapctl.errors import ExitCode
from tests.restore.conftest import SqliteCluster


def drill_cli(cluster: SqliteCluster, junit: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapctl.cli", "drill", "latest", "-i", str(cluster.inventory_path),
                           "--junit", str(junit), *args], cwd=cluster.directory, capture_output=True, text=True,
                          timeout=120, check=False)


def device_node(path: Path, kind: int, major: int, minor: int) -> Path:
    """A device node of its own (never a real /dev one: the bug replaced them); root only."""
    try:
        os.mknod(path, 0o666 | kind, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("making a device node needs root")
    return path


def test_a_report_to_a_character_device_is_written_into_it_and_the_device_stays(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    null = device_node(tmp_path / "null", stat.S_IFCHR, 1, 3)  # /dev/null's numbers

    result = drill_cli(sqlite_cluster, null)

    assert result.returncode == ExitCode.OK, result.stderr
    assert stat.S_ISCHR(os.stat(null).st_mode) and os.stat(null).st_rdev == os.makedev(1, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".null.")], "no temp or probe file left"


def test_a_report_to_a_fifo_goes_to_its_reader(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()

    result = drill_cli(sqlite_cluster, fifo)
    reader.join(timeout=30)

    assert result.returncode == ExitCode.OK, result.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    root = ET.fromstring(received[0])
    assert root.tag == "testsuites" and root.get("tests") == "3" and root.get("failures") == "0"


def test_a_report_to_a_block_device_is_refused_before_the_drill(sqlite_cluster, tmp_path):
    sqlite_cluster.backup()
    disk = device_node(tmp_path / "disk", stat.S_IFBLK, 7, 250)  # a loop device's numbers

    result = drill_cli(sqlite_cluster, disk)

    assert result.returncode == ExitCode.BAD_INPUT, result.stderr
    error, hint = result.stderr.strip().splitlines()[-2:]
    assert error == f"snapctl: error: cannot write the junit report to {disk}: it is a block device"
    assert hint.startswith("  hint: name a regular file")
    assert stat.S_ISBLK(os.stat(disk).st_mode)
    assert "restoring" not in result.stderr
