"""`snapctl status` of an AresDB node (its /dbg fake behind an embedded agent) whose last snapshot
job of a shard failed: AresDB keeps answering, so only the job table says something is wrong."""

from __future__ import annotations

import asyncio

from node_agent.engines.aresdb import AresDBEngine, AresDBSettings
from snapctl.status import collect_status
from tests.fakes.aresdb import FakeAresDB
from tests.status.conftest import load, record_run, validated, write_inventory

TABLES = [{"name": "dim_city", "shards": [0, 1]}, {"name": "dim_driver", "shards": [0]}]


def test_a_shard_whose_last_snapshot_job_failed_is_a_degraded_finding_naming_it(tmp_path):
    (tmp_path / "ares" / "data").mkdir(parents=True)
    settings = {"type": "aresdb", "root": "ares", "tables": TABLES, "timeout_s": 2, "poll_interval_s": 0.01}
    with FakeAresDB({"dim_city": [0, 1], "dim_driver": [0]}) as fake:
        fake.fail[("dim_driver", 0)] = "disk full"
        engine = AresDBEngine(AresDBSettings(debug_url=fake.url, **{k: v for k, v in settings.items() if k != "type"}),
                              base_dir=tmp_path)
        engine.trigger(None)  # what AresDB's own scheduler does every snapshotIntervalMinutes
        engine.close()
        nodes = [{"name": "a1", "agent": "embedded", "engine": {**settings, "debug_url": fake.url},
                  "volumes": [{"name": "data", "path": "ares"}]}]
        inventory = load(write_inventory(tmp_path, nodes))
        record_run(inventory, "r-recent", "succeeded", age_s=60)
        status = asyncio.run(collect_status(inventory))

    document = validated(status)["data"]
    assert document["verdict"]["level"] == "degraded" and document["verdict"]["exit_code"] == 5
    (finding,) = status.verdict.findings
    assert (finding.severity, finding.subject) == ("degraded", "a1")
    assert finding.message.startswith("engine aresdb reports a problem: snapshot job dim_driver/0 failed at stage "
                                      "snapshot (run ")
    assert finding.message.endswith("): disk full")
    assert finding.hint == "see the aresdb log; snapctl trigger TABLE/SHARD runs it again"
    assert document["verdict"]["findings"][0]["hint"] == finding.hint
    assert document["nodes"][0]["engine"]["up"] is True
