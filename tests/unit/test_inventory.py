"""Inventory and engine settings: errors name the file, the line and the field; typos are found."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from node_agent.engines.base import validate_engine_settings
from snapctl.config import load_inventory, parse_duration, parse_inventory
from snapctl.errors import BadInputError, InventoryError
from snapctl.orchestrator import BackupOptions, backup
from snapctl.yaml_errors import load_yaml_with_nodes

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


def test_a_relative_restore_agent_path_is_refused_with_its_line_before_anything_is_restored():
    # The scratch agent refuses it (a path not under its engine's paths or restore_root), but only
    # once restore-prepare is sent: after the volumes were made.
    scratch = "    restore: {agent: http://127.0.0.1:7702, agent_path: %s}\n"
    with pytest.raises(InventoryError) as err:
        parse_inventory(BASE + scratch % "restored/db", source="inv.yaml")
    assert str(err.value) == ("inv.yaml:6: nodes[0].restore.agent_path: must be an absolute path, as the scratch "
                              "agent sees it")
    assert parse_inventory(BASE + scratch % "/srv/restored/db").nodes[0].restore.agent_path == "/srv/restored/db"


def test_a_token_file_on_an_embedded_agent_is_refused_rather_than_ignored():
    text = ("cluster: c\nprovider: {type: local}\nnodes:\n  - name: n1\n    agent: embedded\n"
            "    engine: {type: sqlite, path: a.db}\n    token_file: n1.token\n")
    with pytest.raises(InventoryError, match=r"inv.yaml:4: nodes\[0\]: an embedded agent runs inside snapctl and "
                                             r"takes no token: remove its token_file"):
        parse_inventory(text, source="inv.yaml")


@pytest.mark.parametrize(("value", "seconds"), [(30, 30), ("30s", 30), ("15m", 900), ("1.5h", 5400), ("7d", 604800),
                                                ("250ms", 0.25)])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["soon", "10 parsecs", True, "-5s"])
def test_bad_durations(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(("block", "where"), [
    ("retention:\n  keep_last: yes\n", "inv.yaml:7: retention.keep_last"),
    ("retention: {daily: true}\n", "inv.yaml:6: retention.daily"),
    ("retention:\n  weekly: off\n", "inv.yaml:7: retention.weekly"),
    ("retention:\n  monthly: no\n", "inv.yaml:7: retention.monthly"),
    ("policy:\n  concurrency: on\n", "inv.yaml:7: policy.concurrency"),
    ("policy:\n  max_follower_lag: yes\n", "inv.yaml:7: policy.max_follower_lag"),
    ("policy:\n  lease_ttl_s: yes\n", "inv.yaml:7: policy.lease_ttl_s"),
    ("policy:\n  hold_lead_s: on\n", "inv.yaml:7: policy.hold_lead_s"),
    ("drill:\n  timeout_s: true\n", "inv.yaml:7: drill.timeout_s"),
    ("rpo: yes\n", "inv.yaml:6: rpo"),
])
def test_a_yaml_boolean_is_not_read_as_a_number(block, where):
    # pydantic's lax mode reads `keep_last: yes` as 1: a retention that deletes all but one backup.
    with pytest.raises(InventoryError) as err:
        parse_inventory(BASE + block, source="inv.yaml")
    message = str(err.value)
    assert message.startswith(f"{where}: expected ") and "\n" not in message
    assert message.endswith("not a YAML boolean (yes/no, true/false, on/off)")


@pytest.mark.parametrize("value", ["1", "0", "'yes'", "'true'", "null"])
def test_a_flag_takes_true_or_false_and_nothing_read_as_one(value):
    with pytest.raises(InventoryError) as err:
        parse_inventory(BASE + f"policy: {{trigger_engine_snapshot: {value}}}\n", source="inv.yaml")
    message = str(err.value)
    assert message.startswith("inv.yaml:6: policy.trigger_engine_snapshot: expected true or false, not ")
    assert "\n" not in message
    assert parse_inventory(BASE + "policy: {trigger_engine_snapshot: yes}\n",
                           source="inv.yaml").policy.trigger_engine_snapshot is True


@pytest.mark.parametrize("rpo", ["0s", "0"])
def test_an_rpo_of_zero_is_refused_as_every_other_duration_is(rpo):
    with pytest.raises(InventoryError) as err:
        parse_inventory(BASE + f"rpo: {rpo}\n", source="inv.yaml")
    assert str(err.value).startswith("inv.yaml:6: rpo: must be greater than zero")


def test_counts_and_durations_still_take_the_forms_the_docs_use():
    inventory = parse_inventory(BASE + "retention: {keep_last: 3, daily: 0, weekly: 2, monthly: 1}\n"
                                       "policy: {concurrency: 16, max_follower_lag: 1_000, lease_ttl_s: 15s}\n"
                                       "rpo: 24h\n", source="inv.yaml")
    assert (inventory.retention.keep_last, inventory.retention.daily, inventory.retention.weekly) == (3, 0, 2)
    assert (inventory.policy.concurrency, inventory.policy.max_follower_lag) == (16, 1000)
    assert inventory.policy.lease_ttl_s == 15 and inventory.rpo == 86400


LOCAL = "cluster: c\nprovider:\n  type: local\n  store: st\nnodes:\n"
REMOTE_NODE = "  - name: db1\n    agent: http://127.0.0.1:1\n"
AWS = ("cluster: c\nprovider:\n  type: aws\n  region: eu-west-1\nnodes:\n" + REMOTE_NODE
       + "    volumes: [{volume: vol-0123456789abcdef0, name: data}]\n")


@pytest.mark.parametrize(("text", "message", "hint"), [
    (AWS.replace("region", "regoin"), "inv.yaml:4: provider aws: unknown key 'regoin' (valid keys: type, region, ",
     None),
    (AWS.replace("  region: eu-west-1\n", ""), "inv.yaml:2: provider aws: missing required key 'region'",
     "add region: to the provider block"),
    (AWS.replace("region: eu-west-1", "region: eu-west-1\n  max_attempts: yes"),
     "inv.yaml:5: provider aws: max_attempts: expected a number, not a YAML boolean", None),
    (AWS.replace("type: aws\n  region: eu-west-1", "type: gcp\n  project: my-project\n  guest_flush: 0"),
     "inv.yaml:5: provider gcp: guest_flush: expected true or false, not 0", None),
    (LOCAL.replace("store: st", "reflnk: auto") + REMOTE_NODE + "    volumes: [data]\n",
     "inv.yaml:4: provider local: unknown key 'reflnk' (valid keys: type, store, reflink)", None),
    (LOCAL.replace("type: local", "type: ibm") + REMOTE_NODE, "inv.yaml:3: unknown provider type 'ibm'",
     "installed providers: "),
    (LOCAL.replace("store: st", "store: data/../inv.yaml/st") + REMOTE_NODE + "    volumes: [data]\n",
     "inv.yaml:2: provider.store ", "set provider.store to a directory"),
    (LOCAL + "  - name: db1\n    agent: embedded\n    engine:\n      type: sqlite\n      pathh: a.db\n"
     "    volumes: [data]\n", "inv.yaml:10: node db1: engine sqlite: unknown key 'pathh' (valid keys: ", None),
    (LOCAL + "  - name: db1\n    agent: embedded\n    engine: {type: sqlite, path: a.db, timeout_s: on}\n"
     "    volumes: [data]\n", "inv.yaml:8: node db1: engine sqlite: timeout_s: expected a number, not a YAML ", None),
    (LOCAL + "  - name: db1\n    agent: embedded\n    engine: {type: mongo}\n    volumes: [data]\n",
     "inv.yaml:8: unknown engine type 'mongo'", "valid engine types: "),
    (LOCAL + REMOTE_NODE + "    volumes:\n      - data\n      - {name: gone, path: gone}\n",
     "inv.yaml:10: node db1: volume gone path ", None),
    (LOCAL + REMOTE_NODE + "    volumes:\n      - data\n      - {name: other, path: data}\n      - {path: data}\n",
     "inv.yaml:11: node db1: volume name 'data' is used twice", "volume names must be unique per node"),
    (LOCAL + REMOTE_NODE, "inv.yaml:6: node db1: no volumes listed", "add e.g. volumes: "),
    (LOCAL + REMOTE_NODE + "    volumes: [{name: data, path: yes}]\n",
     "inv.yaml:8: node db1: volumes[0]: path must be a directory path, not bool True", "e.g. {name: data"),
], ids=["provider-unknown-key", "provider-missing-key", "provider-boolean", "provider-flag",
        "local-unknown-key",
        "unknown-provider", "store-not-a-directory", "engine-unknown-key", "engine-boolean", "unknown-engine",
        "volume-path", "volume-name-twice", "no-volumes", "volume-path-boolean"])
def test_provider_engine_and_volume_errors_name_file_and_line_like_the_rest(tmp_path, text, message, hint):
    (tmp_path / "data").mkdir()
    (tmp_path / "inv.yaml").write_text(text)
    inventory = load_inventory(tmp_path / "inv.yaml")
    with pytest.raises(InventoryError) as err:
        asyncio.run(backup(inventory, BackupOptions(dry_run=True)))
    assert err.value.message.startswith(str(tmp_path / message)), err.value.message
    assert "\n" not in err.value.message
    assert err.value.hint is None if hint is None else err.value.hint.startswith(hint)


def test_engine_settings_typo_names_the_key_and_the_valid_ones():
    with pytest.raises(BadInputError) as err:
        validate_engine_settings({"type": "sqlite", "pathx": "db.sqlite"})
    assert "unknown key 'pathx'" in str(err.value) and "path" in str(err.value)


def test_engine_settings_nested_typo_lists_the_nested_block_keys():
    with pytest.raises(BadInputError) as err:
        validate_engine_settings({"type": "aresdb", "debug_url": "http://127.0.0.1:1",
                                  "tables": [{"name": "t", "shardz": [0]}]})
    assert "unknown key 'tables[0].shardz' (valid keys: name, shards)" in str(err.value)


def test_unknown_engine_type_lists_the_installed_ones():
    with pytest.raises(BadInputError) as err:
        validate_engine_settings({"type": "mongo"})
    assert "unknown engine type 'mongo'" in str(err.value)
    assert all(name in err.value.hint for name in ("sqlite", "tarantool", "etcd", "questdb", "dingodb", "aresdb"))


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("250ms", 0.25), (1.5, 1.5), (None, None)])
def test_hold_lead_takes_a_duration_and_zero_turns_it_off(value, seconds):
    text = BASE + f"policy:\n  hold_lead_s: {'null' if value is None else value}\n"
    assert parse_inventory(text, source="inv.yaml").policy.hold_lead_s == seconds


def test_hold_lead_beyond_ten_seconds_is_refused_with_its_line():
    with pytest.raises(InventoryError, match=r"inv\.yaml:\d+: policy\.hold_lead_s"):
        parse_inventory(BASE + "policy:\n  hold_lead_s: 30s\n", source="inv.yaml")


def test_a_lease_longer_than_the_agents_accept_is_refused_with_its_line():
    # Agents cap a lease at 3600 s (422 above it): such an inventory passed, and every run failed.
    with pytest.raises(InventoryError, match=r"inv\.yaml:\d+: policy\.lease_ttl_s: at most 3600s"):
        parse_inventory(BASE + "policy:\n  lease_ttl_s: 2h\n", source="inv.yaml")
    assert parse_inventory(BASE + "policy:\n  lease_ttl_s: 1h\n", source="inv.yaml").policy.lease_ttl_s == 3600


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # snapctl's: error marks read alike


@pytest.mark.parametrize("text", [
    "a: 1\nb: [2.5, .inf, 0x1F, 1_000, 1:30, ~, yes, off, 2024-01-02, !!str 7, 'q', \"dq\"]\nc: |\n  block\n",
    "base: &b {x: 1, y: 2}\nchild: {<<: *b, y: 3}\n",  # merge key
    "a: &a [1, 2]\nb: *a\n",  # alias: one shared list
    "a: &a [1, *a]\n",  # recursive alias
    "o: !!omap [a: 1, b: 2]\ns: !!set {a, b}\nbin: !!binary aGk=\n1: one\ntrue: t\n",
    "- just\n- a list\n", "a scalar\n", "",
])
def test_yaml_reads_like_pyyaml_safe_load(text):
    assert repr(load_yaml_with_nodes(text)[1]) == repr(yaml.load(text, Loader=_SAFE_LOADER))


@pytest.mark.parametrize("text", ["? [1, 2]\n: x\n", "a: !custom tag\n", "a: !custom {x: 1}\n", "a: [\n"])
def test_yaml_that_pyyaml_refuses_is_refused_alike(text):
    with pytest.raises(yaml.YAMLError) as ours:
        load_yaml_with_nodes(text)
    with pytest.raises(yaml.YAMLError) as theirs:
        yaml.load(text, Loader=_SAFE_LOADER)
    assert str(ours.value) == str(theirs.value)


def test_parsing_leaves_the_garbage_collector_as_it_found_it():
    import gc

    assert gc.isenabled()
    parse_inventory(BASE)
    with pytest.raises(InventoryError):
        parse_inventory("nodes: [\n")
    assert gc.isenabled()
    gc.disable()
    try:
        parse_inventory(BASE)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_provider_process_names_its_choices_when_the_value_is_not_one():
    assert parse_inventory(BASE + "policy:\n  provider_process: always\n", source="inv.yaml").policy.provider_process == "always"
    with pytest.raises(InventoryError, match=r"inv\.yaml:\d+: policy\.provider_process.*'auto'.*'always'.*'never'"):
        parse_inventory(BASE + "policy:\n  provider_process: sometimes\n", source="inv.yaml")


NODE_AT = "cluster: c\nprovider: {type: local}\nnodes:\n  - name: n1\n    agent: %s\n"


@pytest.mark.parametrize(("agent", "stored", "host", "netloc"), [
    ("http://[fd00::1]:7700", "http://[fd00::1]:7700", "fd00::1", "[fd00::1]:7700"),
    ("https://[::1]:7700/", "https://[::1]:7700", "::1", "[::1]:7700"),
    ("http://agent-3.db.internal:7700", "http://agent-3.db.internal:7700", "agent-3.db.internal",
     "agent-3.db.internal:7700"),
])
def test_an_agent_address_may_be_an_ipv6_literal_in_brackets(agent, stored, host, netloc):
    from snapctl.agent_transport import _split

    node = parse_inventory(NODE_AT % agent).nodes[0]
    assert node.agent == stored
    # what the transport connects to, and the Host header it sends
    assert _split(node.agent + "/v1/status")[:3] == (host, 7700, netloc)


@pytest.mark.parametrize(("agent", "message"), [
    ("http://fd00::1:7700", r"'http://fd00::1:7700' is not an agent address: put an IPv6 address in brackets"),
    ("http://[db-1]:7700", r"'db-1' in brackets is not an IPv6 address"),
    ("http://[::1]:70000", r"port 70000 is not between 1 and 65535"),
])
def test_a_bad_ipv6_agent_address_says_what_is_wrong(agent, message):
    with pytest.raises(InventoryError, match=r"inv\.yaml:5: nodes\[0\]\.agent: .*" + message):
        parse_inventory(NODE_AT % agent, source="inv.yaml")


def test_the_os_reason_an_inventory_cannot_be_read_is_lowercase_like_every_message(tmp_path):
    with pytest.raises(InventoryError) as info:
        load_inventory(tmp_path)
    assert str(info.value) == f"{tmp_path}: cannot read inventory: is a directory"


def test_a_malformed_url_is_not_repeated_in_its_error_it_may_carry_credentials(tmp_path):
    (tmp_path / "inv.yaml").write_text(
        "cluster: c\nprovider: {type: aws, region: eu-west-1, endpoint_url: 'AKIAX:wJalrSECRET@minio.local:9000'}\n"
        "nodes:\n  - {name: n1, agent: 'http://127.0.0.1:7701', volumes: [{name: data, volume_id: vol-1}]}\n")
    from snapctl.providers import provider_settings

    with pytest.raises(InventoryError) as caught:
        provider_settings(load_inventory(tmp_path / "inv.yaml"))
    assert str(caught.value.message).endswith("inv.yaml:2: provider aws: endpoint_url: not a URL: it must begin "
                                              "with http:// or https://, with no user:password@ (no @ at all) in it")
    assert "SECRET" not in str(caught.value) and "AKIAX" not in str(caught.value)


def test_trigger_timeout_s_is_a_duration_like_the_other_timeouts():
    assert parse_inventory(BASE, source="inv.yaml").policy.trigger_timeout_s == 600
    assert parse_inventory(BASE + "policy: {trigger_timeout_s: 15m}\n", source="inv.yaml").policy.trigger_timeout_s == 900
    with pytest.raises(InventoryError) as err:
        parse_inventory(BASE + "policy: {trigger_timeout_s: 0s}\n", source="inv.yaml")
    assert str(err.value).startswith("inv.yaml:6: policy.trigger_timeout_s: must be greater than zero")


@pytest.mark.parametrize(("block", "message"), [
    ("auth:\n", "inv.yaml:6: auth: empty, where a block of keys belongs"),
    ("auth: secrets/agent.token\n", "inv.yaml:6: auth: expected a block of keys, not 'secrets/agent.token'"),
])
def test_an_empty_or_scalar_block_says_what_belongs_there_without_a_class_name(block, message):
    # pydantic said "auth: input should be a valid dictionary or instance of AgentAuth", and no hint.
    with pytest.raises(InventoryError) as err:
        parse_inventory(BASE + block, source="inv.yaml")
    assert err.value.message == message
    assert err.value.hint == ("give auth its keys (token_file, token_env, ca_file, client_cert_file, "
                              "client_key_file), or remove `auth:`")


@pytest.mark.parametrize(("block", "line", "where"), [
    ("catalog: {path: ''}\n", 6, "catalog.path"),
    ("auth: {token_file: ''}\n", 6, "auth.token_file"),
    ("    token_file: ' '\n", 6, "nodes[0].token_file"),
])
def test_an_empty_setting_is_refused_not_taken_for_its_default(block, line, where):
    with pytest.raises(InventoryError) as err:
        parse_inventory(BASE + block, source="inv.yaml")
    assert err.value.message == f"inv.yaml:{line}: {where}: empty: give a value, or leave the key out for its default"
    assert err.value.hint == "an empty value is often a template's unset variable: set it, or remove the key"


def test_an_empty_local_store_is_refused_not_taken_for_the_default_store(tmp_path):
    # `store: "${STORE}"` with STORE unset sent the snapshots to $XDG_STATE_HOME/snapctl/snapshots.
    from snapctl.providers import provider_settings

    inventory = parse_inventory(BASE.replace("{type: local}", "{type: local, store: ''}"), source="inv.yaml",
                                base_dir=tmp_path)
    with pytest.raises(BadInputError) as err:
        provider_settings(inventory)
    assert err.value.message == ("inv.yaml:2: provider local: store: empty: give a value, or leave the key out "
                                 "for its default")
    assert err.value.hint == "an empty value is often a template's unset variable: set it, or remove the key"
