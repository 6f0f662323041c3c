"""Talking to node agents: over HTTP (httpx, one pooled client) or in-process ("embedded").

Every call is bounded by the inventory's ``agent_timeout_s`` and raises ``AgentError``
subclasses naming the node; secrets (the token) never appear in messages.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from node_agent.models import (
    AgentStatus,
    CompleteResponse,
    Health,
    LeaseInfo,
    PrepareResponse,
    TriggerResponse,
    VerifyFacts,
)


@runtime_checkable
class AgentClient(Protocol):
    """One node's agent, as the orchestrator sees it. All methods are coroutines."""

    node: str

    async def health(self) -> Health: ...

    async def status(self) -> AgentStatus: ...

    async def prepare(self, run_id: str, lease_s: float) -> PrepareResponse:
        """Hold the engine under a lease; raises ``AgentConflict`` (with the holder) on 409."""
        ...

    async def renew(self, run_id: str, lease_s: float | None = None) -> LeaseInfo: ...

    async def complete(self, run_id: str) -> CompleteResponse: ...

    async def trigger(self, target: str | None = None) -> TriggerResponse: ...

    async def restore_prepare(self, path: str | None = None) -> None: ...

    async def verify(self) -> VerifyFacts: ...

    async def aclose(self) -> None: ...
