"""Pacing per-node runs by the provider's create-call budget, *before* each node is held.

In per-node consistency each node is prepared just for its own snapshot. When the provider's rate
limit binds (EC2: 100 calls at once, then 5 per second), preparing a node whose create call will
then queue in the limiter only lengthens its freeze. ``CreateCallPacer`` mirrors the provider's
token bucket (its declared ``Capabilities``) and lets a node be prepared only once its call will go
through at once. The mirror is charged when a call is actually submitted, exactly as the provider's
own bucket is, so a slow first burst of prepares cannot put the two out of step.
"""

from __future__ import annotations

import asyncio

from snapctl.providers import Provider
from snapctl.ratelimit import TokenBucket


class CreateCallPacer:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self._bucket = TokenBucket(rate_per_s, max(1, burst))
        self._promised = 0.0  # tokens of nodes let through whose calls are not submitted yet
        self._turn = asyncio.Lock()  # FIFO: nodes are let through in the order they asked

    @classmethod
    def for_provider(cls, provider: Provider) -> CreateCallPacer | None:
        caps = provider.capabilities
        if not caps.max_creates_per_s:
            return None
        return cls(caps.max_creates_per_s, caps.create_burst or 1)

    async def before_prepare(self, calls: int) -> None:
        """Return once ``calls`` create calls, submitted after every node already let through,
        would pass the provider's bucket without waiting."""
        calls = min(max(calls, 1), self._bucket.burst)
        async with self._turn:
            while (missing := self._promised + calls - self._bucket.available) > 0:
                await asyncio.sleep(missing / self._bucket.rate)
            self._promised += calls

    def submitted(self, calls: int) -> None:
        """The node's create calls go to the provider now: charge them, as its bucket will."""
        calls = min(max(calls, 1), self._bucket.burst)
        self._promised = max(0.0, self._promised - calls)
        self._bucket.reserve(calls)
