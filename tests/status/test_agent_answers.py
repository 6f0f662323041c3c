"""An agent that answered with an error is not an agent that could not be reached: `snapctl status`
said "agent unreachable" for both, and an operator went looking for a network problem that was
not there. Real agents on loopback: a `snapctl-agent` process whose rate limit is driven for real
(429), and the agent's app with an engine that fails in a way it reports as 500."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from node_agent.app import create_app
from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from node_agent.service import AgentService
from snapctl.agent_client import HttpAgentClient
from snapctl.agent_transport import AgentTransport
from snapctl.errors import AgentError, ExitCode
from snapctl.status import collect_status
from tests.agent.conftest import TOKEN, agent_process, serve, write_config
from tests.conftest import LOOPBACK, free_port
from tests.fakes.serving import serving
from tests.status.conftest import VALIDATOR, load, make_db, record_run, validated, write_inventory
from tests.status.promtext import parse, value


def _inventory(tmp_path: Path, url: str) -> Path:
    (tmp_path / "agents.token").write_text(TOKEN + "\n")
    (tmp_path / "agents.token").chmod(0o600)
    (tmp_path / "gone").mkdir(exist_ok=True)
    nodes = [{"name": n, "agent": a, "volumes": [{"name": "data", "path": n}]}
             for n, a in (("n1", url), ("gone", f"http://{LOOPBACK}:{free_port()}"))]
    path = write_inventory(tmp_path, nodes, auth={"token_file": "agents.token"})
    record_run(load(path), "r-good", "succeeded", age_s=60)
    return path


def _snapctl(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")}
    return subprocess.run([sys.executable, "-m", "snapctl.cli", *args], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=90, check=False)


def _findings(doc: dict) -> dict[str, tuple[str, str]]:
    """Each finding as the text output says it: its message, then its hint."""
    return {f["subject"]: (f["severity"], f["message"] + (f" (hint: {f['hint']})" if f["hint"] else ""))
            for f in doc["data"]["verdict"]["findings"]}


def test_an_agent_over_its_rate_limit_is_said_to_answer_429_not_to_be_unreachable(tmp_path):
    (tmp_path / "n1").mkdir()
    db = make_db(tmp_path / "n1" / "data.db")
    config = write_config(tmp_path / "n1", db, extra="rate_per_s: 0.001\nburst: 2\n")
    with agent_process(config) as agent:
        inventory = _inventory(tmp_path, agent.url)
        # Another client from this address with the token (a script, a fast --watch) spends the budget.
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10) as other:
            answers = [other.get(agent.url + "/v1/status").status_code for _ in range(5)]
        assert answers[-1] == 429, answers
        (tmp_path / "prom").mkdir()
        run = _snapctl(tmp_path, "status", "-i", str(inventory), "-o", "json", "--textfile", "prom/status.prom")
        text = _snapctl(tmp_path, "status", "-i", str(inventory))
    assert run.returncode == ExitCode.CRITICAL, run.stderr
    doc = json.loads(run.stdout)
    VALIDATOR.validate(doc)
    severity, message = _findings(doc)["n1"]
    assert severity == "critical"
    # Not repeated: the agent asks for ~1000 s (less by the seconds its bucket refilled meanwhile, on
    # a loaded machine), past the 3 s the call may take.
    assert re.match(r"agent answered HTTP 429: the agent's rate limit refused /v1/status once \(it asked to wait "
                    r"(?:9\d\d|1000)s, past the call's 3s timeout\): too many requests from 127\.0\.0\.1 to /v1/status",
                    message), message
    assert "unreachable" not in message
    assert "hint: the agent limits requests per client address and endpoint (rate_per_s, burst" in message
    assert _findings(doc)["gone"][1].startswith("agent unreachable: cannot reach the agent at"), \
        "a node nothing listens for is still unreachable"
    n1, gone = doc["data"]["nodes"]
    assert (n1["reachable"], n1["authorized"], n1["http_status"]) == (False, True, 429)
    assert (gone["reachable"], gone["http_status"]) == (False, None)
    assert doc["data"]["verdict"]["safe_to_back_up"] is False
    assert "n1" in {f["subject"] for f in doc["data"]["verdict"]["preflight_refusals"]}
    samples = parse((tmp_path / "prom" / "status.prom").read_text())
    assert value(samples, "snapctl_status_node_reachable", cluster="st", node="n1") == 0
    assert value(samples, "snapctl_status_node_http_status", cluster="st", node="n1") == 429
    assert value(samples, "snapctl_status_node_http_status", cluster="st", node="gone") == 0
    assert text.returncode == ExitCode.CRITICAL
    table_row = next(line for line in text.stdout.splitlines() if line.strip().startswith("│ n1"))
    assert "HTTP 429" in table_row and "unreachable" not in table_row
    assert TOKEN not in run.stdout + run.stderr + text.stdout + text.stderr


class FailsToSayItsStatus(SqliteEngine):
    """An engine adapter with a bug: its status raises what the agent does not expect."""

    def status(self):
        raise RuntimeError("adapter bug at /srv/internal/detail")


def test_an_agent_that_answers_500_is_said_to_and_with_its_own_message(tmp_path):
    db = make_db(tmp_path / "n1" / "data.db")
    service = AgentService("n1", FailsToSayItsStatus(SqliteSettings(path=db.name), base_dir=db.parent))
    try:
        with serve(create_app(service, TOKEN)) as url:
            status = asyncio.run(collect_status(load(_inventory(tmp_path, url))))
    finally:
        service.close()
    doc = validated(status)
    assert _findings(doc)["n1"] == (
        "critical", "agent answered HTTP 500: internal error in the agent (hint: see the agent's log for details)")
    assert doc["data"]["nodes"][0]["http_status"] == 500
    assert doc["data"]["verdict"]["level"] == "critical" and doc["data"]["verdict"]["safe_to_back_up"] is False
    assert "/srv/internal/detail" not in json.dumps(doc), "internals stay in the agent's log"


@contextmanager
def answering(status: int, body: bytes) -> Iterator[str]:
    """Something other than a snapctl-agent at a node's address (another service given its port):
    every GET answered with ``status`` and the JSON ``body``."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    with serving(Handler) as url:
        yield url


def test_a_json_answer_that_is_no_agent_status_is_a_finding_not_a_traceback(tmp_path):
    # Another service's health document on the agent's port: `snapctl status` ended in a pydantic
    # traceback (exit 1, no JSON document for -o json), and so did the backup's preflight.
    (tmp_path / "n1").mkdir()
    with answering(200, b'{"status": "ok", "service": "something else"}') as url:
        inventory = _inventory(tmp_path, url)
        status = _snapctl(tmp_path, "status", "-i", str(inventory), "-o", "json")
        backup = _snapctl(tmp_path, "backup", "-i", str(inventory))
    assert "Traceback" not in status.stderr + backup.stderr, status.stderr + backup.stderr
    assert status.returncode == ExitCode.CRITICAL, status.stderr
    doc = json.loads(status.stdout)
    VALIDATOR.validate(doc)
    assert _findings(doc)["n1"][1] == (
        f"agent answered HTTP 200: the agent at {url} answered /v1/status with a document snapctl cannot read "
        "(node: field required) (hint: is a snapctl-agent listening there, of a version this snapctl speaks? "
        "its /v1/health names its version)")
    assert doc["data"]["nodes"][0]["http_status"] == 200 and doc["data"]["nodes"][0]["reachable"] is False
    assert backup.returncode == ExitCode.PREFLIGHT_REFUSED, backup.stderr
    assert "n1: agent answered HTTP 200: the agent at" in backup.stderr


async def _health(url: str):
    transport = AgentTransport()
    try:
        return await HttpAgentClient("n1", url, transport, token=TOKEN, timeout_s=10).health()
    finally:
        await transport.aclose()


@pytest.mark.parametrize("body", [
    # What json.loads reads and pydantic's own JSON parser refuses: snapctl reads an answer from its
    # bytes with the latter first (docs/performance-log.md, item 64), and these must still be read.
    b'\xef\xbb\xbf{"status": "ok", "agent_version": "1.2"}',  # a byte order mark before it
    b'{"status": "ok", "agent_version": "1.2\\ud800"}',  # a lone surrogate's escape
])
def test_an_answer_only_the_standard_json_parser_reads_is_read_as_before(body):
    with answering(200, body) as url:
        health = asyncio.run(_health(url))
    assert health.agent_version.startswith("1.2")


@pytest.mark.parametrize(("body", "said"), [
    (b"<html>it works</html>", "answered /v1/health with a non-JSON body"),
    (b'{"status": "ok"}', "answered /v1/health with a document snapctl cannot read (agent_version: field required)"),
    (b'["ok"]', "answered /v1/health with a document snapctl cannot read (the document: input should be a valid "
                "dictionary or instance of Health)"),
])
def test_an_answer_that_is_no_agents_is_refused_in_the_words_of_the_step_that_refuses_it(body, said):
    with answering(200, body) as url, pytest.raises(AgentError) as refused:
        asyncio.run(_health(url))
    assert refused.value.message == f"node n1: the agent at {url} {said}"


def test_an_agent_newer_than_snapctl_is_read_without_the_fields_it_added(tmp_path):
    # Agents are upgraded node by node, often before the control host: a field a newer agent adds
    # to its status (models.py: add fields, never repurpose them) made this snapctl call the node
    # unreadable, critical, and refuse every backup until the control host was upgraded too.
    db = make_db(tmp_path / "n1" / "data.db")
    service = AgentService("n1", SqliteEngine(SqliteSettings(path=db.name), base_dir=db.parent))
    try:
        with serve(create_app(service, TOKEN)) as url:
            answer = httpx.get(url + "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    finally:
        service.close()
    answer["added_by_a_newer_agent"] = {"anything": 1}
    answer["engine"]["added_too"] = "deeper"
    with answering(200, json.dumps(answer).encode()) as url:
        status = asyncio.run(collect_status(load(_inventory(tmp_path, url))))
    doc = validated(status)
    n1 = doc["data"]["nodes"][0]
    assert (n1["reachable"], n1["http_status"], n1["engine"]["up"]) == (True, 200, True)
    assert "n1" not in _findings(doc), _findings(doc)


def test_an_error_that_echoes_our_token_is_shown_with_the_token_blanked(tmp_path):
    # A gateway in front of an agent that refuses a request and repeats it back, header and all:
    # its words went into the finding, the JSON document and the textfile's neighbours as they came.
    body = json.dumps({"error": f"upstream refused GET /v1/status (Authorization: Bearer {TOKEN})",
                       "hint": f"retry with a token other than {TOKEN}", "added_by_a_newer_agent": 1}).encode()
    with answering(502, body) as url:
        status = asyncio.run(collect_status(load(_inventory(tmp_path, url))))
    doc = validated(status)
    assert _findings(doc)["n1"] == ("critical", ("agent answered HTTP 502: upstream refused GET /v1/status "
                                                 "(Authorization: Bearer <token>) (hint: retry with a token other "
                                                 "than <token>)"))
    assert TOKEN not in json.dumps(doc)


def test_another_service_on_the_agents_port_is_no_agent_and_no_force_gets_past_it(tmp_path):
    # A web server's 404 page on the agent's port read "agent answered HTTP 404 ... see n1's agent
    # log", a finding --force overrode: the forced backup then held the other nodes and failed on
    # n1's prepare (501), its rollback saying a lease would expire that no agent ever granted.
    (tmp_path / "n1").mkdir()
    with answering(404, b"<html><body><h1>404 Not Found</h1></body></html>") as url:
        inventory = _inventory(tmp_path, url)
        status = _snapctl(tmp_path, "status", "-i", str(inventory), "-o", "json")
        forced = _snapctl(tmp_path, "backup", "--force", "-i", str(inventory))
    assert status.returncode == ExitCode.CRITICAL, status.stderr
    doc = json.loads(status.stdout)
    VALIDATOR.validate(doc)
    [n1] = [f for f in doc["data"]["verdict"]["findings"] if f["subject"] == "n1"]
    assert n1["message"] == (f"what answers at {url} is no snapctl agent: HTTP 404 to /v1/status, without an "
                             "agent's error (another service on that port?)")
    assert n1["forceable"] is False and n1["hint"].startswith("point n1's agent: at the address its snapctl-agent")
    assert forced.returncode == ExitCode.PREFLIGHT_REFUSED, forced.stderr
    assert "n1: what answers at" in forced.stderr and "--force did not override these" in forced.stderr
