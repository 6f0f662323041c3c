"""A backup's snapshot creates on snapctl's own event loop: azure-mgmt-compute's aio client over aiohttp.

At 1000 nodes a blocking create per node needs a thread per node, and those threads fight the
event loop for the GIL while nodes are held (docs/benchmarks.md). Only the create moves here:
waits, deletes and restores stay on the sync client (client.py).

One credential source for both clients: the async client is handed an adapter that serves the
token the sync credential gave (warm_up fetched one) and asks that credential again, in a thread,
shortly before it expires, so no credential call ever blocks the loop.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import ssl
import time
from typing import Any

from snapctl.errors import ProviderError
from snapctl_azure.client import ARM_SCOPE, AzureApi, _allow_plain_http_policy, _capped_retry_policy
from snapctl_azure.errors import translate

# What the async path imports, all in warm_up's thread: an import on the loop would stall every
# held node. azure-core imports the two _aiohttp modules inside its first send, asyncio the
# executor's module at its first to_thread.
# encodings.utf_8_sig: azure-core decodes a JSON answer (warm_up_async's read) with it.
ASYNC_SDK_MODULES = ("aiohttp", "azure.core.pipeline.transport._aiohttp", "azure.core.rest._aiohttp",
                     "azure.mgmt.core.policies", "azure.mgmt.compute.aio", "concurrent.futures.thread",
                     "encodings.utf_8_sig")
# azure-core asks for a new token within 300 s of expiry (less its jitter); so do we, or each
# request inside that window would ask us again and get the same old token.
REFRESH_MARGIN_S = 300.0
MISSING_AIOHTTP_HINT = "reinstall snapctl-azure with its dependencies (pip install snapctl-azure pulls in aiohttp)"


def import_async_sdk() -> None:
    try:
        for name in ASYNC_SDK_MODULES:
            importlib.import_module(name)
    except ImportError as exc:
        raise ProviderError(f"azure: the async create client cannot load: {exc}", hint=MISSING_AIOHTTP_HINT) from exc


class TokenAdapter:
    """The sync credential as azure-core's AsyncBearerTokenCredentialPolicy calls a credential:
    ``get_token`` (the policy calls ``get_token_info`` only on a credential that has one), one call
    at a time (it holds its own lock around them)."""

    def __init__(self, credential: Any, token: Any = None) -> None:
        self._credential = credential
        self._tokens: dict[tuple[str, ...], Any] = {(ARM_SCOPE,): token} if token is not None else {}

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        token = self._tokens.get(scopes)
        # kwargs carry a claims challenge (continuous access evaluation): a cached token is what was refused.
        if kwargs or token is None or token.expires_on - time.time() < REFRESH_MARGIN_S:
            token = await asyncio.to_thread(self._credential.get_token, *scopes, **kwargs)
            self._tokens[scopes] = token
        return token

    async def close(self) -> None:
        """Nothing of its own to close: the sync credential is the sync client's."""


class AsyncArm:
    """The aio ComputeManagementClient of one run, opened on the loop that uses it."""

    def __init__(self, api: AzureApi) -> None:
        self.api = api
        self._client: Any = None
        self.transport: Any = None  # its AioHttpTransport, whose session aclose closes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_lock: asyncio.Lock | None = None
        self.asked = False  # AzureProvider.warm_up_async read through this client once

    async def client(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        if self._start_lock is None or self._loop is not loop:
            # A client from another loop is unusable here (its sessions died with that loop).
            self._client, self._loop, self._start_lock, self.asked = None, loop, asyncio.Lock(), False
        async with self._start_lock:
            if self._client is None:
                self._client = await self._open()
        return self._client

    async def _open(self) -> Any:
        api = self.api
        try:
            credential = await asyncio.to_thread(lambda: api.credential)
            token = api.token or await asyncio.to_thread(
                api.call, "get an access token", "", lambda: credential.get_token(ARM_SCOPE))
            adapter = TokenAdapter(credential, token)
            client, transport, context = await asyncio.to_thread(_build, api, adapter)
            import aiohttp

            transport.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context), trust_env=True,
                                                      cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False)
            await client.__aenter__()  # the aiohttp session now, not in the first create
        except ProviderError:
            raise
        except Exception as exc:  # translated here, whatever the SDK raised
            raise translate(exc, "open the async client", "") from exc
        self.transport = transport
        return client

    async def close(self) -> None:
        client = self._client
        self._client = None
        self.asked = False
        if client is not None:
            await client.close()


def _build(api: AzureApi, credential: TokenAdapter) -> tuple[Any, Any, ssl.SSLContext]:
    """The client with the sync client's settings (client.py), built off the loop: its import and
    construction take tens of milliseconds."""
    import_async_sdk()
    from azure.core.pipeline.transport import AioHttpTransport
    from azure.mgmt.compute.aio import ComputeManagementClient

    settings = api.settings
    transport = AioHttpTransport(connection_timeout=settings.connection_timeout_s,
                                 read_timeout=settings.read_timeout_s)
    kwargs: dict[str, Any] = {"polling_interval": settings.polling_interval_s, "transport": transport,
                              "retry_policy": _capped_retry_policy(settings, asynchronous=True)}
    if settings.base_url:
        kwargs["base_url"] = settings.base_url
    if settings.insecure_http_for_tests:
        kwargs["per_call_policies"] = [_allow_plain_http_policy()]
    return ComputeManagementClient(credential, settings.subscription_id, **kwargs), transport, _tls_context()


def _tls_context() -> ssl.SSLContext:
    """The CAs the sync client's requests trusts: REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE, else certifi's
    bundle (aiohttp alone would read neither variable and trust the system's store instead). Read
    once here: as azure-core's connection_verify, the file would be read for every request, on the loop."""
    from requests.utils import DEFAULT_CA_BUNDLE_PATH

    cafile = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or DEFAULT_CA_BUNDLE_PATH
    return ssl.create_default_context(cafile=cafile)
