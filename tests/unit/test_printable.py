"""What snapctl echoes of the operator's input is printable and short (snapctl/printable.py)."""

from __future__ import annotations

import io

import pytest

from snapctl.printable import printable, quoted


@pytest.mark.parametrize(("text", "shown"), [
    ("plain/path.yaml", "plain/path.yaml"),
    ("inv\nentory.yaml", "inv\\nentory.yaml"),
    ("/tmp/\x1b[31mx.yaml", "/tmp/\\x1b[31mx.yaml"),
    ("a\tb\rc\x00d\x7fe\x9bf\u2028g", "a\\tb\\rc\\x00d\\x7fe\\x9bf\\u2028g"),
    ("dé/ünï☃", "dé/ünï☃"),  # letters of any script are not control characters
])
def test_control_characters_are_written_as_their_escapes(text, shown):
    assert printable(text) == shown


def test_a_long_value_is_cut_with_an_ellipsis():
    assert printable("a" * 100_000, 80) == "a" * 79 + "…"
    assert quoted("r" * 64) == "'" + "r" * 64 + "'"  # a whole run id fits
    assert quoted("x\ny" * 100, 10) == "'x\\nyx\\nyx…'"  # escaped first, then cut


def test_a_text_line_is_one_line_whatever_it_quotes(monkeypatch):
    from snapctl.render import Renderer

    renderer = Renderer.for_output("text")
    out = io.StringIO()
    monkeypatch.setattr(renderer.out, "file", out)
    renderer.line("dry run: would restore run r1 of cluster c with provider local into /srv/rel\nline")
    assert out.getvalue() == "dry run: would restore run r1 of cluster c with provider local into /srv/rel\\nline\n"
