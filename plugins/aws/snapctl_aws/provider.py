"""EBS snapshots of a node's volumes: a whole instance in one crash-consistent call, or listed volumes.

The point in time of an EBS snapshot is fixed when the create call returns; the upload that
follows (``pending`` until ``completed``) needs no engine hold, so ``snapshot`` returns at once
and ``wait`` follows the upload.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapctl import __version__
from snapctl.errors import BadInputError, ProviderError, SnapctlError, SnapshotNotFound
from snapctl.providers import (
    GONE_HINT,
    TAG_CLUSTER,
    TAG_NODE,
    TAG_RUN,
    TAG_VERSION,
    TAG_VOLUME,
    Capabilities,
    NodeVolumes,
    ProgressFn,
    RestoreTarget,
    SnapshotRef,
    check_cluster_tag,
    discard_partial_snapshots,
)
from snapctl.ratelimit import TokenBucket
from snapctl_aws import aio
from snapctl_aws.client import CREATE, DELETE, DESCRIBE, TAG, Ec2
from snapctl_aws.restore import (
    TAG_RESTORED_FROM,
    check_restore_instance,
    check_restore_volume,
    delete_restored_volume,
    find_restored_volumes,
    restore_volume,
)
from snapctl_aws.settings import AwsSettings, InstanceVolumes, VolumeSpec, parse_volumes
from snapctl_aws.snapshots import (
    NOT_FOUND_GRACE_S,
    STATE_ERROR,
    aws_tags,
    create_attempts,
    made_recently,
    ref_from_snapshot,
    refreshed,
    tag_filters,
)

log = logging.getLogger(__name__)

DESCRIBE_BATCH = 200  # snapshot ids per DescribeSnapshots while waiting


@dataclass(frozen=True)
class Call:
    """One EC2 call of a snapshot's steps; its answer is sent back into them."""

    method: str
    bucket: str
    kwargs: dict[str, Any]
    per_volume_retry: bool = False


@dataclass(frozen=True)
class Discard:
    """Delete this snapshot the steps made (``AwsProvider.delete``)."""

    ref: SnapshotRef


Steps = Generator[Call | Discard, Any, None]


def _next_step(steps: Steps, answer: Any) -> Call | Discard | None:
    try:
        return steps.send(answer)
    except StopIteration:
        return None


class AwsProvider:
    """Disk snapshots on EC2 (EBS) for one cluster."""

    name = "aws"
    settings_model = AwsSettings
    restore_makes_cloud_volumes = True  # a drill needs a scratch agent on the instance they are attached to
    # What warm_up imports: the provider worker imports it once, before it forks (snapctl.providers).
    sdk_modules = ("boto3", "botocore.config", "botocore.exceptions")
    sdk_async_modules = aio.ASYNC_MODULES  # aiobotocore's, ~0.13 s of CPU a process

    def __init__(self, settings: AwsSettings, *, cluster: str, base_dir: Path) -> None:
        self.settings = settings
        self.cluster = cluster
        self.base_dir = base_dir
        self.ec2 = Ec2(settings)
        self.capabilities = Capabilities(
            crash_consistent_group=True,  # CreateSnapshots over all of an instance's volumes
            incremental=True,
            instant=False,
            max_creates_per_s=settings.create_rate,
            create_burst=settings.create_burst,
        )
        self._sleep = time.sleep
        self._clock = time.monotonic
        self._now = time.time  # what a snapshot's StartTime is compared with (made_recently)
        self._credentials_accepted = False  # warm_up asked EC2 once, and it answered
        self._instances_read: dict[str, dict[str, Any]] = {}  # check_restore's, by instance id: {} when unlisted
        if aio.available():
            # Instance attributes, only where aiobotocore is installed: snapctl makes its create
            # calls on its event loop when a provider has snapshot_async (snapctl.provider_loop).
            self.aio = aio.AioEc2(self.ec2)
            self.warm_up_async = self._warm_up_async
            self.snapshot_async = self._snapshot_async
            self.aclose = self._aclose

    @property
    def client(self) -> Any:
        """The boto3 EC2 client (made on first use)."""
        return self.ec2.client

    def validate_volumes(self, node: str, raw: list[Any], *, base_dir: Path) -> NodeVolumes:
        return NodeVolumes(node=node, volumes=parse_volumes(node, raw))

    @property
    def create_bucket(self) -> TokenBucket:
        """The create calls' bucket, paused when EC2 throttles: snapctl's per-node pacer reads it."""
        return self.ec2.buckets[CREATE]

    def warm_up(self) -> None:
        # boto3's import and EC2's service model: 0.3-0.4 s of CPU that the first create call
        # of a hold would otherwise pay, with every node frozen (docs/benchmarks.md).
        self.ec2.warm_up()
        if not self._credentials_accepted:
            # Keys are judged by AWS alone (a deactivated key, an expired session): one read of this
            # cluster's snapshots, changing nothing, rather than the first create, with every node held.
            self.ec2.call("describe_snapshots", DESCRIBE, OwnerIds=["self"], MaxResults=5,
                          Filters=tag_filters({TAG_CLUSTER: self.cluster}))
            self._credentials_accepted = True

    # -- snapshot ------------------------------------------------------------------------------

    def snapshot(self, volumes: NodeVolumes, tags: Mapping[str, str]) -> list[SnapshotRef]:
        base = self._base_tags(volumes.node, tags)
        created: list[SnapshotRef] = []
        try:
            steps = self._snapshot_steps(volumes, base, created)
            answer: Any = None
            while (step := _next_step(steps, answer)) is not None:
                if isinstance(step, Discard):
                    answer = self.delete(step.ref)
                else:
                    answer = self.ec2.call(step.method, step.bucket, per_volume_retry=step.per_volume_retry,
                                           **step.kwargs)
        except Exception:
            discard_partial_snapshots(self, volumes.node, created, base)
            raise
        return created

    async def _snapshot_async(self, volumes: NodeVolumes, tags: Mapping[str, str]) -> list[SnapshotRef]:
        """``snapshot``'s very steps, its EC2 calls awaited on the loop (``snapctl_aws.aio``)."""
        base = self._base_tags(volumes.node, tags)
        created: list[SnapshotRef] = []
        try:
            steps = self._snapshot_steps(volumes, base, created)
            answer: Any = None
            while (step := _next_step(steps, answer)) is not None:
                if isinstance(step, Discard):  # only where EC2 ignored ExcludeDataVolumeIds (moto)
                    answer = await asyncio.to_thread(self.delete, step.ref)
                else:
                    answer = await self.aio.call(step.method, step.bucket, per_volume_retry=step.per_volume_retry,
                                                 **step.kwargs)
        except BaseException:  # a call cancelled part-way (the run gave up on it) too: what it made goes
            await asyncio.to_thread(discard_partial_snapshots, self, volumes.node, created, base)
            raise
        return created

    async def _warm_up_async(self) -> None:
        if self.aio.warmed:
            return
        # Here, not in warm_up: a run that makes the blocking calls (provider_process never or
        # always, or 50 calls and more) never loads aiobotocore. In a thread: the loop never imports.
        await asyncio.to_thread(aio.import_async_modules)
        # Its first request sets up the async client's own TLS context, proxy and connection: one
        # read that changes nothing, rather than the first create call with every node held.
        await self.aio.call("describe_snapshots", DESCRIBE, OwnerIds=["self"], MaxResults=5,
                            Filters=tag_filters({TAG_CLUSTER: self.cluster}))
        self.aio.warmed = True

    async def _aclose(self) -> None:
        await self.aio.aclose()

    def _base_tags(self, node: str, tags: Mapping[str, str]) -> dict[str, str]:
        check_cluster_tag(self.cluster, node, tags)
        base = {**self.settings.tags, **tags}
        base.update({TAG_CLUSTER: self.cluster, TAG_NODE: tags.get(TAG_NODE, node)})
        base.setdefault(TAG_VERSION, __version__)
        base.pop(TAG_VOLUME, None)  # set per volume below
        return base

    def _description(self, node: str, base: Mapping[str, str]) -> str:
        run = base.get(TAG_RUN)
        return f"snapctl cluster {self.cluster} node {node}" + (f" run {run}" if run else "")

    def _snapshot_steps(self, volumes: NodeVolumes, base: dict[str, str], created: list[SnapshotRef]) -> Steps:
        """A node's snapshot as the EC2 calls it takes, each sent back its answer: what ``snapshot``
        makes with boto3 and ``snapshot_async`` with aiobotocore. Appends each snapshot to ``created``
        as soon as it exists, so that a failure after it rolls it back."""
        node = volumes.node
        for spec in volumes.volumes:
            if isinstance(spec, InstanceVolumes):
                yield from self._instance_steps(node, spec, base, created)
            elif isinstance(spec, VolumeSpec):
                tags = {**base, TAG_VOLUME: spec.name}
                answer = yield Call("create_snapshot", CREATE, {
                    "VolumeId": spec.volume,
                    "Description": self._description(node, base),
                    "TagSpecifications": [{"ResourceType": "snapshot", "Tags": aws_tags(tags)}],
                }, per_volume_retry=True)
                created.append(ref_from_snapshot(answer, node=node, volume=spec.name, region=self.settings.region,
                                                 tags=tags, extra=create_attempts(answer)))
            else:
                raise BadInputError(f"node {node}: not an aws volume entry: {spec!r}",
                                    hint="pass volumes through validate_volumes first")

    def _instance_steps(self, node: str, spec: InstanceVolumes, base: dict[str, str], created: list[SnapshotRef]) -> Steps:
        answer = yield Call("create_snapshots", CREATE, {
            "InstanceSpecification": {
                "InstanceId": spec.instance,
                "ExcludeBootVolume": spec.exclude_boot,
                **({"ExcludeDataVolumeIds": list(spec.exclude)} if spec.exclude else {}),
            },
            "Description": self._description(node, base),
            "TagSpecifications": [{"ResourceType": "snapshot", "Tags": aws_tags(base)}],
        }, per_volume_retry=True)
        snapshots = answer.get("Snapshots", [])
        # Recorded at once, so that a failure below rolls these back too. Each carries the volume
        # tag its snapshot is to get; EC2's snapshot gets it once every node is released (after_release).
        extra = {"instance_id": spec.instance, **create_attempts(answer)}
        fresh = [ref_from_snapshot(s, node=node, volume=s["VolumeId"], region=self.settings.region,
                                   tags={**base, TAG_VOLUME: s["VolumeId"]}, extra=extra) for s in snapshots]
        created.extend(fresh)
        # AWS honours ExcludeDataVolumeIds, moto ignores it: drop any snapshot of an excluded
        # volume so the result is right against either.
        unwanted = [r for r in fresh if r.volume in spec.exclude]
        for ref in unwanted:
            yield Discard(ref)
            created.remove(ref)
        if len(unwanted) == len(fresh):
            raise ProviderError(
                f"node {node}: instance {spec.instance} has no volumes left to snapshot",
                hint="check exclude_boot / exclude in the node's volumes: block",
            )

    def after_release(self, refs: list[SnapshotRef]) -> None:
        """Tag each snapshot of an instance entry with its volume: one CreateSnapshots tags them
        all alike. Here, once every node is released, not in ``snapshot``: the point in time needs
        no tag, and at 10 a second past a burst of 100, the tags of 200 instances of 4 volumes
        would hold the engines ~70 s. Best effort: a snapshot left without it (this failing, or the
        process dying first) is named by its VolumeId all the same (``_ref_of``: find, gc, prune),
        and `snapctl verify` says the tag is gone."""
        pending = [ref for ref in refs if ref.provider == self.name and "instance_id" in ref.extra]
        while pending:
            not_listed = []
            for ref in pending:
                try:
                    self.ec2.call("create_tags", TAG, Resources=[ref.snapshot_id],
                                  Tags=aws_tags({TAG_VOLUME: ref.volume}))
                except SnapshotNotFound as exc:
                    if made_recently(ref, self._now()):  # not listed yet (eventual consistency): again
                        not_listed.append(ref)
                    else:
                        log.warning("node %s: snapshot %s of volume %s is gone; not tagged %s: %s",
                                    ref.node, ref.snapshot_id, ref.volume, TAG_VOLUME, exc)
                except SnapctlError as exc:
                    log.warning("node %s: could not tag snapshot %s with %s=%s (found by its volume id all the "
                                "same; `snapctl verify` says the tag is gone): %s",
                                ref.node, ref.snapshot_id, TAG_VOLUME, ref.volume, exc)
            if not_listed:
                self._sleep(self.settings.poll_interval_s)
            pending = not_listed

    # -- wait ----------------------------------------------------------------------------------

    def wait(self, refs: list[SnapshotRef], deadline: float, progress: ProgressFn | None = None) -> list[SnapshotRef]:
        self._delete_twins(refs)
        current = {r.snapshot_id: r for r in refs}
        # The first round looks at every snapshot, whatever the refs say: a ref may be stale
        # (read from a manifest) and the snapshot gone since.
        pending = list(current)
        while True:
            unlisted = set(pending)  # not done, whatever the ref says, until EC2 lists it
            for start in range(0, len(pending), DESCRIBE_BATCH):
                batch = pending[start:start + DESCRIBE_BATCH]
                for snapshot in self._describe(batch, current):
                    ref = refreshed(current[snapshot["SnapshotId"]], snapshot)
                    current[ref.snapshot_id] = ref
                    unlisted.discard(ref.snapshot_id)
                    if progress is not None:
                        progress(ref)
            failed = [r for r in current.values() if r.state == STATE_ERROR]
            if failed:
                raise ProviderError(
                    "snapshot failed: " + "; ".join(
                        f"{r.snapshot_id} (node {r.node}, volume {r.volume}): {r.error or 'no reason given'}" for r in failed
                    ),
                    hint="the run is failed; AWS keeps no usable data in a snapshot in error state",
                )
            if not unlisted and all(r.state == "completed" for r in current.values()):
                return [current[r.snapshot_id] for r in refs]
            remaining = deadline - self._clock()
            if remaining <= 0:
                still = [r for i, r in current.items() if r.state != "completed" or i in unlisted]
                raise ProviderError(
                    f"{len(still)} snapshot(s) still pending at the deadline: "
                    + ", ".join(f"{r.snapshot_id} ({r.progress if r.progress is not None else '?'}%)" for r in still),
                    hint="large first snapshots can take hours; raise policy.wait_timeout_s or use --no-wait",
                )
            self._sleep(min(self.settings.poll_interval_s, remaining))
            pending = [i for i, r in current.items() if r.state != "completed" or i in unlisted]

    def _delete_twins(self, refs: list[SnapshotRef]) -> None:
        """CreateSnapshot(s) takes no idempotency token: a create sent again (by botocore, its first
        answer late or lost, or by the per-volume retry after EC2 refused that resend because the
        first's snapshot was in progress) may have made a second snapshot of the same volumes,
        tagged with the run and node like the one recorded. Deleted here, after the holds, so that
        a run leaves one snapshot per volume (a per-volume in-progress slot each, and an orphan for
        gc). Only for refs whose create was sent more than once; best effort: one left is listed by
        gc."""
        retried: dict[tuple[str, str], set[str]] = {}
        for ref in refs:
            if ref.extra.get("create_attempts", 1) > 1 and ref.tags.get(TAG_RUN):
                retried.setdefault((ref.tags[TAG_RUN], ref.node), set()).add(ref.extra.get("volume_id"))
        recorded = {ref.snapshot_id for ref in refs}
        for (run, node), volume_ids in retried.items():
            try:
                twins = [found for found in self.find({TAG_RUN: run, TAG_NODE: node})
                         if found.snapshot_id not in recorded and found.extra.get("volume_id") in volume_ids]
            except SnapctlError as exc:
                log.warning("node %s: could not look for a second snapshot made by a create sent twice: %s", node, exc)
                continue
            for twin in twins:
                try:
                    self.delete(twin)
                except SnapctlError as exc:
                    log.warning("node %s: could not delete snapshot %s, a second one of volume %s made by a create "
                                "sent twice (snapctl gc lists it): %s", node, twin.snapshot_id,
                                twin.extra.get("volume_id"), exc)
                else:
                    log.info("node %s: deleted snapshot %s, a second one of volume %s made by a create sent "
                             "more than once (an answer late or lost)", node, twin.snapshot_id,
                             twin.extra.get("volume_id"))

    def _describe(self, snapshot_ids: list[str], refs: Mapping[str, SnapshotRef]) -> list[dict[str, Any]]:
        """The snapshots of ``snapshot_ids`` EC2 lists now. One not found that was made less than
        ``NOT_FOUND_GRACE_S`` ago is left out, to be asked for at the next poll: EC2 is eventually
        consistent, and its NotFound for a snapshot made moments ago proves nothing. Any other is
        ``SnapshotNotFound``."""
        try:
            return self.ec2.call("describe_snapshots", DESCRIBE, SnapshotIds=snapshot_ids)["Snapshots"]
        except SnapshotNotFound as exc:
            not_found = exc
        # One id EC2 does not know fails the whole call; by filter, those it knows are listed.
        found = self.ec2.pages("describe_snapshots", DESCRIBE, "Snapshots", OwnerIds=["self"], MaxResults=1000,
                               Filters=[{"Name": "snapshot-id", "Values": snapshot_ids}])
        listed = {snapshot["SnapshotId"] for snapshot in found}
        unlisted = [i for i in snapshot_ids if i not in listed]
        now = self._now()
        gone = [i for i in unlisted if not made_recently(refs[i], now)]
        if gone:
            raise SnapshotNotFound(
                f"a snapshot being waited for no longer exists: {', '.join(gone)} ({not_found.message})",
                hint="someone deleted it outside snapctl; the run is failed",
            ) from not_found
        if unlisted:
            log.info("snapshot(s) %s, made less than %gs ago, not listed by EC2 yet (it is eventually consistent): "
                     "asked for again at the next poll", ", ".join(unlisted), NOT_FOUND_GRACE_S)
        return found

    # -- delete, find, restore, delete_volume -------------------------------------------------

    def delete(self, ref: SnapshotRef) -> None:
        try:
            snapshot = self._describe_one(ref.snapshot_id)
        except SnapshotNotFound:
            # EC2 may not list a snapshot made moments ago yet (eventual consistency): a rollback
            # that believed it would leave a good snapshot behind. Send the delete anyway when the
            # ref says it is this cluster's (IAM's condition on DeleteSnapshot still reads the
            # snapshot's own tag); its own NotFound is done. Older ones are gone: no call.
            if not (made_recently(ref, self._now()) and ref.tags.get(TAG_CLUSTER) == self.cluster):
                return
        else:
            self._check_ours(ref, snapshot)
        try:
            self.ec2.call("delete_snapshot", DELETE, SnapshotId=ref.snapshot_id)
        except SnapshotNotFound:
            return

    def _check_ours(self, ref: SnapshotRef, snapshot: dict[str, Any]) -> None:
        tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
        if tags.get(TAG_CLUSTER) != self.cluster:
            raise ProviderError(
                f"refusing to delete snapshot {ref.snapshot_id}: it lacks tag {TAG_CLUSTER}={self.cluster}"
                + (f" (it belongs to cluster {tags[TAG_CLUSTER]!r})" if TAG_CLUSTER in tags else ""),
                hint="snapctl only deletes snapshots it made for this cluster",
            )

    def _describe_one(self, snapshot_id: str) -> dict[str, Any]:
        found = self.ec2.call("describe_snapshots", DESCRIBE, SnapshotIds=[snapshot_id]).get("Snapshots", [])
        if not found:
            raise SnapshotNotFound(f"snapshot {snapshot_id} not found")
        return found[0]

    def find(self, tags: Mapping[str, str]) -> list[SnapshotRef]:
        if tags.get(TAG_CLUSTER, self.cluster) != self.cluster:
            raise BadInputError(f"find is scoped to cluster {self.cluster!r}, not {tags[TAG_CLUSTER]!r}")
        wanted = {**tags, TAG_CLUSTER: self.cluster}
        snapshots = self.ec2.pages(
            "describe_snapshots", DESCRIBE, "Snapshots", OwnerIds=["self"], Filters=tag_filters(wanted), MaxResults=1000,
        )
        # One carrying snapctl-restored-from was made of a restored volume, copying its tags (which
        # include this cluster's): someone else's snapshot, never snapctl's, so no run's and no orphan.
        refs = [self._ref_of(snapshot) for snapshot in snapshots
                if not any(t["Key"] == TAG_RESTORED_FROM for t in snapshot.get("Tags", []))]
        return sorted(refs, key=lambda r: (r.created_at or "", r.node, r.volume, r.snapshot_id))

    def _ref_of(self, snapshot: dict[str, Any]) -> SnapshotRef:
        snap_tags = {t["Key"]: t["Value"] for t in snapshot.get("Tags", [])}
        return ref_from_snapshot(snapshot, node=snap_tags.get(TAG_NODE, ""),
                                 volume=snap_tags.get(TAG_VOLUME, snapshot.get("VolumeId", "")),
                                 region=self.settings.region)

    def describe(self, refs: Sequence[SnapshotRef]) -> list[SnapshotRef]:
        ids = list(dict.fromkeys(ref.snapshot_id for ref in refs))
        found = []
        for start in range(0, len(ids), 200):  # by filter, not SnapshotIds: one gone fails no call
            found += self.ec2.pages("describe_snapshots", DESCRIBE, "Snapshots", OwnerIds=["self"], MaxResults=1000,
                                    Filters=[{"Name": "snapshot-id", "Values": ids[start:start + 200]}])
        return [self._ref_of(snapshot) for snapshot in found]

    def check_restore(self, ref: SnapshotRef, target: RestoreTarget) -> None:
        """What ``restore`` would refuse, making nothing: `snapctl restore` asks for every volume
        of a run first, so that a snapshot gone or failed is not found after others were made."""
        check_restore_volume(self._restorable(ref), ref.volume, target, ref.node)
        if target.instance:
            check_restore_instance(self, target.instance, target.zone, ref.volume, ref.node)

    def restore(self, ref: SnapshotRef, target: RestoreTarget) -> str:
        return restore_volume(self, self._restorable(ref), ref.volume, target, ref.node)

    def _restorable(self, ref: SnapshotRef) -> dict[str, Any]:
        try:
            return self._describe_one(ref.snapshot_id)
        except SnapshotNotFound as exc:
            raise SnapshotNotFound(f"node {ref.node}: snapshot {ref.snapshot_id} of volume {ref.volume} no longer "
                                   f"exists ({exc.message})", hint=GONE_HINT) from exc

    def find_restored(self, tags: Mapping[str, str], places: Sequence[str] = ()) -> list[str]:
        return find_restored_volumes(self, tags)

    def delete_volume(self, volume_id: str) -> None:
        delete_restored_volume(self, volume_id)
