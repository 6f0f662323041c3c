"""Loading snapctl, its provider registry and this plugin must not import boto3 (or botocore)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent("""
    import importlib, sys
    from pathlib import Path
    importlib.import_module({module!r})
    from snapctl.providers import create_provider
    provider = create_provider({{"type": "aws", "region": "eu-west-1"}}, cluster="c", base_dir=Path("."))
    provider.validate_volumes("n1", [{{"instance": "i-0123456789abcdef0"}}], base_dir=Path("."))
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("boto3", "botocore", "s3transfer", "aiobotocore", "aiohttp"))
    print(",".join(loaded))
""")


@pytest.mark.parametrize("module", ["snapctl.providers", "snapctl_aws", "snapctl.cli"])
def test_loading_the_plugin_does_not_import_the_sdk(module):
    result = subprocess.run([sys.executable, "-c", CHECK.format(module=module)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_the_sdk_is_imported_on_first_use():
    check = CHECK.format(module="snapctl_aws").replace("loaded = ", "provider.client\nloaded = ")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true",
                                 "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})  # were a call made: not to AWS
    assert result.returncode == 0, result.stderr
    assert "boto3" in result.stdout.split(",")


def test_warm_up_imports_the_sdk_and_builds_the_client_that_the_calls_then_use():
    from tests.moto_server import DUMMY_AWS_ENV, shared_moto_server

    endpoint = shared_moto_server().endpoint_url  # warm_up asks EC2 once whether it takes the credentials
    check = CHECK.format(module="snapctl_aws").replace(
        "loaded = ", "provider.warm_up()\nassert provider.ec2._client is not None\nloaded = ").replace(
        '"region": "eu-west-1"', f'"region": "eu-west-1", "endpoint_url": "{endpoint}"')
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true",
                                 "AWS_ACCESS_KEY_ID": DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
                                 "AWS_SECRET_ACCESS_KEY": "testing"})
    assert result.returncode == 0, result.stderr
    assert "boto3" in result.stdout.split(",")


def test_only_the_async_warm_up_imports_the_async_client_and_in_a_thread_not_on_the_loop():
    # A run that makes the blocking calls (never, always, 50 calls and more) calls warm_up alone: it
    # must not load aiobotocore (an install whose botocore outgrew aiobotocore's pin breaks it).
    from tests.moto_server import DUMMY_AWS_ENV, shared_moto_server

    endpoint = shared_moto_server().endpoint_url
    warm = ("provider.warm_up()\nblocking = sorted(m for m in sys.modules if m.split('.')[0] in ('aiobotocore', 'aiohttp'))\n"
            "import asyncio, threading\nloop_thread = threading.get_ident()\nimported_on = []\n"
            "class Spy:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('aiobotocore', 'aiohttp'):\n"
            "            imported_on.append(threading.get_ident() == loop_thread)\n"
            "sys.meta_path.insert(0, Spy())\n"
            "async def main():\n    await provider.warm_up_async()\n    await provider.aclose()\n"
            "asyncio.run(main())\nassert blocking == [], blocking\nassert imported_on and not any(imported_on), imported_on\n"
            "loaded = ")
    check = CHECK.format(module="snapctl_aws").replace("loaded = ", warm, 1).replace(
        '"region": "eu-west-1"', f'"region": "eu-west-1", "endpoint_url": "{endpoint}"')
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "AWS_EC2_METADATA_DISABLED": "true",
                                 "AWS_ACCESS_KEY_ID": DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
                                 "AWS_SECRET_ACCESS_KEY": "testing"})
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.strip().split(",")
    assert {"aiohttp", "aiobotocore.session", "aiobotocore.config"} <= set(loaded)
