"""The S3 blob store against moto's server over real HTTP: the BlobStore contract, the catalog and
its run lock on S3, races between hosts (threads with their own clients), and the errors."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapctl.catalog import Catalog, open_catalog
from snapctl.catalog.s3 import S3BlobStore, parse_s3_url
from snapctl.config import parse_inventory
from snapctl.errors import BadInputError, CatalogError, LockHeld
from tests.moto_server import DEFAULT_REGION, MotoServer
from tests.retention.s3_helpers import BUCKET, s3_bucket, s3_client

from .conftest import FakeClock, make_manifest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    with s3_bucket() as server:
        yield server


def _store(moto: MotoServer, url: str = f"s3://{BUCKET}/team/catalog") -> S3BlobStore:
    return S3BlobStore(url, endpoint_url=moto.endpoint_url, region=DEFAULT_REGION)


@pytest.fixture
def store(moto: MotoServer) -> S3BlobStore:
    return _store(moto)


def test_read_write_delete_roundtrip_under_the_prefix(store: S3BlobStore, moto: MotoServer) -> None:
    assert store.read("prod/index.json") is None
    store.write("prod/index.json", b"[1]")
    store.write("prod/index.json", b"[2]")
    assert store.read("prod/index.json") == b"[2]"
    raw = s3_client(moto).get_object(Bucket=BUCKET, Key="team/catalog/prod/index.json")["Body"].read()
    assert raw == b"[2]"
    store.delete("prod/index.json")
    store.delete("prod/index.json")  # a missing key is fine
    assert store.read("prod/index.json") is None


def test_create_only_once(store: S3BlobStore) -> None:
    assert store.create("prod/lock.json", b"first") is True
    assert store.create("prod/lock.json", b"second") is False
    assert store.read("prod/lock.json") == b"first"


def test_create_of_exactly_the_bytes_already_there_counts_as_ours(store: S3BlobStore) -> None:
    # What a retried PUT whose first answer was lost sees: 412, yet the object is its own write.
    assert store.create("prod/lock.json", b"mine") is True
    assert store.create("prod/lock.json", b"mine") is True


def test_replace_compares_content(store: S3BlobStore) -> None:
    assert store.replace("prod/lock.json", b"new", expected=b"old") is False  # missing key
    store.write("prod/lock.json", b"old")
    assert store.replace("prod/lock.json", b"new", expected=b"stale") is False
    assert store.read("prod/lock.json") == b"old"
    assert store.replace("prod/lock.json", b"new", expected=b"old") is True
    assert store.read("prod/lock.json") == b"new"


def test_list_is_sorted_relative_and_scoped(moto: MotoServer, store: S3BlobStore) -> None:
    for key in ("prod/manifests/b.json", "prod/manifests/a.json", "prod/index.json", "prod-eu/manifests/c.json"):
        store.write(key, b"{}")
    _store(moto, f"s3://{BUCKET}/other").write("prod/manifests/z.json", b"{}")
    assert store.list("prod/manifests/") == ["prod/manifests/a.json", "prod/manifests/b.json"]
    assert store.list("prod/") == ["prod/index.json", "prod/manifests/a.json", "prod/manifests/b.json"]
    assert store.describe() == f"s3://{BUCKET}/team/catalog"


@pytest.mark.parametrize("key", ["", "a//b", "../x", "prod/./x", "prod/.lock"])
def test_invalid_keys_are_refused(store: S3BlobStore, key: str) -> None:
    with pytest.raises(BadInputError, match="invalid catalog key"):
        store.write(key, b"x")


@pytest.mark.parametrize(("url", "bucket", "prefix"), [
    ("s3://b1", "b1", ""), ("s3://b1/", "b1", ""), ("s3://b1/a/b/", "b1", "a/b"),
])
def test_parse_s3_url(url: str, bucket: str, prefix: str) -> None:
    assert parse_s3_url(url) == (bucket, prefix)


@pytest.mark.parametrize("url", ["s3:///x", "http://b1/x", "s3://b1/a//b", "s3://b1/../x"])
def test_bad_s3_urls_are_refused(url: str) -> None:
    with pytest.raises(BadInputError):
        parse_s3_url(url)


def test_the_catalog_works_the_same_on_s3(store: S3BlobStore) -> None:
    catalog = Catalog(store, "prod")
    catalog.save(make_manifest("r-old", minutes=0))
    catalog.save(make_manifest("r-new", minutes=10, status="failed"))
    entries, problems = catalog.list()
    assert [e.run_id for e in entries] == ["r-new", "r-old"] and problems == []
    assert catalog.latest().run_id == "r-old"
    assert catalog.load("r-new").status == "failed"
    catalog.delete("r-old")
    assert [e.run_id for e in catalog.list()[0]] == ["r-new"]


def test_open_catalog_reads_url_endpoint_and_region(moto: MotoServer, tmp_path: Path) -> None:
    text = (f"cluster: prod\nprovider: {{type: local}}\ncatalog: {{url: 's3://{BUCKET}/x', "
            f"endpoint_url: '{moto.endpoint_url}', region: {DEFAULT_REGION}}}\n"
            "nodes: [{name: n1, agent: 'http://127.0.0.1:1'}]\n")
    catalog = open_catalog(parse_inventory(text, base_dir=tmp_path))
    assert isinstance(catalog.store, S3BlobStore)
    assert catalog.describe() == f"s3://{BUCKET}/x (cluster prod)"
    catalog.save(make_manifest("r1"))
    assert s3_client(moto).get_object(Bucket=BUCKET, Key="x/prod/manifests/r1.json")["Body"].read()


def test_lock_held_expired_and_taken_over_on_s3(store: S3BlobStore, clock: FakeClock) -> None:
    host_a = Catalog(store, "prod", clock=clock)
    host_b = Catalog(S3BlobStore(f"s3://{BUCKET}/team/catalog", client=store._client), "prod", clock=clock)
    lock = host_a.acquire_lock("ops@host-a:1", "r1", ttl_s=60)
    with pytest.raises(LockHeld) as held:
        host_b.acquire_lock("ops@host-b:2", "r2", ttl_s=60)
    assert "ops@host-a:1" in held.value.message and "run r1" in held.value.message
    assert f"s3://{BUCKET}/team/catalog/prod/lock.json" in held.value.hint
    clock.advance(61)
    taken = host_b.acquire_lock("ops@host-b:2", "r2", ttl_s=60)
    with pytest.raises(LockHeld, match="now held by ops@host-b:2"):
        lock.renew()  # the old holder can neither renew...
    assert lock.release() is False  # ... nor release the new holder's lock
    taken.renew()
    assert taken.release() is True
    assert host_a.acquire_lock("ops@host-a:1", "r3", ttl_s=60).run_id == "r3"


def _race(n: int, work) -> list:
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except Exception as exc:  # noqa: BLE001 - collected for the assertions
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_racing_hosts_exactly_one_creates(moto: MotoServer) -> None:
    stores = [_store(moto) for _ in range(6)]  # one client each, like separate hosts
    for trial in range(20):
        results = _race(6, lambda i, trial=trial: stores[i].create(f"race/{trial}", f"host-{i}".encode()))
        assert results.count(True) == 1, results
        winner = results.index(True)
        assert stores[0].read(f"race/{trial}") == f"host-{winner}".encode()


def test_racing_hosts_exactly_one_takes_the_lock(moto: MotoServer) -> None:
    catalogs = [Catalog(_store(moto), "prod") for _ in range(6)]
    results = _race(6, lambda i: catalogs[i].acquire_lock(f"ops@host-{i}:1", f"r{i}", ttl_s=60))
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    assert all(isinstance(r, LockHeld) for r in results if r is not winners[0])
    assert catalogs[0].read_lock().owner == winners[0].owner


def test_racing_takeovers_of_an_expired_lock_have_one_winner(moto: MotoServer, clock: FakeClock) -> None:
    Catalog(_store(moto), "prod", clock=clock).acquire_lock("dead@host:1", "r0", ttl_s=60)
    clock.advance(120)
    catalogs = [Catalog(_store(moto), "prod", clock=clock) for _ in range(6)]
    results = _race(6, lambda i: catalogs[i].acquire_lock(f"ops@host-{i}:1", f"r{i + 1}", ttl_s=60))
    winners = [r for r in results if not isinstance(r, Exception)]
    assert len(winners) == 1, results
    # Each loser is told who won, as a held lock says it: an S3 error is no loss of the race.
    held = f"cluster prod is locked by {winners[0].owner} (run {winners[0].run_id})"
    assert all(isinstance(r, LockHeld) and str(r).startswith(held) for r in results if r is not winners[0]), results
    assert (catalogs[0].read_lock().owner, catalogs[0].read_lock().run_id) == (winners[0].owner, winners[0].run_id)


def test_racing_index_updates_lose_no_run(moto: MotoServer) -> None:
    catalogs = [Catalog(_store(moto), "prod") for _ in range(5)]
    _race(5, lambda i: catalogs[i].save(make_manifest(f"r{i}", minutes=i)))
    stored = catalogs[0]._read_index()[0]
    assert sorted(e.run_id for e in stored) == [f"r{i}" for i in range(5)]


def test_racing_updates_of_one_manifest_lose_no_change(moto: MotoServer) -> None:
    # A drill's summary and a backup's retention outcome, written onto one run's manifest from two
    # hosts at once: each change is made on the manifest as the other left it.
    Catalog(_store(moto), "prod").save(make_manifest("r0"))
    catalogs = [Catalog(_store(moto), "prod") for _ in range(5)]

    def note(i: int):
        def change(manifest):
            manifest.extra[f"host-{i}"] = i
            return True
        return catalogs[i].update("r0", change)

    _race(5, note)
    assert {k: v for k, v in catalogs[0].load("r0").extra.items() if k.startswith("host-")} == {
        f"host-{i}": i for i in range(5)}
    assert catalogs[0].update("gone", lambda manifest: True) is None


def test_missing_bucket_is_named_with_a_hint(moto: MotoServer) -> None:
    store = _store(moto, "s3://no-such-bucket/x")
    with pytest.raises(CatalogError, match="bucket no-such-bucket does not exist") as info:
        store.read("prod/index.json")
    assert "catalog.url" in info.value.hint


def test_missing_credentials_say_where_to_set_them(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CatalogError, match="no AWS credentials") as info:
        _store(moto).read("prod/index.json")
    assert "AWS_PROFILE" in info.value.hint


def test_unreachable_endpoint_is_a_catalog_error() -> None:
    import boto3
    from botocore.config import Config

    from tests.conftest import free_port

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}", region_name=DEFAULT_REGION,
                          config=Config(retries={"total_max_attempts": 1}), aws_access_key_id="testing",
                          aws_secret_access_key="testing")
    store = S3BlobStore(f"s3://{BUCKET}/x", client=client)
    with pytest.raises(CatalogError, match=f"cannot read s3://{BUCKET}/x/prod/index.json") as info:
        store.read("prod/index.json")
    assert "endpoint_url" in info.value.hint


def test_without_boto3_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(BadInputError, match="needs boto3") as info:
        S3BlobStore(f"s3://{BUCKET}/x")
    assert "snapctl[s3]" in info.value.hint


def test_the_cli_core_never_imports_boto3() -> None:
    code = ("import sys, snapctl.cli, snapctl.catalog, snapctl.catalog.s3, snapctl.prune, snapctl.retention, "
            "snapctl.render.retention; assert 'boto3' not in sys.modules and 'botocore' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def _requests(store: S3BlobStore) -> list[str]:
    """Every request the store's client sends from now on, as its HTTP method."""
    sent: list[str] = []
    store._client.meta.events.register("before-send.s3", lambda request, **_: sent.append(request.method))
    return sent


def test_an_update_reads_the_manifest_and_the_index_once_each_not_twice(store: S3BlobStore) -> None:
    catalog = Catalog(store, "prod")
    catalog.save(make_manifest("r0"))
    sent = _requests(store)

    catalog.update("r0", lambda manifest: manifest.extra.update(note=1) is None)

    # Its read, its swap (If-Match: the ETag of that read), the index's read, the index's swap.
    assert sent == ["GET", "PUT", "GET", "PUT"]
    assert catalog.load("r0").extra == {"note": 1}


def test_a_swap_on_an_etag_seen_before_another_host_wrote_fails_and_writes_nothing(moto: MotoServer) -> None:
    ours, theirs = _store(moto), _store(moto)
    ours.write("prod/lock.json", b"old")
    assert ours.read("prod/lock.json") == b"old"
    theirs.write("prod/lock.json", b"theirs")

    assert ours.replace("prod/lock.json", b"new", expected=b"old") is False
    assert theirs.read("prod/lock.json") == b"theirs"
    assert ours.replace("prod/lock.json", b"new", expected=b"theirs") is True  # read again on the way
    assert theirs.read("prod/lock.json") == b"new"
