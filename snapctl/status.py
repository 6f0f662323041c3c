"""`snapctl status`: every agent at once, one verdict, raft groups across nodes, the newest backups
against the RPO, and what a backup preflight would refuse on right now.

Fan-out is bounded per node (``policy.agent_timeout_s``): a dead or slow agent shows as
unreachable and never holds up the rest. The catalog's reads are bounded as a whole
(``catalog.status_timeout_s``): a store that never answers shows as unreadable.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from node_agent.models import RaftGroup
from snapctl.abandoned_runs import STOPPED, marked_stopped
from snapctl.agent_client import open_agents
from snapctl.catalog import open_catalog
from snapctl.catalog.catalog import CatalogLook
from snapctl.catalog.stores import check_catalog
from snapctl.config import Inventory
from snapctl.errors import BadInputError, CatalogError, ExitCode, SnapctlError, os_reason
from snapctl.health import Finding, NodeProbe, Verdict, assess, duration_text
from snapctl.left_holds import name_left_holds
from snapctl.manifest import IndexEntry
from snapctl.probe import probe_all
from snapctl.providers import (
    NodeVolumes,
    ProviderFactory,
    ProviderSettings,
    node_volumes,
    open_provider,
    provider_settings,
)
from snapctl.status_drills import DrillLook, drill_findings, look_at_drills

MIN_WATCH_S = 0.1  # 10 refreshes a second: half the agents' default rate limit per client and endpoint
STATUS_VERSION = 1  # of the JSON document (docs/status.schema.json): bumped on incompatible changes only


@dataclass(repr=False)
class ClusterStatus:
    cluster: str
    checked_at: datetime
    probes: list[NodeProbe]
    verdict: Verdict
    rpo_s: float
    latest_success: IndexEntry | None = None
    # Made with `backup --no-wait`, and no prune has found its snapshots complete since: it may yet
    # turn out to be no backup (prune asks the provider; status stays cheap and does not).
    latest_success_unconfirmed: bool = False
    latest_failure: IndexEntry | None = None
    catalog_problems: list[str] = field(default_factory=list)
    catalog_read: bool = True  # False: the runs could not be read, so the backups above are unknown
    preflight: list[Finding] = field(default_factory=list)  # what `snapctl backup` would refuse on now
    node_filter: list[str] = field(default_factory=list)
    group_filter: list[str] = field(default_factory=list)
    drills: DrillLook | None = None  # None: not read (the catalog could not be)
    drill_max_age_s: float | None = None

    def __repr__(self) -> str:
        # Short: asyncio.run formats its result into a discarded error on the way out (see
        # snapctl.runner), and the full repr of 1000 probes took ~35 ms each time.
        return f"ClusterStatus(cluster={self.cluster!r}, level={self.verdict.level!r}, nodes={len(self.probes)})"

    @property
    def exit_code(self) -> ExitCode:
        return {"healthy": ExitCode.OK, "degraded": ExitCode.DEGRADED, "critical": ExitCode.CRITICAL}[
            self.verdict.level
        ]

    @property
    def latest_success_age_s(self) -> float | None:
        """The age of the newest good backup's data, against the RPO: from its run's start, seconds
        before its holds. Not from its end: a wait of hours for the cloud to complete the snapshots
        made the data look hours younger than it was."""
        newest = self.latest_success
        if newest is None:
            return None
        return (self.checked_at - newest.started_at).total_seconds()


class SnapshotMemory:
    """When snapctl first saw each member's snapshot busy (SAVING/LOADING/DOWNLOADING).

    braft's raft_stat says a snapshot is SAVING but not since when, so a stuck one is measured
    across refreshes (``--watch``) and, with ``path``, across runs (cron). A snapshot counts as
    the same one while its member, status and last snapshot index stay the same."""

    def __init__(self, path: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        self._first_seen: dict[str, float] = self._load()
        self._seen: set[str] = set()

    def age(self, node: str, group: RaftGroup) -> float:
        key = json.dumps([node, group.group, group.member, group.snapshot_status, group.last_snapshot_index])
        now = self._clock()
        self._seen.add(key)
        return max(0.0, now - self._first_seen.setdefault(key, now))

    def commit(self, answered: set[str]) -> str | None:
        """Forget snapshots no longer busy on the nodes that ``answered``; save. A problem, or None."""
        self._first_seen = {k: v for k, v in self._first_seen.items()
                            if k in self._seen or json.loads(k)[0] not in answered}
        self._seen = set()
        if self.path is None or (not self._first_seen and not self.path.exists()):
            return None  # nothing busy, nothing remembered: leave no file behind
        from snapctl.metrics import write_atomically

        try:
            write_atomically(self.path, json.dumps(self._first_seen, indent=1))
        except OSError as exc:
            return f"cannot remember busy snapshots in {self.path}: {os_reason(exc)}"
        return None

    def _load(self) -> dict[str, float]:
        if self.path is None:
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # missing or torn: start measuring afresh
        return {k: float(v) for k, v in data.items() if isinstance(v, (int, float))} if isinstance(data, dict) else {}


def memory_path(cluster: str) -> Path:
    """Beside the default catalog, under $XDG_STATE_HOME/snapctl."""
    from snapctl.catalog.stores import default_catalog_dir

    return default_catalog_dir().parent / "status" / f"{cluster}.json"


async def collect_status(
    inventory: Inventory,
    *,
    nodes: list[str] | None = None,
    groups: list[str] | None = None,
    textfile: str | Path | None = None,
    memory: SnapshotMemory | None = None,
    remember: bool = False,
    refresh: bool = False,
) -> ClusterStatus:
    """One look at the cluster. ``nodes``: only these nodes; ``groups``: only raft groups matching
    these glob patterns; ``textfile``: also write node_exporter metrics there; ``remember``: keep
    busy-snapshot ages across runs (see ``SnapshotMemory``); ``refresh``: a later look of a
    ``--watch``, whose textfile path was checked at its start (now a textfile that cannot be
    written is a finding, never the end of the watch)."""
    # A provider block `snapctl backup` would refuse is bad input here too (exit 2), as any other
    # inventory error is: checked as backup does, but without its SDK, client or credentials.
    provider = provider_settings(inventory)
    inventory.check_engine_blocks()  # as backup checks them
    check_catalog(inventory)  # as every command opening the catalog does; what it cannot read stays a finding
    if textfile is not None and not refresh:
        from snapctl.metrics import check_textfile_path

        check_textfile_path(textfile)
    if memory is None and remember:
        memory = SnapshotMemory(memory_path(inventory.cluster))
    selected = inventory if not nodes else inventory.model_copy(update={"nodes": inventory.select(nodes)})
    async with open_agents(selected) as agents:
        probes = await probe_all(agents, inventory.policy.agent_timeout_s)
    age = memory.age if memory else None
    verdict = assess(inventory, probes, snapshot_age=age)
    preflight = assess(inventory, probes, for_backup=True, snapshot_age=age).at_least("critical")
    if groups:
        _only_groups(verdict, groups)
        preflight = [f for f in preflight if not f.subject.startswith("raft group ")
                     or any(f.subject == f"raft group {g.group}" for g in verdict.groups)]
    result = ClusterStatus(inventory.cluster, datetime.now(UTC), probes, verdict, inventory.rpo,
                           preflight=preflight, node_filter=list(nodes or []), group_filter=list(groups or []),
                           drill_max_age_s=inventory.drill.max_age_s)
    if memory is not None:
        problem = memory.commit({p.node for p in probes if p.status is not None})
        if problem:
            verdict.findings.append(Finding("info", "status", problem))
    from snapctl.preflight import misplaced_data, uncovered_data

    refusal, volumes = _backup_volumes(inventory, provider)
    if refusal is not None:
        result.preflight.append(Finding("critical", "inventory", refusal.message, forceable=False, hint=refusal.hint))
        # An inventory that lists no volumes at all only watches the agents: not being able to back
        # up is its design. One that lists some is meant for backups, each of which exits 2 on this.
        if any(node.volumes for node in inventory.nodes):
            verdict.findings.append(Finding("degraded", "inventory", f"a backup now would be refused: {refusal.message}",
                                            hint=refusal.hint))
    else:  # as the backup's preflight does: a database outside its node's volumes would not be in the snapshot
        uncovered = uncovered_data(inventory, probes, volumes)
        result.preflight += uncovered
        # Every backup is refused on it, and no cluster state clears it: a cron job of `status`
        # must hear of it, as it hears of a catalog no run could write.
        verdict.findings += [replace(f, severity="degraded") for f in uncovered]
    verdict.findings += misplaced_data(inventory, probes)
    look, drills = await _look_in_time(inventory)
    result.catalog_problems, result.catalog_read = look.problems, look.entries is not None
    # Runs that cannot be read: every backup fails on it (exit 1), and how old the newest is nobody
    # can tell, so critical, as an agent that does not answer is. The other obstacles (the lock, a
    # directory this user may not write) stay degraded: status often runs as a monitoring user
    # whose permissions are not the backup's.
    unread = "degraded" if result.catalog_read else "critical"
    for obstacle in look.obstacles:  # what the run would fail on is what makes backing up unsafe
        verdict.findings.append(Finding(unread, "catalog", obstacle.message, hint=obstacle.hint))
    for problem in result.catalog_problems:  # a backup whose record is damaged cannot be restored
        verdict.findings.append(Finding("degraded", "catalog", f"unreadable manifest: {problem}"))
    from snapctl.preflight import catalog_refusals, holder_hint

    if (running := look.holder(result.checked_at)) is not None:
        verdict.findings.append(Finding("info", "backups", running, hint=holder_hint(look, result.checked_at)))
    result.preflight += catalog_refusals(look, result.checked_at)
    entries = look.entries or []
    verdict.findings = name_left_holds(verdict.findings, probes, entries)
    result.preflight = name_left_holds(result.preflight, probes, entries)
    for stopped in (e for e in entries if e.status == "running" and e.error == STOPPED):
        verdict.findings.append(Finding("degraded", "backups", f"run {stopped.run_id} {STOPPED}",
                                        hint="`snapctl prune` or `snapctl gc --delete` closes it now, as the next "
                                             "backup would: as a backup if it took every snapshot, else as failed"))
    result.latest_success = next((e for e in entries if e.status == "succeeded"), None)
    newest = result.latest_success
    result.latest_success_unconfirmed = newest is not None and newest.run_id in look.unconfirmed
    # A dead run is the newest run as much as a failed one: naming an older failure instead misled.
    result.latest_failure = next((e for e in entries if e.status == "failed" or e.error == STOPPED), None)
    _grade_backups(result, look.missing)
    if isinstance(drills, DrillLook):
        result.drills = drills
        verdict.findings += drill_findings(inventory, drills, result.checked_at)
    elif drills is not None:
        verdict.findings.append(Finding("degraded", "drills", f"cannot read the restore drills' records: {drills}"))
    if textfile is not None:
        from snapctl.metrics import status_textfile, write_textfile

        try:
            write_textfile(textfile, status_textfile(result))
        except SnapctlError as exc:
            verdict.findings.append(Finding("degraded", "metrics", exc.message))
    return result


def _backup_volumes(inventory: Inventory, provider: tuple[ProviderFactory, ProviderSettings]
                    ) -> tuple[BadInputError | None, dict[str, NodeVolumes]]:
    """The nodes' volumes as `snapctl backup` would see them, or what it would refuse in the
    provider's own checks of the store and the volumes (exit 2), which need no SDK: not an error
    here, where an inventory that only watches the agents may leave volumes out, but then not safe
    to back up either."""
    try:
        return None, node_volumes(inventory, open_provider(inventory, provider))
    except BadInputError as exc:
        return exc, {}


async def watch_status(
    inventory: Inventory,
    interval_s: float,
    show: Callable[[ClusterStatus], None],
    *,
    nodes: list[str] | None = None,
    groups: list[str] | None = None,
    textfile: str | Path | None = None,
    remember: bool = False,
    refreshes: int | None = None,
) -> ClusterStatus:
    """``collect_status`` every ``interval_s`` seconds, handing each result to ``show``; until
    interrupted, or ``refreshes`` times. Returns the last status."""
    if not 0 < interval_s < float("inf"):  # NaN too: it asked every agent again at once, for ever
        raise BadInputError(f"--watch {interval_s:g}: the interval must be a number of seconds more than zero",
                            hint="e.g. --watch 5, or a bare --watch for every 2 seconds")
    if interval_s < MIN_WATCH_S:  # each refresh asks every agent: faster trips their rate limit (429)
        raise BadInputError(f"--watch {interval_s:g}: at least {MIN_WATCH_S:g}s between refreshes, each of which "
                            "asks every agent (faster, the agents' rate limit answers 429 and every node reads "
                            "critical)", hint="e.g. --watch 5, or a bare --watch for every 2 seconds")
    memory = SnapshotMemory(memory_path(inventory.cluster) if remember else None)
    done = 0
    while True:
        started = time.monotonic()
        status = await collect_status(inventory, nodes=nodes, groups=groups, textfile=textfile, memory=memory,
                                      refresh=done > 0)
        show(status)
        done += 1
        if refreshes is not None and done >= refreshes:
            return status
        await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))


Looked = tuple[CatalogLook, "DrillLook | str | None"]  # the drills, or why they could not be read


async def _look_in_time(inventory: Inventory) -> Looked:
    """``_look_at_catalog`` within one deadline for all its reads. An S3 catalog that accepts and
    never answers took each call 30 s, 5 times over (5 minutes a status): a cron job's next status
    overlapped it, and a `--watch` froze. Past the deadline the look is left to its daemon thread,
    which the command's exit does not wait for (a pool's thread it would)."""
    deadline_s = inventory.catalog.status_timeout_s
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[Looked] = loop.create_future()

    def settle(look: Looked | None, exc: BaseException | None) -> None:
        if answer.done():
            return
        if exc is not None:
            answer.set_exception(exc)
        else:
            answer.set_result(look)  # type: ignore[arg-type]

    def look() -> None:
        try:
            found, failed = _look_at_catalog(inventory), None
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting coroutine, raised there
            found, failed = None, exc
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, found, failed)

    hint = ("check catalog.endpoint_url, the network and the store's health; a store that is only slow "
            "needs a longer catalog.status_timeout_s")
    earlier = _unanswered.get(inventory.cluster)
    if earlier is not None and earlier[0].is_alive():  # a --watch: one stuck thread, not one a refresh
        return CatalogLook(obstacles=[CatalogError(
            f"cannot read the catalog: an earlier look has not answered for "
            f"{duration_text(time.monotonic() - earlier[1])}", hint=hint)]), None
    thread = threading.Thread(target=look, name="snapctl-status-catalog", daemon=True)
    thread.start()
    try:
        return await asyncio.wait_for(answer, deadline_s)
    except TimeoutError:
        _unanswered[inventory.cluster] = (thread, time.monotonic() - deadline_s)
        return CatalogLook(obstacles=[CatalogError(
            f"cannot read the catalog: it did not answer within {duration_text(deadline_s)} "
            "(catalog.status_timeout_s)", hint=hint)]), None


# By cluster: a look past its deadline, still waiting on the catalog, and when it began.
_unanswered: dict[str, tuple[threading.Thread, float]] = {}


def _look_at_catalog(inventory: Inventory) -> Looked:
    try:
        catalog = open_catalog(inventory)
    except SnapctlError as exc:
        return CatalogLook(obstacles=[CatalogError(f"cannot read the catalog: {exc.message}", hint=exc.hint)]), None
    look = catalog.look()
    if look.entries is None:
        return look, None
    if look.lock is not None or not look.obstacles:  # an unreadable lock proves nothing
        look.entries = marked_stopped(catalog, look.entries, look.lock)
    try:
        return look, look_at_drills(catalog)
    except SnapctlError as exc:
        return look, exc.message


def _only_groups(verdict: Verdict, patterns: list[str]) -> None:
    """Keep the raft groups matching any pattern (and their findings); node findings all stay."""
    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    seen = [g.group for g in verdict.groups]
    verdict.groups = [g for g in verdict.groups if wanted(g.group)]
    kept = {f"raft group {g.group}" for g in verdict.groups}
    verdict.findings = [f for f in verdict.findings if not f.subject.startswith("raft group ") or f.subject in kept]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in seen):
            shown = ", ".join(seen[:10]) + (", ..." if len(seen) > 10 else "") if seen else "none"
            verdict.findings.append(Finding("critical", "raft groups",
                                            f"no raft group matches --group {pattern!r} (groups seen: {shown})"))


FUTURE_TOLERANCE_S = 60.0  # how far in the future a run may have started (clocks a little apart) unremarked


def _grade_backups(result: ClusterStatus, missing: str | None = None) -> None:
    """``missing``: where the catalog was looked for, when its directory does not exist."""
    if not result.catalog_read:
        return  # how old the newest backup is, nobody can tell: the catalog finding says why
    add = result.verdict.findings.append
    newest, age = result.latest_success, result.latest_success_age_s
    if (newest is None or age is None) and result.catalog_problems:  # one may be among them
        add(Finding("degraded", "backups", "no readable successful backup (see the unreadable manifests)"))
    elif newest is None or age is None:
        add(Finding("degraded", "backups", "no successful backup yet" + (
            f": the catalog at {missing} does not exist (a first backup makes it; else check catalog.path, and "
            "that its share is mounted)" if missing else "")))
    elif age < -FUTURE_TOLERANCE_S:  # its age, and so the RPO, cannot be judged: a clock is wrong
        add(Finding("degraded", "backups",
                    f"newest successful backup {newest.run_id} started {duration_text(-age)} in the future by this "
                    "host's clock, so the RPO cannot be checked: the clock of the host that ran it was ahead, or "
                    "this host's is behind (NTP)"))
    elif age > result.rpo_s:
        add(Finding("critical", "backups",
                    f"newest successful backup {newest.run_id} is {duration_text(age)} old, over the RPO of "
                    f"{duration_text(result.rpo_s)}"))
    failure = result.latest_failure
    if failure is not None and failure.status == "failed" and (newest is None or failure.started_at > newest.started_at):
        add(Finding("info", "backups", f"the newest run {failure.run_id} failed: {failure.error or 'no reason recorded'}"))
