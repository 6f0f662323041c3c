"""The local provider against the real filesystem: copies, hard-linked increments, restores."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest
from snapctl_local import LocalProvider
from snapctl_local import copy as copy_module

from snapctl.errors import BadInputError, ProviderError
from snapctl.providers import (
    TAG_CLUSTER,
    TAG_RUN,
    TAG_VOLUME,
    NodeVolumes,
    RestoreTarget,
    create_provider,
    snapshot_tags,
)
from tests.unprivileged import call_without_dac_override

CLUSTER = "c1"


@pytest.fixture
def provider(tmp_path: Path) -> LocalProvider:
    return create_provider({"type": "local", "store": "store"}, cluster=CLUSTER, base_dir=tmp_path)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "a.txt").write_text("alpha")
    (src / "sub" / "b.bin").write_bytes(os.urandom(100_000))
    (src / "sub" / "deep" / "c.txt").write_text("gamma")
    (src / "ro.txt").write_text("read only")
    (src / "ro.txt").chmod(0o440)
    os.symlink("a.txt", src / "link-to-a")
    os.utime(src / "a.txt", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return src


def _volumes(provider: LocalProvider, tmp_path: Path, *raw) -> NodeVolumes:
    return provider.validate_volumes("n1", list(raw), base_dir=tmp_path)


def _snap(provider: LocalProvider, volumes: NodeVolumes, run: str):
    """A snapshot as a backup run leaves it: taken, then waited for (completed, on disk)."""
    refs = provider.snapshot(volumes, snapshot_tags(CLUSTER, run, volumes.node))
    return provider.wait(refs, time.monotonic() + 60)


def _tree(root: Path) -> dict[str, tuple]:
    """Everything a restore must reproduce: kind, content hash, mode, mtime, link target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                out[rel] = ("dir", st.st_mode, st.st_mtime_ns)
            else:
                out[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest(), st.st_mode, st.st_mtime_ns)
    return out


def _node_dir(provider: LocalProvider) -> Path:
    return provider.store.cluster_dir / "n1"


# -- volumes ----------------------------------------------------------------------------------


def test_validate_volumes_accepts_dicts_and_plain_paths(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    (tmp_path / "wal").mkdir()
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"}, str(tmp_path / "wal"))
    assert [(v.name, v.path) for v in volumes.volumes] == [("data", source), ("wal", tmp_path / "wal")]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([{"name": "data", "path": "missing"}], r"node n1: volume data path .*/missing does not exist"),
        ([{"name": "data", "path": "src/a.txt"}], r"node n1: volume data path .*/src/a.txt is not a directory"),
        ([{"name": "data", "path": "src"}, {"name": "data", "path": "src/sub"}], r"volume name 'data' is used twice"),
        ([{"name": "data", "path": "src", "size": 1}], r"unknown key 'size'"),
        ([{"name": "../x", "path": "src"}], r"volume name '\.\./x'"),
        ([], r"node n1: no volumes listed"),
    ],
)
def test_validate_volumes_refuses_bad_blocks(provider: LocalProvider, tmp_path: Path, source: Path, raw, message) -> None:
    with pytest.raises(BadInputError, match=message) as info:
        _volumes(provider, tmp_path, *raw)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("volume", [".", "store/c1"], ids=["store-inside-the-volume", "volume-inside-the-store"])
def test_a_volume_and_the_store_inside_one_another_are_refused(provider: LocalProvider, tmp_path: Path,
                                                               volume: str) -> None:
    (tmp_path / volume).mkdir(parents=True, exist_ok=True)
    # Copied as asked, the store inside the volume went into itself until "File name too long".
    with pytest.raises(BadInputError, match=r"node n1: volume \S+ \(.+\) (contains|is inside) the snapshot store "
                                            + str(tmp_path / "store")) as caught:
        provider.validate_volumes("n1", [{"name": "data", "path": volume}], base_dir=tmp_path)
    assert "apart from every node's data directories" in caught.value.hint
    assert not (tmp_path / "store" / CLUSTER / "n1").exists()  # refused before anything was copied


def test_default_store_is_under_xdg_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    provider = create_provider({"type": "local"}, cluster=CLUSTER, base_dir=tmp_path)
    assert provider.store.root == tmp_path / "state" / "snapctl" / "snapshots"


def test_unknown_settings_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError, match="unknown key 'bucket'"):
        create_provider({"type": "local", "bucket": "x"}, cluster=CLUSTER, base_dir=tmp_path)


# -- snapshots --------------------------------------------------------------------------------


def test_snapshot_copies_the_tree_faithfully(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    (ref,) = _snap(provider, _volumes(provider, tmp_path, {"name": "data", "path": "src"}), "run1")
    assert ref.snapshot_id == "run1-n1-data" and ref.state == "completed" and ref.volume == "data"
    assert ref.tags[TAG_VOLUME] == "data" and ref.tags[TAG_RUN] == "run1" and ref.tags[TAG_CLUSTER] == CLUSTER
    size = sum(p.stat().st_size for p in source.rglob("*") if p.is_file() and not p.is_symlink())
    assert ref.bytes == size and ref.extra["copied_bytes"] == size and ref.extra["linked_files"] == 0
    snap_data = Path(ref.extra["path"]) / "data"
    assert _tree(snap_data) == _tree(source)
    assert (snap_data / "empty").is_dir()
    assert os.readlink(snap_data / "link-to-a") == "a.txt"


def test_a_volume_reached_through_a_symlink_keeps_its_directorys_mode(provider: LocalProvider, tmp_path: Path,
                                                                      source: Path) -> None:
    source.chmod(0o750)
    os.symlink(source, tmp_path / "current")  # e.g. /var/lib/db/current -> releases/42
    (ref,) = _snap(provider, _volumes(provider, tmp_path, {"name": "data", "path": "current"}), "run1")
    snap_data = Path(ref.extra["path"]) / "data"
    assert snap_data.is_dir() and not snap_data.is_symlink()
    assert (snap_data.stat().st_mode & 0o777) == 0o750, "the link's 0777, not the directory's mode"
    restored = tmp_path / "restored"
    provider.restore(ref, RestoreTarget(path=restored))
    assert (restored.stat().st_mode & 0o777) == 0o750


def test_second_snapshot_hard_links_unchanged_files(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"})
    (first,) = _snap(provider, volumes, "run1")
    (source / "sub" / "deep" / "c.txt").write_text("gamma changed")
    (source / "a.txt").chmod(0o600)  # a mode change alone must not be linked either
    (second,) = _snap(provider, volumes, "run2")
    old, new = Path(first.extra["path"]) / "data", Path(second.extra["path"]) / "data"
    assert (new / "sub" / "b.bin").stat().st_ino == (old / "sub" / "b.bin").stat().st_ino
    assert (new / "ro.txt").stat().st_ino == (old / "ro.txt").stat().st_ino
    assert (new / "sub" / "deep" / "c.txt").stat().st_ino != (old / "sub" / "deep" / "c.txt").stat().st_ino
    assert (new / "sub" / "deep" / "c.txt").read_text() == "gamma changed"
    assert (old / "sub" / "deep" / "c.txt").read_text() == "gamma"
    assert (new / "a.txt").stat().st_ino != (old / "a.txt").stat().st_ino
    assert second.extra["linked_files"] == 2
    assert second.extra["copied_bytes"] == len("gamma changed") + len("alpha")
    assert _tree(new) == _tree(source)


def test_deleting_an_older_snapshot_keeps_linked_files(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"})
    (first,) = _snap(provider, volumes, "run1")
    (second,) = _snap(provider, volumes, "run2")
    provider.delete(first)
    assert not Path(first.extra["path"]).exists()
    assert _tree(Path(second.extra["path"]) / "data") == _tree(source)


def test_each_volume_gets_its_own_snapshot(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    (tmp_path / "wal").mkdir()
    (tmp_path / "wal" / "000001.log").write_text("wal")
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"}, {"name": "wal", "path": "wal"})
    refs = _snap(provider, volumes, "run1")
    assert [(r.volume, r.snapshot_id) for r in refs] == [("data", "run1-n1-data"), ("wal", "run1-n1-wal")]
    assert (Path(refs[1].extra["path"]) / "data" / "000001.log").read_text() == "wal"


def test_same_run_cannot_snapshot_a_volume_twice(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"})
    _snap(provider, volumes, "run1")
    with pytest.raises(ProviderError, match="snapshot run1-n1-data already exists"):
        _snap(provider, volumes, "run1")
    assert len(provider.find({TAG_RUN: "run1"})) == 1


def test_leftovers_of_a_crashed_snapshot_are_cleaned(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"})
    _snap(provider, volumes, "run1")
    crashed = _node_dir(provider) / ".partial-run2-n1-data-deadbeef"
    (crashed / "data").mkdir(parents=True)
    (crashed / "data" / "half.txt").write_text("half")
    half_deleted = _node_dir(provider) / ".deleting-run0-n1-data-cafe"
    half_deleted.mkdir()
    assert [r.snapshot_id for r in provider.find({})] == ["run1-n1-data"]
    refs = provider.snapshot(volumes, snapshot_tags(CLUSTER, "run3", "n1"))
    assert crashed.exists(), "removed inside the engine's hold: a killed copy can be as large as the volume"
    provider.wait(refs, time.monotonic() + 60)  # after the hold
    assert not crashed.exists() and not half_deleted.exists()
    assert sorted(r.snapshot_id for r in provider.find({})) == ["run1-n1-data", "run3-n1-data"]


def test_a_snapshot_waits_for_a_busy_store_only_briefly_inside_the_hold(
    provider: LocalProvider, tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another process kept the node's store lock (a stalled run): the snapshot waited for it with
    # the engine held, until max_freeze_s failed the run 60 s later, saying nothing of why.
    import fcntl

    import snapctl_local.provider as local_provider
    from snapctl_local.store import StoreBusy

    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"})
    _snap(provider, volumes, "run1")
    monkeypatch.setattr(local_provider, "HELD_LOCK_WAIT_S", 0.2)
    with open(_node_dir(provider) / ".lock", "a+b") as other:  # its own open file: another holder
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(StoreBusy, match="node n1: the snapshot store is busy with another snapctl process "
                                            "for more than 0.2s") as info:
            provider.snapshot(volumes, snapshot_tags(CLUSTER, "run2", "n1"))
        assert "retry once it is done" in info.value.hint
    assert [r.snapshot_id for r in provider.find({})] == ["run1-n1-data"]
    _snap(provider, volumes, "run3")  # free again: as before


def test_failure_part_way_removes_everything_this_call_made(
    provider: LocalProvider, tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "wal").mkdir()
    (tmp_path / "wal" / "000001.log").write_text("wal")
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"}, {"name": "wal", "path": "wal"})
    real_copy = copy_module.FileCopier.copy_file

    def failing_copy(self, src, dst, src_dev, *rest):
        if src.name == "000001.log":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_copy(self, src, dst, src_dev, *rest)

    monkeypatch.setattr(copy_module.FileCopier, "copy_file", failing_copy)
    with pytest.raises(ProviderError) as info:
        _snap(provider, volumes, "run1")
    message = str(info.value)
    assert "node n1" in message and "volume wal" in message and "000001.log" in message and "no space left" in message
    # The store is full, not the database's disk: the path named is the copy's, in the store.
    assert f"failed writing {provider.store.root}/" in message and str(tmp_path / "wal") + "/" not in message
    assert info.value.hint.startswith(f"free space in the snapshot store {provider.store.root}")
    assert [p.name for p in _node_dir(provider).iterdir()] == [".lock"]
    assert provider.find({}) == []


def test_large_file_is_copied_exactly(provider: LocalProvider, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.mkdir()
    block = os.urandom(1 << 20)
    with open(big / "data.bin", "wb") as f:
        for i in range(40):
            f.write(block[i:] + block[:i])
    (ref,) = _snap(provider, _volumes(provider, tmp_path, {"name": "big", "path": "big"}), "run1")
    copied = Path(ref.extra["path"]) / "data" / "data.bin"
    assert hashlib.sha256(copied.read_bytes()).digest() == hashlib.sha256((big / "data.bin").read_bytes()).digest()


@pytest.mark.parametrize("broken", [("copy_file_range",), ("copy_file_range", "sendfile")])
def test_copy_falls_back_when_the_kernel_cannot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken) -> None:
    payload = os.urandom(3 * copy_module.USERSPACE_CHUNK + 17)
    (tmp_path / "in").write_bytes(payload)

    def unsupported(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    for name in broken:
        monkeypatch.setattr(os, name, unsupported)
    copy_module.FileCopier("never").copy_file(tmp_path / "in", tmp_path / "out", 0)
    assert (tmp_path / "out").read_bytes() == payload


def test_reflink_always_fails_clearly_where_unsupported(tmp_path: Path, source: Path) -> None:
    provider = create_provider({"type": "local", "store": "store", "reflink": "always"}, cluster=CLUSTER, base_dir=tmp_path)
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"})
    try:
        (ref,) = _snap(provider, volumes, "run1")
    except ProviderError as exc:
        assert "cannot reflink" in exc.message and "reflink: auto" in (exc.hint or "")
        assert provider.find({}) == []
    else:  # a reflink-capable filesystem (btrfs, xfs): the copy must still be exact
        assert _tree(Path(ref.extra["path"]) / "data") == _tree(source)


def test_reflink_always_is_checked_before_any_hold_as_a_dry_run_does(tmp_path: Path, source: Path) -> None:
    # warm_up() runs before the first hold, and in `backup --dry-run`, which passed where the run failed.
    provider = create_provider({"type": "local", "store": "store", "reflink": "always"}, cluster=CLUSTER, base_dir=tmp_path)
    works = copy_module.can_reflink(tmp_path)
    if works:
        provider.warm_up()  # btrfs, xfs: nothing to refuse
        return
    assert works is False, "O_TMPFILE should work on this filesystem"
    with pytest.raises(ProviderError, match=r"the store .*/store cannot reflink files \(reflink: always\)") as info:
        provider.warm_up()
    assert "reflink: auto" in info.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # the probe left nothing, made no store
    create_provider({"type": "local", "store": "store", "reflink": "auto"}, cluster=CLUSTER, base_dir=tmp_path).warm_up()


# -- wait, find, delete -------------------------------------------------------------------------


def test_find_filters_by_tags_within_the_cluster(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"})
    _snap(provider, volumes, "run1")
    (second,) = _snap(provider, volumes, "run2")
    other = create_provider({"type": "local", "store": "store"}, cluster="c2", base_dir=tmp_path)
    other.snapshot(volumes, snapshot_tags("c2", "run2", "n1"))
    found = provider.find({TAG_RUN: "run2"})
    assert [r.snapshot_id for r in found] == [second.snapshot_id]
    assert found[0].tags == second.tags
    assert len(provider.find({TAG_CLUSTER: CLUSTER})) == 2
    assert provider.find({TAG_RUN: "run2", TAG_VOLUME: "wal"}) == []


def test_wait_confirms_and_reports_missing(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"})
    refs = _snap(provider, volumes, "run1")
    seen = []
    # Already completed: nothing left to do, so even a deadline long past is no failure.
    assert [r.state for r in provider.wait(refs, deadline=0, progress=seen.append)] == ["completed"]
    assert [r.snapshot_id for r in seen] == ["run1-n1-data"]
    provider.delete(refs[0])
    with pytest.raises(ProviderError, match="snapshot run1-n1-data of volume data is missing"):
        provider.wait(refs, deadline=0)


def test_delete_refuses_a_snapshot_without_this_clusters_tag(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"})
    (ref,) = provider.snapshot(volumes, {TAG_RUN: "manual"})
    with pytest.raises(ProviderError, match="refusing to delete snapshot manual-n1-data"):
        provider.delete(ref)
    assert Path(ref.extra["path"]).is_dir()


def test_delete_is_done_when_missing(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    (ref,) = _snap(provider, _volumes(provider, tmp_path, {"name": "data", "path": "src"}), "run1")
    provider.delete(ref)
    provider.delete(ref)
    assert provider.find({}) == []


def test_delete_removes_read_only_directories(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    (source / "sub").chmod(0o555)
    try:
        (ref,) = _snap(provider, _volumes(provider, tmp_path, {"name": "data", "path": "src"}), "run1")
        copied_sub = Path(ref.extra["path"]) / "data" / "sub"
        assert copied_sub.stat().st_mode & 0o777 == 0o555
        call_without_dac_override(_delete_run1, str(tmp_path), read_only=[copied_sub])
        assert not Path(ref.extra["path"]).exists()
    finally:
        (source / "sub").chmod(0o755)


def _delete_run1(base_dir: str) -> None:
    """In a child that the copy's read-only directory binds (tests/unprivileged.py)."""
    provider = create_provider({"type": "local", "store": "store"}, cluster=CLUSTER, base_dir=Path(base_dir))
    (ref,) = provider.find({TAG_RUN: "run1"})
    provider.delete(ref)


# -- restore --------------------------------------------------------------------------------


def test_restore_reproduces_the_source_with_independent_files(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    volumes = _volumes(provider, tmp_path, {"name": "data", "path": "src"})
    _snap(provider, volumes, "run1")
    (ref,) = _snap(provider, volumes, "run2")  # mostly hard links to run1
    expected = _tree(source)
    result = provider.restore(ref, RestoreTarget(path=tmp_path / "restored"))
    assert result == str(tmp_path / "restored")
    assert _tree(Path(result)) == expected
    restored_file = Path(result) / "sub" / "b.bin"
    assert restored_file.stat().st_nlink == 1
    restored_file.write_bytes(b"scribble")  # must not reach into the snapshot
    assert _tree(Path(ref.extra["path"]) / "data") == expected


def test_restore_into_an_existing_empty_directory(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    (ref,) = _snap(provider, _volumes(provider, tmp_path, {"name": "data", "path": "src"}), "run1")
    (tmp_path / "empty-target").mkdir()
    provider.restore(ref, RestoreTarget(path=tmp_path / "empty-target"))
    assert _tree(tmp_path / "empty-target") == _tree(source)


def test_restore_under_a_file_is_bad_input_not_a_traceback(provider: LocalProvider, tmp_path: Path,
                                                          source: Path) -> None:
    (ref,) = _snap(provider, _volumes(provider, tmp_path, {"name": "data", "path": "src"}), "run1")
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(BadInputError, match=r"cannot restore to .*/a-file/n1/data: not a directory") as info:
        provider.restore(ref, RestoreTarget(path=tmp_path / "a-file" / "n1" / "data"))
    assert "--to DIR" in info.value.hint
    assert (tmp_path / "a-file").read_text() == "not a directory"


def test_restore_refuses_a_non_empty_target(provider: LocalProvider, tmp_path: Path, source: Path) -> None:
    (ref,) = _snap(provider, _volumes(provider, tmp_path, {"name": "data", "path": "src"}), "run1")
    with pytest.raises(BadInputError, match="restore target .*/src is not an empty directory"):
        provider.restore(ref, RestoreTarget(path=source))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".restore-")] == []


def test_restore_refuses_a_target_inside_the_snapshot_store(provider: LocalProvider, tmp_path: Path,
                                                            source: Path) -> None:
    # `snapctl restore latest --to <store>/<cluster>` restored every node into the store, for good.
    (ref,) = _snap(provider, _volumes(provider, tmp_path, {"name": "data", "path": "src"}), "run1")
    target = tmp_path / "store" / CLUSTER / "n1" / "data"
    with pytest.raises(BadInputError, match=r"cannot restore to .*/n1/data: it is inside the snapshot store"):
        provider.check_restore(ref, RestoreTarget(path=target))
    with pytest.raises(BadInputError, match="inside the snapshot store"):
        provider.restore(ref, RestoreTarget(path=target))
    assert not target.exists()


def test_a_store_under_a_file_is_bad_input_when_the_provider_is_made(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    with pytest.raises(BadInputError, match=r"provider.store .*/a-file/store: .*/a-file is not a directory"):
        create_provider({"type": "local", "store": "a-file/store"}, cluster=CLUSTER, base_dir=tmp_path)
    # A store that does not exist yet is fine: the first snapshot creates it.
    create_provider({"type": "local", "store": "new/store"}, cluster=CLUSTER, base_dir=tmp_path)
    assert not (tmp_path / "new").exists()
