"""The console scripts' entry points: the standard library only, so they are loaded before a
Ctrl-C can matter. The command line's own rewrites and hints, which need nothing else, are here too.

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


def gives_inventory(argv: list[str]) -> bool:
    """The command line has ``-i``/``--inventory``, in any of its spellings."""
    return any(arg in ("-i", "--inventory") or arg.startswith(("--inventory=", "-i")) for arg in argv)


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


def optional_watch_seconds(argv: list[str]) -> list[str]:
    """`status --watch [SECONDS]`: click options cannot take an optional value, so a bare --watch gets 2 s.
    A negative number is its value, not another option: `--watch -1` said "No such option: -1"
    where the interval's own check says what to give."""
    out: list[str] = []
    for index, arg in enumerate(argv):
        out.append(arg)
        bare = index + 1 == len(argv) or (argv[index + 1].startswith("-") and not _is_number(argv[index + 1]))
        if arg in ("--watch", "-w") and bare and "status" in argv[:index]:
            out.append("2")
    return out


def _is_number(arg: str) -> bool:
    try:
        float(arg)
    except ValueError:
        return False
    return True


_COMMAND_OPTIONS = frozenset({"-i", "--inventory", "-o", "--output"})


def misplaced_option(exc: Exception, args: list[str]) -> str | None:
    """Where ``-i``/``-o`` go, when given before the command (`snapctl -i inv.yaml status`): they
    are every command's options, not snapctl's own."""
    name = getattr(exc, "option_name", None)
    ctx = getattr(exc, "ctx", None)
    if name not in _COMMAND_OPTIONS or ctx is None or ctx.parent is not None:
        return None
    commands = getattr(ctx.command, "commands", {})
    command = next((arg for arg in args if arg in commands), "COMMAND")
    return f"{name} is an option of each command: put it after the command, e.g. `snapctl {command} {name} ...`"


def usage_error(exc: Exception, args: list[str]):  # noqa: ANN201 (a BadInputError: snapctl.errors loads later)
    """A usage error click raised, as every other error is said: one lowercase line and a hint
    (click's own were three lines, "Usage: ...", "Try ...", "Error: Invalid value ..."), the same
    exit code, 2, and with `-o json` the same document."""
    from snapctl.errors import BadInputError

    message = (exc.format_message() if hasattr(exc, "format_message") else str(exc)).strip().rstrip(".")
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "snapctl"
    hint = misplaced_option(exc, args) or f"see `{command} --help`"
    return BadInputError(message[:1].lower() + message[1:], hint=hint)
