"""Checks made before anything is held: the preflight of every backup (DESIGN.md step 2), and a
dry run, which is that preflight plus what a real run gets ready before its first hold."""

from __future__ import annotations

from dataclasses import dataclass

from snapctl.agent_client import AgentClient
from snapctl.config import Inventory
from snapctl.errors import SnapctlError
from snapctl.events import Reporter
from snapctl.health import Finding, Verdict, assess
from snapctl.probe import probe_all
from snapctl.provider_threads import ProviderThreads
from snapctl.provider_worker import CALL_RUNNER_READY_S
from snapctl.providers import NodeVolumes, Provider


@dataclass
class BackupPlan:
    """What a dry run reports: what would be held and snapshotted, and the verdict on it."""

    cluster: str
    provider: str
    nodes: dict[str, list[str]]  # node -> volume names
    verdict: Verdict


async def preflight(inventory: Inventory, agents: dict[str, AgentClient], reporter: Reporter) -> Verdict:
    """Ask every agent and grade the answers as a backup would: a node already held is critical."""
    reporter.step("preflight", f"checking {len(agents)} agents")
    probes = await probe_all(agents, inventory.policy.agent_timeout_s)
    verdict = assess(inventory, probes, for_backup=True)
    for finding in verdict.findings:
        reporter.finding(finding)
    return verdict


async def dry_run(inventory: Inventory, provider: Provider, volumes: dict[str, NodeVolumes],
                  agents: dict[str, AgentClient], reporter: Reporter) -> BackupPlan:
    """The preflight, and the provider warmed up (its SDK, its credentials) as a real run does
    before its first hold: a dry run in CI should fail where the run from cron would. A provider
    that cannot get ready is a critical finding. Takes no lock, holds nothing, writes nothing."""
    checker = ProviderThreads(1, warm_up=provider.warm_up)
    checker.start()  # in a thread of its own: loading an SDK overlaps the preflight's fan-out
    try:
        verdict = await preflight(inventory, agents, reporter)
        reporter.step("provider", f"checking that {provider.name} is ready (its SDK, its credentials)")
        try:
            await checker.ready(CALL_RUNNER_READY_S)
        except SnapctlError as exc:
            finding = Finding("critical", "provider", str(exc))  # with its hint: the fix is what a dry run is for
            verdict.findings.append(finding)
            reporter.finding(finding)
    finally:
        checker.shutdown()
    return BackupPlan(inventory.cluster, provider.name,
                      {node: [_volume_name(v) for v in nv.volumes] for node, nv in volumes.items()}, verdict)


def _volume_name(volume) -> str:
    return getattr(volume, "name", None) or str(volume)
