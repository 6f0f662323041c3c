"""The agent's HTTP API over real HTTP (uvicorn on loopback, httpx as the client)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from node_agent.app import create_app
from node_agent.engines.sqlite import SqliteEngine, SqliteSettings
from node_agent.models import AgentStatus, ErrorBody, PrepareResponse
from node_agent.service import AgentService
from tests.agent.conftest import TOKEN, make_db, serve, try_write

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextmanager
def served(engine, *, token: str | None = TOKEN, max_body_bytes: int = 64 * 1024) -> Iterator[httpx.Client]:
    service = AgentService("n1", engine)
    try:
        with serve(create_app(service, token, max_body_bytes=max_body_bytes)) as url:
            with httpx.Client(base_url=url, headers=AUTH if token else {}, timeout=30) as client:
                yield client
    finally:
        service.close()


@pytest.fixture
def api(engine: SqliteEngine) -> Iterator[httpx.Client]:
    with served(engine) as client:
        yield client


def error_of(response: httpx.Response) -> ErrorBody:
    return ErrorBody.model_validate(response.json())


def test_a_backup_cycle_over_http(api: httpx.Client, db: Path) -> None:
    hold_at = datetime.now(UTC) + timedelta(seconds=0.2)
    prepared = api.post("/v1/prepare", json={"run_id": "run-1", "lease_s": 60, "hold_at": hold_at.isoformat()})
    assert prepared.status_code == 200, prepared.text
    state = PrepareResponse.model_validate(prepared.json())
    assert state.state.prepared_at >= hold_at
    assert state.state.facts.tables["items"].rows == 10
    assert not try_write(db)

    status = AgentStatus.model_validate(api.get("/v1/status").json())
    assert status.lease.run_id == "run-1" and status.engine.held

    assert api.post("/v1/renew", json={"run_id": "run-1", "lease_s": 30}).status_code == 200
    done = api.post("/v1/complete", json={"run_id": "run-1"}).json()
    assert done["released"] is True
    assert api.post("/v1/complete", json={"run_id": "run-1"}).json()["released"] is False
    assert try_write(db)

    assert api.post("/v1/verify").json()["tables"]["items"]["rows"] == 11
    jobs = api.post("/v1/trigger", json={"target": None}).json()["jobs"]
    assert [j["status"] for j in jobs] == ["succeeded"]
    assert api.post("/v1/trigger").status_code == 200  # the body is optional
    assert api.post("/v1/restore-prepare", json={"path": str(db.parent)}).status_code == 204


def test_conflict_is_409_naming_the_holder(api: httpx.Client) -> None:
    api.post("/v1/prepare", json={"run_id": "run-1", "lease_s": 60}).raise_for_status()
    for path, body in (("/v1/prepare", {"run_id": "run-2", "lease_s": 60}), ("/v1/complete", {"run_id": "run-2"})):
        response = api.post(path, json=body)
        assert response.status_code == 409
        error = error_of(response)
        assert error.holder == "run-1" and "run-1" in error.error


def test_invalid_requests_get_one_line_naming_the_field(api: httpx.Client) -> None:
    bad_run = api.post("/v1/prepare", json={"run_id": "no spaces", "lease_s": 60})
    assert bad_run.status_code == 422
    assert error_of(bad_run).error.startswith("run_id: string should match pattern")

    unknown = api.post("/v1/complete", json={"run_id": "run-1", "force": True})
    assert unknown.status_code == 422 and error_of(unknown).error == "unknown field 'force'"

    not_json = api.post("/v1/prepare", content=b"{", headers={"content-type": "application/json"})
    assert not_json.status_code == 422 and error_of(not_json).error == "request body is not valid JSON"

    too_long = api.post("/v1/prepare", json={"run_id": "run-1", "lease_s": 99999})
    assert too_long.status_code == 422 and error_of(too_long).error.startswith("lease_s:")

    bad_target = api.post("/v1/trigger", json={"target": "nope"})
    assert bad_target.status_code == 400 and "unknown trigger target" in error_of(bad_target).error


@pytest.mark.parametrize(("path", "body", "error", "hint"), [
    ("/v1/prepare", {"run_id": "r1", "lease_s": "30"}, 'lease_s: expected a number, got a string ("30")',
     'send the number itself, not a string: "lease_s": 30'),
    ("/v1/prepare", {"run_id": "r1", "lease_s": True}, "lease_s: expected a number, got true", None),
    ("/v1/renew", {"run_id": "r1", "lease_s": "12.5"}, 'lease_s: expected a number, got a string ("12.5")',
     'send the number itself, not a string: "lease_s": 12.5'),
    ("/v1/prepare", {"run_id": 42, "lease_s": 30}, "run_id: expected a string, got a number (42)", None),
    ("/v1/complete", {"run_id": ["r1"]}, "run_id: expected a string, got an array", None),
    ("/v1/prepare", {"run_id": "r1", "lease_s": 30, "hold_at": 1767225600},
     "hold_at: expected an ISO 8601 time with its zone, got a number (1767225600)",
     "send UTC with its zone, e.g. 2026-12-06T02:15:03Z"),
    ("/v1/prepare", {"run_id": "r1", "lease_s": 30, "hold_at": "2026-01-01T00:00:00"},
     'hold_at: expected an ISO 8601 time with its zone, got a time without one ("2026-01-01T00:00:00")',
     "send UTC with its zone, e.g. 2026-12-06T02:15:03Z"),
    ("/v1/trigger", {"target": 7}, "target: expected a string, got a number (7)", None),
    ("/v1/restore-prepare", {"path": False}, "path: expected a string, got false", None),
    ("/v1/prepare", ["r1", 30], "request body: expected a JSON object, got an array", None),
], ids=["lease-as-string", "lease-as-bool", "renew-lease-as-string", "run-id-as-number", "run-id-as-array",
        "hold-at-as-number", "hold-at-without-zone", "target-as-number", "path-as-bool", "body-as-array"])
def test_values_of_the_wrong_json_type_are_refused_not_coerced(api: httpx.Client, db: Path, path: str, body: object,
                                                                error: str, hint: str | None) -> None:
    # pydantic's lax mode took "30" for 30 and true for 1: a client's type mistake held the database.
    refused = api.post(path, json=body)
    assert refused.status_code == 422, refused.text
    assert (error_of(refused).error, error_of(refused).hint) == (error, hint)
    assert api.get("/v1/status").json()["lease"] is None and try_write(db)


@pytest.mark.parametrize(("path", "lease"), [("/v1/prepare", "NaN"), ("/v1/prepare", "Infinity"),
                                           ("/v1/prepare", "-Infinity"), ("/v1/renew", "NaN")])
def test_a_lease_of_nan_or_infinity_is_refused_as_no_finite_number(api: httpx.Client, db: Path, path: str,
                                                                     lease: str) -> None:
    # Python's JSON reads NaN and Infinity: NaN was refused as "input should be less than or equal to 3600".
    refused = api.post(path, content=f'{{"run_id": "r1", "lease_s": {lease}}}',
                       headers={"Content-Type": "application/json"})
    assert refused.status_code == 422, refused.text
    assert (error_of(refused).error, error_of(refused).hint) == (
        f"lease_s: expected a finite number, got {lease}", 'send a number of seconds, e.g. "lease_s": 30')
    assert api.get("/v1/status").json()["lease"] is None and try_write(db)


@pytest.mark.parametrize(("content_type", "said"), [
    ("text/plain", 'Content-Type "text/plain"'), ("application/x-www-form-urlencoded",
                                                 'Content-Type "application/x-www-form-urlencoded"'),
    (None, "no Content-Type"),
], ids=["text-plain", "form", "none"])
def test_a_json_object_sent_without_a_json_content_type_is_refused_saying_what_to_send(
        api: httpx.Client, db: Path, content_type: str | None, said: str) -> None:
    # It said "expected a JSON object, got another type" of a body that was one. Still refused: a web
    # page's "simple" cross-origin POST is text/plain, and the agent reads JSON only when told it is.
    body = b'{"run_id": "r1", "lease_s": 30}'
    request = api.build_request("POST", "/v1/prepare", content=body)
    request.headers.pop("content-type", None)  # httpx sends none for raw bytes
    if content_type is not None:
        request.headers["content-type"] = content_type
    refused = api.send(request)
    assert refused.status_code == 422, refused.text
    assert (error_of(refused).error, error_of(refused).hint) == (
        f"request body: sent with {said}, so not read as JSON", "send the JSON object with Content-Type: application/json")
    assert api.get("/v1/status").json()["lease"] is None and try_write(db)
    sent_as_json = api.post("/v1/prepare", content=body, headers={"content-type": "application/json; charset=utf-8"})
    assert sent_as_json.status_code == 200, sent_as_json.text
    assert api.post("/v1/complete", json={"run_id": "r1"}).json()["released"] is True


def test_an_integer_for_seconds_and_null_where_allowed_are_still_taken(api: httpx.Client) -> None:
    # JSON has one number type: 30 is thirty seconds, as 30.0 is.
    assert api.post("/v1/prepare", json={"run_id": "r1", "lease_s": 30}).status_code == 200
    assert api.post("/v1/renew", json={"run_id": "r1", "lease_s": 45.5}).status_code == 200
    assert api.post("/v1/renew", json={"run_id": "r1", "lease_s": None}).status_code == 200
    assert api.post("/v1/complete", json={"run_id": "r1"}).json()["released"] is True


def test_oversized_bodies_get_413(engine: SqliteEngine) -> None:
    with served(engine, max_body_bytes=1024) as api:
        big = {"run_id": "run-1", "lease_s": 60, "pad": "x" * 2048}
        assert api.post("/v1/prepare", json=big).status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while streaming
            yield b'{"run_id": "run-1", "lease_s": 60, "pad": "'
            for _ in range(4):
                yield b"x" * 512
            yield b'"}'

        streamed = api.post("/v1/prepare", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert "larger than 1024 bytes" in error_of(streamed).error
        assert api.get("/v1/status").json()["lease"] is None


def test_engine_failures_are_502_and_timeouts_504(tmp_path: Path) -> None:
    with served(SqliteEngine(SqliteSettings(path="absent.db"), base_dir=tmp_path)) as api:
        failed = api.post("/v1/prepare", json={"run_id": "run-1", "lease_s": 60})
        assert failed.status_code == 502
        assert "no sqlite database at" in error_of(failed).error and error_of(failed).hint

    db = make_db(tmp_path / "big.db", rows=20_000)
    with served(SqliteEngine(SqliteSettings(path=str(db), timeout_s=1e-6), base_dir=tmp_path)) as api:
        slow = api.post("/v1/prepare", json={"run_id": "run-1", "lease_s": 60})
        assert slow.status_code == 504
        assert "did not finish within" in error_of(slow).error


def test_unexpected_errors_are_500_without_internals(engine: SqliteEngine, caplog: pytest.LogCaptureFixture) -> None:
    class Broken(SqliteEngine):
        def verify(self):
            raise RuntimeError("internal detail /srv/secret/path")

    broken = Broken(engine.settings, base_dir=engine.db_path.parent)
    with served(broken) as api:
        response = api.post("/v1/verify")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert error_of(response).error == "internal error in the agent"
    assert "internal detail /srv/secret/path" in caplog.text  # the operator still finds it in the log


def test_token_is_required_except_for_health(api: httpx.Client) -> None:
    url = str(api.base_url)
    assert httpx.get(url + "/v1/health").json()["status"] == "ok"
    for headers, message in (({}, "missing bearer token"), ({"Authorization": "Bearer wrong"}, "wrong bearer token"),
                             ({"Authorization": f"Basic {TOKEN}"}, "missing bearer token")):
        response = httpx.post(url + "/v1/prepare", json={"run_id": "run-1", "lease_s": 60}, headers=headers)
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert error_of(response).error == message
        assert TOKEN not in response.text
    garbage = httpx.post(url + "/v1/prepare", content=b"{", headers={"content-type": "application/json"})
    assert garbage.status_code == 401  # the token is checked before anything is parsed
    assert api.get("/v1/status").json()["lease"] is None


def test_openapi_declares_the_models(api: httpx.Client) -> None:
    spec = api.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert {"PrepareResponse", "ErrorBody", "AgentStatus", "VerifyFacts", "LeaseInfo"} <= set(schemas)
    prepare = spec["paths"]["/v1/prepare"]["post"]["responses"]
    assert prepare["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/PrepareResponse")
    assert prepare["409"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert spec["paths"]["/v1/status"]["get"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in spec["paths"]["/v1/health"]["get"]
    assert set(spec["paths"]) >= {"/v1/health", "/v1/status", "/v1/prepare", "/v1/renew", "/v1/complete",
                                   "/v1/trigger", "/v1/restore-prepare", "/v1/verify"}


def test_without_a_configured_token_no_header_is_needed(engine: SqliteEngine) -> None:
    with served(engine, token=None) as api:
        assert api.get("/v1/status").status_code == 200
        assert api.post("/v1/prepare", json={"run_id": "run-1", "lease_s": 60}).status_code == 200


def test_a_prepare_whose_client_went_away_is_named_in_the_status_until_its_hold_begins(api: httpx.Client) -> None:
    # Waiting for its hold_at, a prepare showed nowhere: a run taking a killed run's lock over saw
    # no lease and went on, and the hold then began under it (snapctl/dead_holds.py).
    hold_at = datetime.now(UTC) + timedelta(seconds=3)
    body = json.dumps({"run_id": "run-dead", "lease_s": 60, "hold_at": hold_at.isoformat()}).encode()
    host, port = api.base_url.host, api.base_url.port
    with socket.create_connection((host, port)) as killed:  # sent, then gone, as a SIGKILLed snapctl
        killed.sendall(b"POST /v1/prepare HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\n"
                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                       % (host.encode(), TOKEN.encode(), len(body), body))
    seen = _wait_for_status(api, lambda s: s.preparing)
    assert seen.preparing == ["run-dead"] and seen.lease is None

    held = _wait_for_status(api, lambda s: s.lease is not None)
    assert held.lease.run_id == "run-dead"
    assert _wait_for_status(api, lambda s: not s.preparing).lease.run_id == "run-dead"
    assert api.post("/v1/complete", json={"run_id": "run-dead"}).json()["released"] is True


def _wait_for_status(api: httpx.Client, wanted) -> AgentStatus:
    for _ in range(400):
        status = AgentStatus.model_validate(api.get("/v1/status").json())
        if wanted(status):
            return status
        time.sleep(0.025)
    raise AssertionError(f"the agent's status never came to that: {status}")
