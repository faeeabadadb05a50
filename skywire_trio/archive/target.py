"""Where archive files go: a local directory or ``s3://bucket/prefix``, Hive-style by day.

``DIR/date=YYYY-MM-DD/events-<first id>-<last id>.parquet``. A file gets its final name only
once it is complete:

- locally it is written to a hidden temporary name (``.events-...parquet.tmp``), fsynced,
  renamed, and the directory fsynced, so a crash leaves at most a temporary file;
- on S3 the object is written with a multipart upload, which becomes visible only when the
  upload completes (a killed process leaves an invisible, unfinished upload); on an error
  the object is deleted. (S3 has no rename: a copy would also be limited to 5 GB.)
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import BinaryIO

import pyarrow.fs as pafs

READ_BLOCK = 8 << 20


def file_name(first_id: int, last_id: int) -> str:
    """The name of a day's file."""
    return f"events-{first_id}-{last_id}.parquet"


def day_dir(day: date) -> str:
    """The Hive-style directory of a day."""
    return f"date={day.isoformat()}"


class Target:
    """An archive location (local directory or S3 prefix)."""

    def __init__(self, location: str) -> None:
        self.location = location
        self.remote = location.startswith("s3://")
        if self.remote:
            # Endpoint, region and credentials: the usual AWS variables and files.
            self._fs, self._root = pafs.FileSystem.from_uri(location.rstrip("/"))
        else:
            self._fs, self._root = pafs.LocalFileSystem(), str(Path(location).absolute())

    def path(self, day: date, name: str) -> str:
        """What ``archives`` records: an absolute path, or the s3:// URL."""
        inner = f"{self._root}/{day_dir(day)}/{name}"
        return f"s3://{inner}" if self.remote else inner

    def _inner(self, path: str) -> str:
        return path.removeprefix("s3://")

    def write(self, day: date, name: str, produce: Callable[[BinaryIO], int]) -> str:
        """Create the day's file ``name`` with ``produce(sink)``; returns its path."""
        final = self.path(day, name)
        if self.remote:
            try:
                with self._fs.open_output_stream(self._inner(final)) as sink:
                    produce(sink)
            except BaseException:
                with contextlib.suppress(OSError):
                    self._fs.delete_file(self._inner(final))
                raise
            return final
        folder = Path(final).parent
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".events-*.tmp"):  # left by an export that was killed
            stale.unlink(missing_ok=True)
        temp = folder / f".{name}.{os.getpid()}.tmp"
        try:
            with open(temp, "wb") as sink:
                produce(sink)
                sink.flush()
                os.fsync(sink.fileno())
            os.replace(temp, final)
        finally:
            temp.unlink(missing_ok=True)
        handle = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(handle)  # the rename itself survives a crash
        finally:
            os.close(handle)
        return final

    def open(self, path: str) -> BinaryIO:
        """Read a file back."""
        return self._fs.open_input_file(self._inner(path) if self.remote else path)

    def digest(self, path: str) -> tuple[int, str]:
        """Size and sha256 (hex) of a file, read back from the storage."""
        sha = hashlib.sha256()
        size = 0
        with self.open(path) as source:
            while block := source.read(READ_BLOCK):
                sha.update(block)
                size += len(block)
        return size, sha.hexdigest()

    def remove_others(self, day: date, keep: str) -> list[str]:
        """Delete the day's other archive files (an earlier export with other ids)."""
        folder = f"{self._root}/{day_dir(day)}"
        removed = []
        for info in self._fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
            base = info.base_name
            if info.is_file and base.startswith("events-") and base.endswith(".parquet") \
                    and base != keep:
                self._fs.delete_file(info.path)
                removed.append(info.path)
        return removed
