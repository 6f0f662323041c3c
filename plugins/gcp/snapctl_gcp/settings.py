"""The ``provider: {type: gcp}`` block and the shape of a node's ``volumes:`` list.

Credentials are deliberately absent: google-auth's default chain finds them
(GOOGLE_APPLICATION_CREDENTIALS, ``gcloud auth application-default login``, workload identity,
the VM's service account), so no secret is ever written into an inventory.
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
from snapctl_gcp.labels import encode_key

RESOURCE_NAME = r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$"  # disks, snapshots (RFC 1035)
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
# GCP allows 64 labels per resource. snapctl's own take five on a snapshot (a restored disk carries
# the provider's labels and four of snapctl's). The provider's `labels:` alone: at most 40, leaving
# room for the inventory's `tags:`; the two together: what is left beside snapctl's five.
GCP_MAX_LABELS = 64
MAX_USER_LABELS = 40
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


class GcpSettings(ProviderSettings):
    """Pacing defaults stay well inside Compute Engine's per-project API rate quotas."""

    type: Literal["gcp"]
    project: str = Field(pattern=r"^([a-z][-a-z0-9.]*[a-z0-9]:)?[a-z][-a-z0-9]{4,28}[a-z0-9]$")
    api_endpoint: str | None = Field(default=None, pattern=URL_PATTERN)  # tests, private endpoints
    anonymous: bool = False  # no credentials at all: only for a loopback api_endpoint (tests)
    guest_flush: bool = False  # ask the guest agent to flush (VSS on Windows) before capture
    storage_locations: list[str] = Field(default_factory=list)  # e.g. ["eu"]; default: nearest multi-region
    labels: dict[str, str] = Field(default_factory=dict)  # extra labels, already GCP-legal
    poll_interval_s: float = Field(default=2.0, gt=0)
    capture_timeout_s: float = Field(default=120.0, gt=0)  # create accepted -> disk content captured
    operation_timeout_s: float = Field(default=900.0, gt=0)  # deletes, restores
    request_timeout_s: float = Field(default=60.0, gt=0)  # one HTTP call
    max_retries: int = Field(default=8, ge=0, le=30)  # throttled / 5xx calls, per call
    max_backoff_s: float = Field(default=60.0, gt=0)  # longest single wait, Retry-After included
    create_rate: float = Field(default=5.0, gt=0)  # snapshot creates per second, sustained
    create_burst: int = Field(default=20, ge=1)

    @field_validator("labels")
    @classmethod
    def _legal_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        if len(labels) > MAX_USER_LABELS:
            raise ValueError(f"at most {MAX_USER_LABELS} labels (GCP allows 64 per snapshot, snapctl uses the rest)")
        for key, value in labels.items():
            if key.startswith("snapctl-"):
                raise ValueError(f"label {key!r}: keys starting with 'snapctl-' are set by snapctl itself")
            if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
                raise ValueError(f"label {key}={value!r}: GCP labels take lowercase letters, digits, '-' and '_' "
                                 "(keys start with a letter), at most 63 characters")
        return labels

    def check_inventory_tags(self, tags: Mapping[str, str]) -> None:
        # The inventory's tags become labels encoded (labels.py): any key and value fits, so only
        # how many there are is left to check, and two keys that encode alike (the "k_k" of a key
        # not starting with a letter cut to 63 characters) would be one label.
        keys: dict[str, str] = {}
        for key in tags:
            first = keys.setdefault(encode_key(key), key)
            if first != key:
                raise BadInputError(f"provider gcp: inventory tags {first!r} and {key!r} become the same label "
                                    f"{encode_key(key)!r}", hint="shorten one of them, or start it with a letter")
        together = set(self.labels) | set(keys)  # an inventory tag replaces the provider's label of its key
        self.check_tag_room(len(together), GCP_MAX_LABELS, "GCP", noun="labels", theirs="the provider's labels")

    @model_validator(mode="after")
    def _anonymous_only_on_loopback(self) -> GcpSettings:
        if self.anonymous and urlsplit(self.api_endpoint or "").hostname not in LOOPBACK_HOSTS:
            raise ValueError("anonymous: true is only allowed with a loopback api_endpoint (tests)")
        return self

    @field_validator("api_endpoint")
    @classmethod
    def _https_beyond_loopback(cls, value: str | None) -> str | None:
        # google-auth sends the access token (an hour of the service account's compute rights) with
        # every request, whatever the endpoint's scheme: over http, in clear.
        url = urlsplit(value or "")
        if url.scheme == "http" and url.hostname not in LOOPBACK_HOSTS:
            raise ValueError("must be https beyond loopback: every request carries an access token")
        return value


class GcpVolume(BaseModel):
    """One persistent disk; ``name`` is what the catalog and labels call it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    disk: str = Field(pattern=RESOURCE_NAME)
    zone: str = Field(pattern=in_words(r"^[a-z]+-[a-z]+[0-9]+-[a-z]$", "a GCP zone, such as europe-west1-b"))
    name: str = Field(pattern=NAME_PATTERN)

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("name") and isinstance(data.get("disk"), str):
            return {**data, "name": data["disk"]}
        return data


VOLUMES_HINT = "entries look like {disk: pg-data-1, zone: europe-west1-b, name: data}"


def parse_volumes(node: str, raw: list[Any]) -> list[GcpVolume]:
    """A node's ``volumes:`` list as models; every problem names the node and the entry."""
    if not raw:
        raise BadInputError(f"node {node}: no volumes to snapshot", hint=VOLUMES_HINT)
    parsed: list[GcpVolume] = []
    for index, entry in enumerate(raw):
        where = f"node {node}: volumes[{index}]"
        if not isinstance(entry, dict):
            raise BadInputError(f"{where}: expected a mapping", hint=VOLUMES_HINT)
        try:
            parsed.append(GcpVolume.model_validate(entry))
        except ValidationError as exc:
            raise BadInputError(f"{where}: {describe_validation_error(exc, GcpVolume)}", hint=VOLUMES_HINT) from exc
    seen_disks: set[tuple[str, str]] = set()
    seen_names: set[str] = set()
    for volume in parsed:
        if (volume.zone, volume.disk) in seen_disks:
            raise BadInputError(f"node {node}: disk {volume.disk} in {volume.zone} is listed twice")
        if volume.name in seen_names:
            raise BadInputError(f"node {node}: volume name {volume.name!r} is used twice",
                                hint="names must be unique per node")
        seen_disks.add((volume.zone, volume.disk))
        seen_names.add(volume.name)
    return parsed
