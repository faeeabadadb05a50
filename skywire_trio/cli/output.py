"""How commands print: a table for people by default, JSON lines with ``--json``.

Timestamps are ISO 8601 (``2026-11-29T17:02:35.123456+00:00``) in both forms. Exit codes
are shared by every command: 0 done, 1 a failure (the database unreachable, ...), 2 a
refusal (bad arguments or configuration, a name that does not exist, an action refused
while the service runs).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from datetime import date, datetime

OK, FAILED, REFUSED = 0, 1, 2


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` switch of a list command."""
    parser.add_argument("--json", action="store_true",
                        help="one JSON object per line instead of a table")


def text(value: object) -> str:
    """A cell or JSON value as text: ISO 8601 times, lists comma-joined, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ",".join(text(v) for v in value) or "-"
    return str(value)


def _json_default(value: object) -> object:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def dumps(row: object) -> str:
    """One JSON line (ISO 8601 times)."""
    return json.dumps(row, default=_json_default, separators=(",", ":"))


def print_rows(rows: Sequence[Mapping[str, object]], columns: Sequence[str],
               as_json: bool) -> None:
    """Print ``rows`` as a table of ``columns`` or, with ``as_json``, as JSON lines."""
    if as_json:
        for row in rows:
            print(dumps(dict(row)))
        return
    cells = [[text(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(none)")


def refuse(message: str) -> int:
    """Say why on stderr; exit code 2."""
    print(f"error: {message}", file=sys.stderr)
    return REFUSED
