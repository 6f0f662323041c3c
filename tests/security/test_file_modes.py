"""Files and directories snapctl creates are not writable by group or others, whatever the umask
cron or a CI runner starts it with."""

from __future__ import annotations

import os
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

    from snapctl.drill import _scratch_dir

    inventory = SimpleNamespace(drill=SimpleNamespace(scratch_dir="scratch"), resolve=lambda p: tmp_path / p)
    scratch = _scratch_dir(inventory, "20261206T000000Z-abcdef", "d1")  # type: ignore[arg-type]
    assert scratch.parent == tmp_path / "scratch"
    assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
    inventory.drill.scratch_dir = None
    temporary = _scratch_dir(inventory, "20261206T000000Z-abcdef", "d2")  # type: ignore[arg-type]
    try:
        assert stat.S_IMODE(temporary.stat().st_mode) == 0o700
    finally:
        temporary.rmdir()
