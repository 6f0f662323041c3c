"""``snapctl-agent`` as a real process: auth, OpenAPI, refusing open addresses, releasing on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from tests.agent.certs import make_pki
from tests.agent.conftest import AGENT_BIN, TOKEN, agent_process, try_write, write_config

NO_ENV_TOKEN = {"SNAPCTL_AGENT_TOKEN": ""}


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **NO_ENV_TOKEN}
    return subprocess.run([str(AGENT_BIN), *args], capture_output=True, text=True, timeout=60, env=env)


def test_auth_health_and_openapi_of_a_real_agent(tmp_path: Path, db: Path) -> None:
    with agent_process(write_config(tmp_path, db)) as agent:
        assert httpx.get(agent.url + "/v1/health").json()["status"] == "ok"
        assert "/v1/prepare" in httpx.get(agent.url + "/openapi.json").json()["paths"]

        no_token = httpx.get(agent.url + "/v1/status")
        assert no_token.status_code == 401
        assert no_token.json()["error"] == "missing bearer token"
        wrong = httpx.get(agent.url + "/v1/status", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json() == {
            "error": "wrong bearer token",
            "hint": "send 'Authorization: Bearer <token>' with the agent's token (token_file or $SNAPCTL_AGENT_TOKEN)",
            "holder": None,
        }
        status = httpx.get(agent.url + "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
        assert status.status_code == 200 and status.json()["node"] == "n1"

    assert f"snapctl-agent n1 listening on {agent.url} engine=sqlite" in agent.log
    assert TOKEN not in agent.log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stopping_the_agent_while_held_releases_the_database(tmp_path: Path, db: Path, sig: int) -> None:
    with agent_process(write_config(tmp_path, db)) as agent:
        prepared = httpx.post(agent.url + "/v1/prepare", json={"run_id": "run-1", "lease_s": 600},
                              headers={"Authorization": f"Bearer {TOKEN}"})
        assert prepared.status_code == 200, prepared.text
        assert not try_write(db)
        assert agent.stop(sig) == 0
        assert try_write(db)
        assert "agent stopping while run run-1 holds the engine: completing it" in agent.log


def test_the_token_can_come_from_the_environment(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db, token=None)
    with agent_process(config, env={"SNAPCTL_AGENT_TOKEN": "from-env"}) as agent:
        assert httpx.get(agent.url + "/v1/status").status_code == 401
        assert httpx.get(agent.url + "/v1/status", headers={"Authorization": "Bearer from-env"}).status_code == 200


def test_without_a_token_on_loopback_it_serves_and_warns_in_its_log(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db, token=None)
    with agent_process(config) as agent:
        assert httpx.get(agent.url + "/v1/status").status_code == 200
    assert (f"WARNING snapctl.agent: no token configured: any user or process on this host can hold the engine; "
            f"set token_file in {config} (docs/security.md)") in agent.log


def test_a_token_over_plain_http_beyond_loopback_is_warned_about_at_start(tmp_path: Path, db: Path) -> None:
    # A name other than localhost may resolve to anything, as for the refusal without a token: this
    # host's own name, when it resolves to 127.0.0.1, lets the test listen on loopback only.
    name = socket.gethostname()
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(name, 0, type=socket.SOCK_STREAM)}
    except socket.gaierror:
        resolved = set()
    if resolved != {"127.0.0.1"}:
        pytest.skip(f"this host's name {name!r} does not resolve to 127.0.0.1 alone")
    config = write_config(tmp_path, db)
    with agent_process(config, "--listen", name) as agent:
        assert httpx.get(agent.url + "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    warnings = [line.split(" WARNING snapctl.agent: ", 1)[1] for line in agent.log.splitlines() if " WARNING " in line]
    assert warnings == [f"serving plain http on {name}: the token crosses the network in clear with every request; "
                        f"set tls.cert_file and tls.key_file in {config} (docs/security.md)"]
    with agent_process(config) as agent:  # on 127.0.0.1 the token never leaves the host
        pass
    assert " WARNING " not in agent.log


def test_refuses_a_non_loopback_address_without_a_token(tmp_path: Path, db: Path) -> None:
    # TEST-NET: were the refusal gone, binding would fail (tests listen on loopback only).
    result = run_agent("--config", str(write_config(tmp_path, db, token=None)), "--listen", "192.0.2.1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "snapctl-agent: error: refusing to listen on 192.0.2.1 without a token "
        f"(hint: set token_file in {tmp_path / 'agent.yaml'}, pass --token-file FILE, or set $SNAPCTL_AGENT_TOKEN)"
    ]


def test_config_errors_name_file_line_and_field(tmp_path: Path, db: Path) -> None:
    config = write_config(tmp_path, db, extra="portt: 7701\n")
    result = run_agent("--config", str(config))
    assert result.returncode == 2
    assert f"{config}:7: unknown key 'portt' (valid keys: node, listen, port," in result.stderr

    result = run_agent("--config", str(write_config(tmp_path, db, token="")))
    assert result.returncode == 2 and "token_file" in result.stderr and "is empty" in result.stderr

    result = run_agent("--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "agent config file not found" in result.stderr


@pytest.mark.parametrize("problem", ["missing", "empty"])
def test_a_bad_metrics_token_file_is_one_line_and_exit_2(tmp_path: Path, db: Path, problem: str) -> None:
    scrape = tmp_path / "scrape.token"
    if problem == "empty":
        scrape.write_text("\n")
        scrape.chmod(0o600)
    config = write_config(tmp_path, db, extra="metrics_token_file: scrape.token\n")
    result = run_agent("--config", str(config))
    assert result.returncode == 2
    what = "not found" if problem == "missing" else "is empty (hint: put the token on its first line)"
    assert result.stderr.splitlines() == [f"snapctl-agent: error: {config}: metrics_token_file {scrape} {what}"]


def tls_config(tmp_path: Path, db: Path, **files: Path) -> Path:
    tls = "".join(f"  {setting}: {path}\n" for setting, path in files.items())
    return write_config(tmp_path, db, extra=f"tls:\n{tls}")


def encrypted_copy(key: Path, to: Path) -> Path:
    loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
    to.write_bytes(loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                        serialization.BestAvailableEncryption(b"passphrase")))
    return to


TLS_PROBLEMS = {
    "cert missing": (lambda pki, o, d: {"cert_file": d / "nope.pem", "key_file": pki.server_key},
                     "tls.cert_file {cert_file} not found"),
    "key missing": (lambda pki, o, d: {"cert_file": pki.server_cert, "key_file": d / "nope.key"},
                    "tls.key_file {key_file} not found"),
    "client ca missing": (lambda pki, o, d: {"cert_file": pki.server_cert, "key_file": pki.server_key,
                                             "client_ca_file": d / "nope-ca.pem"},
                          "tls.client_ca_file {client_ca_file} not found"),
    "a directory as the cert": (lambda pki, o, d: {"cert_file": d, "key_file": pki.server_key},
                                "cannot read tls.cert_file {cert_file}: is a directory"),
    "the key as the cert": (lambda pki, o, d: {"cert_file": pki.server_key, "key_file": pki.server_key},
                            "tls.cert_file {cert_file} holds no PEM certificate"),
    "the cert as the key": (lambda pki, o, d: {"cert_file": pki.server_cert, "key_file": pki.server_cert},
                            "tls.key_file {key_file} holds no PEM private key"),
    "another certificate's key": (lambda pki, o, d: {"cert_file": pki.server_cert, "key_file": o.server_key},
                                  "tls.key_file {key_file} is not the private key of tls.cert_file {cert_file}"),
    "an encrypted key": (lambda pki, o, d: {"cert_file": pki.server_cert,
                                            "key_file": encrypted_copy(pki.server_key, d / "encrypted.key")},
                         "tls.key_file {key_file} is encrypted, and the agent cannot ask for its passphrase"),
    "a key as the client ca": (lambda pki, o, d: {"cert_file": pki.server_cert, "key_file": pki.server_key,
                                                  "client_ca_file": pki.client_key},
                               "tls.client_ca_file {client_ca_file} holds no PEM certificate"),
}


@pytest.mark.parametrize("problem", TLS_PROBLEMS)
def test_a_bad_tls_file_is_named_with_its_setting_in_one_line(tmp_path: Path, db: Path, problem: str) -> None:
    make, expected = TLS_PROBLEMS[problem]
    files = make(make_pki(tmp_path / "pki"), make_pki(tmp_path / "other"), tmp_path)
    for file in files.values():
        if file.is_file():
            file.chmod(0o600)  # a looser mode is warned about, which is not what this test is about
    config = tls_config(tmp_path, db, **files)
    result = run_agent("--config", str(config), "--port", "0")
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"snapctl-agent: error: {config}: {expected.format(**files)} (hint: "), line
    assert result.stdout == ""


def test_a_port_in_use_is_one_error_line_and_exit_2(tmp_path: Path, db: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_agent("--config", str(write_config(tmp_path, db)), "--port", str(port))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"snapctl-agent: error: cannot listen on 127.0.0.1:{port}: address already in use "
        "(hint: pick another --port, or stop what uses it)"
    ]


@pytest.mark.parametrize("name", [".n1", "-n1", "n" * 64, "n 1"])
def test_a_node_name_refused_by_the_flag_is_explained_as_the_config_explains_it(tmp_path: Path, db: Path,
                                                                                name: str) -> None:
    # `--node .n1` said "not a node name (letters, digits, '.', '_', '-')": every character it
    # has is among those, so the operator could not tell what was wrong with it.
    said = "is not a valid name: 1-63 letters, digits, '.', '_' or '-', beginning with a letter or digit"
    result = run_agent("--config", str(write_config(tmp_path, db)), f"--node={name}")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"snapctl-agent: error: argument --node: {name!r} {said}"
    (tmp_path / "named.yaml").write_text(f"node: {name!r}\nengine: {{type: sqlite, path: {db}}}\n")
    in_config = run_agent("--config", str(tmp_path / "named.yaml"))
    assert in_config.returncode == 2 and f"{name!r} {said}" in in_config.stderr


def test_secret_files_open_to_other_users_are_warned_about_at_start(tmp_path: Path, db: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    (tmp_path / "scrape.token").write_text("scraper-t0ken\n")
    config = write_config(tmp_path, db, extra=("metrics_token_file: scrape.token\n"
                                               f"tls: {{cert_file: {pki.server_cert}, key_file: {pki.server_key}}}\n"))
    token, scrape = tmp_path / "agent.token", tmp_path / "scrape.token"
    token.chmod(0o644)
    scrape.chmod(0o660)
    pki.server_key.chmod(0o640)
    trust = ssl.create_default_context(cafile=str(pki.ca))
    # Warned, not refused: a running deployment keeps working after an upgrade.
    with agent_process(config, verify=trust, scheme="https") as agent:
        assert httpx.get(agent.url + "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"},
                         verify=trust).status_code == 200
    warnings = [line.split(" WARNING snapctl.agent: ", 1)[1] for line in agent.log.splitlines() if " WARNING " in line]
    assert warnings == [
        f"{config}: token_file {token} is readable by its group and other users (mode 0644); "
        f"chmod 600 {token} so that only the agent's user can read it",
        f"{config}: metrics_token_file {scrape} is readable and writable by its group (mode 0660); "
        f"chmod 600 {scrape} so that only the agent's user can read it",
        f"{config}: tls.key_file {pki.server_key} is readable by its group (mode 0640); "
        f"chmod 600 {pki.server_key} so that only the agent's user can read it",
    ]

    for secret in (token, scrape, pki.server_key):
        secret.chmod(0o600)
    with agent_process(config, verify=trust, scheme="https") as agent:
        pass
    assert " WARNING " not in agent.log


@pytest.mark.parametrize("level", ["info", "debug"])
def test_the_engine_adapters_http_requests_are_logged_at_debug_only(tmp_path: Path, level: str) -> None:
    # httpx logs each request at INFO: with a QuestDB engine every status poll and scrape was a line.
    from tests.fakes.questdb import FakeQuestDB

    (tmp_path / "qdb" / "db").mkdir(parents=True)
    fake = FakeQuestDB().start()
    try:
        (tmp_path / "agent.token").write_text(TOKEN + "\n")
        (tmp_path / "agent.token").chmod(0o600)
        config = tmp_path / "agent.yaml"
        config.write_text(f"node: n1\ntoken_file: agent.token\nlog_level: {level}\n"
                          f"engine: {{type: questdb, root: qdb, url: '{fake.url}'}}\n")
        with agent_process(config) as agent:
            for _ in range(3):
                status = httpx.get(agent.url + "/v1/status", headers={"Authorization": f"Bearer {TOKEN}"})
                assert status.json()["engine"]["reachable"], status.text
    finally:
        fake.stop()
    requests_logged = [line for line in agent.log.splitlines() if "HTTP Request:" in line]
    assert (len(requests_logged) >= 3) if level == "debug" else requests_logged == []


def test_a_metrics_token_that_is_the_agents_own_token_is_warned_about_at_start(tmp_path: Path, db: Path) -> None:
    # It opens every endpoint then: the scraper, meant to read /metrics only, could freeze the database.
    config = write_config(tmp_path, db, extra="metrics_token_file: agent.token\n")
    with agent_process(config) as agent:
        pass
    warnings = [line.split(" WARNING snapctl.agent: ", 1)[1] for line in agent.log.splitlines() if " WARNING " in line]
    assert warnings == [f"{config}: the metrics token is the agent's own token, so /metrics' scraper can also "
                        "hold the database; give metrics_token_file a token of its own"]


def test_an_empty_config_path_is_named_not_taken_for_the_current_directory() -> None:
    # Path("") is ".": it said ".: cannot read agent config: is a directory".
    result = run_agent("--config", "")
    assert result.returncode == 2
    assert result.stderr.splitlines() == ["snapctl-agent: error: --config '': give the agent config file's path, "
                                          "not an empty string (hint: e.g. --config /etc/snapctl/agent.yaml)"]
