"""``restore.agent_path`` asked of its scratch agent, before anything is restored.

A scratch agent's restore-prepare acts only under its engine's data paths or the ``restore_root``
of its config, and refuses any other path with a 400. That 400 came only once the volumes had
been restored (cloud disks made and attached): a nightly drill found out hours late. So `snapctl
restore` and `snapctl drill` send each such scratch agent a check-only restore-prepare first. The
agent decides, not a comparison here: it resolves symlinks on its own host (a restore_root that is
a link to the disk's mount, an agent_path through one), which this host cannot see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from snapctl.config import Inventory, Node
from snapctl.errors import AgentError, BadInputError, NotAnAgent, SnapctlError


def check_agent_paths(inventory: Inventory, nodes: Mapping[str, Node]) -> None:
    """Refuse a node whose scratch agent says its restore-prepare would refuse ``restore.agent_path``.
    ``nodes``: those whose restore calls their scratch agent. One that does not answer, or an older
    one that does not know the check (422), is not checked: its restore-prepare's 400 still guards."""
    named = {name: node for name, node in nodes.items() if node.restore.agent and node.restore.agent_path}
    if not named:
        return
    refusals = asyncio.run(_refusals(inventory, named))
    for name, node in named.items():
        refused = refusals[name]
        if refused is None:
            continue
        raise BadInputError(
            f"node {name}: scratch agent {node.restore.agent} would refuse restore.agent_path "
            f"{node.restore.agent_path} once the volumes were restored: {refused.reason}",
            hint="set restore_root: DIR in the scratch agent's config (where its restored disks are mounted), "
                 "or point restore.agent_path under one of the paths it names")


async def _refusals(inventory: Inventory, nodes: Mapping[str, Node]) -> dict[str, AgentError | None]:
    from snapctl.restore import scratch_agent

    async def one(node: Node) -> AgentError | None:
        try:
            async with scratch_agent(inventory, node) as agent:
                await agent.restore_prepare(node.restore.agent_path, check_only=True)
        except AgentError as exc:
            # Only the agent's own 400 is about the path: a 409 (a live agent, a lease) or a 422 (an
            # agent older than check_only) is the real restore-prepare's to say, as is no answer.
            return exc if exc.status == 400 and not isinstance(exc, NotAnAgent) else None
        except SnapctlError:  # its client could not be set up (a TLS file, say): the real call says so
            return None
        return None

    answers = await asyncio.gather(*(one(node) for node in nodes.values()))
    return dict(zip(nodes, answers, strict=True))
