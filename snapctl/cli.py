"""The `snapctl` command line: parse, make one core call, render. Nothing else lives here.

Imports of the core are inside the commands so that `snapctl --help` stays fast and never
loads a cloud SDK.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

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
app.add_typer(demo_app, name="demo")

InventoryOpt = Annotated[
    Optional[str],
    typer.Option("-i", "--inventory", envvar="SNAPCTL_INVENTORY", show_envvar=True,
                 help="Inventory file [default: ./inventory.yaml]."),
]
OutputOpt = Annotated[str, typer.Option("-o", "--output", help="text or json.")]
DemoInventoryOpt = Annotated[
    str, typer.Option("-i", "--inventory", envvar="SNAPCTL_INVENTORY", help="The demo's inventory.")
]


def _inventory(path: str | None):
    from snapctl.config import load_inventory

    return load_inventory(path)


def _renderer(output: str):
    from snapctl import render

    return render.Renderer.for_output(output)


@app.command()
def backup(
    inventory: InventoryOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Preflight and show the plan; hold nothing.")] = False,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Return once snapshots are fixed, not uploaded.")] = False,
    force: Annotated[bool, typer.Option("--force", help="Go on despite critical preflight findings.")] = False,
    trigger: Annotated[Optional[bool], typer.Option("--trigger/--no-trigger",
                                                    help="Run the engines' own snapshots first.")] = None,
    consistency: Annotated[Optional[str], typer.Option(help="cluster (one barrier) or per-node.")] = None,
    output: OutputOpt = "text",
) -> int:
    """Back up the whole cluster: prepare every node, snapshot, complete, record a manifest."""
    import asyncio

    from snapctl.orchestrator import BackupOptions
    from snapctl.orchestrator import backup as run_backup

    out = _renderer(output)
    options = BackupOptions(dry_run=dry_run, no_wait=no_wait, force=force, trigger=trigger,
                            consistency=_choice(consistency, ("cluster", "per-node"), "--consistency"))
    loaded = _inventory(inventory)
    progress = out.progress()
    try:
        result = asyncio.run(run_backup(loaded, options, progress))
    finally:
        progress.close()
    return out.backup_result(result)


@app.command("list")
def list_runs(inventory: InventoryOpt = None, output: OutputOpt = "text") -> int:
    """List the backups in the catalog, newest first."""
    from snapctl.catalog import open_catalog

    entries, problems = open_catalog(_inventory(inventory)).list()
    return _renderer(output).run_list(entries, problems)


@app.command()
def show(run: Annotated[str, typer.Argument(help="Run id, unique prefix, or 'latest'.")],
         inventory: InventoryOpt = None, output: OutputOpt = "text") -> int:
    """Show one run's manifest."""
    from snapctl.catalog import open_catalog

    catalog = open_catalog(_inventory(inventory))
    return _renderer(output).manifest(catalog.load(catalog.resolve(run)))


@app.command()
def status(inventory: InventoryOpt = None, output: OutputOpt = "text") -> int:
    """Is the cluster healthy, is it safe to back up, how old is the newest good backup?"""
    import asyncio

    from snapctl.status import collect_status

    return _renderer(output).status(asyncio.run(collect_status(_inventory(inventory))))


@app.command()
def restore(
    run: Annotated[str, typer.Argument(help="Run id, unique prefix, or 'latest'.")],
    to: Annotated[str, typer.Option("--to", help="Target directory (local provider).")],
    inventory: InventoryOpt = None,
    output: OutputOpt = "text",
) -> int:
    """Restore every node's snapshots of a run into a target."""
    from pathlib import Path

    from snapctl.restore import restore_run

    return _renderer(output).restore_result(restore_run(_inventory(inventory), run, Path(to)))


@app.command()
def trigger(
    target: Annotated[Optional[str], typer.Argument(help="Engine-specific target (region, table/shard); "
                                                         "default: everything.")] = None,
    node: Annotated[Optional[list[str]], typer.Option("--node", "-n", help="Only these nodes (repeatable).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each node's jobs.")] = 600.0,
    inventory: InventoryOpt = None,
    output: OutputOpt = "text",
) -> int:
    """Run the engines' own snapshots (checkpoints) on the chosen nodes and show each job's result."""
    import asyncio

    from snapctl.trigger import trigger as run_trigger

    return _renderer(output).trigger_result(asyncio.run(run_trigger(_inventory(inventory), node, target, timeout)))


@demo_app.command("up")
def demo_up(inventory: DemoInventoryOpt = "inventory.example.yaml", output: OutputOpt = "text") -> int:
    """Start the demo cluster's agents and writers (idempotent)."""
    from snapctl import demo

    return _renderer(output).demo_cluster(demo.up(_inventory(inventory)))


@demo_app.command("down")
def demo_down(inventory: DemoInventoryOpt = "inventory.example.yaml", output: OutputOpt = "text") -> int:
    """Stop the demo cluster (agents release anything held on the way out)."""
    from snapctl import demo

    return _renderer(output).demo_cluster(demo.down(_inventory(inventory)))


@demo_app.command("run")
def demo_run(
    inventory: DemoInventoryOpt = "inventory.example.yaml",
    keep: Annotated[bool, typer.Option("--keep", help="Leave the cluster running afterwards.")] = False,
    output: OutputOpt = "text",
) -> int:
    """Start the demo cluster, back it up, restore the newest backup and check the rows match."""
    from snapctl import demo

    return demo.run(_inventory(inventory), _renderer(output), keep=keep)


def _choice(value: str | None, allowed: tuple[str, ...], flag: str) -> str | None:
    from snapctl.errors import BadInputError

    if value is not None and value not in allowed:
        raise BadInputError(f"{flag} {value!r} is not one of: {', '.join(allowed)}")
    return value


def main() -> None:
    """Entry point: the only place errors become exit codes."""
    import click

    from snapctl.errors import ExitCode, SnapctlError

    try:
        code = app(standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = ExitCode.BAD_INPUT
    except (click.Abort, KeyboardInterrupt):
        print("snapctl: interrupted", file=sys.stderr)
        code = ExitCode.INTERRUPTED
    except SnapctlError as exc:
        from snapctl import render

        render.error(exc)
        code = exc.exit_code
    sys.exit(int(code) if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
