"""What a drill killed outright (SIGKILL, the OOM killer, its host going down) left behind, found
and cleaned up by the next drill and by `snapctl gc`.

Such a drill never tears down: its scratch directory stays, full of restored volumes, its scratch
engines (Tarantool, etcd: each in a session of its own) keep running, and its catalog record stays
unfinished. With a fixed ``drill.scratch_dir`` one of these a night fills the disk.

Nothing is touched without proof, each piece of it checked here:

- the drill is gone: its record is unfinished, its ``owner`` (``user@host:pid``) names this host,
  its ``owner_process`` (the boot, the pid namespace and the start of the drill's process) this
  boot and this pid namespace, and that pid is not running, or runs a process begun at another
  time. A drill of another host, of another container sharing this host name, and a record that
  names no owner process (an older snapctl's) are never judged: a pid means nothing there;
- the directory is that drill's scratch: the record's ``scratch_dir`` holds the marker the drill
  wrote into it first (``.snapctl-drill.json``), naming the same cluster, drill and record;
- a scratch engine is ours: its pid file in that directory names a process of this boot with the
  recorded start time whose working directory is in that directory. The command line cannot
  tell: Tarantool rewrites its own (``tarantool-drill.lua <running>``).

The record is then finished as ``abandoned``, which also ends the hold it had on its run (prune).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapctl.errors import os_reason
from snapctl.fsmodes import open_private, remove_tree
from snapctl.process_identity import identity, pid_here, run_owner, runs
from snapctl.timestamps import utc_text
from snapctl.units import human_bytes

if TYPE_CHECKING:
    from snapctl.catalog import Catalog
    from snapctl.config import Inventory
    from snapctl.events import Reporter
    from snapctl.providers import Provider

MARKER = ".snapctl-drill.json"
PID_SUFFIX = ".pid.json"
# A killed drill is found by the next drill, or by the weekly gc. Older records are not read again:
# a catalog of years of nightly drills would cost every drill (on S3, a request each) all of them.
LOOK_BACK_DAYS = 31
_STOP_WAIT_S = 10.0  # a SIGKILLed engine is gone within moments; past this, say so and keep its directory


# -- what a drill writes as it goes ------------------------------------------------------------------


def write_marker(scratch: Path, *, cluster: str, drill_id: str, record: str, owner: str,
                 provider: str | None = None) -> None:
    """The proof that ``scratch`` is this drill's, written before anything is restored into it, and
    of what it restores elsewhere: volumes tagged ``restore_tags`` by ``provider``, and (once it
    knows them, ``mark_restore_places``) the directories outside ``scratch`` it restores into."""
    from snapctl.providers import TAG_DRILL

    _write_json(scratch / MARKER, {"cluster": cluster, "drill_id": drill_id, "record": record, "owner": owner,
                                   "provider": provider, "restore_tags": {TAG_DRILL: drill_id},
                                   **(identity(os.getpid()) or {})})


def mark_restore_places(scratch: Path, places: list[str]) -> None:
    """The restore targets outside ``scratch``, added to its marker before any is restored into."""
    from snapctl.errors import BadInputError

    try:
        marker = json.loads((scratch / MARKER).read_bytes())
        _write_json(scratch / MARKER, {**marker, "restore_places": places})
    except (OSError, ValueError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else "it is not json"
        raise BadInputError(f"cannot record the drill's restore targets in {scratch / MARKER}: {reason}",
                            hint="a drill killed outright could not be cleaned up after: make the scratch "
                                 "directory writable (drill.scratch_dir)") from exc


def make_scratch_dir(inventory: Inventory, run_id: str, drill_id: str, record: str,
                     provider: str | None = None) -> Path:
    """The drill's private scratch directory, its marker in it first (``provider``: the name of
    the one the drill restores with)."""
    from snapctl.errors import BadInputError

    where = inventory.resolve(inventory.drill.scratch_dir) if inventory.drill.scratch_dir else None
    _refuse_inside_a_volume(inventory, (where or Path(tempfile.gettempdir())).resolve())
    try:
        if where is None:
            scratch = Path(tempfile.mkdtemp(prefix=f"snapctl-drill-{run_id}-")).resolve()
        else:
            where.mkdir(parents=True, exist_ok=True)
            (where / f"{run_id}-{drill_id}").mkdir(mode=0o700)  # restored data: as private as mkdtemp's
            scratch = (where / f"{run_id}-{drill_id}").resolve()
        try:  # before the record names it: only a directory with it is ever removed as a killed drill's
            write_marker(scratch, cluster=inventory.cluster, drill_id=drill_id, record=record, owner=run_owner(),
                         provider=provider)
        except OSError:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        return scratch
    except OSError as exc:
        shown = where if where is not None else f"in {tempfile.gettempdir()}"
        raise BadInputError(f"cannot create the drill's scratch directory {shown}: {os_reason(exc)}",
                            hint="set drill.scratch_dir (or TMPDIR) to a directory snapctl can write to") from exc


def _refuse_inside_a_volume(inventory: Inventory, base: Path) -> None:
    """Before anything is made there: restored copies inside a node's live volume would go into its
    every later snapshot, and a directory made for them would stay there after the drill."""
    from snapctl.errors import BadInputError
    from snapctl.evidence import volume_roots

    for node in inventory.nodes:
        for volume, root in volume_roots(node.volumes, inventory.resolve).items():
            if base.is_relative_to(root):
                raise BadInputError(f"the drill's scratch directory {base} lies inside node {node.name}'s volume "
                                    f"{volume} ({root}): its every later snapshot would carry the drill's copies",
                                    hint="set drill.scratch_dir (or TMPDIR) to a directory outside every node's "
                                         "volumes")


def write_pid_file(workdir: Path, name: str, pid: int) -> None:
    """A scratch engine's pid with its start time: a pid alone may be another process's by the next day."""
    found = identity(pid)
    if found is not None:
        _write_json(workdir / f"{name}{PID_SUFFIX}", found)


# The engine's own process records itself, then becomes the engine (same pid, same start): a drill
# killed the moment it started an engine leaves no engine without its pid file.
RECORD_THEN_EXEC = "import sys; from snapctl.drill_leftovers import exec_recorded; exec_recorded(sys.argv[1:])"


def exec_recorded(args: list[str]) -> None:
    """``[pid file, program, *its args]``: the pid file of this process, then exec of the program."""
    pid_file, argv = Path(args[0]), args[1:]
    write_pid_file(pid_file.parent, pid_file.name.removesuffix(PID_SUFFIX), os.getpid())
    os.execv(argv[0], argv)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Whole or not at all, and snapctl's user's alone whatever the umask (it is the proof)."""
    temp = path.with_name(f".{path.name}.tmp")
    try:
        with open(temp, "w", encoding="utf-8", opener=open_private) as out:
            out.write(json.dumps(data))
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


# -- finding them ------------------------------------------------------------------------------------


@dataclass
class AbandonedDrill:
    """An unfinished drill record whose process is gone from this host."""

    key: str  # the catalog record
    drill_id: str
    run_id: str
    owner: str
    scratch: Path | None
    proven: bool  # the scratch directory carries the drill's own marker
    kept: bool  # --keep: its data was asked to stay
    raw: bytes = field(repr=False, default=b"")
    marker: dict[str, Any] = field(default_factory=dict)  # the proof, and what it restored outside scratch

    def describe(self) -> str:
        return f"drill {self.drill_id} of run {self.run_id} ({self.owner}, no longer running)"

    def listed(self) -> str:
        """What `snapctl gc` lists before it cleans up."""
        where = f"scratch directory {self.scratch}" if self.scratch else "no scratch directory recorded"
        unproven = "" if self.proven or self.scratch is None else f" (no {MARKER} there: would be left alone)"
        places = _places(self.marker)
        outside = f"; restore targets outside it: {', '.join(places)}" if places else ""
        return f"{self.describe()}: {where}{unproven}{outside}"


def find_abandoned(catalog: Catalog) -> list[AbandonedDrill]:
    """Every drill of the cluster begun in the last ``LOOK_BACK_DAYS`` that this host can prove is
    gone without having finished."""
    found = []
    since = datetime.now(UTC) - timedelta(days=LOOK_BACK_DAYS)
    for key in catalog.store.list(f"{catalog.cluster}/drills/"):
        began = drill_began(key)
        if began is not None and began < since:
            continue  # not read: its id says when it began
        raw = catalog.store.read(key)
        try:
            record = json.loads(raw or b"")
            unfinished, owner = record.get("finished_at") is None, record.get("owner")
        except (ValueError, AttributeError):
            continue  # unreadable: it proves nothing
        if not unfinished or not isinstance(owner, str):
            continue
        if not gone_from_this_host(owner, record.get("owner_process")):
            continue  # a drill under way (or another host's): its scratch directory is not looked at
        scratch = Path(record["scratch_dir"]) if isinstance(record.get("scratch_dir"), str) else None
        marker = _marker(scratch, catalog.cluster, record.get("drill_id"), key)
        found.append(AbandonedDrill(key, str(record.get("drill_id")), str(record.get("run_id")), owner, scratch,
                                    marker is not None, bool(record.get("kept")), raw or b"", marker or {}))
    return found


def drill_began(key: str) -> datetime | None:
    """When a drill began, from its record's key (``<run>-<drill id>.json``, the id from its start):
    the records need not be read to order them."""
    parts = key.rsplit("/", 1)[-1].removesuffix(".json").rsplit("-", 2)
    try:
        return datetime.strptime(parts[-2], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    except (ValueError, IndexError):
        return None


def _marker(scratch: Path | None, cluster: str, drill_id: object, key: str) -> dict[str, Any] | None:
    """The scratch directory's marker, if it is a real directory (no symlink) and the marker names
    this drill and record."""
    if scratch is None or not scratch.is_absolute() or scratch.is_symlink() or not scratch.is_dir():
        return None
    try:
        marker = json.loads((scratch / MARKER).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or (marker.get("cluster"), marker.get("drill_id"), marker.get("record")) != (
            cluster, drill_id, key):
        return None
    return marker


def gone_from_this_host(owner: str, process: object) -> bool:
    """As the cluster lock judges its holder (any doubt is not gone), with the proof a pid needs:
    the drill's (or a restore's) process was of this boot and this pid namespace (``process``, as
    ``identity`` recorded it), and its pid now runs nothing, or a process begun at another time.
    Not the lock's earlier-boot proof: these records are written once, at the start, and a drill
    that a same-named machine began before this host booted may run on (nothing renews to say so)."""
    pid = pid_here(owner)
    return pid is not None and runs(pid, process) is False


# -- cleaning them up ----------------------------------------------------------------------------------


def clean_up_killed_drills(catalog: Catalog, provider: Provider, by: str, reporter: Reporter) -> list[str]:
    """What drills killed outright on this host left, cleaned up before a drill adds its own.
    Housekeeping: what it cannot do it says, and the drill goes on."""
    from snapctl.errors import SnapctlError

    try:
        lines = [line for line, _ in clean_abandoned(catalog, find_abandoned(catalog), by, provider)]
    except (SnapctlError, OSError) as exc:
        lines = [f"could not look for drills killed before they finished: {exc}"]
    for line in lines:
        reporter.step("cleanup", line)
    return lines


def clean_abandoned(catalog: Catalog, found: list[AbandonedDrill], by: str,
                    provider: Provider | None = None) -> list[tuple[str, bool]]:
    """Stop each abandoned drill's scratch engines, delete the volumes it restored (``provider``,
    the inventory's), remove its scratch directory, finish its record as abandoned; one line for
    each, and whether it was done. Whatever could not be done is said, and the record is left
    unfinished so that the next try finds it again. ``by``: who cleans up."""
    from snapctl.errors import SnapctlError

    lines = []
    for drill in found:
        said, hint, done = _clean_one(drill, provider)
        if done:
            try:  # what was done is said either way: one record that cannot be written ends nothing else
                finished = _finish(catalog, drill, by)
                said += "; record marked abandoned" if finished else "; its record was finished meanwhile, by another"
            except SnapctlError as exc:
                said, done = f"{said}; its record could not be finished ({exc.message}): the next try does", False
        lines.append((f"{drill.describe()}: {said}" + (f"; hint: {hint}" if hint else ""), done))
    return lines


def _clean_one(drill: AbandonedDrill, provider: Provider | None) -> tuple[str, str | None, bool]:
    """What was done, a hint if there is one for the operator, and whether the record may be finished."""
    scratch = drill.scratch
    if scratch is None or not os.path.lexists(scratch):
        return f"its scratch directory {scratch or '(none recorded)'} is already gone", None, True
    if not drill.proven:
        return (f"left {scratch} alone: it holds no {MARKER} naming this drill, so it may not be the drill's",
                "remove it by hand if it is a drill's scratch directory", True)
    stopped, unstoppable = _stop_engines(scratch)
    engines = f", stopped {', '.join(stopped)}" if stopped else ""
    if unstoppable:
        return (f"could not stop {', '.join(unstoppable)}{engines}; kept {scratch} for the next drill to retry",
                "stop them and remove it by hand", False)
    if drill.kept:
        return f"kept {scratch} as --keep asked{engines}", "remove it by hand", True
    deleted, trouble, retry = _delete_restored(drill.marker, provider)
    volumes = f", deleted the volumes it restored: {', '.join(deleted)}" if deleted else ""
    if trouble is not None and retry:  # the marker stays with the scratch directory: it proves them the drill's
        return (f"{trouble}{volumes}{engines}; kept {scratch} for the next drill to retry",
                "delete them by hand, or fix the cause and run `snapctl gc --delete`", False)
    unlooked = f"; {trouble}" if trouble is not None else ""  # no retry would do better: said, with a hint
    hint = "delete them by hand with the provider's own tools" if trouble is not None else None
    size = _size(scratch)
    try:
        _remove_scratch(scratch)
    except OSError as exc:
        return (f"could not remove {scratch}: {os_reason(exc)}{volumes}{engines}{unlooked}; the next drill tries "
                "again", hint, False)
    return f"removed its scratch directory {scratch} ({human_bytes(size)}){volumes}{engines}{unlooked}", hint, True


def _places(marker: dict[str, Any]) -> list[str]:
    places = marker.get("restore_places")
    return [p for p in places if isinstance(p, str)] if isinstance(places, list) else []


def _delete_restored(marker: dict[str, Any], provider: Provider | None) -> tuple[list[str], str | None, bool]:
    """The volumes a killed drill restored outside its scratch directory, deleted: only those its
    provider finds carrying the drill's own tags (local: at the targets it recorded, with a marker
    naming the drill). (what was deleted, what could not be done, whether a later try may do it:
    not with another provider, or one that cannot list its volumes)."""
    from snapctl.errors import SnapctlError

    tags = marker.get("restore_tags")
    if not isinstance(tags, dict) or not tags:
        return [], None, False  # a drill of an older snapctl: it recorded none
    tagged = ", ".join(f"{k}={v}" for k, v in tags.items())
    recorded = marker.get("provider")
    if provider is None or (recorded is not None and recorded != provider.name):
        return [], (f"did not look for the volumes it restored with the {recorded} provider (tagged {tagged}): "
                    f"the inventory's provider is {provider.name if provider else 'not open'}"), provider is None
    find = getattr(provider, "find_restored", None)
    if find is None:
        return [], (f"did not look for the volumes it restored (tagged {tagged}): the {provider.name} provider "
                    "cannot list them"), False
    deleted, failed = [], []
    try:
        for volume_id in find({str(k): str(v) for k, v in tags.items()}, _places(marker)):
            try:
                provider.delete_volume(volume_id)
                deleted.append(volume_id)
            except SnapctlError as exc:
                failed.append(f"{volume_id} ({exc.message})")
    except SnapctlError as exc:
        return deleted, f"could not look for the volumes it restored (tagged {tagged}): {exc.message}", True
    return deleted, (f"could not delete the volumes it restored: {'; '.join(failed)}" if failed else None), True


def _stop_engines(scratch: Path) -> tuple[list[str], list[str]]:
    """SIGKILL to the session of every scratch engine recorded in ``scratch`` that is provably
    still that engine; (stopped, could not be stopped). A pid now another process's is left alone."""
    stopped, unstoppable = [], []
    for pid_file in sorted((scratch / ".engines").glob(f"*/*{PID_SUFFIX}")):
        try:
            recorded = json.loads(pid_file.read_bytes())
            pid = int(recorded["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        name = f"{pid_file.name.removesuffix(PID_SUFFIX)} pid {pid}"
        if not _is_recorded_engine(pid, recorded, scratch):
            continue
        try:
            os.killpg(pid, signal.SIGKILL)  # its own session's group: what ScratchProcess.kill stops
        except ProcessLookupError:
            continue
        except OSError as exc:
            unstoppable.append(f"{name} ({os_reason(exc)})")
            continue
        deadline = time.monotonic() + _STOP_WAIT_S
        while _is_recorded_engine(pid, recorded, scratch) and time.monotonic() < deadline:
            time.sleep(0.05)  # a zombie's cwd is gone, so a reaped or dying engine no longer matches
        (unstoppable if _is_recorded_engine(pid, recorded, scratch) else stopped).append(name)
    return stopped, unstoppable


def _is_recorded_engine(pid: int, recorded: dict[str, Any], scratch: Path) -> bool:
    now = identity(pid)
    if now is None or (now["boot_id"], now["started"]) != (recorded.get("boot_id"), recorded.get("started")):
        return False
    try:
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    return cwd == scratch or scratch in cwd.parents


def _remove_scratch(scratch: Path) -> None:
    """Everything in it, the marker last: a removal cut short leaves the proof for the next try."""
    for child in scratch.iterdir():
        if child.name == MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            remove_tree(child)
        else:
            child.unlink(missing_ok=True)
    (scratch / MARKER).unlink(missing_ok=True)
    scratch.rmdir()


def _finish(catalog: Catalog, drill: AbandonedDrill, by: str) -> bool:
    """The record finished as abandoned, only if it is still as read; False: another cleaner won."""
    record = json.loads(drill.raw)
    record.update(finished_at=utc_text(datetime.now(UTC)), abandoned=True,
                  error=f"abandoned: its process {drill.owner} was gone before the drill finished; cleaned up by {by}",
                  hint=None)
    return catalog.store.replace(drill.key, json.dumps(record, indent=2).encode(), expected=drill.raw)


def _size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total

