"""The engine contract: what the agent needs from an adapter for one storage engine.

Adapters are discovered through the ``snapctl.engines`` entry-point group (built-ins too),
each entry point naming an ``EngineFactory``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from node_agent.models import EngineState, EngineStatus, JobResult, VerifyFacts
from snapctl.errors import BadInputError, EngineError, RefusedValue, os_reason
from snapctl.input_files import MAX_SECRET_BYTES, UnfitInputFile, read_regular
from snapctl.secret_files import warn_if_open
from snapctl.units import MAX_DURATION_S


@runtime_checkable
class Engine(Protocol):
    """One storage engine on one node.

    Every method must finish within the adapter's configured timeout or raise
    ``snapctl.errors.EngineError``; an engine that accepts connections and never answers
    must not hang the agent. Methods are called from worker threads, never two at once.
    """

    name: str

    def prepare(self, run_id: str) -> EngineState:
        """Bring the engine into a state where a disk snapshot restores consistently and hold it
        there until ``complete``. Return the evidence a restore must reproduce (facts, position,
        files the snapshot must contain). Calling it again for the run already holding is a no-op
        that returns the same state. Raise ``EngineBusy`` naming the holder when something else
        holds the engine; never take over or release a hold this adapter did not make.

        An adapter whose prepare runs the engine's own snapshot itself, as ``trigger`` would
        (DingoDB's regions, AresDB's shards), sets ``prepare_triggers = True``: a backup's trigger
        step (``--trigger``) skips its node rather than snapshot everything twice."""
        ...

    def complete(self, run_id: str) -> bool | None:
        """Release what ``prepare`` holds. Safe to call twice and when nothing is held. Return False
        when this run's hold had already ended on the engine before this call (the engine restarted,
        or someone else released it): the run's snapshot may not be consistent. None otherwise.

        An adapter whose hold lives on the server, fenced there by run id (Tarantool's pin), may
        also have ``release_left_hold(run_id) -> bool | None``: the agent calls it for a run it
        does not know (a previous agent process held for it and was killed), and answers that
        run's complete from it: True released a hold kept all along, False found it ended, None
        found none of that run's.

        An adapter whose server may carry out a prepare's request after its answer was lost (a
        QuestDB create run late) may have ``tidy() -> bool``: after a failed prepare (or a
        ``release_left_hold`` that raised) the agent calls it every few seconds while no run holds,
        until it returns False (nothing left to watch for); it releases only what that request made.

        The agent keeps a hold record (``node_agent.hold_record``) so that the process started
        after one killed while holding releases that hold. An adapter whose hold outlives the agent
        and is not fenced by run id on the server (QuestDB's checkpoint) has ``hold_facts(run_id) ->
        dict`` (kept in the record once prepare holds) and ``release_recorded_hold(run_id,
        began_at, facts) -> str | None``: release only what the record proves is that run's, say
        what was done, or None while it cannot tell yet (asked again). Otherwise the agent uses
        ``release_left_hold``; an adapter with neither holds nothing that outlives the process.

        An adapter whose hold is a POSIX record lock of its own process (SQLite's fcntl locks) sets
        ``hold_is_process_lock = True``: embedded in snapctl, any close of the file in snapctl's
        process would drop it, so snapctl makes a local provider's copies in another process."""
        ...

    def trigger(self, target: str | None) -> list[JobResult]:
        """Run the engine's own snapshot/checkpoint (for ``target``, or everything when None)
        and return one result per job once each has finished or failed."""
        ...

    def status(self) -> EngineStatus:
        """Version, reachability, whether held (and by whom), raft groups. Never raises for an
        unreachable engine: report ``reachable=False`` with the error."""
        ...

    def verify(self) -> VerifyFacts:
        """Facts about the data as it is now (row counts, checksums, positions), comparable with
        the facts ``prepare`` recorded."""
        ...

    def restore_prepare(self, path: Path | None) -> None:
        """Make restored files at ``path`` (default: the engine's own data path) start cleanly:
        whatever marker or config the engine needs after a disk restore."""
        ...

    def data_paths(self) -> list[Path]:
        """Directories holding the engine's data: what the node's volumes must cover. The first
        names the database the agent claims at start (node_agent/exclusive.py), unless the adapter
        has a ``db_path`` attribute: a database that is one file in a directory (SQLite)."""
        ...

    def close(self) -> None:
        """Release connections; called when the agent stops."""
        ...


class EngineSettings(BaseModel):
    """Base for each adapter's settings: unknown keys are rejected with the valid ones listed."""

    # No NaN or infinity in any float of any adapter's settings: pydantic's default takes YAML's
    # .nan and .inf, which `gt=0` lets through or calls "not greater than 0".
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    type: str
    timeout_s: float = 10.0

    @field_validator("*", mode="after")
    @classmethod
    def _seconds_within_reason(cls, value: Any, info: ValidationInfo) -> Any:
        # A duration (named ``*_s``, as every one is) feeds a socket timeout, a deadline or int()
        # (the agent's shutdown grace): past this it overflows (an OverflowError traceback at start
        # for timeout_s: 1e308). Another float (an adapter's ratio, a byte rate) is no duration.
        if isinstance(value, float) and (info.field_name or "").endswith("_s") and value > MAX_DURATION_S:
            raise RefusedValue(f"at most {MAX_DURATION_S:.0f} seconds (ten years), not {value:g}",
                               hint="a number of seconds, e.g. 10")
        return value


class EngineFactory(Protocol):
    """What an entry point in ``snapctl.engines`` names: usually the adapter class itself."""

    settings_model: type[EngineSettings]

    def __call__(self, settings: Any, *, base_dir: Path) -> Engine:  # settings: settings_model
        ...


@cache
def available_engines() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group="snapctl.engines")}


def load_engine_factory(engine_type: str) -> EngineFactory:
    eps = available_engines()
    if engine_type not in eps:
        known = ", ".join(sorted(eps)) or "none installed"
        raise BadInputError(f"unknown engine type {engine_type!r}", hint=f"valid engine types: {known}")
    return eps[engine_type].load()


def validate_engine_settings(raw: Mapping[str, Any]) -> EngineSettings:
    """Validate an ``engine:`` block against its adapter's own settings model."""
    engine_type = raw.get("type")
    if not isinstance(engine_type, str):
        raise BadInputError("engine settings need a 'type'", hint="e.g. type: sqlite")
    factory = load_engine_factory(engine_type)
    try:
        return factory.settings_model.model_validate(dict(raw))
    except ValidationError as exc:
        from snapctl.yaml_errors import first_error, hint_of

        raise BadInputError(f"engine {engine_type}: {describe_validation_error(exc, factory.settings_model)}",
                            hint=hint_of(first_error(exc))) from exc


def create_engine(raw: Mapping[str, Any], *, base_dir: Path) -> Engine:
    settings = validate_engine_settings(raw)
    return load_engine_factory(settings.type)(settings, base_dir=base_dir)


def split_user_info(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its user info, and that user info as basic-auth credentials (or None).
    Only the bare URL may be shown (errors, status, a manifest's evidence) or handed to httpx as a
    URL: httpx logs every request's URL at INFO, user info and password included."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    bare = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    return bare, (unquote(parts.username or ""), unquote(parts.password or ""))


def describe_validation_error(exc: ValidationError, model: type[BaseModel]) -> str:
    """One line for the first error, naming the field; unknown keys list the valid ones."""
    from snapctl.yaml_errors import explain, first_error

    return explain(first_error(exc), model)


class PasswordFile:
    """An engine's ``password_file``: its first line, as written (a password may begin or end with
    a space), read again on every use so that a rotated password is picked up without a restart.
    A file that other users can read or write is warned about once, in the agent's log."""

    def __init__(self, engine: str, path: Path, log: logging.Logger) -> None:
        self.engine, self.path, self._log = engine, path, log
        self._checked = False

    def read(self) -> str:
        try:
            data, mode = read_regular(self.path, MAX_SECRET_BYTES, "a password file")
            lines = data.decode("utf-8").splitlines()
        except OSError as exc:
            raise EngineError(f"cannot read {self.engine} password file {self.path}: {os_reason(exc)}",
                              hint=exc.hint if isinstance(exc, UnfitInputFile) else None) from exc
        if not self._checked:
            self._checked = True
            warn_if_open(self._log, f"engine {self.engine}", "password_file", self.path, mode, "the agent's user")
        return lines[0] if lines else ""
