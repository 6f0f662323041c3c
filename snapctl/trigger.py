"""`snapctl trigger` and a backup's step 3: run the engines' own snapshots on the nodes, all at once."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

from node_agent.models import JobResult
from snapctl.agent_client import AgentClient, open_agents
from snapctl.config import Inventory
from snapctl.errors import AgentError, BadInputError, ExitCode, SnapctlError
from snapctl.events import Reporter

# What an agent answers a request it refuses as bad input (400: an unknown target; 422: one its
# schema refuses, too long): the operator's to fix, not the node's failure.
_BAD_INPUT_STATUSES = (400, 422)


@dataclass
class NodeJobs:
    node: str
    jobs: list[JobResult] = field(default_factory=list)
    error: str | None = None
    hint: str | None = None  # the agent's, with its error: how to give a target it takes
    bad_input: bool = False  # the agent refused the request (the target) as bad input

    @property
    def ok(self) -> bool:
        return self.error is None and all(job.status == "succeeded" for job in self.jobs)


def exit_code(results: list[NodeJobs]) -> ExitCode:
    """0 when every node's jobs succeeded; 2 when every node refused the target as bad input (the
    command line is wrong, not the cluster); else 1."""
    if all(r.ok for r in results):
        return ExitCode.OK
    if results and all(r.bad_input for r in results):
        return ExitCode.BAD_INPUT
    return ExitCode.RUN_FAILED


async def trigger(inventory: Inventory, nodes: list[str] | None, target: str | None, timeout_s: float) -> list[NodeJobs]:
    if not 0 < timeout_s < float("inf"):  # every node would fail at once (NaN too), as if no engine answered
        raise BadInputError(f"--timeout {timeout_s:g}: the timeout must be a number of seconds more than zero",
                            hint="e.g. --timeout 600 (the default)")
    # Each node once, as status does: `--node n1 --node n1` triggered n1's engine snapshot twice at once.
    chosen = [n.name for n in inventory.select(list(dict.fromkeys(nodes)) if nodes else nodes)]
    async with open_agents(inventory) as agents:
        return list(await asyncio.gather(*(_one(agents[name], name, target, timeout_s) for name in chosen)))


async def before_backup(agents: dict[str, AgentClient], timeout_s: float, reporter: Reporter,
                        engine_types: Mapping[str, str | None] | None = None) -> list[str]:
    """A backup's step 3: every node's engine snapshots at once. It only shortens the replay after a
    restore, so a node or job that fails does not fail the backup: each is reported, and returned
    as one line for the manifest's degradations. ``engine_types``: node -> engine type; a node
    whose engine's prepare takes that snapshot itself (DingoDB, AresDB) is skipped, said so."""
    chosen = {}
    for name, agent in agents.items():
        if prepare_triggers((engine_types or {}).get(name)):
            reporter.node(name, "trigger skipped", "its engine's prepare runs the engine's own snapshot itself, "
                                                   "just before the hold")
        else:
            chosen[name] = agent
    results = await asyncio.gather(*(_one(agent, name, None, timeout_s) for name, agent in chosen.items()))
    problems: list[str] = []
    for result in results:
        failures = [result.error.removeprefix(f"node {result.node}: ")] if result.error else []
        failures += [f"{job.target} {job.status}" + (f": {job.detail}" if job.detail else "")
                     for job in result.jobs if job.status != "succeeded"]
        for failure in failures:
            reporter.node(result.node, "trigger failed", failure)
            problems.append(f"the engine snapshot before the backup failed on {result.node}: {failure}")
    return problems


def prepare_triggers(engine_type: str | None) -> bool:
    """Whether the prepare of ``engine_type`` runs the engine's own snapshot itself (the adapter's
    ``prepare_triggers``): a backup's trigger before it would snapshot everything twice. An
    engine not installed here (a plugin on the database hosts alone) is triggered as any."""
    if not engine_type:
        return False
    from node_agent.engines.base import load_engine_factory

    try:
        return getattr(load_engine_factory(engine_type), "prepare_triggers", False) is True
    except SnapctlError:
        return False


async def _one(agent: AgentClient, name: str, target: str | None, timeout_s: float) -> NodeJobs:
    result = NodeJobs(name)
    try:
        # The client's timeout, not the agent timeout's 10 s: a DingoDB or AresDB engine snapshots
        # region after region, minutes in all.
        result.jobs = (await agent.trigger(target, timeout_s)).jobs
    except SnapctlError as exc:
        result.error, result.hint = exc.message, exc.hint
        result.bad_input = isinstance(exc, BadInputError) or (
            isinstance(exc, AgentError) and exc.status in _BAD_INPUT_STATUSES)
    return result
