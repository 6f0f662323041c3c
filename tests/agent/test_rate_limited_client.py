"""snapctl's client against an agent over its rate limit (429 with Retry-After): a refused renew,
complete or status was an error, so a backup failed, its rollback's complete could be refused too
and the database stayed held until the lease ran out. Those requests are sent again after
Retry-After, within the call's timeout and a bounded number of tries; a prepare is not (the nodes
already held would wait for it, frozen). Real agent processes on loopback, their buckets spent by
another client of the same token and address (a script), our client's requests counted by a proxy
in front of the agent: what it sent, whatever the agent's log says of the script's."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from snapctl.agent_client import RATE_LIMITED_HINT, HttpAgentClient
from snapctl.agent_transport import AgentTransport
from snapctl.errors import AgentError
from snapctl.status import collect_status
from tests.agent.conftest import TOKEN, agent_process, make_db, try_write, write_config
from tests.fakes.serving import serving
from tests.faults.proxy import LoopbackProxy
from tests.status.conftest import load, validated, write_inventory

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def spend(agent_url: str, method: str, path: str, body: dict | None = None) -> None:
    """Another client with the same token from the same address (a script) spends ``path``'s budget:
    requests the agent refuses without doing anything, until it answers 429."""
    with httpx.Client(base_url=agent_url, headers=AUTH, timeout=10) as other:
        for _ in range(20):
            if other.request(method, path, json=body).status_code == 429:
                return
    raise AssertionError(f"{path} never answered 429")


@asynccontextmanager
async def client(url: str, timeout_s: float = 5.0) -> AsyncIterator[HttpAgentClient]:
    """snapctl's client of node n1 at ``url``, on a transport of its own, closed on the way out."""
    transport = AgentTransport()
    try:
        yield HttpAgentClient("n1", url, transport, token=TOKEN, timeout_s=timeout_s)
    finally:
        await transport.aclose()


@contextmanager
def counted(agent_url: str) -> Iterator[LoopbackProxy]:
    """A proxy in front of the agent: its ``requests`` are what our client sent, refused or not."""
    proxy = LoopbackProxy(httpx.URL(agent_url).port)
    try:
        yield proxy
    finally:
        proxy.close()


def sent(proxy: LoopbackProxy, method: str, path: str) -> int:
    return proxy.requests.count(f"{method} {path} HTTP/1.1")


# Retry-After 2: a token comes back 2 s after the script's last request, far more than the moment
# between it and ours, so ours is refused by the agent itself and only its repeat is answered.
SLOW_REFILL = "rate_per_s: 0.5\nburst: 2\n"


def test_a_renew_and_complete_refused_429_are_repeated_and_the_database_released(tmp_path: Path) -> None:
    db = make_db(tmp_path / "data.db")
    config = write_config(tmp_path, db, extra=SLOW_REFILL)

    async def backup_cycle(url: str, agent_url: str) -> bool:
        async with client(url) as agent:
            await agent.status()  # the token accepted from this address: its requests have a budget of their own
            await agent.prepare("r1", 600)
            held = not try_write(db)
            await asyncio.to_thread(spend, agent_url, "POST", "/v1/renew", {"run_id": "nope"})
            await agent.renew("r1")
            await asyncio.to_thread(spend, agent_url, "POST", "/v1/complete", {"run_id": "nope"})
            assert (await agent.complete("r1")).released is True
            return held

    with agent_process(config) as process, counted(process.url) as proxy:
        assert asyncio.run(backup_cycle(proxy.url, process.url)) is True
        assert try_write(db), "the database is released"
    for path in ("/v1/renew", "/v1/complete"):  # ours refused once, then answered
        assert sent(proxy, "POST", path) == 2, proxy.requests


def test_a_prepare_refused_429_is_sent_once_naming_the_limit_and_holds_nothing(tmp_path: Path) -> None:
    db = make_db(tmp_path / "data.db")
    config = write_config(tmp_path, db, extra=SLOW_REFILL)

    async def prepare(url: str, agent_url: str) -> None:
        async with client(url) as agent:
            await agent.status()
            too_far = (datetime.now(UTC) + timedelta(days=1)).isoformat()
            await asyncio.to_thread(spend, agent_url, "POST", "/v1/prepare", {"run_id": "x", "lease_s": 30,
                                                                              "hold_at": too_far})
            await agent.prepare("r1", 600)

    with agent_process(config) as process, counted(process.url) as proxy:
        with pytest.raises(AgentError) as caught:
            asyncio.run(prepare(proxy.url, process.url))
        assert try_write(db), "nothing held"
    assert sent(proxy, "POST", "/v1/prepare") == 1, proxy.requests
    assert caught.value.status == 429 and caught.value.hint == RATE_LIMITED_HINT
    assert caught.value.message == (
        "node n1: the agent's rate limit refused /v1/prepare once: too many requests from 127.0.0.1 to /v1/prepare: "
        "more than 2 at once or 0.5 per second")


def test_a_rate_limit_that_would_outlast_the_call_fails_at_once_naming_node_and_limit(tmp_path: Path) -> None:
    db = make_db(tmp_path / "data.db")
    config = write_config(tmp_path, db, extra="rate_per_s: 0.01\nburst: 2\n")  # Retry-After: 100 s

    async def complete(url: str) -> None:
        async with client(url, timeout_s=3) as agent:
            await agent.prepare("r1", 600)
            await asyncio.to_thread(spend, url, "POST", "/v1/complete", {"run_id": "nope"})
            await agent.complete("r1")

    with agent_process(config) as process:
        with pytest.raises(AgentError) as caught:
            asyncio.run(complete(process.url))
    error = caught.value
    assert error.status == 429
    assert error.message == (
        "node n1: the agent's rate limit refused /v1/complete once (it asked to wait 100s, past the call's 3s "
        "timeout): too many requests from 127.0.0.1 to /v1/complete: more than 2 at once or 0.01 per second")
    assert error.hint == RATE_LIMITED_HINT
    assert try_write(db), "the agent released its hold when it stopped"


@contextmanager
def always_429(retry_after: str | None = "0", arrived: list[float] | None = None) -> Iterator[tuple[str, list[str]]]:
    """Something in front of an agent (a proxy) that answers every request 429; yields its URL and
    the paths it was asked. ``arrived``: filled with the monotonic time each request came."""
    asked: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _refuse(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            asked.append(self.path)
            if arrived is not None:
                arrived.append(time.monotonic())
            body = json.dumps({"error": "slow down", "hint": None, "holder": None}).encode()
            self.send_response(429)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _refuse

        def log_message(self, *args) -> None:
            pass

    with serving(Handler) as url:
        yield url, asked


def call(url: str, verb: str, *args) -> None:
    async def go() -> None:
        async with client(url) as agent:
            await getattr(agent, verb)(*args)

    asyncio.run(go())


def test_an_agent_that_keeps_answering_429_is_tried_a_bounded_number_of_times() -> None:
    with always_429() as (url, asked), pytest.raises(AgentError) as caught:
        call(url, "renew", "r1")
    assert asked == ["/v1/renew"] * 4
    assert caught.value.status == 429 and caught.value.hint == RATE_LIMITED_HINT
    assert caught.value.message.startswith("node n1: the agent's rate limit refused /v1/renew 4 times in ")
    assert caught.value.message.endswith("s: slow down")


@pytest.mark.parametrize("verb, args, path", [("trigger", (), "/v1/trigger"),
                                               ("restore_prepare", (), "/v1/restore-prepare"),
                                               ("prepare", ("r1", 30), "/v1/prepare")])
def test_requests_that_are_not_safe_to_repeat_are_sent_once(verb: str, args: tuple, path: str) -> None:
    with always_429() as (url, asked), pytest.raises(AgentError) as caught:
        call(url, verb, *args)
    assert asked == [path]
    assert caught.value.message == f"node n1: the agent's rate limit refused {path} once: slow down"
    assert caught.value.hint == RATE_LIMITED_HINT


def test_a_429_without_retry_after_is_repeated_after_a_second_within_the_calls_timeout() -> None:
    async def status() -> None:
        async with client(url, timeout_s=2.5) as agent:
            await agent.status()

    arrived: list[float] = []
    with always_429(retry_after=None, arrived=arrived) as (url, asked), pytest.raises(AgentError) as caught:
        asyncio.run(status())
    # How many fit in 2.5 s is the machine's to decide (3 when round trips are quick); a fourth
    # never does, and every one waited its second.
    tries = len(asked)
    assert asked == ["/v1/status"] * tries and 2 <= tries <= 3, asked
    assert all(later - earlier >= 1.0 for earlier, later in itertools.pairwise(arrived)), arrived
    said = re.fullmatch(r"node n1: the agent's rate limit refused /v1/status (\d) times in ([\d.]+)s \(it asked to "
                        r"wait 1s, past the call's 2.5s timeout\): slow down", caught.value.message)
    assert said, caught.value.message
    assert int(said[1]) == tries and float(said[2]) <= 2.5  # given up within the call's timeout


def test_status_over_a_rate_limited_agent_is_repeated_within_its_timeout(tmp_path: Path) -> None:
    (tmp_path / "n1").mkdir()
    db = make_db(tmp_path / "n1" / "data.db")
    config = write_config(tmp_path / "n1", db, extra=SLOW_REFILL)  # Retry-After 2, within the 3 s
    (tmp_path / "agents.token").write_text(TOKEN + "\n")
    (tmp_path / "agents.token").chmod(0o600)
    with agent_process(config) as process, counted(process.url) as proxy:
        inventory = write_inventory(tmp_path, [{"name": "n1", "agent": proxy.url,
                                                "volumes": [{"name": "data", "path": "n1"}]}],
                                    auth={"token_file": "agents.token"})  # agent_timeout_s: 3s
        spend(process.url, "GET", "/v1/status")  # a fast --watch from this host
        doc = validated(asyncio.run(collect_status(load(inventory))))
    assert sent(proxy, "GET", "/v1/status") == 2, proxy.requests  # ours refused once, then answered
    node = doc["data"]["nodes"][0]
    assert (node["reachable"], node["http_status"]) == (True, 200), node
    assert not [f for f in doc["data"]["verdict"]["findings"] if f["subject"] == "n1" and f["severity"] == "critical"]
