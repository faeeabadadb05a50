"""Where a consumer keeps its position: a file, or anything with ``load`` and ``save``."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol


class Checkpoint(Protocol):
    """A durable position in the log (the id of the last event handled)."""

    def load(self) -> int | None:
        """The saved position, or None when there is none yet."""

    def save(self, cursor: int) -> None | Awaitable[None]:
        """Remember ``cursor`` (called after each handled page)."""


class FileCheckpoint:
    """The position as a number in a text file, replaced atomically on each save."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> int | None:
        """The number in the file, or None when there is no file."""
        try:
            return int(self.path.read_text().strip())
        except FileNotFoundError:
            return None

    def save(self, cursor: int) -> None:
        """Write ``cursor`` to a temporary file, flush it to disk, rename it into place."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        with open(temporary, "w") as file:
            file.write(str(cursor))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.path)


class CallbackCheckpoint:
    """A position kept by the application: ``save`` is called with each new cursor."""

    def __init__(self, save: Callable[[int], None | Awaitable[None]],
                 since: int | None = None) -> None:
        self._save = save
        self._since = since

    def load(self) -> int | None:
        """The position given at construction."""
        return self._since

    def save(self, cursor: int) -> None | Awaitable[None]:
        """Hand ``cursor`` to the application's callback."""
        return self._save(cursor)
