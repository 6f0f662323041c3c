"""Engines' password files (tarantool, etcd): the first line as written, read again on every use,
and a file other users can read warned about once in the agent's log, never refused."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from node_agent.engines.base import validate_engine_settings
from node_agent.engines.etcd import EtcdEngine
from node_agent.engines.tarantool import TarantoolEngine
from snapctl.errors import EngineError

ENGINES = {
    "tarantool": lambda tmp, file: TarantoolEngine(
        validate_engine_settings({"type": "tarantool", "work_dir": str(tmp), "user": "backup",
                                  "password_file": file}), base_dir=tmp),
    "etcd": lambda tmp, file: EtcdEngine(
        validate_engine_settings({"type": "etcd", "backup_dir": str(tmp / "backups"), "user": "backup",
                                  "password_file": file}), base_dir=tmp),
}


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_password_file_others_can_read_is_warned_about_once_and_still_used(
        engine: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "backup.password"
    secret.write_text(" pass phrase \nrotated 2026-12-01\n")
    secret.chmod(0o644)
    adapter = ENGINES[engine](tmp_path, "backup.password")  # relative: to the config's directory
    with caplog.at_level(logging.WARNING):
        assert adapter._password() == " pass phrase "  # as written: a password may have spaces
        secret.write_text("rotated\n")  # picked up without a restart
        assert adapter._password() == "rotated"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [(f"engine {engine}: password_file {secret} is readable by its group and other users "
                        f"(mode 0644); chmod 600 {secret} so that only the agent's user can read it")]
    assert "pass phrase" not in caplog.text and "rotated\n" not in caplog.text


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_password_file_only_its_owner_reads_is_read_without_a_word(
        engine: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "backup.password"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    with caplog.at_level(logging.WARNING):
        assert ENGINES[engine](tmp_path, str(secret))._password() == "s3cret"
    assert caplog.records == []


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_a_missing_password_file_is_an_engine_error_naming_it(engine: str, tmp_path: Path) -> None:
    with pytest.raises(EngineError) as caught:
        ENGINES[engine](tmp_path, "nowhere.password")._password()
    assert caught.value.message == (f"cannot read {engine} password file {tmp_path / 'nowhere.password'}: "
                                    "no such file or directory")
