"""The real CLI with the real DefaultAzureCredential finding nothing: snapctl's own one line and
hint, not azure-identity's log of every credential it tried.

AZURE_TOKEN_CREDENTIALS=EnvironmentCredential keeps the chain to the environment (no instance
metadata probe, no `az`), and the provider's ARM is a local server: nothing leaves loopback.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from snapctl.errors import ExitCode
from tests.fakes.azure_compute import FakeAzureCompute

REPO = Path(__file__).resolve().parents[3]
SECRET = "client-secret-marker-7f3a"


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "run"])
def test_no_credential_is_one_line_from_snapctl_without_the_sdks_log(tmp_path, dry_run):
    with FakeAzureCompute() as fake:
        disk = fake.add_disk("rg", "db1-data")
        sqlite = tmp_path / "db1" / "app.db"
        sqlite.parent.mkdir()
        sqlite.write_bytes(b"")
        inventory = {
            "cluster": "c",
            "provider": {"type": "azure", "subscription_id": fake.subscription, "resource_group": "rg",
                         "location": "westeurope", "base_url": fake.url, "insecure_http_for_tests": True},
            "catalog": {"path": "catalog"},
            "nodes": [{"name": "db1", "agent": "embedded", "engine": {"type": "sqlite", "path": str(sqlite)},
                       "volumes": [{"disk_id": disk, "name": "data"}]}],
        }
        path = tmp_path / "inventory.yaml"
        path.write_text(yaml.safe_dump(inventory))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MSI_", "IDENTITY_"))}
        env.update(AZURE_TOKEN_CREDENTIALS="EnvironmentCredential", AZURE_CLIENT_SECRET=SECRET, PYTHONPATH=str(REPO))
        args = ["backup", "--dry-run"] if dry_run else ["backup"]
        result = subprocess.run([sys.executable, "-m", "snapctl.cli", *args, "-i", str(path)], capture_output=True,
                                text=True, timeout=120, env=env, cwd=tmp_path)
        assert fake.requests == []

    assert result.returncode == (ExitCode.PREFLIGHT_REFUSED if dry_run else ExitCode.RUN_FAILED), result.stderr
    output = result.stdout + result.stderr
    assert "no usable credentials" in output and "az login" in output
    assert "Attempted credentials" not in output and "troubleshoot" not in output
    # snapctl's own lines quote the SDK's first sentence; no line is the SDK's own.
    assert all("no usable credentials" in line for line in output.splitlines() if "DefaultAzureCredential" in line
               and "looks in" not in line)
    assert SECRET not in output
