"""Names that become paths come from places others may write (the catalog): none leads a restore
outside the directory it was given."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapctl.config import Node
from snapctl.errors import CatalogError
from snapctl.restore import restore_target


@pytest.mark.parametrize("volume", ["../../escape", "..", "a/b", "/etc", ".hidden", "", "x\n"])
def test_a_manifest_volume_name_cannot_lead_a_restore_outside_its_root(tmp_path: Path, volume: str) -> None:
    # A manifest is not signed: with "../../home/me/.ssh" as a volume, a restore --to DIR made its
    # directory (and copied the snapshot) wherever the catalog's writer chose.
    root = tmp_path / "restore" / "run1" / "n1"
    with pytest.raises(CatalogError, match=r"^node n1: the run's manifest names volume .*, which is not a volume "
                                           r"name; refusing to restore it outside ") as info:
        restore_target(Node(name="n1", agent="http://127.0.0.1:7700"), volume, root=root, zone=None, attach=False)
    assert "who can write it" in (info.value.hint or "")


def test_a_plain_volume_name_restores_under_its_root(tmp_path: Path) -> None:
    root = tmp_path / "restore"
    node = Node(name="n1", agent="http://127.0.0.1:7700")
    target = restore_target(node, "data-1.v", root=root, zone=None, attach=False)
    assert target.path == root / "data-1.v"
