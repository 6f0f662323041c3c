"""A catalog write killed between its temp file and the rename (SIGKILL, the OOM killer) left the
temp, a whole manifest, for good: nothing listed or removed ``.<name>.tmp-*``. `snapctl gc` lists
those older than ``TEMP_AGE_S`` and ``--delete`` removes them; a live writer's is never touched.

The write to be killed is a real ``LocalBlobStore.write`` in a process of its own, stopped just
before its rename."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from snapctl.catalog.local import TEMP_AGE_S
from snapctl.gc import gc

from .conftest import CLUSTER, T0, Scene, gc_cli, inventory

_PAUSED_WRITE = """
import os, sys, threading
from pathlib import Path
from snapctl.catalog.local import LocalBlobStore

root, key, reached = sys.argv[1:]


def rename(source, target):
    Path(reached).write_text(str(source))
    threading.Event().wait()  # until the test kills this process


os.rename = rename
LocalBlobStore(root).write(key, b'{"run_id": "r1"' + b" " * 100_000 + b"}")
"""


def killed_write(catalog_root: Path, key: str, tmp_path: Path) -> Path:
    """A catalog write of ``key`` SIGKILLed between its fsynced temp file and the rename: the temp."""
    reached = tmp_path / "reached"
    process = subprocess.Popen([sys.executable, "-c", _PAUSED_WRITE, str(catalog_root), key, str(reached)],
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not reached.exists() or not reached.read_text():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the write never reached its rename: {process.communicate()[1]}")
            time.sleep(0.02)
    finally:
        process.kill()
        process.wait()
    temp = Path(reached.read_text())
    reached.unlink()
    assert temp.exists()
    return temp


def aged(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_gc_lists_and_removes_what_killed_catalog_writes_left_and_never_a_live_writers(scene: Scene,
                                                                                    tmp_path: Path) -> None:
    scene.add_run("r0", T0)
    root = scene.root / "catalog"
    old = killed_write(root, f"{CLUSTER}/manifests/r1.json", tmp_path)
    young = killed_write(root, f"{CLUSTER}/restores/r0-20261207T000000Z-abcd.json", tmp_path)
    assert old.name.startswith(".r1.json.tmp-") and old.stat().st_size > 100_000
    aged(old, TEMP_AGE_S + 60)
    aged(young, TEMP_AGE_S - 60)  # a write still under way, for all gc can tell
    inv = inventory(scene)

    listed = gc(inv)

    assert [(t.path, t.bytes) for t in listed.catalog_temps] == [(str(old), old.stat().st_size)]
    assert listed.catalog_temps[0].age_s > TEMP_AGE_S and old.exists()  # listing removes nothing
    assert scene.catalog.list()[0][0].run_id == "r0"  # never a run

    deleted = gc(inv, delete=True)

    assert deleted.ok and deleted.catalog_temps_deleted == [str(old)]
    assert not old.exists() and young.exists()
    assert gc(inv).catalog_temps == []

    aged(young, TEMP_AGE_S + 1)
    assert [t.path for t in gc(inv, delete=True).catalog_temps] == [str(young)] and not young.exists()


def test_a_temp_written_again_after_gc_found_it_is_kept(scene: Scene, tmp_path: Path) -> None:
    from snapctl.catalog.local import LocalBlobStore

    scene.add_run("r0", T0 + timedelta(days=1))
    root = scene.root / "catalog"
    temp = killed_write(root, f"{CLUSTER}/index.json", tmp_path)
    aged(temp, TEMP_AGE_S + 60)
    store = LocalBlobStore(root)
    [found] = store.find_temps(CLUSTER)
    temp.write_bytes(b"{}")  # written since it was found: a live writer's after all

    assert store.remove_temp(found) is False and temp.exists()
    aged(temp, TEMP_AGE_S + 60)
    assert store.remove_temp(found) is True and not temp.exists()
    assert store.remove_temp(found) is True  # gone meanwhile: done


def test_gc_cli_lists_the_temps_with_their_size(scene: Scene, tmp_path: Path) -> None:
    scene.add_run("r0", T0)
    temp = killed_write(scene.root / "catalog", f"{CLUSTER}/manifests/r1.json", tmp_path)
    aged(temp, 2 * 3600)
    snapctl = gc_cli(scene)

    listed = snapctl()
    assert listed.returncode == 0, listed.stderr
    assert "1 temp file(s) in the catalog of writes killed before they finished:" in listed.stdout
    assert f"  {temp}  97.7 KiB, last written 2 h ago" in listed.stdout
    assert "run `snapctl gc --delete` to delete them" in listed.stdout

    deleted = snapctl("--delete", "-o", "json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout)["data"]["catalog_temps_deleted"] == [str(temp)] and not temp.exists()
