"""The inventory's top-level `tags:` go onto every snapshot with the provider's own: refused when the
inventory is read (snapctl's own tag names, in any case) or its provider block checked (each
cloud's rules), before any node is held, never by the cloud inside a hold. Other keys starting
with `snapctl-` pass, with a warning: refusing them stopped every command of inventories that
had worked."""

from __future__ import annotations

import ast
import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snapctl.config import load_inventory
from snapctl.errors import InventoryError
from snapctl.orchestrator import BackupOptions, backup
from snapctl.providers import OWN_TAG_KEYS, provider_settings

SUB = "00000000-0000-4000-8000-000000000001"
NOWHERE = "http://127.0.0.1:9"  # should a check be missed, the run goes on to a closed loopback port, no cloud
PROVIDERS = {
    "aws": ({"type": "aws", "region": "eu-west-1", "endpoint_url": NOWHERE},
            {"volume": "vol-0123456789abcdef0", "name": "data"}),
    "gcp": ({"type": "gcp", "project": "my-project-1", "api_endpoint": NOWHERE, "anonymous": True},
            {"disk": "pg-data", "zone": "europe-west1-b"}),
    "azure": ({"type": "azure", "subscription_id": SUB, "resource_group": "rg", "location": "westeurope",
               "base_url": NOWHERE, "insecure_http_for_tests": True, "dummy_credential_for_tests": True},
              {"disk_id": f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks/pg-data"}),
    "local": ({"type": "local", "store": "store"}, {"name": "data", "path": "data"}),
}


def write(tmp_path, provider, tags, block=None):
    """An inventory whose `tags:` block is on line 3 (the block style puts each key on a line of its own)."""
    raw, volume = PROVIDERS[provider]
    (tmp_path / "data").mkdir(exist_ok=True)
    text = yaml.safe_dump({"cluster": "c", "rpo": "24h", "tags": tags, "catalog": {"path": "catalog"},
                           "provider": {**raw, **(block or {})},
                           "nodes": [{"name": "db1", "agent": "http://127.0.0.1:1", "volumes": [volume]}]},
                          sort_keys=False, width=1000)
    assert text.splitlines()[2] == "tags:"
    (tmp_path / "inv.yaml").write_text(text)
    return tmp_path / "inv.yaml"


def many(count, prefix="t"):
    return {f"{prefix}{i}": "v" for i in range(count)}


@pytest.mark.parametrize(("key", "plain"), [("snapctl-restored-from", "restored-from"), ("SNAPCTL-Run", "Run"),
                                            ("snapctl-Restore-Token", "Restore-Token"),
                                            ("snapctl-attached-to", "attached-to"), ("snapctl-drill", "drill")])
@pytest.mark.parametrize("provider", ["aws", "local"])
def test_a_tag_named_as_snapctls_own_is_refused_when_the_inventory_is_read(tmp_path, provider, key, plain):
    # One such tag on every snapshot (snapctl-restored-from) made find() skip them all: rollback,
    # gc and prune never saw the run's own snapshots.
    path = write(tmp_path, provider, {"team": "db", key: "x"})
    with pytest.raises(InventoryError) as caught:
        load_inventory(path)
    assert caught.value.message == (f"{path}:3: tags: {key!r} is one of snapctl's own tags (find, prune and gc go "
                                    "by them)")
    assert caught.value.hint == f"rename the key, e.g. to {plain!r}"


def tag_constants(root: Path) -> dict[str, str]:
    """Every module-level ``TAG_* = "snapctl-..."`` under ``root``, by where it is."""
    found = {}
    for source in root.rglob("*.py"):
        for statement in ast.parse(source.read_text()).body:
            if (isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant)
                    and isinstance(statement.value.value, str) and statement.value.value.startswith("snapctl-")
                    and any(isinstance(t, ast.Name) and t.id.startswith("TAG_") for t in statement.targets)):
                found[f"{source}:{statement.lineno}"] = statement.value.value
    return found


def test_every_tag_name_snapctl_or_a_plugin_writes_is_one_the_inventory_refuses():
    repo = Path(__file__).resolve().parents[2]
    written = {**tag_constants(repo / "snapctl"), **tag_constants(repo / "plugins")}
    assert len(written) >= 6  # snapctl.providers' own, at least: the scan sees them
    assert {where: key for where, key in written.items() if key not in OWN_TAG_KEYS} == {}
    assert {"snapctl-restored-from", "snapctl-restored-run", "snapctl-restore-token",
            "snapctl-attached-to"} <= OWN_TAG_KEYS


@pytest.mark.parametrize("provider", ["aws", "gcp", "azure", "local"])
def test_another_tag_starting_with_snapctl_passes_with_a_warning_naming_it(tmp_path, provider, caplog):
    path = write(tmp_path, provider, {"team": "db", "snapctl-owner": "dba-team", "SNAPCTL-": "x"})
    with caplog.at_level(logging.WARNING, logger="snapctl.config"):
        inventory = load_inventory(path)
        provider_settings(inventory)  # the cloud's own rules take it as any key
        load_inventory(path)  # read again (a drill, a status): said once
    assert inventory.tags["snapctl-owner"] == "dba-team"
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}:5: tags: 'snapctl-owner' starts with 'snapctl-', as snapctl's own tags do: it may clash with a "
        "tag a later snapctl writes; hint: rename it, e.g. to 'owner'",
        f"{path}:6: tags: 'SNAPCTL-' starts with 'snapctl-', as snapctl's own tags do: it may clash with a tag a "
        "later snapctl writes; hint: rename it, e.g. to 'team'"]


def test_an_inventory_with_its_own_snapctl_named_tag_still_lists_its_backups(tmp_path):
    # Such inventories ran before snapctl's own names were refused: every command stopped on them.
    write(tmp_path, "local", {"snapctl-owner": "dba-team"})
    result = subprocess.run([sys.executable, "-m", "snapctl.cli", "list", "-i", "inv.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("\n") == 1
    assert "inv.yaml:4: tags: 'snapctl-owner' starts with 'snapctl-'" in result.stderr
    assert "hint: rename it, e.g. to 'owner'" in result.stderr


@pytest.mark.parametrize(("provider", "tags", "block", "message", "hint"), [
    ("aws", {"aws:owner": "x"}, {},
     "provider aws: inventory tag 'aws:owner': keys starting with 'aws:' are reserved by AWS",
     "rename it, e.g. to 'owner'"),
    ("aws", {"k": "v" * 257}, {},
     ("provider aws: inventory tag 'k': keys take 1-128 characters, values at most 256 "
      "(this one: 1 and 257)"), "shorten it"),
    ("aws", many(26), {"tags": many(20, "u")},
     ("provider aws: the inventory's tags and the provider's make 46 tags on every snapshot, more than the 45 EC2 "
      "has room for (50 per snapshot, snapctl's own take 5)"), "remove 1 of them, or put several into one tag's value"),
    ("azure", {"k/with/slash": "v"}, {},
     "provider azure: inventory tag 'k/with/slash': keys take 1-512 characters without <>%&\\?/",
     "rename it, e.g. to 'k-with-slash'"),
    ("azure", {"Microsoft.owner": "x"}, {},
     "provider azure: inventory tag 'Microsoft.owner': keys starting with azure, microsoft or windows are reserved",
     "rename it, e.g. with a prefix of your own such as 'team-'"),
    ("azure", {"k": "v" * 257}, {},
     "provider azure: inventory tag 'k': values take at most 256 characters, this one has 257", "shorten it"),
    ("azure", {"Team": "db"}, {"tags": {"team": "storage"}},
     "provider azure: tags 'team' and 'Team' are one tag to Azure (tag names ignore case)",
     "spell them alike, or keep one of them"),
    ("azure", many(46), {},
     ("provider azure: the inventory's tags and the provider's make 46 tags on every snapshot, "
      "more than the 45 Azure has room for (50 per snapshot, snapctl's own take 5)"), "remove 1 of them, "),
    ("gcp", many(30), {"labels": many(30, "u")},
     ("provider gcp: the inventory's tags and the provider's labels make 60 labels on every snapshot, more than "
      "the 59 GCP has room for (64 per snapshot, snapctl's own take 5)"), "remove 1 of them, "),
    ("gcp", {"1" + "a" * 61 + "x": "v", "1" + "a" * 61 + "y": "v"}, {},
     "provider gcp: inventory tags '1" + "a" * 61 + "x' and '1" + "a" * 61 + "y' become the same label ",
     "shorten one of them, or start it with a letter"),
], ids=["aws-reserved", "aws-value", "aws-count", "azure-slash", "azure-reserved", "azure-value", "azure-case",
        "azure-count", "gcp-count", "gcp-same-label"])
def test_tags_the_cloud_would_refuse_stop_a_dry_run_naming_the_key_the_limit_and_a_fix(tmp_path, provider, tags,
                                                                                        block, message, hint):
    inventory = load_inventory(write(tmp_path, provider, tags, block))
    with pytest.raises(InventoryError) as caught:
        asyncio.run(backup(inventory, BackupOptions(dry_run=True)))
    assert caught.value.message.startswith(f"{tmp_path / 'inv.yaml'}:3: {message}"), caught.value.message
    assert caught.value.hint.startswith(hint), caught.value.hint
    with pytest.raises(InventoryError):
        provider_settings(inventory)  # `snapctl status` checks the block as backup does


@pytest.mark.parametrize(("provider", "tags", "block"), [
    ("aws", many(25), {"tags": many(20, "u")}),
    ("aws", many(45), {"tags": many(40)}),  # the same keys: the inventory's values replace the provider's
    ("azure", many(45), {}),
    ("azure", {"team": "db"}, {"tags": {"team": "storage"}}),
    ("gcp", {**many(28), "Prod.EU/x": "Any value, / and all"}, {"labels": many(30, "u")}),
    ("local", {"k/with/slash": "v", "aws:owner": "x", **many(80)}, {}),
], ids=["aws-45", "aws-overlap", "azure-45", "azure-same-key", "gcp-59", "local-any"])
def test_tags_that_fit_beside_snapctls_own_pass(tmp_path, provider, tags, block):
    provider_settings(load_inventory(write(tmp_path, provider, tags, block)))


def test_the_cli_says_it_in_one_line_with_the_hint_and_exits_2(tmp_path):
    write(tmp_path, "aws", {"snapctl-restored-from": "legacy"})
    result = subprocess.run([sys.executable, "-m", "snapctl.cli", "backup", "--dry-run", "-i", "inv.yaml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert "inv.yaml:3: tags: 'snapctl-restored-from' is one of snapctl's own tags" in result.stderr
    assert "rename the key, e.g. to 'restored-from'" in result.stderr
