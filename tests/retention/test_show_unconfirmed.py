"""`show` of a run whose snapshots are not confirmed complete (`backup --no-wait`): it said
`succeeded` and named its snapshots as any backup's, while `verify` exited 7. `list` does not mark
such a run: its index line has no place for it that older snapctl reads (docs/catalog.md)."""

from __future__ import annotations

import json
from datetime import timedelta

from snapctl.prune import prune

from .conftest import T0, Scene, inventory, snapctl_cli

NO_WAIT = "20240302T000000Z-bbbbbb"
WAITED = "20240301T000000Z-aaaaaa"


def test_show_says_a_no_wait_runs_snapshots_are_not_confirmed_complete(scene: Scene) -> None:
    scene.add_run(WAITED, T0)
    scene.add_run(NO_WAIT, T0 + timedelta(days=1), waited=False)
    snapctl = snapctl_cli(scene)

    shown = snapctl("show", NO_WAIT)
    assert shown.returncode == 0, shown.stderr
    assert f"run `snapctl verify {NO_WAIT}`" in shown.stdout and "snapshots not confirmed complete" in shown.stdout
    assert f"{NO_WAIT}-n1-data (pending when recorded)" in shown.stdout
    assert json.loads(snapctl("show", NO_WAIT, "-o", "json").stdout)["data"]["snapshots_completed"] is False
    assert snapctl("verify", NO_WAIT).returncode == 7  # what show now points at

    waited = snapctl("show", WAITED).stdout
    assert "not confirmed" not in waited and "when recorded" not in waited


def test_a_no_wait_run_a_prune_completed_is_shown_as_any_backup(scene: Scene) -> None:
    scene.add_run(NO_WAIT, T0, waited=False)
    snapctl = snapctl_cli(scene)
    assert "not confirmed" in snapctl("show", NO_WAIT).stdout

    prune(inventory(scene, {"keep_last": 5}))  # a prune that keeps the run makes it durable

    assert scene.catalog.load(NO_WAIT).snapshots_completed
    assert "not confirmed" not in snapctl("show", NO_WAIT).stdout


def test_index_lines_stay_as_older_snapctl_reads_them(scene: Scene) -> None:
    # Older snapctl's index line forbids unknown keys: one that meets a line it cannot read
    # rebuilds the index from the manifests and writes it back, dropping the lines of runs whose
    # manifest is lost (gc then offers their snapshots for deletion as of runs not in the catalog).
    scene.add_run(WAITED, T0)
    scene.add_run(NO_WAIT, T0 + timedelta(days=1), waited=False)
    lines = json.loads((scene.root / "catalog" / "prod" / "index.json").read_text())
    known = {"run_id", "status", "started_at", "finished_at", "nodes", "snapshots", "max_freeze_window_s", "error"}
    assert [line["run_id"] for line in lines] == [NO_WAIT, WAITED]
    assert all(set(line) <= known for line in lines)
