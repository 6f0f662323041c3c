"""The EC2 client, made on first use, with every call paced, retried and translated.

boto3 is imported here, inside ``Ec2.client``, and nowhere at module level: loading the plugin
(``snapctl --help``, ``snapctl status``) must not pay for the SDK.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from snapctl import __version__
from snapctl.errors import ProviderThrottled, SnapctlError
from snapctl.ratelimit import TokenBucket
from snapctl.secret_files import warn_if_in_clear
from snapctl_aws.errors import PER_VOLUME_RATE, error_code, translate_botocore_error, translate_client_error
from snapctl_aws.settings import AwsSettings

log = logging.getLogger(__name__)

# Which client-side bucket paces which call; names match EC2's throttling categories.
CREATE, DELETE, DESCRIBE, TAG, VOLUME = "create", "delete", "describe", "tag", "volume"
THROTTLED_PAUSE_S = 1.0  # after throttling outlasted every retry, when AWS gave no Retry-After
# In the ResponseMetadata of an answer ``call`` returns: how many times the call was sent, by
# botocore's retries and by snapctl's own (per_volume_retry). A create sent more than once may have
# made more than the snapshot answered, and RetryAttempts counts only the last botocore call's.
SENDINGS = "SnapctlSendings"


_loader_lock = threading.Lock()
_loader: Any = None


def _botocore_session() -> Any:
    """A fresh botocore session sharing one data loader per process: parsing EC2's service model
    costs far more than the rest of making a client, and the model never changes."""
    import botocore.session

    return shared_loader(botocore.session.get_session())


def config_options(settings: AwsSettings) -> dict[str, Any]:
    """botocore ``Config`` options, alike for the boto3 client and the aiobotocore one."""
    return {
        "region_name": settings.region,
        "retries": {"mode": "standard", "total_max_attempts": settings.max_attempts},
        "connect_timeout": settings.connect_timeout_s,
        "read_timeout": settings.read_timeout_s,
        "user_agent_extra": f"snapctl/{__version__}",
    }


def shared_loader(session: Any) -> Any:
    """``session`` (a botocore session, or aiobotocore's) given this process's one data loader."""
    global _loader
    with _loader_lock:
        if _loader is None:
            _loader = session.get_component("data_loader")
        else:
            session.register_component("data_loader", _loader)
    return session


def sendings(answer: Any) -> int:
    """How many times botocore sent the request of ``answer`` (a parsed answer, or a ClientError's
    ``response``): once, and once more for each of its retries."""
    metadata = (answer.get("ResponseMetadata") if isinstance(answer, dict) else None) or {}
    return 1 + (metadata.get("RetryAttempts") or 0)


def counted(answer: dict[str, Any], sent_before: int) -> dict[str, Any]:
    """``answer`` with ``SENDINGS`` in its ResponseMetadata: its own sendings and ``sent_before``."""
    answer.setdefault("ResponseMetadata", {})[SENDINGS] = sent_before + sendings(answer)
    return answer


class Ec2:
    def __init__(self, settings: AwsSettings, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self._sleep = sleep
        self._client: Any = None
        self._credentials: Any = None  # botocore's, once the client is made
        self._client_lock = threading.Lock()
        self.buckets = {
            CREATE: TokenBucket(settings.create_rate, settings.create_burst),
            DELETE: TokenBucket(settings.delete_rate, settings.delete_burst),
            DESCRIBE: TokenBucket(settings.describe_rate, settings.describe_burst),
            TAG: TokenBucket(settings.tag_rate, settings.tag_burst),
            VOLUME: TokenBucket(settings.volume_rate, settings.volume_burst),
        }

    @property
    def client(self) -> Any:
        """The boto3 EC2 client (thread-safe once made; sessions are not, hence the lock)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def warm_up(self) -> None:
        """Build the client and load the credentials (an assumed role or SSO fetches them on first
        use): the first call then sends at once, and having none is an error now, not mid-hold."""
        from botocore.exceptions import BotoCoreError, NoCredentialsError

        _ = self.client
        if self._credentials is None:
            raise translate_botocore_error(NoCredentialsError())
        try:
            self._credentials.get_frozen_credentials()
        except BotoCoreError as exc:
            raise translate_botocore_error(exc) from exc

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        s = self.settings
        warn_if_in_clear(log, "the aws provider's endpoint_url", s.endpoint_url,
                         "sees the requests (a session token among them, if one is used) and can change EC2's "
                         "answers")
        config = Config(**config_options(s))
        try:
            session = boto3.session.Session(
                botocore_session=_botocore_session(), profile_name=s.profile, region_name=s.region,
            )
            client = session.client("ec2", endpoint_url=s.endpoint_url, config=config)
            self._credentials = session.get_credentials()  # found by client() already: cached
            return client
        except BotoCoreError as exc:
            raise translate_botocore_error(exc) from exc

    def call(self, method: str, bucket: str, *, per_volume_retry: bool = False, **kwargs: Any) -> dict[str, Any]:
        """``client.<method>(**kwargs)`` paced by ``bucket``. Throttling is retried by botocore
        (standard mode); ``SnapshotCreationPerVolumeRateExceeded``, which no SDK mode retries, is
        waited out here when ``per_volume_retry`` is set."""
        client = self.client
        from botocore.exceptions import BotoCoreError, ClientError
        from botocore.parsers import ResponseParserError  # no BotoCoreError: it escaped every translation

        attempts_left = self.settings.per_volume_retries if per_volume_retry else 0
        sent_before = 0
        while True:
            self.buckets[bucket].acquire()
            try:
                return counted(getattr(client, method)(**kwargs), sent_before)
            except (ClientError, BotoCoreError, ResponseParserError) as exc:
                error = self.failure(method, bucket, exc, attempts_left)
                if error is not None:
                    raise error from exc
                sent_before += sendings(exc.response)  # only a ClientError is made again
                attempts_left -= 1
                self._sleep(self.settings.per_volume_retry_wait_s)

    def failure(self, method: str, bucket: str, exc: Exception, attempts_left: int) -> SnapctlError | None:
        """What a failed call raises, or None when it is to be made again after
        ``per_volume_retry_wait_s`` (one of ``attempts_left``): shared by ``call`` and its async twin."""
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return translate_botocore_error(exc)
        if error_code(exc) == PER_VOLUME_RATE and attempts_left > 0:
            log.info("aws %s: too many snapshots in progress on the volume; retrying in %ss",
                     method, self.settings.per_volume_retry_wait_s)
            return None
        error = translate_client_error(exc)
        if isinstance(error, ProviderThrottled):
            # botocore's retries are spent: hold every call sharing the bucket back, sync or async.
            self.buckets[bucket].pause(error.retry_after or THROTTLED_PAUSE_S)
        return error

    def pages(self, method: str, bucket: str, result_key: str, **kwargs: Any) -> list[dict[str, Any]]:
        """Every item of a paginated Describe call, each page paced."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.call(method, bucket, **kwargs, **({"NextToken": token} if token else {}))
            items.extend(page.get(result_key, []))
            token = page.get("NextToken")
            if not token:
                return items
