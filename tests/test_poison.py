"""Poison frames through the real pipeline: replay server -> receiver -> reader -> batcher ->
PostgreSQL. Ingestion never stops on a frame, nothing vanishes, and /health tells the truth,
including through a crash loop.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import cbor2
import httpx
import jsonschema
import trio
import trio_asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skywire_trio.api.openapi import OPENAPI
from skywire_trio.config import Settings
from skywire_trio.firehose.codec import FrameError, decode_frame
from skywire_trio.firehose.replay import serve_replay
from skywire_trio.ingest import supervise_ingest
from skywire_trio.log import writer
from skywire_trio.log.reader import EVENT_JSON
from skywire_trio.service import serve
from skywire_trio.stats import IngestStats

from .faults import wait_until
from .support import expected_rows, pds_frames, query, relay_frames
from .test_sanitize import RawText, commit, encode, identity, nested, parts

# Real frames to mutate: the PDS capture's first 40 (commits, #identity, #account, #sync)
# and the relay's first 20 (production commits with their CAR slices).
BASES = [parts(f) for f in pds_frames()[:40] + relay_frames()[:20]]
EVENT_SCHEMA = jsonschema.Draft202012Validator(
    {**OPENAPI["components"]["schemas"]["Event"], "components": OPENAPI["components"]})


def _settings(database: str, port: int, deadletter: Path, **overrides: object) -> Settings:
    return dataclasses.replace(
        Settings(database_url=database, relay_url=f"ws://127.0.0.1:{port}", port=0,
                 deadletter_dir=deadletter, backoff_min=0.02, backoff_max=0.2,
                 read_timeout=5.0, batch_interval=0.02),
        **overrides)


# --- the property: mutated real frames mixed with valid ones -------------------------------

huge = st.sampled_from(["x" * 100_000, "\u4e00" * 5_000, "did:plc:" + "a" * 3_000])
nul = st.text(max_size=12).map(lambda s: s[: len(s) // 2] + "\x00" + s[len(s) // 2:])
bad_utf8 = st.sampled_from([b"\xff", b"a\xfe", b"\xc3", b"\xed\xa0\x80", b"did:\x80x"]).map(
    RawText)
big_ints = st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, 2**70, -(2**63), -(2**64) - 1])
times = st.sampled_from([
    "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999Z", "2026-11-23T10:00:00", "2026-13-45T99:99:99Z",
    "+275760-09-13T00:00:00Z", "1970-01-01T00:00:00Z", ""])
deep = st.integers(129, 400).map(nested)
wrong_types = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), st.binary(
    max_size=40), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                        st.integers(), max_size=3),
    st.integers(-5, 5))
MISSING = object()
values = st.one_of(nul, bad_utf8, huge, big_ints, times, deep, wrong_types, st.just(MISSING))
# seq: only values that are not a later seq (a valid seq past the stream's would make the
# frames after it replays, skipped by design; 2^63-1 itself is tested in test_sanitize).
bad_seqs = st.one_of(st.sampled_from([0, -1, 2**63, 2**64 - 1, 2**64, -(2**64), "7", 7.5,
                                      True, None, MISSING]), nul, bad_utf8, deep)
# The header: any type but #info (no seq) and op -1 (an error frame ends the connection).
bad_types = st.one_of(st.sampled_from(["#commit", "#identity", "#account", "#sync",
                                       "#brandnew", "commit", "#", "#a b", None, 1]),
                      nul.map(lambda s: "#" + s), huge.map(lambda s: "#" + s),
                      bad_utf8, deep)
bad_ops = st.sampled_from([0, 2, "1", None, MISSING])


@dataclasses.dataclass(frozen=True)
class Mutation:
    """Set (or delete, with MISSING) one field of a frame: header, body, or first op."""

    where: str  # "header" | "body" | "op"
    key: str
    value: object


def _keys(where: str) -> st.SearchStrategy[str]:
    if where == "body":
        return st.sampled_from(["repo", "did", "rev", "time", "ops", "blocks", "handle",
                                "active", "status", "since", "commit", "tooBig", "extra"])
    return st.sampled_from(["path", "action", "cid", "extra"])


mutations = st.one_of(
    st.builds(Mutation, st.just("header"), st.just("t"), bad_types),
    st.builds(Mutation, st.just("header"), st.just("op"), bad_ops),
    st.builds(Mutation, st.just("body"), st.just("seq"), bad_seqs),
    st.sampled_from(["body", "op"]).flatmap(
        lambda where: st.builds(Mutation, st.just(where), _keys(where), values)),
)


def _set(mapping: dict, key: str, value: object) -> None:
    if value is MISSING:
        mapping.pop(key, None)
    else:
        mapping[key] = value


def build(base: int, seq: int, mutation: Mutation | None) -> bytes:
    """Real frame ``base`` renumbered to ``seq``, with ``mutation`` applied."""
    header, body = (dict(part) for part in BASES[base])
    body["seq"] = seq
    if mutation is not None:
        if mutation.where == "header":
            _set(header, mutation.key, mutation.value)
        elif mutation.where == "body":
            _set(body, mutation.key, mutation.value)
        elif isinstance(body.get("ops"), list) and body["ops"]:
            op = dict(body["ops"][0])
            _set(op, mutation.key, mutation.value)
            body["ops"] = [op, *body["ops"][1:]]
        else:  # a body without ops: the value goes in a field of its own
            _set(body, "extra", mutation.value)
    return encode(header, body)


streams = st.lists(st.tuples(st.integers(0, len(BASES) - 1), st.none() | mutations),
                   min_size=1, max_size=8)


async def _ingest(database: str, frames: list[bytes], deadletter: Path, last_seq: int,
                  ) -> IngestStats:
    """Feed ``frames`` through a replay server and a real ingest supervisor until
    ``last_seq`` is committed."""
    stats = IngestStats()
    async with trio_asyncio.open_loop(), trio.open_nursery() as nursery:
        port = await nursery.start(serve_replay, frames)
        # Each example has its own upstream (port): start it from its beginning.
        settings = _settings(database, port, deadletter, reset_cursor=True)
        await nursery.start(supervise_ingest, settings, stats)
        with trio.fail_after(30):
            while stats.last_seq != last_seq:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    return stats


@settings(max_examples=20, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(stream=streams)
async def test_poison_frames_never_stop_ingest(database, tmp_path, stream):
    # A valid frame last: once its seq is committed, every frame before it was handled.
    stream = [*stream, (0, None)]
    frames = [build(base, seq, mutation) for seq, (base, mutation) in enumerate(stream, 1)]
    deadletter = tmp_path / uuid.uuid4().hex
    (first_id,) = query(database, "SELECT coalesce(max(id), 0) FROM firehose_events")[0]
    stats = await _ingest(database, frames, deadletter, len(frames))

    assert stats.ingest_restarts == 0  # ingestion never stopped
    stored = query(database, "SELECT seq, collection, rkey, cid FROM firehose_events "
                             "WHERE id > %s ORDER BY id", first_id)
    files = sorted(deadletter.glob("*.bin"))
    saved = [p.read_bytes() for p in files]
    reasons = [p.with_suffix(".txt").read_text() for p in files]
    expected, refused = [], []
    for seq, raw in enumerate(frames, 1):
        try:
            expected += expected_rows([raw])
        except FrameError:
            refused.append(raw)
            assert not any(row[0] == seq for row in stored), "a refused frame has rows"
        else:
            assert raw not in saved, "a stored frame was also dead-lettered"
    # Every frame that decodes is stored exactly once, in order (valid frames included:
    # they decode); every other frame is in the dead letters, bytes and reason; nothing else.
    assert stored == expected
    assert sorted(saved) == sorted(refused)
    assert stats.frames_rejected == len(refused)
    # The field rules caught every poison: none had to be found by narrowing a batch.
    assert not [r for r in reasons if r.startswith("the log refused")]
    valid = [raw for raw, (_, mutation) in zip(frames, stream, strict=True) if mutation is None]
    assert set(expected_rows(valid)) <= set(stored)
    # Whatever was stored is served as an Event that /openapi.json describes.
    for (text,) in query(database, f"SELECT {EVENT_JSON} FROM firehose_events WHERE id > %s",
                         first_id):
        EVENT_SCHEMA.validate(json.loads(text))


# --- the poison frames, from an upstream, with the whole service -------------------

POISON = {
    # name: (frame builder taking a seq, stored with a note (True) or dead-lettered (False))
    "NUL in repo": (lambda s: commit(seq=s, repo="did:plc:a\x00b"), False),
    "NUL in did": (lambda s: identity(seq=s, did="did:plc:a\x00b"), False),
    "NUL in op path": (lambda s: commit(seq=s, op={"path": "app.bsky.feed.post/\x00"}), False),
    "NUL in rev": (lambda s: commit(seq=s, rev="3ab\x00c"), True),
    "NUL in event type": (lambda s: identity("#iden\x00tity", seq=s), False),
    "seq above 2^63-1": (lambda s: commit(seq=2**63), False),
    "time 0001-01-01T00:00:00+14:00": (lambda s: commit(seq=s, time="0001-01-01T00:00:00+14:00"),
                                       True),
    "time 9999-12-31T23:59:59-14:00": (lambda s: commit(seq=s, time="9999-12-31T23:59:59-14:00"),
                                       True),
    "non-commit body nested 129 deep": (lambda s: identity(seq=s, x=nested(129)), False),
    "100,000-character event type": (lambda s: identity("#" + "t" * 100_000, seq=s), False),
}


def _renumber(raw: bytes, seq: int) -> bytes:
    header, body = parts(raw)
    return cbor2.dumps(header, canonical=True) + cbor2.dumps({**body, "seq": seq},
                                                              canonical=True)


async def _health(api_url: str) -> tuple[int, dict]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{api_url}/health")
    return response.status_code, response.json()


async def test_an_upstream_sending_poison_frames_between_valid_ones(database, tmp_path):
    valid = relay_frames()[:30]
    frames, valid_frames, kept, seq = [], [], [], 0
    for index, (make, stored) in enumerate(POISON.values()):
        for raw in valid[3 * index:3 * index + 3]:
            seq += 1
            frames.append(_renumber(raw, seq))
            valid_frames.append(frames[-1])
        seq += 1
        frames.append(make(seq))
        if stored:
            kept.append(frames[-1])
    seq += 1
    frames.append(_renumber(valid[0], seq))
    valid_frames.append(frames[-1])
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_replay, frames)
        settings = _settings(database, port, tmp_path / "dl", stall_seconds=2.0)
        running = await nursery.start(serve, settings)
        # Everything after the last poison frame is stored within seconds.
        await wait_until(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                         == [(seq,)], 20)
        status, body = await _health(running.api_url)
        # Honest: healthy, at the head, nothing waiting, no restarts, and stays so past
        # the stall bound (nothing is left waiting for a commit).
        assert status == 200 and body["status"] == "ok", body
        assert body["last_seq"] == seq and body["ingest_restarts"] == 0
        assert body["last_error"] is None
        await trio.sleep(2.5)
        status, body = await _health(running.api_url)
        assert status == 200 and body["status"] == "ok" and body["seconds_waiting"] is None, body
        nursery.cancel_scope.cancel()
    rows = query(database, "SELECT seq, collection, rkey, cid FROM firehose_events ORDER BY id")
    assert [r for r in rows if r[0] not in {decode_frame(k).seq for k in kept}] == \
        expected_rows(valid_frames)
    notes = query(database, "SELECT DISTINCT seq, sanitized FROM firehose_events "
                            "WHERE sanitized IS NOT NULL ORDER BY seq")
    assert [s for s, _ in notes] == [decode_frame(k).seq for k in kept]
    assert all("stored NULL" in note for _, note in notes)
    saved = {p.read_bytes() for p in (tmp_path / "dl").glob("*.bin")}
    assert saved == {f for f in frames if f not in valid_frames and f not in kept}
    assert len(saved) == sum(not stored for _, stored in POISON.values())


# --- a crash loop is a stall -------------------------------------------------------------------

class BrokenStore:
    """A real LogStore whose batches fail (not for their data) while ``broken[0]``."""

    def __init__(self, store: writer.LogStore, broken: list[bool]) -> None:
        self._store = store
        self._broken = broken

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)

    async def stage(self, batch: writer.Batch) -> None:
        if self._broken[0]:
            raise RuntimeError("simulated: the disk is on fire")
        await self._store.stage(batch)


def _broken_store(broken: list[bool]) -> Callable[[str], object]:
    @asynccontextmanager
    async def open_store(url: str) -> AsyncIterator[BrokenStore]:
        async with writer.connect(url) as store:
            yield BrokenStore(store, broken)

    return open_store


async def test_a_crash_looping_ingest_turns_health_503_within_the_stall_time(database,
                                                                             tmp_path):
    stall = 2.0
    frames = relay_frames()[:40]
    broken = [True]
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_replay, frames)
        settings = _settings(database, port, tmp_path / "dl", stall_seconds=stall)
        running = await nursery.start(serve, settings, _broken_store(broken))
        started = trio.current_time()
        # (Under load the first connection alone can take longer than the stall time, which
        # is a stall too, "disconnected": wait for the one this test is about.)
        with trio.fail_after(stall + 10):  # generous: the machine is shared
            while True:
                status, body = await _health(running.api_url)
                if status == 503 and body["seconds_waiting"] is not None:
                    break
                await trio.sleep(0.1)
        took = trio.current_time() - started
        assert body["status"] == "stalled" and body["database"] == "ok", body
        assert body["seconds_waiting"] > stall
        assert "the disk is on fire" in body["last_error"]
        # Ingest restarted after the frames began to wait, and the clock kept running.
        assert body["ingest_restarts"] >= 1
        assert body["seconds_since_error"] < body["seconds_waiting"]
        assert took >= stall - 0.5
        # Repaired: the frames are committed and /health is 200 again.
        broken[0] = False
        with trio.fail_after(20):
            while (await _health(running.api_url))[0] != 200:
                await trio.sleep(0.1)
        await wait_until(lambda: query(database, "SELECT count(*) FROM firehose_events")
                         == [(len(expected_rows(frames)),)], 20)
        nursery.cancel_scope.cancel()
