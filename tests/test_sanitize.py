"""The field rules (firehose/sanitize.py) and batch narrowing (log/narrow.py), on real PostgreSQL.

Each poison frame seen in the field (issue 17) either raises ``FrameError`` (its identifying
fields cannot be stored as received) or decodes to rows that PostgreSQL accepts, with the
change written in ``sanitized``. A row that gets past the rules and is still refused costs
one frame (dead-lettered), never the batch.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import cbor2
import jsonschema
import pytest
import trio
import trio_asyncio

from skywire_trio.api.openapi import OPENAPI
from skywire_trio.config import Settings
from skywire_trio.firehose.codec import Frame, FrameError, Row, decode_frame
from skywire_trio.log import writer
from skywire_trio.log.batcher import run_batcher
from skywire_trio.log.narrow import append_frames
from skywire_trio.log.reader import EVENT_JSON
from skywire_trio.stats import IngestStats

from .support import frame, pds_frames, query, relay_frames, stored_rows

NOW = datetime(2026, 11, 30, 12, tzinfo=UTC)


class RawText:
    """A CBOR text string whose UTF-8 bytes are given as they are (possibly invalid)."""

    def __init__(self, data: bytes) -> None:
        self.data = data


def _encode_raw(encoder: cbor2.CBOREncoder, value: RawText) -> None:
    assert len(value.data) < 24
    encoder.write(bytes([0x60 + len(value.data)]) + value.data)


def encode(header: dict, body: dict) -> bytes:
    """A frame (canonical map order), with ``RawText`` values written byte for byte."""
    return (cbor2.dumps(header, canonical=True, default=_encode_raw)
            + cbor2.dumps(body, canonical=True, default=_encode_raw))


def parts(raw: bytes) -> tuple[dict, dict]:
    """Header and body of a frame, CIDs kept as CBOR tags so re-encoding is exact."""
    dec = cbor2.CBORDecoder(io.BytesIO(raw))
    return dec.decode(), dec.decode()


def _real(kind: str) -> tuple[dict, dict]:
    return next(parts(f) for f in relay_frames() if parts(f)[0].get("t") == kind)


def commit(header: dict | None = None, op: dict | None = None, **body: object) -> bytes:
    """A real relay commit with some fields changed (``op`` changes its first op)."""
    real_header, real_body = _real("#commit")
    real_body.update(body)
    if op is not None:
        real_body["ops"] = [{**real_body["ops"][0], **op}, *real_body["ops"][1:]]
    return encode(header or real_header, real_body)


def identity(t: str = "#identity", **body: object) -> bytes:
    _, real_body = _real("#identity")
    return encode({"op": 1, "t": t}, {**real_body, **body})


def nested(depth: int) -> object:
    value: object = "leaf"
    for _ in range(depth):
        value = [value]
    return value


REFUSED = {
    "NUL in repo": (commit(repo="did:plc:a\x00b"), "repo"),
    "NUL in did": (identity(did="did:plc:a\x00b"), "did"),
    "NUL in op path": (commit(op={"path": "app.bsky.feed.post/a\x00b"}), "op path"),
    "NUL in event type": (identity(t="#iden\x00tity"), "event type"),
    "100,000-character event type": (identity(t="#" + "a" * 100_000), "event type"),
    "event type with a space": (identity(t="#two words"), "event type"),
    "event type with a dot": (identity(t="#com.example.thing"), "event type"),
    "repo past the index limit": (commit(repo="did:plc:" + "\u4e00" * 3000), "repo"),
    "path past the index limit": (commit(op={"path": "app.bsky.feed.post/" + "x" * 1100}),
                                  "op path"),
    "seq 2^63": (commit(seq=2**63), "seq"),
    "seq 2^64-1": (commit(seq=2**64 - 1), "seq"),
    "seq 2^64 (bignum)": (commit(seq=2**64), "seq"),
    "seq 0": (commit(seq=0), "seq"),
    "seq -2^64": (commit(seq=-(2**64)), "seq"),
    "seq as text": (commit(seq="12"), "seq"),
    "seq as a float": (commit(seq=12.0), "seq"),
    "seq as a boolean": (commit(seq=True), "seq"),
    "non-commit body nested 129 deep": (identity(extra=nested(129)), "nesting"),
    "non-commit body nested 1,000 deep": (identity(extra=nested(1000)), ""),
    "invalid UTF-8 in repo": (commit(repo=RawText(b"did:\xff\xfe")), ""),
    "invalid UTF-8 in did": (identity(did=RawText(b"did:\xc3")), ""),
    "invalid UTF-8 in op path": (commit(op={"path": RawText(b"a/\xed\xa0\x80")}), ""),
}


@pytest.mark.quick  # no PostgreSQL
@pytest.mark.parametrize("name", REFUSED)
def test_identifying_fields_are_stored_exactly_or_the_frame_is_refused(name):
    raw, field = REFUSED[name]
    with pytest.raises(FrameError) as caught:
        decode_frame(raw)
    assert field in str(caught.value)
    assert "\x00" not in str(caught.value)  # the reason is written to a text file
    assert len(str(caught.value)) < 300  # ... and quotes at most the start of a huge value


HUGE = "z" * 100_000
KEPT = {
    # name: (frame, field that was changed, expected note fragment)
    "NUL in rev": (commit(rev="3ab\x00c"), "rev", 'rev: contains U+0000 (NUL); stored NULL '
                                                   '(was "3ab\\u0000c")'),
    "100,000-character rev": (commit(rev=HUGE), "rev", "rev: is longer than 64 characters"),
    "rev as bytes": (commit(rev=b"3abc"), "rev", "rev: not a string; stored NULL (was a bytes)"),
    "NUL in action": (commit(op={"action": "cre\x00ate"}), "action", "action: contains U+0000"),
    "100,000-character action": (commit(op={"action": HUGE}), "action",
                                 f'(was "{"z" * 64}" (first 64 of 100000 characters))'),
    "an unknown action": (commit(op={"action": "0001-01-01T00:00:00+14:00"}), "action",
                          "action: is not one of create, update, delete"),
    "action as an integer": (commit(op={"action": 2**64 - 1}), "action", "not a string"),
    "time 0001-01-01T00:00:00+14:00": (commit(time="0001-01-01T00:00:00+14:00"), "event_time",
                                       "time: outside years 1-9999 in UTC"),
    "time 9999-12-31T23:59:59-14:00": (commit(time="9999-12-31T23:59:59-14:00"), "event_time",
                                       "time: outside years 1-9999 in UTC"),
    "time without an offset": (identity(time="2026-11-23T10:00:00"), "event_time",
                               "time: has no UTC offset"),
    "time that is not a time": (identity(time="yesterday\x00"), "event_time",
                                'time: not an ISO 8601 time; stored NULL (was "yesterday\\u0000")'),
    "100,000-character time": (commit(time=HUGE), "event_time", "not an ISO 8601 time"),
    "time as an integer": (commit(time=2**63), "event_time", "time: not a string"),
    "did as an integer": (identity(did=7), "repo", "did: not a string"),
    "a commit without rev": (commit(rev=None), "rev", "rev: missing; stored NULL"),
    "an op without action": (commit(op={"action": None}), "action",
                             "action: missing; stored NULL"),
}


@pytest.mark.quick  # no PostgreSQL
@pytest.mark.parametrize("name", KEPT)
def test_descriptive_fields_are_nulled_with_a_note(name):
    raw, field, note = KEPT[name]
    row = decode_frame(raw).rows[0]
    assert getattr(row, field) is None
    assert note in row.sanitized and "\x00" not in row.sanitized
    assert len(row.sanitized) < 300


@pytest.mark.quick  # no PostgreSQL
def test_values_at_the_limits_are_kept_as_they_are():
    rows = decode_frame(commit(seq=2**63 - 1, time="0001-01-01T00:00:00Z")).rows
    assert rows[0].seq == 2**63 - 1 and rows[0].event_time == datetime(1, 1, 1, tzinfo=UTC)
    assert all(row.sanitized is None for row in rows)
    late = decode_frame(commit(time="9999-12-31T23:59:59.999999+00:00", rev="r" * 64)).rows[0]
    assert late.event_time == datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert late.rev == "r" * 64 and late.sanitized is None
    # An offset is converted, not dropped.
    east = decode_frame(identity(time="2026-11-23T10:00:00+14:00")).rows[0]
    assert east.event_time == datetime(2026, 11, 22, 20, tzinfo=UTC) and east.sanitized is None
    # Unknown but well-formed event types and fields are kept, and so are 64-bit integers
    # in a body that is stored whole.
    [row] = decode_frame(identity(t="#brandNewType2", extra=2**64 - 1)).rows
    assert row.event_type == "brandNewType2" and json.loads(row.record)["extra"] == 2**64 - 1


async def _store(url: str, frames: list[Frame], deadletter, last_id: int = 0):
    async with trio_asyncio.open_loop(), writer.connect(url) as store:
        if last_id == 0:
            await store.claim_cursor("ws://test")
        return await append_frames(store, frames, last_id, NOW, deadletter)


def _renumbered(raw: bytes, seq: int) -> bytes:
    header, body = parts(raw)
    return encode(header, {**body, "seq": seq})


async def test_sanitized_rows_are_stored_and_served_with_their_notes(database, tmp_path):
    kept = [(_renumbered(raw, seq), note) for seq, (raw, _, note) in enumerate(KEPT.values(), 1)]
    frames = [decode_frame(raw) for raw, _ in kept]
    # A body that jsonb cannot hold: the event is kept, its body null, record_error says why.
    frames.append(decode_frame(identity(seq=2**63 - 2, handle="a\x00b")))
    frames.append(decode_frame(commit(seq=2**63 - 1)))
    appended = await _store(database, frames, tmp_path / "dl")
    assert appended.refused == 0 and not (tmp_path / "dl").exists()
    assert stored_rows(database) == [(r.seq, r.collection, r.rkey, r.cid)
                                     for f in frames for r in f.rows]
    assert query(database, "SELECT last_seq FROM firehose_cursor") == [(2**63 - 1,)]
    # What a consumer gets: the event as the API serves it, saying what was changed.
    served = [json.loads(text) for (text,) in query(
        database, f"SELECT {EVENT_JSON} FROM firehose_events ORDER BY id")]
    by_seq = {event["seq"]: event for event in served}
    for seq, (_, note) in enumerate(kept, 1):
        assert note in by_seq[seq]["sanitized"]
    assert "sanitized" not in by_seq[2**63 - 1]
    assert by_seq[2**63 - 2]["identity"] is None and "NUL" in by_seq[2**63 - 2]["record_error"]
    # ... and every one of them is an Event as /openapi.json describes it.
    schema = {**OPENAPI["components"]["schemas"]["Event"], "components": OPENAPI["components"]}
    for event in served:
        jsonschema.Draft202012Validator(schema).validate(event)


def _frames(count: int, bad: set[int]) -> list[Frame]:
    """``count`` frames of two rows each; those in ``bad`` hold a row the log refuses.

    The bad rows are built by hand: the decoder's rules would not let them through.
    """
    frames = []
    for seq in range(1, count + 1):
        rkey = "r\x00" if seq in bad else f"r{seq}"
        rows = [Row(seq, "did:plc:a", "commit", "create", "app.test", key, None, None, None,
                    None, None, NOW) for key in (f"a{seq}", rkey)]
        frames.append(Frame("commit", seq, rows, data=b"frame %d" % seq))
    return frames


@pytest.mark.parametrize("bad", [{5}, {12}, {1, 2}, {3, 7, 8, 11}, set(range(1, 13))])
async def test_a_refused_batch_is_narrowed_to_its_bad_frames(database, tmp_path, bad):
    frames = _frames(12, bad)
    appended = await _store(database, frames, tmp_path / "dl")
    good = [f for f in frames if f.seq not in bad]
    assert appended.refused == len(bad) and len(appended.rows) == 2 * len(good)
    # The rest is stored in order, ids gapless, and the cursor is past the whole batch
    # (the last frame included, refused or not), so a restart fetches none of it again.
    assert query(database, "SELECT seq, rkey FROM firehose_events ORDER BY id") == [
        (r.seq, r.rkey) for f in good for r in f.rows]
    ids = [i for (i,) in query(database, "SELECT id FROM firehose_events ORDER BY id")]
    assert ids == list(range(1, len(ids) + 1))
    assert query(database, "SELECT last_seq, last_id FROM firehose_cursor") == [
        (12, len(ids))]
    assert appended.last_id == len(ids)
    # Each refused frame is in the dead letters, bytes and reason.
    saved = sorted((tmp_path / "dl").glob("*.bin")) if bad else []
    assert sorted(p.read_bytes() for p in saved) == sorted(b"frame %d" % s for s in bad)
    for path in saved:
        reason = path.with_suffix(".txt").read_text()
        assert reason.startswith("the log refused frame seq ") and "0x00" in reason


async def test_narrowing_continues_after_a_committed_prefix(database, tmp_path):
    await _store(database, _frames(3, set()), tmp_path / "dl")
    frames = [Frame(f.kind, f.seq + 3, [r._replace(seq=f.seq + 3) for r in f.rows], data=f.data)
              for f in _frames(4, {2})]
    appended = await _store(database, frames, tmp_path / "dl", last_id=6)
    assert appended.last_id == 12 and appended.refused == 1
    assert [s for (s,) in query(database, "SELECT seq FROM firehose_events ORDER BY id")] == [
        1, 1, 2, 2, 3, 3, 4, 4, 6, 6, 7, 7]


async def test_errors_that_are_not_about_the_data_are_not_narrowed(database, tmp_path):
    frames = _frames(4, {2})
    wrong = [Frame("commit", 1, [frames[0].rows[0]._replace(rkey=5)], data=b"x")]
    async with trio_asyncio.open_loop(), writer.connect(database) as store:
        await store.claim_cursor("ws://test")
        # A wrong last id means another writer: it propagates, nothing is dead-lettered.
        with pytest.raises(writer.ConcurrentWriter):
            await append_frames(store, frames, 5, NOW, tmp_path / "dl")
        # A row of the wrong shape is a bug of ours: it propagates too (ingest restarts).
        with pytest.raises(TypeError):
            await append_frames(store, wrong, 0, NOW, tmp_path / "dl")
    assert query(database, "SELECT count(*) FROM firehose_events") == [(0,)]
    assert not (tmp_path / "dl").exists()


@pytest.mark.quick  # no PostgreSQL
def test_real_frames_decode_without_notes():
    # The rules change nothing in the 150 production frames and the 359 of the PDS capture.
    frames = relay_frames() + pds_frames()
    assert all(row.sanitized is None for f in frames for row in decode_frame(f).rows)


@pytest.mark.quick  # no PostgreSQL
def test_invalid_utf8_header_type_is_a_frame_error():
    with pytest.raises(FrameError):
        decode_frame(encode({"op": 1, "t": RawText(b"#\xff")}, {"seq": 1, "did": "did:x"}))
    with pytest.raises(FrameError):
        decode_frame(frame({"op": 2, "t": "#commit"}, {"seq": 1}))


async def test_the_pipelined_batcher_narrows_a_refused_batch(database, tmp_path):
    # 40 frames of 2 rows through the real batcher and its two pipelined connections, in
    # batches of 3 frames: the batch holding frames 16-18 is refused because of frame 17.
    frames = _frames(40, {17})
    settings = Settings(database_url=database, deadletter_dir=tmp_path / "dl", batch_size=6,
                        batch_interval=0.05)
    stats = IngestStats()
    send, receive = trio.open_memory_channel[Frame](100)
    async with trio_asyncio.open_loop(), writer.connect(database) as one, \
            writer.connect(database) as two:
        cursor = await one.claim_cursor("ws://test")
        async with send:
            for frame in frames:
                await send.send(frame)
        await run_batcher(receive, [one, two], cursor, settings, stats)
    good = [f for f in frames if f.seq != 17]
    assert query(database, "SELECT seq, rkey FROM firehose_events ORDER BY id") == [
        (r.seq, r.rkey) for f in good for r in f.rows]
    ids = [i for (i,) in query(database, "SELECT id FROM firehose_events ORDER BY id")]
    assert ids == list(range(1, 79))
    assert query(database, "SELECT last_seq, last_id FROM firehose_cursor") == [(40, 78)]
    assert [p.read_bytes() for p in (tmp_path / "dl").glob("*.bin")] == [b"frame 17"]
    assert stats.frames_rejected == 1 and stats.events_committed == 78
    assert stats.last_id == 78 and stats.last_seq == 40 and stats.waiting_since is None
