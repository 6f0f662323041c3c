"""`snapctl status` on the restore drills: degraded when the newest drill failed, or when the newest
that passed is older than `drill.max_age_s` (8 days unless set; null: never), and
`snapctl_drill_last_success_timestamp_seconds` in the textfile. Nothing said when the last drill
passed: a drill that stopped running, or kept failing in a CI job nobody watched, left status
healthy for ever."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from snapctl.catalog import open_catalog
from snapctl.config import Inventory
from snapctl.drill import DrillReport, NodeDrill
from snapctl.errors import BadInputError
from snapctl.metrics import status_textfile
from snapctl.status import collect_status
from snapctl.status_drills import MAX_READS
from tests.status.conftest import load, record_run, sqlite_nodes, write_inventory
from tests.status.promtext import parse, value
from tests.status.test_cli_status import snapctl

DAY = 86400


def _drill(inventory: Inventory, days_ago: float, verdict: str = "passed", *, finished: bool = True,
           tag: str = "a1b2") -> str:
    """A drill record as `snapctl drill` leaves it in the catalog, begun ``days_ago``."""
    began = datetime.now(UTC) - timedelta(days=days_ago)
    drill_id = f"{began:%Y%m%dT%H%M%SZ}-{tag}"
    record = f"{inventory.cluster}/drills/r-good-{drill_id}.json"
    report = DrillReport(cluster=inventory.cluster, run_id="r-good", drill_id=drill_id, provider="local",
                         started_at=began, finished_at=began + timedelta(minutes=3) if finished else None,
                         nodes=[NodeDrill(node="n1", verdict=verdict)], record=record)  # type: ignore[arg-type]
    open_catalog(inventory).store.write(record, report.model_dump_json().encode())
    return drill_id


def _status(inventory: Inventory) -> tuple[list[str], dict]:
    status = asyncio.run(collect_status(inventory))
    return [f"{f.severity} {f.message}" for f in status.verdict.findings if f.subject == "drills"], \
        parse(status_textfile(status))


def _inventory(tmp_path, **drill) -> Inventory:
    top = {"drill": drill} if drill else {}
    inventory = load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), **top))
    record_run(inventory, "r-good", "succeeded", age_s=3600)
    return inventory


def test_a_cluster_that_never_drilled_is_not_degraded_by_the_default(tmp_path):
    findings, samples = _status(_inventory(tmp_path))
    assert findings == []
    assert not any(name.startswith("snapctl_drill_last") for name, _ in samples)
    assert value(samples, "snapctl_drill_max_age_seconds", cluster="st") == 8 * DAY


def test_drills_that_pass_say_when_and_leave_status_healthy(tmp_path):
    inventory = _inventory(tmp_path)
    _drill(inventory, 10)
    _drill(inventory, 1)
    _drill(inventory, 0.01, finished=False, tag="c3d4")  # one under way is no result yet

    findings, samples = _status(inventory)

    assert findings == []
    assert len(open_catalog(inventory).store.list("st/drills/")) == 3
    newest = value(samples, "snapctl_drill_last_success_timestamp_seconds", cluster="st")
    assert DAY - 600 < datetime.now(UTC).timestamp() - newest < DAY
    assert value(samples, "snapctl_drill_last_ok", cluster="st") == 1


def test_a_newest_drill_that_failed_is_degraded(tmp_path):
    inventory = _inventory(tmp_path)
    _drill(inventory, 2)
    failed = _drill(inventory, 1, "mismatch", tag="ffff")

    findings, samples = _status(inventory)

    assert len(findings) == 1 and findings[0].startswith(f"degraded the newest restore drill {failed} (run r-good) failed")
    assert findings[0].endswith(": n1 did not pass")
    assert value(samples, "snapctl_drill_last_ok", cluster="st") == 0
    assert datetime.now(UTC).timestamp() - value(samples, "snapctl_drill_last_success_timestamp_seconds",
                                                 cluster="st") > 2 * DAY - 600


def test_a_drill_that_stopped_passing_is_degraded_past_max_age(tmp_path):
    inventory = _inventory(tmp_path)
    passed = _drill(inventory, 9)
    findings, _ = _status(inventory)
    assert findings == [f"degraded the newest restore drill that passed, {passed} (run r-good), finished 216.0h ago, "
                        "over drill.max_age_s of 192.0h"]

    # null: drills are not required; only a failed newest one is said.
    findings, samples = _status(_with_drills(tmp_path / "never", max_age_s=None))
    assert findings == []
    assert ("snapctl_drill_max_age_seconds", frozenset({("cluster", "st")})) not in samples


def _with_drills(directory, **drill) -> Inventory:
    directory.mkdir()
    inventory = _inventory(directory, **drill)
    _drill(inventory, 30)
    return inventory


def test_only_the_newest_records_are_read(tmp_path):
    inventory = _inventory(tmp_path, max_age_s="2d")
    _drill(inventory, 20)  # the last pass, behind more failures than status reads
    for i in range(MAX_READS):
        _drill(inventory, 10 - i * 0.1, "error", tag=f"e{i:03d}")

    findings, samples = _status(inventory)

    assert findings[-1] == f"degraded no restore drill has passed among the newest {MAX_READS} recorded"
    assert value(samples, "snapctl_drill_last_success_timestamp_seconds", cluster="st") == 0


def test_a_max_age_set_asks_for_drills_where_there_are_none(tmp_path):
    findings, _ = _status(_inventory(tmp_path, max_age_s="7d"))
    assert findings == ["degraded no restore drill is recorded in the catalog, and drill.max_age_s asks for one "
                        "every 168.0h"]


@pytest.mark.parametrize(("drill", "said"), [
    ({"max_age_s": 0}, "must be greater than zero"),
    ({"max_age_s": "often"}, "is not a duration"),
    ({"max_age": "7d"}, "max_age"),
])
def test_bad_max_age_is_refused(tmp_path, drill, said):
    with pytest.raises(BadInputError) as info:
        load(write_inventory(tmp_path, sqlite_nodes(tmp_path, 1), drill=drill))
    assert said in str(info.value)


def test_the_text_output_says_when_a_drill_last_passed(tmp_path):
    inventory = _inventory(tmp_path)
    passed = _drill(inventory, 1)

    shown = " ".join(snapctl("status", "-i", "inventory.yaml", cwd=tmp_path).stdout.split())
    assert f"newest passed drill: {passed} (run r-good), 24.0h ago (max age 8.0d)" in shown, shown
