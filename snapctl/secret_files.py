"""Files that hold a secret (tokens, passwords, private keys), read the one way both sides need.

A secret file that other users can read is warned about, not refused: refusing would stop an
agent or a cron job that runs today, at its next start, for a file that has been readable for
months. The warning names the file, who can read it and the command that fixes it.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from urllib.parse import urlsplit

from snapctl.config import is_loopback
from snapctl.input_files import MAX_SECRET_BYTES, read_regular


def open_to_others(mode: int) -> str | None:
    """What a file of ``mode`` lets others do, as a message part ("readable by its group (mode
    0640)"), or None when only its owner can read or write it."""
    can = [what for what, bits in (("readable", stat.S_IRGRP | stat.S_IROTH),
                                   ("writable", stat.S_IWGRP | stat.S_IWOTH)) if mode & bits]
    if not can:
        return None
    who = [name for name, bits in (("its group", stat.S_IRGRP | stat.S_IWGRP),
                                   ("other users", stat.S_IROTH | stat.S_IWOTH)) if mode & bits]
    return f"{' and '.join(can)} by {' and '.join(who)} (mode {stat.S_IMODE(mode):04o})"


def warn_if_open(log: logging.Logger, where: str, setting: str, file: Path, mode: int, owner: str) -> None:
    """Log a warning when the secret ``file`` (named by ``setting`` in ``where``) is open to others.
    ``owner``: whose alone it should be ("the agent's user")."""
    exposure = open_to_others(mode)
    if exposure:
        log.warning("%s: %s %s is %s; chmod 600 %s so that only %s can read it",
                    where, setting, file, exposure, file, owner)


# What a bearer token can be made of here: snapctl writes headers as latin-1 and the agent compares
# the UTF-8 bytes of its own token, so anything beyond printable ASCII could never be sent (a
# UnicodeEncodeError and its traceback) or never match (a 401 for the right token).
UNFIT_TOKEN = "holds a character a bearer token cannot carry (printable ASCII only)"
UNFIT_TOKEN_HINT = "generate one that is, e.g. (umask 077 && openssl rand -hex 32 > FILE)"


def unfit_token(token: str) -> bool:
    return not (token.isascii() and token.isprintable())


def read_first_line(file: Path) -> tuple[str, int]:
    """The first non-blank line of ``file``, stripped ("" if none), and the file's mode.
    Only the first line: a second one (a note, a rotated token) must never go out with it.
    Raises OSError as ``open`` does (UnfitInputFile for a FIFO, a device or a file too big to be
    one), UnicodeDecodeError for a file that is not UTF-8 text (whatever the locale: cron's is often C)."""
    data, mode = read_regular(file, MAX_SECRET_BYTES, "a token file")
    line = next((line.strip() for line in data.decode("utf-8").splitlines() if line.strip()), "")
    return line, mode


_WARNED_IN_CLEAR: set[str] = set()
# The usual loopback spellings, told by their prefix: parsing 1000 agents' URLs took 22 ms a run.
_LOOPBACK_PREFIXES = ("http://127.", "http://localhost:", "http://localhost/", "http://[::1]")


def in_clear_beyond_this_host(url: str | None) -> bool:
    """``url`` is plain http to another host: whoever can watch that network sees what it carries."""
    if not url or url.startswith(_LOOPBACK_PREFIXES) or not url.lower().startswith("http://"):
        return False
    return not is_loopback(urlsplit(url).hostname or "")


def warn_if_in_clear(log: logging.Logger, setting: str, url: str | None, exposed: str) -> None:
    """Log a warning, once per process and URL, when ``url`` is plain http to another host.
    ``exposed``: what an onlooker on that network gets. Warned, not refused: an S3-compatible
    store or a VPC endpoint on a private network over http is a setup that runs today."""
    if url in _WARNED_IN_CLEAR or not in_clear_beyond_this_host(url):
        return
    _WARNED_IN_CLEAR.add(url)
    log.warning("%s %s is plain http to another host: whoever can watch that network %s; use https "
                "(docs/security.md)", setting, url, exposed)
