"""A local restore checks, before it copies anything, that every filesystem it writes to has room
for all the volumes going there: on real small filesystems (a tmpfs; a btrfs, which clones files,
on a loop device), so ENOSPC is the kernel's."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from snapctl.drill import run_drill
from snapctl.errors import BadInputError, SnapctlError
from snapctl.restore import restore_run

BLOB = 160 * 1024  # per node: one node's volume fits a 256 KiB disk, two do not
BIG = 16 << 20  # per node, on a 128 MiB btrfs (about 47 MiB free when new)


@pytest.fixture
def btrfs(tmp_path):
    """A fresh 128 MiB btrfs, which clones files (reflinks). Skips where it cannot be made and mounted."""
    if shutil.which("mkfs.btrfs") is None:
        pytest.skip("no mkfs.btrfs here (Debian: btrfs-progs; ./dev test installs it)")
    image, mount_point = tmp_path / "btrfs.img", tmp_path / "btrfs"
    with open(image, "wb") as out:
        out.truncate(128 << 20)
    subprocess.run(["mkfs.btrfs", "-q", str(image)], check=True, capture_output=True)
    mount_point.mkdir()
    done = subprocess.run(["mount", "-o", "loop", str(image), str(mount_point)], capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a btrfs image here (needs root and a loop device): {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


@pytest.fixture
def big_volumes(sqlite_cluster):
    for node in ("n1", "n2"):
        (sqlite_cluster.directory / node / "data" / "blob.bin").write_bytes(os.urandom(BLOB))
    return sqlite_cluster


def test_volumes_that_together_overfill_a_disk_are_refused_before_anything_is_copied(big_volumes, tmp_path, mounted):
    # Before, n1 was copied, then n2's copy failed part-way with "no space left on device",
    # leaving n1 (and the retry's target not empty).
    run_id = big_volumes.backup()
    small = mounted(tmp_path / "small", "256k")

    with pytest.raises(BadInputError) as caught:
        restore_run(big_volumes.inventory, run_id, small)

    assert re.fullmatch(rf"not enough space at {small} to restore node n1 volume data and node n2 volume data: "
                        r"(\d+\.\d) KiB needed, 256\.0 KiB free", caught.value.message)
    assert caught.value.hint.startswith("free ") and "--to DIR or restore.path" in caught.value.hint
    assert list(small.iterdir()) == [], "nothing was copied, no directory or marker made"


def test_a_volume_that_fits_its_disk_is_restored_beside_others_on_another(big_volumes, tmp_path, mounted):
    run_id = big_volumes.backup()
    small = mounted(tmp_path / "small", "256k")
    big_volumes.edit(node_n1={"restore": {"path": str(small / "n1")}},
                     node_n2={"restore": {"path": str(tmp_path / "elsewhere" / "n2")}})

    result = restore_run(big_volumes.inventory, run_id)

    assert result.ok and [n.facts is not None for n in result.nodes] == [True, True]
    assert (small / "n1" / "data" / "blob.bin").stat().st_size == BLOB


def test_a_drill_whose_scratch_disk_lacks_room_is_refused_before_restoring_any_node(big_volumes, tmp_path, mounted):
    # Restore's checks are the drill's too: before, n1 was copied and n2 failed part-way.
    run_id = big_volumes.backup()
    small = mounted(tmp_path / "small", "256k")
    big_volumes.edit(drill={"scratch_dir": str(small)})

    with pytest.raises(BadInputError) as caught:
        run_drill(big_volumes.inventory, run_id, junit=tmp_path / "drill.xml")

    # The disk's 256 KiB, less a block when the drill's marker is on it.
    assert re.fullmatch(rf"not enough space at {small}/{run_id}-\S+ to restore node n1 volume data and node n2 volume "
                        r"data: \d+\.\d KiB needed, 25[26]\.0 KiB free", caught.value.message)

    assert list(small.iterdir()) == [], "nothing restored, the scratch directory removed"


def test_a_restore_that_reflinks_on_the_stores_own_filesystem_needs_no_room_for_the_data(sqlite_cluster, btrfs):
    # Its files are clones of the snapshot's, sharing their blocks: counting full copies refused a
    # restore that fits.
    for node in ("n1", "n2"):
        (sqlite_cluster.directory / node / "data" / "big.bin").write_bytes(os.urandom(BIG))
    sqlite_cluster.edit(provider={"type": "local", "store": str(btrfs / "store")})
    run_id = sqlite_cluster.backup()
    subprocess.run(["sync", "-f", str(btrfs)], check=True)  # btrfs counts its free space at a commit
    vfs = os.statvfs(btrfs)
    assert vfs.f_bavail * vfs.f_frsize < 2 * BIG, "as full copies, the restore would not fit"

    result = restore_run(sqlite_cluster.inventory, run_id, btrfs / "restored")

    assert result.ok and [n.node for n in result.nodes] == ["n1", "n2"]
    assert all(n.facts is not None for n in result.nodes)
    assert [(btrfs / "restored" / node / "data" / "big.bin").stat().st_size for node in ("n1", "n2")] == [BIG, BIG]


def fill(disk, name: str = "filler") -> None:
    """Another program writing to ``disk`` until it is full."""
    fd = os.open(disk / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def fill_after(monkeypatch, step: str, disk: Path) -> None:
    """Another program fills ``disk`` (a real tmpfs) right after the local restore's ``step``."""
    from snapctl_local import restores

    original = getattr(restores, step)

    def then_another_writer_fills_the_disk(*args, **kwargs):
        done = original(*args, **kwargs)
        fill(disk)
        return done

    monkeypatch.setattr(restores, step, then_another_writer_fills_the_disk)


def test_a_disk_filled_by_another_writer_during_the_copy_says_what_to_free(big_volumes, tmp_path, mounted, monkeypatch):
    # The up-front check found room; then another program took it while n1 was being copied: the
    # error said "no space left on device" and no more: no hint of what to free, or that the check had passed.
    run_id = big_volumes.backup()
    disk = mounted(tmp_path / "disk", "1m")
    fill_after(monkeypatch, "write_restore_marker", disk)
    with pytest.raises(SnapctlError) as caught:
        restore_run(big_volumes.inventory, run_id, disk / "restored")

    assert "no space left on device" in caught.value.message, caught.value.message
    assert caught.value.message.startswith("node n1: ")
    assert caught.value.hint.startswith(f"free space at {disk / 'restored' / 'n1'} (it had room for the data "
                                        "when the restore began: something else wrote there meanwhile, or the "
                                        "filesystem's own metadata took the rest)")
    assert [p for p in disk.rglob("*") if not p.is_dir()] == [disk / "filler"], "the copy and its marker went"


def test_a_disk_that_fills_once_a_volume_is_copied_is_left_without_half_written_files(big_volumes, tmp_path, mounted,
                                                                                         monkeypatch):
    # n1 copied, then another program filled the disk: writing n1's marker as finished failed, and
    # so did n2's marker; each left its temporary file behind, hidden and half-written.
    run_id = big_volumes.backup()
    disk = mounted(tmp_path / "disk", "1m")
    fill_after(monkeypatch, "copy_tree", disk)
    with pytest.raises(SnapctlError, match=r"^node n2: .*no space left on device"):
        restore_run(big_volumes.inventory, run_id, disk / "restored")

    restored = disk / "restored"
    left = {str(p.relative_to(disk)) for p in disk.rglob("*") if not p.is_dir()}
    assert left == {"filler", "restored/n1/data.snapctl-restore.json",
                    *(str(p.relative_to(disk)) for p in (restored / "n1" / "data").iterdir())}
