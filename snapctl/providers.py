"""The provider contract: disk snapshots on a cloud or the local filesystem.

Providers are discovered through the ``snapctl.providers`` entry-point group (built-ins too).
An entry point names a ``ProviderFactory``: usually the provider class itself. A provider's SDK
is imported inside the provider, lazily, when first used: never at module import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache, reduce
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from snapctl.errors import BadInputError
from snapctl.timestamps import TimeText

if TYPE_CHECKING:
    from snapctl.config import Inventory

# Tag keys every snapshot carries; `find`, `prune` and `gc` rely on them.
TAG_CLUSTER = "snapctl-cluster"
TAG_RUN = "snapctl-run"
TAG_NODE = "snapctl-node"
TAG_VOLUME = "snapctl-volume"
TAG_VERSION = "snapctl-version"
SNAPSHOT_OWN_TAGS = 5  # those five: what a cloud's per-snapshot tag limit must leave room for
# On a volume a drill restores (RestoreTarget.tags): the drill's id, by which the cleanup after a
# drill killed outright finds what it made (``find_restored``) and deletes nothing else.
TAG_DRILL = "snapctl-drill"
# On a volume (disk) restore makes: the snapshot it came from, which `find` then tells from the
# run's own when a snapshot of it copies its tags; the run of that snapshot (aws); its
# CreateVolume's ClientToken, by which a create whose answer was lost finds it (aws); the instance
# restore attached it to, what its teardown may detach it from (gcp, azure).
TAG_RESTORED_FROM = "snapctl-restored-from"
TAG_RESTORED_RUN = "snapctl-restored-run"
TAG_RESTORE_TOKEN = "snapctl-restore-token"
TAG_ATTACHED_TO = "snapctl-attached-to"
# Every tag key snapctl writes or reads, the plugins' too. The inventory's `tags:` may use none of
# them, in any case (Azure's tag names ignore it): one on every snapshot (snapctl-restored-from)
# made find() skip every snapshot of every run.
OWN_TAG_KEYS = frozenset({TAG_CLUSTER, TAG_RUN, TAG_NODE, TAG_VOLUME, TAG_VERSION, TAG_DRILL, TAG_RESTORED_FROM,
                          TAG_RESTORED_RUN, TAG_RESTORE_TOKEN, TAG_ATTACHED_TO})

# A snapshot gone, damaged, failed or being deleted, in every provider: what its restore says to do.
GONE_HINT = "restore another run (`snapctl list`); `snapctl verify RUN` checks a run's snapshots without restoring"
BEING_DELETED = "the snapshot is being deleted"

SnapshotState = Literal["pending", "completed", "error"]


class SnapshotRef(BaseModel):
    """One disk snapshot as the catalog records it."""

    model_config = ConfigDict(extra="forbid")

    provider: str
    snapshot_id: str
    node: str
    volume: str
    state: SnapshotState = "pending"
    progress: float | None = None  # 0..100 when known
    bytes: int | None = None
    created_at: TimeText | None = None  # as snapctl writes times, whatever form the cloud answered in
    tags: dict[str, str] = Field(default_factory=dict)
    error: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    """What a provider can promise; the orchestrator and docs report these."""

    crash_consistent_group: bool = False  # all volumes of one node at one instant
    incremental: bool = False
    instant: bool = False  # content fixed and complete when snapshot() returns
    max_creates_per_s: float | None = None  # sustained create rate the provider allows
    create_burst: int | None = None


@dataclass
class NodeVolumes:
    """A node's volumes as the inventory describes them, after the provider validated them."""

    node: str
    volumes: list[Any]  # the provider's own validated volume models
    # The volumes as directories of this host, when they are (the local provider): the preflight
    # then checks that the engine's data lies inside them. None for disks of a cloud.
    directories: list[Path] | None = None


@dataclass
class RestoreTarget:
    """Where a restore goes. Local: ``path``. Cloud: zone, and optionally an instance to attach to."""

    path: Path | None = None
    zone: str | None = None
    instance: str | None = None
    device: str | None = None
    name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)  # the made volume carries them too (a drill's TAG_DRILL)


@dataclass
class Leftover:
    """Something in a provider's store that is no snapshot: the work of a call that died part-way
    (the local provider's hidden ``.partial-*`` copy or ``.deleting-*`` removal after a SIGKILL
    or a second Ctrl-C). `snapctl gc` lists them and ``--delete`` removes them."""

    node: str
    path: str
    kind: Literal["partial", "deleting"]  # a snapshot being made, or one being deleted
    bytes: int | None = None  # what removing it frees (files no snapshot shares), when known


ProgressFn = Callable[[SnapshotRef], None]


@runtime_checkable
class Provider(Protocol):
    """Disk snapshots for one cluster on one provider.

    Every call is bounded in time, backs off on throttling (honouring Retry-After), and turns
    SDK errors into ``ProviderError`` with a hint (a missing permission names the permission):
    ``ProviderThrottled`` when the cloud still says "slow down" after the retries,
    ``ProviderUnreachable`` when it gave no answer at all (refused, dropped, timed out) and
    ``ProviderUnavailable`` when it answered with a server error (5xx), both of which a backup's
    wait rides out until its deadline. A snapshot whose own state says it failed is neither.
    Methods may be called from several threads at once, and ``snapshot`` from another process
    (``policy.provider_process``: a child builds its own provider from the same settings), so
    state lives where every process sees it (the cloud, the filesystem), and a snapshot's
    arguments, refs and errors pickle.

    Optional: a class attribute ``sdk_modules``, the modules ``warm_up`` imports. When the calls
    run in several worker processes, the first imports these once and then forks the others, so
    that each does not import the SDK again (google-cloud-compute's import is ~1.6 s of CPU).
    Only modules that start no thread and open nothing when imported belong there.

    Optional, for a provider whose SDK has an async client: ``async def snapshot_async(volumes,
    tags)``, the contract of ``snapshot`` awaited on snapctl's event loop, so that a backup's N
    create calls need no thread each (with ``policy.provider_process: auto``, the default: below 50
    calls on snapctl's own loop, ``snapctl.provider_loop``; from 50 on a loop in each of the
    provider worker's processes, ``snapctl.provider_child``). It must never block the loop: no blocking call, no ``time.sleep`` (a
    token bucket is waited on with ``reserve`` and ``asyncio.sleep``); on a partial failure it
    deletes what it created (a blocking delete in ``asyncio.to_thread`` is fine). With it, optional:
    ``async def warm_up_async()``, awaited on that loop after ``warm_up`` and before any hold, to
    build the async client and get a token (what the first create call would otherwise do); and
    ``async def aclose()``, awaited once at the end of the run to close that client. A call
    without ``warm_up_async`` having run must still work. And a class attribute
    ``sdk_async_modules``: what ``warm_up_async`` imports, imported once before the worker's
    first process forks the others, as ``sdk_modules`` are, when they make the async calls.

    Optional: ``create_bucket``, the ``snapctl.ratelimit.TokenBucket`` its create calls take a
    token from (each call one), paused on the cloud's Retry-After: a per-node run whose calls this
    provider object makes (not the provider worker's) waits it out before holding the next node.

    Optional: a method ``check_restore(ref, target)`` that raises what ``restore`` would refuse
    (``BadInputError`` for an unusable target, a restore option it does not take among them:
    ``check_restore_options``; ``ProviderError`` for an unusable snapshot) and makes nothing.
    `snapctl restore` calls it for every volume of the run before restoring any.
    Optional with it: ``check_restore_space(planned)``, given every (ref, target) of the restore
    once each passed ``check_restore``: ``BadInputError`` when a place the restore writes to lacks
    room for what goes there (local: a filesystem, for all the volumes restored onto it).
    Optional, for a provider that restores into directories: ``restore_contents(ref) -> Path``,
    the directory on this machine that ``restore`` copies to the target as it is, links as links
    (local: the snapshot's data). A restore or drill reads the links in it before copying anything
    (one that leads the engine's data off the restored volumes is refused); without it, only once
    the node's volumes are restored, and what was restored for that node is removed again.

    Optional: ``find_restored(tags, places) -> list[str]``, the ids (as ``restore`` returned them)
    of the volumes ``restore`` made carrying all of ``tags`` (``RestoreTarget.tags``) and this
    cluster's tag, including one whose restore was cut short; ``places``: the target paths that
    restore may have used, for a provider that cannot list its volumes (local: the directories,
    found by the marker beside each). A drill's teardown deletes those no restore returned (one
    that failed part-way), and the cleanup after a drill killed outright all of them, with
    ``delete_volume``; without it, that cleanup says it cannot find them.

    Optional: ``find_leftovers() -> list[Leftover]``, the work of calls that died part-way and is
    no snapshot (never that of a call still running), and ``delete_leftover(leftover)``, which
    removes one (gone counts as done; one a call is now using raises ``ProviderError``). `snapctl
    gc` lists them with the orphaned snapshots and removes them with ``--delete``.

    Optional: ``missing_store() -> str | None``, where the provider keeps its snapshots when that
    place does not exist (local: ``provider.store``'s directory), else None. `snapctl gc` refuses
    to judge orphans then: an empty listing there says nothing about the cluster's snapshots.

    Optional: ``complete(refs, deadline) -> list[SnapshotRef]``, on a provider whose pending
    snapshots nothing completes unless it is asked to (local: after `backup --no-wait` only an
    fsync puts a copy on disk for sure): complete each of ``refs`` now and return them as they are
    then. One that cannot be completed (in error, gone, its fsync failed, which fails it for good,
    or ``deadline``, time.monotonic(), passed) raises ``ProviderError``. Retention calls it for a
    `--no-wait` run it would otherwise not count (never on a dry run), and a backup, before it holds
    any node, for the newest backup's snapshots when that run did not wait for them (they are
    what the local provider links unchanged files from). A cloud's snapshot completes on its
    own: without ``complete``, a pending one is simply not counted yet.

    Optional: ``after_release(refs)``, work on a run's snapshots that needs no engine hold and would
    lengthen every freeze inside ``snapshot`` (aws: the volume tag of each snapshot of a whole
    instance, a tag call apiece). A backup calls it once, with every ref of the run, after every
    node is released and the manifest recorded, ``--no-wait`` or not, in a thread. Best effort:
    what it raises is a warning, never a failed run (it should log what it could not do itself),
    and what it would have done may be missing if the run is stopped or dies first.

    Optional: a class attribute ``restore_makes_cloud_volumes = True`` when ``restore`` makes cloud
    volumes rather than directories on this machine: a drill then refuses a node without
    ``restore.agent`` and ``restore.instance`` before it restores anything, and `restore` takes
    ``--zone`` and ``--attach`` (without it, both are refused as the cloud providers' flags).

    Optional: a class attribute ``restore_place_optional = True`` when ``restore`` has a default
    place for a target with neither ``path`` nor ``zone`` (gcp: the source disk's zone); without
    it, ``snapctl restore`` refuses such a node up front, before anything is restored.
    """

    name: str
    capabilities: Capabilities

    def validate_volumes(self, node: str, raw: list[Any], *, base_dir: Path) -> NodeVolumes:
        """Check a node's ``volumes:`` block; raise ``BadInputError`` saying what is wrong."""
        ...

    def warm_up(self) -> None:
        """Do now whatever one-time work the first ``snapshot`` call would otherwise do: import the
        SDK, build its client, find the credentials. A backup calls it before any node is held (and
        in the process that will make the calls), so that no freeze window pays for it; a failure
        here (say, no credentials) stops the run before anything is held. Change nothing in the
        cloud; calling it again does nothing."""
        ...

    def snapshot(self, volumes: NodeVolumes, tags: Mapping[str, str]) -> list[SnapshotRef]:
        """Start snapshots of all of the node's volumes and return as soon as their point in time
        is fixed (the cloud accepted the create call), one ref per volume, every snapshot carrying
        ``tags`` plus ``snapctl-volume`` with its volume's name. On a partial failure, delete what this call created before raising."""
        ...

    def wait(self, refs: list[SnapshotRef], deadline: float, progress: ProgressFn | None = None) -> list[SnapshotRef]:
        """Poll until every snapshot is completed (returned refs are updated) or one ends in error
        (raise ``ProviderError`` with the cloud's message) or ``deadline`` (time.monotonic()) passes."""
        ...

    def delete(self, ref: SnapshotRef) -> None:
        """Delete one snapshot. Not found counts as done. Refuse (``ProviderError``) a snapshot
        that does not carry this cluster's ``snapctl-cluster`` tag."""
        ...

    def find(self, tags: Mapping[str, str]) -> list[SnapshotRef]:
        """Every snapshot carrying all of ``tags`` (always scoped to this cluster)."""
        ...

    def describe(self, refs: Sequence[SnapshotRef]) -> list[SnapshotRef]:
        """Each of ``refs`` that still exists, looked up by its ``snapshot_id`` whatever its tags
        now, as it is now: state, progress, bytes, and its tags as ``find`` matches them (a tag an
        operator or a policy removed or changed is not there). Those gone are left out."""
        ...

    def restore(self, ref: SnapshotRef, target: RestoreTarget) -> str:
        """Make a new volume (or directory) from ``ref`` at ``target``; return its id or path.
        Once ``stop_requested()`` (read in the calling thread) is set, a long restore should give
        up part-way, remove what it made and raise ``Interrupted``: a drill's Ctrl-C or SIGTERM."""
        ...

    def delete_volume(self, volume_id: str) -> None:
        """Delete a volume (disk, directory) that ``restore`` made, given the id or path it
        returned: what a drill's teardown calls. If restore attached it to an instance, detach it
        first. Not found counts as done. Refuse (``ProviderError``) a volume that does not carry
        this cluster's ``snapctl-cluster`` tag (restore puts it there, from the snapshot's tags)."""
        ...


_stop: ContextVar[threading.Event | None] = ContextVar("snapctl_restore_stop", default=None)


@contextmanager
def stoppable_by(event: threading.Event) -> Iterator[None]:
    """Within it, in this thread, ``stop_requested()`` is ``event``. ``KeyboardInterrupt`` reaches
    the main thread only; a drill restores its nodes in threads of its own and sets ``event`` when
    it is interrupted, so that a long copy stops instead of finishing first (a CI job's grace
    period before SIGKILL may be shorter)."""
    token = _stop.set(event)
    try:
        yield
    finally:
        _stop.reset(token)


def stop_requested() -> threading.Event | None:
    """What tells this thread's restore to stop part-way (``stoppable_by``), if anything. A provider
    reads it in the calling thread and hands it to the threads it starts."""
    return _stop.get()


class ProviderSettings(BaseModel):
    """Base for each provider's ``provider:`` block; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid")

    type: str

    def check_inventory_tags(self, tags: Mapping[str, str]) -> None:
        """Raise ``BadInputError`` (naming the key or the count, the limit, and a hint) when a
        snapshot carrying ``tags``, the inventory's `tags:`, with this block's own would be refused
        by the cloud: its limits and key rules hold for the two together, with room left for
        snapctl's own tags. snapctl's own keys (``OWN_TAG_KEYS``, in any case) never get here (the
        inventory refuses them); other keys starting with ``snapctl-`` do, and pass as any key.
        Called when the inventory's provider block is checked, before anything is held."""

    def check_tag_room(self, count: int, cloud_max: int, cloud: str, *, noun: str = "tags",
                       theirs: str = "the provider's") -> None:
        """For ``check_inventory_tags``: ``count`` tags (the inventory's and ``theirs`` together)
        fit beside snapctl's own on a snapshot the cloud takes at most ``cloud_max`` of."""
        room = cloud_max - SNAPSHOT_OWN_TAGS
        if count > room:
            raise BadInputError(
                f"provider {self.type}: the inventory's tags and {theirs} make {count} {noun} on every snapshot, "
                f"more than the {room} {cloud} has room for ({cloud_max} per snapshot, snapctl's own take "
                f"{SNAPSHOT_OWN_TAGS})", hint=f"remove {count - room} of them, or put several into one tag's value")


class ProviderFactory(Protocol):
    settings_model: type[ProviderSettings]

    def __call__(self, settings: Any, *, cluster: str, base_dir: Path) -> Provider: ...


@cache
def available_providers() -> dict[str, Any]:
    from importlib.metadata import entry_points  # scanning every installed package: only when asked

    return {ep.name: ep for ep in entry_points(group="snapctl.providers")}


def provider_factory_path(provider_type: str) -> str:
    """Where ``provider_type``'s factory lives, as ``module:attribute``: what its entry point names."""
    eps = available_providers()
    if provider_type not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise BadInputError(
            f"unknown provider type {provider_type!r}",
            hint=f"installed providers: {known}; cloud providers install from plugins/ (README)",
        )
    return f"{eps[provider_type].module}:{eps[provider_type].attr}"


def load_provider_factory(provider_type: str) -> ProviderFactory:
    return import_factory(provider_factory_path(provider_type))


def import_factory(path: str) -> ProviderFactory:
    module, _, attribute = path.partition(":")
    return reduce(getattr, attribute.split("."), import_module(module))


def create_provider(raw: Mapping[str, Any], *, cluster: str, base_dir: Path,
                    factory: ProviderFactory | None = None) -> Provider:
    """The provider ``raw`` (an inventory's provider block) describes; ``factory`` if the caller
    already has it (a provider worker process is told where it is, rather than scan for it)."""
    provider_type = raw.get("type")
    if not isinstance(provider_type, str):
        raise BadInputError("the provider block needs a 'type'", hint="e.g. type: local")
    factory = factory or load_provider_factory(provider_type)
    try:
        settings = factory.settings_model.model_validate(dict(raw))
    except ValidationError as exc:
        from node_agent.engines.base import describe_validation_error

        raise BadInputError(f"provider {provider_type}: {describe_validation_error(exc, factory.settings_model)}") from exc
    return factory(settings, cluster=cluster, base_dir=base_dir)


def provider_settings(inventory: Inventory) -> tuple[ProviderFactory, ProviderSettings]:
    """The inventory's provider factory and its validated ``provider:`` block; errors name file:line.
    Imports the provider's module, not its SDK: what `snapctl status` checks as well."""
    factory, settings = inventory.plugin_block(inventory.provider, ("provider",), load_provider_factory,
                                               example="type: local")
    # Every snapshot carries the inventory's tags with the provider's own: tags the cloud refuses
    # would fail every backup inside its hold, so they are refused here, as the provider's are.
    check = getattr(settings, "check_inventory_tags", None)  # a plugin's model need not derive from ProviderSettings
    if inventory.tags and check is not None:
        try:
            check(inventory.tags)
        except BadInputError as exc:
            raise inventory.located(exc, "tags") from exc
    return factory, settings


def open_provider(inventory: Inventory, checked: tuple[ProviderFactory, ProviderSettings] | None = None) -> Provider:
    """The provider the inventory describes; a problem with its block names file:line.
    ``checked``: what ``provider_settings`` already returned for it."""
    factory, settings = checked or provider_settings(inventory)
    try:
        return factory(settings, cluster=inventory.cluster, base_dir=inventory.base_dir)
    except BadInputError as exc:  # settings the model alone cannot judge (local: a store that is a file)
        raise inventory.located(exc, "provider") from exc


def node_volumes(inventory: Inventory, provider: Provider,
                 names: Collection[str] | None = None) -> dict[str, NodeVolumes]:
    """Every node's ``volumes:`` (of ``names``, if given) as the provider validates them; a problem
    names file:line."""
    return {node.name: _node_volumes(inventory, provider, node.name, node.volumes) for node in inventory.nodes
            if names is None or node.name in names}


def _node_volumes(inventory: Inventory, provider: Provider, node: str, raw: list[Any]) -> NodeVolumes:
    try:
        return provider.validate_volumes(node, raw, base_dir=inventory.base_dir)
    except BadInputError as exc:
        loc = (*inventory.node_loc(node), "volumes")
        # The provider's message names the entry its own way; the line is that of the first entry
        # whose addition makes the list fail (validate_volumes only reads), else the list's.
        for count in range(1, len(raw) + 1):
            try:
                provider.validate_volumes(node, raw[:count], base_dir=inventory.base_dir)
            except BadInputError:
                loc = (*loc, count - 1)
                break
        raise inventory.located(exc, *loc) from exc


def discard_partial_snapshots(provider: Provider, node: str, created: list[SnapshotRef], tags: Mapping[str, str]) -> None:
    """Best effort, after a node's ``snapshot()`` call failed: delete what the call made, then
    anything tagged with this run and node (a create whose answer was lost, or one an SDK retried
    after a timeout). Safe because a run snapshots each node in exactly one call. Never raises:
    the original failure is what the caller reports."""
    import logging

    log = logging.getLogger(f"snapctl.providers.{provider.name}")
    leftovers = {ref.snapshot_id: ref for ref in created}
    if tags.get(TAG_RUN):
        try:
            for ref in provider.find({TAG_RUN: tags[TAG_RUN], TAG_NODE: tags.get(TAG_NODE, node)}):
                leftovers.setdefault(ref.snapshot_id, ref)
        except Exception as exc:  # noqa: BLE001 - the original error matters more than this one
            log.warning("node %s: could not look for leftover snapshots: %s", node, exc)
    for ref in leftovers.values():
        try:
            provider.delete(ref)
        except Exception as exc:  # noqa: BLE001
            log.warning("node %s: could not delete snapshot %s after a failed snapshot call: %s",
                        node, ref.snapshot_id, exc)


def discard_restored_volume(provider: Provider, volume_id: str) -> None:
    """Best effort, after a restore failed once it asked for the volume (its create, or its
    attach): delete the volume; one never made is found gone. Never raises: the restore's own
    error is the one the caller reports, and the warning names what is left."""
    import logging

    try:
        provider.delete_volume(volume_id)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger(f"snapctl.providers.{provider.name}").warning(
            "could not delete half-restored volume %s: %s", volume_id, exc)


def check_restore_options(provider: str, node: str, options: Mapping[str, Any], valid: Sequence[str]) -> None:
    """Refuse a restore option (``RestoreTarget.extra``: the node's `restore.options`) that
    ``provider`` does not take, before anything is made: a key mistyped (``disk_typ``) would
    otherwise restore with the default it meant to change, without a word."""
    unknown = sorted(str(key) for key in options if key not in valid)
    if unknown:
        who = f"node {node}: " if node else ""
        raise BadInputError(f"{who}unknown restore option(s) for {provider}: {', '.join(unknown)}",
                            hint=f"valid: {', '.join(valid)}" if valid else
                            f"{provider} takes no restore options: remove restore.options from the node")


def check_cluster_tag(cluster: str, node: str, tags: Mapping[str, str]) -> None:
    """Refuse tags naming another cluster: a provider only makes snapshots for the one it serves,
    so its tag-guarded deletes and `snapctl gc` never reach another cluster's."""
    tagged = tags.get(TAG_CLUSTER)
    if tagged is not None and tagged != cluster:
        raise BadInputError(f"node {node}: tags name cluster {tagged!r} but this provider serves {cluster!r}")


def snapshot_tags(
    cluster: str, run_id: str, node: str, volume: str | None = None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The tags of one run's snapshots on one node; the provider adds ``snapctl-volume`` when None."""
    from snapctl import __version__

    tags = dict(extra or {})
    tags.update({TAG_CLUSTER: cluster, TAG_RUN: run_id, TAG_NODE: node, TAG_VERSION: __version__})
    if volume is not None:
        tags[TAG_VOLUME] = volume
    return tags
