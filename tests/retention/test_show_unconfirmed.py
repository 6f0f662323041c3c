"""`list` and `show` of a run whose snapshots are not confirmed complete (`backup --no-wait`):
both said `succeeded` and named its snapshots as any backup's, while `verify` exited 7."""

from __future__ import annotations

import json
from datetime import timedelta

from snapctl.prune import prune

from .conftest import T0, Scene, inventory, snapctl_cli

NO_WAIT = "20240302T000000Z-bbbbbb"
WAITED = "20240301T000000Z-aaaaaa"


def _rows(listed: str) -> dict[str, str]:
    return {line.split()[0]: line for line in listed.splitlines() if line.strip().startswith("2024")}


def test_list_and_show_say_a_no_wait_runs_snapshots_are_not_confirmed_complete(scene: Scene) -> None:
    scene.add_run(WAITED, T0)
    scene.add_run(NO_WAIT, T0 + timedelta(days=1), waited=False)
    snapctl = snapctl_cli(scene)

    listed = snapctl("list").stdout
    rows = _rows(listed)
    assert rows[NO_WAIT].split()[1] == "succeeded*" and rows[WAITED].split()[1] == "succeeded"
    assert "* its snapshots not confirmed complete (backup --no-wait): `snapctl verify RUN`" in listed
    runs = {r["run_id"]: r for r in json.loads(snapctl("list", "-o", "json").stdout)["data"]["runs"]}
    assert runs[NO_WAIT]["unconfirmed"] is True and runs[WAITED]["unconfirmed"] is False

    shown = snapctl("show", NO_WAIT)
    assert shown.returncode == 0, shown.stderr
    assert f"run `snapctl verify {NO_WAIT}`" in shown.stdout and "snapshots not confirmed complete" in shown.stdout
    assert f"{NO_WAIT}-n1-data (pending when recorded)" in shown.stdout
    assert json.loads(snapctl("show", NO_WAIT, "-o", "json").stdout)["data"]["snapshots_completed"] is False
    assert snapctl("verify", NO_WAIT).returncode == 7  # what show now points at

    waited = snapctl("show", WAITED).stdout
    assert "not confirmed" not in waited and "when recorded" not in waited


def test_a_no_wait_run_a_prune_completed_is_listed_as_any_backup(scene: Scene) -> None:
    scene.add_run(NO_WAIT, T0, waited=False)
    snapctl = snapctl_cli(scene)
    assert _rows(snapctl("list").stdout)[NO_WAIT].split()[1] == "succeeded*"

    prune(inventory(scene, {"keep_last": 5}))  # a prune that keeps the run makes it durable

    assert scene.catalog.load(NO_WAIT).snapshots_completed
    listed = snapctl("list").stdout
    assert _rows(listed)[NO_WAIT].split()[1] == "succeeded" and "not confirmed" not in listed
    assert "not confirmed" not in snapctl("show", NO_WAIT).stdout


def test_index_lines_of_other_runs_stay_as_older_snapctl_reads_them(scene: Scene) -> None:
    # Older snapctl's index line forbids unknown keys: a key on every line would make it rebuild
    # the index from every manifest at each command.
    scene.add_run(WAITED, T0)
    scene.add_run(NO_WAIT, T0 + timedelta(days=1), waited=False)
    lines = {e["run_id"]: e for e in json.loads((scene.root / "catalog" / "prod" / "index.json").read_text())}
    assert lines[NO_WAIT]["unconfirmed"] is True and "unconfirmed" not in lines[WAITED]
