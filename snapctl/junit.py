"""A drill as JUnit XML, the report format every CI system shows: one testcase per node, one for
the cluster. A mismatch is a ``failure`` (the data is wrong), anything else that went wrong an
``error`` (the drill could not tell); messages name the node and what differs."""

from __future__ import annotations

import os
import re
import secrets
import socket
import stat
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from snapctl.errors import SnapctlError, interrupted_by_signal, os_reason
from snapctl.input_files import file_kind

if TYPE_CHECKING:
    from snapctl.drill import DrillReport, NodeDrill


def drill_junit(report: DrillReport) -> ET.ElementTree:
    failures = sum(n.verdict == "mismatch" for n in report.nodes)
    errors = sum(n.verdict == "error" for n in report.nodes)
    cluster_failed = bool(failures or errors or report.teardown_errors or report.interrupted or report.error)
    total_s = (report.finished_at - report.started_at).total_seconds() if report.finished_at else 0.0
    counts = {"tests": str(len(report.nodes) + 1), "failures": str(failures + (1 if failures else 0)),
              "errors": str(errors + (1 if cluster_failed and not failures else 0)), "skipped": "0",
              "time": f"{total_s:.3f}"}
    suites = ET.Element("testsuites", name="snapctl drill", **counts)
    suite = ET.SubElement(suites, "testsuite", name=f"drill {report.cluster} run {report.run_id}",
                          timestamp=report.started_at.strftime("%Y-%m-%dT%H:%M:%S"), hostname=socket.gethostname(),
                          **counts)
    properties = ET.SubElement(suite, "properties")
    for name, value in (("cluster", report.cluster), ("run_id", report.run_id), ("drill_id", report.drill_id),
                        ("provider", report.provider), ("rto_s", report.rto_s)):
        if value is not None:
            ET.SubElement(properties, "property", name=name, value=str(value))
    classname = f"snapctl.drill.{report.cluster}"
    for node in report.nodes:
        _node_case(suite, classname, node)
    _cluster_case(suite, classname, report, total_s)
    ET.indent(suites)
    return ET.ElementTree(suites)


def usable_report_path(path: Path) -> Path:
    """``path``, its directory made as pytest's --junitxml does (a CI job's fresh checkout has no
    reports/ yet); bad input where no report can be written there."""
    from snapctl.errors import BadInputError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot write the junit report to {path}: cannot create {path.parent}: "
                            f"{os_reason(exc)}", hint="name a file in a directory that exists or can be made") from exc
    if path.is_dir():
        raise BadInputError(f"cannot write the junit report to {path}: it is a directory",
                            hint=f"name a file, e.g. --junit {path / 'drill.xml'}")
    mode = _mode(path)
    if mode is not None and (stat.S_ISBLK(mode) or stat.S_ISSOCK(mode)):
        raise BadInputError(f"cannot write the junit report to {path}: it is {file_kind(mode)}",
                            hint="name a regular file, a FIFO or a character device such as /dev/stdout")
    if mode is not None and _in_place(mode):
        if not os.access(path, os.W_OK):
            raise BadInputError(f"cannot write the junit report to {path}: permission denied",
                                hint="name a file this user may write to")
        return path
    # As the report will be written, once: a directory that refuses files (its mode, an immutable
    # flag, a read-only mount) is found now, not after the whole drill.
    probe = path.resolve().with_name(f".{path.name}.{secrets.token_hex(4)}.probe")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        probe.unlink()
    except OSError as exc:
        raise BadInputError(f"cannot write the junit report to {path}: {os_reason(exc)} in {path.parent}",
                            hint="name a file in a directory this user may write to") from exc
    return path


def write_junit_refusal(path: Path, cluster: str, run_ref: str, exc: SnapctlError,
                        cleaned_up: list[str] | None = None) -> None:
    """The report of a drill that could not begin: one errored case saying why, so that a CI job
    publishing reports shows the reason, not "no test results". Best effort: ``exc`` is what matters.
    ``cleaned_up``: what it had cleaned up of earlier killed drills before it was refused."""
    suites = ET.Element("testsuites", name="snapctl drill", tests="1", failures="0", errors="1", skipped="0",
                        time="0.000")
    suite = ET.SubElement(suites, "testsuite", name=f"drill {cluster} run {run_ref}", tests="1", failures="0",
                          errors="1", skipped="0", time="0.000", hostname=socket.gethostname())
    case = ET.SubElement(suite, "testcase", classname=f"snapctl.drill.{cluster}", name=f"cluster {cluster}",
                         time="0.000")
    error = ET.SubElement(case, "error", message=f"the drill could not begin: {exc.message}", type="error")
    error.text = exc.message + (f"\nhint: {exc.hint}" if exc.hint else "")
    if cleaned_up:
        ET.SubElement(case, "system-out").text = "\n".join(_cleanup_lines(cleaned_up))
    ET.indent(suites)
    try:
        _write(ET.ElementTree(suites), path)
    except SnapctlError:
        pass


def write_junit(report: DrillReport, path: Path) -> Path:
    """Write atomically (temp file, rename): a CI job never reads half a report. Into a FIFO or a
    character device (/dev/stdout) in place: those are not files to replace."""
    return _write(drill_junit(report), path)


# What XML 1.0 allows; anything else (an ANSI colour code or a NUL in a scratch engine's last log
# line, an agent's error) made the whole report unreadable to CI's parser.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _mode(path: Path) -> int | None:
    """The mode of what ``path`` names, after symlinks (/dev/stdout's); None if nothing is there."""
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _in_place(mode: int) -> bool:
    # A FIFO or a character device (/dev/stdout, /dev/null, a CI log pipe) is written into as it
    # is: replaced by a renamed temp file, as root, it became a regular file (/dev/null for all).
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)


def _write(tree: ET.ElementTree, path: Path) -> Path:
    for element in tree.iter():
        element.text = _NOT_XML.sub("\ufffd", element.text) if element.text else element.text
        for key, value in element.attrib.items():
            element.attrib[key] = _NOT_XML.sub("\ufffd", value)
    mode = _mode(path)
    if mode is not None and _in_place(mode):
        try:  # not resolved: /dev/stdout's target is /proc/self/fd/1's, e.g. "pipe:[123]"
            with open(os.open(path, os.O_WRONLY | os.O_CLOEXEC), "wb") as out:
                tree.write(out, encoding="utf-8", xml_declaration=True)
        except OSError as exc:
            raise SnapctlError(f"cannot write the junit report to {path}: {os_reason(exc)}",
                               hint="the drill is on record in the catalog: `snapctl show RUN`") from exc
        return path
    path = path.resolve()
    # Not mkstemp's 0600: the report is no secret, and the CI step that publishes it may run as
    # another user. The umask decides, as for any file the job writes.
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        try:
            with open(temp, "xb") as out:
                tree.write(out, encoding="utf-8", xml_declaration=True)
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
    except OSError as exc:  # checked before the drill began; the disk or the directory changed since
        raise SnapctlError(f"cannot write the junit report to {path}: {os_reason(exc)}",
                           hint="the drill is on record in the catalog: `snapctl show RUN`") from exc
    return path


def _node_case(suite: ET.Element, classname: str, node: NodeDrill) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=f"node {node.node} ({node.engine or '?'})",
                         time=f"{node.rto_s or 0.0:.3f}")
    if node.verdict == "mismatch":
        message = f"node {node.node}: " + "; ".join(node.mismatches)
        failure = ET.SubElement(case, "failure", message=message, type="mismatch")
        failure.text = "\n".join(node.mismatches)
    elif node.verdict == "error":
        message = f"node {node.node}: {node.error}"
        error = ET.SubElement(case, "error", message=message, type="error")
        error.text = message + (f"\nhint: {node.hint}" if node.hint else "")
    out = ET.SubElement(case, "system-out")
    out.text = "\n".join(_node_lines(node))


def _cluster_case(suite: ET.Element, classname: str, report: DrillReport, total_s: float) -> None:
    case = ET.SubElement(suite, "testcase", classname=classname, name=f"cluster {report.cluster}",
                         time=f"{total_s:.3f}")
    bad = [n for n in report.nodes if n.verdict != "passed"]
    if any(n.verdict == "mismatch" for n in bad):
        names = ", ".join(n.node for n in bad)
        ET.SubElement(case, "failure", message=f"restored data does not match the backup on: {names}", type="mismatch")
    elif bad or report.teardown_errors or report.interrupted or report.error:
        problems = [f"refused before restoring anything: {report.error}"] if report.error else []
        problems += [f"the drill was {interrupted_by_signal()}"] if report.interrupted else []
        problems += [f"node {n.node}: {n.error}" for n in bad] + report.teardown_errors
        error = ET.SubElement(case, "error", message="; ".join(problems), type="error")
        if report.error:
            error.text = report.error + (f"\nhint: {report.hint}" if report.hint else "")
    unmeasured = "rto: not measured (" + ("nothing was restored)" if report.error else "a node failed)")
    lines = [f"rto: {report.rto_s:.3f}s" if report.rto_s is not None else unmeasured]
    lines += [f"left behind: {item}" for item in report.leftovers]
    lines += _cleanup_lines(report.cleaned_up)
    out = ET.SubElement(case, "system-out")
    out.text = "\n".join(lines)


def _cleanup_lines(cleaned_up: list[str]) -> list[str]:
    """A drill killed outright the night before shows in CI only here: its own job never wrote a report."""
    return [f"cleanup: {line}" for line in cleaned_up]


def _node_lines(node: NodeDrill) -> list[str]:
    lines = [f"runs on: {node.runs_on or '-'}"]
    lines += [f"volume {name}: {where}" for name, where in node.volumes.items()]
    for label, value in (("restore", node.restore_s), ("engine start", node.start_s), ("verify", node.verify_s)):
        if value is not None:
            lines.append(f"{label}: {value:.3f}s")
    if node.expected and node.facts:
        for table, want in node.expected.tables.items():
            got = node.facts.tables.get(table)
            lines.append(f"table {table}: {got.rows if got else 'missing'} rows (recorded {want.rows})")
    return lines
