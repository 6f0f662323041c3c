"""A drill's teardown deletes what carries its tag though no restore returned it: a disk whose
restore failed once the cloud had made it, and whose own clean-up was refused. The real SDKs
against the local GCP and Azure servers, a real scratch agent."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from snapctl.config import load_inventory
from snapctl.drill import DrillReport, run_drill
from snapctl.providers import TAG_DRILL
from snapctl.render import JsonRenderer
from tests.fakes.gcp_compute import FakeGcpCompute
from tests.fakes.json_http import DROP, Fault
from tests.restore.clouds import AZURE_GROUP, GCP_ZONE, _backup, azure_node, gcp_node, restored_disks
from tests.restore.conftest import scratch_agent


def _no_retries(inventory) -> None:
    data = yaml.safe_load(inventory.read_text())
    data["provider"]["max_retries"] = 0
    inventory.write_text(yaml.safe_dump(data, sort_keys=False))


@contextlib.contextmanager
def drilled_with_a_lost_create(tmp_path: Path, cloud, deletes_denied: int) -> Iterator[tuple[Any, DrillReport]]:
    """A drill of a one-disk node whose disk the cloud makes while the answer is lost (no retries),
    and whose first ``deletes_denied`` DELETEs are refused: the restore's own clean-up first."""
    token_file = tmp_path / "agent-token"
    token_file.write_text("scratch-agent-token\n")
    scratch_db = tmp_path / "scratch-machine" / "data" / "app.db"
    scratch_db.parent.mkdir(parents=True)
    with scratch_agent(tmp_path, token_file, scratch_db) as url, \
            cloud(tmp_path, {"instance": "scratch", "agent": url}, {"token_file": str(token_file)}) as (fake, inventory):
        run_id = _backup(inventory)
        _no_retries(inventory)
        gcp = isinstance(fake, FakeGcpCompute)
        create = ("POST", f"/zones/{GCP_ZONE}/disks") if gcp else ("PUT", f"/resourceGroups/{AZURE_GROUP}/")
        fake.inject(Fault(DROP[0], method=create[0], path_contains=create[1], after_commit=True))
        fake.inject(Fault(403, times=deletes_denied, method="DELETE", message="denied"))
        yield fake, run_drill(load_inventory(inventory), run_id, junit=tmp_path / "drill.xml")


@pytest.mark.parametrize("cloud", [gcp_node, azure_node], ids=["gcp", "azure"])
def test_a_disk_a_failed_restore_could_not_delete_is_deleted_by_the_teardown(tmp_path, cloud):
    with drilled_with_a_lost_create(tmp_path, cloud, deletes_denied=1) as (fake, report):
        gcp = isinstance(fake, FakeGcpCompute)
        [node] = report.nodes
        assert node.verdict == "error" and "create disk" in node.error
        assert [r.status for r in fake.requests_to("DELETE")] == [403, 200 if gcp else 202]
        assert restored_disks(fake) == [], "the teardown found the disk by the drill's tag and deleted it"
        [line] = report.warnings
        assert line.startswith("deleted volume ") and f"tagged {TAG_DRILL}={report.drill_id}, that a failed " \
            "restore left" in line
        assert report.leftovers == [] and report.teardown_errors == [] and not report.ok


def test_one_the_teardown_cannot_delete_either_is_a_leftover_and_fails_the_drill(tmp_path, capsys):
    with drilled_with_a_lost_create(tmp_path, gcp_node, deletes_denied=2) as (fake, report):
        [disk] = restored_disks(fake)
        [volume] = report.leftovers
        assert volume == f"projects/{fake.project}/zones/{GCP_ZONE}/disks/{disk}" and report.warnings == []
        [problem] = report.teardown_errors
        assert problem.startswith(f"cannot delete volume {volume}, tagged {TAG_DRILL}={report.drill_id}, that a "
                                  "failed restore left: gcp delete disk") and "denied" in problem

    # With -o json they were only in the document: a cron job's `drill -o json 2>>drill.log` logged
    # neither what the teardown could not do nor the disk it left. On stderr as in text, now.
    capsys.readouterr()
    assert JsonRenderer().drill_result(report) == report.exit_code
    out, err = capsys.readouterr()
    assert json.loads(out)["data"]["teardown_errors"] == [problem]
    assert err.splitlines() == [f"teardown: {problem}", f"left behind: {volume} (delete it by hand)"]
