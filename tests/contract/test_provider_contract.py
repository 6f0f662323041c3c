"""The provider contract, run against every ``provider_*_env.py`` beside this file.

What ``snapctl.providers.Provider`` promises, checked the same way for the local filesystem and
every cloud. An env's volumes belong to node ``n1``; snapshots a test makes are deleted after it
(a failed assertion must not leave them behind for the next test to find).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid

import pytest

from snapctl.errors import BadInputError, ExitCode, ProviderError
from snapctl.providers import (
    TAG_CLUSTER,
    TAG_DRILL,
    TAG_NODE,
    TAG_RUN,
    TAG_VOLUME,
    Capabilities,
    Provider,
    ProviderSettings,
    SnapshotRef,
    snapshot_tags,
)
from tests.contract.conftest import ProviderEnv

WAIT_S = 120.0


class Snapshots:
    """Takes snapshots for a test and deletes them all afterwards."""

    def __init__(self, env: ProviderEnv) -> None:
        self.env = env
        self.made: list[SnapshotRef] = []

    def take(self, run: str | None = None, **extra_tags: str) -> tuple[str, dict[str, str], list[SnapshotRef]]:
        run = run or f"contract-{uuid.uuid4().hex[:8]}"
        tags = snapshot_tags(self.env.cluster, run, self.env.volumes.node, extra=extra_tags)
        refs = self.env.provider.snapshot(self.env.volumes, tags)
        self.made.extend(refs)
        return run, tags, refs

    def cleanup(self) -> None:
        for ref in self.made:
            try:
                self.env.provider.delete(ref)
            except ProviderError:
                pass


@pytest.fixture
def env(provider_env: ProviderEnv):
    return provider_env


@pytest.fixture
def snaps(provider_env: ProviderEnv):
    taken = Snapshots(provider_env)
    yield taken
    taken.cleanup()


def _volume_names(env: ProviderEnv) -> list[str]:
    return [getattr(v, "name", None) or str(v) for v in env.volumes.volumes]


def _key(ref: SnapshotRef) -> tuple[str, str, str]:
    return (ref.node, ref.volume, ref.snapshot_id)


def test_provider_has_the_provider_shape(env: ProviderEnv) -> None:
    provider = env.provider
    assert isinstance(provider, Provider)
    assert isinstance(provider.name, str) and provider.name
    assert isinstance(provider.capabilities, Capabilities)
    assert issubclass(type(provider).settings_model, ProviderSettings)
    assert env.volumes.node == "n1" and env.volumes.volumes


def test_its_sdk_modules_sync_and_async_import_and_start_no_thread(env: ProviderEnv) -> None:
    # The provider worker imports them before it forks its processes: a thread would not survive.
    modules = getattr(type(env.provider), "sdk_modules", ()) + getattr(type(env.provider), "sdk_async_modules", ())
    assert isinstance(modules, tuple) and all(isinstance(name, str) for name in modules)
    script = "import importlib, os, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n" \
             "print(len(os.listdir('/proc/self/task')))"
    # A new interpreter: in this one the SDK was imported long ago, by other tests.
    done = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1"]


def test_warm_up_changes_nothing_in_the_cloud_and_again_does_nothing(env: ProviderEnv, snaps: Snapshots) -> None:
    before = sorted(r.snapshot_id for r in env.provider.find({}))
    env.provider.warm_up()
    env.provider.warm_up()
    assert sorted(r.snapshot_id for r in env.provider.find({})) == before
    _, _, refs = snaps.take()  # and the snapshot calls work after it, as a backup's do
    assert len(refs) == len(env.volumes.volumes)


def test_snapshot_returns_one_ref_per_volume_with_all_tags(env: ProviderEnv, snaps: Snapshots) -> None:
    run, tags, refs = snaps.take(team="dba")
    assert sorted(r.volume for r in refs) == sorted(_volume_names(env))
    assert len({r.snapshot_id for r in refs}) == len(refs)
    for ref in refs:
        assert ref.provider == env.provider.name
        assert ref.node == "n1"
        assert ref.state in ("pending", "completed")
        for key, value in tags.items():
            assert ref.tags.get(key) == value, f"{ref.snapshot_id} lacks tag {key}={value}"
        assert ref.tags[TAG_VOLUME] == ref.volume
        assert ref.tags["team"] == "dba"


def test_an_async_create_call_keeps_the_contract_of_snapshot(env: ProviderEnv, snaps: Snapshots) -> None:
    # Optional (Provider's docstring): what a backup calls on its event loop instead of snapshot.
    provider = env.provider
    if not callable(getattr(provider, "snapshot_async", None)):
        pytest.skip(f"{provider.name} has no async create call")
    run = f"contract-{uuid.uuid4().hex[:8]}"
    tags = snapshot_tags(env.cluster, run, env.volumes.node, extra={"team": "dba"})

    async def backup_calls() -> list[SnapshotRef]:
        await asyncio.to_thread(provider.warm_up)
        if (warm_up_async := getattr(provider, "warm_up_async", None)) is not None:
            await warm_up_async()
        try:
            return await provider.snapshot_async(env.volumes, tags)
        finally:
            if (aclose := getattr(provider, "aclose", None)) is not None:
                await aclose()
                await aclose()  # again: nothing

    refs = asyncio.run(backup_calls())
    snaps.made.extend(refs)
    assert sorted(r.volume for r in refs) == sorted(_volume_names(env))
    for ref in refs:
        assert ref.provider == provider.name and ref.node == "n1"
        assert ref.tags[TAG_RUN] == run and ref.tags[TAG_VOLUME] == ref.volume and ref.tags["team"] == "dba"
    assert sorted(map(_key, provider.find({TAG_RUN: run}))) == sorted(map(_key, refs))
    assert {r.state for r in provider.wait(refs, time.monotonic() + WAIT_S)} == {"completed"}


def test_find_by_run_tag_finds_exactly_this_runs_snapshots(env: ProviderEnv, snaps: Snapshots) -> None:
    run, _, refs = snaps.take()
    _, _, other_refs = snaps.take()
    found = env.provider.find({TAG_RUN: run})
    assert sorted(map(_key, found)) == sorted(map(_key, refs))
    for ref in found:
        assert ref.tags[TAG_CLUSTER] == env.cluster and ref.tags[TAG_NODE] == "n1" and ref.tags[TAG_RUN] == run
    by_volume = env.provider.find({TAG_RUN: run, TAG_VOLUME: refs[0].volume})
    assert [r.snapshot_id for r in by_volume] == [refs[0].snapshot_id]
    assert not {r.snapshot_id for r in other_refs} & {r.snapshot_id for r in found}


def test_wait_ends_completed(env: ProviderEnv, snaps: Snapshots) -> None:
    _, _, refs = snaps.take()
    progressed: list[SnapshotRef] = []
    done = env.provider.wait(refs, time.monotonic() + WAIT_S, progressed.append)
    assert sorted(map(_key, done)) == sorted(map(_key, refs))
    assert all(r.state == "completed" for r in done)
    assert progressed, "wait reports progress at least once per snapshot"


def test_restore_makes_a_volume_from_each_snapshot(env: ProviderEnv, snaps: Snapshots) -> None:
    _, _, refs = snaps.take()
    refs = env.provider.wait(refs, time.monotonic() + WAIT_S)
    assert sorted(r.volume for r in refs) == sorted(_volume_names(env))
    for ref in refs:
        result = env.provider.restore(ref, env.restore_target(f"restored-{ref.volume}"))
        assert isinstance(result, str) and result
        env.check_restored(ref, result)


def test_a_restore_option_the_provider_does_not_take_is_refused_before_anything_is_made(env: ProviderEnv,
                                                                                         snaps: Snapshots) -> None:
    # A mistyped key (disk_typ) restored with the default it meant to change, without a word.
    _, _, refs = snaps.take()
    ref = env.provider.wait(refs, time.monotonic() + WAIT_S)[0]
    target = env.restore_target(f"scratch-typo-{ref.volume}")
    target.extra, target.tags = {"disk_typ": "pd-ssd"}, {TAG_DRILL: f"d-{uuid.uuid4().hex[:6]}"}
    check = getattr(env.provider, "check_restore", None)
    for call in [check, env.provider.restore] if check else [env.provider.restore]:
        with pytest.raises(BadInputError) as caught:
            call(ref, target)
        assert caught.value.message == f"node n1: unknown restore option(s) for {env.provider.name}: disk_typ"
        assert caught.value.hint.startswith("valid: ") or "takes no restore options" in caught.value.hint
        assert caught.value.exit_code == ExitCode.BAD_INPUT
    places = [str(target.path)] if target.path else []
    assert env.provider.find_restored(target.tags, places) == []
    assert not (target.path and os.path.lexists(target.path))


def test_delete_then_find_finds_nothing_and_delete_again_is_done(env: ProviderEnv, snaps: Snapshots) -> None:
    run, _, refs = snaps.take()
    refs = env.provider.wait(refs, time.monotonic() + WAIT_S)
    assert len(refs) == len(env.volumes.volumes)
    for ref in refs:
        env.provider.delete(ref)
    assert env.provider.find({TAG_RUN: run}) == []
    for ref in refs:
        env.provider.delete(ref)  # not found counts as done


def test_delete_refuses_a_snapshot_not_tagged_for_this_cluster(env: ProviderEnv) -> None:
    if env.untagged_snapshot is None:
        pytest.skip("this env cannot make a snapshot without the cluster tag")
    ref = env.untagged_snapshot()
    # Refused for what it lacks, naming it: not any ProviderError (a lost connection is one too).
    name = ref.snapshot_id.rsplit("/", 1)[-1]
    why = rf"refusing to delete .*snapshot {re.escape(name)}: .*{TAG_CLUSTER}"
    with pytest.raises(ProviderError, match=why) as refused:
        env.provider.delete(ref)
    assert refused.value.hint, refused.value
    assert env.provider.wait([ref], time.monotonic() + WAIT_S)[0].state == "completed", "the refused snapshot must survive"


def test_delete_volume_removes_a_restored_volume_and_again_is_done(env: ProviderEnv, snaps: Snapshots) -> None:
    _, _, refs = snaps.take()
    refs = env.provider.wait(refs, time.monotonic() + WAIT_S)
    restored = [env.provider.restore(ref, env.restore_target(f"scratch-{ref.volume}")) for ref in refs]
    assert len(restored) == len(env.volumes.volumes)
    assert all(env.volume_exists(volume) for volume in restored)
    for volume in restored:
        env.provider.delete_volume(volume)
    assert not any(env.volume_exists(volume) for volume in restored)
    for volume in restored:
        env.provider.delete_volume(volume)  # not found counts as done


def test_delete_volume_refuses_a_volume_not_tagged_for_this_cluster(env: ProviderEnv) -> None:
    if env.foreign_volume is None:
        pytest.skip("this env cannot make a volume without the cluster tag")
    volume = env.foreign_volume()
    name = volume.rsplit("/", 1)[-1]
    with pytest.raises(ProviderError, match=rf"refusing to delete .*{re.escape(name)}") as refused:
        env.provider.delete_volume(volume)
    assert refused.value.hint, refused.value
    assert env.volume_exists(volume), "the refused volume must survive"


def test_find_restored_finds_exactly_the_volumes_restored_with_the_tags(env: ProviderEnv, snaps: Snapshots) -> None:
    # What the cleanup after a drill killed outright deletes: only that drill's volumes.
    _, _, refs = snaps.take()
    ref = env.provider.wait(refs, time.monotonic() + WAIT_S)[0]
    ours, other = {TAG_DRILL: f"d-{uuid.uuid4().hex[:6]}"}, {TAG_DRILL: f"d-{uuid.uuid4().hex[:6]}"}
    made = []
    try:
        for name, tags in (("ours", ours), ("other", other), ("plain", {})):
            target = env.restore_target(f"scratch-{name}-{ref.volume}")
            target.tags = tags
            made.append(env.provider.restore(ref, target))
        places = [str(env.restore_target(f"scratch-{n}-{ref.volume}").path) for n in ("ours", "other", "plain")]

        assert env.provider.find_restored(ours, places) == [made[0]]
        assert env.provider.find_restored({TAG_DRILL: "d-none"}, places) == []
    finally:
        for volume in made:
            env.provider.delete_volume(volume)
    assert env.provider.find_restored(ours, places) == []


def test_describe_looks_snapshots_up_by_id_and_leaves_out_those_gone(env: ProviderEnv, snaps: Snapshots) -> None:
    run, tags, refs = snaps.take()
    refs = env.provider.wait(refs, time.monotonic() + WAIT_S)
    gone, *kept = refs
    env.provider.delete(gone)

    now = env.provider.describe(refs)

    assert sorted(r.snapshot_id for r in now) == sorted(r.snapshot_id for r in kept)
    for ref in now:
        assert ref.state == "completed" and ref.tags[TAG_RUN] == run and ref.tags[TAG_CLUSTER] == env.cluster
    assert env.provider.describe([gone]) == []
