"""A symbolic link in a snapshot's data that leads the engine's data off the restored volumes:
refused before anything is copied where the provider shows what it will copy (local), else
once the node is restored, and then that node's copy is removed again. Real local snapshots,
SQLite nodes, the CLI as a subprocess."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from snapctl_local.restores import LocalRestores

from snapctl.drill import run_drill
from snapctl.errors import ExitCode
from snapctl.restore import restore_run
from snapctl.restored_links import LinkLeadsOff, resolve_as_restored
from tests.restore.test_drill import junit_cases
from tests.restore.test_restore_dry_run import _error, snapctl


def _relinked_since_the_backup(cluster) -> tuple[str, Path]:
    """A run whose n1 holds its database behind ``current``, an absolute link within the volume
    (which the preflight takes); since, the node was rebuilt with ``current`` a directory of its
    own, and the old database stays on the host. Returns the run and that database."""
    data = cluster.directory / "n1" / "data"
    (data / "v1").mkdir()
    for file in data.glob("app.db*"):
        file.rename(data / "v1" / file.name)
    (data / "current").symlink_to(data / "v1")
    cluster.edit(node_n1={"engine": {"type": "sqlite", "path": "n1/data/current/app.db"}})
    run_id = cluster.backup()
    (data / "current").unlink()
    (data / "current").mkdir()
    return run_id, data / "v1" / "app.db"


def _refusal(root: Path, live: Path, what: str = "restore") -> tuple[str, str]:
    """The refusal's message and hint, n1 restored into ``root``."""
    return (f"node n1: the engine's path {root / 'data' / 'current' / 'app.db'} leads off the restored "
            f"volumes through a symbolic link in the backup's data, to {live}: the {what} would use the files "
            "there instead of the backup's",
            "the link is absolute, into volume data at its place on the source: make it relative (ln -sfr TARGET "
            "LINK) so that it stays within the volume restored")


def test_a_link_off_the_volumes_in_the_snapshot_is_refused_before_anything_is_copied_and_by_the_dry_run(
        sqlite_cluster, tmp_path):
    # Before, the check before any copy could not see the link (the restored files were not there
    # yet): n1 was copied, then refused at its restore-prepare, and the dry run planned it all.
    run_id, live = _relinked_since_the_backup(sqlite_cluster)
    target = tmp_path / "restored"

    dry = snapctl(sqlite_cluster, "restore", run_id, "--to", str(target), "--dry-run")
    real = snapctl(sqlite_cluster, "restore", run_id, "--to", str(target))

    message, hint = _refusal(target / "n1", live)
    assert dry.returncode == real.returncode == ExitCode.BAD_INPUT, dry.stdout + dry.stderr + real.stderr
    assert _error(real) == [f"snapctl: error: {message}", f"  hint: {hint}"], real.stderr
    assert _error(dry) == _error(real) and dry.stdout == ""
    assert not target.exists(), "nothing is copied"


def test_a_drill_is_refused_before_restoring_anything_and_leaves_nothing(sqlite_cluster, tmp_path):
    # Before, n1 was copied into the scratch space and failed on its own, after the copy.
    run_id, live = _relinked_since_the_backup(sqlite_cluster)
    sqlite_cluster.edit(node_n1={"restore": {"path": "n1-restore"}})
    target = sqlite_cluster.directory / "n1-restore"

    with pytest.raises(LinkLeadsOff) as refused:
        run_drill(sqlite_cluster.inventory, run_id, junit=tmp_path / "drill.xml")

    assert (refused.value.message, refused.value.hint) == _refusal(target, live, "drill")
    cases = junit_cases(tmp_path / "drill.xml")
    [error] = cases.pop("cluster restore-test").findall("error")
    assert error.get("message") == f"refused before restoring anything: {refused.value.message}" and cases == {}
    assert not target.exists() and not any((sqlite_cluster.directory / "scratch").iterdir())


def test_without_the_providers_contents_the_refusal_comes_after_the_copy_which_is_removed_again(
        sqlite_cluster, tmp_path, monkeypatch):
    # A provider restoring into directories that cannot show what it will copy: the link is found
    # on the restored files, and the node's copy, which nothing may use, goes.
    run_id, live = _relinked_since_the_backup(sqlite_cluster)
    monkeypatch.delattr(LocalRestores, "restore_contents")
    target = tmp_path / "restored"

    with pytest.raises(LinkLeadsOff) as refused:
        restore_run(sqlite_cluster.inventory, run_id, target)

    message, hint = _refusal(target / "n1", live)
    assert refused.value.message == message
    assert refused.value.hint == f"{hint}; this restore's copy of node n1 was removed again: {target / 'n1' / 'data'}"
    assert list(target.rglob("*")) == [target / "n1"], "neither the volume nor its marker is left"


def test_links_resolve_as_they_will_once_copied(tmp_path):
    tmp_path = Path(os.path.realpath(tmp_path))  # the expected paths, with no link of the host's in them
    source = tmp_path / "snapshot"
    (source / "v1").mkdir(parents=True)
    (source / "rel").symlink_to("v1")
    (source / "up").symlink_to("../elsewhere")
    (source / "abs").symlink_to(tmp_path / "other-target" / "x")
    (source / "loop").symlink_to("loop")
    (tmp_path / "host-link").symlink_to(tmp_path / "place")
    other = tmp_path / "other-source"
    (other / "x").mkdir(parents=True)
    (other / "x" / "y").symlink_to("/etc")
    place = tmp_path / "place"
    contents = {place: source, tmp_path / "other-target": other}

    assert resolve_as_restored(place / "rel" / "app.db", contents) == place / "v1" / "app.db"
    assert resolve_as_restored(place / "up" / "app.db", contents) == tmp_path / "elsewhere" / "app.db"
    assert resolve_as_restored(place / "abs" / "y", contents) == Path("/etc")  # into another target, read there
    assert resolve_as_restored(tmp_path / "host-link" / "rel", contents) == place / "v1"  # a host link on the way
    assert resolve_as_restored(place / "missing" / ".." / "rel", contents) == place / "v1"
    assert resolve_as_restored(place / "loop", contents) == place / "loop"  # followed no further
