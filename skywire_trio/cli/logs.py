"""Log output for every command: plain lines in development, JSON lines in production."""

from __future__ import annotations

import json
import logging
import sys


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one JSON line."""
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(production: bool) -> None:
    """Log to stderr at INFO, as JSON lines in production."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if production else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # One line per request is what metrics are for.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)
    logging.getLogger("pgserver").setLevel(logging.WARNING)  # chatty at INFO
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per webhook request
    # One line per plugin at every migration; the "Running upgrade" lines stay.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
