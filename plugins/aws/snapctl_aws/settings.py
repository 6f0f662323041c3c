"""The ``provider: {type: aws}`` block and the shapes of a node's ``volumes:`` list.

Credentials are deliberately absent: boto3's standard chain finds them (environment, profile,
SSO, instance or task role), so no secret is ever written into an inventory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from node_agent.engines.base import describe_validation_error
from snapctl.errors import BadInputError
from snapctl.providers import ProviderSettings
from snapctl.yaml_errors import URL_PATTERN, in_words

VOLUME_ID = r"^vol-(?:[0-9a-f]{8}|[0-9a-f]{17})$"
INSTANCE_ID = r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$"

# EC2 allows 50 tags per resource. snapctl's own take five on a snapshot, and at most five on a
# restored volume (snapctl-cluster, -restored-from, -restored-run, a drill's snapctl-drill, Name),
# which also carries the user's tags its snapshot had. The provider's `tags:` alone: at most 40,
# leaving room for the inventory's; the two together: what is left beside snapctl's five.
EC2_MAX_TAGS = 50
MAX_USER_TAGS = 40


def tag_problem(key: str, value: str) -> tuple[str, str] | None:
    """What EC2 would refuse in one user tag (snapctl's own prefix aside), and how to fix it; or None."""
    if key.lower().startswith("aws:"):
        return "keys starting with 'aws:' are reserved by AWS", f"rename it, e.g. to {key[4:] or 'owner'!r}"
    if not 1 <= len(key) <= 128 or len(value) > 256:
        return (f"keys take 1-128 characters, values at most 256 (this one: {len(key)} and {len(value)})",
                "shorten it")
    return None


class AwsSettings(ProviderSettings):
    """Rates default to EC2's published API token buckets (per account and region):
    CreateSnapshot(s), DeleteSnapshot and CreateVolume 100 burst / 5 per s, CreateTags 100 / 10,
    filtered Describe* 100 / 20."""

    type: Literal["aws"]
    region: str = Field(pattern=in_words(r"^[a-z]{2}(-[a-z0-9]+)+-\d+$", "an AWS region, such as eu-west-1"))
    endpoint_url: str | None = Field(default=None, pattern=URL_PATTERN)  # tests, VPC endpoints
    profile: str | None = None  # a named profile in ~/.aws/config; default: the standard chain
    max_attempts: int = Field(default=8, ge=1, le=20)  # botocore standard retry mode, first call included
    connect_timeout_s: float = Field(default=10.0, gt=0)
    read_timeout_s: float = Field(default=60.0, gt=0)
    create_rate: float = Field(default=5.0, gt=0)
    create_burst: int = Field(default=100, ge=1)
    delete_rate: float = Field(default=5.0, gt=0)
    delete_burst: int = Field(default=100, ge=1)
    describe_rate: float = Field(default=20.0, gt=0)
    describe_burst: int = Field(default=100, ge=1)
    tag_rate: float = Field(default=10.0, gt=0)
    tag_burst: int = Field(default=100, ge=1)
    volume_rate: float = Field(default=5.0, gt=0)
    volume_burst: int = Field(default=100, ge=1)
    # No SDK retry mode covers SnapshotCreationPerVolumeRateExceeded; AWS asks for >= 15 s.
    per_volume_retry_wait_s: float = Field(default=15.0, ge=0)
    per_volume_retries: int = Field(default=4, ge=0, le=40)
    poll_interval_s: float = Field(default=5.0, gt=0)  # wait() and restore() polling
    restore_timeout_s: float = Field(default=900.0, gt=0)  # volume available and attached
    tags: dict[str, str] = Field(default_factory=dict)  # user tags on every snapshot

    @field_validator("tags")
    @classmethod
    def _user_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        if len(tags) > MAX_USER_TAGS:
            raise ValueError(f"at most {MAX_USER_TAGS} tags (EC2 allows 50 per snapshot, snapctl uses the rest)")
        for key, value in tags.items():
            if key.startswith("snapctl-"):
                raise ValueError(f"tag {key!r}: keys starting with 'snapctl-' are set by snapctl itself")
            problem = tag_problem(key, value)
            if problem:
                raise ValueError(f"tag {key!r}: {problem[0]}")
        return tags

    def check_inventory_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            problem = tag_problem(key, value)
            if problem:
                raise BadInputError(f"provider aws: inventory tag {key!r}: {problem[0]}", hint=problem[1])
        together = {**self.tags, **tags}  # an inventory tag replaces the provider's of the same key
        self.check_tag_room(len(together), EC2_MAX_TAGS, "EC2")


def _volume_id(value: str) -> str:
    if not re.match(VOLUME_ID, value):
        raise ValueError(f"{value!r} is not an EBS volume id (vol- and 8 or 17 hex digits)")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InstanceVolumes(_Strict):
    """Every EBS volume attached to one instance, snapshotted crash-consistently in one call."""

    instance: str
    exclude_boot: bool = True
    exclude: tuple[str, ...] = ()

    @field_validator("instance")
    @classmethod
    def _instance_id(cls, value: str) -> str:
        if not re.match(INSTANCE_ID, value):
            raise ValueError(f"{value!r} is not an EC2 instance id (i- and 8 or 17 hex digits)")
        return value

    @field_validator("exclude")
    @classmethod
    def _volume_ids(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        for volume_id in ids:
            _volume_id(volume_id)
        return ids

    @property
    def name(self) -> str:
        return f"{self.instance} (all volumes{' but boot' if self.exclude_boot else ''})"


class VolumeSpec(_Strict):
    """One EBS volume by id; ``name`` is what the catalog and tags call it (default: the id)."""

    volume: str
    name: str = Field(pattern=in_words(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$", "a valid name: 1-128 letters, digits, "
                                       "'.', '_', '/' or '-', beginning with a letter or digit"))

    @field_validator("volume")
    @classmethod
    def _volume(cls, value: str) -> str:
        return _volume_id(value)

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("name") and isinstance(data.get("volume"), str):
            return {**data, "name": data["volume"]}
        return data


VOLUMES_HINT = (
    "use either one entry {instance: i-..., exclude_boot: true, exclude: [vol-...]} "
    "or entries {volume: vol-..., name: data}"
)


def parse_volumes(node: str, raw: list[Any]) -> list[InstanceVolumes | VolumeSpec]:
    """A node's ``volumes:`` list as models; every problem names the node and the entry."""
    if not raw:
        raise BadInputError(f"node {node}: no volumes to snapshot", hint=VOLUMES_HINT)
    parsed: list[InstanceVolumes | VolumeSpec] = []
    for index, entry in enumerate(raw):
        where = f"node {node}: volumes[{index}]"
        if not isinstance(entry, dict) or ("instance" in entry) == ("volume" in entry):
            raise BadInputError(f"{where}: expected a mapping with either 'instance' or 'volume'", hint=VOLUMES_HINT)
        model = InstanceVolumes if "instance" in entry else VolumeSpec
        try:
            parsed.append(model.model_validate(entry))
        except ValidationError as exc:
            raise BadInputError(f"{where}: {describe_validation_error(exc, model)}", hint=VOLUMES_HINT) from exc
    _check_mix(node, parsed)
    return parsed


def _check_mix(node: str, parsed: list[InstanceVolumes | VolumeSpec]) -> None:
    instances = [p for p in parsed if isinstance(p, InstanceVolumes)]
    if instances and len(parsed) > 1:
        # An instance entry already covers its volumes; mixing would snapshot some twice
        # and break the one-call crash-consistent group.
        raise BadInputError(f"node {node}: an 'instance' entry must be the node's only volumes entry", hint=VOLUMES_HINT)
    seen_ids: set[str] = set()
    seen_names: set[str] = set()
    for spec in parsed:
        if isinstance(spec, VolumeSpec):
            if spec.volume in seen_ids:
                raise BadInputError(f"node {node}: volume {spec.volume} is listed twice")
            if spec.name in seen_names:
                raise BadInputError(f"node {node}: volume name {spec.name!r} is used twice", hint="names must be unique per node")
            seen_ids.add(spec.volume)
            seen_names.add(spec.name)
