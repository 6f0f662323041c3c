"""Call a test's function in a child process that file modes bind. Root writes into a 0555
directory as if it were 0755 (CAP_DAC_OVERRIDE), and CI runs the suite as root: a test of what
snapctl does about a read-only directory would pass there without meeting one. As root, the child
runs without that override: in a user namespace of its own (``unshare -U``: the host's files are
owned by a uid it does not map, so its capabilities do not reach them), or else with the two
capabilities dropped (``setpriv``). It stays their owner, so a chmod of its own files still works.

Before the call the child checks that each ``read_only`` path is indeed not writable to it, so
that a test cannot pass without the situation it names."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_WITHOUT_OVERRIDE = (
    ["unshare", "-U"],
    ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"],
)
_CHILD = """
import importlib, json, os, sys
module, name, read_only, args = json.loads(sys.argv[1])
writable = [path for path in read_only if os.access(path, os.W_OK)]
if writable:
    sys.exit(f"precondition not met: {writable} writable to this process (uid {os.getuid()})")
getattr(importlib.import_module(module), name)(*args)
"""


@functools.cache
def _prefix() -> tuple[str, ...] | None:
    if os.geteuid() != 0:
        return ()  # modes bind this user already
    for prefix in _WITHOUT_OVERRIDE:
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, check=False, timeout=30).returncode == 0:
                return tuple(prefix)
        except FileNotFoundError:
            continue
    return None


def call_without_dac_override(function: Callable[..., object], *args: object, read_only: list[Path]) -> None:
    """``function(*args)`` in a child that file modes bind, once it has seen that each of
    ``read_only`` is not writable to it; fails the test with the child's stderr if the call
    raised. ``function`` must be importable by its module's name; ``args`` JSON."""
    prefix = _prefix()
    if prefix is None:
        pytest.skip("as root, and neither `unshare -U` nor `setpriv` could drop the override of file modes here")
    given = json.dumps([function.__module__, function.__qualname__, [str(p) for p in read_only], list(args)])
    child = subprocess.run([*prefix, sys.executable, "-c", _CHILD, given], capture_output=True, text=True,
                           timeout=120, check=False, cwd=REPO)
    assert child.returncode == 0, f"{function.__qualname__} in {' '.join(prefix) or 'a child'}: {child.stderr}"
