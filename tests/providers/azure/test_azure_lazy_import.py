"""`snapctl --help`, `snapctl status` and building the azure provider import no cloud SDK, nor aiohttp."""

from __future__ import annotations

from snapctl.errors import ExitCode
from tests.conftest import free_port
from tests.providers.gcp.test_gcp_lazy_import import STATUS_REACHED_THE_AGENTS, cli, cloud_modules

SUB = "00000000-0000-4000-8000-000000000001"
DISK = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Compute/disks/pg"
INVENTORY = f"""
cluster: lazy
provider: {{type: azure, subscription_id: {SUB}, resource_group: rg, location: westeurope}}
policy: {{agent_timeout_s: 1s}}
nodes:
  - name: n1
    agent: http://127.0.0.1:%d
    volumes: [{{disk_id: {DISK}}}]
"""


def test_cli_help_and_status_import_no_cloud_sdk(tmp_path):
    (tmp_path / "inventory.yaml").write_text(INVENTORY % free_port())
    assert cloud_modules(cli("--help"), tmp_path, says="Usage: snapctl") == []
    assert cloud_modules(cli("status", "-i", "inventory.yaml"), tmp_path, **STATUS_REACHED_THE_AGENTS) == []
    # The block is the azure plugin's to check, and status asks it: a misspelled key is refused.
    (tmp_path / "inventory.yaml").write_text(INVENTORY.replace("location:", "locaton:") % free_port())
    assert cloud_modules(cli("status", "-i", "inventory.yaml"), tmp_path, exit_code=ExitCode.BAD_INPUT,
                         says="provider azure: unknown key 'locaton'") == []


def test_building_the_azure_provider_imports_no_azure_module(tmp_path):
    code = f"""
        from pathlib import Path
        from snapctl.providers import create_provider
        provider = create_provider({{"type": "azure", "subscription_id": "{SUB}", "resource_group": "rg",
                                    "location": "westeurope"}}, cluster="c", base_dir=Path("."))
        provider.validate_volumes("n1", [{{"disk_id": "{DISK}"}}], base_dir=Path("."))
        assert provider.capabilities.incremental
    """
    assert cloud_modules(code, tmp_path) == []
