"""The ComputeManagementClient, built on first use, and the one wrapper every call goes through.

Throttling (429) and 5xx are retried inside the SDK pipeline by azure-core's RetryPolicy, which
honours Retry-After; ours caps a single wait (a longer one fails the call as throttled instead of
sleeping for an hour) and the total time of one call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from snapctl.errors import Interrupted, ProviderError
from snapctl.ratelimit import TokenBucket
from snapctl_azure.errors import is_not_found, translate
from snapctl_azure.settings import AzureSettings

T = TypeVar("T")
PUBLIC_ARM = "https://management.azure.com"
ARM_SCOPE = f"{PUBLIC_ARM}/.default"  # the SDK clients' default scope, which base_url does not change


class AzureApi:
    def __init__(self, settings: AzureSettings, credential: Any | None = None) -> None:
        self.settings = settings
        self._credential = credential
        self._lock = threading.Lock()
        self._credential_lock = threading.Lock()  # _build takes it inside _lock
        self._client: Any | None = None
        self._credential_in_use: Any = None
        self.token: Any = None  # the one warm_up got: the async client's first create sends with it
        self.create_bucket = TokenBucket(settings.create_rate, settings.create_burst)

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            return self._client

    def _build(self) -> Any:
        from azure.mgmt.compute import ComputeManagementClient

        settings = self.settings
        kwargs: dict[str, Any] = {
            "polling_interval": settings.polling_interval_s,
            "retry_policy": _capped_retry_policy(settings),
            "connection_timeout": settings.connection_timeout_s,
            "read_timeout": settings.read_timeout_s,
        }
        if settings.base_url:
            kwargs["base_url"] = settings.base_url
        if settings.insecure_http_for_tests:
            kwargs["per_call_policies"] = [_allow_plain_http_policy()]
        return ComputeManagementClient(self.credential, settings.subscription_id, **kwargs)

    @property
    def credential(self) -> Any:
        """The one sync credential of the run: the async client's tokens come from it too."""
        with self._credential_lock:
            if self._credential_in_use is None:
                self._credential_in_use = self._credential or (
                    _DummyCredential() if self.settings.dummy_credential_for_tests else _default_credential())
            return self._credential_in_use

    def warm_up(self) -> None:
        """Build the client and get a token: the first call then sends at once (and a missing
        credential is an error now, not in the middle of a hold)."""
        _ = self.client
        credential = self.credential
        self.token = self.call("get an access token", "", lambda: credential.get_token(ARM_SCOPE))

    def call(self, action: str, permission: str, fn: Callable[[], T], *, missing_ok: bool = False) -> T | None:
        """``fn()`` with SDK errors translated; with ``missing_ok`` a 404 gives None."""
        try:
            return fn()
        except Exception as exc:  # translated here, whatever the SDK raised
            if missing_ok and is_not_found(exc):
                return None
            raise translate(exc, action, permission) from exc

    def result(self, poller: Any, action: str, permission: str, deadline: float,
               stop: threading.Event | None = None) -> Any:
        """A long-running operation's result, or None if it still runs at ``deadline`` (given a
        second at least). ``stop``: ``Interrupted`` once set, looked at every second (a drill's
        Ctrl-C or SIGTERM, which never reach the thread a drill restores in)."""
        while stop is not None and not poller.done() and time.monotonic() < deadline:
            if stop.is_set():
                raise Interrupted(f"azure {action}")
            self.call(action, permission, lambda: poller.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic()))))
        return self.call(action, permission, lambda: poller.result(timeout=max(1.0, deadline - time.monotonic())))

    def same_endpoint(self, url: str) -> bool:
        """Only URLs on our own ARM endpoint get our bearer token (operation URLs come from stored refs)."""
        ours = urlsplit(self.settings.base_url or PUBLIC_ARM)
        theirs = urlsplit(url)
        return (theirs.scheme, theirs.netloc.lower()) == (ours.scheme, ours.netloc.lower())

    def get_json(self, url: str, action: str, permission: str) -> Any:
        from azure.core.rest import HttpRequest

        if not self.same_endpoint(url):
            raise ProviderError(f"azure {action}: refusing to follow {urlsplit(url).netloc}, not the ARM endpoint")

        def fetch() -> Any:
            response = self.client.send_request(HttpRequest("GET", url))
            response.raise_for_status()
            return response.json()

        return self.call(action, permission, fetch)


def _default_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    _quiet_credential_chain_log()
    return DefaultAzureCredential()


def _quiet_credential_chain_log() -> None:
    """A chain that finds no credential logs a WARNING naming every credential it tried (about 14
    lines, on every attempt: a failed run asks again while rolling back), then raises the same
    text, which snapctl reports as one line with a hint. A level someone set on purpose is kept."""
    logger = logging.getLogger("azure.identity")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.ERROR)


class _DummyCredential:
    """For a local test ARM only (the settings allow it with a 127.0.0.1 base_url): a fixed fake
    token, so the CLI can run against the test server without a credential object handed in."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        import time

        from azure.core.credentials import AccessToken

        return AccessToken("snapctl-dummy-token-for-tests", int(time.time()) + 3600)


def _capped_retry_policy(settings: AzureSettings, *, asynchronous: bool = False) -> Any:
    from azure.core.pipeline.policies import AsyncRetryPolicy, RetryPolicy

    class CappedRetryPolicy(AsyncRetryPolicy if asynchronous else RetryPolicy):  # type: ignore[misc]
        def is_retry(self, retry_settings: Any, response: Any) -> bool:
            if not super().is_retry(retry_settings, response):
                return False
            retry_after = self.get_retry_after(response)
            return retry_after is None or retry_after <= settings.max_retry_wait_s

    return CappedRetryPolicy(retry_total=settings.max_retries, retry_backoff_factor=0.8,
                             retry_backoff_max=settings.max_retry_wait_s, timeout=settings.retry_timeout_s)


def _allow_plain_http_policy() -> Any:
    from azure.core.pipeline.policies import SansIOHTTPPolicy

    class AllowPlainHttp(SansIOHTTPPolicy):
        """azure-core refuses bearer tokens over http; the settings allow that for 127.0.0.1 only."""

        def on_request(self, request: Any) -> None:
            request.context["enforce_https"] = False

    return AllowPlainHttp()
