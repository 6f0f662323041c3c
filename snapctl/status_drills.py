"""What `snapctl status` says of the restore drills: when one last passed, and whether the newest
failed. Without it, a drill that stopped running (a CI runner offline, a workflow disabled) or
kept failing in a job nobody watched left status healthy for ever.

Each drill is recorded as ``<cluster>/drills/<run>-<drill id>.json``, its id beginning with when
it began (``%Y%m%dT%H%M%SZ``). Status stays cheap: one listing of that prefix, ordered by those
starts, then the records read newest first only until the newest finished one and the newest
passed one are found, at most ``MAX_READS`` of them, however many drills the catalog holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import ValidationError

from snapctl.config import Inventory
from snapctl.drill_leftovers import drill_began
from snapctl.health import Finding, duration_text

if TYPE_CHECKING:
    from snapctl.catalog import Catalog
    from snapctl.drill import DrillReport

MAX_READS = 10


@dataclass
class DrillLook:
    recorded: int = 0  # drill records listed
    read: int = 0
    newest: DrillReport | None = None  # the newest finished drill (one under way, or killed, is passed over)
    last_passed: DrillReport | None = None  # None: none passed among those read

    @property
    def looked_at_all(self) -> bool:
        return self.read >= self.recorded


def look_at_drills(catalog: Catalog) -> DrillLook:
    """The drills as status needs them (``SnapctlError`` when the catalog cannot be listed or read)."""
    from snapctl.drill import DrillReport  # the drill's own modules, only once a catalog is read

    keys = [(began, key) for key in catalog.store.list(f"{catalog.cluster}/drills/")
            if (began := drill_began(key)) is not None]
    look = DrillLook(recorded=len(keys))
    for _, key in sorted(keys, reverse=True)[:MAX_READS]:
        look.read += 1
        try:
            report = DrillReport.model_validate_json(catalog.store.read(key) or b"")
        except ValidationError:
            continue  # a record this snapctl cannot read proves nothing either way
        if report.finished_at is None:
            continue
        look.newest = look.newest or report
        if report.ok:
            look.last_passed = report
            break
    return look


def drill_findings(inventory: Inventory, look: DrillLook, now: datetime) -> list[Finding]:
    """Degraded, never critical: CI runs `status` before the drill and stops on critical, so a
    critical finding about drills would keep the next drill, the one that clears it, from running."""
    max_age = inventory.drill.max_age_s
    if look.recorded == 0:
        if max_age is not None and "max_age_s" in inventory.drill.model_fields_set:
            return [Finding("degraded", "drills", "no restore drill is recorded in the catalog, and drill.max_age_s "
                            f"asks for one every {duration_text(max_age)}",
                            hint="run `snapctl drill latest` (deploy/ci/nightly-drill.yml runs it nightly)")]
        return []
    found: list[Finding] = []
    newest = look.newest
    if newest is not None and not newest.ok:
        found.append(Finding("degraded", "drills", f"the newest restore drill {newest.drill_id} (run {newest.run_id}) "
                             f"failed at {newest.finished_at:%Y-%m-%d %H:%M}Z: {_why(newest)}",
                             hint=f"see its JUnit report, or the record {newest.record}"))
    if max_age is None:
        return found
    passed = look.last_passed
    if passed is None:
        among = "yet" if look.looked_at_all else f"among the newest {look.read} recorded"
        found.append(Finding("degraded", "drills", f"no restore drill has passed {among}",
                             hint="`snapctl drill latest` proves the newest backup restores"))
    elif (age := (now - passed.finished_at).total_seconds()) > max_age:  # type: ignore[operator]
        found.append(Finding("degraded", "drills", f"the newest restore drill that passed, {passed.drill_id} (run "
                             f"{passed.run_id}), finished {duration_text(age)} ago, over drill.max_age_s of "
                             f"{duration_text(max_age)}",
                             hint="check that the scheduled drill still runs (a CI runner offline, a workflow "
                                  "disabled) and passes"))
    return found


def _why(report: DrillReport) -> str:
    if report.error:
        return report.error
    if report.abandoned:
        return "killed before it finished"
    if report.interrupted:
        return f"interrupted ({report.interrupted_by})" if report.interrupted_by else "interrupted"
    failed = [n.node for n in report.nodes if n.verdict != "passed"]
    if failed:
        return f"{', '.join(failed)} did not pass"
    return "its teardown failed" if report.teardown_errors else "failed"
