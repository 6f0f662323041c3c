"""After a backup took the cluster lock over from a run proven dead on this host (``RunLock.taken_from``),
the nodes that run still holds: its agents keep each one held until the lease the dead run can no
longer renew expires, and refuse any other run's prepare till then. The new run waits for those
leases to run out, rather than being refused by its own preflight (exit 3, a failed manifest);
it never releases them itself: a hold ends as its agent promised its holder, by its lease.

So too for a hold the dead run asked for that has not begun yet: its prepare arrived and waits for
its ``hold_at``, for the engine, or in the engine's prepare call. No lease shows it, but the agent
goes on with it though its client is gone, and the hold then refused the new run's prepare on that
node. An agent names such prepares in its status (``preparing``; an older agent does not, and
there the new run cannot see them). A prepare still on its way to the agent no agent can name.
"""

from __future__ import annotations

import asyncio
import time

from node_agent.models import MAX_HOLD_AT_AHEAD_S
from snapctl.agent_client import AgentClient
from snapctl.config import Inventory
from snapctl.events import Reporter
from snapctl.probe import probe_all

POLL_S = 0.5


async def wait_out_dead_holds(inventory: Inventory, agents: dict[str, AgentClient], run_id: str,
                              reporter: Reporter) -> None:
    """Until no agent holds a node for ``run_id`` nor has its prepare under way, or for one lease of
    this inventory's and an agent call more (a longer lease of another inventory's is then the
    preflight's refusal to name); once a prepare under way is seen, also for the longest hold lead
    and one ``policy.prepare_timeout_s``, within which its hold begins."""
    policy = inventory.policy
    deadline = time.monotonic() + policy.lease_ttl_s + policy.agent_timeout_s
    asked, said, extended = agents, set(), False
    while True:
        probes = await probe_all(asked, policy.agent_timeout_s)
        held = [p.node for p in probes if p.status is not None and p.status.lease is not None
                and p.status.lease.run_id == run_id]
        preparing = [p.node for p in probes if p.status is not None and p.node not in held
                     and run_id in (p.status.preparing or ())]
        if preparing and not extended:
            extended = True
            deadline = max(deadline, time.monotonic() + MAX_HOLD_AT_AHEAD_S + policy.prepare_timeout_s
                           + policy.lease_ttl_s + policy.agent_timeout_s)
        if not held and not preparing or time.monotonic() >= deadline:
            return
        if held and "held" not in said:
            reporter.step("lock", f"waiting for {_shown(held)} to be released by their agents: the dead run {run_id} "
                                  f"holds them until its leases expire (policy.lease_ttl_s {policy.lease_ttl_s:g}s)")
            said.add("held")
        if preparing and "preparing" not in said:
            reporter.step("lock", f"waiting for {_shown(preparing)}: the dead run {run_id}'s prepare is still under "
                                  "way there, its hold not begun yet; once begun, it lasts until its lease expires")
            said.add("preparing")
        asked = {name: agents[name] for name in held + preparing}
        await asyncio.sleep(POLL_S)


def _shown(nodes: list[str]) -> str:
    return ", ".join(nodes[:5]) + (f" and {len(nodes) - 5} more" if len(nodes) > 5 else "")
