"""The ``provider: {type: azure}`` block and the shape of a node's ``volumes:`` list.

Credentials are deliberately absent: azure-identity's DefaultAzureCredential finds them
(AZURE_* environment variables, workload identity, managed identity, ``az login``), so no secret
is ever written into an inventory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from node_agent.engines.base import describe_validation_error
from snapctl.errors import BadInputError
from snapctl.providers import ProviderSettings
from snapctl.yaml_errors import NAME_PATTERN, URL_PATTERN, in_words

GUID = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_ARM_PREFIX = r"^/subscriptions/(?P<sub>[^/]+)/resourceGroups/(?P<rg>[^/]+)/providers/Microsoft\.Compute/"
DISK_ID = re.compile(_ARM_PREFIX + r"disks/(?P<name>[^/]+)$", re.IGNORECASE)
SNAPSHOT_ID = re.compile(_ARM_PREFIX + r"snapshots/(?P<name>[^/]+)$", re.IGNORECASE)
VM_ID = re.compile(_ARM_PREFIX + r"virtualMachines/(?P<name>[^/]+)$", re.IGNORECASE)
COMPUTE_ID = re.compile(_ARM_PREFIX + r"[^/]+/(?P<name>[^/]+)$", re.IGNORECASE)  # any of the three
RESOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,78}[A-Za-z0-9_]$|^[A-Za-z0-9]$")
# Azure allows 50 tags per resource. snapctl's own take five on a snapshot (a restored disk carries
# four of snapctl's and none of the user's). The provider's `tags:` alone: at most 40, leaving room
# for the inventory's; the two together: what is left beside snapctl's five.
ARM_MAX_TAGS = 50
MAX_USER_TAGS = 40
MAX_TAG_VALUE = 256
ARM_RESERVED_PREFIXES = ("azure", "microsoft", "windows")
RESERVED_TAG_PREFIXES = (*ARM_RESERVED_PREFIXES, "snapctl-")  # the provider block's: snapctl's prefix too
_TAG_NAME_REFUSED = re.compile(r"[<>%&\\?/]")


def tag_problem(key: str, value: str, reserved: tuple[str, ...] = RESERVED_TAG_PREFIXES) -> tuple[str, str] | None:
    """What ARM would refuse in one user tag, and how to fix it; or None. snapctl's own prefix is
    reserved by default: tag names ignore case, so SNAPCTL-RUN would be snapctl-run. The
    inventory's tags pass ``ARM_RESERVED_PREFIXES``: the inventory refuses snapctl's own keys, in
    any case, and warns of other `snapctl-*` ones."""
    if key.lower().startswith(reserved):
        return (f"keys starting with {', '.join(reserved[:-1])} or {reserved[-1]} are reserved",
                "rename it, e.g. with a prefix of your own such as 'team-'")
    if not 1 <= len(key) <= 512 or _TAG_NAME_REFUSED.search(key):
        return ("keys take 1-512 characters without <>%&\\?/",
                f"rename it, e.g. to {_TAG_NAME_REFUSED.sub('-', key) or 'team'!r}")
    if len(value) > MAX_TAG_VALUE:
        return f"values take at most {MAX_TAG_VALUE} characters, this one has {len(value)}", "shorten it"
    return None


class AzureSettings(ProviderSettings):
    """Pacing defaults follow ARM's write bucket (per subscription and principal: 200 burst, 10/s)."""

    type: Literal["azure"]
    subscription_id: str = Field(pattern=GUID)
    resource_group: str = Field(pattern=r"^[-\w.()]{0,89}[-\w()]$")  # where snapshots and restored disks go
    location: str = Field(pattern=in_words(r"^[a-z0-9]+$", "an Azure location: lowercase letters and digits, "
                                           "such as westeurope"))  # the disks' region
    base_url: str | None = Field(default=None, pattern=URL_PATTERN)  # sovereign clouds, tests
    polling_interval_s: float = Field(default=5.0, gt=0)  # long-running operations and wait()
    tags: dict[str, str] = Field(default_factory=dict)  # extra tags on every snapshot
    insecure_http_for_tests: bool = False  # bearer tokens over plain http: loopback only
    dummy_credential_for_tests: bool = False  # a fixed fake token instead of DefaultAzureCredential: 127.0.0.1 only
    max_retries: int = Field(default=8, ge=0, le=30)  # throttled / 5xx calls, per call
    max_retry_wait_s: float = Field(default=60.0, gt=0)  # a longer Retry-After fails the call instead
    retry_timeout_s: float = Field(default=300.0, gt=0)  # one call, retries and waits included
    operation_timeout_s: float = Field(default=900.0, gt=0)  # deletes, restores
    connection_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    create_rate: float = Field(default=10.0, gt=0)
    create_burst: int = Field(default=100, ge=1)

    @field_validator("tags")
    @classmethod
    def _user_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        if len(tags) > MAX_USER_TAGS:
            raise ValueError(f"at most {MAX_USER_TAGS} tags (Azure allows 50 per snapshot, snapctl uses the rest)")
        for key, value in tags.items():
            problem = tag_problem(key, value)
            if problem:
                raise ValueError(f"tag {key!r}: {problem[0]}")
        if len({key.lower() for key in tags}) < len(tags):
            raise ValueError("two tags whose names differ only in case are one tag to Azure (tag names ignore case)")
        return tags

    def check_inventory_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            problem = tag_problem(key, value, ARM_RESERVED_PREFIXES)
            if problem:
                raise BadInputError(f"provider azure: inventory tag {key!r}: {problem[0]}", hint=problem[1])
        # ARM's tag names ignore case: Team and team are one tag, whichever block each is in (the
        # same key in both is one tag too, the inventory's value replacing the provider's).
        together: dict[str, str] = {}
        for key in [*self.tags, *tags]:
            first = together.setdefault(key.lower(), key)
            if first != key:
                raise BadInputError(f"provider azure: tags {first!r} and {key!r} are one tag to Azure "
                                    "(tag names ignore case)", hint="spell them alike, or keep one of them")
        self.check_tag_room(len(together), ARM_MAX_TAGS, "Azure")

    @model_validator(mode="after")
    def _plain_http_only_on_loopback(self) -> AzureSettings:
        url = urlsplit(self.base_url or "")
        if self.insecure_http_for_tests and url.hostname != "127.0.0.1":
            raise ValueError("insecure_http_for_tests is only allowed with a base_url on 127.0.0.1 (tests)")
        if url.scheme == "http" and not self.insecure_http_for_tests:
            raise ValueError("base_url must be https: azure-core sends bearer tokens only over TLS")
        if self.dummy_credential_for_tests and url.hostname != "127.0.0.1":
            raise ValueError("dummy_credential_for_tests is only allowed with a base_url on 127.0.0.1 (tests)")
        return self


class AzureVolume(BaseModel):
    """One managed disk by its resource id; ``name`` is what the catalog and tags call it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    disk_id: str
    name: str = Field(pattern=NAME_PATTERN)

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("name") and isinstance(data.get("disk_id"), str):
            return {**data, "name": data["disk_id"].rstrip("/").rsplit("/", 1)[-1]}
        return data

    @field_validator("disk_id")
    @classmethod
    def _arm_id(cls, value: str) -> str:
        if not DISK_ID.match(value):
            raise ValueError("expected /subscriptions/<id>/resourceGroups/<rg>/providers/"
                             "Microsoft.Compute/disks/<name>")
        return value

    @property
    def disk_name(self) -> str:
        return DISK_ID.match(self.disk_id)["name"]  # type: ignore[index]


VOLUMES_HINT = "entries look like {disk_id: /subscriptions/.../providers/Microsoft.Compute/disks/pg-data, name: data}"


def parse_volumes(node: str, raw: list[Any]) -> list[AzureVolume]:
    """A node's ``volumes:`` list as models; every problem names the node and the entry."""
    if not raw:
        raise BadInputError(f"node {node}: no volumes to snapshot", hint=VOLUMES_HINT)
    parsed: list[AzureVolume] = []
    for index, entry in enumerate(raw):
        where = f"node {node}: volumes[{index}]"
        if not isinstance(entry, dict):
            raise BadInputError(f"{where}: expected a mapping", hint=VOLUMES_HINT)
        try:
            parsed.append(AzureVolume.model_validate(entry))
        except ValidationError as exc:
            raise BadInputError(f"{where}: {describe_validation_error(exc, AzureVolume)}", hint=VOLUMES_HINT) from exc
    seen_ids: set[str] = set()
    seen_names: set[str] = set()
    for volume in parsed:
        if volume.disk_id.lower() in seen_ids:
            raise BadInputError(f"node {node}: disk {volume.disk_id} is listed twice")
        if volume.name in seen_names:
            raise BadInputError(f"node {node}: volume name {volume.name!r} is used twice",
                                hint="names must be unique per node")
        seen_ids.add(volume.disk_id.lower())
        seen_names.add(volume.name)
    return parsed
