"""`--help` says what each flag does, as the docs do."""

from __future__ import annotations

from typer.testing import CliRunner

from snapctl.cli import app


def _help(*command: str) -> str:
    result = CliRunner().invoke(app, [*command, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())


def test_gc_delete_says_it_removes_the_leftovers_too():
    # docs/retention.md: `gc --delete` deletes the orphans and the dead calls' leftovers it lists.
    assert "Delete the orphans and leftovers found" in _help("gc")


def test_backup_no_wait_speaks_of_completing_not_uploading():
    # README step 8: the run waits for the snapshots to complete, or not (--no-wait); a local
    # snapshot is never "uploaded", it is made durable.
    text = _help("backup")
    assert "without waiting for them to complete" in text
    assert "uploaded" not in text


def test_no_command_is_summed_up_in_a_cut_off_sentence():
    # `snapctl --help` listed eight of its eleven commands as half a sentence ("Back up the whole
    # cluster: prepare every node, snapshot,..."): click cuts a first sentence longer than the
    # line leaves room for, on an 80-column terminal and any wider one.
    for group in ([], ["demo"]):
        result = CliRunner().invoke(app, [*group, "--help"], terminal_width=80)
        assert result.exit_code == 0, result.output
        listed = result.output.split("Commands:", 1)[1].strip().splitlines()
        assert len(listed) >= 3 and not [line for line in listed if line.rstrip().endswith("...")], result.output


def test_usage_lines_name_a_required_run_as_the_docs_do():
    # typer wrote `snapctl show [OPTIONS] {RUN}`; README and docs/ write `snapctl show RUN`.
    import typer

    commands = typer.main.get_command(app).commands
    for name in [*commands, *(f"demo {sub}" for sub in commands["demo"].commands)]:
        usage = CliRunner().invoke(app, [*name.split(), "--help"], terminal_width=200).output.splitlines()[0]
        assert usage.startswith(f"Usage: snapctl {name} ") and "{" not in usage, usage
    assert _help("show").startswith("Usage: snapctl show [OPTIONS] RUN ")
