"""A prune's marks on the runs it deletes: put on (status ``pruning``, the old status and the
mark's time kept in ``extra.pruning``), taken off again when a restore or drill begins on the run
or the prune is stopped first, and what a stopped prune says it left."""

from __future__ import annotations

from functools import partial

from snapctl.catalog import Catalog
from snapctl.errors import Interrupted, SnapctlError
from snapctl.manifest import Manifest
from snapctl.retention import PRUNING


def stopped_prune(catalog: Catalog, untouched: dict[str, str], deleting: str | None) -> Interrupted:
    """Ctrl-C or SIGTERM (not a lost lock: then the catalog is another's to write) stopped a prune:
    the runs it marked, or was marking, and had not begun to delete are unmarked (``untouched``:
    run -> its mark), for the mark commits the next prune to deleting them, and a stop is often a
    mistake noticed (the wrong inventory, the wrong retention). An earlier prune's mark stays. The
    run whose snapshots it was deleting stays marked: the next prune finishes it."""
    unmarked = []
    for run_id, since in untouched.items():
        try:
            after = catalog.update(run_id, partial(unmark_pruning, since=since))
            if after is not None and after.status != PRUNING:  # ours undone, or never written
                unmarked.append(run_id)
        except SnapctlError:
            continue  # stays marked: the next prune deletes it, as it would have
    stopped = Interrupted("prune")
    stopped.hint = "; ".join(filter(None, [
        f"the runs it had marked but not begun to delete are unmarked ({', '.join(unmarked)})" if unmarked else "",
        f"run {deleting}, whose snapshots it was deleting, stays marked 'pruning': the next prune finishes it"
        if deleting else "",
        f"still marked, deleted by the next prune: {', '.join(r for r in untouched if r not in unmarked)}"
        if len(unmarked) < len(untouched) else "",
    ])) or None
    return stopped


def mark_pruning(manifest: Manifest, since: str) -> bool:
    """Marked as being deleted, with the status it had (for a restore or drill that begins meanwhile)."""
    if manifest.status == PRUNING:
        return False
    manifest.extra[PRUNING] = {"was": manifest.status, "since": since}
    manifest.status = PRUNING  # type: ignore[assignment]
    return True


def unmark_pruning(manifest: Manifest, since: str) -> bool:
    """Back to the status the run had before this prune marked it (``since``: its mark's time; a
    restore or drill began, or the prune was stopped first)."""
    if manifest.status != PRUNING or manifest.extra.get(PRUNING, {}).get("since") != since:
        return False
    manifest.status = manifest.extra.pop(PRUNING)["was"]
    return True
