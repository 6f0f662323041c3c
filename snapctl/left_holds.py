"""An engine left held: a hold no lease of any agent stands for (its agent was killed or restarted
while it held a QuestDB checkpoint or a Tarantool pin, or another tool holds it). Nothing snapctl
does releases it: the rollback must not count such a node as released, and the preflight must not
let --force past it (docs/agent.md, 'an engine left held')."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from node_agent.models import AgentStatus, EngineStatus
from snapctl.abandoned_runs import STOPPED
from snapctl.errors import AgentConflict
from snapctl.run_failure import LEFT_HELD_DOC, node_reason

if TYPE_CHECKING:  # health.py takes its hint from here
    from snapctl.agent_client import AgentClient
    from snapctl.health import Finding, NodeProbe
    from snapctl.manifest import IndexEntry

HELD_ELSEWHERE = "engine already held by "  # how health.assess_node's finding on such a hold begins


async def still_held(agents: dict[str, AgentClient], completes: dict[str, object]) -> dict[str, str | None]:
    """For each node whose rollback's complete (``completes``: node -> its answer or error) the agent
    answered 409 "nothing is held": None when the agent's status then shows its engine not held,
    else the note the node's record keeps. That answer speaks of the agent's lease only (a complete
    that overtook its prepare, refused since; or an agent restarted meanwhile, which knows nothing
    of the dead one's hold): the engine may still keep a hold no agent will release."""
    nodes = [n for n, r in completes.items() if isinstance(r, AgentConflict) and r.holder is None]
    answers = await asyncio.gather(*(agents[n].status() for n in nodes), return_exceptions=True)
    notes: dict[str, str | None] = {}
    for node, answer in zip(nodes, answers):
        if isinstance(answer, AgentStatus) and not answer.engine.held:
            notes[node] = None
        elif isinstance(answer, AgentStatus):
            holder = answer.engine.held_by or "a hold this agent did not make"
            notes[node] = (f"not released: its agent answered the complete that it holds nothing, but its status "
                           f"shows the engine still held by {holder}; it may stay held until released by hand "
                           f"({LEFT_HELD_DOC})")
        elif isinstance(answer, Exception):
            notes[node] = (f"may not be released: its agent answered the complete that it holds nothing, and its "
                           f"status could not be read ({node_reason(answer)}); its engine may still be held "
                           f"({LEFT_HELD_DOC})")
        else:
            raise answer  # Ctrl-C, cancelled: not the node's failure
    return notes


def held_elsewhere_hint(engine: EngineStatus) -> str:
    """The fix for an engine held by something that is not this agent: --force cannot help, since
    the run's prepare is refused all the same."""
    hint = f"let its holder release it, or release it by hand ({LEFT_HELD_DOC})"
    if engine.engine == "questdb":  # the one engine whose prepare can release such a hold
        hint += ("; or set force_release: true for this node, in its agent's config and its inventory engine "
                 "block: --force then lets its prepare release it")
    return hint


def name_left_holds(findings: list[Finding], probes: list[NodeProbe], entries: list[IndexEntry]) -> list[Finding]:
    """``findings`` with each engine held elsewhere said to be a failed or abandoned run's, where
    the catalog's ``entries`` show it: by the holder's own name (a Tarantool pin's run), else by
    the run under way when the hold began (a QuestDB checkpoint, whose server cannot say who took it)."""
    engines = {p.node: p.status.engine for p in probes if p.status is not None}
    named = []
    for finding in findings:
        engine = engines.get(finding.subject)
        said = _whose(engine, entries) if engine is not None and finding.message.startswith(HELD_ELSEWHERE) else None
        named.append(replace(finding, message=f"{finding.message}; {said}") if said else finding)
    return named


def _whose(engine: EngineStatus, entries: list[IndexEntry]) -> str | None:
    held_by = engine.held_by or ""
    if held_by.startswith("snapctl run "):
        run_id = held_by.removeprefix("snapctl run ")
        entry = next((e for e in entries if e.run_id == run_id), None)
        ended = _ended(entry) if entry is not None else None
        return f"held by run {run_id}, {ended}, whose agent left the hold behind" if ended else None
    since = engine.held_since
    if since is None:
        return None
    for entry in entries:  # a run whose snapctl is gone has no end: the hold began after its start
        if entry.started_at <= since <= (entry.finished_at or since) and (ended := _ended(entry)):
            return f"held since {_at(since)}, during run {entry.run_id}, {ended}: likely left behind by its agent"
    return None


def _ended(entry: IndexEntry) -> str | None:
    """How ``entry`` ended, where that leaves a hold of it with nobody to release it."""
    if entry.status == "failed":
        return f"which failed at {_at(entry.finished_at)}" if entry.finished_at else "which failed"
    if entry.status == "running" and entry.error == STOPPED:
        return "whose snapctl is gone"
    return None


def _at(moment: datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S}Z"
