"""Where snapctl and the agent keep state when nothing names a place: ``$XDG_STATE_HOME`` only when
absolute (the XDG spec), and systemd's ``$STATE_DIRECTORY`` before the home directory, which
deploy/snapctl-backup.service and snapctl-agent.service hide (``ProtectHome=yes``): one rule for both."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from node_agent.hold_record import default_state_dir
from snapctl.catalog.stores import default_catalog_dir
from snapctl.embedded_records import embedded_state_dir
from snapctl.state_home import snapctl_state_dir


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_STATE_HOME", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    return home


# snapctl's own, and the agent's (its hold record's): one rule, each under its own directory name.
STATE_DIRS = {"snapctl": snapctl_state_dir, "snapctl-agent": default_state_dir}
whose = pytest.mark.parametrize("app", list(STATE_DIRS))


@whose
@pytest.mark.parametrize(("env", "expected"), [
    ({}, "HOME/.local/state/APP"),
    ({"XDG_STATE_HOME": "/x/state"}, "/x/state/APP"),
    ({"XDG_STATE_HOME": ""}, "HOME/.local/state/APP"),
    ({"STATE_DIRECTORY": "/var/lib/snapctl"}, "/var/lib/snapctl"),
    ({"STATE_DIRECTORY": "/var/lib/snapctl:/var/lib/other"}, "/var/lib/snapctl"),  # systemd's first
    ({"STATE_DIRECTORY": ""}, "HOME/.local/state/APP"),
    # The operator's, over the unit's: the agent put the unit's first.
    ({"XDG_STATE_HOME": "/x/state", "STATE_DIRECTORY": "/var/lib/snapctl"}, "/x/state/APP"),
    ({"XDG_STATE_HOME": "state"}, "HOME/.local/state/APP"),  # relative: ignored, as the spec says
    ({"XDG_STATE_HOME": "state", "STATE_DIRECTORY": "/var/lib/snapctl"}, "/var/lib/snapctl"),
    # Relative: not systemd's, which are absolute; the agent took it from the cwd.
    ({"STATE_DIRECTORY": "relative"}, "HOME/.local/state/APP"),
], ids=["none", "xdg", "xdg-empty", "systemd", "systemd-two", "systemd-empty", "xdg-over-systemd", "xdg-relative",
        "xdg-relative-systemd", "systemd-relative"])
def test_the_state_directory(home: Path, app: str, env: dict[str, str], expected: str) -> None:
    assert STATE_DIRS[app](env) == Path(expected.replace("HOME", str(home)).replace("APP", app))


@whose
def test_a_home_state_directory_an_earlier_run_kept_stays_in_use_until_the_unit_writes_its_own(
        home: Path, tmp_path: Path, app: str) -> None:
    # A unit given StateDirectory= for a user whose home is outside /home (not hidden): the catalog
    # and store there hold every backup made so far; moved to $STATE_DIRECTORY, they looked gone.
    # The agent's: a hold record a killed agent left there, which the next must find to release.
    unit = tmp_path / "var-lib-snapctl"
    unit.mkdir()
    in_home = home / ".local" / "state" / app
    in_home.mkdir(parents=True)
    assert STATE_DIRS[app]({"STATE_DIRECTORY": str(unit)}) == in_home
    assert STATE_DIRS[app]({"XDG_STATE_HOME": "/x/state", "STATE_DIRECTORY": str(unit)}) == Path("/x/state") / app


@whose
def test_once_the_unit_wrote_its_state_a_home_directory_made_by_hand_does_not_move_it(
        home: Path, tmp_path: Path, app: str) -> None:
    # A `sudo -u snapctl snapctl status` by hand made the home directory's: the next timer run
    # took it for an earlier snapctl's, and went on with another catalog, store and hold records.
    unit = tmp_path / "var-lib-snapctl"
    (unit / "catalog").mkdir(parents=True)
    (home / ".local" / "state" / app / "embedded").mkdir(parents=True)
    assert STATE_DIRS[app]({"STATE_DIRECTORY": str(unit)}) == unit


@pytest.mark.parametrize("where", ["catalog", "embedded records", "agent"])
def test_a_relative_xdg_state_home_is_ignored_by_every_default_not_taken_from_the_cwd(
        home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, where: str) -> None:
    # catalog/stores.py ignored it; the embedded records and the agent used it relative to the cwd.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", "state")
    state = home / ".local" / "state"
    if where == "catalog":
        assert default_catalog_dir() == state / "snapctl" / "catalog"
    elif where == "embedded records":
        assert embedded_state_dir(os.environ, "prod") == state / "snapctl" / "embedded" / "prod"
    else:
        assert default_state_dir(os.environ) == state / "snapctl-agent"


def test_under_systemd_the_default_catalog_and_store_are_in_its_state_directory_not_the_hidden_home(
        tmp_path: Path) -> None:
    # deploy/snapctl-backup.service: ProtectHome=yes and StateDirectory=snapctl, no XDG_STATE_HOME.
    # A home snapctl cannot write stands for the one systemd hides.
    home = tmp_path / "home"
    home.mkdir(mode=0o500)
    state = tmp_path / "var-lib-snapctl"
    state.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    db = data / "app.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("cluster: prod\nprovider: {type: local}\nnodes:\n"
                         f"  - {{name: n1, agent: embedded, engine: {{type: sqlite, path: {db}}}, "
                         f"volumes: [{{name: data, path: {data}}}]}}\n")
    env = {k: v for k, v in os.environ.items() if k != "XDG_STATE_HOME"}
    env.update(HOME=str(home), STATE_DIRECTORY=str(state))
    try:
        done = subprocess.run([sys.executable, "-m", "snapctl.cli", "backup", "--no-prune", "-i", str(inventory)],
                              capture_output=True, text=True, env=env, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert (state / "catalog" / "prod" / "index.json").is_file()
        assert (state / "snapshots").is_dir()
        assert list(home.iterdir()) == []
    finally:
        home.chmod(0o700)
