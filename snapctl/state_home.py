"""Where snapctl keeps its own state when the inventory names no place: the default catalog (and
status's memory beside it), the embedded agents' hold records, the local provider's default store;
and where the node agent keeps its hold record when its config names no ``state_dir``
(``snapctl-agent`` for ``snapctl`` below: node_agent/hold_record.py). One rule for both, so that
what the docs say of one holds for the other.

``$XDG_STATE_HOME/snapctl`` where it is set; else systemd's ``$STATE_DIRECTORY`` (a unit's
``StateDirectory=``, as deploy/snapctl-backup.service has: its ``ProtectHome=yes`` hides the home
directory), but ``~/.local/state/snapctl`` while that is still empty and this one exists (the
catalog and snapshots an earlier snapctl kept there stay found); else ``~/.local/state/snapctl``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

APP_DIR = "snapctl"


def state_home(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_STATE_HOME``, else ``~/.local/state``. The XDG spec says a relative value is invalid
    and must be ignored: used, it would be relative to whatever directory snapctl was started in."""
    value = (os.environ if env is None else env).get("XDG_STATE_HOME", "")
    return Path(value) if os.path.isabs(value) else Path.home() / ".local" / "state"


def snapctl_state_dir(env: Mapping[str, str] | None = None) -> Path:
    """snapctl's own state directory (the module's docstring says which)."""
    return app_state_dir(APP_DIR, env)


def app_state_dir(app: str, env: Mapping[str, str] | None = None) -> Path:
    """``app``'s state directory: ``snapctl``'s, or the agent's. ``$STATE_DIRECTORY`` only
    below an explicit ``$XDG_STATE_HOME``: an operator's own setting wins over the unit's. Under a
    unit, the home directory's only while ``$STATE_DIRECTORY`` is still empty: a unit given
    ``StateDirectory=`` does not move the default catalog and store away from the backups an
    earlier snapctl made there (they would look gone), nor the agent from the hold record an agent
    run by hand and killed left there, and once the unit has written its own, a
    snapctl run by hand that makes the home directory's does not move the unit back to it."""
    env = os.environ if env is None else env
    in_home = state_home(env) / app
    if os.path.isabs(env.get("XDG_STATE_HOME", "")):
        return in_home
    # systemd sets it to one absolute path per StateDirectory= entry, joined with ':': the first.
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if not os.path.isabs(systemd):
        return in_home
    if _holds_nothing(Path(systemd)) and _is_dir(in_home):
        return in_home
    return Path(systemd)


def _holds_nothing(directory: Path) -> bool:
    try:
        return next(directory.iterdir(), None) is None
    except OSError:  # not made yet (systemd makes it before the unit starts): nothing in it
        return True


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a home directory it may not look into (ProtectHome=): not in use there
        return False
