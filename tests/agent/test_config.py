"""The agent config file: one-line errors with file:line, paths relative to the file, tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent.config import AgentConfigError, load_agent_config, parse_agent_config
from node_agent.engines.sqlite import SqliteSettings

MINIMAL = "node: n1\nengine:\n  type: sqlite\n  path: data/db.sqlite\n"


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    file = tmp_path / "conf" / "agent.yaml"
    file.parent.mkdir()
    file.write_text(MINIMAL + "token_file: secrets/token\n")
    config = load_agent_config(file)
    assert (config.listen, config.port, config.max_body_bytes, config.log_level) == ("127.0.0.1", 7700, 65536, "info")
    assert config.resolve(config.token_file) == file.parent.resolve() / "secrets" / "token"
    assert isinstance(config.engine_settings, SqliteSettings)
    assert config.uses_tls is False


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (MINIMAL + "tls:\n  cert_file: a.pem\n  keyfile: b.pem\n",
         "agent.yaml:7: unknown key 'tls.keyfile' (valid keys: cert_file, key_file, client_ca_file, client_names)"),
        (MINIMAL + "tls:\n  cert_file: a.pem\n", "agent.yaml:5: tls: needs both cert_file and key_file"),
        (MINIMAL + "tls:\n  cert_file: a.pem\n  key_file: b.pem\n  client_names: [snapctl]\n",
         "agent.yaml:5: tls: client_names needs client_ca_file: without client certificates there is no name"),
        (MINIMAL + "port: 70000\n", "agent.yaml:5: port: input should be less than or equal to 65535"),
        ("engine:\n  type: sqlite\n  path: x\n", "agent.yaml:1: missing required key 'node'"),
        ("node: n1\nengine:\n  type: sqlite\n  path: x\n  journal: wal\n",
         "agent.yaml:5: engine sqlite: unknown key 'journal' (valid keys: type, timeout_s, path)"),
        # The typo'd key also makes 'path' missing: the line is the typo's, which the message names.
        ("node: n1\nengine:\n  type: sqlite\n  pth: x\n",
         "agent.yaml:4: engine sqlite: unknown key 'pth' (valid keys: type, timeout_s, path)"),
        ("node: n1\nengine:\n  type: nosuchdb\n", "agent.yaml:3: unknown engine type 'nosuchdb'"),
        # pydantic's lax mode read these as 1: an agent on port 1, a 1 s engine timeout.
        (MINIMAL + "port: yes\n", "agent.yaml:5: port: expected a number, not a YAML boolean"),
        (MINIMAL + "burst: on\n", "agent.yaml:5: burst: expected a number, not a YAML boolean"),
        ("node: n1\nengine:\n  type: sqlite\n  path: x\n  timeout_s: yes\n",
         "agent.yaml:5: engine.timeout_s: expected a number, not a YAML boolean"),
        # ...and these as true: a live agent that rewrites engine files, one that releases a
        # checkpoint it did not make.
        (MINIMAL + "restore_target: 1\n", "agent.yaml:5: restore_target: expected true or false, not 1"),
        (MINIMAL + "restore_target: 'no'\n", "agent.yaml:5: restore_target: expected true or false, not 'no'"),
        ("node: n1\nengine:\n  type: questdb\n  force_release: 'false'\n",
         "agent.yaml:4: engine.force_release: expected true or false, not 'false'"),
        ("node: n1\nengine: [\n", "agent.yaml:3: invalid YAML"),
        ("- just a list\n", "agent.yaml:1: the agent config must be a mapping"),
    ],
)
def test_errors_name_the_file_line_and_field(text: str, expected: str) -> None:
    with pytest.raises(AgentConfigError) as caught:
        parse_agent_config(text, source="agent.yaml")
    assert caught.value.message.startswith(expected)
    assert "\n" not in str(caught.value)


def test_token_from_file_is_stripped_and_an_empty_file_refused(tmp_path: Path) -> None:
    config = parse_agent_config(MINIMAL + "token_file: tok\n", source="agent.yaml", base_dir=tmp_path)
    (tmp_path / "tok").write_text("  s3cret\n")
    assert config.read_token() == "s3cret"
    (tmp_path / "tok").write_text("\n")
    with pytest.raises(AgentConfigError, match="is empty"):
        config.read_token()
    (tmp_path / "tok").unlink()
    with pytest.raises(AgentConfigError, match="not found"):
        config.read_token()


def test_token_from_the_named_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_agent_config(MINIMAL + "token_env: MY_AGENT_TOKEN\n", base_dir=tmp_path)
    monkeypatch.delenv("MY_AGENT_TOKEN", raising=False)
    assert config.read_token() is None
    monkeypatch.setenv("MY_AGENT_TOKEN", "abc\n")
    assert config.read_token() == "abc"


def test_a_key_given_twice_in_the_agent_config_is_refused_naming_both_lines() -> None:
    # As the inventory does: PyYAML kept the last `engine:`, and the agent served another database.
    with pytest.raises(AgentConfigError) as caught:
        parse_agent_config("node: n1\nengine: {type: sqlite, path: a.db}\nengine: {type: sqlite, path: b.db}\n",
                           source="agent.yaml")
    assert caught.value.message == ("agent.yaml:3: invalid YAML: duplicate key 'engine' (first at line 2): "
                                    "only the last would count")
    assert caught.value.hint == "merge the two 'engine' entries into one, or remove one"


def test_an_agent_config_or_token_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    # Read in the locale's encoding (systemd's and cron's may be C), an accent in a comment was a
    # UnicodeDecodeError traceback at start.
    config = tmp_path / "agent.yaml"
    config.write_bytes(b"node: n1\n# r\xe9sum\xe9\nengine: {type: sqlite, path: a.db}\n")
    with pytest.raises(AgentConfigError) as caught:
        load_agent_config(config)
    assert (caught.value.message, caught.value.hint) == (f"{config}:2: not UTF-8 text (byte 0xe9)",
                                                         "save the config as UTF-8")
    config.write_text(MINIMAL + "token_file: tok\n")
    (tmp_path / "tok").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(AgentConfigError, match=rf"cannot read token_file {tmp_path / 'tok'}: not UTF-8 text$"):
        load_agent_config(config).read_token()


@pytest.mark.parametrize("key", ["state_dir", "token_file", "metrics_token_file", "restore_root"])
def test_an_empty_path_setting_is_refused_not_taken_for_its_default(key: str) -> None:
    # `state_dir: ''` (a template's unset variable) kept the hold record in the default directory,
    # `token_file: ''` read $SNAPCTL_AGENT_TOKEN instead: silently, either way.
    text = MINIMAL + ("restore_target: true\n" if key == "restore_root" else "") + f"{key}: ''\n"
    with pytest.raises(AgentConfigError) as caught:
        parse_agent_config(text, source="agent.yaml")
    line = text.count("\n")
    assert caught.value.message == f"agent.yaml:{line}: {key}: empty: give a value, or leave the key out for its default"
    assert caught.value.hint == "an empty value is often a template's unset variable: set it, or remove the key"


def test_a_value_where_the_tls_block_belongs_says_so_without_a_class_name() -> None:
    # pydantic: "input should be a valid dictionary or instance of TlsConfig".
    with pytest.raises(AgentConfigError) as caught:
        parse_agent_config(MINIMAL + "tls: /etc/tls/agent.pem\n", source="agent.yaml")
    assert caught.value.message == "agent.yaml:5: tls: expected a block of keys, not '/etc/tls/agent.pem'"
    assert caught.value.hint == "give tls its keys (cert_file, key_file, client_ca_file, client_names), or remove `tls:`"
