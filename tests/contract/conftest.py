"""One contract suite for every engine and every provider.

An implementation joins the suite by adding a module next to this file:

- ``engine_<name>_env.py`` with ``make_env(tmp_path) -> contextlib.AbstractContextManager[EngineEnv]``
- ``provider_<name>_env.py`` with ``make_env(tmp_path) -> contextlib.AbstractContextManager[ProviderEnv]``

The suites (``test_engine_contract.py``, ``test_provider_contract.py``) are parametrized over
every such module found here, so a new implementation never edits the suites themselves.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent


@dataclass
class EngineEnv:
    engine: Any  # node_agent.engines.base.Engine
    write: Callable[[int], None]  # add n rows/keys/tuples of data through the engine's own client
    supports_trigger: bool = True
    writes_blocked_while_prepared: bool = False  # e.g. sqlite keeps writers out
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProviderEnv:
    provider: Any  # snapctl.providers.Provider
    volumes: Any  # snapctl.providers.NodeVolumes for node "n1"
    restore_target: Callable[[str], Any]  # name -> snapctl.providers.RestoreTarget
    # Required, not optional: an env without them would pass the restore and delete_volume tests unchecked.
    check_restored: Callable[[Any, str], None]  # (ref, restored id/path) -> assert content
    volume_exists: Callable[[str], bool]  # restored id/path -> is it still there?
    untagged_snapshot: Callable[[], Any] | None = None  # make a snapshot lacking the cluster tag -> SnapshotRef
    foreign_volume: Callable[[], str] | None = None  # make a volume lacking the cluster tag -> its id/path
    cluster: str = "contract"
    extra: dict[str, Any] = field(default_factory=dict)


def _env_modules(prefix: str) -> list[str]:
    return sorted(p.stem for p in HERE.glob(f"{prefix}_*_env.py"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for fixture, prefix in (("engine_env_name", "engine"), ("provider_env_name", "provider")):
        if fixture in metafunc.fixturenames:
            names = _env_modules(prefix)
            metafunc.parametrize(fixture, names, ids=[n.split("_", 1)[1].rsplit("_env", 1)[0] for n in names])


@pytest.fixture
def engine_env(engine_env_name: str, tmp_path: Path):
    module = importlib.import_module(f"tests.contract.{engine_env_name}")
    with module.make_env(tmp_path) as env:
        yield env


@pytest.fixture
def provider_env(provider_env_name: str, tmp_path: Path):
    module = importlib.import_module(f"tests.contract.{provider_env_name}")
    with module.make_env(tmp_path) as env:
        yield env
