"""The local provider in the provider contract suite: volumes and store under tmp_path."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from snapctl.providers import TAG_RUN, RestoreTarget, SnapshotRef, create_provider
from tests.contract.conftest import ProviderEnv

CLUSTER = "contract"


def _fill(volume: Path, seed: str) -> None:
    (volume / "sub").mkdir(parents=True)
    (volume / "sub" / "rows.db").write_bytes(seed.encode() * 10_000)
    (volume / "meta.txt").write_text(f"volume {seed}\n")
    os.symlink("meta.txt", volume / "current")


def _snapshot_of_tree(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            out[rel] = ("symlink", os.readlink(path))
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = ("file", path.read_bytes(), path.stat().st_mtime_ns)
    return out


def _same_tree(expected: Path, actual: Path) -> None:
    assert _snapshot_of_tree(actual) == _snapshot_of_tree(expected)


@contextlib.contextmanager
def make_env(tmp_path: Path) -> Iterator[ProviderEnv]:
    sources = {"data": tmp_path / "volumes" / "data", "wal": tmp_path / "volumes" / "wal"}
    for name, path in sources.items():
        _fill(path, name)
    provider = create_provider({"type": "local", "store": "store"}, cluster=CLUSTER, base_dir=tmp_path)
    volumes = provider.validate_volumes(
        "n1", [{"name": name, "path": str(path)} for name, path in sources.items()], base_dir=tmp_path
    )

    def check_restored(ref: SnapshotRef, restored: str) -> None:
        _same_tree(sources[ref.volume], Path(restored))

    def foreign_volume() -> str:
        """A directory snapctl did not restore (no marker beside it)."""
        path = tmp_path / "not-restored"
        _fill(path, "foreign")
        return str(path)

    def untagged_snapshot() -> SnapshotRef:
        return provider.snapshot(volumes, {TAG_RUN: "untagged"})[0]

    yield ProviderEnv(
        provider=provider,
        volumes=volumes,
        restore_target=lambda name: RestoreTarget(path=tmp_path / "restores" / name),
        check_restored=check_restored,
        untagged_snapshot=untagged_snapshot,
        volume_exists=lambda path: os.path.lexists(path),
        foreign_volume=foreign_volume,
        cluster=CLUSTER,
    )
