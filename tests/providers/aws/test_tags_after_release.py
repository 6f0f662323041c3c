"""A backup of a node whose volumes entry is a whole instance: CreateSnapshots in the hold, and
each snapshot's volume tag (a CreateTags apiece, paced at 10 a second past a burst of 100) only
once the node is released, `--no-wait` too. In process: an embedded SQLite node, its provider
reaching moto through a loopback front end that notes when each EC2 call arrives."""

from __future__ import annotations

import asyncio
import threading
import urllib.parse
from datetime import UTC, datetime

from snapctl.config import load_inventory
from snapctl.orchestrator import BackupOptions, backup
from snapctl.providers import TAG_VOLUME
from snapctl.verify import verify_run
from tests.fakes.serving import in_front_of, serving
from tests.moto_server import DEFAULT_REGION
from tests.restore.clouds import _inventory


def test_a_backup_tags_an_instances_snapshots_once_the_node_is_released(tmp_path, moto, ec2, machine):
    arrived: list[tuple[datetime, str]] = []
    lock = threading.Lock()

    def note(path: str, body: bytes) -> None:
        with lock:
            arrived.append((datetime.now(UTC), urllib.parse.parse_qs(body.decode()).get("Action", [""])[0]))
        return None  # on to moto

    with serving(in_front_of(moto.endpoint_url, note)) as url:
        provider = {"type": "aws", "region": DEFAULT_REGION, "endpoint_url": url, "poll_interval_s": 0.05}
        inventory = load_inventory(_inventory(tmp_path, provider, {"instance": machine.instance}))
        manifest = asyncio.run(backup(inventory, BackupOptions(prune=False, no_wait=True)))

        assert manifest.status == "succeeded", manifest.error
        record = manifest.nodes["db1"]
        creates = [at for at, action in arrived if action == "CreateSnapshots"]
        tags = [at for at, action in arrived if action == "CreateTags"]
        assert len(creates) == 1 and len(tags) == len(machine.data_volumes)
        assert creates[0] < record.complete_acked_at < min(tags), "a volume tag was sent while the node was held"

        stored = ec2.describe_snapshots(SnapshotIds=[r.snapshot_id for r in record.snapshots])["Snapshots"]
        assert sorted({t["Key"]: t["Value"] for t in s["Tags"]}[TAG_VOLUME] for s in stored) == sorted(
            machine.data_volumes)
        assert sorted(r.tags[TAG_VOLUME] for r in record.snapshots) == sorted(machine.data_volumes)
        checked = verify_run(inventory, manifest.run_id)
        assert checked.ok and [w for s in checked.snapshots for w in s.warnings] == []
