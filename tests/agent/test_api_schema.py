"""Property test of the agent's API against its own OpenAPI document (schemathesis + hypothesis).

Whatever a client sends, the agent answers with a declared status and a body matching the
declared model, and never with a 500.
"""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import content_type_conformance, response_schema_conformance, status_code_conformance

from node_agent.app import create_app
from node_agent.engines.sqlite import SqliteEngine
from node_agent.service import AgentService


def not_an_internal_error(ctx, response, case) -> None:
    # 502/504 are declared answers (the engine failed or timed out); 500 means the agent itself broke.
    assert response.status_code != 500, f"500 for {case.method} {case.path}: {response.text}"


CHECKS = [not_an_internal_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_every_answer_is_declared_and_never_a_server_error(engine: SqliteEngine) -> None:
    service = AgentService("n1", engine)
    try:
        app = create_app(service, None)

        async def on_loopback(scope, receive, send) -> None:
            # An agent without a token answers loopback names only; the ASGI client says "testserver".
            headers = [(k, v) for k, v in scope.get("headers", []) if k != b"host"] + [(b"host", b"127.0.0.1")]
            await app({**scope, "headers": headers}, receive, send)

        schema = schemathesis.openapi.from_asgi("/openapi.json", on_loopback)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) == 8
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def answers_as_declared(case) -> None:
                case.call_and_validate(checks=CHECKS)

            answers_as_declared()
    finally:
        service.close()
