"""An engine's settings moved onto the restored volumes, for a restore or drill on this machine.

Every path that lies on one of the node's volumes moves to where that volume was restored. The
settings that name the files the restore reads or writes (the engine's data) must all move: one
left where it is names this host's live files, and restore-prepare would write there (Tarantool
drops ``*.inprogress`` files, QuestDB writes its ``_restore`` marker, etcd rebuilds its data dir)
or the drill would start from them (etcd from the live host's saved snapshot) and pass without
the backup. Such a restore or drill is refused. The other paths (a password or TLS file) are
this host's configuration and stay.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapctl.errors import BadInputError
from snapctl.evidence import moved_path, volume_roots
from snapctl.restored_links import check_stays_on_the_volumes

if TYPE_CHECKING:
    from snapctl.config import Inventory, Node

__all__ = ["no_engine_path", "remap_paths", "used_paths"]


def used_paths(engine: dict[str, Any], *, drill: bool) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(the settings naming files the restore or drill reads or writes, path settings it does not
    use) of a built-in engine; None for another engine, whose settings snapctl does not know."""
    kind = engine.get("type")
    if kind == "sqlite":
        return ("path",), ()
    if kind == "tarantool":
        # With data_paths, work_dir is only box.cfg's: the drill gives the scratch instance its own.
        return (("data_paths",), ("work_dir",)) if engine.get("data_paths") else (("work_dir",), ())
    if kind == "etcd":
        # A drill rebuilds the data dir in its scratch directory; a restore, only with restore: settings.
        return (("backup_dir", "data_dir"), ()) if engine.get("restore") and not drill else (("backup_dir",),
                                                                                           ("data_dir",))
    if kind in ("questdb", "aresdb"):
        return ("root",), ()
    if kind == "dingodb":
        return ("data_path",), ()
    return None


def remap_paths(engine: dict[str, Any], inventory: Inventory, node: Node, restored: dict[str, str], *,
                drill: bool = False, contents: dict[str, Path] | None = None) -> dict | None:
    """The node's engine settings with every path that lies on one of its volumes (strings, and
    lists of strings) moved to where that volume was restored; None when no setting lies on a
    restored volume and the node's volumes do not match the restored ones by name. Refused
    (BadInputError) when a path the restore (``drill``: the drill) reads or writes lies on none of
    them, or a symbolic link leads it off them (``check_stays_on_the_volumes``; ``contents``: each
    volume's tree its restore will copy, to judge the links before the copy); a path setting it
    does not use is dropped if it does not move."""
    roots = volume_roots(node.volumes, inventory.resolve)
    moved: dict[str, Any] = dict(engine)
    changed = False
    stays: list[tuple[str, str]] = []  # (setting, path) left where it is

    def move(key: str, value: str) -> str:
        nonlocal changed
        target = moved_path(inventory.resolve(value), roots, restored)
        if target is None:
            stays.append((key, value))
            return value
        changed = True
        return str(target)

    for key, value in engine.items():
        if key == "type":
            continue
        if isinstance(value, str) and value:
            moved[key] = move(key, value)
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            moved[key] = [move(key, v) for v in value]
    used = used_paths(engine, drill=drill)
    read, unused = used if used is not None else ((), ())
    stay = next(((key, value) for key, value in stays if key in read), None)
    if not changed:
        # With every restored volume matched by name, nothing moved means the engine's data lies
        # off the node's volumes: the restore would prepare and verify this host's live files, or
        # nothing. (A volume renamed since the run matches none: ``no_engine_path`` says so.)
        if stay is not None and restored and all(volume in roots for volume in restored):
            raise live_path(inventory, node, restored, *stay, drill=drill)
        return None
    if used is None:
        return moved
    if stay is not None:
        raise live_path(inventory, node, restored, *stay, drill=drill)
    for key in read:
        for value in [moved[key]] if isinstance(moved.get(key), str) else moved.get(key) or []:
            check_stays_on_the_volumes(node.name, key, value, restored, roots, drill=drill, contents=contents)
    for key in unused:
        if any(k == key for k, _ in stays):
            moved.pop(key, None)  # not read, and never to name the live host's files
    return moved


def live_path(inventory: Inventory, node: Node, restored: dict[str, str], key: str, value: str, *,
              drill: bool) -> BadInputError:
    roots = volume_roots(node.volumes, inventory.resolve)
    volumes = ", ".join(f"{name} ({root})" for name, root in roots.items() if name in restored) or "none"
    what = "drill" if drill else "restore"
    return BadInputError(
        f"node {node.name}: the engine's {key} {inventory.resolve(value)} lies on none of the restored volumes "
        f"({volumes}): the {what} would use this host's live files there instead of the backup's",
        hint=f"point {key} at its place on one of the node's volumes, or list its directory among the node's "
             "volumes as it was when the run was made")


def no_engine_path(inventory: Inventory, node: Node, restored: dict[str, str]) -> BadInputError:
    """Why ``remap_paths`` found no engine path on the restored volumes. A volume is matched to
    the inventory's by name: one renamed since the run matches none."""
    names = list(volume_roots(node.volumes, inventory.resolve))
    if unknown := [volume for volume in restored if volume not in names]:
        return BadInputError(
            f"none of the engine's paths lies on a restored volume: the run's volume {', '.join(unknown)} is not "
            f"among the node's volumes in the inventory ({', '.join(names) or 'none'}), renamed since the run?",
            hint="give the volume back the name it had in the run: a restore finds the engine's data on a volume "
                 "by its name")
    return BadInputError("none of the engine's paths lies on a restored volume",
                         hint="the node's volumes must cover the engine's data paths")
