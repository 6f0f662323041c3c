"""Fan out to every agent at once, each call bounded: a dead or slow node never holds up the rest."""

from __future__ import annotations

import asyncio
import re
import time

from snapctl.agent_client import UNREACHABLE_HINT, AgentClient
from snapctl.errors import AgentError, AgentTimeout, AgentUnauthorized, AgentUnreachable, NotAnAgent, SnapctlError
from snapctl.health import NodeProbe

_SAID_AT_MOST = 300  # characters of what an agent said: a finding is one line of a log


async def probe_all(agents: dict[str, AgentClient], timeout_s: float) -> list[NodeProbe]:
    """``timeout_s``: the clients' own timeout, which bounds each probe (named in its error)."""
    return list(await asyncio.gather(*(probe(name, client, timeout_s) for name, client in agents.items())))


async def probe(name: str, client: AgentClient, timeout_s: float) -> NodeProbe:
    started = time.monotonic()
    result = NodeProbe(node=name)
    try:
        # The client bounds the call itself (AgentClient): a second timer per node is CPU for
        # nothing (a warm 1000-agent fan-out: 146 -> 128 ms without it, docs/performance-log.md item 26).
        result.status = await client.status()
        result.http_status = 200
    except AgentUnauthorized as exc:  # with its hint: which token setting to fix
        result.unauthorized, result.http_status, result.refused = True, exc.status, exc.refused
        result.error = f"{exc.reason} (hint: {exc.hint})" if exc.hint else exc.reason
    except AgentTimeout:
        result.error = f"no answer within {timeout_s:g}s"
    except AgentUnreachable as exc:  # its finding names the node already
        # A hint that knows the cause (an agent certificate from another CA) beats the finding's
        # "start its agent"; the client's generic one does not, so that one is left to the finding.
        known = exc.hint and not exc.hint.startswith(UNREACHABLE_HINT)
        result.error = f"{exc.reason} (hint: {exc.hint})" if known else exc.reason
    except AgentError as exc:  # it answered, with an error: the network is not the problem
        result.http_status, result.not_agent = exc.status, isinstance(exc, NotAnAgent)
        hint = exc.hint  # a 429's names the rate limit (agent_client.RATE_LIMITED_HINT)
        said = _one_line(exc.reason)
        result.error = f"{said} (hint: {_one_line(hint)})" if hint else said
    except SnapctlError as exc:
        result.error = exc.message
    result.elapsed_s = time.monotonic() - started
    return result


def _one_line(text: str) -> str:
    """An agent's words as one bounded line: an engine's error may span lines (a server's own
    message, a stack), and status prints every finding on one line of a log."""
    line = re.sub(r"\s+", " ", text).strip()
    return line if len(line) <= _SAID_AT_MOST else line[:_SAID_AT_MOST - 1] + "…"
