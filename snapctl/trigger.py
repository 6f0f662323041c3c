"""`snapctl trigger`: run the engines' own snapshots on chosen nodes, all at once."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from node_agent.models import JobResult
from snapctl.agent_client import open_agents
from snapctl.config import Inventory
from snapctl.errors import BadInputError, SnapctlError


@dataclass
class NodeJobs:
    node: str
    jobs: list[JobResult] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and all(job.status == "succeeded" for job in self.jobs)


async def trigger(inventory: Inventory, nodes: list[str] | None, target: str | None, timeout_s: float) -> list[NodeJobs]:
    if not 0 < timeout_s < float("inf"):  # every node would fail at once (NaN too), as if no engine answered
        raise BadInputError(f"--timeout {timeout_s:g}: the timeout must be a number of seconds more than zero",
                            hint="e.g. --timeout 600 (the default)")
    chosen = [n.name for n in inventory.select(nodes)]
    async with open_agents(inventory) as agents:
        return list(await asyncio.gather(*(_one(agents[name], name, target, timeout_s) for name in chosen)))


async def _one(agent, name: str, target: str | None, timeout_s: float) -> NodeJobs:
    result = NodeJobs(name)
    try:
        result.jobs = (await asyncio.wait_for(agent.trigger(target), timeout_s)).jobs
    except SnapctlError as exc:
        result.error = exc.message
    except TimeoutError:
        result.error = f"no result within {timeout_s:g}s"
    return result
