"""``restore.agent_path`` against what its scratch agent takes, before anything is restored.

A scratch agent's restore-prepare acts only under its engine's data paths or the ``restore_root``
of its config, and refuses any other path with a 400. That 400 came only once the volumes had
been restored (cloud disks made and attached): a nightly drill found out hours late, and setups
that worked before the agent checked paths failed there. So `snapctl restore` and `snapctl drill`
ask each such scratch agent's ``/v1/status`` first. The comparison is of the paths as written:
the agent resolves symlinks on its own host, which this one cannot see.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from pathlib import PurePosixPath

from node_agent.models import AgentStatus
from snapctl.config import Inventory, Node
from snapctl.errors import BadInputError, SnapctlError


def check_agent_paths(inventory: Inventory, nodes: Mapping[str, Node]) -> None:
    """Refuse a node whose ``restore.agent_path`` lies outside what its scratch agent reports it
    takes. A scratch agent that does not answer, or an older one that does not report
    ``restore_root``, is not checked: its restore-prepare's 400 still guards."""
    named = {name: node for name, node in nodes.items() if node.restore.agent and node.restore.agent_path}
    if not named:
        return
    statuses = asyncio.run(_statuses(inventory, named))
    for name, node in named.items():
        status = statuses[name]
        if status is None or "restore_root" not in status.model_fields_set:
            continue
        roots = [*status.data_paths, *([status.restore_root] if status.restore_root else [])]
        if not all(os.path.isabs(root) for root in roots):
            continue  # not comparable here; the agent decides
        path = PurePosixPath(os.path.normpath(str(node.restore.agent_path)))
        if any(path.is_relative_to(os.path.normpath(root)) for root in roots):
            continue
        listed = ", ".join(roots) or "none"
        which = (f"data paths and restore_root ({listed})" if status.restore_root
                 else f"data paths ({listed}) and it has no restore_root")
        raise BadInputError(
            f"node {name}: restore.agent_path {node.restore.agent_path} lies outside scratch agent "
            f"{node.restore.agent}'s {which}: its restore-prepare would refuse it once the volumes were restored",
            hint="set restore_root: DIR in the scratch agent's config (where its restored disks are mounted), "
                 "or point restore.agent_path under one of those paths")


async def _statuses(inventory: Inventory, nodes: Mapping[str, Node]) -> dict[str, AgentStatus | None]:
    from snapctl.restore import scratch_agent

    async def one(node: Node) -> AgentStatus | None:
        try:
            async with scratch_agent(inventory, node) as agent:
                return await agent.status()
        except SnapctlError:
            return None  # unreachable, refused, or not up yet: its restore-prepare says what is wrong

    answers = await asyncio.gather(*(one(node) for node in nodes.values()))
    return dict(zip(nodes, answers, strict=True))
