"""Fan out to every agent at once, each call bounded: a dead or slow node never holds up the rest."""

from __future__ import annotations

import asyncio
import time

from snapctl.agent_client import AgentClient
from snapctl.errors import AgentUnauthorized, SnapctlError
from snapctl.health import NodeProbe


async def probe_all(agents: dict[str, AgentClient], timeout_s: float) -> list[NodeProbe]:
    return list(await asyncio.gather(*(probe(name, client, timeout_s) for name, client in agents.items())))


async def probe(name: str, client: AgentClient, timeout_s: float) -> NodeProbe:
    started = time.monotonic()
    result = NodeProbe(node=name)
    try:
        async with asyncio.timeout(timeout_s):  # not wait_for: a task per node costs more than the call
            result.status = await client.status()
    except AgentUnauthorized as exc:
        result.unauthorized, result.error = True, exc.message
    except SnapctlError as exc:
        result.error = exc.message
    except TimeoutError:
        result.error = f"no answer within {timeout_s:g}s"
    result.elapsed_s = time.monotonic() - started
    return result
