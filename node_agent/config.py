"""The agent's config file (YAML), validated once: errors name the file, the line and the field.

Relative paths (token file, TLS files, the engine's data) resolve against the file's directory,
so a config works wherever the agent is started from.
"""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from node_agent.engines.base import EngineSettings, load_engine_factory, validate_engine_settings
from node_agent.hold_record import default_state_dir
from node_agent.ratelimit import DEFAULT_BURST, DEFAULT_RATE_PER_S
from snapctl.errors import BadInputError, os_reason
from snapctl.input_files import MAX_CONFIG_BYTES, UnfitInputFile, check_regular, read_regular
from snapctl.secret_files import (
    UNFIT_TOKEN,
    UNFIT_TOKEN_HINT,
    open_to_others,
    read_first_line,
    unfit_token,
    warn_if_open,
)
from snapctl.yaml_errors import (
    NAME_PATTERN,
    Flag,
    Given,
    describe,
    describe_not_utf8,
    describe_yaml_error,
    dotted,
    first_error,
    hint_of,
    line_of,
    load_yaml_with_nodes,
    mistyped_scalar,
)

DEFAULT_PORT = 7700
DEFAULT_TOKEN_ENV = "SNAPCTL_AGENT_TOKEN"

log = logging.getLogger("snapctl.agent")


class AgentConfigError(BadInputError):
    """An agent config file that is missing, malformed or invalid."""


class Strict(BaseModel):
    # No NaN or infinity: pydantic's default takes YAML's .nan and .inf (`rate_per_s: .inf` started an agent).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TlsConfig(Strict):
    cert_file: str | None = None
    key_file: str | None = None
    client_ca_file: str | None = None  # set: clients must present a certificate signed by this CA (mTLS)
    # set: and that certificate must name one of these (CN, DNS or URI subjectAltName), else 403
    client_names: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _complete(self) -> TlsConfig:
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("needs both cert_file and key_file")
        if self.client_ca_file and not self.cert_file:
            raise ValueError("client_ca_file (mTLS) needs cert_file and key_file too")
        if self.client_names and not self.client_ca_file:
            raise ValueError("client_names needs client_ca_file: without client certificates there is no name to check")
        return self


class AgentConfig(Strict):
    node: str = Field(pattern=NAME_PATTERN)
    listen: str = "127.0.0.1"
    port: int = Field(default=DEFAULT_PORT, ge=0, le=65535)
    token_file: Given | None = None
    token_env: str | None = DEFAULT_TOKEN_ENV
    tls: TlsConfig | None = None
    engine: dict[str, Any]
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # A scraper gets its own token that opens /metrics only: it must not be able to freeze the database.
    metrics_token_file: Given | None = None
    metrics_token_env: str | None = "SNAPCTL_METRICS_TOKEN"
    rate_per_s: float | None = Field(default=DEFAULT_RATE_PER_S, gt=0)  # per client and endpoint; null: off
    burst: int = Field(default=DEFAULT_BURST, ge=1)
    # restore-prepare rewrites engine files (markers, stale shared memory): only on a scratch agent
    # beside restored disks, never on one serving a live database.
    restore_target: Flag = False
    # Where restore-prepare may also act, besides the engine's own data paths: the mount point of a
    # scratch agent's restored disks, when its engine block names other paths (restore.agent_path).
    restore_root: Given | None = None
    # Where the agent keeps its hold record, for the agent process after it should it die holding
    # (docs/agent.md, "An engine left held"); default: default_state_dir(). Relative to this file.
    state_dir: Given | None = None

    # Not part of the file: where it was read from, and the engine block once validated.
    _base_dir: Path = Path(".")
    _source: str = "<memory>"
    _engine_settings: EngineSettings | None = None

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    @property
    def engine_settings(self) -> EngineSettings:
        if self._engine_settings is None:
            self._engine_settings = validate_engine_settings(self.engine)
        return self._engine_settings

    @field_validator("restore_root")
    @classmethod
    def _restore_root_needs_target(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value and not info.data.get("restore_target"):
            raise ValueError("is for a scratch agent beside restored disks: it needs restore_target: true")
        return value

    def state_directory(self) -> Path:
        return self.resolve(self.state_dir) if self.state_dir else default_state_dir(os.environ)

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls and self.tls.cert_file)

    def resolve(self, path: str | os.PathLike[str]) -> Path:
        p = Path(os.path.expanduser(str(path)))
        return p if p.is_absolute() else self._base_dir / p

    def read_token(self) -> str | None:
        """The bearer token from ``token_file`` (stripped), else from ``$token_env``; None: no auth."""
        return self._read_secret(self.token_file, self.token_env, "token_file")

    def read_metrics_token(self) -> str | None:
        """The read-only token for /metrics, from ``metrics_token_file`` or ``$metrics_token_env``."""
        return self._read_secret(self.metrics_token_file, self.metrics_token_env, "metrics_token_file")

    def check_tls_files(self) -> None:
        """Load the TLS files as the server will, so that a bad one is named with its setting at
        start: OpenSSL alone says "[SSL] PEM lib" or "No such file or directory", naming neither."""
        if not (self.tls and self.tls.cert_file and self.tls.key_file):
            return
        cert, key = self.resolve(self.tls.cert_file), self.resolve(self.tls.key_file)
        ca = self.resolve(self.tls.client_ca_file) if self.tls.client_ca_file else None
        for setting, file in (("cert_file", cert), ("key_file", key), ("client_ca_file", ca)):
            if file is not None:
                self._check_readable(f"tls.{setting}", file, secret=setting == "key_file")
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        for setting, file in (("cert_file", cert), ("client_ca_file", ca)):
            if file is None:
                continue
            try:
                probe.load_verify_locations(cafile=file)  # parses every certificate in the file
            except ssl.SSLError as exc:
                what = ("the agent's certificate; its private key goes in tls.key_file" if setting == "cert_file"
                        else "the certificate of the CA that signs the clients' certificates")
                raise AgentConfigError(f"{self._source}: tls.{setting} {file} holds no PEM certificate",
                                       hint=f"give a PEM file with {what}") from exc
        try:
            probe.load_cert_chain(cert, key, password=_no_passphrase)
        except _PassphraseNeeded:
            raise AgentConfigError(
                f"{self._source}: tls.key_file {key} is encrypted, and the agent cannot ask for its passphrase",
                hint=f"decrypt it into a file only the agent's user can read: openssl pkey -in {key} -out NEW.key",
            ) from None
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise AgentConfigError(
                    f"{self._source}: tls.key_file {key} is not the private key of tls.cert_file {cert}",
                    hint="give the key the certificate was issued for, or the certificate of this key",
                ) from exc
            # The certificate parsed above, so what OpenSSL could not read is the key.
            raise AgentConfigError(f"{self._source}: tls.key_file {key} holds no PEM private key",
                                   hint="give the PEM private key that belongs to tls.cert_file") from exc

    def _check_readable(self, setting: str, file: Path, *, secret: bool) -> None:
        try:
            check_regular(file)
            with open(file, "rb") as opened:
                if secret:
                    self._warn_if_open(setting, file, os.fstat(opened.fileno()).st_mode)
        except FileNotFoundError:
            raise AgentConfigError(
                f"{self._source}: {setting} {file} not found",
                hint=f"fix the path in {self._source}; a relative path starts from that file's directory",
            ) from None
        except OSError as exc:
            raise AgentConfigError(f"{self._source}: cannot read {setting} {file}: {os_reason(exc)}",
                                   hint=exc.hint if isinstance(exc, UnfitInputFile) and exc.hint
                                   else "name a file that the agent's user can read") from exc

    def warn_if_engine_password_open(self) -> None:
        """Warn when an engine URL carries a password (QuestDB's url, AresDB's debug_url: they have no
        password_file) and this config file, which then holds it, is open to others. Never the password."""
        settings = self.engine_settings
        holders = [f"engine.{name}" for name, value in settings.model_dump().items()
                   if name.endswith("url") and isinstance(value, str) and urlsplit(value).password]
        if not holders or self._source == "<memory>":
            return
        try:
            exposure = open_to_others(os.stat(self._source).st_mode)
        except OSError:
            return  # read a moment ago: gone since, nothing to warn about
        if exposure:
            log.warning("%s: %s carries a password, and this file is %s; chmod 600 %s so that only the "
                        "agent's user can read it", self._source, " and ".join(holders), exposure, self._source)

    def _read_secret(self, token_file: str | None, token_env: str | None, key: str) -> str | None:
        if token_file:
            file = self.resolve(token_file)
            try:
                token, mode = read_first_line(file)
            except FileNotFoundError:
                raise AgentConfigError(f"{self._source}: {key} {file} not found") from None
            except (OSError, UnicodeDecodeError) as exc:
                why = os_reason(exc) if isinstance(exc, OSError) else "not UTF-8 text"
                raise AgentConfigError(f"{self._source}: cannot read {key} {file}: {why}",
                                       hint=exc.hint if isinstance(exc, UnfitInputFile) else None) from exc
            self._warn_if_open(key, file, mode)
            if not token:
                raise AgentConfigError(
                    f"{self._source}: {key} {file} is empty", hint="put the token on its first line"
                )
            if unfit_token(token):
                raise AgentConfigError(f"{self._source}: {key} {file} {UNFIT_TOKEN}", hint=UNFIT_TOKEN_HINT)
            return token
        if token_env:
            token = os.environ.get(token_env, "").strip() or None
            if token and unfit_token(token):
                raise AgentConfigError(f"${token_env} {UNFIT_TOKEN}", hint=UNFIT_TOKEN_HINT)
            return token
        return None

    def _warn_if_open(self, setting: str, file: Path, mode: int) -> None:
        warn_if_open(log, self._source, setting, file, mode, "the agent's user")


class _PassphraseNeeded(Exception):
    pass


def _no_passphrase() -> str:
    # Without a callback OpenSSL would prompt on the terminal (or fail obscurely under systemd).
    raise _PassphraseNeeded()


def load_agent_config(path: str | os.PathLike[str]) -> AgentConfig:
    if not str(path).strip():  # Path("") is ".", which said ".: cannot read agent config: is a directory"
        raise AgentConfigError("--config '': give the agent config file's path, not an empty string",
                               hint="e.g. --config /etc/snapctl/agent.yaml")
    file = Path(path)
    try:
        data, _ = read_regular(file, MAX_CONFIG_BYTES, "an agent config")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise AgentConfigError(
            f"{file}: agent config file not found", hint="pass --config FILE (see docs/agent.md)"
        ) from None
    except OSError as exc:
        raise AgentConfigError(f"{file}: cannot read agent config: {os_reason(exc)}",
                               hint=exc.hint if isinstance(exc, UnfitInputFile) else None) from exc
    except UnicodeDecodeError as exc:
        raise AgentConfigError(describe_not_utf8(data, exc, str(file)), hint="save the config as UTF-8") from None
    return parse_agent_config(text, source=str(file), base_dir=file.resolve().parent)


def parse_agent_config(text: str, *, source: str = "<agent config>", base_dir: Path | None = None) -> AgentConfig:
    try:
        root, data = load_yaml_with_nodes(text)
    except yaml.YAMLError as exc:
        raise AgentConfigError(describe_yaml_error(exc, text, source), hint=getattr(exc, "hint", None)) from exc
    if not isinstance(data, dict):
        raise AgentConfigError(f"{source}:1: the agent config must be a mapping with 'node' and 'engine'")
    # pydantic's lax mode reads `port: yes` as 1, as the inventory's check_block refuses too.
    _refuse_mistyped_scalars(AgentConfig, data, (), root, source)
    engine_type = data.get("engine", {}).get("type") if isinstance(data.get("engine"), dict) else None
    if isinstance(engine_type, str):
        try:
            factory = load_engine_factory(engine_type)
        except BadInputError:
            factory = None  # an unknown engine type: said with its line below
        if factory is not None:
            _refuse_mistyped_scalars(factory.settings_model, data["engine"], ("engine",), root, source)
    try:
        config = AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise AgentConfigError(describe(exc, root, source, AgentConfig),
                               hint=hint_of(first_error(exc), AgentConfig)) from exc
    config._base_dir = base_dir or Path.cwd()
    config._source = source
    try:
        config._engine_settings = validate_engine_settings(config.engine)
    except BadInputError as exc:
        cause = exc.__cause__
        loc: tuple[Any, ...] = ("engine",)
        if isinstance(cause, ValidationError):
            loc += tuple(first_error(cause)["loc"])  # the error the message names: an unknown key first
        elif "type" in config.engine:
            loc += ("type",)
        line = line_of(root, loc)
        where = f"{source}:{line}" if line else source
        raise AgentConfigError(f"{where}: {exc.message}", hint=exc.hint) from exc
    return config


def _refuse_mistyped_scalars(model: type[BaseModel], data: Any, loc: tuple[Any, ...], root: yaml.Node | None,
                             source: str) -> None:
    mistyped = mistyped_scalar(model, data)
    if mistyped is not None:
        at, message = mistyped
        line = line_of(root, (*loc, *at))
        raise AgentConfigError(f"{source}:{line}: {dotted((*loc, *at))}: {message}" if line else
                               f"{source}: {dotted((*loc, *at))}: {message}")