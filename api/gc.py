"""`python -m api.gc [--grace-s S] [--dry-run]`: delete the blobs no row names and older than the
grace period (default `TREELORA_BLOB_GRACE_S`), from the store the settings name; prints a JSON
summary. Safe beside a running API and workers: see `api.services.blobs`."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .db import session_factory
from .services.blobs import collect_garbage
from .settings import get_settings
from .storage import make_store


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="python -m api.gc", description=__doc__)
    parser.add_argument(
        "--grace-s",
        type=float,
        default=settings.blob_grace_s,
        help="keep blobs written or put this recently (seconds; default %(default)s)",
    )
    parser.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    args = parser.parse_args(argv)
    if not args.grace_s >= 0:
        parser.error("--grace-s must be a number >= 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with session_factory(settings.db_url)() as session:
        out = collect_garbage(session=session, store=make_store(settings), grace_s=args.grace_s, dry_run=args.dry_run)
    summary = {
        "dry_run": args.dry_run,
        "scanned": out.scanned,
        "referenced": out.referenced,
        "young": out.young,
        "deleted": len(out.deleted),
        "deleted_bytes": out.deleted_bytes,
    }
    json.dump(summary, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
