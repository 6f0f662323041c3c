"""Text and JSON for `snapctl prune`, `snapctl gc` and the retention line of `snapctl backup`."""

from __future__ import annotations

from typing import Any

from snapctl.errors import ExitCode
from snapctl.units import human_bytes


def prune_text(renderer: Any, result: Any) -> int:
    # Plain lines, never a table: run and snapshot ids are printed whole, to be read or copied.
    r = result.retention
    policy = f"keep last {r.keep_last}, daily {r.daily}, weekly {r.weekly}, monthly {r.monthly}"
    say = _printer(renderer.out)
    say(f"{'dry run: ' if result.dry_run else ''}prune of cluster {result.cluster} ({policy})")
    if result.deleted:
        say(f"{'would delete' if result.dry_run else 'deleted'} {len(result.deleted)} run(s), oldest first:")
        for v in result.deleted:
            say(f"  {v.run_id}  {v.started_at:%Y-%m-%d %H:%M:%S}Z  {v.status}  ({'; '.join(v.reasons)})")
            say(f"    snapshots: {', '.join(v.snapshots) or 'none'}")
    elif result.unfinished:  # the policy did let runs go: their deletes were refused, below
        say(f"deleted no run: the {len(result.unfinished)} the policy lets go could not be deleted")
    else:
        say("nothing to delete: the policy keeps every run")
    if result.forgotten:
        say(f"forgot {len(result.forgotten)} run(s) the index listed whose manifest and every snapshot were gone: "
            f"{', '.join(result.forgotten)}")
    if result.kept:
        say(f"{'would keep' if result.dry_run else 'kept'} {len(result.kept)} run(s):")
        for v in result.kept:
            say(f"  {v.run_id}  {v.started_at:%Y-%m-%d %H:%M:%S}Z  {v.status}  ({', '.join(v.reasons)})")
    warn = _printer(renderer.err)
    for line in prune_warnings(result):
        warn(line)
    return prune_exit(result)


def prune_warnings(result: Any) -> list[str]:
    """The lines prune says on stderr, in text and with -o json alike (a log of stderr has them)."""
    lines = [f"not deleted: run {v.run_id}: {v.error}" for v in result.unfinished]
    if result.unfinished:
        lines.append("  hint: these runs stay marked 'pruning' (never restored); the next prune retries them")
    return (lines + [f"warning: {problem} (left alone)" for problem in result.problems]
            + [f"warning: {warning}" for warning in result.warnings])


def prune_document(result: Any) -> dict[str, Any]:
    from snapctl.render import jsonable

    return {**jsonable(result), "ok": result.ok}


def prune_exit(result: Any) -> int:
    return ExitCode.OK if result.ok else ExitCode.RUN_FAILED


def gc_text(renderer: Any, result: Any) -> int:
    say = _printer(renderer.out)
    if not result.orphans and not result.unknown_runs and result.skipped_runs:
        say(f"no orphaned snapshots of cluster {result.cluster} outside the runs not considered below")
    elif not result.orphans and not result.unknown_runs:  # these words exactly: cron jobs match them
        say(f"no orphaned snapshots of cluster {result.cluster}: every tagged snapshot has a manifest")
    elif not result.orphans:
        say(f"no orphaned snapshots of the runs in this catalog of cluster {result.cluster}")
    else:
        say(f"{len(result.orphans)} snapshot(s) of cluster {result.cluster} that no manifest owns:")
        for ref in result.orphans:
            done = ("  deleted" if ref.snapshot_id in result.deleted else
                    f"  NOT deleted: {result.failed[ref.snapshot_id]}" if ref.snapshot_id in result.failed else "")
            say(f"  {ref.snapshot_id}  node {ref.node}  volume {ref.volume}  "
                f"run {ref.tags.get('snapctl-run', '-')}  created {ref.created_at or '-'}{done}")
    if result.unknown_runs:
        say(f"{len(result.unknown_runs)} snapshot(s) of cluster {result.cluster} of runs not in this catalog "
            "(another catalog's backups, maybe: an older copy of this one, another user's):")
        for ref in result.unknown_runs:
            done = ("  deleted" if ref.snapshot_id in result.deleted else
                    f"  NOT deleted: {result.failed[ref.snapshot_id]}" if ref.snapshot_id in result.failed else
                    "" if not result.delete else "  kept")
            say(f"  {ref.snapshot_id}  node {ref.node}  volume {ref.volume}  "
                f"run {ref.tags.get('snapctl-run', '-')}  created {ref.created_at or '-'}{done}")
        if not result.include_unknown_runs:
            say("  gc never deletes these unless told to: check catalog.path (or catalog.url) first; "
                "`snapctl gc --delete --include-unknown-runs` deletes them")
    if result.leftovers:
        say(f"{len(result.leftovers)} leftover(s) in the snapshot store of calls that died part-way (no snapshots):")
        for leftover in result.leftovers:
            done = ("  deleted" if leftover.path in result.leftovers_deleted else
                    f"  NOT deleted: {result.failed[leftover.path]}" if leftover.path in result.failed else "")
            what = {"partial": "an unfinished copy", "deleting": "an unfinished delete"}[leftover.kind]
            say(f"  {leftover.path}  node {leftover.node}  {what}, {human_bytes(leftover.bytes)}{done}")
    if result.killed_drills:
        say(f"{len(result.killed_drills)} drill(s) killed on this host before they finished, and what they left:")
        for line in result.killed_drills_cleaned or result.killed_drills:
            say(f"  {line}")
    if result.killed_restores:
        say(f"{len(result.killed_restores)} restore(s) killed on this host before they finished, and what they left:")
        for line in result.killed_restores_cleaned or result.killed_restores:
            say(f"  {line}")
    if result.abandoned_restores:
        say(f"{len(result.abandoned_restores)} unfinished record(s) of restores killed on this host, each keeping its "
            "run from prune for a day from its start:")
        for line in result.abandoned_restores_finished or result.abandoned_restores:
            say(f"  {line}")
    if result.catalog_temps:
        say(f"{len(result.catalog_temps)} temp file(s) in the catalog of writes killed before they finished:")
        for temp in result.catalog_temps:
            done = ("  deleted" if temp.path in result.catalog_temps_deleted else
                    f"  NOT deleted: {result.failed[temp.path]}" if temp.path in result.failed else
                    "  kept: written since gc found it" if result.delete else "")
            say(f"  {temp.path}  {human_bytes(temp.bytes)}, last written {_age(temp.age_s)} ago{done}")
    if (result.orphans or result.leftovers or result.killed_drills or result.killed_restores
            or result.abandoned_restores or result.catalog_temps) and not result.delete:
        say("run `snapctl gc --delete` to delete them" + (" and finish the records" if result.abandoned_restores else ""))
    if result.forgotten_runs:
        say(f"forgot {len(result.forgotten_runs)} run(s) the index listed whose manifest and every snapshot were "
            f"gone: {', '.join(result.forgotten_runs)}")
    if result.skipped_runs:
        say(f"{len(result.skipped_runs)} run(s) not considered: gc neither lists nor deletes their snapshots:")
        for run_id in result.skipped_runs:
            say(f"  run {run_id}: {result.skipped_reasons[run_id]}")
    return gc_exit(result)


def gc_document(result: Any) -> dict[str, Any]:
    from snapctl.render import jsonable

    document = {}
    for key, value in jsonable(result).items():
        if key == "skipped_reasons":  # a property, which jsonable passes over: where the field was, before its reasons
            document["skipped_runs"] = result.skipped_runs
        document[key] = value
    return {**document, "ok": result.ok}


def gc_exit(result: Any) -> int:
    return ExitCode.OK if result.ok else ExitCode.RUN_FAILED


def backup_retention_warnings(manifest: Any) -> list[str]:
    """What retention after the backup left for the operator (stderr), as `snapctl prune` says it."""
    record = manifest.extra.get("retention")
    warnings = record.get("warnings") if isinstance(record, dict) else None
    return [f"warning: {w}" for w in warnings if isinstance(w, str)] if isinstance(warnings, list) else []


def backup_retention_line(manifest: Any) -> str | None:
    """One line on what retention did after the backup, or None when it did not run."""
    record = manifest.extra.get("retention")
    if not isinstance(record, dict):
        return None
    deleted = record.get("deleted") or []
    line = f"retention: deleted {len(deleted)} old run(s)" + (f" ({', '.join(deleted)})" if deleted else "")
    if record.get("error"):
        line += f"; did not finish: {record['error']} (`snapctl prune` retries)"
    return line


def _printer(console: Any):
    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    return say


def _age(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h" if minutes < 2880 else f"{minutes // 1440} days"
