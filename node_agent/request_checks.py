"""What the agent's requests may hold, checked where the models cannot, and what to tell a client
whose request does not: one line naming the field, with a hint where the fix is plain."""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi.exceptions import RequestValidationError

from node_agent.models import MAX_HOLD_AT_AHEAD_S, MAX_HOLD_LEAD_S, RUN_ID_PATTERN
from snapctl.errors import BadInputError

_RUN_ID = re.compile(RUN_ID_PATTERN)


def hold_lead_s(hold_at: datetime | None) -> float:
    """Seconds until ``hold_at`` by this agent's wall clock (0 when absent or past)."""
    if hold_at is None:
        return 0.0
    if hold_at.tzinfo is None:
        raise BadInputError(f"hold_at {hold_at.isoformat()} has no time zone", hint="send UTC, e.g. ...Z")
    lead = (hold_at - datetime.now(UTC)).total_seconds()
    if lead > MAX_HOLD_AT_AHEAD_S:
        raise BadInputError(
            f"hold_at is {lead:.1f}s ahead of this node's clock; at most {MAX_HOLD_AT_AHEAD_S:g}s (snapctl's "
            f"policy.hold_lead_s is at most {MAX_HOLD_LEAD_S:g}s, and {MAX_HOLD_AT_AHEAD_S - MAX_HOLD_LEAD_S:g}s "
            "more is allowed for clocks apart)",
            hint="synchronise the clocks of snapctl's host and this node (NTP)")
    return max(lead, 0.0)


def check_run_id(run_id: str) -> None:
    if not _RUN_ID.fullmatch(run_id):  # fullmatch: "$" alone lets a trailing newline in
        raise BadInputError(f"invalid run id {run_id!r}", hint="letters, digits, '.', '_' and '-', at most 64")


# What a field of the wrong JSON type should have been (the request models are strict: no coercion).
_EXPECTED = {
    "float_type": "a number", "int_type": "an integer", "string_type": "a string", "bool_type": "true or false",
    "datetime_type": "an ISO 8601 time with its zone", "timezone_aware": "an ISO 8601 time with its zone",
    "model_type": "a JSON object", "model_attributes_type": "a JSON object", "dict_type": "a JSON object",
    # NaN and Infinity, which Python's JSON reads: NaN was refused as "less than or equal to 3600"
    "finite_number": "a finite number",
}
_TIME_HINT = "send UTC with its zone, e.g. 2026-12-06T02:15:03Z"
_JSON_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def restore_path(path: str | Path, data_paths: list[Path], restore_root: Path | None) -> Path:
    """``path``, resolved, if it lies under one of the engine's ``data_paths`` or ``restore_root``.
    The engines delete and rename below the path restore-prepare gives them (a stale -shm,
    *.inprogress files through the whole tree, an etcd data dir moved aside): a token holder must
    not aim that at the rest of the host. The refusal is the same whether the path exists or not,
    and does not repeat it: a different answer for an existing file would tell what is on the host."""
    roots = [p.resolve() for p in data_paths]
    if restore_root is not None:
        roots.append(restore_root.resolve())
    given = Path(path)
    try:
        # Resolved: a symlink or a ".." inside a data path must not lead out of it.
        resolved = given.resolve() if given.is_absolute() else None
    except (OSError, ValueError, RuntimeError):  # a NUL byte, a symlink loop: refused as any other
        resolved = None
    if resolved is None or not any(resolved.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots) or "none"
        raise BadInputError(
            f"restore-prepare refused: its path must be absolute and lie under the engine's data "
            f"paths or the agent's restore_root ({allowed})",
            hint="set the node's restore.agent_path to the restored files under one of them, or set restore_root "
                 "in the scratch agent's config to where its restored disks are mounted")
    return resolved


def describe_request_error(exc: RequestValidationError, content_type: str | None = None) -> tuple[str, str | None]:
    """One line naming the field and what is wrong, and a hint where the fix is plain.
    ``content_type``: the request's header, None when it had none."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    kind = err.get("type")
    if not loc and kind in _NOT_AN_OBJECT and not _is_json(content_type):
        # The body is read as JSON only when it says it is: a web page's "simple" POST is text/plain
        # (app.RefuseWebPages), so the type is kept strict, and the client told what to send.
        sent = f"Content-Type {_shown(content_type)}" if content_type is not None else "no Content-Type"
        return (f"request body: sent with {sent}, so not read as JSON",
                "send the JSON object with Content-Type: application/json")
    if kind == "json_invalid":
        return "request body is not valid JSON", None
    if kind == "missing" and not loc:
        return "request body is missing", None
    field = ".".join(loc) or "request body"
    if kind == "extra_forbidden":
        return f"unknown field {field!r}", None
    if kind in _EXPECTED:
        given = err.get("input")
        if kind == "timezone_aware":
            return f"{field}: expected {_EXPECTED[kind]}, got a time without one ({_shown(given)})", _TIME_HINT
        hint = _TIME_HINT if kind == "datetime_type" else None
        if kind in ("float_type", "int_type") and isinstance(given, str) and _is_number(given):
            hint = f'send the number itself, not a string: "{field}": {given.strip()}'
        if kind == "finite_number":
            hint = f'send a number of seconds, e.g. "{field}": 30'
        return f"{field}: expected {_EXPECTED[kind]}, got {_json_kind(given)}", hint
    msg = str(err.get("msg", "invalid"))
    return f"{field}: {msg[:1].lower() + msg[1:]}", None


_NOT_AN_OBJECT = frozenset({"model_type", "model_attributes_type", "dict_type"})


def _is_json(content_type: str | None) -> bool:
    if content_type is None:
        return False
    kind = content_type.partition(";")[0].strip().lower()
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))


def _json_kind(value: Any) -> str:
    """What a client sent, in JSON's words: 'a string ("30")', 'true', 'an array'."""
    if value is None or isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        return json.dumps(value)  # null, true, NaN, Infinity: as the client wrote them
    if isinstance(value, int | float):
        return f"a number ({_shown(value)})"
    if isinstance(value, str):
        return f"a string ({_shown(value)})"
    return "an array" if isinstance(value, list) else "an object" if isinstance(value, dict) else "another type"


def _shown(value: Any) -> str:
    # A client's input goes into one log-safe line: short and printable, or not shown at all.
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 and text.isprintable() else "not shown: long or unprintable"


def _is_number(text: str) -> bool:
    return _JSON_NUMBER.fullmatch(text.strip()) is not None
