"""Files and directories snapctl creates are not writable by group or others, whatever the umask
cron or a CI runner starts it with."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapctl.catalog.local import LocalBlobStore
from snapctl.metrics import write_textfile


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_catalog_and_textfile_are_not_writable_by_others_under_umask_0(tmp_path: Path, open_umask: None) -> None:
    LocalBlobStore(tmp_path / "catalog").write("runs/r1/manifest.json", b"{}")
    modes = _modes(tmp_path / "catalog")
    assert modes["."] == 0o755 and modes["runs"] == 0o755 and modes["runs/r1"] == 0o755
    assert modes["runs/r1/manifest.json"] == 0o644
    assert not [name for name, mode in modes.items() if mode & 0o022]

    (tmp_path / "textfiles").mkdir(mode=0o755)
    write_textfile(tmp_path / "textfiles" / "snapctl.prom", "snapctl_up 1\n")
    assert _modes(tmp_path / "textfiles")["snapctl.prom"] == 0o644


def test_the_textfile_stays_readable_by_node_exporter_under_umask_077(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_textfile(tmp_path / "snapctl.prom", "snapctl_up 1\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "snapctl.prom").stat().st_mode) == 0o644


def test_a_drill_scratch_dir_is_private_under_umask_0(tmp_path: Path, open_umask: None) -> None:
    # It holds restored copies of the databases; under umask 0 it was 0777: anyone could read them,
    # or swap files in before the drill checked them.
    from types import SimpleNamespace

    from snapctl.drill_leftovers import make_scratch_dir

    inventory = SimpleNamespace(cluster="c", drill=SimpleNamespace(scratch_dir="scratch"), nodes=[],
                                resolve=lambda p: tmp_path / p)
    scratch = make_scratch_dir(inventory, "20261206T000000Z-abcdef", "d1", "c/drills/r-d1.json")  # type: ignore[arg-type]
    assert scratch.parent == tmp_path / "scratch"
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
    inventory.drill.scratch_dir = None
    temporary = make_scratch_dir(inventory, "20261206T000000Z-abcdef", "d2", "c/drills/r-d2.json")  # type: ignore[arg-type]
    try:
        assert stat.S_IMODE(temporary.stat().st_mode) == 0o700
        assert stat.S_IMODE((temporary / ".snapctl-drill.json").stat().st_mode) & 0o077 == 0
    finally:
        shutil.rmtree(temporary)


def test_the_local_snapshot_store_and_restore_targets_are_not_writable_by_others_under_umask_0(
        tmp_path: Path, open_umask: None) -> None:
    # Under umask 0 the store's directories were 0777 and its node locks 0666: anyone could rename
    # a snapshot away and put a forged one in its place (restored later as the backup), or hold a
    # node's lock for ever; a restore target's parents were 0777 too.
    import time

    from snapctl.providers import RestoreTarget, create_provider, snapshot_tags

    (tmp_path / "src").mkdir(mode=0o755)
    (tmp_path / "src" / "db").write_text("rows")
    (tmp_path / "src" / "db").chmod(0o640)  # a copy keeps its source's mode
    provider = create_provider({"type": "local", "store": "store"}, cluster="c1", base_dir=tmp_path)
    volumes = provider.validate_volumes("n1", [{"name": "data", "path": "src"}], base_dir=tmp_path)
    refs = provider.wait(provider.snapshot(volumes, snapshot_tags("c1", "run1", "n1")), time.monotonic() + 60)
    provider.restore(refs[0], RestoreTarget(path=tmp_path / "restore" / "run1" / "n1" / "data"))
    store, restored = _modes(tmp_path / "store"), _modes(tmp_path / "restore")
    assert not [name for name, mode in {**store, **restored}.items() if mode & 0o022], (store, restored)
    assert store["c1/n1/.lock"] == 0o600
    assert (tmp_path / "restore" / "run1" / "n1" / "data" / "db").read_text() == "rows"
    # A node lock an older snapctl left 0644 is tightened the next time it is taken.
    lock = tmp_path / "store" / "c1" / "n1" / ".lock"
    lock.chmod(0o644)
    provider.wait(provider.snapshot(volumes, snapshot_tags("c1", "run2", "n1")), time.monotonic() + 60)
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600


def test_the_catalog_lock_is_its_users_alone(tmp_path: Path) -> None:
    # 0644 let any user open it read-only, and a read-only descriptor holds an exclusive flock: one
    # `flock` by anyone stalled every catalog write, and so every backup, for as long as they liked.
    store = LocalBlobStore(tmp_path / "catalog")
    store.write("runs/index.json", b"{}")
    lock = tmp_path / "catalog" / "runs" / ".lock"
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
    lock.chmod(0o644)  # as an older snapctl left it
    store.write("runs/index.json", b"{}")
    assert stat.S_IMODE(lock.stat().st_mode) == 0o600
