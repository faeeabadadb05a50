"""Recorded frames on disk: repeated ``[u32 length][websocket binary message]``.

Big-endian lengths by default, little-endian on request (Jetstream's corpus); zstd when
the file name ends in ``.zst``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import zstandard


def _unpack(data: bytes, little_endian: bool) -> Iterator[bytes]:
    fmt = "<I" if little_endian else ">I"
    pos = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise ValueError(f"truncated length prefix at byte {pos}")
        (size,) = struct.unpack_from(fmt, data, pos)
        pos += 4
        if pos + size > len(data):
            raise ValueError(f"frame at byte {pos} runs past the end of the file")
        yield data[pos : pos + size]
        pos += size


def read_frames(path: Path, little_endian: bool = False) -> list[bytes]:
    """All frames of a recording, in order."""
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return list(_unpack(data, little_endian))


class FrameWriter:
    """Appends frames to a recording (big-endian lengths; zstd for ``.zst`` names)."""

    def __init__(self, path: Path) -> None:
        self._raw: BinaryIO = path.open("wb")
        self._out: BinaryIO = self._raw
        if path.name.endswith(".zst"):
            self._out = zstandard.ZstdCompressor().stream_writer(self._raw)

    def write(self, frame: bytes) -> None:
        """Append one frame."""
        self._out.write(struct.pack(">I", len(frame)) + frame)

    def close(self) -> None:
        """Flush and close the file."""
        self._out.close()
        if self._out is not self._raw:
            self._raw.close()


def write_frames(path: Path, frames: Iterable[bytes]) -> None:
    """Write a whole recording."""
    writer = FrameWriter(path)
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.close()
