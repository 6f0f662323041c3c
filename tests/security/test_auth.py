"""Token auth on every agent endpoint except the public ones, checked against a real agent process;
the comparison is hmac.compare_digest whatever the token's length; where the token comes from."""

from __future__ import annotations

import hmac
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from node_agent.app import create_app
from node_agent.config import parse_agent_config
from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from node_agent.service import AgentService
from tests.agent.conftest import TOKEN as AGENT_TOKEN
from tests.agent.conftest import agent_process, make_db, write_config
from tests.faults.harness import TOKEN, FaultCluster, create_db
from tests.security.conftest import serve

# Reachable without a token, by design: liveness and the API's description (JSON, nothing the
# source does not say).
PUBLIC = {"/v1/health", "/openapi.json"}
REPO = Path(__file__).resolve().parents[2]

BAD_CREDENTIALS = {
    "none": {},
    "empty bearer": {"Authorization": "Bearer"},
    "wrong": {"Authorization": "Bearer not-the-token"},
    "prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "longer": {"Authorization": f"Bearer {TOKEN}0"},
    "other scheme": {"Authorization": f"Basic {TOKEN}"},
    "no scheme": {"Authorization": TOKEN},
    "not ascii": {"Authorization": "Bearer ünïcödé".encode("latin-1")},
}


@pytest.fixture
def service(tmp_path: Path):
    create_db(tmp_path / "db.sqlite")
    service = AgentService("n1", SqliteEngine(SqliteSettings(path="db.sqlite", timeout_s=2), base_dir=tmp_path))
    yield service
    service.close()


def endpoints(service: AgentService) -> list[tuple[str, str]]:
    """Every (method, path) the agent's app serves: a new endpoint is covered without editing this test."""
    found = []
    for route in create_app(service, TOKEN).routes:
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                found.append((method, route.path))
    return found


def test_every_endpoint_but_the_public_ones_refuses_a_missing_or_wrong_token(solo: FaultCluster, service) -> None:
    routes = endpoints(service)
    assert {path for _, path in routes} >= PUBLIC
    protected = [(m, p) for m, p in routes if p not in PUBLIC]
    assert {p for _, p in protected} >= {"/v1/status", "/v1/prepare", "/v1/renew", "/v1/complete", "/v1/trigger",
                                         "/v1/restore-prepare", "/v1/verify", "/metrics"}
    body = {"run_id": "r-unauthorized", "lease_s": 600}
    with httpx.Client(base_url=solo.url("solo"), timeout=10) as client:
        for method, path in protected:
            for what, headers in BAD_CREDENTIALS.items():
                response = client.request(method, path, headers=headers, json=body if method == "POST" else None)
                assert response.status_code == 401, (method, path, what, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"] in ("missing bearer token", "wrong bearer token")
                assert TOKEN not in response.text
            right = client.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"},
                                   json=body if method == "POST" else None)
            assert right.status_code != 401, (method, path)
            if path == "/v1/prepare":
                client.post("/v1/complete", json={"run_id": body["run_id"]},
                            headers={"Authorization": f"Bearer {TOKEN}"}).raise_for_status()
        for path in sorted(PUBLIC):
            response = client.get(path)
            assert response.status_code == 200, path
            assert TOKEN not in response.text
    # Refused requests did nothing: only the authorised prepare ever held the engine.
    log = solo.agents["solo"].log.read_text()
    assert log.count("prepared for run r-unauthorized") == 1
    assert solo.lease("solo") is None


def test_the_token_is_compared_with_compare_digest_whatever_its_length(service, monkeypatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(given, expected):
        seen.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    offered = ["x" * len(TOKEN), "short", TOKEN + "-and-more", TOKEN]
    with serve(create_app(service, TOKEN)) as url:
        codes = [httpx.get(url + "/v1/status", headers={"Authorization": f"Bearer {token}"}).status_code
                 for token in offered]
    assert codes == [401, 401, 401, 200]
    assert seen == [(token.encode(), TOKEN.encode()) for token in offered]


def test_the_token_comes_from_the_file_first_then_the_environment(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "token").write_text("\n  from-the-file \nrotated 2026-12-01: a note, not the token\n")
    monkeypatch.setenv("SNAPCTL_AGENT_TOKEN", "from-the-env")
    base = "node: n1\nengine: {type: sqlite, path: db.sqlite}\n"
    assert parse_agent_config(base + "token_file: token\n", base_dir=tmp_path).read_token() == "from-the-file"
    assert parse_agent_config(base, base_dir=tmp_path).read_token() == "from-the-env"
    monkeypatch.setenv("CUSTOM_TOKEN_VAR", "custom")
    assert parse_agent_config(base + "token_env: CUSTOM_TOKEN_VAR\n", base_dir=tmp_path).read_token() == "custom"
    monkeypatch.setenv("SNAPCTL_AGENT_TOKEN", "   ")
    assert parse_agent_config(base, base_dir=tmp_path).read_token() is None  # blank is no token, not ""


def test_the_metrics_token_opens_metrics_and_nothing_else(tmp_path) -> None:
    db = tmp_path / "m.db"
    create_db(db)
    service = AgentService("m1", SqliteEngine(SqliteSettings(type="sqlite", path=str(db)), base_dir=tmp_path))
    scraper = {"Authorization": "Bearer scraper-only-t0ken"}
    try:
        with serve(create_app(service, TOKEN, metrics_token="scraper-only-t0ken")) as url:
            assert httpx.get(f"{url}/metrics", headers=scraper).status_code == 200
            assert httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
            assert httpx.get(f"{url}/metrics").status_code == 401
            for method, path in (("GET", "/v1/status"), ("POST", "/v1/prepare"), ("POST", "/v1/complete")):
                response = httpx.request(method, f"{url}{path}", headers=scraper,
                                         json={"run_id": "r1", "lease_s": 5} if method == "POST" else None)
                assert response.status_code == 401, (method, path)
    finally:
        service.close()


def test_an_agent_without_a_token_answers_loopback_names_only(tmp_path: Path) -> None:
    # A web page opened on the host could reach a token-less agent by DNS rebinding (its own name,
    # re-resolved to 127.0.0.1: a same-origin JSON POST) and hold the database for an hour.
    create_db(tmp_path / "db.sqlite")
    service = AgentService("n1", SqliteEngine(SqliteSettings(path="db.sqlite", timeout_s=2), base_dir=tmp_path))
    try:
        with serve(create_app(service, None)) as url, httpx.Client(base_url=url) as client:
            body = {"run_id": "evil", "lease_s": 3600}
            for host in ("evil.example:7700", "evil.example", "127.0.0.1.evil.example", "10.0.0.5:7700"):
                refused = client.post("/v1/prepare", json=body, headers={"Host": host})
                assert refused.status_code == 421, host
                assert refused.json()["error"].startswith(f"refusing a request for host {host.split(':')[0]}: ")
                assert "hint" in refused.json() and refused.json()["hint"]
            assert service.lease is None
            port = url.rsplit(":", 1)[1]
            for host in (f"127.0.0.1:{port}", "localhost", f"localhost:{port}", "127.1.2.3", f"[::1]:{port}"):
                assert client.get("/v1/status", headers={"Host": host}).status_code == 200, host
            assert client.post("/v1/prepare", json={"run_id": "r1", "lease_s": 30}).status_code == 200
            assert client.post("/v1/complete", json={"run_id": "r1"}).json()["released"] is True
    finally:
        service.close()


def test_a_web_page_cannot_drive_an_agent_with_or_without_a_token(tmp_path: Path) -> None:
    # A page on any site could send a "simple" cross-origin POST (text/plain, no preflight) to a
    # token-less agent on 127.0.0.1: the browser sends Host 127.0.0.1:PORT, which passes the
    # rebinding check, and only the answer is kept from the page. Trigger, verify and
    # restore-prepare ran.
    config = write_config(tmp_path, make_db(tmp_path / "data.db"), token=None, extra="restore_target: true\n")
    page = {"Content-Type": "text/plain", "Origin": "http://evil.example"}
    with agent_process(config) as agent, httpx.Client(base_url=agent.url, timeout=10) as client:
        for path in ("/v1/trigger", "/v1/verify", "/v1/restore-prepare"):
            refused = client.post(path, headers=page, content=b"")
            assert refused.status_code == 403, path
            assert refused.json() == {
                "error": "refusing a request from a web page (origin http://evil.example): the agent serves no browser",
                "hint": "call the agent with snapctl, curl or a script, which send no Origin or Sec-Fetch-Site header",
                "holder": None}
        assert client.post("/v1/verify", headers={**page, "Origin": "null"}).status_code == 403  # a sandboxed frame
        # A GET needs no Origin from a browser, but says where it came from.
        assert client.get("/v1/status", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert client.get("/v1/health", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
        # A loopback origin is this host's own, like any process on it; snapctl sends neither header.
        port = agent.url.rsplit(":", 1)[1]
        for origin in (f"http://127.0.0.1:{port}", "http://localhost:3000", "https://[::1]:8443"):
            assert client.post("/v1/verify", headers={**page, "Origin": origin}).status_code == 200, origin
        assert client.post("/v1/trigger", headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert client.post("/v1/verify").status_code == 200
    with_token = tmp_path / "with-token"
    with_token.mkdir()
    holder = {"Authorization": f"Bearer {AGENT_TOKEN}"}
    with agent_process(write_config(with_token, make_db(with_token / "data.db"))) as agent:
        assert httpx.get(agent.url + "/v1/status", headers={**holder, "Origin": "http://evil.example"}
                         ).status_code == 403
        assert httpx.get(agent.url + "/v1/status", headers=holder).status_code == 200


def test_no_page_of_the_agent_runs_javascript(solo: FaultCluster) -> None:
    # /docs and /redoc, served without a token, loaded Swagger UI's and ReDoc's JavaScript from a
    # CDN into the agent's own origin: whoever served that script could call a token-less agent
    # from there as a same-origin page.
    with httpx.Client(base_url=solo.url("solo"), timeout=10) as client:
        for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
            page = client.get(path)
            assert page.status_code == 404 and "<script" not in page.text, path
        described = client.get("/openapi.json")
        assert described.headers["content-type"] == "application/json"
        assert "/v1/prepare" in described.json()["paths"]


def test_the_agent_api_has_no_call_that_lists_deletes_or_restores_a_snapshot(service) -> None:
    """docs/security.md: neither an agent nor its token can list, delete or restore a snapshot. Its
    calls are these and no more (a new one is a decision this test makes someone take), and the
    agent's code loads no provider, catalog or cloud SDK it could do it with."""
    assert set(endpoints(service)) == {
        ("GET", "/v1/health"), ("GET", "/openapi.json"), ("GET", "/metrics"), ("GET", "/v1/status"),
        ("POST", "/v1/prepare"), ("POST", "/v1/renew"), ("POST", "/v1/complete"), ("POST", "/v1/trigger"),
        ("POST", "/v1/restore-prepare"), ("POST", "/v1/verify"),
    }
    engines = ", ".join(f"node_agent.engines.{p.stem}" for p in (REPO / "node_agent" / "engines").glob("*.py"))
    loaded = subprocess.run(
        [sys.executable, "-c", f"import sys, node_agent.main, node_agent.app, {engines}; print(' '.join(sys.modules))"],
        capture_output=True, text=True, check=True, cwd=REPO, timeout=60).stdout.split()
    able = [m for m in loaded if m.split(".")[0] in ("boto3", "botocore", "aiobotocore", "google", "azure")
            or m.split(".")[0].startswith("snapctl_") or m.startswith(("snapctl.providers", "snapctl.catalog"))]
    assert "node_agent.engines.sqlite" in loaded and able == []
