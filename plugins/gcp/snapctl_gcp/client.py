"""The Compute Engine clients, built on first use, and the two loops every call goes through:
retries (same request id, Retry-After honoured) and operation polling.

The SDK's own ``ExtendedOperation`` poller is never used: it polls through an internal client
that ignores ``client_options`` and so always talks to the public endpoint. Polling with
ZoneOperationsClient / GlobalOperationsClient works against any endpoint.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from snapctl.errors import Interrupted, ProviderError, ProviderUnreachable
from snapctl.ratelimit import TokenBucket
from snapctl_gcp.errors import is_transient, retry_after_of, translate
from snapctl_gcp.settings import GcpSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
COMPUTE_SCOPE = "https://www.googleapis.com/auth/compute"


class GcpApi:
    def __init__(self, settings: GcpSettings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.project = settings.project
        self._sleep = sleep
        self._lock = threading.Lock()
        self._clients: dict[str, Any] | None = None
        self._credentials_in_use: Any = None
        self.create_bucket = TokenBucket(settings.create_rate, settings.create_burst)

    # --- clients -----------------------------------------------------------------------------
    def _build(self) -> dict[str, Any]:
        from google.api_core.client_options import ClientOptions
        from google.cloud import compute_v1

        kwargs: dict[str, Any] = {"transport": "rest"}
        if self.settings.api_endpoint:
            kwargs["client_options"] = ClientOptions(api_endpoint=self.settings.api_endpoint)
        kwargs["credentials"] = self._credentials_in_use = self._credentials()
        return {
            "types": compute_v1,
            "disks": compute_v1.DisksClient(**kwargs),
            "instances": compute_v1.InstancesClient(**kwargs),
            "snapshots": compute_v1.SnapshotsClient(**kwargs),
            "zone_ops": compute_v1.ZoneOperationsClient(**kwargs),
            "global_ops": compute_v1.GlobalOperationsClient(**kwargs),
        }

    def _credentials(self) -> Any:
        if self.settings.anonymous:
            from google.auth.credentials import AnonymousCredentials

            return AnonymousCredentials()
        import google.auth

        try:
            credentials, _ = google.auth.default(scopes=[COMPUTE_SCOPE])
        except Exception as exc:  # noqa: BLE001 - translated below
            raise translate(exc, "find credentials", "") from exc
        return credentials

    def warm_up(self) -> None:
        """Build the clients and fetch an access token: the first call then sends at once."""
        self.client("disks")  # builds them all, and finds the credentials they share
        credentials = self._credentials_in_use
        if credentials is not None and not credentials.valid:
            from google.auth.transport.requests import Request

            try:
                credentials.refresh(Request())
            except Exception as exc:  # noqa: BLE001 - translated: no token, no snapshot
                raise translate(exc, "get an access token", "") from exc

    def client(self, name: str) -> Any:
        with self._lock:
            if self._clients is None:
                self._clients = self._build()
            return self._clients[name]

    @property
    def types(self) -> Any:
        return self.client("types")

    # --- calls -------------------------------------------------------------------------------
    def call(self, action: str, permission: str, fn: Callable[[], T], *, deadline: float | None = None,
             bucket: TokenBucket | None = None, missing_ok: bool = False) -> T | None:
        """``fn()`` with retries on throttling and transient errors. ``fn`` must be safe to repeat
        (reads, or mutations carrying a fixed request id). With ``missing_ok`` a 404 gives None."""
        from google.api_core import exceptions as gexc

        attempt = 0
        while True:
            if bucket is not None:
                bucket.acquire()
            try:
                return fn()
            except gexc.NotFound as exc:
                if missing_ok:
                    return None
                raise translate(exc, action, permission) from exc
            except Exception as exc:  # noqa: BLE001 - classified and translated here
                if not is_transient(exc) or attempt >= self.settings.max_retries:
                    raise translate(exc, action, permission) from exc
                retry_after = retry_after_of(exc)
                wait = retry_after if retry_after is not None else self.backoff(attempt)
                if wait > self.settings.max_backoff_s or (deadline is not None and time.monotonic() + wait > deadline):
                    raise translate(exc, action, permission) from exc
                if retry_after and bucket is not None:
                    bucket.pause(retry_after)  # the server's wait applies to every thread creating
                log.info("gcp %s: %s, retrying in %.1fs", action, type(exc).__name__, wait)
                self._sleep(wait)
                attempt += 1

    def backoff(self, attempt: int) -> float:
        """Exponential with jitter, so that many workers throttled together do not retry together."""
        return min(self.settings.max_backoff_s, (2 ** attempt) * 0.5) * random.uniform(0.5, 1.0)

    def sleep(self, seconds: float) -> None:
        self._sleep(seconds)

    # --- operations --------------------------------------------------------------------------
    def poll_operation(self, op: Any, *, zone: str | None, action: str) -> Any:
        """One look at an operation, without waiting."""
        timeout, name = self.settings.request_timeout_s, op.name
        if zone:
            client = self.client("zone_ops")
            return self.call(action, "compute.zoneOperations.get", lambda: client.get(
                project=self.project, zone=zone, operation=name, retry=None, timeout=timeout))
        client = self.client("global_ops")
        return self.call(action, "compute.globalOperations.get",
                         lambda: client.get(project=self.project, operation=name, retry=None, timeout=timeout))

    def wait_operation(self, op: Any, *, zone: str | None, action: str, deadline: float,
                       stop: threading.Event | None = None) -> Any:
        """The operation once DONE (its error, if any, is for the caller to judge). ``stop``: once
        set, ``Interrupted`` at the next look (a drill's Ctrl-C or SIGTERM); looked at every
        ``poll_interval_s`` then, where operations.wait would answer only after up to two minutes."""
        done = self.types.Operation.Status.DONE
        timeout = self.settings.request_timeout_s
        name = op.name
        while op.status != done:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProviderError(f"gcp {action}: operation {name} still running after the timeout",
                                    hint="raise the provider's operation_timeout_s, or look at it in the console")
            if stop is not None:
                if stop.wait(min(self.settings.poll_interval_s, remaining)):
                    raise Interrupted(f"gcp {action}")
                op = self.poll_operation(op, zone=zone, action=action)
                continue
            # operations.wait returns when DONE or after about two minutes, whichever comes first.
            wait_timeout = min(remaining, timeout + 120.0)
            try:
                if zone:
                    client = self.client("zone_ops")
                    op = self.call(action, "compute.zoneOperations.get", deadline=deadline, fn=lambda: client.wait(
                        project=self.project, zone=zone, operation=name, retry=None, timeout=wait_timeout))
                else:
                    client = self.client("global_ops")
                    op = self.call(action, "compute.globalOperations.get", deadline=deadline, fn=lambda: client.wait(
                        project=self.project, operation=name, retry=None, timeout=wait_timeout))
            except ProviderUnreachable as exc:
                if time.monotonic() < deadline:
                    raise
                # The last wait is cut to what is left of the deadline, often milliseconds: its
                # timeout is ours, not the network failing.
                raise ProviderError(f"gcp {action}: operation {name} still running after the timeout (the last "
                                    f"look at it: {exc.message.removeprefix(f'gcp {action}: ')})",
                                    hint="raise the provider's operation_timeout_s, or look at it in the console") from exc
            if op.status != done:
                self._sleep(min(self.settings.poll_interval_s, max(0.0, deadline - time.monotonic())))
        return op
