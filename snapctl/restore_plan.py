"""`snapctl restore --dry-run`: every check `snapctl restore` makes before it restores anything
(the same code, ``checked_run``), then the plan it would carry out, with nothing restored: no
record in the catalog, no directory, no volume made. Its run lookup is every read command's
(``Catalog.resolve``), which may rewrite a stale ``index.json`` and create a local catalog's
``.lock``: a repair of what the catalog already says, not the restore's. The cloud providers'
``check_restore`` only reads (each snapshot, the instance to attach to); it is also where their
credentials are first used, as in the restore, which has no warm-up of its own to repeat."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from snapctl.catalog import open_catalog
from snapctl.errors import CatalogError
from snapctl.events import NullReporter, Reporter
from snapctl.manifest import IndexEntry
from snapctl.restore import (
    checked_run,
    needs_its_server,
    prepare_plan,
    record_refused,
    restore_target,
    target_text,
)


@dataclass
class PlannedVolume:
    volume: str
    snapshot_id: str
    path: str | None = None  # local: the directory it would be copied into
    zone: str | None = None  # cloud: where the new volume would be made; None: the provider's default
    instance: str | None = None  # cloud, --attach: the node's restore.instance
    device: str | None = None  # ... and the device (aws), device name (gcp) or lun (azure) given for it


@dataclass
class PlannedNode:
    node: str
    volumes: list[PlannedVolume] = field(default_factory=list)
    prepared: str | None = None  # who would restore-prepare: "in-process" or the scratch agent's address
    engine: str | None = None  # the engine's type, restore-prepared in-process
    note: str | None = None  # what else the restore would say of the node (why not prepared, not verified)


@dataclass
class RestorePlan:
    """What `snapctl restore --dry-run` reports: the restore would go ahead, and would do this."""

    cluster: str
    provider: str
    run_id: str
    target: str
    record: str | None  # the catalog directory the restore would put its record in; None with --no-record
    # True: the catalog was judged to take the record (a local one); False: not checked (S3 tells
    # only by a real write), or --no-record.
    record_checked: bool = False
    nodes: list[PlannedNode] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what the restore would warn of (newer runs passed over)
    dry_run: bool = True


def plan_restore(inventory, run_ref: str, to: Path | None = None, *, zone: str | None = None, attach: bool = False,
                 record_it: bool = True, reporter: Reporter | None = None) -> RestorePlan:
    """Refuse what ``restore_run`` would refuse before restoring anything, with its error, else say
    what it would restore where and who would restore-prepare each engine. Restores nothing and
    writes no record (the run lookup may repair the catalog's index, as every read command does)."""
    reporter = reporter or NullReporter()
    catalog = open_catalog(inventory)
    warnings: list[str] = []
    running: list[IndexEntry] = []  # for `latest`: the runs it may have passed over, as listed once
    run_id = catalog.resolve(run_ref, warnings, running)
    to = to.absolute() if to is not None else None  # as restore_run: a flag's path is the caller's
    record, record_checked = None, False
    if record_it:
        # The restore's first write; judged without writing (an S3 catalog cannot tell: it answers
        # only a real PUT, so a dry run there cannot promise the record).
        record = f"{catalog.cluster}/restores"  # RestoreRecord.key's directory
        try:
            record_checked = catalog.store.check_writable(record)
        except CatalogError as exc:
            raise record_refused(exc, run_id) from exc
    reporter.step("restore", f"dry run: checking a restore of run {run_id} into {target_text(to, zone)}")
    manifest, provider, nodes, roots = checked_run(inventory, catalog, run_id, to, zone=zone, attach=attach,
                                                   warnings=warnings, latest=run_ref.strip() == "latest",
                                                   running=running)
    files = not getattr(provider, "restore_makes_cloud_volumes", False)
    plan = RestorePlan(catalog.cluster, provider.name, manifest.run_id, target_text(to, zone), record,
                       record_checked=record_checked, warnings=warnings)
    from snapctl.drill_engines import FILE_ENGINES

    for name, node_record in manifest.nodes.items():
        node = nodes[name]
        planned = PlannedNode(name)
        for ref in node_record.snapshots:
            target = restore_target(node, ref.volume, root=roots[name], zone=zone, attach=attach)
            planned.volumes.append(PlannedVolume(ref.volume, ref.snapshot_id,
                                                 str(target.path) if target.path is not None else None,
                                                 None if files else target.zone, target.instance, target.device))
        where = {v.volume: v.path or v.volume for v in planned.volumes}
        planned.prepared, settings, planned.note = prepare_plan(inventory, node, node_record, where, files=files,
                                                                attached=attach)
        if settings is not None:
            planned.engine = str(settings.get("type"))
            if node_record.state is not None and planned.engine not in FILE_ENGINES:
                planned.note = needs_its_server(planned.engine)
        plan.nodes.append(planned)
    return plan
