"""AresDB's debug HTTP API (``/dbg``) with the snapshot job table of reference/engines.md.

``POST /dbg/{table}/{shard}/snapshot`` submits a job (200 ``Snapshot job submitted``; an unknown
table or shard is 400 ``{"message","cause"}``; with snapshot jobs disabled the scheduler refuses the
job and the handler writes nothing: 200 with an empty body). Every read of ``/dbg/jobs/snapshot``
moves each submitted job one step: waiting -> running (stage snapshot) -> running (cleanup) ->
succeeded (complete), or -> failed with ``lastError`` for shards in ``fail``. With ``stuck`` the
submit itself blocks (the scheduler busy with another job) and the job table is still answered.
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime, timedelta

from tests.fakes.engine_http import FakeServer, Request, Response

ZERO_TIME = "0001-01-01T00:00:00Z"
_SNAPSHOT = re.compile(r"^/dbg/(?P<table>[^/]+)/(?P<shard>[^/]+)/snapshot$")


def _rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"  # Go's RFC3339Nano


class FakeAresDB(FakeServer):
    def __init__(self, shards: dict[str, list[int]] | None = None, *, with_history: bool = True) -> None:
        super().__init__()
        self.shards = shards or {"dim_city": [0, 1], "dim_driver": [0]}
        self.disabled = False
        self._scheduler_free = threading.Event()
        self._scheduler_free.set()
        self.fail: dict[tuple[str, int], str] = {}
        self.steps: dict[str, int] = {}  # job key -> progress step of a submitted job
        self.redolog_file = 1_700_000_000
        self.batch_offset: dict[tuple[str, int], int] = {}
        self.mutations: dict[tuple[str, int], int] = {}
        self.jobs: dict[str, dict] = {}
        for table, ids in self.shards.items():
            for shard in ids:
                self.batch_offset[(table, shard)] = 0
                self.mutations[(table, shard)] = 0
                if with_history:  # a server that has been running has taken snapshots before
                    self.jobs[self.key(table, shard)] = self._detail("succeeded", "complete", past=True)

    @property
    def stuck(self) -> bool:
        """The scheduler's one job executor is busy (a long archiving or backfill job): a snapshot
        submit blocks until it is free, as AresDB's SubmitJob does on its unbuffered channel, while
        the job table is still answered. Set False and the held submits go on."""
        return not self._scheduler_free.is_set()

    @stuck.setter
    def stuck(self, value: bool) -> None:
        if value:
            self._scheduler_free.clear()
        else:
            self._scheduler_free.set()

    def before_handling(self, request: Request) -> None:
        if request.method == "POST" and _SNAPSHOT.match(request.path):
            self._scheduler_free.wait()

    def stop(self) -> None:
        self.stuck = False  # a submit still held ends with the server
        super().stop()

    @staticmethod
    def key(table: str, shard: int) -> str:
        return f"{table}|{shard}|snapshot"

    def write(self, n: int) -> None:
        """n upserts to every shard: redo log batches and mutations since the last snapshot grow."""
        with self.lock:
            for shard in self.mutations:
                self.mutations[shard] += n
                self.batch_offset[shard] += 1
                job = self.jobs.get(self.key(*shard))
                if job is not None:
                    job["numMutations"] = self.mutations[shard]

    def _detail(self, status: str, stage: str, *, past: bool = False) -> dict:
        when = datetime.now(UTC) - (timedelta(hours=1) if past else timedelta(0))
        return {
            "status": status, "nextRun": ZERO_TIME, "lastRun": _rfc3339(when), "lastStartTime": _rfc3339(when),
            "lastError": None, "lastDuration": 1_250_000, "lockDuration": 0, "numRecords": 0,
            "numAffectedDays": 0, "total": 0, "current": 0, "numMutations": 0, "numBatches": 1,
            "redologFile": self.redolog_file, "batchOffset": 0, "stage": stage,
        }

    def handle(self, request: Request) -> Response:
        if request.method == "GET" and request.path == "/dbg/jobs/snapshot":
            self._advance()
            return Response.json(self.jobs)
        match = _SNAPSHOT.match(request.path)
        if request.method == "POST" and match:
            return self._submit(match.group("table"), match.group("shard"))
        return Response.text("404 page not found", 404)

    def _submit(self, table: str, raw_shard: str) -> Response:
        try:
            shard = int(raw_shard)
        except ValueError:
            return Response.json({"message": f"Bad request: invalid shard {raw_shard!r}", "cause": None}, 400)
        if shard not in self.shards.get(table, []):
            return Response.json({"message": f"Failed to get Shard {shard} for table {table}", "cause": None}, 400)
        if self.disabled:
            return Response(200, b"", {})
        key = self.key(table, shard)
        previous = self.jobs.get(key, {})
        self.jobs[key] = {**self._detail("waiting", previous.get("stage", "")),
                          "lastRun": previous.get("lastRun", ZERO_TIME),
                          "lastStartTime": previous.get("lastStartTime", ZERO_TIME),
                          "numMutations": self.mutations[(table, shard)]}
        self.steps[key] = 0
        return Response.text("Snapshot job submitted")

    def _advance(self) -> None:
        now = datetime.now(UTC)
        for key, step in list(self.steps.items()):
            table, shard, _ = key.split("|")
            job, where = self.jobs[key], (table, int(shard))
            step += 1
            if step == 1:
                job.update(status="running", stage="snapshot", lastStartTime=_rfc3339(now),
                           redologFile=self.redolog_file, batchOffset=self.batch_offset[where])
            elif where in self.fail:
                job.update(status="failed", lastError=self.fail[where], lastRun=_rfc3339(now), lastDuration=2_000_000)
                del self.steps[key]
                continue
            elif step == 2:
                job.update(stage="cleanup")
            else:
                self.mutations[where] = 0
                job.update(status="succeeded", stage="complete", lastRun=_rfc3339(now), lastDuration=3_500_000,
                           numMutations=0)
                del self.steps[key]
                continue
            self.steps[key] = step
