"""The agent's hold record: one small file saying which run's hold the engine is being given, or
holds, written before the engine's prepare call and removed once that hold has ended.

An agent killed outright (SIGKILL, the OOM killer, a crash) cannot release what it held, and the
agent started after it knows nothing of that run from memory: the record is how it finds the
hold to release it (docs/agent.md, "An engine left held"). One file per agent, named after its
node and its engine (type and data paths), so agents sharing a host and a state directory never
read each other's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from snapctl.errors import BadInputError, EngineError, os_reason
from snapctl.timestamps import parse_utc, utc_text

log = logging.getLogger("snapctl.agent")

APP_DIR = "snapctl-agent"


@dataclass(frozen=True)
class HoldRecord:
    run_id: str
    engine: str  # the engine type, as in the agent's config
    began_at: datetime  # wall clock just before the engine's prepare call: nothing of the run's is older
    lease_expires_at: datetime  # as its prepare set it (renewals are not written: the record is for a dead agent)
    facts: dict[str, Any] = field(default_factory=dict)  # what the engine needs to find its hold again

    def to_json(self) -> str:
        return json.dumps({"run_id": self.run_id, "engine": self.engine, "began_at": utc_text(self.began_at),
                           "lease_expires_at": utc_text(self.lease_expires_at), "facts": self.facts}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> HoldRecord:
        data = json.loads(text)
        return cls(str(data["run_id"]), str(data["engine"]), parse_utc(str(data["began_at"])),
                   parse_utc(str(data["lease_expires_at"])), dict(data.get("facts") or {}))


class HoldRecords:
    """The one record file of one agent. Writes are atomic (a temp file, fsync, rename): a record
    read after a kill is the old one or the new one, never half of either."""

    def __init__(self, directory: Path, node: str, engine_type: str, data_paths: list[Path]) -> None:
        identity = "\0".join([engine_type, *(str(p) for p in data_paths)])
        digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
        self.path = directory / f"hold-{node}-{digest}.json"

    def write(self, record: HoldRecord, *, durable: bool = True) -> None:
        """``durable=False``: no fsync, for a record rewritten while the engine is held (each fsync
        there lengthens the freeze); the rename alone is atomic against a killed process, and the
        record it refines was written durably."""
        tmp = self.path.with_suffix(".json.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            with open(fd, "w") as handle:
                handle.write(record.to_json() + "\n")
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            raise EngineError(f"cannot write the hold record {self.path}: {os_reason(exc)}",
                              hint="the agent's state_dir must stay writable by its user (docs/agent.md)") from exc

    def load(self) -> HoldRecord | None:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("cannot read the hold record %s: %s; a hold it names is not released", self.path, os_reason(exc))
            return None
        try:
            return HoldRecord.from_json(text)
        except (ValueError, KeyError, TypeError) as exc:
            # Edited by hand, or cut short by a power loss: not guessed at. Moved aside, bytes kept,
            # or the next prepare's record would overwrite the only word of a hold it may name.
            aside = self._move_aside()
            log.error("the hold record %s cannot be read (%s): %s; a hold it names is not released "
                      "(docs/agent.md, 'an engine left held')", self.path, exc if text.strip() else "empty",
                      f"moved to {aside}" if aside else "left in place")
            return None

    def unreadable(self) -> list[Path]:
        """Records moved aside as unreadable, at this start or an earlier one, until deleted by hand."""
        return sorted(self.path.parent.glob(f"{self.path.name}.unreadable*"))

    def _move_aside(self) -> Path | None:
        for n in range(100):  # an earlier one is evidence too: never renamed over
            aside = self.path.with_name(f"{self.path.name}.unreadable" + (f".{n}" if n else ""))
            if not aside.exists():
                try:
                    os.rename(self.path, aside)
                except OSError as exc:
                    log.error("cannot move the unreadable hold record %s aside: %s", self.path, os_reason(exc))
                    return None
                return aside
        return None

    def remove(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            # Harmless at the next start: what the record names is released only if it is that run's.
            log.warning("cannot remove the hold record %s: %s", self.path, os_reason(exc))


def default_state_dir(env: Mapping[str, str]) -> Path:
    """systemd's StateDirectory= (``$STATE_DIRECTORY``, its first path), else the XDG state home."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / APP_DIR
    return Path("~/.local/state").expanduser() / APP_DIR


def ready_state_dir(directory: Path, setting: str) -> Path:
    """``directory`` created (0700) if missing, and checked writable: at start, not at the first prepare."""
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create the agent's state_dir {directory}: {os_reason(exc)}",
                            hint=f"set state_dir in {setting} to a directory the agent's user can write") from exc
    if not directory.is_dir() or not os.access(directory, os.W_OK | os.X_OK):
        raise BadInputError(f"the agent's state_dir {directory} is not a directory its user can write",
                            hint=f"set state_dir in {setting} to a directory the agent's user can write")
    return directory

