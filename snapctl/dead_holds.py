"""After a backup took the cluster lock over from a run proven dead on this host (``RunLock.taken_from``),
the nodes that run still holds: its agents keep each one held until the lease the dead run can no
longer renew expires, and refuse any other run's prepare till then. The new run waits for those
leases to run out, rather than being refused by its own preflight (exit 3, a failed manifest);
it never releases them itself: a hold ends as its agent promised its holder, by its lease.
"""

from __future__ import annotations

import asyncio
import time

from snapctl.agent_client import AgentClient
from snapctl.config import Inventory
from snapctl.events import Reporter
from snapctl.probe import probe_all

POLL_S = 0.5


async def wait_out_dead_holds(inventory: Inventory, agents: dict[str, AgentClient], run_id: str,
                              reporter: Reporter) -> None:
    """Until no agent holds a node for ``run_id``, or for one lease of this inventory's and an agent
    call more (a longer lease of another inventory's is then the preflight's refusal to name)."""
    policy = inventory.policy
    deadline = time.monotonic() + policy.lease_ttl_s + policy.agent_timeout_s
    asked, said = agents, False
    while True:
        probes = await probe_all(asked, policy.agent_timeout_s)
        held = [p.node for p in probes if p.status is not None and p.status.lease is not None
                and p.status.lease.run_id == run_id]
        if not held or time.monotonic() >= deadline:
            return
        if not said:
            shown = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            reporter.step("lock", f"waiting for {shown} to be released by their agents: the dead run {run_id} "
                                  f"holds them until its leases expire (policy.lease_ttl_s {policy.lease_ttl_s:g}s)")
            said = True
        asked = {name: agents[name] for name in held}
        await asyncio.sleep(POLL_S)
