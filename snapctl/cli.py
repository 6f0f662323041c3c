"""The `snapctl` command line: parse, make one core call, render. Nothing else lives here.

Imports of the core are inside the commands so that `snapctl --help` stays fast and never
loads a cloud SDK. No ``from __future__ import annotations`` here: typer reads every command's
signature on each start, and string annotations make it eval them all (~14 of the ~18 ms it
spent building the command tree).
"""

import sys
from typing import Annotated

import typer

from snapctl.cli_numbers import Number

app = typer.Typer(
    name="snapctl",
    help="Consistent disk snapshots across a database cluster.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
demo_app = typer.Typer(help="The local demo cluster: 3 agents with SQLite databases being written to.",
                       no_args_is_help=True)
app.add_typer(demo_app, name="demo", short_help="The local demo cluster: up, down, run.")


def _print_version(asked: bool) -> None:
    if asked:  # eager: before any command parses, so `snapctl --version` needs nothing else
        from snapctl import __version__

        typer.echo(f"snapctl {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print snapctl's version and exit.")] = False,
) -> None:
    pass


class _RequiredAsDocumented(typer.core.TyperCommand):
    """Usage lines name a required argument as the docs and the argument's own help do, `RUN`:
    typer writes `{RUN}`, which reads as a set of choices to pick from."""

    def collect_usage_pieces(self, ctx):
        return [piece[1:-1] if piece.startswith("{") and piece.endswith("}") else piece
                for piece in super().collect_usage_pieces(ctx)]


InventoryOpt = Annotated[
    str | None,
    typer.Option("-i", "--inventory", envvar="SNAPCTL_INVENTORY", show_envvar=True, metavar="FILE",
                 help="Inventory file [default: ./inventory.yaml]."),
]
OutputOpt = Annotated[str, typer.Option("-o", "--output", metavar="text|json", help="text or json.")]
NodesOpt = Annotated[list[str] | None,
                     typer.Option("--node", "-n", metavar="NODE", help="Only these nodes (repeatable).")]
_PROM_EXAMPLE = "/var/lib/node_exporter/textfile_collector/snapctl.prom"  # as metrics' own hint
TextfileOpt = Annotated[str | None, typer.Option("--textfile", metavar="PATH",
                                                   help="Also write node_exporter metrics to PATH (*.prom).")]
# No envvar: $SNAPCTL_INVENTORY names the real cluster's inventory, and `demo up` on it made its
# databases the demo's (WAL, a table, a writer inserting rows).
# The number flags: parsed here, so NaN, infinity and a value past the ceiling are one line with a hint.
LIMIT = Number("--limit", kind=int, above=None, at_least=0, maximum=1_000_000, maximum_words="runs (0: every run)",
               problem="give a number of runs, or 0 for every run", hint="e.g. --limit 20")
WATCH = Number("--watch", problem="the interval must be a number of seconds more than zero", maximum=86400,
               maximum_words="seconds (a day) between refreshes",
               hint="e.g. --watch 5, or a bare --watch for every 2 seconds")
TRIGGER_TIMEOUT = Number("--timeout", problem="the timeout must be a number of seconds more than zero",
                         hint="e.g. --timeout 600 (the default)")
DemoInventoryOpt = Annotated[
    str, typer.Option("-i", "--inventory", metavar="FILE", help="The demo's inventory (never $SNAPCTL_INVENTORY).")
]


def _inventory(path: str | None):
    from snapctl.config import load_inventory
    from snapctl.entry import gives_inventory

    # Typer hands $SNAPCTL_INVENTORY over as if it were -i: its error must say which one it was.
    from_env = path is not None and not gives_inventory(sys.argv[1:])
    # `-i ""` (a script's unset variable) read $SNAPCTL_INVENTORY or ./inventory.yaml instead.
    return load_inventory(_path(path, "-i", "inventory.yaml"), from_env=from_env)


def _renderer(output: str):
    from snapctl import render

    return render.Renderer.for_output(output)


def _run(coro):
    from snapctl.runner import run  # asyncio.run without formatting a 1000-node result on the way out

    return run(coro)


@app.command(short_help="Back up the whole cluster.")
def backup(
    inventory: InventoryOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Preflight and show the plan; hold nothing.")] = False,
    no_wait: Annotated[bool, typer.Option(
        "--no-wait", help="Return once snapshots are fixed, without waiting for them to complete.")] = False,
    force: Annotated[bool, typer.Option("--force", help=(
        "Go on despite critical preflight findings about the cluster's state (no leader, lag, a busy engine); "
        "not those that make the backup fail or no backup of the node."))] = False,
    trigger: Annotated[bool | None, typer.Option(
        "--trigger/--no-trigger",
        help="Run the engines' own snapshots first (default: policy.trigger_engine_snapshot).")] = None,
    consistency: Annotated[str | None, typer.Option(metavar="cluster|per-node",
                                                    help="cluster (one barrier) or per-node.")] = None,
    no_prune: Annotated[bool, typer.Option("--no-prune", help="Skip retention after a successful run.")] = False,
    textfile: TextfileOpt = None,
    output: OutputOpt = "text",
) -> int:
    """Back up the whole cluster: prepare every node, snapshot, complete, record a manifest."""
    from snapctl.orchestrator import BackupOptions
    from snapctl.orchestrator import backup as run_backup

    out = _renderer(output)
    loaded = _inventory(inventory)  # no cluster to label a textfile with before it: nothing is written
    if _path(textfile, "--textfile", _PROM_EXAMPLE):
        from snapctl.metrics import check_textfile_path, recording_backup

        check_textfile_path(textfile)  # a dry run too: the real run would refuse it
    progress = out.progress()

    async def attempt():  # a bad flag is an attempt too: its exit 2 is recorded in the textfile
        _one_of("--trigger", "--no-trigger")
        options = BackupOptions(dry_run=dry_run, no_wait=no_wait, force=force, trigger=trigger,
                                consistency=_choice(consistency, ("cluster", "per-node"), "--consistency"),
                                prune=not no_prune)
        return await run_backup(loaded, options, progress)

    run = attempt()
    if textfile and not dry_run:
        run = recording_backup(loaded, textfile, run)  # written after the run, succeeded or failed
    try:
        result = _run(run)
    finally:
        progress.close()
    return out.backup_result(result)


LIST_LIMIT = 100  # text: a year of hourly runs took seconds to lay out as a table, for a terminal's screenful


@app.command("list")
def list_runs(
    inventory: InventoryOpt = None,
    limit: Annotated[int | None, typer.Option("--limit", metavar="N", parser=LIMIT, help=(
        f"Only the newest N runs; 0: every run [default: {LIST_LIMIT}; with -o json, every run].")
    )] = None,
    output: OutputOpt = "text",
) -> int:
    """List the backups in the catalog, newest first."""
    from snapctl.abandoned_runs import listed
    from snapctl.catalog import open_catalog

    out = _renderer(output)  # first: it decides how an error is shown, the inventory's too
    catalog = open_catalog(_inventory(inventory))
    entries, problems = catalog.list()
    shown = (0 if output == "json" else LIST_LIMIT) if limit is None else limit
    kept = entries[:shown] if shown else entries
    return out.run_list(listed(catalog, kept), problems, catalog.describe(say_missing=not entries),
                        older=len(entries) - len(kept))


@app.command(cls=_RequiredAsDocumented)
def show(run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")],
         inventory: InventoryOpt = None, output: OutputOpt = "text") -> int:
    """Show one run's manifest."""
    from snapctl.abandoned_runs import stopped_warning
    from snapctl.catalog import open_catalog

    out = _renderer(output)
    catalog = open_catalog(_inventory(inventory))
    skipped: list[str] = []  # newer runs `latest` passed over: said on stderr, the document unchanged
    manifest = catalog.load(catalog.resolve(run, skipped))
    return out.manifest(manifest, skipped + stopped_warning(catalog, manifest))


@app.command(short_help="Agents, engines, raft groups, newest backup; exit 0/5/6.")
def status(
    inventory: InventoryOpt = None,
    watch: Annotated[float | None, typer.Option("--watch", "-w", metavar="[SECONDS]", parser=WATCH,
                                                   help="Refresh in place every SECONDS (default 2) until Ctrl-C.")] = None,
    node: NodesOpt = None,
    group: Annotated[list[str] | None, typer.Option("--group", "-g", metavar="GLOB",
                                                       help="Only raft groups matching this glob (repeatable).")] = None,
    textfile: TextfileOpt = None,
    output: OutputOpt = "text",
) -> int:
    """Is the cluster healthy, is it safe to back up, how old is the newest good backup? Exit 0/5/6."""
    from snapctl.yaml_errors import gc_paused

    out = _renderer(output)
    _path(textfile, "--textfile", _PROM_EXAMPLE)
    if watch is not None:
        from snapctl.errors import Interrupted
        from snapctl.status import watch_status

        loaded = _inventory(inventory)
        with out.status_watch() as show:
            try:
                _run(watch_status(loaded, watch, show, nodes=node, groups=group, textfile=textfile, remember=True))
            except Interrupted as stopped:  # how a watch ends: nothing to report
                return stopped.exit_code
        return show.exit_code
    # One look, then the process exits: the cyclic GC would walk the objects of every node, which
    # stay alive until the document is out, again and again (~0.25 s at 1000 nodes).
    with gc_paused():
        from snapctl.status import collect_status

        loaded = _inventory(inventory)
        return out.status(_run(collect_status(loaded, nodes=node, groups=group, textfile=textfile, remember=True)))


@app.command(short_help="Restore a run's snapshots; restore-prepare each engine.", cls=_RequiredAsDocumented)
def restore(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")],
    to: Annotated[str | None, typer.Option("--to", metavar="DIR", help="Target directory: DIR/<node>/<volume> (local "
                                                            "provider) [default: each node's restore.path].")] = None,
    zone: Annotated[str | None, typer.Option("--zone", metavar="ZONE", help="Zone for the new volumes (cloud) "
                                                               "[default: each node's restore.zone].")] = None,
    attach: Annotated[bool, typer.Option("--attach", help="Attach the new volumes to each node's "
                                                          "restore.instance (cloud).")] = False,
    no_record: Annotated[bool, typer.Option("--no-record", help="Write nothing to the catalog (a read-only copy of "
                                                                "it): nothing then keeps a prune from deleting "
                                                                "the run meanwhile.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Make every check and show the plan; restore "
                                                            "and write nothing.")] = False,
    inventory: InventoryOpt = None,
    output: OutputOpt = "text",
) -> int:
    """Restore every node's snapshots of a run into a target and restore-prepare its engine."""
    from snapctl.restore import restore_run
    from snapctl.restore_plan import plan_restore

    out = _renderer(output)
    loaded = _inventory(inventory)
    progress = out.progress()
    try:
        result = (plan_restore if dry_run else restore_run)(
            loaded, run, _path(to, "--to", "/srv/restore"), zone=zone, attach=attach, record_it=not no_record,
            reporter=progress)
    finally:
        progress.close()
    return out.restore_result(result)


@app.command(short_help="Restore drill for CI: restore, start, compare, tear down.")
def drill(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")] = "latest",
    junit: Annotated[str | None, typer.Option("--junit", metavar="FILE", help="Where the JUnit XML report goes "
                                                                 "[default: drill.junit, or ./snapctl-drill.xml].")] = None,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the scratch data and restored volumes for "
                                                      "inspection.")] = False,
    inventory: InventoryOpt = None,
    output: OutputOpt = "text",
) -> int:
    """Restore drill (CI): restore a run into scratch, start its engines, compare with PREPARE, tear down."""
    from snapctl.drill import run_drill

    out = _renderer(output)
    loaded = _inventory(inventory)
    progress = out.progress()
    try:
        report = run_drill(loaded, run, junit=_path(junit, "--junit", "reports/drill.xml"), keep=keep,
                           reporter=progress)
    finally:
        progress.close()
    return out.drill_result(report)


@app.command(short_help="Check that a run's snapshots exist and are complete.", cls=_RequiredAsDocumented)
def verify(
    run: Annotated[str, typer.Argument(metavar="RUN", help="Run id, unique prefix, or 'latest'.")],
    inventory: InventoryOpt = None,
    output: OutputOpt = "text",
) -> int:
    """Without restoring: does every snapshot of the run still exist, complete?"""
    from snapctl.verify import verify_run

    return _renderer(output).verify_result(verify_run(_inventory(inventory), run))


@app.command(short_help="Run the engines' own snapshots (checkpoints).")
def trigger(
    target: Annotated[str | None, typer.Argument(metavar="TARGET", help="Engine-specific target (region, table/shard); "
                                                         "default: everything.")] = None,
    node: NodesOpt = None,
    timeout: Annotated[float, typer.Option(metavar="SECONDS", parser=TRIGGER_TIMEOUT,
                                           help="Seconds to wait for each node's jobs.")] = 600.0,
    inventory: InventoryOpt = None,
    output: OutputOpt = "text",
) -> int:
    """Run the engines' own snapshots (checkpoints) on the chosen nodes and show each job's result."""
    from snapctl.trigger import trigger as run_trigger

    return _renderer(output).trigger_result(_run(run_trigger(_inventory(inventory), node, target, timeout)))


@app.command(short_help="Delete the runs the retention policy no longer keeps.")
def prune(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List exactly what would be deleted; delete nothing.")] = False,
    inventory: InventoryOpt = None,
    output: OutputOpt = "text",
) -> int:
    """Delete old runs (snapshots, then manifests) per the inventory's retention; resumes an interrupted prune."""
    from snapctl.prune import prune as run_prune

    return _renderer(output).prune_result(run_prune(_inventory(inventory), dry_run=dry_run))


@app.command(short_help="Snapshots no manifest owns, and leftovers; --delete removes them.")
def gc(
    delete: Annotated[bool, typer.Option(
        "--delete", help="Delete the orphans and leftovers found (takes the cluster lock).")] = False,
    include_unknown_runs: Annotated[bool, typer.Option(
        "--include-unknown-runs", help="With --delete, delete also the snapshots of runs this catalog has never "
        "heard of: they may be another catalog's backups (an older copy of this one, another user's).")] = False,
    inventory: InventoryOpt = None,
    output: OutputOpt = "text",
) -> int:
    """Snapshots tagged with this cluster that no manifest owns, and dead calls' leftovers; --delete removes them."""
    from snapctl.errors import BadInputError
    from snapctl.gc import gc as run_gc

    if include_unknown_runs and not delete:
        raise BadInputError("--include-unknown-runs goes with --delete", hint="without --delete, gc lists them anyway")
    return _renderer(output).gc_result(run_gc(_inventory(inventory), delete=delete,
                                              include_unknown_runs=include_unknown_runs))


def _demo_inventory(path: str):
    from snapctl import demo

    return demo.load_demo_inventory(_path(path, "-i", demo.EXAMPLE))


@demo_app.command("up")
def demo_up(inventory: DemoInventoryOpt = "inventory.example.yaml", output: OutputOpt = "text") -> int:
    """Start the demo cluster's agents and writers (idempotent)."""
    from snapctl import demo

    return _renderer(output).demo_cluster(demo.up(_demo_inventory(inventory)))


@demo_app.command("down")
def demo_down(inventory: DemoInventoryOpt = "inventory.example.yaml", output: OutputOpt = "text") -> int:
    """Stop the demo cluster (agents release anything held on the way out)."""
    from snapctl import demo

    return _renderer(output).demo_cluster(demo.down(_demo_inventory(inventory)))


@demo_app.command("run", short_help="Start the demo cluster, back it up, restore, check the rows.")
def demo_run(
    inventory: DemoInventoryOpt = "inventory.example.yaml",
    keep: Annotated[bool, typer.Option("--keep", help="Leave the cluster running afterwards.")] = False,
    output: OutputOpt = "text",
) -> int:
    """Start the demo cluster, back it up, restore the newest backup and check the rows match."""
    from snapctl import demo

    out = _renderer(output)
    return demo.run(_demo_inventory(inventory), out, keep=keep)


def _reporting_interrupts(command):
    """Every command: SIGTERM stops it as Ctrl-C does (``snapctl.runner``), and the interruption is
    reported as any error is, so that `-o json` still prints its one document (typer's own answer
    to a KeyboardInterrupt is a silent exit 130). Async commands get ``Interrupted`` from
    ``snapctl.runner.run`` already; this covers the others."""
    import functools

    @functools.wraps(command)
    def reporting(*args, **kwargs):
        from snapctl.entry import end_deferral
        from snapctl.logged_warnings import say_logged_warnings
        from snapctl.runner import sigterm_as_ctrl_c

        # Here, not in main: its handler needs `logging` (~2.5 ms), which `--help` and a usage
        # error never load, and nothing logs before a command begins.
        say_logged_warnings()
        if end_deferral():  # Ctrl-C came while the command line was parsed: stop before doing anything
            from snapctl.errors import Interrupted

            raise Interrupted()
        try:
            with sigterm_as_ctrl_c():
                return command(*args, **kwargs)
        except KeyboardInterrupt:
            from snapctl.errors import Interrupted

            raise Interrupted() from None

    return reporting


for _info in [*app.registered_commands, *demo_app.registered_commands]:
    _info.callback = _reporting_interrupts(_info.callback)


def _path(value: str | None, flag: str, example: str):
    """The flag's path, None when not given. An empty one is refused: ``--to ""`` acted as if the
    flag were missing (and ``Path("")`` is the current directory)."""
    from pathlib import Path

    from snapctl.errors import BadInputError

    if value is None:
        return None
    if not value.strip():
        raise BadInputError(f"{flag} '': give a path, not an empty string", hint=f"e.g. {flag} {example}")
    return Path(value)


def _choice(value: str | None, allowed: tuple[str, ...], flag: str) -> str | None:
    from snapctl.errors import BadInputError

    if value is not None and value not in allowed:
        raise BadInputError(f"{flag} {value!r} is not one of: {', '.join(allowed)}",
                            hint=f"e.g. {flag} {allowed[0]}")
    return value


def _one_of(*flags: str) -> None:
    """click lets the last of a flag pair win: `--trigger --no-trigger` (a wrapper's default, then
    the operator's) went on silently as either one."""
    from snapctl.errors import BadInputError

    given = [arg for arg in sys.argv[1:] if arg in flags]
    if len(set(given)) > 1:
        raise BadInputError(f"{' and '.join(flags)} together: give one of them",
                            hint=f"keep only the one you mean: {flags[0]} or {flags[1]}")


def _report(exc) -> int:
    from snapctl import render
    from snapctl.entry import asks_for_json

    # Before a command chose its output (typer parsing, a Ctrl-C as it began), a script that
    # asked for json still reads its one document on stdout.
    if not render.json_mode() and asks_for_json(sys.argv[1:]):
        render.error_document(exc)
    render.error(exc)
    return exc.exit_code


def main() -> None:
    """Entry point: the only place errors become exit codes."""
    import gc  # here: the module's `gc` is the command

    from snapctl.entry import end_deferral, optional_watch_seconds, usage_error
    from snapctl.errors import ExitCode, Interrupted, SnapctlError

    try:
        code = app(args=optional_watch_seconds(sys.argv[1:]), standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.TyperException as exc:  # usage errors: typer's own (vendored) click raises these
        if type(exc).__name__ == "NoArgsIsHelpError":  # `snapctl`, `snapctl demo`: the help, as asked
            exc.show()
            code = ExitCode.BAD_INPUT
        else:
            code = _report(usage_error(exc, sys.argv[1:]))
    except (typer.Abort, KeyboardInterrupt):  # outside any command: typer's own start
        code = _report(Interrupted())
    except SnapctlError as exc:
        code = _report(exc)
    # A Ctrl-C while typer parsed, and no command ran to notice it: after `--help`, say so; after a
    # usage error, which said its own (with `-o json`, its one document), leave it at that.
    if end_deferral() and not code:
        code = _report(Interrupted())
    # The interpreter's last garbage collections walk every object still alive, modules included:
    # ~20 ms of `snapctl --help`, more after a large status. They skip frozen objects; module
    # teardown still frees what it reaches, and the commands close what they open themselves.
    gc.freeze()
    sys.exit(int(code) if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
