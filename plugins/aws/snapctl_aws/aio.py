"""EC2's create calls through aiobotocore, awaited on snapctl's event loop (``snapctl.provider_loop``).

Only the calls a node's hold waits for go this way: at a thousand nodes boto3's blocking calls
need a thread each, whose returns queue for the GIL with the loop that sends the completes. Waits,
deletes and restores stay on boto3. The client is paced by the very buckets of ``Ec2`` (EC2
meters the account, not the client) and its failures judged by ``Ec2.failure``, so a call
fails alike on either path.

aiobotocore is optional (``snapctl-aws[async]``): it pins botocore to a few releases. It is
imported by ``AwsProvider.warm_up_async`` (in a thread) and here when first used, never at load.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from typing import Any

from snapctl.errors import ProviderError
from snapctl_aws.client import Ec2, config_options, counted, sendings, shared_loader
from snapctl_aws.errors import translate_botocore_error

# What the async path imports: warm_up_async imports them in a thread, so that the loop never does.
ASYNC_MODULES = ("aiohttp", "aiobotocore.session", "aiobotocore.config")


def import_async_modules() -> None:
    """Import what the async path needs; one that will not import (aiobotocore pins botocore, and
    an upgrade of botocore past the pin breaks it) is a ProviderError naming the way out."""
    for module in ASYNC_MODULES:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ProviderError(f"aws: the async client cannot load {module}: {exc}",
                                hint="reinstall snapctl-aws[async] (aiobotocore pins botocore), or set "
                                     "policy.provider_process: never to make the calls with boto3") from exc


def available() -> bool:
    """aiobotocore is installed (asked of the import system, importing nothing)."""
    return importlib.util.find_spec("aiobotocore") is not None


class AioEc2:
    """One aiobotocore EC2 client per run, made on the loop that uses it and closed by ``aclose``."""

    def __init__(self, ec2: Ec2) -> None:
        self.ec2 = ec2
        self.settings = ec2.settings
        self._reset()

    def _reset(self) -> None:
        self._client: Any = None
        self.warmed = False  # AwsProvider.warm_up_async asked EC2 through this client once
        self._stack: contextlib.AsyncExitStack | None = None
        # Made here, bound to the loop of its first contended wait: a fresh one per client, since
        # a run after aclose may come on another loop.
        self._lock = asyncio.Lock()

    async def client(self) -> Any:
        if self._client is None:
            async with self._lock:  # 50 first calls at once make one client, not 50
                if self._client is None:
                    await self._make_client()
        return self._client

    async def _make_client(self) -> None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession
        from botocore.exceptions import BotoCoreError, NoCredentialsError

        s = self.settings
        # aiohttp waits for a free connection beyond this many (urllib3, under boto3, opens more):
        # as many as the create bucket lets go at once, its burst. Calls the bucket lets through
        # as it refills, while the burst's are still under way, may wait for one: at the default
        # 5 a second that is a handful (the bucket paces them anyway); a much higher create_rate
        # can make the pool, not the bucket, what paces the calls.
        config = AioConfig(**config_options(s), max_pool_connections=max(10, s.create_burst))
        stack = contextlib.AsyncExitStack()
        try:
            session = shared_loader(AioSession(profile=s.profile))
            client = await stack.enter_async_context(
                session.create_client("ec2", region_name=s.region, endpoint_url=s.endpoint_url, config=config))
            # Found by create_client already (an assumed role or SSO fetches them on first use):
            # the first create call then signs and sends at once.
            credentials = await session.get_credentials()
            if credentials is None:
                raise NoCredentialsError()
            await credentials.get_frozen_credentials()
        except BotoCoreError as exc:
            await stack.aclose()
            raise translate_botocore_error(exc) from exc
        except BaseException:
            await stack.aclose()
            raise
        self._client, self._stack = client, stack

    async def call(self, method: str, bucket: str, *, per_volume_retry: bool = False, **kwargs: Any) -> dict[str, Any]:
        """``Ec2.call``'s twin: the bucket and the per-volume retry waited with ``asyncio.sleep``."""
        client = await self.client()
        from botocore.exceptions import BotoCoreError, ClientError
        from botocore.parsers import ResponseParserError

        attempts_left = self.settings.per_volume_retries if per_volume_retry else 0
        sent_before = 0
        while True:
            wait = self.ec2.buckets[bucket].reserve()
            if wait:
                await asyncio.sleep(wait)
            try:
                return counted(await getattr(client, method)(**kwargs), sent_before)
            except (ClientError, BotoCoreError, ResponseParserError) as exc:
                error = self.ec2.failure(method, bucket, exc, attempts_left)
                if error is not None:
                    raise error from exc
                sent_before += sendings(exc.response)  # only a ClientError is made again
                attempts_left -= 1
                await asyncio.sleep(self.settings.per_volume_retry_wait_s)

    async def aclose(self) -> None:
        """Close the client's aiohttp session; again, or with no client made, does nothing."""
        stack = self._stack
        self._reset()
        if stack is not None:
            await stack.aclose()
