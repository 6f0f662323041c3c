"""The local provider's delete_volume: it removes only directories its own restore made for this
cluster, recognised by the marker restore leaves beside them (never inside: engines see exactly
the snapshot's files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from snapctl_local import LocalProvider

from snapctl.errors import ProviderError
from snapctl.providers import TAG_RUN, RestoreTarget, create_provider, snapshot_tags
from tests.unprivileged import call_without_dac_override

CLUSTER = "c1"


def make(tmp_path: Path, cluster: str = CLUSTER) -> LocalProvider:
    return create_provider({"type": "local", "store": "store"}, cluster=cluster, base_dir=tmp_path)


@pytest.fixture
def provider(tmp_path: Path) -> LocalProvider:
    return make(tmp_path)


@pytest.fixture
def volumes(provider: LocalProvider, tmp_path: Path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "rows.db").write_bytes(b"x" * 10_000)
    (src / "meta.txt").write_text("meta\n")
    # A read-only directory must not stop the removal: removals run where modes bind (delete_volume).
    (src / "sub").chmod(0o555)
    yield provider.validate_volumes("n1", [{"name": "data", "path": "src"}], base_dir=tmp_path)
    (src / "sub").chmod(0o755)


def marker_of(path: Path) -> Path:
    return path.with_name(path.name + ".snapctl-restore.json")


def delete_volume(restored: str | Path, tmp_path: Path, cluster: str = CLUSTER) -> None:
    """``delete_volume`` of a restore of the ``volumes`` fixture, in a child that its read-only
    ``sub`` binds even as root (tests/unprivileged.py)."""
    call_without_dac_override(_delete_volume, str(restored), str(tmp_path), cluster,
                              read_only=[Path(restored) / "sub"])


def _delete_volume(restored: str, base_dir: str, cluster: str) -> None:
    make(Path(base_dir), cluster).delete_volume(restored)


def test_a_restored_directory_is_removed_with_its_marker_and_again_is_done(provider, volumes, tmp_path):
    [ref] = provider.snapshot(volumes, snapshot_tags(CLUSTER, "run1", "n1"))
    restored = Path(provider.restore(ref, RestoreTarget(path=tmp_path / "restores" / "data")))
    marker = json.loads(marker_of(restored).read_text())
    assert (marker["cluster"], marker["path"], marker["snapshot_id"]) == (CLUSTER, str(restored), ref.snapshot_id)
    assert sorted(p.name for p in restored.iterdir()) == ["meta.txt", "sub"], "the marker is not inside"

    delete_volume(restored, tmp_path)
    provider.delete_volume(str(restored))  # gone: done

    assert list((tmp_path / "restores").iterdir()) == []
    assert (Path(ref.extra["path"]) / "data" / "sub" / "rows.db").is_file(), "the snapshot is untouched"


def test_a_directory_restore_did_not_make_is_refused_and_survives(provider, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")

    with pytest.raises(ProviderError, match=r"refusing to delete .*precious: there is no readable precious\.snapctl"):
        provider.delete_volume(str(precious))

    assert (precious / "keep.txt").read_text() == "mine"


def test_a_restore_of_another_cluster_or_of_an_untagged_snapshot_is_refused(provider, volumes, tmp_path):
    other = make(tmp_path, cluster="c2")
    [theirs] = other.snapshot(other.validate_volumes("n1", [{"name": "data", "path": "src"}], base_dir=tmp_path),
                              snapshot_tags("c2", "run1", "n1"))
    [untagged] = provider.snapshot(volumes, {TAG_RUN: "untagged"})
    theirs_restored = other.restore(theirs, RestoreTarget(path=tmp_path / "theirs"))
    untagged_restored = provider.restore(untagged, RestoreTarget(path=tmp_path / "untagged"))

    with pytest.raises(ProviderError, match="names snapctl-cluster 'c2'"):
        provider.delete_volume(theirs_restored)
    with pytest.raises(ProviderError, match="names snapctl-cluster None"):
        provider.delete_volume(untagged_restored)

    assert Path(theirs_restored, "meta.txt").is_file() and Path(untagged_restored, "meta.txt").is_file()
    delete_volume(theirs_restored, tmp_path, "c2")
    assert not Path(theirs_restored).exists()


def test_a_marker_moved_to_another_directory_does_not_make_it_deletable(provider, volumes, tmp_path):
    [ref] = provider.snapshot(volumes, snapshot_tags(CLUSTER, "run1", "n1"))
    restored = Path(provider.restore(ref, RestoreTarget(path=tmp_path / "restored")))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.replace(marker_of(restored), marker_of(elsewhere))

    with pytest.raises(ProviderError, match="not 'c1' at this path"):
        provider.delete_volume(str(elsewhere))
    assert elsewhere.is_dir()


def test_a_failed_restore_leaves_no_marker(provider, volumes, tmp_path, monkeypatch):
    import snapctl_local.restores as local_restores

    [ref] = provider.snapshot(volumes, snapshot_tags(CLUSTER, "run1", "n1"))

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(local_restores, "copy_tree", no_space)
    with pytest.raises(ProviderError, match="no space left on device"):
        provider.restore(ref, RestoreTarget(path=tmp_path / "restored"))

    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "store"]


def test_a_second_restore_into_a_place_another_is_writing_to_leaves_that_ones_marker(provider, volumes, tmp_path):
    # Two restores into one target at once: the one that lost the final rename removed the winner's
    # marker (so a drill's teardown would refuse the winner's directory) and said only "directory
    # not empty". The marker is now taken exclusively, first, and the loser says who got there.
    from snapctl.errors import BadInputError

    [ref] = provider.snapshot(volumes, snapshot_tags(CLUSTER, "run1", "n1"))
    target = tmp_path / "restores" / "data"
    target.parent.mkdir()
    marker_of(target).write_text('{"note": "another restore, still copying"}')
    for call in (provider.check_restore, provider.restore):
        with pytest.raises(BadInputError, match=f"node n1: another restore is writing to {target}") as info:
            call(ref, RestoreTarget(path=target))
        assert info.value.hint.endswith(f"remove {marker_of(target)} and {target.parent}/.restore-data-*")
    assert marker_of(target).read_text() == '{"note": "another restore, still copying"}'
    assert sorted(p.name for p in target.parent.iterdir()) == [marker_of(target).name]

    marker_of(target).unlink()  # it finished elsewhere, or was killed and cleaned up by hand
    assert Path(provider.restore(ref, RestoreTarget(path=target))) == target
    assert json.loads(marker_of(target).read_text())["snapshot_id"] == ref.snapshot_id


@pytest.mark.parametrize("emptied", ["removed", "emptied"])
def test_a_rerun_into_a_place_whose_finished_restore_was_removed_by_hand_goes_ahead(provider, volumes, tmp_path,
                                                                                    emptied):
    # The marker outlives the restore (it names what teardown may delete): after `rm -r` of the
    # restored directory alone, the rerun said "another restore is writing" with none running.
    from snapctl.errors import BadInputError
    from snapctl.fsmodes import remove_tree

    [ref] = provider.snapshot(volumes, snapshot_tags(CLUSTER, "run1", "n1"))
    target = tmp_path / "restores" / "data"
    provider.restore(ref, RestoreTarget(path=target))
    assert json.loads(marker_of(target).read_text())["finished_at"]
    remove_tree(target)  # as `rm -r` by hand; the sub-directory is read-only
    if emptied == "emptied":
        target.mkdir()

    provider.check_restore(ref, RestoreTarget(path=target))
    assert Path(provider.restore(ref, RestoreTarget(path=target))) == target
    assert (target / "meta.txt").read_text() == "meta\n"
    assert json.loads(marker_of(target).read_text())["finished_at"]

    # A marker that does not say its restore finished is one under way, or killed: still refused.
    remove_tree(target)
    marker = json.loads(marker_of(target).read_text())
    del marker["finished_at"]
    marker_of(target).write_text(json.dumps(marker))
    with pytest.raises(BadInputError, match="another restore is writing"):
        provider.restore(ref, RestoreTarget(path=target))
