"""The drill's `-o json` document is for CI scripts: within `schema_version` 1 its fields are only
ever added to (docs/restore.md, "JSON"). These are the fields it had when that was promised."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from snapctl.drill import DrillReport, NodeDrill
from snapctl.render import JSON_SCHEMA_VERSION
from snapctl.render.restore import drill_document

DOCS = Path(__file__).resolve().parents[2] / "docs" / "restore.md"

PROMISED = {"cluster", "run_id", "drill_id", "provider", "started_at", "finished_at", "rto_s", "nodes", "scratch_dir",
            "owner", "owner_process", "abandoned", "cleaned_up", "kept", "interrupted", "leftovers", "teardown_errors",
            "junit", "record", "warnings", "error", "hint", "ok", "exit_code"}
PROMISED_PER_NODE = {"node", "engine", "verdict", "runs_on", "volumes", "expected", "facts", "mismatches", "error",
                     "hint", "restore_s", "start_s", "verify_s", "rto_s"}


def _document() -> dict:
    report = DrillReport(cluster="c", run_id="r", drill_id="d", provider="local", started_at=datetime.now(UTC),
                         nodes=[NodeDrill(node="n1")])
    return drill_document(report)


def test_the_drill_document_keeps_every_field_promised_within_schema_version_1():
    document = _document()
    assert JSON_SCHEMA_VERSION == 1, "a bump is the incompatible change the docs allow: update the docs and this test"
    assert PROMISED <= set(document), PROMISED - set(document)
    assert PROMISED_PER_NODE <= set(document["nodes"][0]), PROMISED_PER_NODE - set(document["nodes"][0])


def test_the_docs_name_every_field_of_the_drill_document_and_its_stability():
    section = DOCS.read_text().split("## JSON", 1)[1]
    named = set(re.findall(r"`(?:data\.)?([a-z_]+)`", section))
    document = _document()
    assert set(document) - named == set(), "a field of data the docs do not name"
    assert set(document["nodes"][0]) - named == set(), "a field of data.nodes[] the docs do not name"
    assert "only ever added to" in " ".join(section.split())
