"""A BlobStore on S3 (or an S3-compatible store): the shared catalog, same layout as the local one.

Several hosts (cron on two control hosts, a CI drill) see the same manifests and race for the
same run lock, so the store leans on S3's own guarantees rather than on anything local:

- ``write``: a PUT is atomic; a reader gets the old object or the new one.
- ``create``: ``PutObject`` with ``If-None-Match: *``. S3 evaluates the condition atomically:
  of several racing creators exactly one succeeds, the others get 412 Precondition Failed.
- ``replace``: read the object and its ETag, compare the bytes with ``expected``, then PUT with
  ``If-Match: <that ETag>``; a writer that got in between changed the ETag, so our PUT fails.
  Where ``expected`` is what this store last read or wrote under that key, the ETag it got then
  is used without reading again (every update reads first: the index, 2.4 MB at 10,000 runs, was
  downloaded twice per update); if the object changed since, the ETag did too, and the PUT fails.

A conditional PUT whose answer is lost (a dropped connection, retried by botocore) can come back
412 although it landed; both conditional calls then read the key back and count it as theirs
when it holds exactly the bytes they wrote. Lock records name owner, pid and a microsecond time,
so no other writer produces the same bytes.

boto3 is imported when a store is made, never at module import (``pip install 'snapctl[s3]'``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from snapctl.errors import BadInputError, CatalogError
from snapctl.secret_files import warn_if_in_clear

log = logging.getLogger("snapctl.catalog")

_CONFLICT_RETRIES = 5  # 409 ConditionalRequestConflict: another conditional write was in flight
_CONFLICT_PAUSE_S = 0.2
_PERMISSIONS = "s3:GetObject, s3:PutObject, s3:DeleteObject and s3:ListBucket"


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> (bucket, "some/prefix")."""
    parts = urlsplit(url)
    # Not repeated: s3://KEY:SECRET@bucket, as some tools take it, holds a secret key, which may
    # hold a / (urlsplit then puts the rest in the path): no @ anywhere, as no bucket name has one.
    if "@" in url:
        raise BadInputError("catalog.url: an s3 url takes no user or password (s3://key:secret@bucket)",
                            hint="use s3://bucket/prefix; boto3 finds the credentials (environment, profile, role)")
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise BadInputError(f"catalog.url {url!r} is not an s3 url", hint="use s3://bucket or s3://bucket/prefix")
    prefix = parts.path.strip("/")
    if prefix and any(p in ("", ".", "..") for p in prefix.split("/")):
        raise BadInputError(f"catalog.url {url!r} has an empty, '.' or '..' part in its prefix",
                            hint="use s3://bucket or s3://bucket/prefix")
    return parts.netloc, prefix


class S3BlobStore:
    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str | None = None,
                 client: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        self._root = f"{self.prefix}/" if self.prefix else ""
        self._client = client or _make_client(endpoint_url, region)
        self._etags: dict[str, tuple[bytes, str]] = {}  # key -> (digest of the bytes last seen, their ETag)

    # -- BlobStore -------------------------------------------------------------------------------

    def read(self, key: str) -> bytes | None:
        found = self._get(key)
        return None if found is None else found[0]

    def _seen(self, key: str, data: bytes, etag: str | None) -> None:
        if etag:
            self._etags[key] = (hashlib.sha256(data).digest(), etag)
        else:
            self._etags.pop(key, None)

    def write(self, key: str, data: bytes) -> None:
        response = self._call("write", key, self._client.put_object, Bucket=self.bucket, Key=self._key(key), Body=data)
        self._seen(key, data, response.get("ETag"))

    def create(self, key: str, data: bytes) -> bool:
        return self._conditional_put(key, data, IfNoneMatch="*")

    def replace(self, key: str, data: bytes, expected: bytes) -> bool:
        seen = self._etags.get(key)
        if seen is not None and seen[0] == hashlib.sha256(expected).digest():
            return self._conditional_put(key, data, IfMatch=seen[1])
        current = self._get(key)
        if current is None or current[0] != expected:
            return False
        return self._conditional_put(key, data, IfMatch=current[1])

    def delete(self, key: str) -> None:
        # S3 answers a delete of a missing key with success too.
        self._etags.pop(key, None)
        self._call("delete", key, self._client.delete_object, Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str) -> list[str]:
        keys = []
        paginator = self._client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=self.bucket, Prefix=self._root + prefix)
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][len(self._root):]
                    # Same rule as the local store: dot-parts are bookkeeping, never catalog keys.
                    if key and not any(p.startswith(".") or not p for p in key.split("/")):
                        keys.append(key)
        except Exception as exc:  # translated below, or re-raised untouched
            raise self._translate(exc, "list", prefix or "(root)") from exc
        return sorted(keys)

    def age_s(self, key: str) -> float | None:
        # LastModified is S3's clock, and so is the Date of the same answer: no host's clock enters.
        response = self._head(key)
        if response is None:
            return None
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        try:
            now = parsedate_to_datetime(date) if date else None
        except (TypeError, ValueError):
            now = None
        if now is None or now.tzinfo is None:  # no Date from an S3-compatible store: this host's clock, then
            now = datetime.now(UTC)
        return (now - response["LastModified"]).total_seconds()

    def written_at(self, key: str) -> datetime | None:
        response = self._head(key)
        return None if response is None else response["LastModified"].astimezone(UTC)

    def _head(self, key: str) -> dict | None:
        """The object's HEAD answer; None when there is no such object."""
        try:
            return self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise self._translate(exc, "read", key) from exc

    def check_writable(self, directory: str) -> bool:
        """S3 says whether a PUT is allowed only by doing one: nothing to tell without writing."""
        return False

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    # -- internals -------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        parts = key.split("/")
        if not key or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            raise BadInputError(f"invalid catalog key {key!r}", hint="keys are relative paths without '.' or '..' parts")
        return self._root + key

    def _get(self, key: str) -> tuple[bytes, str] | None:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            data, etag = response["Body"].read(), response["ETag"]
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                self._etags.pop(key, None)
                return None
            raise self._translate(exc, "read", key) from exc
        self._seen(key, data, etag)
        return data, etag

    def _conditional_put(self, key: str, data: bytes, **condition: str) -> bool:
        for attempt in range(_CONFLICT_RETRIES):
            try:
                response = self._client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
                self._seen(key, data, response.get("ETag"))
                return True
            except Exception as exc:
                code = _code(exc)
                if code == "ConditionalRequestConflict" and attempt + 1 < _CONFLICT_RETRIES:
                    time.sleep(_CONFLICT_PAUSE_S * (attempt + 1))
                    continue
                if code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "412", "409"):
                    return self.read(key) == data  # lost the race, unless it was our own retried write
                raise self._translate(exc, "write", key) from exc
        return False

    def _call(self, action: str, key: str, method: Any, **kwargs: Any) -> Any:
        try:
            return method(**kwargs)
        except Exception as exc:
            raise self._translate(exc, action, key) from exc

    def _translate(self, exc: Exception, action: str, key: str) -> Exception:
        """A CatalogError with a hint for what S3 or botocore said; anything else unchanged."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        where = f"{self.describe()}/{key}"
        if isinstance(exc, NoCredentialsError):
            return CatalogError(f"no AWS credentials for the s3 catalog {self.describe()}",
                                hint="set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run with an "
                                     "instance or task role")
        if isinstance(exc, ClientError):
            code = _code(exc)
            message = exc.response.get("Error", {}).get("Message") or code
            if code == "NoSuchBucket":
                return CatalogError(f"the catalog bucket {self.bucket} does not exist",
                                    hint="create it (aws s3 mb s3://BUCKET), or fix catalog.url")
            if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
                return CatalogError(f"cannot {action} {where}: access denied ({code})",
                                    hint=f"the credentials need {_PERMISSIONS} on {self.describe()}")
            if code in ("NotImplemented", "501"):
                return CatalogError(f"cannot {action} {where}: the store does not implement a request snapctl "
                                    f"needs ({message})",
                                    hint="the shared catalog needs conditional writes (PutObject with If-None-Match "
                                         "and If-Match), which AWS S3 has had since 2024")
            return CatalogError(f"cannot {action} {where}: {code}: {message}")
        if isinstance(exc, BotoCoreError):
            return CatalogError(f"cannot {action} {where}: {exc}",
                                hint="check catalog.endpoint_url, catalog.region and the network")
        return exc


def _code(exc: Exception) -> str | None:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    error = response.get("Error", {}).get("Code")
    return str(error) if error else str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")) or None


_loader_lock = threading.Lock()
_loader: Any = None


def _make_client(endpoint_url: str | None, region: str | None) -> Any:
    global _loader
    try:
        import boto3
        import botocore.session
        from botocore.config import Config
    except ImportError as exc:
        raise BadInputError(
            "the s3 catalog needs boto3, which is not installed",
            hint="pip install 'snapctl[s3]' (or pip install boto3) where snapctl runs",
        ) from exc
    warn_if_in_clear(log, "catalog.endpoint_url", endpoint_url,
                     "sees the requests (a session token among them, if one is used) and can change the manifests "
                     "that restore and prune read")
    config = Config(
        region_name=region,
        connect_timeout=5,
        read_timeout=30,
        retries={"mode": "standard", "total_max_attempts": 5},
    )
    # Parsing S3's service model costs far more than the rest of making a client: parse it once.
    core = botocore.session.get_session()
    with _loader_lock:
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
    return boto3.session.Session(botocore_session=core).client("s3", endpoint_url=endpoint_url, config=config)
