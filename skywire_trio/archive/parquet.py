"""The archive's file format: one UTC day of the log as one Parquet file (docs/archive.md).

Rows arrive as CSV from the log (``log/archives.py``) and are parsed by pyarrow's C++
reader a block at a time; they are written in row groups of ``ROW_GROUP_ROWS``, so memory
holds about one row group whatever the size of the day.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ..log.archives import EXPORT_COLUMNS

SCHEMA_VERSION = "1"
ROW_GROUP_ROWS = 100_000
COMPRESSION = "zstd"
# Names repeat a lot within a day: dictionary strings (small, and fast to filter on).
_NAMES = ("repo", "event_type", "action", "collection")
_TIME = pa.timestamp("us", tz="UTC")
_NAME = pa.dictionary(pa.int32(), pa.string())

SCHEMA = pa.schema([
    pa.field("id", pa.int64(), nullable=False),
    pa.field("seq", pa.int64()),
    pa.field("repo", _NAME),
    pa.field("event_type", _NAME, nullable=False),
    pa.field("action", _NAME),
    pa.field("collection", _NAME),
    pa.field("rkey", pa.string()),
    pa.field("cid", pa.string()),
    pa.field("rev", pa.string()),
    pa.field("record", pa.string()),  # the record's JSON text, as stored
    pa.field("record_error", pa.string()),
    pa.field("raw", pa.binary()),
    pa.field("event_time", _TIME),
    pa.field("indexed_at", _TIME, nullable=False),
])
assert tuple(SCHEMA.names) == tuple(name for name, _ in EXPORT_COLUMNS)

# How each column arrives in the CSV: times as integer microseconds, raw as hex.
_CSV_TYPES = {f.name: (pa.int64() if f.type in (pa.int64(), _TIME)
                       else pa.string()) for f in SCHEMA}


class ArchiveMismatch(RuntimeError):
    """A written file does not hold what the log holds for its day."""


class OutOfOrder(ValueError):
    """The rows did not arrive in increasing id order (the file must not be kept)."""


class _Pieces(io.RawIOBase):
    """A binary file over an iterator of byte strings (for pyarrow's CSV reader)."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._buffer = b""

    def readable(self) -> bool:
        return True

    def readinto(self, target: memoryview) -> int:  # type: ignore[override]
        wanted = len(target)
        chunks, size = [self._buffer], len(self._buffer)
        while size < wanted:
            piece = next(self._pieces, None)
            if piece is None:
                break
            chunks.append(piece)
            size += len(piece)
        data = b"".join(chunks)
        target[:min(wanted, len(data))] = data[:wanted]
        self._buffer = data[wanted:]
        return min(wanted, len(data))


def _raw(column: pa.Array) -> pa.Array:
    # Almost always all null (raw keeps the bytes of undecodable records only).
    if column.null_count == len(column):
        return pa.nulls(len(column), pa.binary())
    return pa.array([None if v is None else bytes.fromhex(v) for v in column.to_pylist()],
                    pa.binary())


def _typed(batch: pa.RecordBatch) -> pa.RecordBatch:
    columns = []
    for field in SCHEMA:
        column = batch.column(field.name)
        if field.name == "raw":
            column = _raw(column)
        elif field.type == _TIME:
            column = column.cast(_TIME)
        elif field.type == _NAME:
            column = pc.dictionary_encode(column)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=SCHEMA)


def batches(pieces: Iterable[bytes]) -> Iterator[pa.RecordBatch]:
    """Typed record batches from the log's CSV pieces."""
    reader = pa_csv.open_csv(
        _Pieces(pieces),
        read_options=pa_csv.ReadOptions(column_names=SCHEMA.names, block_size=4 << 20),
        parse_options=pa_csv.ParseOptions(newlines_in_values=True),
        # PostgreSQL writes NULL as an empty unquoted field and '' as "": only the former
        # is null, and no other spelling ("null", "NA"...) is.
        convert_options=pa_csv.ConvertOptions(column_types=_CSV_TYPES, null_values=[""],
                                              strings_can_be_null=True,
                                              quoted_strings_can_be_null=False))
    for batch in reader:
        yield _typed(batch)


def _increasing(ids: pa.Array) -> bool:
    return len(ids) < 2 or pc.all(pc.greater(ids[1:], ids[:-1])).as_py()


def write(pieces: Iterable[bytes], sink: BinaryIO, metadata: dict[str, str]) -> int:
    """Write the rows as Parquet into ``sink``, a row group at a time; returns the rows.

    Raises ``OutOfOrder`` as soon as an id is not greater than the one before it.
    """
    schema = SCHEMA.with_metadata({f"skywire.{k}": v for k, v in metadata.items()})
    written = 0
    # Min/max statistics where readers filter (ids, times, names), not on the records.
    with pq.ParquetWriter(sink, schema, compression=COMPRESSION, use_dictionary=list(_NAMES),
                          write_statistics=["id", "seq", "indexed_at", "event_time",
                                            *_NAMES]) as writer:
        pending: list[pa.RecordBatch] = []
        held = 0
        last_id = None
        for batch in batches(pieces):
            ids = batch.column("id")
            if len(ids) and (not _increasing(ids) or
                             (last_id is not None and ids[0].as_py() <= last_id)):
                raise OutOfOrder("rows out of id order")
            if len(ids):
                last_id = ids[-1].as_py()
            pending.append(batch)
            held += batch.num_rows
            while held >= ROW_GROUP_ROWS:
                table = pa.Table.from_batches(pending, schema=SCHEMA)
                writer.write_table(table.slice(0, ROW_GROUP_ROWS),
                                   row_group_size=ROW_GROUP_ROWS)
                pending = table.slice(ROW_GROUP_ROWS).to_batches()
                held -= ROW_GROUP_ROWS
                written += ROW_GROUP_ROWS
        if held:
            writer.write_table(pa.Table.from_batches(pending, schema=SCHEMA),
                               row_group_size=ROW_GROUP_ROWS)
            written += held
    return written


def verify(source: BinaryIO, rows: int, first_id: int, last_id: int) -> None:
    """Raise ``ArchiveMismatch`` unless the file holds ``rows`` rows from ``first_id`` to
    ``last_id`` in increasing id order (read back one row group at a time)."""
    parquet = pq.ParquetFile(source)
    if parquet.metadata.num_rows != rows:
        raise ArchiveMismatch(f"{parquet.metadata.num_rows} rows in the file, {rows} in the log")
    previous = None
    first = None
    for group in range(parquet.num_row_groups):
        ids = parquet.read_row_group(group, columns=["id"]).column("id").combine_chunks()
        if len(ids) == 0:
            continue
        if first is None:
            first = ids[0].as_py()
        if not _increasing(ids) or (previous is not None and ids[0].as_py() <= previous):
            raise ArchiveMismatch("ids are not in increasing order")
        previous = ids[-1].as_py()
    if (first, previous) != (first_id, last_id):
        raise ArchiveMismatch(f"ids {first}..{previous} in the file, {first_id}..{last_id} "
                              "in the log")
