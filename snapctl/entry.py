"""The console scripts' entry points: the standard library only, so they are loaded before a
Ctrl-C can matter.

The command's own modules (typer, pydantic, rich) take the next ~70 ms to import, and typer then
parses the command line. A KeyboardInterrupt raised among the imports came out as a traceback
through importlib (or, in one of importlib's callbacks, as "Exception ignored" with the command
going on regardless), and one raised while typer parsed as typer's silent exit 130. So until the
command itself begins, a Ctrl-C is only noted; the command then ends as one interrupted under way
does: exit 130, one line, and with `-o json` its one document. (A Ctrl-C in the interpreter's own
start, before this module runs, is Python's.)
"""

from __future__ import annotations

import signal
import sys

_noted: list[int] | None = None  # the Ctrl-Cs that came while deferred; None: not deferring


def snapctl() -> None:
    main = _load(_cli_main, "snapctl", json_asked=asks_for_json(sys.argv[1:]), until_command=True)
    main()


def snapctl_agent() -> None:
    main = _load(_agent_main, "snapctl-agent", json_asked=False, until_command=False)
    sys.exit(main())


def end_deferral() -> bool:
    """Ctrl-C raises KeyboardInterrupt again from here on; True if one came while it was deferred.
    A no-op (False) when nothing deferred it: the CLI run in process, or SIGINT ignored."""
    global _noted
    if _noted is None:
        return False
    came, _noted = bool(_noted), None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return came


def asks_for_json(argv: list[str]) -> bool:
    """The last ``-o`` of a command line, in any of its spellings, is json (the last one wins, as
    when typer parses it)."""
    chosen = None
    for arg, value in zip(argv, [*argv[1:], ""]):
        if arg in ("-o", "--output"):
            chosen = value
        elif arg.startswith(("-o", "--output=")):
            chosen = arg.removeprefix("--output=").removeprefix("-o")
    return chosen == "json"


def _cli_main():  # noqa: ANN202 (typing's import is most of this module's cost)
    from snapctl.cli import main

    return main


def _agent_main():  # noqa: ANN202
    from node_agent.main import main

    return main


def _load(load, prog: str, *, json_asked: bool, until_command: bool):  # noqa: ANN001, ANN202
    global _noted
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return load()  # ignored (a background job of a script) or the caller's own: leave it be
    _noted = noted = []
    signal.signal(signal.SIGINT, lambda signum, _frame: noted.append(signum))
    try:
        main = load()
    except BaseException:
        end_deferral()
        raise
    if noted or not until_command:
        if end_deferral():
            _interrupted_at_start(prog, json_asked=json_asked)
    return main


def _interrupted_at_start(prog: str, *, json_asked: bool) -> None:
    import json

    from snapctl.errors import Interrupted

    exc = Interrupted()
    if json_asked:  # a script reads stdout: its one document, as render.error_document writes it
        print(json.dumps({"schema_version": 1, "error": exc.message, "hint": exc.hint, "exit_code": int(exc.exit_code)}))
    print(f"{prog}: error: {exc.message}", file=sys.stderr)
    sys.exit(int(exc.exit_code))
