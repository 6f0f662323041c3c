"""The slow provider's stand-in for a cloud SDK: importing it records the importing process's pid
in the file named by $SNAPCTL_SLOW_SDK_IMPORTS, so a test can count how many processes imported it,
and prints $SNAPCTL_SLOW_SDK_SAY, as an SDK may say something as it is imported."""

from __future__ import annotations

import os

if os.environ.get("SNAPCTL_SLOW_SDK_IMPORTS"):
    with open(os.environ["SNAPCTL_SLOW_SDK_IMPORTS"], "a") as imports:
        imports.write(f"{os.getpid()}\n")

if os.environ.get("SNAPCTL_SLOW_SDK_SAY"):
    print(os.environ["SNAPCTL_SLOW_SDK_SAY"])  # noqa: T201 - the point
