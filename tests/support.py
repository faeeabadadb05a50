"""Test and benchmark helpers: databases, recordings, and the service as a real process."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import cbor2
import dag_cbor
import psycopg
from multiformats import CID

from skywire_trio.firehose.codec import decode_frame
from skywire_trio.firehose.framefile import read_frames
from skywire_trio.log import schema

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SKYWIRE_SHARED", ROOT.parent / "shared"))
FIXTURES = SHARED / "fixtures"
RELAY_FRAMES = FIXTURES / "relay-2026-07-04" / "frames.bin.zst"
RELAY_EXPECTED = FIXTURES / "relay-2026-07-04" / "expected_v1.jsonl"
PDS_CAPTURE = FIXTURES / "pds-local" / "capture.bin"
PDS_SUMMARY = FIXTURES / "pds-local" / "capture.json"
ADMIN_URL = os.environ.get("TEST_ADMIN_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def relay_frames() -> list[bytes]:
    """The 150 production relay frames of the Jetstream corpus."""
    return read_frames(RELAY_FRAMES, little_endian=True)


def pds_frames() -> list[bytes]:
    """The 359 frames captured from the reference PDS."""
    return read_frames(PDS_CAPTURE)


def renumbered(frames: list[bytes], count: int, first_seq: int = 1) -> list[bytes]:
    """``count`` frames cycling through ``frames`` with fresh, contiguous seqs.

    Bodies are re-encoded canonically (cbor2 keeps tag 42 as a CBORTag), so records, CIDs
    and CAR slices are byte-for-byte the real ones.
    """
    out = []
    seq = first_seq
    while len(out) < count:
        for frame in frames:
            if len(out) == count:
                break
            dec = cbor2.CBORDecoder(io.BytesIO(frame))
            header, body = dec.decode(), dec.decode()
            if header.get("op") != 1 or "seq" not in body:
                continue
            body["seq"] = seq
            seq += 1
            out.append(cbor2.dumps(header, canonical=True) + cbor2.dumps(body, canonical=True))
    return out


def frame(header: dict, body: dict) -> bytes:
    """A frame from a header and body (canonical DAG-CBOR map order)."""
    return cbor2.dumps(header, canonical=True) + cbor2.dumps(body, canonical=True)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def car(blocks: list[tuple[bytes, bytes]]) -> bytes:
    """A CARv1 slice of ``(binary CID, block)`` pairs, rooted at the first."""
    header = dag_cbor.encode({"version": 1, "roots": [CID.decode(bytes(blocks[0][0]))]})
    body = b"".join(_varint(len(c) + len(d)) + c + d for c, d in blocks)
    return _varint(len(header)) + header + body


def record_block(record: object) -> tuple[bytes, bytes]:
    """``(binary CID, DAG-CBOR bytes)`` of a record, by the reference codec."""
    data = dag_cbor.encode(record)
    cid = CID("base32", 1, "dag-cbor", ("sha2-256", hashlib.sha256(data).digest()))
    return bytes(cid), data


def commit_frame(seq: int, repo: str, ops: list[tuple[str, str, object | None]],
                 rev: str = "3abc", time: str = "2026-11-23T10:00:00.000Z") -> bytes:
    """A ``#commit`` frame for ``ops`` = ``(action, "collection/rkey", record)`` (record
    None for deletes), its records in the CAR slice, encoded by the reference codec."""
    blocks = [record_block(record) for _, _, record in ops if record is not None]
    cids = iter(blocks)
    body = {"seq": seq, "repo": repo, "rev": rev, "since": None,
            "commit": CID.decode(blocks[0][0]) if blocks else None,
            "blocks": car(blocks) if blocks else b"",
            "ops": [{"action": action, "path": path,
                     "cid": None if record is None else CID.decode(next(cids)[0])}
                    for action, path, record in ops],
            "time": time, "rebase": False, "tooBig": False, "blobs": []}
    return dag_cbor.encode({"op": 1, "t": "#commit"}) + dag_cbor.encode(body)


@contextlib.contextmanager
def fresh_database(admin_url: str = ADMIN_URL, migrate: bool = True) -> Iterator[str]:
    """A new, migrated database, dropped afterwards. Yields its URL."""
    name = f"skywire_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = psycopg.conninfo.conninfo_to_dict(admin_url)
    info["dbname"] = name
    url = "postgresql://{user}@{host}:{port}/{dbname}".format(
        user=info.get("user", "postgres"), host=info.get("host", "127.0.0.1"),
        port=info.get("port", 5432), dbname=name)
    try:
        if migrate:
            schema.migrate("postgresql+psycopg://" + url.split("://", 1)[1])
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(url: str, sql: str, *args: object) -> list[tuple]:
    """Run one statement and return all rows."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, args or None)
        return cur.fetchall() if cur.description else []


def service_env(database_url: str, relay_url: str, tmp: Path, **extra: str) -> dict[str, str]:
    """Environment for ``python -m skywire_trio`` in tests: fast backoff, own dead letters."""
    env = dict(os.environ)
    env.update({
        "DATABASE_URL": database_url,
        "SKYWIRE_RELAY_URL": relay_url,
        "SKYWIRE_DEADLETTER_DIR": str(tmp / "deadletter"),
        "SKYWIRE_BACKOFF_MIN": "0.05",
        "SKYWIRE_BACKOFF_MAX": "0.5",
        "PORT": str(free_port()),
    })
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stat_fields(proc_dir: Path) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name; None once the process is gone."""
    try:
        return (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (nobody may reap an orphan here)."""
    fields = _stat_fields(Path("/proc") / str(pid))
    return fields is not None and fields[0] != "Z"


def child_processes(parent: int, word: str = "") -> list[int]:
    """The live child processes of ``parent`` whose command line contains ``word``."""
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        fields = _stat_fields(proc_dir)
        if fields is None or fields[1] != str(parent) or fields[0] == "Z":
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # it ended while we looked
        if word in cmdline:
            found.append(int(proc_dir.name))
    return found


def start_service(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Start ``python -m skywire_trio`` as a real process, logging to ``log_path``."""
    log = log_path.open("ab")
    return subprocess.Popen([sys.executable, "-m", "skywire_trio"], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid`` in KiB (0 once it is gone)."""
    try:
        for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def api_listening(port: int) -> bool:
    """Whether the service's API answers on ``port`` (any status)."""
    import httpx

    try:
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
    except httpx.TransportError:
        return False
    return True


def wait_for(predicate: callable, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def expected_rows(frames: list[bytes]) -> list[tuple]:
    """(seq, collection, rkey, cid) of every row the frames should yield, in order."""
    return [(r.seq, r.collection, r.rkey, r.cid) for f in frames for r in decode_frame(f).rows]


def append_rows(url: str, upstream: str, frames: list[bytes], indexed_at: datetime) -> list[int]:
    """Commit the frames' rows through the log's writer, stamped ``indexed_at``; their ids."""
    import trio
    import trio_asyncio

    from skywire_trio.log import writer

    rows = [r for f in frames for r in decode_frame(f).rows]

    async def main() -> list[int]:
        async with trio_asyncio.open_loop(), writer.connect(url) as store:
            cursor = await store.claim_cursor(upstream)
            last = await store.append(rows, None, cursor.last_id, indexed_at)
            return list(range(cursor.last_id + 1, last + 1))

    return trio.run(main)


def stored_rows(url: str) -> list[tuple]:
    """(seq, collection, rkey, cid) of every row in the log, in log order."""
    return query(url, "SELECT seq, collection, rkey, cid FROM firehose_events ORDER BY id")


@contextlib.contextmanager
def replay_process(path: Path, *extra: str) -> Iterator[str]:
    """``python -m skywire_trio replay`` on a free port; yields its ws:// URL."""
    proc = subprocess.Popen([sys.executable, "-m", "skywire_trio", "replay", str(path),
                             "--port", "0", *extra], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        url = proc.stdout.readline().strip()
        assert url.startswith("ws://"), f"replay server did not start: {url!r}"
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def service_process(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """The service as a real process, stopped with SIGTERM afterwards (must exit 0)."""
    proc = start_service(env, log_path)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            code = proc.wait(15)
            assert code == 0, f"service exited {code}; log:\n{log_path.read_text()[-3000:]}"
