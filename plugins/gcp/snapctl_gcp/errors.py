"""google-api-core / google-auth errors in, snapctl errors out: each with what to do about it.

Messages carry the action, the HTTP status and Google's own message; never a credential. The
google modules are imported inside the functions: this module is loaded with the plugin, and the
plugin must not pull in the SDK until it talks to GCP.
"""

from __future__ import annotations

import os
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

RATE_REASONS = frozenset({"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"})
# Operation error codes that mean "too often": the create was refused, so a later one may pass.
RATE_OPERATION_CODES = frozenset({"RESOURCE_OPERATION_RATE_EXCEEDED", "RATE_LIMIT_EXCEEDED", "OPERATION_RATE_EXCEEDED"})
CREDENTIALS_HINT = (
    "google-auth looks in GOOGLE_APPLICATION_CREDENTIALS, `gcloud auth application-default login`, "
    "then the VM's or workload's service account; see docs/providers/gcp.md"
)
DOCS = "roles in docs/providers/gcp.md"


def reasons(exc: Any) -> set[str]:
    found = set()
    for item in getattr(exc, "errors", None) or []:
        if isinstance(item, dict) and item.get("reason"):
            found.add(str(item["reason"]))
    if getattr(exc, "reason", None):
        found.add(str(exc.reason))
    return found


def retry_after_of(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    return parse_retry_after(headers.get("Retry-After"))


def is_throttle(exc: BaseException) -> bool:
    from google.api_core import exceptions as gexc

    if isinstance(exc, gexc.TooManyRequests):
        return True
    return isinstance(exc, gexc.Forbidden) and bool(reasons(exc) & RATE_REASONS)


def is_server_error(exc: BaseException) -> bool:
    """Compute Engine failing on its side (500, 502, 503, 504): not 501, which no retry changes."""
    from google.api_core import exceptions as gexc

    return isinstance(exc, (gexc.InternalServerError, gexc.BadGateway, gexc.ServiceUnavailable, gexc.GatewayTimeout,
                            gexc.DeadlineExceeded))


def is_transient(exc: BaseException) -> bool:
    """Worth another try with the same request id: throttling, 5xx, a dropped connection."""
    from google.auth import exceptions as auth_exc
    from requests import exceptions as req_exc

    if is_throttle(exc) or is_server_error(exc):
        return True
    if certificate_refused(exc):
        return False
    return isinstance(exc, (req_exc.ConnectionError, req_exc.Timeout, auth_exc.TransportError))


def translate(exc: BaseException, action: str, permission: str) -> SnapctlError:
    """Any exception from the SDK as the snapctl error that says what to do."""
    from google.api_core import exceptions as gexc
    from google.auth import exceptions as auth_exc
    from requests import exceptions as req_exc

    if isinstance(exc, SnapctlError):
        return exc
    if isinstance(exc, auth_exc.DefaultCredentialsError):
        return _credentials_error(exc, action)
    if isinstance(exc, auth_exc.RefreshError):
        # google-auth's reason is the first argument; the second is the token endpoint's whole answer.
        first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
        reason = (first.strip().splitlines() or [""])[0][:300]
        return ProviderError(f"gcp {action}: credentials could not be refreshed: {reason}", hint=CREDENTIALS_HINT)
    if reason := certificate_refused(exc):
        return ProviderError(f"gcp {action}: the compute api's TLS certificate was refused: {reason}",
                             hint="trust the CA that signed it (REQUESTS_CA_BUNDLE=/path/to/bundle.pem; a proxy that "
                             "inspects TLS has its own), or check the provider's api_endpoint")
    if isinstance(exc, (req_exc.ConnectionError, req_exc.Timeout, auth_exc.TransportError)):
        return ProviderUnreachable(f"gcp {action}: no answer from the compute api ({type(exc).__name__})",
                                   hint="check network access to compute.googleapis.com (or the provider's "
                                   "api_endpoint)")
    if isinstance(exc, req_exc.ChunkedEncodingError) or type(exc).__name__ == "ParseError":
        # An answer the network cut short: the connection closed mid-body, or an empty body that
        # json_format cannot parse. Asked again, it may well come whole.
        return ProviderUnreachable(f"gcp {action}: no whole answer from the compute api ({type(exc).__name__})",
                                   hint="check network access to compute.googleapis.com (or the provider's "
                                   "api_endpoint): something on the way cuts answers short")
    if not isinstance(exc, gexc.GoogleAPICallError):
        return ProviderError(f"gcp {action}: {type(exc).__name__}: {exc}")
    status = exc.code if isinstance(exc.code, int) else None
    detail = f"gcp {action}: {status or ''} {exc.message}".replace("  ", " ")
    if is_throttle(exc):
        # create_rate paces snapshot creates only: for any other call it is no remedy.
        remedy = ("lower the provider's create_rate" if action.startswith("create snapshot")
                  else "raise the provider's max_retries / max_backoff_s")
        return ProviderThrottled(detail, retry_after=retry_after_of(exc),
                                 hint=f"compute engine throttled this project after all retries; {remedy} "
                                 "or run fewer clusters at once")
    if is_server_error(exc):
        return ProviderUnavailable(detail, hint="compute engine is failing on its side: look for an outage on "
                                   "status.cloud.google.com, and try again later")
    if isinstance(exc, gexc.Unauthorized):
        return ProviderError(f"gcp {action}: credentials rejected", hint=CREDENTIALS_HINT)
    if isinstance(exc, gexc.NotFound):
        return ProviderError(detail, hint="check the disk, zone and project names in the inventory")
    if isinstance(exc, gexc.Forbidden):
        return ProviderError(f"gcp {action}: permission denied, the credentials lack {permission}",
                             hint=f"grant {permission} to this service account ({DOCS}); google said: {exc.message}")
    return ProviderError(detail)


def _credentials_error(exc: BaseException, action: str) -> ProviderError:
    """google-auth's own reason (a missing or unreadable key file names its path), or "no
    credentials found" when the chain found nothing at all."""
    key_file = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if key_file and not _could_be_a_path(key_file):
        # The key itself, pasted into the variable (a CI secret exported as is): google-auth takes it
        # for a file name and says "File {...the whole key...} was not found".
        return ProviderError(f"gcp {action}: GOOGLE_APPLICATION_CREDENTIALS holds what looks like a key's "
                             "content, not the path of a key file",
                             hint="write the key to a file only snapctl's user can read and set "
                             "GOOGLE_APPLICATION_CREDENTIALS to its path; see docs/providers/gcp.md")
    # Only the first argument: google-auth's sentence, which names files, never their content.
    # Later arguments carry the underlying parser's exception.
    first = exc.args[0] if exc.args and isinstance(exc.args[0], str) else ""
    reason = (first.strip().splitlines() or [""])[0][:300].rstrip(".")
    if not reason or reason.startswith("Your default credentials were not found"):
        return ProviderError(f"gcp {action}: no credentials found", hint=CREDENTIALS_HINT)
    hint = CREDENTIALS_HINT
    if key_file and key_file in reason:
        hint = (f"GOOGLE_APPLICATION_CREDENTIALS names {key_file}: point it at a valid service-account key or "
                "workload identity federation config, or unset it to use the rest of the chain; "
                "see docs/providers/gcp.md")
    return ProviderError(f"gcp {action}: credentials could not be loaded: {reason}", hint=hint)


def _could_be_a_path(value: str) -> bool:
    """A key's JSON has braces, quotes and (pretty-printed) line breaks; no key file's path does."""
    return not any(c in value for c in '{}"\n') and len(value) < 4096


def operation_error(op: Any) -> tuple[str, str] | None:
    """(code, message) of a DONE operation that failed, else None."""
    errors = list(getattr(getattr(op, "error", None), "errors", None) or [])
    if errors:
        first = errors[0]
        messages = "; ".join(e.message for e in errors if e.message)
        return first.code or "UNKNOWN", messages or first.code or "operation failed"
    if getattr(op, "http_error_status_code", 0) and op.http_error_status_code >= 400:
        return str(op.http_error_status_code), op.http_error_message or "operation failed"
    return None


def operation_hint(code: str) -> str | None:
    """What to do about an operation that failed with ``code``, where it is known."""
    if code in RATE_OPERATION_CODES:
        return "GCP limits how often one disk may be snapshotted; wait a few minutes before the next run"
    if code == "QUOTA_EXCEEDED":
        return "a project quota (e.g. SNAPSHOTS) is exhausted; delete old snapshots or ask for more quota"
    return None
