"""Restored data against the evidence PREPARE recorded: tables, positions, files.

Every function returns problems, one line each, empty when the restore reproduces the record.
``VerifyFacts.exact`` false means the engine kept writing while its disks were copied: restored
tables may hold more rows (never fewer) and positions may be further on (never behind).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.models import VerifyFacts

# Positions that only grow: the restored value must be at least the recorded one.
MONOTONIC = frozenset({"revision", "snapshot_revision", "signature", "lsn", "checkpoint_signature", "applied_index",
                       "last_snapshot_index"})
# Vector clocks (tarantool): every component at least the recorded one.
CLOCKS = frozenset({"vclock", "checkpoint_vclock"})
# The restored data must come from the same instance.
IDENTITY = frozenset({"instance_uuid"})


def compare_facts(expected: VerifyFacts, actual: VerifyFacts) -> list[str]:
    """What differs between the facts recorded at PREPARE and those of the restored engine."""
    problems = []
    for table, want in expected.tables.items():
        got = actual.tables.get(table)
        if got is None:
            problems.append(f"table {table} missing (expected {want.rows} rows)")
        elif expected.exact and got.rows != want.rows:
            problems.append(f"table {table}: {got.rows} rows, expected {want.rows}")
        elif not expected.exact and got.rows < want.rows:
            problems.append(f"table {table}: {got.rows} rows, expected at least {want.rows}")
        elif expected.exact and want.checksum and got.checksum != want.checksum:
            problems.append(f"table {table}: checksum {_short(got.checksum)}, expected {_short(want.checksum)}")
    return problems + compare_positions(expected.position, actual.position)


def compare_positions(expected: Mapping[str, Any], actual: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Positions the restored engine reports that are behind (or from another instance than) the
    recorded ones. Keys the restored engine does not report are skipped, except whole groups
    (e.g. a raft region) that vanished."""
    problems = []
    for key, want in expected.items():
        name = f"{prefix}{key}"
        if key not in actual:
            if isinstance(want, dict) and key not in CLOCKS and want:
                problems.append(f"{name} missing after restore")
            continue
        got = actual[key]
        if key in CLOCKS and isinstance(want, dict) and isinstance(got, dict):
            have = {str(k): v for k, v in got.items()}
            behind = [f"{k}: {have.get(str(k), 0)} < {v}" for k, v in want.items()
                      if isinstance(v, int) and (have.get(str(k)) or 0) < v]
            if behind:
                problems.append(f"{name} behind the one recorded at prepare ({', '.join(behind)})")
        elif isinstance(want, dict) and isinstance(got, dict):
            problems += compare_positions(want, got, prefix=f"{name} ")
        elif key in MONOTONIC and _is_int(want) and _is_int(got) and got < want:
            problems.append(f"{name} {got}, expected at least {want}")
        elif key in IDENTITY and want and got and want != got:
            problems.append(f"{name} {got}, expected {want} (data of another instance?)")
    return problems


def volume_roots(node_volumes: list[Any], resolve) -> dict[str, Path]:
    """Volume name -> its directory, for volumes that are directories (local providers)."""
    roots = {}
    for volume in node_volumes:
        name, path = (volume.get("name"), volume.get("path")) if isinstance(volume, dict) else (None, volume)
        if isinstance(path, (str, os.PathLike)) and path:
            root = resolve(path).resolve()
            roots[name or root.name] = root
    return roots


def moved_path(path: str | os.PathLike[str], roots: Mapping[str, Path], restored: Mapping[str, str]) -> Path | None:
    """Where ``path`` (on one of the node's volumes) lies in the restored copy of that volume."""
    candidate = Path(path).resolve()
    for volume, root in roots.items():
        if volume in restored and candidate.is_relative_to(root):
            return Path(restored[volume]) / candidate.relative_to(root)
    return None


def missing_files(files: list[str], roots: Mapping[str, Path], restored: Mapping[str, str]) -> list[str]:
    """Files PREPARE said the snapshot must contain that the restored volumes lack."""
    problems = []
    for file in files:
        moved = moved_path(file, roots, restored)
        if moved is not None and not moved.exists():
            volume = next(name for name, root in roots.items()
                          if name in restored and Path(file).resolve().is_relative_to(root))
            problems.append(f"file {Path(file).name} recorded at prepare is missing from the restored volume {volume}")
    return problems


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(checksum: str | None) -> str:
    if not checksum:
        return "none"
    algorithm, _, digest = checksum.rpartition(":")
    return f"{algorithm}:{digest[:12]}" if algorithm else checksum[:12]
