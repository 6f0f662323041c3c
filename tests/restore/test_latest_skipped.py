"""`restore latest` and `drill latest` whose newest run's manifest cannot be read took the run before
it without a word: the operator restored last week's data believing it was last night's."""

from __future__ import annotations

import json
import subprocess
import sys

from snapctl.errors import ExitCode


def snapctl(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snapctl.cli", *args, "-i", str(cluster.inventory_path)],
                          cwd=cluster.directory, capture_output=True, text=True, timeout=180, check=False)


def test_latest_warns_naming_the_newer_run_it_passed_over_and_why(sqlite_cluster, tmp_path):
    older = sqlite_cluster.backup()
    newer = sqlite_cluster.backup()
    manifest = sqlite_cluster.directory / "catalog" / "restore-test" / "manifests" / f"{newer}.json"
    manifest.write_text(manifest.read_text()[:200])  # cut short: a disk that filled up, a bad copy

    restored = snapctl(sqlite_cluster, "restore", "latest", "--to", str(tmp_path / "json"), "-o", "json")
    assert restored.returncode == ExitCode.OK, restored.stdout + restored.stderr
    data = json.loads(restored.stdout)["data"]
    assert data["run_id"] == older
    [warning] = data["warnings"]
    assert warning.startswith(f"latest is run {older}, not run {newer} (started ") and "listed as succeeded" in warning
    assert warning.endswith(f"its manifest {manifest} cannot be read: not valid JSON"), warning  # and why

    text = snapctl(sqlite_cluster, "restore", "latest", "--to", str(tmp_path / "text"))
    assert text.returncode == ExitCode.OK, text.stdout + text.stderr
    assert f"warning: latest is run {older}, not run {newer}" in " ".join(text.stderr.split())

    drilled = snapctl(sqlite_cluster, "drill", "latest", "--junit", str(tmp_path / "drill.xml"), "-o", "json")
    assert drilled.returncode == ExitCode.OK, drilled.stdout + drilled.stderr
    report = json.loads(drilled.stdout)["data"]
    [again] = report["warnings"]  # the index no longer lists it: its age comes from its run id
    assert again.startswith(f"latest is run {older}, not run {newer} (started ") and "not in the index" in again
    assert again.endswith("cannot be read: not valid JSON")

    named = snapctl(sqlite_cluster, "restore", older, "--to", str(tmp_path / "named"), "-o", "json")
    assert json.loads(named.stdout)["data"]["warnings"] == [], "a run named is not `latest`: nothing passed over"

    # `verify latest` and `show latest` passed it over without a word too.
    verified = snapctl(sqlite_cluster, "verify", "latest", "-o", "json")
    assert verified.returncode == ExitCode.OK, verified.stdout + verified.stderr
    [said] = json.loads(verified.stdout)["data"]["warnings"]
    assert said.startswith(f"latest is run {older}, not run {newer}")
    warned = f"warning: latest is run {older}, not run {newer}"
    verified = snapctl(sqlite_cluster, "verify", "latest")
    assert warned in " ".join(verified.stderr.split()), verified.stderr
    shown = snapctl(sqlite_cluster, "show", "latest")
    assert warned in " ".join(shown.stderr.split()) and f"run {older} of cluster" in shown.stdout
    shown = snapctl(sqlite_cluster, "show", "latest", "-o", "json")  # the document stays the manifest
    assert warned in " ".join(shown.stderr.split()) and json.loads(shown.stdout)["data"]["run_id"] == older


def test_latest_with_a_start_time_written_without_its_zone_still_warns(sqlite_cluster, tmp_path):
    """A hand-edited manifest whose started_at lost its Z, beside a newer unreadable one: comparing
    the two times raised TypeError (offset-naive against offset-aware), a traceback."""
    older = sqlite_cluster.backup()
    newer = sqlite_cluster.backup()
    manifests = sqlite_cluster.directory / "catalog" / "restore-test" / "manifests"
    document = json.loads((manifests / f"{older}.json").read_text())
    document["started_at"] = document["started_at"].removesuffix("Z")
    (manifests / f"{older}.json").write_text(json.dumps(document))
    (manifests / f"{newer}.json").write_text("{")
    (manifests.parent / "index.json").unlink()

    restored = snapctl(sqlite_cluster, "restore", "latest", "--to", str(tmp_path / "r"), "-o", "json")
    assert restored.returncode == ExitCode.OK, restored.stdout + restored.stderr
    data = json.loads(restored.stdout)["data"]
    assert data["run_id"] == older
    [warning] = data["warnings"]
    assert warning.startswith(f"latest is run {older}, not run {newer} (started "), warning
