"""`snapctl --help`, `snapctl status` and building the gcp provider import no cloud SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from snapctl.errors import ExitCode
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[3]
REPORT = textwrap.dedent("""
    import atexit, json, sys
    def _report():
        roots = ("google", "azure", "boto3", "botocore", "aiohttp")
        clouds = sorted(m for m in sys.modules if m.split(".")[0] in roots)
        sys.__stdout__.write("\\nCLOUD-MODULES " + json.dumps(clouds) + "\\n")
    atexit.register(_report)
""")


def cloud_modules(code: str, tmp_path: Path, *, exit_code: int = ExitCode.OK, says: str = "") -> list[str]:
    """The cloud modules loaded once ``code`` has run in a new interpreter, which must have exited
    with ``exit_code`` and printed ``says`` (to stdout or stderr): the report is written at exit
    whatever happened, and an early error, having imported nothing, would look lazy."""
    result = subprocess.run([sys.executable, "-c", REPORT + textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")})
    line = next((ln for ln in result.stdout.splitlines() if ln.startswith("CLOUD-MODULES ")), None)
    assert line, result.stdout + result.stderr
    assert result.returncode == exit_code and says in result.stdout + result.stderr, result.stdout + result.stderr
    return json.loads(line.split(" ", 1)[1])


def cli(*args: str) -> str:
    return f"import sys; sys.argv = ['snapctl', *{list(args)!r}]\nfrom snapctl.cli import main\nmain()\n"


# How `status` ends when it got past the provider block (which it checks as backup does) to the
# agents: here no agent listens, so the verdict is critical.
STATUS_REACHED_THE_AGENTS = dict(exit_code=ExitCode.CRITICAL, says="n1: agent unreachable")


INVENTORY = """
cluster: lazy
provider: {type: gcp, project: my-project-1}
policy: {agent_timeout_s: 1s}
nodes:
  - name: n1
    agent: http://127.0.0.1:%d
    volumes: [{disk: pg-data, zone: europe-west1-b, name: data}]
"""


def test_cli_help_and_status_import_no_cloud_sdk(tmp_path):
    (tmp_path / "inventory.yaml").write_text(INVENTORY % free_port())
    assert cloud_modules(cli("--help"), tmp_path, says="Usage: snapctl") == []
    assert cloud_modules(cli("status", "-i", "inventory.yaml"), tmp_path, **STATUS_REACHED_THE_AGENTS) == []
    # The block is the gcp plugin's to check, and status asks it: a misspelled key is refused.
    (tmp_path / "inventory.yaml").write_text(INVENTORY.replace("project:", "projekt:") % free_port())
    assert cloud_modules(cli("status", "-i", "inventory.yaml"), tmp_path, exit_code=ExitCode.BAD_INPUT,
                         says="provider gcp: unknown key 'projekt'") == []


def test_building_the_gcp_provider_imports_no_google_module(tmp_path):
    code = """
        from pathlib import Path
        from snapctl.providers import create_provider
        provider = create_provider({"type": "gcp", "project": "my-project-1"}, cluster="c", base_dir=Path("."))
        provider.validate_volumes("n1", [{"disk": "pg-data", "zone": "europe-west1-b"}], base_dir=Path("."))
        assert provider.capabilities.incremental
    """
    assert cloud_modules(code, tmp_path) == []
