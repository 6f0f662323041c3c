"""A drill's teardown: delete every volume its restores made, those they returned and those a
restore that failed part-way left carrying the drill's tag, then its scratch directory. What
cannot be deleted is a leftover and a teardown error; ``--keep`` leaves everything, listed."""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from snapctl.errors import SnapctlError
from snapctl.redact import redact

if TYPE_CHECKING:
    from snapctl.drill import DrillReport, _Drill


def teardown(drill: _Drill, report: DrillReport, keep: bool) -> None:
    """Delete what the drill restored and started; scratch engines already stopped with their node."""
    for ref, restored in drill.made:
        if keep:
            report.leftovers.append(restored)
        else:
            _deleted(drill, report, restored, f"node {ref.node}: cannot delete restored volume {restored}")
    _teardown_unreturned(drill, report, keep)
    if not keep:
        shutil.rmtree(drill.scratch, ignore_errors=True)


def _teardown_unreturned(drill: _Drill, report: DrillReport, keep: bool) -> None:
    """What carries the drill's tags though no restore returned it: a restore that failed once its
    volume was made and could not delete it (its own discard refused, or killed part-way). Not
    in ``made``, and the drill's record is finished, so nothing else would look for it."""
    find = getattr(drill.provider, "find_restored", None)
    if find is None:
        return
    tagged = ", ".join(f"{k}={v}" for k, v in drill.tags.items())
    returned = {restored for _, restored in drill.made}
    try:
        found = [volume for volume in find(drill.tags, drill.places) if volume not in returned]
    except Exception as exc:  # noqa: BLE001 - said, and the drill fails: what is left is not known
        report.teardown_errors.append(f"cannot look for volumes tagged {tagged} that failed restores left: "
                                      f"{error_reason(exc)}")
        return
    for volume in found:
        what = f"volume {volume}, tagged {tagged}, that a failed restore left"
        if keep:
            report.leftovers.append(volume)
        elif _deleted(drill, report, volume, f"cannot delete {what}"):
            report.warnings.append(f"deleted {what}")
            drill.reporter.step("teardown", f"deleted {what}")


def _deleted(drill: _Drill, report: DrillReport, volume: str, cannot: str) -> bool:
    """``volume`` deleted: directories and cloud volumes alike (the provider detaches what it
    attached, and refuses anything not tagged for this cluster). One that cannot be is a leftover
    and a teardown error, ``cannot`` saying which."""
    try:
        drill.provider.delete_volume(volume)
        return True
    except Exception as exc:  # noqa: BLE001 - one volume's failure must not leave the others behind
        report.teardown_errors.append(f"{cannot}: {error_reason(exc)}")
        report.leftovers.append(volume)
        return False


def error_reason(exc: Exception) -> str:
    """What a teardown error says of ``exc``: snapctl's own words, or a surprise's, redacted."""
    return str(exc) if isinstance(exc, SnapctlError) else redact(f"{type(exc).__name__}: {exc}")
