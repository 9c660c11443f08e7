"""Blobs and the rows that name them: which blobs the database references, and collecting the
ones no row names (`python -m api.gc`; a stream's deletion collects its own).

Blobs are written before the rows that point at them, so a blob that no row names may be one an
upload or a job's commit is about to reference. Only blobs older than the grace period
(`Settings.blob_grace_s`) are deleted, and a put of a blob that already exists refreshes its
modification time (`api.storage`), so such a blob is always young. The store is listed before
the references are read, and each blob's age is read again just before it is deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, select, true, union
from sqlalchemy.orm import Session

from ..models import Adapter, Task, TreeVersion, now
from ..storage import BlobStore

log = logging.getLogger(__name__)


@dataclass
class Collected:
    """What a collection found and did."""

    scanned: int = 0  # blobs considered
    referenced: int = 0  # named by a row: kept
    young: int = 0  # named by no row but younger than the grace period: kept for a later run
    deleted: list[str] = field(default_factory=list)  # sha256s deleted (or, in a dry run, to delete)
    deleted_bytes: int = 0


def _references(stream_id: str | None) -> list[Select[tuple[str | None]]]:
    """SELECTs of the sha256s rows name (all rows, or one stream's): tasks' splits, adapters and
    each version's extras blob (the manifest's adapters are the adapter rows)."""

    def of(column: Any) -> ColumnElement[bool]:
        return true() if stream_id is None else column == stream_id

    return [
        select(Task.train_sha256.label("sha")).where(of(Task.stream_id)),
        select(Task.eval_sha256.label("sha")).where(of(Task.stream_id)),
        select(Adapter.sha256.label("sha")).where(of(Adapter.stream_id)),
        select(TreeVersion.manifest["extras"].as_string().label("sha")).where(of(TreeVersion.stream_id)),
    ]


def referenced(*, session: Session, stream_id: str | None = None) -> set[str]:
    """The sha256s the rows name: all of them, or those of one stream's rows."""
    return {sha for sha in session.scalars(select(union(*_references(stream_id)).subquery().c.sha)) if sha}


def _sweep(store: BlobStore, shas: Iterable[str], *, grace_s: float, dry_run: bool, out: Collected) -> Collected:
    """Delete the blobs `shas` (named by no row when the caller looked) that are older than the
    grace period, reading each one's age again just before."""
    cutoff = now() - timedelta(seconds=grace_s)
    for sha in shas:
        modified = store.modified(sha)
        if modified is None:  # already gone
            continue
        if modified >= cutoff:
            out.young += 1
            continue
        out.deleted.append(sha)
        if not dry_run:
            store.delete(sha)
    return out


def collect_garbage(*, session: Session, store: BlobStore, grace_s: float, dry_run: bool = False) -> Collected:
    """Delete every blob that no row names and that is older than `grace_s` seconds."""
    cutoff = now() - timedelta(seconds=grace_s)
    listed = list(store.blobs())  # listed before the references are read: see the module's note
    refs = referenced(session=session)
    session.rollback()  # nothing to hold while the store works
    out = Collected(scanned=len(listed))
    sizes = {}
    for b in listed:
        if b.sha in refs:
            out.referenced += 1
        elif b.modified >= cutoff:
            out.young += 1
        else:
            sizes[b.sha] = b.size
    _sweep(store, sorted(sizes), grace_s=grace_s, dry_run=dry_run, out=out)
    out.deleted_bytes = sum(sizes[s] for s in out.deleted)
    log.info(
        "blob collection: %d scanned, %d referenced, %d young, %d %s (%d bytes)",
        out.scanned,
        out.referenced,
        out.young,
        len(out.deleted),
        "to delete" if dry_run else "deleted",
        out.deleted_bytes,
    )
    return out


def delete_unreferenced(*, session: Session, store: BlobStore, shas: Iterable[str], grace_s: float) -> Collected:
    """Of `shas`, delete those no row names any more and older than `grace_s` seconds (the blobs
    of a stream just deleted); the others stay for `collect_garbage`."""
    candidates = set(shas)
    refs = referenced(session=session)
    session.rollback()
    out = Collected(scanned=len(candidates), referenced=len(candidates & refs))
    return _sweep(store, sorted(candidates - refs), grace_s=grace_s, dry_run=False, out=out)
