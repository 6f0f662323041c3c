"""Catalog: manifests, the index and its repair, listing with problems, resolving run refs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapctl import __version__
from snapctl.catalog import Catalog, LocalBlobStore, open_catalog
from snapctl.config import Retention, parse_inventory
from snapctl.errors import BadInputError, CatalogError
from snapctl.prune_plan import plan

from .conftest import FakeClock, make_manifest


def _ids(catalog: Catalog) -> list[str]:
    entries, problems = catalog.list()
    assert problems == []
    return [e.run_id for e in entries]


def test_save_then_load_roundtrip(catalog: Catalog) -> None:
    manifest = make_manifest("20240501T120000Z-aaaaaa")
    catalog.save(manifest)
    assert catalog.load("20240501T120000Z-aaaaaa") == manifest
    raw = catalog.store.read("prod/manifests/20240501T120000Z-aaaaaa.json")
    assert json.loads(raw)["run_id"] == "20240501T120000Z-aaaaaa"


def test_index_lists_newest_first_and_follows_status(catalog: Catalog) -> None:
    catalog.save(make_manifest("r-old", minutes=0))
    catalog.save(make_manifest("r-new", minutes=10, status="running"))
    catalog.save(make_manifest("r-mid", minutes=5, status="failed"))
    assert _ids(catalog) == ["r-new", "r-mid", "r-old"]
    catalog.save(make_manifest("r-new", minutes=10, status="succeeded"))
    entries, _ = catalog.list()
    assert [(e.run_id, e.status) for e in entries] == [("r-new", "succeeded"), ("r-mid", "failed"), ("r-old", "succeeded")]
    assert entries[0].nodes == 1 and entries[0].snapshots == 1
    stored = json.loads(catalog.store.read("prod/index.json"))
    assert [e["run_id"] for e in stored] == ["r-new", "r-mid", "r-old"]


def test_save_refuses_a_manifest_of_another_cluster(catalog: Catalog) -> None:
    with pytest.raises(CatalogError, match="cluster staging"):
        catalog.save(make_manifest("r1", cluster="staging"))


def test_corrupt_manifest_is_reported_and_the_rest_listed(catalog: Catalog) -> None:
    catalog.save(make_manifest("r1", minutes=1))
    catalog.save(make_manifest("r3", minutes=3))
    catalog.store.write("prod/manifests/r2.json", b'{"cluster": "prod", "run_')
    catalog.store.write("prod/manifests/r4.json", b'{"cluster": "prod"}')
    entries, problems = catalog.list()
    assert [e.run_id for e in entries] == ["r3", "r1"]
    assert problems[0] == "run r2: not valid JSON"
    assert problems[1] == "run r4: missing field run_id"
    with pytest.raises(CatalogError, match="run r2: manifest is unreadable"):
        catalog.load("r2")


def test_missing_index_is_rebuilt_from_manifests(catalog: Catalog) -> None:
    for i in range(3):
        catalog.save(make_manifest(f"r{i}", minutes=i))
    catalog.store.delete("prod/index.json")
    assert _ids(catalog) == ["r2", "r1", "r0"]
    assert [e["run_id"] for e in json.loads(catalog.store.read("prod/index.json"))] == ["r2", "r1", "r0"]


def test_corrupt_index_is_rebuilt_on_save(catalog: Catalog) -> None:
    catalog.save(make_manifest("r0", minutes=0))
    catalog.store.write("prod/index.json", b"{ not json")
    catalog.save(make_manifest("r1", minutes=1))
    assert [e["run_id"] for e in json.loads(catalog.store.read("prod/index.json"))] == ["r1", "r0"]


def test_index_missing_a_manifest_is_repaired(catalog: Catalog) -> None:
    catalog.save(make_manifest("r0", minutes=0))
    # A manifest written by a run that crashed before its index update.
    catalog.store.write("prod/manifests/r1.json", make_manifest("r1", minutes=1).model_dump_json().encode())
    assert _ids(catalog) == ["r1", "r0"]
    assert [e["run_id"] for e in json.loads(catalog.store.read("prod/index.json"))] == ["r1", "r0"]


def test_delete_forgets_the_run(catalog: Catalog) -> None:
    catalog.save(make_manifest("r0", minutes=0))
    catalog.save(make_manifest("r1", minutes=1))
    catalog.delete("r1")
    catalog.delete("r1")
    assert _ids(catalog) == ["r0"]
    with pytest.raises(BadInputError, match="no run r1"):
        catalog.load("r1")


def test_resolve_full_id_prefix_and_latest(catalog: Catalog, clock: FakeClock) -> None:
    catalog.save(make_manifest("20240501T120000Z-aaaaaa", minutes=0))
    catalog.save(make_manifest("20240501T130000Z-bbbbbb", minutes=60))
    catalog.save(make_manifest("20240501T140000Z-cccccc", minutes=120, status="failed"))
    clock.advance(3 * 3600)  # after them: `latest` passes over a run that started in the future by its clock
    assert catalog.resolve("20240501T120000Z-aaaaaa") == "20240501T120000Z-aaaaaa"
    assert catalog.resolve("20240501T13") == "20240501T130000Z-bbbbbb"
    assert catalog.resolve("latest") == "20240501T130000Z-bbbbbb"
    assert catalog.latest().run_id == "20240501T130000Z-bbbbbb"
    assert catalog.latest(status=None).run_id == "20240501T140000Z-cccccc"
    assert catalog.latest(status="failed").run_id == "20240501T140000Z-cccccc"


def test_resolve_ambiguous_prefix_lists_candidates(catalog: Catalog) -> None:
    catalog.save(make_manifest("20240501T120000Z-aaaaaa", minutes=0))
    catalog.save(make_manifest("20240501T130000Z-bbbbbb", minutes=60))
    with pytest.raises(BadInputError) as info:
        catalog.resolve("20240501T1")
    assert "matches 2 runs" in info.value.message
    assert "20240501T120000Z-aaaaaa" in info.value.message and "20240501T130000Z-bbbbbb" in info.value.message


def test_resolve_unknown_and_latest_without_success(catalog: Catalog) -> None:
    with pytest.raises(BadInputError, match="no succeeded backup"):
        catalog.resolve("latest")
    catalog.save(make_manifest("r-failed", status="failed"))
    with pytest.raises(BadInputError, match="no succeeded backup"):
        catalog.resolve("latest")
    with pytest.raises(BadInputError, match="no run of cluster prod matches 'zzz'"):
        catalog.resolve("zzz")


def test_resolve_finds_a_corrupt_run_so_load_can_say_why(catalog: Catalog) -> None:
    catalog.store.write("prod/manifests/r-broken.json", b"garbage")
    assert catalog.resolve("r-bro") == "r-broken"
    with pytest.raises(CatalogError, match="not valid JSON"):
        catalog.load("r-broken")


def test_run_ids_cannot_escape_the_catalog(catalog: Catalog) -> None:
    with pytest.raises(BadInputError, match="not a run id"):
        catalog.load("../../etc/passwd")


def test_open_catalog_resolves_path_against_the_inventory(tmp_path: Path) -> None:
    text = "cluster: prod\nprovider: {type: local}\ncatalog: {path: cat}\nnodes: [{name: n1, agent: 'http://127.0.0.1:1'}]\n"
    catalog = open_catalog(parse_inventory(text, base_dir=tmp_path))
    assert isinstance(catalog.store, LocalBlobStore)
    assert catalog.store.root == tmp_path / "cat"
    assert catalog.cluster == "prod"


def test_open_catalog_defaults_under_xdg_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    text = "cluster: prod\nprovider: {type: local}\nnodes: [{name: n1, agent: 'http://127.0.0.1:1'}]\n"
    catalog = open_catalog(parse_inventory(text, base_dir=tmp_path))
    assert catalog.store.root == tmp_path / "state" / "snapctl" / "catalog"


def test_listing_an_empty_catalog_writes_nothing(catalog: Catalog) -> None:
    assert catalog.list() == ([], [])
    assert catalog.latest() is None
    assert not catalog.store.root.exists()


def test_other_clusters_runs_are_not_listed(store: LocalBlobStore, catalog: Catalog) -> None:
    catalog.save(make_manifest("r1"))
    Catalog(store, "staging").save(make_manifest("s1", cluster="staging"))
    Catalog(store, "prod-eu").save(make_manifest("e1", cluster="prod-eu"))
    assert _ids(catalog) == ["r1"]


def test_read_only_catalog_still_lists(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog.save(make_manifest("r0"))
    catalog.store.delete("prod/index.json")

    def refuse(*args, **kwargs):
        raise CatalogError("cannot write: read-only file system")

    monkeypatch.setattr(catalog.store, "create", refuse)
    monkeypatch.setattr(catalog.store, "replace", refuse)
    assert _ids(catalog) == ["r0"]


class CountingStore(LocalBlobStore):
    """The real store, counting the manifests read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.manifest_reads: list[str] = []

    def read(self, key: str) -> bytes | None:
        if "/manifests/" in key:
            self.manifest_reads.append(key.rsplit("/", 1)[1].removesuffix(".json"))
        return super().read(key)


def _damage(catalog: Catalog, run_id: str) -> None:
    """Bit rot, a bad edit, a partial copy: the manifest's first bytes only; its index line intact."""
    key = f"prod/manifests/{run_id}.json"
    catalog.store.write(key, catalog.store.read(key)[:200])


def test_a_damaged_newest_manifest_behind_an_intact_index_line_is_never_latest(catalog: Catalog) -> None:
    for i in range(3):
        catalog.save(make_manifest(f"r{i}", minutes=i))
    _damage(catalog, "r2")

    entries, problems = catalog.list()

    assert [e.run_id for e in entries] == ["r1", "r0"]
    assert problems == ["run r2: not valid JSON"]
    assert catalog.resolve("latest") == "r1" and catalog.latest().run_id == "r1"
    # From then on the index no longer vouches for it: every later listing reports it too.
    assert [e["run_id"] for e in json.loads(catalog.store.read("prod/index.json"))] == ["r1", "r0"]
    assert catalog.list()[1] == ["run r2: not valid JSON"]


def test_latest_with_only_a_damaged_succeeded_manifest_says_so_not_that_there_is_none(catalog: Catalog) -> None:
    # It said "no succeeded backup ... yet": there is one, whose manifest cannot be read.
    catalog.save(make_manifest("r0", minutes=0))
    _damage(catalog, "r0")
    with pytest.raises(BadInputError, match=r"no readable succeeded backup of cluster prod: the manifests of "
                                            r"r0 \(not valid JSON\) cannot be read"):
        catalog.resolve("latest")


def test_a_damaged_manifest_that_is_no_longer_the_newest_good_one_is_passed_over_too(catalog: Catalog) -> None:
    catalog.save(make_manifest("r0", minutes=0))
    catalog.save(make_manifest("r1", minutes=1))
    catalog.save(make_manifest("r2", minutes=2, status="failed"))
    catalog.store.write("prod/manifests/r1.json", json.dumps({"cluster": "prod"}).encode())
    assert catalog.resolve("latest") == "r0"
    entries, problems = catalog.list()
    assert [e.run_id for e in entries] == ["r2", "r0"] and problems == ["run r1: missing field run_id"]


def test_listing_reads_only_the_newest_good_manifest_not_every_one(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "catalog")
    catalog = Catalog(store, "prod")
    for i in range(5):
        catalog.save(make_manifest(f"r{i}", minutes=i))
    catalog.save(make_manifest("r5", minutes=5, status="failed"))
    store.manifest_reads.clear()

    catalog.list()
    catalog.resolve("latest")

    assert store.manifest_reads == ["r4", "r4"]


def test_retention_reads_each_manifest_it_keeps_once(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "catalog")
    catalog = Catalog(store, "prod")
    for i in range(3):
        catalog.save(make_manifest(f"r{i}", minutes=i))
    store.manifest_reads.clear()

    planned = plan(catalog, None, Retention(keep_last=5), 60.0)  # type: ignore[arg-type]  # nothing to delete: no provider call

    assert [v.run_id for v in planned.kept] == ["r2", "r1", "r0"] and planned.deleted == []
    assert sorted(store.manifest_reads) == ["r0", "r1", "r2"]  # once each: listing left the newest to plan


def test_a_manifest_from_a_newer_snapctl_says_so_and_is_not_taken_for_damage_or_a_backup(catalog: Catalog) -> None:
    catalog.save(make_manifest("r0", minutes=0))
    catalog.save(make_manifest("r1", minutes=1))
    newer = json.loads(catalog.store.read("prod/manifests/r1.json"))
    newer["snapctl_version"], newer["encryption"] = "9.0.0", {"key_id": "k"}
    newer["nodes"]["n1"]["restore_order"] = 2
    catalog.store.write("prod/manifests/r1.json", json.dumps(newer).encode())

    _, problems = catalog.list()

    said = (f"run r1: written by snapctl 9.0.0, with fields this snapctl ({__version__}) does not know "
            "(encryption, nodes.n1.restore_order): upgrade snapctl on this host to read it")
    assert problems == [said]
    assert catalog.resolve("latest") == "r0"  # what this snapctl can read in full
    assert json.loads(catalog.store.read("prod/manifests/r1.json")) == newer  # left as it was


def test_a_manifest_with_a_field_added_by_hand_is_damaged_not_from_a_newer_snapctl(catalog: Catalog) -> None:
    catalog.save(make_manifest("r0", minutes=0))
    edited = json.loads(catalog.store.read("prod/manifests/r0.json"))
    edited["note"] = "checked by hand"  # its snapctl_version is this one's: no newer snapctl wrote that
    catalog.store.write("prod/manifests/r0.json", json.dumps(edited).encode())

    assert catalog.list()[1] == ["run r0: note: extra inputs are not permitted"]


def test_confirm_reads_each_manifest_and_drops_a_damaged_one_from_the_index(catalog: Catalog) -> None:
    for i in range(3):
        catalog.save(make_manifest(f"r{i}", minutes=i))
    _damage(catalog, "r0")

    current, problems = catalog.confirm(["r0", "r1"])

    assert list(current) == ["r1"] and current["r1"].status == "succeeded"
    assert problems == {"r0": "not valid JSON"}
    assert [e["run_id"] for e in json.loads(catalog.store.read("prod/index.json"))] == ["r2", "r1"]
    assert catalog.list()[1] == ["run r0: not valid JSON"]


@pytest.mark.parametrize("ended", ["succeeded", "failed"])
def test_an_index_line_left_running_catches_up_with_its_manifest(catalog: Catalog, ended: str) -> None:
    catalog.save(make_manifest("r0", minutes=0))
    catalog.save(make_manifest("r1", minutes=1, status="running"))
    # The run ended and wrote its manifest, then died before its index line said so.
    catalog.store.write("prod/manifests/r1.json", make_manifest("r1", minutes=1, status=ended).model_dump_json().encode())

    entries, problems = catalog.list()

    assert [(e.run_id, e.status) for e in entries] == [("r1", ended), ("r0", "succeeded")] and problems == []
    assert [e["status"] for e in json.loads(catalog.store.read("prod/index.json"))] == [ended, "succeeded"]
    assert catalog.resolve("latest") == ("r1" if ended == "succeeded" else "r0")


def test_unfinished_reads_only_the_runs_marked_running_and_returns_those_still_running(tmp_path: Path) -> None:
    # What a backup asks before its preflight, with the lock held: the newest good backup's manifest
    # (a megabyte at 1000 nodes) is no part of the answer, so it is not read.
    store = CountingStore(tmp_path / "catalog")
    catalog = Catalog(store, "prod")
    for i in range(3):
        catalog.save(make_manifest(f"r{i}", minutes=i))
    catalog.save(make_manifest("dead", minutes=3, status="running"))
    catalog.save(make_manifest("ended", minutes=4, status="running"))
    # This one ended and wrote its manifest, then died before its index line said so.
    store.write("prod/manifests/ended.json", make_manifest("ended", minutes=4, status="failed").model_dump_json().encode())
    store.manifest_reads.clear()

    unfinished = catalog.unfinished()

    assert [e.run_id for e in unfinished] == ["dead"]
    assert sorted(store.manifest_reads) == ["dead", "ended"]
    assert [e["status"] for e in json.loads(store.read("prod/index.json"))][:2] == ["failed", "running"]


def test_no_backup_found_names_the_catalog_it_looked_in(tmp_path: Path) -> None:
    """The default catalog is per user (~/.local/state): a restore run as another user than the
    cron backups, or with a mistyped catalog.path, was told "no succeeded backup ... yet"."""
    missing = Catalog(LocalBlobStore(tmp_path / "not-there"), "prod")
    with pytest.raises(BadInputError, match=rf"no succeeded backup of cluster prod in the catalog at "
                                            rf"{tmp_path / 'not-there'}, which does not exist") as caught:
        missing.resolve("latest")
    assert "catalog.path" in caught.value.hint
    with pytest.raises(BadInputError, match=rf"no run of cluster prod matches 'r1' in the catalog at "
                                            rf"{tmp_path / 'not-there'}, which does not exist"):
        missing.resolve("r1")

    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match=rf"no succeeded backup of cluster prod in the catalog at "
                                            rf"{tmp_path / 'empty'} yet"):
        Catalog(LocalBlobStore(tmp_path / "empty"), "prod").resolve("latest")


def test_a_manifest_lost_behind_its_index_line_is_reported_every_time_not_forgotten(catalog: Catalog) -> None:
    """A manifest file gone (a partial copy of the catalog, a hand clean-up) while its line says
    succeeded: the first listing dropped the line without a word, so nothing showed the run had
    been there, and `gc` then took its snapshots, a whole backup, for orphans."""
    catalog.save(make_manifest("r-old", minutes=0))
    catalog.save(make_manifest("r-new", minutes=10))
    catalog.save(make_manifest("r-gone", minutes=5, status="pruning"))
    catalog.store.delete("prod/manifests/r-old.json")
    catalog.store.delete("prod/manifests/r-gone.json")  # a prune killed between its two deletes

    for _ in range(2):  # not only the first listing: the line stays to say so
        entries, problems = catalog.list()
        assert [e.run_id for e in entries] == ["r-new"]
        assert problems == [(f"run r-old: its manifest {catalog.store.describe()}/prod/manifests/r-old.json is "
                            "missing, though the index lists the run as succeeded")]
    assert catalog.runs_without_manifest() == ["r-old"]
    assert [e["run_id"] for e in json.loads(catalog.store.read("prod/index.json"))] == ["r-new", "r-old"]
    # `show` and `restore` said "no run r-old in the catalog", a mistyped id, of the run list names.
    with pytest.raises(CatalogError, match=r"^run r-old: its manifest .*/r-old.json is missing, though the index "
                                           r"lists the run as succeeded") as lost:
        catalog.load(catalog.resolve("r-old"))
    assert "from a copy of the catalog" in lost.value.hint
    with pytest.raises(BadInputError, match="no run r-gone in the catalog"):  # being pruned: gone as asked
        catalog.load("r-gone")

    catalog.store.delete("prod/index.json")  # a rebuild from the manifests forgets it, as documented
    entries, problems = catalog.list()
    assert [e.run_id for e in entries] == ["r-new"] and problems == [] and catalog.runs_without_manifest() == []
