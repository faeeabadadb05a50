"""``export --day D [--out DIR]`` and ``archives list``: the Parquet archive."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, date, datetime

from .. import config
from ..config import Settings
from .database import database

NEEDS = (*config.DATABASE, "archive_dir")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` and ``archives``."""
    export = commands.add_parser(
        "export", help="export one UTC day of the log to Parquet (verified; recorded when "
                       "written to SKYWIRE_ARCHIVE_DIR)")
    export.add_argument("--day", type=_day, required=True, help="YYYY-MM-DD (UTC)")
    export.add_argument("--out", default=None,
                        help="directory or s3://bucket/prefix (default SKYWIRE_ARCHIVE_DIR)")
    export.set_defaults(handler=_export, needs=NEEDS)
    group = commands.add_parser("archives", help="the recorded Parquet archives")
    actions = group.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="each archived day: rows, bytes, sha256, path")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    group.set_defaults(handler=_archives, needs=config.DATABASE)


def _export(settings: Settings, args: argparse.Namespace) -> int:
    from ..archive.export import NothingToExport, export_day

    out = args.out or settings.archive_dir
    if not out:
        print("error: give --out DIR (or set SKYWIRE_ARCHIVE_DIR)", file=sys.stderr)
        return 2
    today = datetime.now(UTC).date()
    into_archive = bool(settings.archive_dir) and out.rstrip("/") == \
        settings.archive_dir.rstrip("/")
    if args.day >= today and into_archive:
        # A snapshot beside the day's archive would be read twice by a glob over the
        # archive; the partition manager archives the day once it is closed.
        print(f"error: {args.day} is not over yet: export a snapshot of it with --out DIR "
              "outside SKYWIRE_ARCHIVE_DIR", file=sys.stderr)
        return 2
    with database(settings) as settings:
        try:
            exported = export_day(settings.database_url, out, args.day, today,
                                  record=into_archive)
        except NothingToExport as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(exported.summary())
    return 0


def _archives(settings: Settings, args: argparse.Namespace) -> int:
    from ..log import archives

    with database(settings) as settings, archives.connect(settings.database_url) as conn:
        found = archives.list_archives(conn)
    if args.json:
        for archive in found:
            print(json.dumps(archive.as_json()))
        return 0
    print(f"{'day':10} {'rows':>10} {'bytes':>12} {'first id':>12} {'last id':>12} "
          f"{'sha256':16} {'created':25} path")
    for a in found:
        print(f"{a.day.isoformat():10} {a.rows:>10} {a.bytes:>12} {a.first_id:>12} "
              f"{a.last_id:>12} {a.sha256[:16]:16} {a.created.isoformat(timespec='seconds'):25} "
              f"{a.path}")
    return 0
