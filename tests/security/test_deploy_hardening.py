"""deploy/'s units confine the agent and the backup run: systemd's own audit rates them, offline."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.retention.test_deploy import DEPLOY, INSTALLED, REPO, unit_value

UNIT = DEPLOY / "snapctl-agent.service"


def test_the_agent_unit_drops_every_privilege_and_keeps_its_files_to_itself() -> None:
    assert unit_value(UNIT, "CapabilityBoundingSet") == ""
    assert unit_value(UNIT, "UMask") == "0077"
    assert unit_value(UNIT, "NoNewPrivileges") == "yes"
    assert unit_value(UNIT, "ProtectSystem") == "strict"
    backup = DEPLOY / "snapctl-backup.service"
    assert unit_value(backup, "CapabilityBoundingSet") == "" and unit_value(backup, "UMask") == "0027"


@pytest.mark.parametrize("name", ["snapctl-agent.service", "snapctl-backup.service"])
def test_systemd_rates_the_units_ok_not_exposed(tmp_path: Path, name: str) -> None:
    # Before: 8.0 and 8.5 EXPOSED (capabilities, devices, kernel logs and modules, namespaces,
    # system calls, address families, umask all left open).
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / name
    unit.write_text((DEPLOY / name).read_text().replace(INSTALLED, f"{REPO / '.venv' / 'bin'}/"))
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
                            capture_output=True, text=True, check=False, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.0, result.stdout
