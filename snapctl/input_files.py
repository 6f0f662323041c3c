"""Files an operator names for snapctl or its agent to read: an inventory, an agent's config, a
token or password file. Each is read whole, so each must be a regular file (after symlinks) of a
bounded size: /dev/zero as ``-i`` ate memory until the OOM killer came, and a FIFO (or a token
file on one) blocked the command, or the agent's start, until someone wrote to it. The agent reads
through here too (it already imports snapctl's errors and YAML helpers).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

MiB = 1024 * 1024
# An inventory of a few thousand nodes is well under 1 MiB; a config past this is no config.
MAX_CONFIG_BYTES = 4 * MiB
# A token or password is one line; the file may carry a note or two after it.
MAX_SECRET_BYTES = 64 * 1024


class UnfitInputFile(OSError):
    """Not a regular file, or larger than its kind may be. An OSError, so that a caller's ``except
    OSError`` words it as it words the OS's own refusals (os_reason: ``strerror``); ``hint`` says
    what to name instead."""

    def __init__(self, file: Path, reason: str, hint: str | None) -> None:
        super().__init__(errno.EINVAL, reason, str(file))
        self.hint = hint


def file_kind(mode: int) -> str:
    """What a file of ``mode`` is, as a message part ("a FIFO")."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a regular file"


def _not_regular(file: Path, mode: int) -> UnfitInputFile:
    if stat.S_ISDIR(mode):  # as the OS said it before this check, and as plain
        return UnfitInputFile(file, "is a directory", None)
    return UnfitInputFile(file, f"is {file_kind(mode)}, not a regular file",
                          "name a regular file: it is read whole, and a FIFO or a device may block or never end")


def _too_big(file: Path, limit: int, what: str) -> UnfitInputFile:
    return UnfitInputFile(file, f"is larger than {_size(limit)}, the most {what} may be",
                          f"check that {file} is {what}")


def _size(limit: int) -> str:
    return f"{limit // MiB} MiB" if limit >= MiB else f"{limit // 1024} KiB"


def check_regular(file: Path) -> None:
    """Refuse (UnfitInputFile) a ``file`` that is not a regular file, one another library will open
    and read (a PEM file ssl loads): on a FIFO it would wait for a writer forever."""
    mode = os.stat(file).st_mode
    if not stat.S_ISREG(mode):
        raise _not_regular(file, mode)


def read_regular(file: Path, limit: int, what: str) -> tuple[bytes, int]:
    """The bytes of ``file`` and its mode; ``what``: the kind of file ("an inventory"). Raises
    UnfitInputFile for anything but a regular file (found before opening it: opening some devices
    does something) or one over ``limit`` bytes, else OSError as ``open`` does."""
    check_regular(file)
    # O_NONBLOCK: swapped for a FIFO since the stat, the open returns at once, and fstat refuses it.
    fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(file, st.st_mode)
        if st.st_size > limit:
            raise _too_big(file, limit, what)
        chunks: list[bytes] = []
        left = limit + 1  # one byte past the limit tells a file that grew since the fstat
        while left > 0:
            chunk = os.read(fd, min(left, MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    if left <= 0:
        raise _too_big(file, limit, what)
    return b"".join(chunks), st.st_mode
