"""`snapctl status`: every agent at once, one verdict, the newest backups against the RPO."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from snapctl.agent_client import open_agents
from snapctl.catalog import open_catalog
from snapctl.config import Inventory
from snapctl.errors import ExitCode, SnapctlError
from snapctl.health import Finding, NodeProbe, Verdict, assess
from snapctl.manifest import IndexEntry
from snapctl.probe import probe_all


@dataclass
class ClusterStatus:
    cluster: str
    checked_at: datetime
    probes: list[NodeProbe]
    verdict: Verdict
    rpo_s: float
    latest_success: IndexEntry | None = None
    latest_failure: IndexEntry | None = None
    catalog_problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> ExitCode:
        return {"healthy": ExitCode.OK, "degraded": ExitCode.DEGRADED, "critical": ExitCode.CRITICAL}[
            self.verdict.level
        ]


async def collect_status(inventory: Inventory) -> ClusterStatus:
    async with open_agents(inventory) as agents:
        probes = await probe_all(agents, inventory.policy.agent_timeout_s)
    verdict = assess(inventory, probes)
    result = ClusterStatus(inventory.cluster, datetime.now(UTC), probes, verdict, inventory.rpo)
    try:
        entries, result.catalog_problems = open_catalog(inventory).list()
    except SnapctlError as exc:
        entries = []
        verdict.findings.append(Finding("degraded", "catalog", f"cannot read the catalog: {exc}"))
    result.latest_success = next((e for e in entries if e.status == "succeeded"), None)
    result.latest_failure = next((e for e in entries if e.status == "failed"), None)
    _grade_backups(result)
    return result


def _grade_backups(result: ClusterStatus) -> None:
    add = result.verdict.findings.append
    newest = result.latest_success
    if newest is None:
        add(Finding("degraded", "backups", "no successful backup yet"))
        return
    age = (result.checked_at - (newest.finished_at or newest.started_at)).total_seconds()
    if age > result.rpo_s:
        add(Finding("critical", "backups",
                    f"newest successful backup {newest.run_id} is {age / 3600:.1f}h old, over the RPO of "
                    f"{result.rpo_s / 3600:.1f}h"))
