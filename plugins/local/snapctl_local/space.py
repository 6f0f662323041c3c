"""Room for a restore: what its copies take on each filesystem they go to, against what is free
there, added up before anything is copied. A disk found full part-way fails after gigabytes were
copied, and leaves the volumes restored before it in the way of the retry."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from snapctl.errors import BadInputError
from snapctl.units import human_bytes

_NAMED = 5  # volumes a refusal names, of a cluster's hundreds


@dataclass
class Room:
    """One filesystem a restore writes to: ``where`` (the first target's nearest existing
    directory on it), its ``statvfs``, and what each volume restored there will take."""

    where: Path
    vfs: os.statvfs_result
    volumes: list[str] = field(default_factory=list)
    needed: int = 0

    @property
    def free(self) -> int:
        # f_bavail, not f_bfree: the blocks reserved for root are the system's, not a restore's.
        return self.vfs.f_bavail * self.vfs.f_frsize

    def add(self, who: str, meta: dict[str, Any], *, clones: bool = False) -> None:
        self.volumes.append(who)
        self.needed += copy_size(meta, self.vfs.f_frsize, clones=clones)

    def check(self) -> None:
        if self.needed <= self.free:
            return
        needed, free = human_bytes(self.needed, unit="bytes"), human_bytes(self.free, unit="bytes")
        if needed == free:  # 1.0 MiB against 1.0 MiB says nothing
            needed, free = f"{self.needed} bytes", f"{self.free} bytes"
        raise BadInputError(f"not enough space at {self.where} to restore {_who(self.volumes)}: {needed} needed, "
                            f"{free} free",
                            hint=f"free {human_bytes(self.needed - self.free, unit='bytes')} there, or restore onto a disk with room "
                                 "(--to DIR or restore.path; a drill: drill.scratch_dir)")


def copy_size(meta: dict[str, Any], block: int, *, clones: bool = False) -> int:
    """What a full copy of a snapshot takes, in bytes of ``block``-sized blocks: every file in its
    index rounded up to whole blocks (none when the files are ``clones``: reflinks share the
    snapshot's blocks), and a block for each directory and for the restore marker. The apparent
    size counts: a copy fills a sparse file's holes. Metadata blocks (inodes, extent trees) are
    left out, so a disk with exactly this much free may still be short."""
    files: dict[str, dict[str, int]] = meta.get("files") or {}
    directories = {PurePosixPath(".")}
    for rel in files:
        directories.update(PurePosixPath(rel).parents)
    data = 0 if clones else sum(-(-int(facts.get("size", 0)) // block) * block for facts in files.values())
    return data + (len(directories) + 1) * block


def _who(volumes: list[str]) -> str:
    if len(volumes) <= 2:
        return " and ".join(volumes)
    shown = ", ".join(volumes[:_NAMED]) + (f" and {len(volumes) - _NAMED} more" if len(volumes) > _NAMED else "")
    return f"{len(volumes)} volumes ({shown})"

