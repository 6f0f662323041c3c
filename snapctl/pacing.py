"""When holds begin: the lead a cluster run gives its prepares, and, in per-node runs, the provider's
create-call budget, which each node waits for *before* it is held.

In per-node consistency each node is prepared just for its own snapshot. When the provider's rate
limit binds (EC2: 100 calls at once, then 5 per second), preparing a node whose create call will
then queue in the limiter only lengthens its freeze. ``CreateCallPacer`` mirrors the provider's
token bucket (its declared ``Capabilities``) and lets a node be prepared only once its call will go
through at once. The mirror is charged when a call is actually submitted, exactly as the provider's
own bucket is, so a slow first burst of prepares cannot put the two out of step. A pause the
provider makes after the cloud throttled it (Retry-After) is seen only where its calls are made
in this process and it exposes its bucket (``create_bucket``): in the provider worker's processes
a node let through during such a pause stays held until it ends.

The agent's own rate limit is waited out before the hold too: a per-node prepare it refuses (429,
answered before anything runs: nothing is held) is sent again once after its ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from snapctl.errors import AgentRateLimited
from snapctl.providers import Capabilities, Provider
from snapctl.ratelimit import TokenBucket

if TYPE_CHECKING:
    from snapctl.config import Inventory


# Less than this is rounding: a sleep that short may not move a clock (the tests' fake one) at all.
_NOTHING_MISSING = 1e-9


class CreateCallPacer:
    def __init__(self, rate_per_s: float, burst: int, provider_bucket: TokenBucket | None = None) -> None:
        self._bucket = TokenBucket(rate_per_s, max(1, burst))
        # The provider's own bucket, where its calls are made in this process: it alone knows of a
        # pause after the cloud throttled (Retry-After), which the mirror cannot see.
        self._provider_bucket = provider_bucket
        self._promised = 0.0  # tokens of nodes let through whose calls are not submitted yet
        self._turn = asyncio.Lock()  # FIFO: nodes are let through in the order they asked

    @classmethod
    def for_provider(cls, provider: Provider, *, in_process: bool = False) -> CreateCallPacer | None:
        """``in_process``: the run's create calls are made by ``provider`` itself (threads or the
        loop of snapctl's process, not the provider worker's own providers), so its ``create_bucket``,
        where it has one, is consulted too."""
        caps = provider.capabilities
        if not caps.max_creates_per_s:
            return None
        live = getattr(provider, "create_bucket", None) if in_process else None
        return cls(caps.max_creates_per_s, caps.create_burst or 1, live if isinstance(live, TokenBucket) else None)

    def _missing(self, wanted: float) -> float:
        missing = self._promised + wanted - self._bucket.available
        if self._provider_bucket is not None:
            missing = max(missing, self._promised + wanted - self._provider_bucket.available)
        return missing

    async def before_prepare(self, calls: int) -> None:
        """Return once ``calls`` create calls, submitted after every node already let through,
        would pass the provider's bucket without waiting; a node of more calls than the burst, once
        a full bucket's worth would (the rest queue in the provider while it is held: no wait
        before its hold can spare it that)."""
        calls = max(calls, 1)
        wanted = min(calls, self._bucket.burst)
        async with self._turn:
            while (missing := self._missing(wanted)) > _NOTHING_MISSING:
                await asyncio.sleep(missing / self._bucket.rate)
            self._promised += calls

    def submitted(self, calls: int) -> None:
        """The node's create calls go to the provider now: charge all of them, as its bucket will.
        Charged only up to the burst, a node of more volumes left the mirror fuller than the
        provider's bucket, and the nodes after it waited for their calls while held."""
        calls = max(calls, 1)
        self._promised = max(0.0, self._promised - calls)
        while calls > 0:  # the mirror goes below zero, as the provider's does with calls queued
            chunk = min(calls, self._bucket.burst)
            self._bucket.reserve(chunk)
            calls -= chunk


def rate_limit_spread_s(capabilities: Capabilities, creates: int) -> float:
    """How long after the first of ``creates`` create calls, made at once, the provider's declared
    rate limit lets the last one go out: 0 where it has none or they fit its burst."""
    rate, burst = capabilities.max_creates_per_s, capabilities.create_burst or 1
    if not rate or creates <= burst:
        return 0.0
    return (creates - burst) / rate


def rate_limit_said(capabilities: Capabilities, creates: int) -> str:
    """The rate limit in words, for a hint: its burst, its rate, and how long ``creates`` calls take."""
    return (f"the provider's rate limit ({capabilities.create_burst or 1} create calls at once, then "
            f"{capabilities.max_creates_per_s:g}/s) spreads this run's {creates} over "
            f"{rate_limit_spread_s(capabilities, creates):.1f}s")


def slow_snapshot_hint(capabilities: Capabilities, creates: int, consistency: str) -> str:
    """The hint of a run whose snapshot calls outran the freeze budget: the rate limit, where it binds."""
    hint = "check the provider; raise policy.max_freeze_s if this volume is just slow"
    if rate_limit_spread_s(capabilities, creates):
        hint += f"; {rate_limit_said(capabilities, creates)}"
        if consistency == "cluster":
            hint += ": or back up with --consistency per-node"
    return hint


_MAX_AUTO_HOLD_LEAD_S = 2.0
# What the lead is for: writing every prepare on the connections the preflight opened, and every
# agent reading its own. In plain http that costs each side ~30-40 µs of CPU: snapctl wrote 1000
# prepares in 28-41 ms on the 2-core benchmark machine, and a lead of 0.07 s still began the holds
# together there (0.05 s did not). Over TLS the same writes cost half again, and leads of
# 0.07-0.09 s let the holds spread by 40-100 ms. So the cap is about twice the writing, per
# scheme. The preflight takes longer (~0.2-0.3 ms per node in plain http, ~2 ms over TLS: connects
# and handshakes the prepares do not repeat), and a lead past the sending only waits: every
# millisecond of it is a millisecond of the run (docs/performance-log.md, items 44 and 46; TLS: 35).
_AUTO_HOLD_LEAD_BASE_S = 0.02
_AUTO_HOLD_LEAD_PER_NODE_S, _AUTO_HOLD_LEAD_PER_TLS_NODE_S = 0.00007, 0.00015


def hold_lead(inventory: Inventory, agents: int, fan_out_s: float) -> float:
    """How far ahead of sending the prepares their holds begin (``fan_out_s``: how long the
    preflight took to ask every agent, which opened the connections the prepares now reuse, so
    sending them takes less): ``policy.hold_lead_s`` if set, else no longer than sending N prepares
    needs with room to spare, which the preflight's connects and TLS handshakes would overstate.
    A node whose prepare arrives later holds late, and ``hold_skew_s`` says so."""
    configured = inventory.policy.hold_lead_s
    if configured is not None:
        return configured
    tls_nodes = sum(1 for node in inventory.nodes if node.agent.startswith("https:"))
    return auto_hold_lead(agents, fan_out_s, tls_nodes)


def auto_hold_lead(nodes: int, fan_out_s: float, tls_nodes: int = 0) -> float:
    """``tls_nodes`` of the ``nodes`` speak TLS, whose prepares take longer to write and read."""
    if nodes < 2:
        return 0.0
    sending = (_AUTO_HOLD_LEAD_BASE_S + (nodes - tls_nodes) * _AUTO_HOLD_LEAD_PER_NODE_S
               + tls_nodes * _AUTO_HOLD_LEAD_PER_TLS_NODE_S)
    return min(_MAX_AUTO_HOLD_LEAD_S, fan_out_s + 0.002, sending)


# Waited out only this long: a Retry-After of more is a limit spent by something else asking all the
# while, no passing burst. A cluster run never sends a prepare again: the nodes already held would
# wait at its barrier, frozen (agent_client.py).
PREPARE_RETRY_AFTER_MAX_S = 5.0


async def prepare_within_rate_limit(node: str, prepare: Callable[[], Awaitable[None]],
                                    waiting: Callable[[float], None]) -> None:
    """``prepare`` one node of a per-node run; refused by its agent's rate limit, once more after the
    ``Retry-After`` (``waiting`` is told how long), up to ``PREPARE_RETRY_AFTER_MAX_S``. No other
    node's hold waits on this one: each is held just for its own snapshot."""
    try:
        await prepare()
        return
    except AgentRateLimited as exc:
        refused = exc
    wait_s = refused.retry_after_s
    if wait_s > PREPARE_RETRY_AFTER_MAX_S:
        raise AgentRateLimited(node, f"the agent's rate limit refused /v1/prepare and asked to wait {wait_s:g}s, "
                               f"more than the {PREPARE_RETRY_AFTER_MAX_S:g}s a per-node prepare waits to be sent "
                               f"again: {refused.said}", retry_after_s=wait_s, said=refused.said,
                               hint=refused.hint) from None
    waiting(wait_s)
    await asyncio.sleep(wait_s)
    try:
        await prepare()
    except AgentRateLimited as again:
        raise AgentRateLimited(node, f"the agent's rate limit refused /v1/prepare twice, {wait_s:g}s apart (its "
                               f"Retry-After): {again.said}", retry_after_s=again.retry_after_s, said=again.said,
                               hint=again.hint) from None
