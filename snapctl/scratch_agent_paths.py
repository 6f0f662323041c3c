"""Each scratch agent a restore will call, asked before anything is restored.

A scratch agent's restore-prepare comes only once the node's volumes were restored (cloud disks
made and attached). Every way it could refuse then (no answer, a token it refuses, a live agent
named as ``restore.agent`` by mistake, a run holding it, a ``restore.agent_path`` outside its
engine's data paths or ``restore_root``) left a partial restore to remove by hand, and a nightly
drill found out hours late. So `snapctl restore`, its dry run and `snapctl drill` send each
such agent a check-only restore-prepare first, which answers what the real one would and touches
nothing. The agent decides, not a comparison here: it resolves symlinks on its own host (a
restore_root that is a link to the disk's mount, an agent_path through one), which this host
cannot see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from snapctl.config import Inventory, Node
from snapctl.errors import (
    AgentError,
    AgentRateLimited,
    AgentUnauthorized,
    AgentUnreachable,
    BadInputError,
    NotAnAgent,
    SnapctlError,
)

# What the scratch agent's 400 is about: the one path snapctl sends it.
PATH_HINT = ("set restore_root: DIR in the scratch agent's config (where its restored disks are mounted), "
             "or point restore.agent_path under one of the paths it names")


def check_scratch_agents(inventory: Inventory, nodes: Mapping[str, Node]) -> list[str]:
    """Refuse (``BadInputError``, as a target in the way) a node whose scratch agent would refuse
    its restore-prepare once the volumes were restored, or cannot be asked. ``nodes``: those whose
    restore calls their scratch agent. Returns a warning for each agent older than the check
    (its 422 for ``check_only``): reached and authenticated, but what its restore-prepare would
    say is found only once the volumes are restored."""
    named = {name: node for name, node in nodes.items() if node.restore.agent}
    if not named:
        return []
    answers = asyncio.run(_answers(inventory, named))
    warnings = []
    for name, node in named.items():
        exc = answers[name]
        if exc is None:
            continue
        if _older_agent(exc):
            warnings.append(f"node {name}: scratch agent {node.restore.agent} is older than restore-prepare's "
                            "check_only, so it was not asked before restoring: whether it serves a live database or "
                            "takes restore.agent_path is found only once the volumes are restored (upgrade it)")
            continue
        raise _refusal(name, node, exc) from exc
    return warnings


def _older_agent(exc: SnapctlError) -> bool:
    # An agent of before check_only refuses the unknown field, having acted on nothing; a 422 of
    # one that knows it (an agent_path past its length limit) is the real call's too.
    return isinstance(exc, AgentError) and exc.status == 422 and "check_only" in exc.reason


def _refusal(name: str, node: Node, exc: SnapctlError) -> BadInputError:
    agent = f"node {name}: scratch agent {node.restore.agent}"
    reason = exc.reason if isinstance(exc, AgentError) else exc.message
    if (isinstance(exc, AgentError) and not isinstance(exc, NotAnAgent) and exc.status == 400
            and node.restore.agent_path):
        return BadInputError(f"{agent} would refuse restore.agent_path {node.restore.agent_path} once the volumes "
                             f"were restored: {reason}", hint=PATH_HINT)
    if isinstance(exc, AgentUnreachable):
        said = f"{agent} (restore.agent) did not answer, asked before restoring anything: {reason}"
    elif isinstance(exc, AgentUnauthorized):
        said = f"{agent} (restore.agent) refused snapctl, asked before restoring anything: {reason}"
    elif isinstance(exc, AgentError) and not isinstance(exc, NotAnAgent | AgentRateLimited):
        said = f"{agent} (restore.agent) would refuse restore-prepare once the volumes were restored: {reason}"
    else:  # no agent answers there, its rate limit refused, or its client could not be set up (a TLS file)
        said = f"{agent} (restore.agent) cannot be asked before restoring anything: {reason}"
    fix = f"check restore.agent of node {name}"
    if isinstance(exc, AgentUnauthorized) and exc.hint:  # the token's hint: the address is right
        return BadInputError(said, hint=exc.hint)
    return BadInputError(said, hint=f"{fix}; {exc.hint}" if exc.hint else fix)


async def _answers(inventory: Inventory, nodes: Mapping[str, Node]) -> dict[str, SnapctlError | None]:
    from snapctl.restore import scratch_agent

    async def one(node: Node) -> SnapctlError | None:
        try:
            async with scratch_agent(inventory, node) as agent:
                await agent.restore_prepare(node.restore.agent_path, check_only=True)
        except SnapctlError as exc:
            return exc
        return None

    answers = await asyncio.gather(*(one(node) for node in nodes.values()))
    return dict(zip(nodes, answers, strict=True))
