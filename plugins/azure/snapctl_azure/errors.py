"""azure-core / azure-identity errors in, snapctl errors out: each with what to do about it.

Messages carry the action, ARM's error code and its own message; never a token. azure modules
are imported inside the functions: the plugin must not load the SDK until it talks to Azure.
"""

from __future__ import annotations

import json
from typing import Any

from snapctl.errors import (
    ProviderError,
    ProviderThrottled,
    ProviderUnavailable,
    ProviderUnreachable,
    SnapctlError,
    certificate_refused,
)
from snapctl.ratelimit import parse_retry_after

THROTTLE_CODES = frozenset({"TooManyRequests", "SubscriptionRequestsThrottled", "ResourceRequestsThrottled",
                            "TenantRequestsThrottled"})
DENIED_CODES = frozenset({"AuthorizationFailed", "LinkedAuthorizationFailed", "Forbidden"})
CREDENTIALS_HINT = (
    "DefaultAzureCredential looks in AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET (or a certificate), "
    "workload identity, the VM's managed identity, then `az login`; see docs/providers/azure.md"
)
CODE_HINTS = {
    "ResourceNotFound": "check subscription_id, resource_group and the disk ids in the inventory",
    "NotFound": "check subscription_id, resource_group and the disk ids in the inventory",
    "ResourceGroupNotFound": "create the provider's resource_group, or fix its name",
    "SubscriptionNotFound": "check the provider's subscription_id",
    "InvalidParameter": "the snapshot and its disk must be in the provider's location",
}
# ARM says OperationNotAllowed for any request the resource's state forbids: on a snapshot PUT
# that is the per-disk snapshot limit, on a delete a disk attached to a vm or a snapshot in use.
SNAPSHOT_LIMIT_HINT = ("Azure allows 7 incremental snapshots per disk per 5 minutes and 500 in all; "
                       "wait, or prune old snapshots")
NOT_ALLOWED_HINT = ("azure refused it in the resource's present state (azure's message says why): detach the disk "
                    "from its vm, or let what uses the snapshot finish (`az snapshot revoke-access`), then try again")


def code_and_message(exc: Any) -> tuple[str, str]:
    error = getattr(exc, "error", None)
    code, message = getattr(error, "code", None), getattr(error, "message", None)
    if not code:
        body = _error_body(exc)
        code, message = body.get("code"), body.get("message")
    code = code or getattr(exc, "status_code", None) or "Unknown"
    return str(code), str(message or getattr(exc, "message", "") or exc)


def _error_body(exc: Any) -> dict[str, Any]:
    """ARM's ``error`` object from the response, or {} when there is none to read."""
    try:
        body = exc.response.json().get("error", {})
    except Exception:  # noqa: BLE001 - an unreadable body: the caller falls back to the exception text
        return {}
    return body if isinstance(body, dict) else {}


def retry_after_of(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    return parse_retry_after(headers.get("Retry-After"))


def refused_before_landing(exc: BaseException) -> bool:
    """``exc`` (a translated error, its SDK error its cause) is ARM refusing a request outright
    (4xx): it made nothing. Not a throttle (429) nor a conflict (409) or timeout (408), which may
    follow an attempt that landed, its answer lost."""
    status = getattr(exc.__cause__, "status_code", None)
    return isinstance(status, int) and 400 <= status < 500 and status not in (408, 409, 429)


def is_not_found(exc: BaseException) -> bool:
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    return isinstance(exc, ResourceNotFoundError) or (isinstance(exc, HttpResponseError) and exc.status_code == 404)


def translate(exc: BaseException, action: str, permission: str) -> SnapctlError:
    """Any exception from the SDK as the snapctl error that says what to do."""
    from azure.core import exceptions as aexc

    if isinstance(exc, SnapctlError):
        return exc
    if isinstance(exc, aexc.ClientAuthenticationError):
        if getattr(exc, "status_code", None) == 401:
            return ProviderError(f"azure {action}: credentials rejected", hint=CREDENTIALS_HINT)
        first_line = (getattr(exc, "message", None) or str(exc)).strip().splitlines()[0]
        return ProviderError(f"azure {action}: no usable credentials: {first_line}", hint=CREDENTIALS_HINT)
    if reason := certificate_refused(exc):
        return ProviderError(f"azure {action}: azure resource manager's TLS certificate was refused: {reason}",
                             hint="trust the CA that signed it (REQUESTS_CA_BUNDLE=/path/to/bundle.pem; a proxy that "
                             "inspects TLS has its own), or check the provider's base_url")
    if isinstance(exc, (aexc.ServiceRequestError, aexc.ServiceResponseError)):
        return ProviderUnreachable(f"azure {action}: no answer from azure resource manager ({type(exc).__name__})",
                                   hint="check network access to management.azure.com (or the provider's base_url)")
    if isinstance(exc, (aexc.DecodeError, json.JSONDecodeError)):
        # An answer the network cut short: the connection closed mid-body (IncompleteReadError), or
        # an empty body. Asked again, it may well come whole.
        return ProviderUnreachable(f"azure {action}: no whole answer from azure resource manager "
                                   f"({type(exc).__name__})",
                                   hint="check network access to management.azure.com (or the provider's base_url): "
                                   "something on the way cuts answers short")
    if not isinstance(exc, aexc.HttpResponseError):
        return ProviderError(f"azure {action}: {type(exc).__name__}: {exc}")
    code, message = code_and_message(exc)
    detail = f"azure {action}: {code}: {message}"
    if exc.status_code == 429 or code in THROTTLE_CODES:
        # create_rate paces snapshot creates only: for any other call it is no remedy.
        remedy = ("lower the provider's create_rate" if action.startswith("create snapshot")
                  else "raise the provider's max_retries / max_retry_wait_s")
        return ProviderThrottled(detail, retry_after=retry_after_of(exc),
                                 hint=f"azure resource manager throttled this subscription after all retries; "
                                 f"{remedy} or run fewer clusters at once")
    if (exc.status_code or 0) >= 500:
        return ProviderUnavailable(detail, hint="azure resource manager is failing on its side: look for an outage "
                                   "on status.azure.com (or the subscription's service health), and try again later")
    if exc.status_code == 403 or code in DENIED_CODES:
        return ProviderError(f"azure {action}: permission denied, the credentials lack {permission}",
                             hint=f"grant {permission} on the resource group (roles in docs/providers/azure.md); "
                             f"azure said: {message}")
    if code == "OperationNotAllowed":
        limit = action.startswith("create snapshot")
        return ProviderError(detail, hint=SNAPSHOT_LIMIT_HINT if limit else NOT_ALLOWED_HINT)
    return ProviderError(detail, hint=CODE_HINTS.get(code))
