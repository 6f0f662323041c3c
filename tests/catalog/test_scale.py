"""The catalog as years of hourly backups make it: what a command reads and writes must not grow
with the number of runs where it needs only the newest, and nothing may grow as its square.
Counted store calls, never timings."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapctl.catalog import Catalog, LocalBlobStore
from snapctl.catalog.index import index_entry
from snapctl.config import Retention
from snapctl.errors import Interrupted
from snapctl.providers import create_provider, snapshot_tags
from snapctl.prune import apply
from snapctl.prune_plan import plan
from tests.catalog.conftest import make_manifest

INDEX = "prod/index.json"


class CallCountingStore(LocalBlobStore):
    """The real local store, recording each call as (method, key or prefix)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: list[tuple[str, str]] = []
        self._replacing = False

    def read(self, key: str) -> bytes | None:
        if not self._replacing:  # a replace's compare reads through here: that is the replace's own
            self.calls.append(("read", key))
        return super().read(key)

    def write(self, key: str, data: bytes) -> None:
        self.calls.append(("write", key))
        super().write(key, data)

    def create(self, key: str, data: bytes) -> bool:
        self.calls.append(("create", key))
        return super().create(key, data)

    def replace(self, key: str, data: bytes, expected: bytes) -> bool:
        self.calls.append(("replace", key))
        self._replacing = True
        try:
            return super().replace(key, data, expected)
        finally:
            self._replacing = False

    def delete(self, key: str) -> None:
        self.calls.append(("delete", key))
        super().delete(key)

    def list(self, prefix: str) -> list[str]:
        self.calls.append(("list", prefix))
        return super().list(prefix)

    def manifests_read(self) -> list[str]:
        return [key.rsplit("/", 1)[1].removesuffix(".json") for method, key in self.calls
                if method == "read" and "/manifests/" in key]

    def index_writes(self) -> int:
        return sum(1 for method, key in self.calls if key == INDEX and method in ("write", "create", "replace"))


def hourly(runs: int) -> list[str]:
    return [f"r{i:05d}" for i in range(runs)]


def catalog_of(root: Path, runs: int) -> tuple[Catalog, CallCountingStore]:
    """``runs`` hourly runs, every 10th failed, written as a backup leaves them, the index once."""
    store = CallCountingStore(root)
    catalog = Catalog(store, "prod")
    catalog.held_lines_s = float("inf")  # what a block holds is written at its end, however slow the machine
    manifests = [make_manifest(run_id, minutes=60 * i, status="failed" if i % 10 == 9 else "succeeded")
                 for i, run_id in enumerate(hourly(runs))]
    for manifest in manifests:
        store.write(f"prod/manifests/{manifest.run_id}.json", manifest.model_dump_json().encode())
    assert catalog._write_index([index_entry(m) for m in manifests], None)
    store.calls.clear()
    return catalog, store


def what_the_newest_needs(catalog: Catalog, store: CallCountingStore, runs: int) -> list[tuple[str, int]]:
    """Per command, the manifests read and the store calls made: status's and a dry run's look,
    show/restore/verify's `latest` and a unique prefix."""
    newest_good = hourly(runs)[-2]  # the newest failed
    said = []
    for name, command in (("look", catalog.look),
                          ("latest", lambda: catalog.load(catalog.resolve("latest"))),
                          ("prefix", lambda: catalog.load(catalog.resolve(newest_good[:6])))):
        store.calls.clear()
        command()
        said.append((name, len(store.manifests_read()), len(store.calls)))
    return said


def test_status_latest_and_a_prefix_read_as_much_of_200_runs_as_of_20(tmp_path: Path) -> None:
    small = what_the_newest_needs(*catalog_of(tmp_path / "small", 20), 20)
    large = what_the_newest_needs(*catalog_of(tmp_path / "large", 200), 200)

    assert large == small
    # The newest good run's manifest, read to confirm its index line: no other, whatever the size.
    assert [manifests for _, manifests, _ in large] == [1, 2, 2]  # latest and a prefix: resolved, then loaded


def provider_with_snapshots_of(tmp_path: Path, run_ids: list[str]):
    """A local provider whose store holds the snapshot each of ``run_ids``' manifests names (a prune
    counts a run it keeps only when the provider lists every snapshot the run's manifest names)."""
    provider = create_provider({"type": "local", "store": str(tmp_path / "snapshots")}, cluster="prod",
                               base_dir=tmp_path)
    data = tmp_path / "volume"
    data.mkdir()
    (data / "db").write_text("data\n")
    volumes = provider.validate_volumes("n1", [{"name": "data", "path": str(data)}], base_dir=tmp_path)
    for run_id in run_ids:
        provider.wait(provider.snapshot(volumes, snapshot_tags("prod", run_id, "n1")), deadline=float("inf"))
    return provider


def pruning_200_runs(tmp_path: Path):
    """A catalog of 200 runs, its counting store, a local provider, and the plan of a prune that keeps 5."""
    catalog, store = catalog_of(tmp_path / "catalog", 200)
    provider = provider_with_snapshots_of(tmp_path, hourly(200)[194:199])
    planned = plan(catalog, provider, Retention(keep_last=5, daily=0, weekly=0, monthly=0), 60.0)
    assert len(planned.deleted) == 194
    return catalog, store, provider, planned


def test_a_prune_of_200_runs_writes_the_index_twice_not_twice_for_each_run_it_deletes(tmp_path: Path) -> None:
    catalog, store, provider, planned = pruning_200_runs(tmp_path)

    store.calls.clear()
    done = apply(planned, catalog, provider, lambda: None, 60.0)

    assert len(done.deleted) == 194 and not done.unfinished
    assert store.index_writes() == 2  # the marks' lines, then the deleted runs'
    kept = ["r00198", "r00197", "r00196", "r00195", "r00194"]
    assert [e.run_id for e in catalog.list()[0]] == ["r00199", *kept]  # the newest failed one stays too
    assert [e.run_id for e in Catalog(LocalBlobStore(tmp_path / "catalog"), "prod")._read_index()[0]] == [
        "r00199", *kept], "the index holds no line of a deleted run"


def test_a_prune_lists_the_restores_and_drills_once_to_plan_and_once_to_mark_not_for_each_run(tmp_path: Path) -> None:
    catalog, store, provider, planned = pruning_200_runs(tmp_path)

    assert sorted(records_listed(store)) == ["prod/drills/", "prod/restores/"]

    store.calls.clear()
    apply(planned, catalog, provider, lambda: None, 60.0)

    # Once before the marks, then for each run after its mark, before its deletion: a restore that
    # began meanwhile read the run as it was before the mark, and is on record by now.
    listed = records_listed(store)
    assert sorted(listed[:2]) == ["prod/drills/", "prod/restores/"] and len(listed) == 2 + 2 * 194


def records_listed(store: CallCountingStore) -> list[str]:
    return [prefix for method, prefix in store.calls if method == "list" and ("/restores/" in prefix
                                                                              or "/drills/" in prefix)]


def test_a_prune_stopped_while_marking_leaves_the_index_as_the_manifests_say(tmp_path: Path) -> None:
    catalog, store = catalog_of(tmp_path / "catalog", 40)
    provider = provider_with_snapshots_of(tmp_path, hourly(40)[34:39])
    planned = plan(catalog, provider, Retention(keep_last=5, daily=0, weekly=0, monthly=0), 60.0)
    checks = []

    def stopped_at_the_tenth_mark() -> None:
        checks.append(1)
        if len(checks) == 10:
            raise Interrupted("prune")

    with pytest.raises(Interrupted):
        apply(planned, catalog, provider, stopped_at_the_tenth_mark, 60.0)

    # The nine it marked are unmarked again, in their manifests and their index lines alike.
    fresh = Catalog(LocalBlobStore(tmp_path / "catalog"), "prod")
    assert {e.status for e in fresh._read_index()[0]} == {"succeeded", "failed"}
    assert {fresh.load(run_id).status for run_id in hourly(40)} == {"succeeded", "failed"}


def test_lines_held_are_written_once_at_the_end_of_the_block_and_on_the_way_out_of_an_error(
        tmp_path: Path) -> None:
    catalog, store = catalog_of(tmp_path / "catalog", 3)

    def failed(manifest) -> bool:
        manifest.status = "failed"
        return True

    with catalog.lines_held():
        catalog.update("r00000", failed)
        catalog.delete("r00001")
        with catalog.lines_held():  # nested: the outer block writes
            catalog.update("r00002", failed)
        assert store.index_writes() == 0
    assert store.index_writes() == 1
    assert [(e.run_id, e.status) for e in catalog._read_index()[0]] == [("r00002", "failed"), ("r00000", "failed")]

    catalog.save(make_manifest("r00003", minutes=180))
    store.calls.clear()
    with pytest.raises(KeyboardInterrupt), catalog.lines_held():
        catalog.update("r00003", failed)
        raise KeyboardInterrupt
    assert store.index_writes() == 1 and catalog._read_index()[0][0].status == "failed"


def test_lines_held_longer_than_held_lines_s_are_written_with_the_next_line(tmp_path: Path) -> None:
    # A prune killed while it marked left every marked run "succeeded" in the index, listed as
    # restorable, until the next prune: what a block holds is bounded in time.
    catalog, store = catalog_of(tmp_path / "catalog", 3)
    catalog.held_lines_s = 0.0

    def failed(manifest) -> bool:
        manifest.status = "failed"
        return True

    with catalog.lines_held():
        catalog.update("r00000", failed)
        assert catalog._read_index()[0][-1].status == "failed" and store.index_writes() == 1
        catalog.update("r00001", failed)
        assert store.index_writes() == 2
    assert store.index_writes() == 2, "nothing left to write at the end"


def test_a_line_another_thread_saves_while_a_block_holds_lines_is_written_at_once(tmp_path: Path) -> None:
    # A backup's retention prunes in a thread of its own, beside the backup's own saves.
    import threading

    catalog, store = catalog_of(tmp_path / "catalog", 2)
    with catalog.lines_held():
        catalog.delete("r00000")
        saver = threading.Thread(target=catalog.save, args=(make_manifest("r00002", minutes=120),))
        saver.start()
        saver.join()
        assert [e.run_id for e in catalog._read_index()[0]] == ["r00002", "r00001", "r00000"]
    assert [e.run_id for e in catalog._read_index()[0]] == ["r00002", "r00001"]


class WalkCountingList(list):
    """A list that counts how often it is walked from the start."""

    walks = 0

    def __iter__(self):
        self.walks += 1
        return super().__iter__()


def test_list_asks_once_whether_any_run_has_an_error_not_again_for_every_row() -> None:
    import io

    from rich.console import Console

    from snapctl.render import Renderer

    entries = WalkCountingList(index_entry(make_manifest(f"r{i:05d}", minutes=60 * i)) for i in range(199, 0, -1))
    entries.append(index_entry(make_manifest("r00000", status="failed")).model_copy(update={"error": "n2 unreachable"}))
    renderer = Renderer()
    renderer.out = Console(file=io.StringIO(), width=400, highlight=False)

    renderer.run_list(entries, [])

    assert entries.walks <= 3  # whether any has an error, the rows; not a walk per row, 200 times 200 steps
    rows = renderer.out.file.getvalue().splitlines()
    assert "error" in rows[2] and rows[-2].split()[:2] == ["r00000", "failed"] and "n2 unreachable" in rows[-2]


def test_list_shows_the_newest_100_runs_and_says_how_many_older_ones_it_left_out(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    import yaml

    catalog_of(tmp_path / "catalog", 150)
    (tmp_path / "inv.yaml").write_text(yaml.safe_dump({
        "cluster": "prod", "provider": {"type": "local", "store": "snapshots"}, "catalog": {"path": "catalog"},
        "nodes": [{"name": "n1", "agent": "http://127.0.0.1:1"}]}))

    def snapctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "snapctl.cli", "list", "-i", "inv.yaml", *args], cwd=tmp_path,
                              capture_output=True, text=True, check=False, timeout=60)

    def rows(out: str) -> list[str]:
        return [line.split()[0] for line in out.splitlines() if line.strip().startswith("r0")]

    shown = snapctl()
    assert shown.returncode == 0 and rows(shown.stdout) == hourly(150)[:49:-1]
    assert shown.stdout.rstrip().endswith("50 older runs not shown: --limit 0 lists every run")
    assert rows(snapctl("--limit", "0").stdout) == hourly(150)[::-1]
    every = json.loads(snapctl("-o", "json").stdout)["data"]
    assert len(every["runs"]) == 150 and every["older"] == 0  # a script gets every run
    cut = json.loads(snapctl("-o", "json", "--limit", "2").stdout)["data"]
    assert [r["run_id"] for r in cut["runs"]] == ["r00149", "r00148"] and cut["older"] == 148
    refused = snapctl("--limit", "-1")
    assert refused.returncode == 2 and "--limit -1: give a number of runs, or 0 for every run" in refused.stderr
