"""The one exception tree. Only the CLI turns these into exit codes.

Messages are lowercase and specific; where a fix is known the error carries a ``hint``. Neither
ever holds a credential: both go through ``snapctl.redact``.
"""

from __future__ import annotations

from enum import IntEnum

from snapctl.redact import redact


class ExitCode(IntEnum):
    """Documented process exit codes (README "Exit codes")."""

    OK = 0
    RUN_FAILED = 1
    BAD_INPUT = 2
    PREFLIGHT_REFUSED = 3
    LOCK_HELD = 4
    DEGRADED = 5
    CRITICAL = 6
    VERIFY_MISMATCH = 7
    INTERRUPTED = 130


def os_reason(exc: OSError) -> str:
    """The OS's reason for ``exc`` as a message part: "permission denied", not "Permission denied"."""
    if not exc.strerror:
        return str(exc)
    return exc.strerror[:1].lower() + exc.strerror[1:]


class SnapctlError(Exception):
    """Root of every error snapctl raises on purpose."""

    exit_code: ExitCode = ExitCode.RUN_FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        # Many messages carry what an SDK or a server said, which may hold a credential.
        message = redact(message)
        super().__init__(message)
        self.message = message
        self.hint = redact(hint) if hint else hint

    def __str__(self) -> str:
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class BadInputError(SnapctlError):
    """The operator gave us something we cannot use: inventory, flags, run ids."""

    exit_code = ExitCode.BAD_INPUT


class InventoryError(BadInputError):
    """An inventory file that is missing, malformed or invalid."""


class RefusedValue(BadInputError, ValueError):
    """A value a model's validator refuses, with a hint. pydantic reports a ValueError as the
    field's error and keeps it, so the inventory's loader can pass the hint on."""

    def __str__(self) -> str:
        return self.message  # what pydantic shows as the field's error; the hint goes apart


class AgentError(SnapctlError):
    """An agent answered with an error, or did not answer."""

    def __init__(self, node: str, message: str, *, status: int | None = None, hint: str | None = None):
        super().__init__(f"node {node}: {message}", hint=hint)
        self.node = node
        # Without the node, for where the node is named already; redacted with the message.
        self.reason = self.message.removeprefix(f"node {node}: ")
        self.status = status


class NotAnAgent(AgentError):
    """Something answered at the agent's address, but not as a snapctl agent does (every error of
    one carries its JSON ``{"error": ...}``): another service on that port, most likely."""


class AgentRateLimited(AgentError):
    """The agent's rate limit refused a request (429), which the agent does before anything runs.
    ``retry_after_s``: when it said to come back; ``said``: its words, without the node."""

    def __init__(self, node: str, message: str, *, retry_after_s: float, said: str, hint: str | None = None):
        super().__init__(node, message, status=429, hint=hint)
        self.retry_after_s = retry_after_s
        self.said = said


class AgentUnreachable(AgentError):
    """No answer from the agent: it cannot be reached, or did not answer in time. ``delivered`` is
    False when the request certainly never reached it (no connection could be made)."""

    def __init__(self, node: str, message: str, *, hint: str | None = None, delivered: bool = True):
        super().__init__(node, message, hint=hint)
        self.delivered = delivered


class AgentTimeout(AgentUnreachable):
    """The agent did not answer within the call's timeout."""


class AgentUnauthorized(AgentError):
    """The agent refused us: our token (401), or with a 403 of its own our client certificate
    (``tls.client_names``), its hint saying so. ``refused``: what it refused, as findings say it."""

    def __init__(self, node: str, message: str, *, status: int | None = None, hint: str | None = None,
                 refused: str = "our token"):
        super().__init__(node, message, status=status, hint=hint)
        self.refused = refused


class AgentConflict(AgentError):
    """The agent is held by another run, or we do not hold it (HTTP 409); ``holder`` when known."""

    def __init__(
        self, node: str, message: str, *, status: int | None = None, hint: str | None = None, holder: str | None = None
    ):
        super().__init__(node, message, status=status, hint=hint)
        self.holder = holder


class EngineError(SnapctlError):
    """An engine adapter failed to do what was asked of it."""


class EngineBusy(EngineError):
    """The engine is already held by someone else (another backup tool, another run); ``holder``:
    the snapctl run that holds it, when the engine knows."""

    def __init__(self, message: str, *, hint: str | None = None, holder: str | None = None):
        super().__init__(message, hint=hint)
        self.holder = holder


class ProviderError(SnapctlError):
    """A snapshot provider (cloud or local) failed."""


class ProviderThrottled(ProviderError):
    """The provider asked us to slow down; ``retry_after`` is in seconds when known."""

    def __init__(self, message: str, *, retry_after: float | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.retry_after = retry_after


class ProviderUnreachable(ProviderError):
    """No answer from the cloud's API after the SDK's own retries: the connection was refused,
    dropped or timed out. Never a refusal the cloud answered (4xx, credentials rejected): asking
    again later may well succeed, so a backup's wait does (docs/reliability.md)."""


class ProviderUnavailable(ProviderError):
    """The cloud's API answered with a server error (HTTP 5xx) after the SDK's own retries: it is
    failing on its side. Not a refusal, and not a snapshot that failed (that is a plain
    ``ProviderError``): asking again later may well succeed, so a backup's wait does, as for
    ``ProviderUnreachable``."""


# The cloud failing to answer, or answering with a server error: what a wait rides out and a
# rollback does not keep asking.
CLOUD_OUTAGE = (ProviderUnreachable, ProviderUnavailable)


class SnapshotNotFound(ProviderError):
    """The snapshot does not exist (for delete this counts as done)."""


class LeaseConflict(SnapctlError):
    """The agent is held by another run (``holder``), or this run does not hold it."""

    def __init__(self, message: str, *, holder: str | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.holder = holder


class CatalogError(SnapctlError):
    """The catalog could not be read or written."""


class LockHeld(SnapctlError):
    """Another run holds the cluster lock."""

    exit_code = ExitCode.LOCK_HELD


class PreflightRefused(SnapctlError):
    """Preflight found the cluster unsafe to back up."""

    exit_code = ExitCode.PREFLIGHT_REFUSED


class RunFailed(SnapctlError):
    """A backup run failed and was rolled back."""


class Interrupted(SnapctlError):
    """Ctrl-C, SIGTERM or SIGHUP stopped the command; it unwound first (a backup rolls back)."""

    exit_code = ExitCode.INTERRUPTED

    def __init__(self, what: str | None = None, *, outcome: str | None = None, hint: str | None = None) -> None:
        """``what``: the step that was cut short, e.g. "node n1: restore of snapshot S to D";
        ``outcome``: what became of the work, e.g. "backup R was rolled back". The message names
        the signal: "interrupted (SIGTERM)"."""
        message = f"{what} was {interrupted_by_signal()}" if what else interrupted_by_signal()
        super().__init__(f"{message}: {outcome}" if outcome else message, hint=hint)


def interrupted_by_signal() -> str:
    """``interrupted (SIGNAL)``, naming the signal that stopped the command (SIGINT for Ctrl-C):
    a SIGHUP (an ssh session gone) said "Ctrl-C or SIGTERM", which sends one looking for the wrong cause."""
    from snapctl.runner import stopped_by  # runner imports this module

    return f"interrupted ({stopped_by()})"


class VerifyMismatch(SnapctlError):
    """A restore drill or verify found data that does not match the manifest."""

    exit_code = ExitCode.VERIFY_MISMATCH


def certificate_refused(exc: BaseException) -> str | None:
    """Why TLS refused the server's certificate (OpenSSL's reason: "self-signed certificate in
    certificate chain", "Hostname mismatch, ..."), if that is what ``exc`` comes down to; else None.

    SDKs wrap it several layers deep (requests' SSLError around urllib3's MaxRetryError around
    ssl's own error; azure-core's ServiceRequestError around those) and file it with connection
    errors. It is none: a certificate that does not verify will not verify on the next try, and
    "check network access" sends the operator the wrong way (a proxy that inspects TLS, a private
    CA not trusted here)."""
    import ssl

    seen: set[int] = set()
    pending: list[object] = [exc]
    while pending:
        current = pending.pop()
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            # aiohttp's certificate error is one too, without ssl's attributes: it holds ssl's own.
            inner = getattr(current, "certificate_error", None)
            if not hasattr(current, "verify_message") and isinstance(inner, BaseException):
                pending.append(inner)
                continue
            return getattr(current, "verify_message", None) or str(current)
        pending.extend([current.__cause__, current.__context__, getattr(current, "reason", None),
                        getattr(current, "inner_exception", None), *current.args])
    return None
