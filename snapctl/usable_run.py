"""Which run restore, drill and verify may use: a succeeded run of the inventory's provider, or one a
killed snapctl left running with every snapshot taken; anything else is refused, with why."""

from __future__ import annotations

from snapctl.abandoned_runs import as_stopped_backup, newer_stopped_backups
from snapctl.catalog import Catalog
from snapctl.errors import BadInputError
from snapctl.manifest import IndexEntry, Manifest
from snapctl.providers import Provider


def usable_run(catalog: Catalog, manifest: Manifest, nothing: str, warnings: list[str], *,
               latest: bool = False, running: list[IndexEntry] | None = None) -> Manifest:
    """A succeeded run, or one a killed snapctl left running with every snapshot taken (which a
    warning then says): what restore, drill and verify use; else the refusal. ``latest``: the
    run is `latest`, and a newer such run is named in a warning; ``running``: the runs its lookup
    found running (``Catalog.resolve``), else the catalog is listed again for them."""
    if (stopped := as_stopped_backup(catalog, manifest)) is not None:
        warnings.append(stopped)
    elif manifest.status != "succeeded":
        raise not_succeeded(manifest, nothing)
    elif latest:
        warnings += newer_stopped_backups(catalog, manifest, running)
    return manifest


def not_succeeded(manifest: Manifest, nothing: str) -> BadInputError:
    """Only a succeeded run is restored, drilled or verified. One a prune marked is being deleted,
    whatever snapshots it still has: "nothing to restore" would send the operator after lost data."""
    if manifest.status == "pruning":
        return BadInputError(f"run {manifest.run_id} is being deleted by a prune: it cannot be used any more",
                             hint="pick another succeeded run from `snapctl list`; the prune that marked it, or the "
                                  "next one, deletes what is left of it")
    return BadInputError(f"run {manifest.run_id} {manifest.status}: {nothing}",
                         hint="pick a succeeded run from `snapctl list`")


def check_provider(manifest: Manifest, provider: Provider) -> None:
    """A run's snapshots are only its own provider's to find: another would call them all gone."""
    if manifest.provider != provider.name:
        raise BadInputError(f"run {manifest.run_id} was made with the {manifest.provider} provider, not "
                            f"{provider.name} (the inventory's): {provider.name} cannot find or restore its snapshots",
                            hint=f"use an inventory whose provider is the one the run was made with "
                                 f"(provider: {{type: {manifest.provider}, ...}})")
