"""An agent in snapctl's own process (``agent: embedded``): an ``AgentService`` called on threads,
raising the same errors as an agent over HTTP (``snapctl/agent_client.py``), so the run cannot
tell the two apart. Imported only when a node is embedded."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from datetime import datetime
from typing import Any, TypeVar

from node_agent.models import (
    AgentStatus,
    CompleteResponse,
    Health,
    LeaseInfo,
    PrepareResponse,
    TriggerResponse,
    VerifyFacts,
)
from snapctl.agent_client import TIMEOUT_SETTING
from snapctl.errors import (
    AgentConflict,
    AgentError,
    AgentTimeout,
    AgentUnreachable,
    BadInputError,
    EngineBusy,
    EngineError,
    LeaseConflict,
    SnapctlError,
)

T = TypeVar("T")

# Its call goes on in a thread of snapctl's: the process ends once it is done.
EMBEDDED_SLOW_HINT = ("the embedded engine is slow or stuck, and the call goes on in snapctl's process, which "
                      "ends once it is done; if the work takes longer, raise {setting}")


class EmbeddedAgentClient:
    """An ``AgentService`` in this process (``agent: embedded``): same errors as over HTTP."""

    def __init__(self, node: str, service: Any, *, timeout_s: float, executor: Executor | None = None) -> None:
        self.node = node
        self.service = service  # node_agent.service.AgentService; not imported here to keep the CLI light
        self._timeout_s = timeout_s
        self._executor = executor

    async def health(self) -> Health:
        return self.service.health()

    async def status(self) -> AgentStatus:
        return await self._call(self.service.status)

    async def prepare(self, run_id: str, lease_s: float, hold_at: datetime | None = None,
                      timeout_s: float | None = None) -> PrepareResponse:
        return await self._call(self.service.prepare, run_id, lease_s, hold_at, timeout_s=timeout_s)

    async def renew(self, run_id: str, lease_s: float | None = None) -> LeaseInfo:
        return await self._call(self.service.renew, run_id, lease_s)

    async def complete(self, run_id: str) -> CompleteResponse:
        return await self._call(self.service.complete, run_id)

    async def trigger(self, target: str | None = None, timeout_s: float | None = None) -> TriggerResponse:
        # Not on the shared threads: one that outlives its timeout keeps its thread for minutes
        # (DingoDB, AresDB), and the prepare that follows must reach the service to be told so.
        return await self._call(self.service.trigger, target, timeout_s=timeout_s, own_thread=True)

    async def restore_prepare(self, path: str | None = None, check_only: bool = False) -> None:
        await self._call(self.service.restore_prepare, path, check_only)

    async def verify(self) -> VerifyFacts:
        return await self._call(self.service.verify)

    async def aclose(self) -> None:
        await self._call(self.service.close)

    async def _call(self, fn: Callable[..., T], *args: Any, timeout_s: float | None = None,
                    own_thread: bool = False) -> T:
        timeout_s = timeout_s or self._timeout_s
        bound = asyncio.timeout(timeout_s)  # the thread goes on; the agent's lease bounds what it holds
        try:
            async with bound:
                if self._executor is None or own_thread:
                    return await asyncio.to_thread(fn, *args)
                return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))
        except TimeoutError as exc:
            if bound.expired():
                setting = TIMEOUT_SETTING.get(f"/v1/{fn.__name__}", "policy.agent_timeout_s")
                raise AgentTimeout(self.node, f"no answer from the embedded agent within {timeout_s:g}s "
                                              f"({fn.__name__})", hint=EMBEDDED_SLOW_HINT.format(setting=setting)) from None
            raise AgentUnreachable(self.node, f"the embedded engine did not answer in time: {exc}") from exc
        except (LeaseConflict, EngineBusy) as exc:
            raise AgentConflict(self.node, exc.message, status=409, hint=exc.hint,
                                holder=getattr(exc, "holder", None)) from exc
        except BadInputError as exc:
            raise AgentError(self.node, exc.message, status=400, hint=exc.hint) from exc
        except EngineError as exc:
            raise AgentError(self.node, exc.message, status=502, hint=exc.hint) from exc
        except SnapctlError as exc:
            raise AgentError(self.node, exc.message, status=500, hint=exc.hint) from exc
        except Exception as exc:
            raise AgentError(self.node, f"embedded agent failed: {type(exc).__name__}: {exc}", status=500) from exc
