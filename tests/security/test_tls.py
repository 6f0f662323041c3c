"""TLS with a given certificate and mTLS with a client CA: a whole backup runs over it, snapctl
verifies agents by the CA it is given, and the agents refuse clients without a certificate from
theirs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapctl.agent_client import open_agents
from snapctl.config import load_inventory
from snapctl.errors import AgentUnreachable, ExitCode
from tests.agent.certs import make_pki
from tests.faults.harness import FaultCluster


@pytest.fixture
def mtls_cluster(tmp_path: Path) -> Iterator[FaultCluster]:
    directory = tmp_path / "cluster"
    directory.mkdir()
    cluster = FaultCluster(directory, tls=make_pki(tmp_path / "pki"), nodes=("node1", "node2"))
    try:
        yield cluster.start()
    finally:
        cluster.close()


def status_with(cluster: FaultCluster, **auth: str) -> None:
    inventory = load_inventory(cluster.write_inventory(cluster.directory / "probe.yaml",
                                                       auth={"token_file": str(cluster.token_file), **auth}))

    async def status() -> None:
        async with open_agents(inventory) as agents:
            await agents["node1"].status()

    asyncio.run(status())


def test_a_whole_backup_over_mtls(mtls_cluster: FaultCluster) -> None:
    cluster = mtls_cluster
    result = cluster.snapctl("backup", "--no-prune", "-o", "json")
    assert result.returncode == 0, result.stderr
    assert result.json["data"]["status"] == "succeeded"
    for agent in cluster.agents.values():
        assert f"listening on https://127.0.0.1:{agent.port}" in agent.log.read_text()


@pytest.mark.parametrize("key_in_cert", [False, True], ids=["client_key_file", "key-in-cert-file"])
def test_a_client_key_other_users_can_read_is_warned_about_and_still_used(mtls_cluster, key_in_cert) -> None:
    # The token files were warned about, the client key of mTLS was not: whoever reads it is
    # snapctl to every agent that requires client certificates.
    cluster = mtls_cluster
    key = cluster.tls.client_key
    auth = {"token_file": str(cluster.token_file), "ca_file": str(cluster.tls.ca)}
    if key_in_cert:
        key = cluster.directory / "client.pem"
        key.write_bytes(cluster.tls.client_cert.read_bytes() + cluster.tls.client_key.read_bytes())
        auth["client_cert_file"] = str(key)
        setting = "auth.client_cert_file (which holds the key)"
    else:
        auth.update(client_cert_file=str(cluster.tls.client_cert), client_key_file=str(key))
        setting = "auth.client_key_file"
    inventory = cluster.write_inventory(cluster.directory / "keyed.yaml", auth=auth)
    key.chmod(0o644)
    warned = cluster.snapctl("status", "-o", "json", inventory=inventory)
    assert all(node["authorized"] for node in warned.json["data"]["nodes"]), warned.stdout
    said = (f"{inventory}: {setting} {key} is readable by its group and other users (mode 0644); "
            f"chmod 600 {key} so that only snapctl's user can read it")
    assert warned.stderr.splitlines() == [f"warning: {said}"] and warned.json["warnings"] == [said]
    key.chmod(0o600)
    assert cluster.snapctl("status", "-o", "json", inventory=inventory).stderr == ""


def test_snapctl_refuses_agents_its_ca_did_not_sign(mtls_cluster: FaultCluster, tmp_path: Path) -> None:
    cluster = mtls_cluster
    rogue = make_pki(tmp_path / "rogue")
    untrusting = cluster.write_inventory(cluster.directory / "untrusting.yaml", auth={
        "token_file": str(cluster.token_file), "ca_file": str(rogue.ca),
        "client_cert_file": str(cluster.tls.client_cert), "client_key_file": str(cluster.tls.client_key)})
    result = cluster.snapctl("backup", inventory=untrusting)
    assert result.returncode == ExitCode.PREFLIGHT_REFUSED, result.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr and "Traceback" not in result.stderr
    # The fix is the CA snapctl trusts, not the agent: "start node1's agent" sent people to the wrong host.
    assert "hint: point auth.ca_file at the CA that signed the agent's certificate" in result.stderr
    assert "start node1's agent" not in result.stderr
    status = cluster.snapctl("status", inventory=untrusting)
    assert status.returncode == ExitCode.CRITICAL, status.stderr
    assert "point auth.ca_file at the CA that signed the agent's certificate" in status.stdout
    assert "start node1's agent" not in status.stdout
    assert cluster.held() == set()


@pytest.mark.parametrize("client", ["none", "signed by another CA"])
def test_agents_refuse_clients_without_a_certificate_from_their_ca(mtls_cluster, tmp_path, client) -> None:
    cluster = mtls_cluster
    auth = {"ca_file": str(cluster.tls.ca)}
    if client != "none":
        rogue = make_pki(tmp_path / "rogue")
        auth.update(client_cert_file=str(rogue.client_cert), client_key_file=str(rogue.client_key))
    with pytest.raises(AgentUnreachable) as refused:
        status_with(cluster, **auth)
    assert refused.value.node == "node1"
    if client == "none":  # what `snapctl status` shows for the node, which carries no hint
        assert "set auth.client_cert_file and client_key_file" in refused.value.reason
    assert cluster.held() == set()


def test_plain_http_to_a_tls_agent_gets_nowhere(mtls_cluster: FaultCluster) -> None:
    cluster = mtls_cluster
    inventory = cluster.write_inventory(cluster.directory / "plain.yaml")
    text = inventory.read_text().replace("https://", "http://")
    inventory.write_text(text)
    result = cluster.snapctl("backup", inventory=inventory)
    assert result.returncode == ExitCode.PREFLIGHT_REFUSED, result.stderr
    assert "use https:// for it" in result.stderr
    assert cluster.held() == set()


def test_https_to_a_plain_http_agent_says_it_answers_in_plain_http(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    cluster = FaultCluster(tmp_path / "plain", nodes=("node1",))
    try:
        cluster.start()
        inventory = cluster.write_inventory(cluster.directory / "tls.yaml")
        inventory.write_text(inventory.read_text().replace("http://", "https://"))
        result = cluster.snapctl("status", inventory=inventory)
        assert result.returncode == ExitCode.CRITICAL, result.stderr
        assert "tls with the agent at https://127.0.0.1:" in result.stdout and "it answers in plain http" in result.stdout
    finally:
        cluster.close()


def test_a_certificate_that_does_not_name_the_agents_address_says_so(mtls_cluster: FaultCluster) -> None:
    # The certificate is for 127.0.0.1: dialled as localhost, the chain verifies and the name does
    # not. The hint used to send the operator to auth.ca_file, which was right.
    cluster = mtls_cluster
    inventory = cluster.write_inventory(cluster.directory / "by-name.yaml")
    inventory.write_text(inventory.read_text().replace("https://127.0.0.1:", "https://localhost:"))
    result = cluster.snapctl("backup", inventory=inventory)
    assert result.returncode == ExitCode.PREFLIGHT_REFUSED, result.stderr
    assert ("hint: the agent's certificate does not name localhost, the host snapctl was given for it "
            "(nodes[].agent, or restore.agent for a scratch agent): use a name the certificate was issued for, "
            "or reissue the certificate with localhost in its subjectAltName") in result.stderr
    assert "point auth.ca_file" not in result.stderr
    assert cluster.held() == set()


@pytest.mark.parametrize("setting", ["ca_file", "client_cert_file", "client_key_file"])
def test_a_missing_tls_file_is_named_with_its_setting(mtls_cluster: FaultCluster, setting: str) -> None:
    # ssl says only "[Errno 2] No such file or directory": which of the three was it?
    cluster = mtls_cluster
    missing = cluster.directory / f"gone-{setting}.pem"
    auth = {"token_file": str(cluster.token_file), "ca_file": str(cluster.tls.ca),
            "client_cert_file": str(cluster.tls.client_cert), "client_key_file": str(cluster.tls.client_key),
            setting: str(missing)}
    inventory = cluster.write_inventory(cluster.directory / "missing.yaml", auth=auth)
    result = cluster.snapctl("status", inventory=inventory)
    assert result.returncode == ExitCode.BAD_INPUT, result.stdout + result.stderr
    assert f"cannot read auth.{setting} {missing}: no such file or directory" in result.stderr
    assert f"hint: set auth.{setting} to the PEM file it names" in result.stderr


def test_a_client_key_of_another_certificate_names_both_files(mtls_cluster: FaultCluster, tmp_path: Path) -> None:
    cluster = mtls_cluster
    other = make_pki(tmp_path / "other")
    inventory = cluster.write_inventory(cluster.directory / "mismatched.yaml", auth={
        "token_file": str(cluster.token_file), "ca_file": str(cluster.tls.ca),
        "client_cert_file": str(cluster.tls.client_cert), "client_key_file": str(other.client_key)})
    result = cluster.snapctl("status", inventory=inventory)
    assert result.returncode == ExitCode.BAD_INPUT, result.stdout + result.stderr
    assert (f"cannot load the client certificate from auth.client_cert_file {cluster.tls.client_cert} and "
            f"auth.client_key_file {other.client_key}") in result.stderr



def test_an_agents_server_certificate_is_refused_as_a_client_certificate(mtls_cluster: FaultCluster) -> None:
    # One CA signs the agents' and snapctl's certificates here. Whoever holds a database host's
    # agent key (tls.key_file) has a certificate from the client CA: refused because it is issued
    # for serverAuth only. docs/security.md says so (client certificates: their own CA, or agent
    # certificates serverAuth only).
    cluster = mtls_cluster
    with pytest.raises(AgentUnreachable):
        status_with(cluster, ca_file=str(cluster.tls.ca), client_cert_file=str(cluster.tls.server_cert),
                    client_key_file=str(cluster.tls.server_key))
    assert cluster.held() == set()
    status_with(cluster, ca_file=str(cluster.tls.ca), client_cert_file=str(cluster.tls.client_cert),
                client_key_file=str(cluster.tls.client_key))  # the same call with snapctl's own answers



def test_tls_client_names_refuses_a_certificate_of_the_ca_that_names_none_of_them(tmp_path: Path) -> None:
    # client_ca_file alone takes every certificate its CA signed for a client; with client_names,
    # only those that name one of them (snapctl's is issued for CN=snapctl).
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "cluster").mkdir()
    tls = {"cert_file": str(pki.server_cert), "key_file": str(pki.server_key), "client_ca_file": str(pki.ca),
           "client_names": ["db-backup", "snapctl"]}
    cluster = FaultCluster(tmp_path / "cluster", tls=pki, nodes=("node1",), agent_extra={"tls": tls})
    try:
        cluster.start()  # its health checks present snapctl's certificate: answered
        other = cluster.write_inventory(cluster.directory / "other.yaml", auth={
            "token_file": str(cluster.token_file), "ca_file": str(pki.ca),
            "client_cert_file": str(pki.other_client_cert), "client_key_file": str(pki.other_client_key)})
        refused = cluster.snapctl("status", "-o", "json", inventory=other)
        node = refused.json["data"]["nodes"][0]
        assert not node["authorized"], refused.stdout
        assert "the client certificate (another client) is not one of this agent's tls.client_names" in refused.stdout
        assert "refused a client: the client certificate (another client)" in cluster.agents["node1"].log.read_text()
        # Said as the certificate's refusal, with the agent's hint: the token's would have the
        # operator rotate a token that is fine.
        said = "node1: agent refused our client certificate: the agent at https://127.0.0.1:"
        hint = "present a client certificate issued for one of the agent's tls.client_names"
        for command in (("status",), ("backup", "--no-prune"), ("trigger", "-o", "json")):
            result = cluster.snapctl(*command, inventory=other)
            out = " ".join((result.stdout + result.stderr).split())
            assert result.returncode != 0 and hint in out, (command, out)
            assert "token" not in out, (command, out)
            if command[0] != "trigger":  # a finding; trigger says the refusal itself
                assert said in out, (command, out)
        answered = cluster.snapctl("status", "-o", "json")
        assert answered.json["data"]["nodes"][0]["authorized"], answered.stdout
        assert cluster.held() == set()
    finally:
        cluster.close()
