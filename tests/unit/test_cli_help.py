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
