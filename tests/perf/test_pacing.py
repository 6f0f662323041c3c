"""Per-node pacing mirrors the provider's token bucket, charged when calls are submitted. Time is
simulated: a fake clock that only the pacer's sleeps advance."""

from __future__ import annotations

import asyncio

import pytest

from snapctl import pacing
from snapctl.pacing import CreateCallPacer, slow_snapshot_hint
from snapctl.providers import Capabilities
from snapctl.ratelimit import TokenBucket

_real_sleep = asyncio.sleep  # pacing.asyncio is this same module: keep a yield that is not patched


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.hooks: list = []  # (at, fn): run once the clock reaches `at`

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        for at, fn in list(self.hooks):
            if self.now >= at:
                self.hooks.remove((at, fn))
                fn()
        await _real_sleep(0)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(pacing.asyncio, "sleep", fake.sleep)
    return fake


def pacer_with(fake: FakeTime, rate: float, burst: int) -> CreateCallPacer:
    pacer = CreateCallPacer(rate, burst)
    pacer._bucket = TokenBucket(rate, burst, clock=fake.clock)
    return pacer


async def let_through(pacer: CreateCallPacer, fake: FakeTime, nodes: int) -> list[float]:
    times = []
    for _ in range(nodes):
        await pacer.before_prepare(1)
        times.append(fake.now)
    return times


def test_the_burst_goes_at_once_then_the_rate(fake: FakeTime) -> None:
    pacer = pacer_with(fake, rate=2.0, burst=3)

    async def scenario() -> list[float]:
        times = []
        for _ in range(6):
            await pacer.before_prepare(1)
            times.append(fake.now)
            pacer.submitted(1)  # prepared at once: the call goes out when the node is let through
        return times

    assert asyncio.run(scenario()) == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5])


def test_tokens_after_the_burst_count_from_when_the_burst_was_submitted(fake: FakeTime) -> None:
    """A slow first burst of prepares (5 s) must not let later nodes be held early: the provider's
    bucket only starts refilling once those calls reach it."""
    pacer = pacer_with(fake, rate=1.0, burst=2)
    fake.hooks.append((5.0, lambda: (pacer.submitted(1), pacer.submitted(1))))

    times = asyncio.run(let_through(pacer, fake, 3))
    assert times[:2] == [0, 0]
    assert times[2] == pytest.approx(6.0)  # 5 s (the burst's calls submitted) + 1 s (one token)


def test_a_node_of_more_volumes_than_the_burst_is_charged_every_call(fake: FakeTime) -> None:
    """Charged only a burst's worth, n1's six calls left the mirror 4 tokens fuller than the
    provider's bucket: n2..n4 were let through while n1's calls still queued there, and waited in
    the provider while held. Charged all six, each later node's call goes through at once."""
    rate, burst = 2.0, 2
    pacer = pacer_with(fake, rate, burst)
    provider = TokenBucket(rate, burst, clock=fake.clock)  # the cloud's: a token per create call

    async def scenario() -> tuple[list[float], dict[str, list[float]]]:
        let, waited = [], {}
        for node, calls in [("n1", 6), ("n2", 1), ("n3", 1), ("n4", 1)]:
            await pacer.before_prepare(calls)
            let.append(fake.now)
            pacer.submitted(calls)
            waited[node] = [provider.reserve(1) for _ in range(calls)]  # how long each call queues there
        return let, waited

    let, waited = asyncio.run(scenario())
    assert let == pytest.approx([0, 2.5, 3.0, 3.5])
    assert waited["n1"] == pytest.approx([0, 0, 0.5, 1.0, 1.5, 2.0])  # past the burst: no wait can spare it
    assert waited["n2"] == waited["n3"] == waited["n4"] == [0]


def test_a_pause_of_the_providers_own_bucket_is_waited_out_before_the_next_hold(fake: FakeTime) -> None:
    """The cloud throttled n2's call and the provider paused its bucket 2 s (Retry-After): the
    mirror cannot know, and let n3 through at once, held for the pause. Where the provider makes
    its calls in snapctl's process, its bucket is read as well."""

    class Gcpish:
        capabilities = Capabilities(max_creates_per_s=5.0, create_burst=2)
        create_bucket = TokenBucket(5.0, 2, clock=fake.clock)

    def let_through_with(pacer: CreateCallPacer) -> list[float]:
        provider = Gcpish.create_bucket
        provider._tokens, provider._updated = provider.burst, fake.now

        async def scenario() -> list[float]:
            times = []
            for node in ("n1", "n2", "n3"):
                await pacer.before_prepare(1)
                times.append(fake.now)
                pacer.submitted(1)
                provider.reserve(1)  # the provider's call takes its token
                if node == "n2":
                    provider.pause(2.0)  # 429, Retry-After: 2
            return times

        return asyncio.run(scenario())

    live = CreateCallPacer.for_provider(Gcpish(), in_process=True)
    live._bucket = TokenBucket(5.0, 2, clock=fake.clock)
    assert let_through_with(live) == pytest.approx([0, 0, 2.2])  # the pause, then a token at 5/s
    fake.now += 10
    worker = CreateCallPacer.for_provider(Gcpish(), in_process=False)  # its own providers, in other processes
    worker._bucket = TokenBucket(5.0, 2, clock=fake.clock)
    start = fake.now
    assert [t - start for t in let_through_with(worker)] == pytest.approx([0, 0, 0.2])


def test_a_cluster_run_that_outran_its_freeze_is_told_of_the_rate_limit_that_bound() -> None:
    ec2 = Capabilities(max_creates_per_s=5, create_burst=100)
    hint = slow_snapshot_hint(ec2, 400, "cluster")
    assert "(100 create calls at once, then 5/s) spreads this run's 400 over 60.0s" in hint
    assert hint.endswith("or back up with --consistency per-node")
    assert "per-node" not in slow_snapshot_hint(ec2, 400, "per-node")  # it is one already
    assert "rate limit" not in slow_snapshot_hint(ec2, 100, "cluster")  # the burst takes them all at once
    assert "rate limit" not in slow_snapshot_hint(Capabilities(), 400, "cluster")


def test_no_declared_limit_means_no_pacer() -> None:
    class Unlimited:
        capabilities = Capabilities()

    class Limited:
        capabilities = Capabilities(max_creates_per_s=5, create_burst=100)

    assert CreateCallPacer.for_provider(Unlimited()) is None
    assert isinstance(CreateCallPacer.for_provider(Limited()), CreateCallPacer)
