"""Warnings that snapctl and its plugins log rather than return (a token file others can read, a
short token, one sent in clear, a textfile not written): said as the warnings a command returns
are, and in the `-o json` document too (README "Commands"). Imports nothing of its own: the CLI
loads it as a command begins (not for `--help`, which needs no `logging`)."""

from __future__ import annotations

import logging
import sys

_logged: list[str] = []  # what was logged so far, for the document


class _LoggedWarnings(logging.Handler):
    """What snapctl and its plugins log (a token file others can read, a short token, one sent in
    clear) said as their other warnings are, `warning: ...` on stderr, and kept for the JSON
    document; other libraries' records as Python's last-resort handler printed them before."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 (a bad format string: logging's own report, not a crash)
            self.handleError(record)
            return
        if record.name.startswith("snapctl"):  # snapctl.*, and the plugins' snapctl_aws.* ...
            _logged.append(message)  # an error logged is one the command went on past: the document says it too
            message = f"{'warning' if record.levelno < logging.ERROR else 'error'}: {message}"
            if record.exc_info:  # log.exception's traceback: what a report of it needs
                message += "\n" + logging.Formatter().formatException(record.exc_info)
            elif record.exc_text:  # the same, logged in the provider worker's child: sent as text
                message += "\n" + record.exc_text
        print(message, file=sys.stderr)


def say_logged_warnings() -> None:
    """For the CLI, once: logged warnings as ``_LoggedWarnings`` says them."""
    root = logging.getLogger()
    if not any(isinstance(handler, _LoggedWarnings) for handler in root.handlers):
        root.addHandler(_LoggedWarnings(logging.WARNING))


def logged_warnings() -> dict[str, list[str]]:
    """The document's top-level ``warnings``, when anything was logged."""
    return {"warnings": list(_logged)} if _logged else {}
