"""Per-client request rate limits for the agent: one token bucket per client address, endpoint, and
whether the request presents a valid token.

Every call under /v1 but health, and every /metrics scrape, can make the agent touch its engine (a
checkpoint, a lock, a scan of every table, a status query), so a runaway script or a retry storm
must not be able to hammer the database through its agent. snapctl itself needs a handful of calls
per run (status, prepare, a renew every lease/3, complete), far below the default. Over the limit
the agent answers 429 with ``Retry-After``. Requests refused before anything ran (body too large,
body not matching the schema) give their token back: a fuzzer or a broken client is not charged
for our refusals, while wrong tokens are (guessing costs).

Requests without a valid token are counted apart from those with one. Otherwise anyone who can
reach the agent from the holder's address (any local user, on loopback) could spend the holder's
budget with wrong tokens and have its complete refused (429), leaving the database held until
the lease ran out.

Refusals are logged as one line when they begin and then one line per ``report_every_s`` with
their count, and uvicorn's access log leaves them out (``quiet_refusals``): a flood must not write
a log line per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DEFAULT_RATE_PER_S = 20.0  # sustained requests per second, per client and endpoint
DEFAULT_BURST = 60  # requests a client may make at once to one endpoint
_MAX_BUCKETS = 4096  # the least recently seen clients are forgotten beyond this (they start full again)
REPORT_EVERY_S = 10.0  # refusals of one client and endpoint are logged as one line per this
_REFUNDED = frozenset({413, 422})
_EXEMPT = frozenset({"/v1/health"})
_METRICS = "/metrics"

log = logging.getLogger("snapctl.agent")


class ClientRateLimit:
    """ASGI middleware; put it outermost so it counts requests the token check refuses too.

    ``authorised`` says whether a request presents a token its path accepts (None: the agent has
    no token, every request is one kind)."""

    def __init__(self, app: ASGIApp, *, rate_per_s: float = DEFAULT_RATE_PER_S, burst: int = DEFAULT_BURST,
                 authorised: Callable[[Scope], bool] | None = None, report_every_s: float = REPORT_EVERY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.app = app
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._authorised = authorised
        self._report_every_s = report_every_s
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str, bool], tuple[float, float]] = OrderedDict()  # -> (tokens, at)
        self._unreported: dict[tuple[str, str, bool], int] = {}  # refusals since the last log line

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path.startswith("/v1/") or path == _METRICS) or path in _EXEMPT:
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown",))[0]
        authorised = self._authorised is None or self._authorised(scope)
        key = (client, path, authorised)
        wait_s = self._take(key)
        if wait_s > 0:
            self._count_refusal(key)
            await _too_many(send, key, self.rate_per_s, self.burst, wait_s)
            return
        status = 0

        async def noting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, noting_send)
        if status in _REFUNDED:
            self._give_back(key)

    def _take(self, key: tuple[str, str, bool]) -> float:
        """Take a token; 0 when granted, else the seconds until one is there."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        granted = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if granted else tokens, now)
        while len(self._buckets) > _MAX_BUCKETS:
            self._buckets.popitem(last=False)
        return 0.0 if granted else (1.0 - tokens) / self.rate_per_s

    def _give_back(self, key: tuple[str, str, bool]) -> None:
        if key in self._buckets:
            tokens, at = self._buckets[key]
            self._buckets[key] = (min(float(self.burst), tokens + 1.0), at)

    def _count_refusal(self, key: tuple[str, str, bool]) -> None:
        if key in self._unreported:
            self._unreported[key] += 1
            return
        self._unreported[key] = 0
        log.warning("refusing requests %s: more than %d at once or %g per second (429); "
                    "further refusals are counted and logged every %gs",
                    _requests(*key), self.burst, self.rate_per_s, self._report_every_s)
        asyncio.get_running_loop().call_later(self._report_every_s, self._report, key)

    def _report(self, key: tuple[str, str, bool]) -> None:
        count = self._unreported.pop(key, 0)
        if count:  # else the refusals stopped: the next one is logged at once again
            log.warning("refused %d more %s %s in the last %gs", count, "request" if count == 1 else "requests",
                        _requests(*key), self._report_every_s)
            self._unreported[key] = 0
            asyncio.get_running_loop().call_later(self._report_every_s, self._report, key)


def quiet_refusals(record: logging.LogRecord) -> bool:
    """A filter for uvicorn's access log: it leaves out the 429s, which ClientRateLimit logs summed up."""
    args = record.args
    return not (isinstance(args, tuple) and args and args[-1] == 429)


def _requests(client: str, path: str, authorised: bool) -> str:
    # Saying "without a valid token" tells a guesser nothing its 401s did not.
    return f"from {client} to {path}" if authorised else f"without a valid token from {client} to {path}"


async def _too_many(send: Send, key: tuple[str, str, bool], rate: float, burst: int, wait_s: float) -> None:
    # The agent's ErrorBody shape, built here so this module needs nothing from the app.
    hint = "slow down; retry after the Retry-After header's seconds"
    body = json.dumps({
        "error": f"too many requests {_requests(*key)}: more than {burst} at once or {rate:g} per second",
        "hint": hint if key[2] else f"send the agent's token; {hint}",
        "holder": None,
    }).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", str(max(1, math.ceil(wait_s))).encode())]
    await send({"type": "http.response.start", "status": 429, "headers": headers})
    await send({"type": "http.response.body", "body": body})
