"""Zero-setup database: an embedded PostgreSQL (pgserver) when DATABASE_URL is not set.

pgserver ships PostgreSQL 16 inside a wheel and runs it from a local data directory, so
``python -m skywire_trio`` works on a machine with nothing but Python. The server stops
when the last handle in this process is closed; the data stays for the next start.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


@contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or reuse) the embedded server; yields the URL of the ``skywire`` database."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR
        import pgserver

        data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = data_dir.resolve() / "pgdata"
        server = pgserver.get_server(pgdata, cleanup_mode="stop")
    try:
        # The server listens on a Unix socket in its data directory only.
        yield f"postgresql://postgres@/skywire?host={pgdata}"
    finally:
        server.cleanup()
