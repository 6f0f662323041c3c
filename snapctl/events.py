"""Progress events of long operations. The CLI's render module shows them; the core never prints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from snapctl.health import Finding
    from snapctl.manifest import Manifest
    from snapctl.providers import SnapshotRef


class Reporter(Protocol):
    def step(self, name: str, message: str) -> None:
        """A new phase of the run began (lock, complete, preflight, prepare, snapshot, wait, rollback)."""

    def node(self, node: str, phase: str, detail: str | None = None) -> None:
        """One node moved on (preparing, held, snapshotting, released, failed)."""

    def finding(self, finding: Finding) -> None:
        """Preflight found something worth showing."""

    def snapshot_progress(self, ref: SnapshotRef) -> None:
        """A snapshot's upload progressed (called from a provider thread)."""

    def finished(self, manifest: Manifest) -> None:
        """The run ended (succeeded or failed) and its manifest is saved."""


class NullReporter:
    def step(self, name: str, message: str) -> None:
        pass

    def node(self, node: str, phase: str, detail: str | None = None) -> None:
        pass

    def finding(self, finding: Finding) -> None:
        pass

    def snapshot_progress(self, ref: SnapshotRef) -> None:
        pass

    def finished(self, manifest: Manifest) -> None:
        pass

    def close(self) -> None:
        pass
