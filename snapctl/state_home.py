"""Where snapctl keeps its own state when the inventory names no place: the default catalog (and
status's memory beside it), the embedded agents' hold records, the local provider's default store.

``$XDG_STATE_HOME/snapctl`` where it is set; else ``~/.local/state/snapctl`` where it exists
already (the catalog and snapshots an earlier snapctl kept there stay found); else systemd's
``$STATE_DIRECTORY`` (a unit's ``StateDirectory=``, as deploy/snapctl-backup.service has: its
``ProtectHome=yes`` hides the home directory); else ``~/.local/state/snapctl``.
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
    """snapctl's own state directory (the module's docstring says which). ``$STATE_DIRECTORY`` only
    below an explicit ``$XDG_STATE_HOME``: an operator's own setting wins over the unit's; and below
    a home directory's that exists, so that a unit given ``StateDirectory=`` does not move the
    default catalog and store away from the backups made before (they would look gone)."""
    env = os.environ if env is None else env
    if os.path.isabs(env.get("XDG_STATE_HOME", "")):
        return state_home(env) / APP_DIR
    in_home = state_home(env) / APP_DIR
    try:
        if in_home.is_dir():
            return in_home
    except OSError:  # a home directory it may not look into (ProtectHome=): not in use there
        pass
    # systemd sets it to one absolute path per StateDirectory= entry, joined with ':': the first.
    systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if os.path.isabs(systemd):
        return Path(systemd)
    return in_home
