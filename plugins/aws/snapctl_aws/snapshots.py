"""EC2 snapshot dicts to and from ``SnapshotRef``, and tag shapes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from snapctl.providers import SnapshotRef, SnapshotState
from snapctl.timestamps import parse_utc, utc_text
from snapctl_aws.client import SENDINGS, sendings

STATE_ERROR = "error"
# recoverable / recovering: AWS is retrying the upload by itself, so the snapshot is not done
# and not failed yet.
_STATES: dict[str, SnapshotState] = {
    "pending": "pending",
    "recoverable": "pending",
    "recovering": "pending",
    "completed": "completed",
    "error": "error",
}
# EC2 is eventually consistent: for a while after a create, DescribeSnapshots may answer
# InvalidSnapshot.NotFound for the snapshot it made. Within this long of its StartTime (read
# against this host's clock), a snapshot not found is taken as not listed yet rather than gone.
NOT_FOUND_GRACE_S = 60.0
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")


def aws_tags(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def tag_filters(tags: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"Name": f"tag:{key}", "Values": [value]} for key, value in sorted(tags.items())]


def create_attempts(answer: Mapping[str, Any]) -> dict[str, int]:
    """``{"create_attempts": n}`` when a create call was sent more than once, for the ref's
    ``extra``; empty when it was sent once. Counts botocore's sendings (a late or lost answer,
    throttling) and those of snapctl's per-volume retry (``Ec2.call``), which a first sending,
    answered late, may have caused: the snapshot it made holds the volume's in-progress slot."""
    sent = (answer.get("ResponseMetadata") or {}).get(SENDINGS) or sendings(answer)
    return {"create_attempts": sent} if sent > 1 else {}


def made_recently(ref: SnapshotRef, now: float) -> bool:
    """``ref``'s snapshot started less than ``NOT_FOUND_GRACE_S`` before ``now`` (``time.time()``),
    so that EC2 may not list it yet. A ref without a creation time is no recent one."""
    try:
        started = parse_utc(ref.created_at).timestamp() if ref.created_at else None
    except ValueError:
        return False
    return started is not None and now - started < NOT_FOUND_GRACE_S


def state_of(snapshot: Mapping[str, Any]) -> SnapshotState:
    # An unknown future state is safer read as "not done yet" than as done or failed.
    return _STATES.get(str(snapshot.get("State", "pending")), "pending")


def progress_of(snapshot: Mapping[str, Any]) -> float | None:
    match = _PERCENT.match(str(snapshot.get("Progress") or ""))
    return min(100.0, float(match.group(1))) if match else None


def _created_at(snapshot: Mapping[str, Any]) -> str | None:
    start = snapshot.get("StartTime")
    if isinstance(start, datetime):
        return utc_text(start)
    return str(start) if start else None


def ref_from_snapshot(
    snapshot: Mapping[str, Any], *, node: str, volume: str, region: str,
    tags: Mapping[str, str] | None = None, extra: Mapping[str, Any] | None = None,
) -> SnapshotRef:
    """A ref for one EC2 snapshot (a CreateSnapshot answer or a DescribeSnapshots item);
    ``tags`` are the ones the create call sent, in case the answer omits them."""
    state = state_of(snapshot)
    details: dict[str, Any] = {"region": region, "volume_id": snapshot.get("VolumeId")}
    if snapshot.get("VolumeSize") is not None:
        details["volume_size_gib"] = snapshot["VolumeSize"]
    details.update(extra or {})
    return SnapshotRef(
        provider="aws",
        snapshot_id=snapshot["SnapshotId"],
        node=node,
        volume=volume,
        state=state,
        progress=progress_of(snapshot),
        created_at=_created_at(snapshot),
        tags={**(tags or {}), **{t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}},
        error=(snapshot.get("StateMessage") or "snapshot is in error state") if state == STATE_ERROR else None,
        extra=details,
    )


def refreshed(ref: SnapshotRef, snapshot: Mapping[str, Any]) -> SnapshotRef:
    """``ref`` updated with a newer DescribeSnapshots answer for the same snapshot."""
    state = state_of(snapshot)
    update: dict[str, Any] = {"state": state, "progress": progress_of(snapshot)}
    if state == "completed":
        update["progress"] = 100.0
    if state == STATE_ERROR:
        update["error"] = snapshot.get("StateMessage") or "snapshot is in error state"
    if snapshot.get("Tags"):
        update["tags"] = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
    return ref.model_copy(update=update)
