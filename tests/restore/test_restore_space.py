"""A local restore checks, before it copies anything, that every filesystem it writes to has room
for all the volumes going there: on real small filesystems (a tmpfs), so ENOSPC is the kernel's."""

from __future__ import annotations

import os
import re

import pytest

from snapctl.errors import BadInputError
from snapctl.restore import restore_run

BLOB = 160 * 1024  # per node: one node's volume fits a 256 KiB disk, two do not


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
