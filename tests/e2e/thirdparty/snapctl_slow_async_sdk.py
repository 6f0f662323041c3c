"""The slow provider's stand-in for an SDK's async client: importing it records the importing
process's pid in the file named by $SNAPCTL_SLOW_ASYNC_SDK_IMPORTS, as ``snapctl_slow_sdk`` does."""

from __future__ import annotations

import os

if os.environ.get("SNAPCTL_SLOW_ASYNC_SDK_IMPORTS"):
    with open(os.environ["SNAPCTL_SLOW_ASYNC_SDK_IMPORTS"], "a") as imports:
        imports.write(f"{os.getpid()}\n")
