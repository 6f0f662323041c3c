"""Inventory and engine settings: errors name the file, the line and the field; typos are found."""

from __future__ import annotations

import pytest

from node_agent.engines.base import validate_engine_settings
from snapctl.config import load_inventory, parse_duration, parse_inventory
from snapctl.errors import BadInputError, InventoryError

BASE = "cluster: c\nprovider: {type: local}\nnodes:\n  - name: n1\n    agent: http://127.0.0.1:7701\n"


def test_a_valid_inventory_resolves_paths_against_its_own_directory(tmp_path):
    (tmp_path / "inv.yaml").write_text(BASE + "catalog: {path: cat}\npolicy: {lease_ttl_s: 2m}\nrpo: 12h\n")
    inventory = load_inventory(tmp_path / "inv.yaml")
    assert inventory.resolve(inventory.catalog.path) == tmp_path.resolve() / "cat"
    assert inventory.policy.lease_ttl_s == 120
    assert inventory.rpo == 12 * 3600


def test_a_typo_is_reported_as_the_unknown_key_not_as_a_missing_one():
    with pytest.raises(InventoryError) as err:
        parse_inventory("cluster: c\nprovider: {type: local}\nnodez: []\n", source="inv.yaml")
    assert "inv.yaml:3: unknown key 'nodez'" in str(err.value)


def test_nested_unknown_key_lists_the_valid_keys_of_its_own_block():
    with pytest.raises(InventoryError) as err:
        parse_inventory(BASE + "retention:\n  keep_lats: 3\n", source="inv.yaml")
    assert "inv.yaml:7: unknown key 'retention.keep_lats'" in str(err.value)
    assert "valid keys: keep_last, daily, weekly, monthly" in str(err.value)


def test_embedded_agent_without_engine_is_refused_with_line():
    text = "cluster: c\nprovider: {type: local}\nnodes:\n  - name: n1\n    agent: embedded\n"
    with pytest.raises(InventoryError, match=r"inv.yaml:4: nodes\[0\]: an embedded agent needs an 'engine' block"):
        parse_inventory(text, source="inv.yaml")


@pytest.mark.parametrize(("value", "seconds"), [(30, 30), ("30s", 30), ("15m", 900), ("1.5h", 5400), ("7d", 604800),
                                                ("250ms", 0.25)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "10 parsecs", True, "-5s"])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_engine_settings_typo_names_the_key_and_the_valid_ones():
    with pytest.raises(BadInputError) as err:
        validate_engine_settings({"type": "sqlite", "pathx": "db.sqlite"})
    assert "unknown key 'pathx'" in str(err.value) and "path" in str(err.value)


def test_engine_settings_nested_typo_lists_the_nested_block_keys():
    with pytest.raises(BadInputError) as err:
        validate_engine_settings({"type": "aresdb", "debug_url": "http://127.0.0.1:1",
                                  "tables": [{"name": "t", "shardz": [0]}]})
    assert "unknown key 'tables.0.shardz' (valid keys: name, shards)" in str(err.value)


def test_unknown_engine_type_lists_the_installed_ones():
    with pytest.raises(BadInputError) as err:
        validate_engine_settings({"type": "mongo"})
    assert "unknown engine type 'mongo'" in str(err.value)
    assert all(name in err.value.hint for name in ("sqlite", "tarantool", "etcd", "questdb", "dingodb", "aresdb"))
