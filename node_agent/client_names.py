"""``tls.client_names``: the client certificates an mTLS agent answers, by name.

``tls.client_ca_file`` alone accepts every certificate its CA signed for a client, or with no
extended key usage: another agent's, when one CA issues both (docs/security.md). With
``client_names``, a verified certificate that names none of them (its subject CN, its DNS and
URI subjectAltNames) gets 403 on every request of its connection, saying why.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("snapctl.agent")

HINT = ("present a client certificate issued for one of the agent's tls.client_names (auth.client_cert_file), "
        "or add its name there")


def names_of(peercert: dict[str, Any] | None) -> list[str]:
    """The names a verified certificate (``SSLObject.getpeercert()``) carries: CN, then DNS and URI SANs."""
    if not peercert:
        return []
    names = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    names += [value for kind, value in peercert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    return names


def refusal_for(peercert: dict[str, Any] | None, allowed: Collection[str]) -> ASGIApp | None:
    """None when the certificate names one of ``allowed``; else the app that answers its requests."""
    names = names_of(peercert)
    if any(name in allowed for name in names):
        return None
    shown = ", ".join(names) or "no name"
    message = f"the client certificate ({shown}) is not one of this agent's tls.client_names"
    log.warning("refused a client: %s", message)
    body = json.dumps({"error": message, "hint": HINT, "holder": None}).encode()

    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return refuse
