"""Decode subscribeRepos frames into log rows, in the atproto JSON data model.

This is the hot path, split between two decoders on purpose:
- The frame envelope (header + body) goes through libipld (Rust, ~3 us a frame here). It
  returns CID links as plain bytes, which is harmless there: the subscribeRepos schema says
  which fields are links. A body libipld refuses (it insists on canonical DAG-CBOR) is
  retried with cbor2, so a non-canonical but readable frame is not lost.
- Records go through cbor2's C decoder with a tag-42 hook, because in a record a link and
  a byte string must stay distinguishable. Links become ``Link`` objects; conversion to
  JSON is left to orjson (records without a float) or ``json``, whose ``default`` hook
  turns exactly ``Link`` and ``bytes`` into ``{"$link": ...}`` and ``{"$bytes": ...}`` --
  no Python walk per record.

Two failure levels, on purpose:
- ``FrameError``: the frame itself cannot be trusted (bad CBOR, bad framing, a body
  without the fields its type requires). The caller saves its bytes and moves on.
- A record inside a valid commit that cannot be decoded or stored: the op still becomes
  a row, with ``record`` NULL, ``record_error`` saying why, and the raw block kept.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
from datetime import datetime
from typing import Any, NamedTuple

import cbor2
import libipld
import orjson

from . import sanitize
from .errors import FrameError

__all__ = ["MAX_DEPTH", "MAX_FRAME_BYTES", "Frame", "FrameError", "Link", "Row", "decode_cbor",
           "decode_frame", "find_block", "parse_car", "to_json"]

# DAG-CBOR frames and records are shallow; anything deeper is hostile or broken.
MAX_DEPTH = 128
MAX_FRAME_BYTES = 5 * 1024 * 1024


class Link:
    """A CID link (CBOR tag 42), kept as raw binary CID bytes; printed as base32 CIDv1."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __str__(self) -> str:
        return libipld.encode_cid(self.raw)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Link) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"Link({self})"


def _tag_hook(tag: cbor2.CBORTag, immutable: bool) -> Link:
    # cbor2 6.2+ calls tag hooks as hook(tag, immutable) (its docstring says otherwise).
    value = tag.value
    if tag.tag != 42 or not isinstance(value, bytes) or not value or value[0] != 0:
        raise FrameError(f"CBOR tag {tag.tag} is not a DAG-CBOR CID link")
    return Link(value[1:])


def _json_default(obj: object) -> dict[str, str]:
    if isinstance(obj, Link):
        return {"$link": str(obj)}
    if isinstance(obj, bytes):
        return {"$bytes": base64.b64encode(obj).decode("ascii").rstrip("=")}
    raise TypeError(f"{type(obj).__name__} is not in the atproto data model")


_dumps = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), default=_json_default, allow_nan=False
).encode


# Every CBOR float starts with 0xf9, 0xfa or 0xfb, bytes that UTF-8 never uses: a record
# block without them holds no float. Only such records go through orjson (a PDS frame's
# decode takes ~2 us less than with json), because orjson writes NaN and infinities as
# null where json refuses them.
def _may_hold_float(block: bytes) -> bool:
    return b"\xf9" in block or b"\xfa" in block or b"\xfb" in block


def _fast_dumps(value: Any) -> str:
    try:
        return orjson.dumps(value, default=_json_default).decode()
    except orjson.JSONEncodeError:
        # What orjson refuses (integers past 64 bits, keys that are not strings, values
        # outside the data model) json decides, exactly as for every record before.
        return _dumps(value)


def to_json(value: Any) -> str:
    """Encode a decoded DAG-CBOR value as atproto data-model JSON text."""
    return _dumps(value)


def decode_cbor(data: bytes) -> Any:
    """Decode one DAG-CBOR object (a record block; its CID was already verified).

    ``cbor2.loads`` ignores trailing bytes, but costs half of a ``CBORDecoder`` round trip,
    and a record block whose sha2-256 matches the signed commit's CID is what the author
    published, so we take the first object as the record.
    """
    return cbor2.loads(data, tag_hook=_tag_hook, max_depth=MAX_DEPTH)


class Row(NamedTuple):
    """One log row as decoded; the writer adds ``id`` and ``indexed_at``."""

    seq: int | None
    repo: str | None
    event_type: str
    action: str | None
    collection: str | None
    rkey: str | None
    cid: str | None
    rev: str | None
    record: str | None  # JSON text in the atproto data model
    record_error: str | None
    raw: bytes | None  # the undecodable record block, kept so nothing is lost
    event_time: datetime | None
    sanitized: str | None = None  # which fields were stored NULL to store the row, and why


class Frame(NamedTuple):
    """A decoded frame: its type, upstream seq (if any) and the log rows it yields.

    A named tuple, like ``Row``, because frames cross a pipe by the hundred thousand a
    second (``receiver``) and a tuple is rebuilt from its fields without running Python.
    """

    kind: str  # "commit", "identity", ..., "error" for op -1
    seq: int | None
    rows: list[Row]
    error: str | None = None  # for op -1 frames: the error name
    message: str | None = None
    # The frame as received, so that a frame the log refuses can still be dead-lettered.
    data: bytes = b""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise FrameError("truncated varint in CAR data")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise FrameError("varint too long in CAR data")


def _cid_end(buf: bytes, pos: int) -> int:
    if buf[pos : pos + 2] == b"\x12\x20":  # CIDv0: a bare sha2-256 multihash
        return pos + 34
    _version, pos = _varint(buf, pos)
    _codec, pos = _varint(buf, pos)
    _hash_code, pos = _varint(buf, pos)
    digest_len, pos = _varint(buf, pos)
    return pos + digest_len


def parse_car(buf: bytes) -> dict[bytes, bytes]:
    """Split a CARv1 slice into ``{binary CID: block bytes}`` (the header is skipped)."""
    if not isinstance(buf, bytes):
        raise FrameError("blocks is not a byte string")
    if not buf:
        return {}
    header_len, pos = _varint(buf, 0)
    pos += header_len
    blocks: dict[bytes, bytes] = {}
    end_of_car = len(buf)
    while pos < end_of_car:
        block_len, pos = _varint(buf, pos)
        end = pos + block_len
        if end > end_of_car:
            raise FrameError("CAR block runs past the end of blocks")
        cid_end = _cid_end(buf, pos)
        if cid_end > end:
            raise FrameError("CAR block shorter than its CID")
        blocks[buf[pos:cid_end]] = buf[cid_end:end]
        pos = end
    return blocks


def find_block(buf: bytes, cid: bytes) -> bytes | None:
    """The block for ``cid`` in a CAR slice, found without parsing every section.

    A commit's CAR holds ~10 blocks (mostly MST nodes) but we need only the records.
    A section is ``varint(len) || cid || data``; we search for the CID bytes, read the
    varint that must end right before it, and accept the candidate only if the data
    hashes to the CID (so a CID quoted inside an MST node never matches). CIDs that are
    not sha2-256 fall back to a full parse.
    """
    if not (len(cid) == 36 and cid[0] == 1 and cid[2:4] == b"\x12\x20"):
        return parse_car(buf).get(cid)
    digest = cid[4:]
    size = len(buf)
    start = 0
    while (pos := buf.find(cid, start)) >= 0:
        start = pos + 1
        last = buf[pos - 1] if pos else 0x80
        if last >= 0x80 or last == 0:  # no varint ends here (0x00 prefixes a quoted CID)
            continue
        # Sections are < 2 MB, so the length varint is 1 to 3 bytes long.
        length = last
        for first in (pos - 2, pos - 3, pos - 4):
            block = buf[pos + 36 : pos + length]
            if pos + length <= size and hashlib.sha256(block).digest() == digest:
                return block
            if first < 0 or buf[first] < 0x80:
                break
            length = (length << 7) | (buf[first] & 0x7F)
    return None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _record_json(value: Any, floatless: bool = False) -> tuple[str | None, str | None]:
    """JSON text for a record or event body, or (None, reason) when it cannot be stored.

    ``floatless``: the value is known to hold no float (see ``_may_hold_float``).
    """
    try:
        text = _fast_dumps(value) if floatless else _dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        return None, f"not representable as atproto JSON: {exc}"
    # PostgreSQL jsonb rejects U+0000. json.dumps escapes it as \u0000; confirm on the
    # (rare) hit so that a literal backslash-u0000 in a string is not a false positive.
    if "\\u0000" in text and _has_nul(value):
        return None, "contains U+0000 (NUL), which PostgreSQL jsonb cannot store"
    return text, None


def _decode_record(block: bytes | None) -> tuple[str | None, str | None, bytes | None]:
    if block is None:
        return None, "record block missing from the CAR slice (or not matching its CID)", None
    try:
        value = decode_cbor(block)
    except (cbor2.CBORDecodeError, FrameError, RecursionError) as exc:
        # The message is stored in a text column: never let it carry a NUL.
        return None, f"undecodable record: {exc}".replace("\x00", "\\u0000"), block
    if not isinstance(value, dict):
        # An atproto record is a map; the API serves `record` as a JSON object.
        return None, f"record is a CBOR {type(value).__name__}, not a map", block
    text, error = _record_json(value, not _may_hold_float(block))
    return text, error, (block if text is None else None)


def _commit_rows(body: dict[str, Any], seq: int, frame_notes: sanitize.Notes,
                 time: datetime | None) -> list[Row]:
    repo, ops = body.get("repo"), body.get("ops")
    if not isinstance(repo, str) or not isinstance(ops, list):
        raise FrameError("#commit without repo or ops")
    repo = sanitize.did(repo, "repo")
    rev = sanitize.word("rev", body.get("rev"), frame_notes, required=True)
    if not ops:
        # Empty commits (an account's first commit) still get a row: the event happened.
        return [Row(seq, repo, "commit", None, None, None, None, rev, None, None, None, time,
                    sanitize.joined(frame_notes))]
    blocks = body.get("blocks") or b""
    if not isinstance(blocks, bytes):
        raise FrameError("#commit blocks is not a byte string")
    rows = []
    sanitized = sanitize.joined(frame_notes)
    for op in ops:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise FrameError("#commit op without a path")
        collection, rkey = sanitize.path(op["path"])
        op_notes: sanitize.Notes = []
        action = sanitize.action(op.get("action"), op_notes)
        link = op.get("cid")  # raw CID bytes (see _decode_envelope)
        cid = record = error = raw = None
        if isinstance(link, bytes):
            try:
                cid = libipld.encode_cid(link)
            except ValueError:
                raise FrameError(f"op {sanitize.quote(op['path'])} has an invalid CID") from None
        if action != "delete":
            if cid is None:
                error = "op has no record CID"
            else:
                record, error, raw = _decode_record(find_block(blocks, link))
        rows.append(Row(seq, repo, "commit", action, collection, rkey, cid, rev, record, error,
                        raw, time, sanitize.joined(frame_notes + op_notes) if op_notes
                        else sanitized))
    return rows


def _other_row(kind: str, body: dict[str, Any], seq: int | None, notes: sanitize.Notes,
               time: datetime | None) -> Row:
    did = body.get("did")
    if isinstance(did, str):
        did = sanitize.did(did, "did")
    elif did is not None:
        notes.append(sanitize.note("did", did, "not a string"))
        did = None
    rev = sanitize.word("rev", body.get("rev"), notes)
    record, error = _record_json(body)
    return Row(seq, did, kind, None, None, None, None, rev, record, error, None, time,
               sanitize.joined(notes))


def _raw_cid_hook(tag: cbor2.CBORTag, immutable: bool) -> bytes:
    return _tag_hook(tag, immutable).raw


def _decode_lenient(frame: bytes, hook: Any) -> tuple[Any, Any]:
    fp = io.BytesIO(frame)
    dec = cbor2.CBORDecoder(fp, tag_hook=hook, max_depth=MAX_DEPTH)
    header, body = dec.decode(), dec.decode()
    if fp.tell() != len(frame):
        raise FrameError(f"{len(frame) - fp.tell()} trailing bytes after the frame body")
    return header, body


def _decode_envelope(frame: bytes) -> tuple[Any, Any]:
    try:
        parts = libipld.decode_dag_cbor_multi(frame)
    except (ValueError, RecursionError) as strict_error:
        # Not canonical DAG-CBOR (or not CBOR at all): retry leniently, then give up.
        try:
            return _decode_lenient(frame, _raw_cid_hook)
        except (cbor2.CBORDecodeError, RecursionError):
            raise FrameError(f"invalid CBOR: {strict_error}") from None
    if len(parts) != 2:
        raise FrameError(f"a frame holds a header and a body, not {len(parts)} CBOR objects")
    return parts[0], parts[1]


def decode_frame(frame: bytes) -> Frame:
    """Decode one websocket binary message (header + body) into a ``Frame``.

    Raises ``FrameError`` for a frame that cannot be parsed, or whose identifying fields
    cannot be stored as they are (see ``sanitize``).
    """
    if len(frame) > MAX_FRAME_BYTES:
        raise FrameError(f"frame of {len(frame)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    header, body = _decode_envelope(frame)
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise FrameError("frame header or body is not a map")
    op = header.get("op")
    if op == -1:
        error, message = body.get("error"), body.get("message")
        return Frame("error", None, [], str(error), message if isinstance(message, str) else None,
                     frame)
    if op != 1:
        raise FrameError(f"unknown frame header op {sanitize.quote(op)}")
    kind = sanitize.event_type(header.get("t"))
    # #info carries no seq.
    seq = None if kind == "info" else sanitize.seq(body.get("seq"), kind)
    notes: sanitize.Notes = []
    time = sanitize.event_time(body.get("time"), notes)
    if kind == "commit":
        return Frame(kind, seq, _commit_rows(body, seq, notes, time), data=frame)
    # Other bodies are stored whole, so decode them again keeping links apart from bytes
    # (libipld returns both as bytes). They are ~1% of frames. libipld accepts nesting
    # that cbor2 refuses (over MAX_DEPTH): that is a frame error too.
    try:
        body = _decode_lenient(frame, _tag_hook)[1]
    except (cbor2.CBORDecodeError, RecursionError) as exc:
        raise FrameError(f"invalid CBOR in the #{kind} body: {exc}") from None
    name = body.get("name") if kind == "info" else None
    return Frame(kind, seq, [_other_row(kind, body, seq, notes, time)],
                 name if isinstance(name, str) else None, data=frame)
