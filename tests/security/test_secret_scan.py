"""The agent token and the cloud credentials appear nowhere a full run leaves words: agent logs (at
debug level), snapctl's text and JSON output and error messages, the catalog, the snapshots' tags,
the agents' /metrics, their command lines.

A real cluster (three agents with a token file), the AWS provider (boto3 against moto's server
over HTTP) with credentials from the environment, as an operator's cron job would have them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.faults.harness import NODES, TOKEN, FaultCluster
from tests.moto_server import (
    DEFAULT_REGION,
    DUMMY_AWS_ENV,
    MotoServer,
    dummy_aws_credentials,
    shared_moto_server,
    worker_tag,
)

CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": f"AKIAFAULTSUITE7Q2XK4{worker_tag().upper()}",  # this process's account on the run's moto
    "AWS_SECRET_ACCESS_KEY": "sEcReT/scan+me9f8e7d6c5b4a3210fedcba98",
    "AWS_SESSION_TOKEN": "FwoGZXIvYXdzEFAULTSUITEsessionTOKENxyz123",
}
WRONG_TOKEN = "wrong-token-that-must-not-echo-5e6f"
SECRETS = [TOKEN, WRONG_TOKEN, *CREDENTIALS.values()]


@pytest.fixture
def moto() -> Iterator[MotoServer]:
    server = shared_moto_server().as_key(CREDENTIALS["AWS_ACCESS_KEY_ID"])
    server.reset()
    with dummy_aws_credentials(**CREDENTIALS):
        yield server


@pytest.fixture
def aws_cluster(tmp_path: Path, moto: MotoServer) -> Iterator[FaultCluster]:

    ec2 = moto.client("ec2")
    volumes = {node: ec2.create_volume(Size=8, AvailabilityZone=f"{DEFAULT_REGION}a")["VolumeId"] for node in NODES}
    cluster = FaultCluster(tmp_path, agent_extra={"log_level": "debug"}, extra_env={**DUMMY_AWS_ENV, **CREDENTIALS})
    try:
        cluster.start()
        provider = {"type": "aws", "region": DEFAULT_REGION, "endpoint_url": moto.endpoint_url,
                    "poll_interval_s": 0.05}
        cluster.write_inventory(cluster.inventory, provider=provider,
                                volumes=lambda node: [{"volume": volumes[node], "name": "data"}])
        yield cluster
    finally:
        cluster.close()


def test_no_token_or_credential_in_anything_a_run_leaves(aws_cluster: FaultCluster, moto: MotoServer) -> None:
    cluster = aws_cluster
    said: list[str] = []

    def run(*args: str, inventory: Path | None = None, expect: int | None = 0) -> None:
        result = cluster.snapctl(*args, inventory=inventory)
        said.extend([result.stdout, result.stderr])
        if expect is not None:
            assert result.returncode == expect, result.stderr

    run("backup", "--no-prune")
    run("backup", "--no-prune", "-o", "json")
    run("list", "-o", "json")
    run("show", "latest")
    run("gc", "-o", "json")
    for output in ("text", "json"):
        run("status", "-o", output, expect=None)
    # Failures speak too: a wrong token, and a provider error in the middle of a run.
    (cluster.directory / "wrong.token").write_text(WRONG_TOKEN + "\n")
    wrong = cluster.write_inventory(cluster.directory / "wrong.yaml", auth={"token_file": str(cluster.directory / "wrong.token")})
    run("backup", inventory=wrong, expect=3)
    run("backup", "-o", "json", inventory=wrong, expect=3)
    missing = cluster.write_inventory(cluster.directory / "missing.yaml", provider=_provider(cluster),
                                      volumes=lambda node: [{"volume": "vol-0123456789abcdef0", "name": "data"}])
    run("backup", "--no-prune", inventory=missing, expect=1)
    for node in NODES:  # the agents' own pages
        said.append(httpx.get(cluster.url(node) + "/metrics").text)
        said.append(httpx.get(cluster.url(node) + "/openapi.json").text)

    files = [p for p in cluster.directory.rglob("*") if p.is_file() and p != cluster.token_file
             and p.name != "wrong.token"]
    assert any(p.suffix == ".log" for p in files) and any("manifests" in p.parts for p in files)
    said.extend(p.read_text(errors="replace") for p in files)
    said.extend(Path(f"/proc/{a.proc.pid}/cmdline").read_bytes().decode(errors="replace")
                for a in cluster.agents.values())
    said.append(repr(_snapshot_tags(moto)))
    assert len([t for t in said if t]) > 30

    for secret in SECRETS:
        leaks = [text[max(0, text.find(secret) - 80):text.find(secret) + 80] for text in said if secret in text]
        assert not leaks, f"a secret leaked: {leaks[0]!r}"
    # The scan saw real material: the run ids, the snapshots, the refusal of the wrong token.
    everything = "\n".join(said)
    assert "wrong bearer token" in everything and "snap-" in everything and "InvalidVolume" in everything


def _provider(cluster: FaultCluster) -> dict:
    import yaml

    return yaml.safe_load(cluster.inventory.read_text())["provider"]


def _snapshot_tags(moto: MotoServer) -> list:

    ec2 = moto.client("ec2")
    return [s.get("Tags", []) for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]]
