"""Latency benchmark: a frame sent by the replay server -> its row committed -> a long-poll
consumer receiving it, at live rates; and what the low latency costs (commits/s, WAL bytes
per event).

Run from the repository root (as root: it runs a private PostgreSQL cluster as the
``postgres`` OS user, like tests/test_pg_restart.py, so that WAL accounting sees only this
benchmark)::

    .venv/bin/python scripts/bench_latency.py [--rates 200,2000] [--seconds 30]
    .venv/bin/python scripts/bench_latency.py --quiet 180   # a quiet upstream, see below

For each rate (events/s; the production relay frames carry ~1.01 events each, so the
replay is paced at rate / 1.01 frames/s on an absolute schedule):

- a fresh database on the private cluster (default settings: fsync and synchronous_commit
  on), the replay server in a child process of this script recording when each frame's
  bytes were handed to the kernel (``time.monotonic``, the same clock in every process), the
  service as a real process with its default settings;
- a thread LISTENing on the commit channel records when each commit's notification
  arrived (the notification is delivered only once the transaction has committed), and a
  thread runs a long-poll consumer (``GET /events?since=..&wait=10&limit=1000``) recording
  when each event arrived;
- after a warm-up, a measurement window: for every frame sent in it, sent -> committed
  (first notification covering its rows) and sent -> consumer received; p50 / p99 / max;
  commits/s (the service's ``skywire_batches_committed_total``) and WAL bytes per event
  (``pg_current_wal_lsn()`` over the window, divided by the rows committed in it).

Targets at 200 events/s (reported, not enforced): p50 < 10 ms and p99 < 50 ms to commit,
p99 < 60 ms to the consumer.

``--quiet SECONDS``: the replay sends 100 frames, then stays quiet for SECONDS while still
answering pings, then sends 100 more; the service runs with its default read timeout
(30 s) and ping interval (10 s). ``/health`` is polled every 5 s. Passes if every answer was
200 and connected, the silence was shown, there was exactly one connection, and every
frame was committed.
"""

from __future__ import annotations

import argparse
import array
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from benchlib import machine_busy_seconds, wait_until_quiet  # noqa: E402

from skywire_trio.firehose.codec import decode_frame  # noqa: E402
from skywire_trio.firehose.framefile import read_frames, write_frames  # noqa: E402
from skywire_trio.log.notify import NOTIFY_CHANNEL  # noqa: E402
from skywire_trio.log.schema import migrate  # noqa: E402
from tests.support import relay_frames, renumbered, service_env, start_service  # noqa: E402
from tests.test_pg_restart import throwaway_cluster  # noqa: E402

EVENTS_PER_FRAME = 1.0133  # the renumbered relay frames: 101,334 events per 100,000 frames
WARM_UP = 5.0
TARGETS = {"commit_p50": 10.0, "commit_p99": 50.0, "consumer_p99": 60.0}  # ms, at 200 ev/s


# --------------------------------------------------------------------- the replay child


def serve_child(args: argparse.Namespace) -> int:
    """The replay server as this script's child: prints its URL, records send times."""
    import trio

    from skywire_trio.firehose.replay import Behaviour, serve_replay

    frames = read_frames(args.serve)
    sent = array.array("d", [0.0] * len(frames))

    def on_sent(index: int, at: float) -> None:
        sent[index] = at

    behaviour = Behaviour(rate=args.rate, on_sent=on_sent, quiet_after=args.quiet_after,
                          quiet_for=args.quiet_for)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                port = await nursery.start(partial(serve_replay, frames, behaviour=behaviour))
                print(f"ws://127.0.0.1:{port}", flush=True)
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(serve)
    with open(args.times, "wb") as out:
        sent.tofile(out)
    return 0


class ReplayChild:
    """``serve_child`` in a subprocess; ``stop()`` returns the send time of every frame."""

    def __init__(self, recording: Path, rate: float, times: Path, quiet_after: int | None = None,
                 quiet_for: float = 0.0) -> None:
        self.times = times
        command = [sys.executable, __file__, "--serve", str(recording), "--rate", str(rate),
                   "--times", str(times)]
        if quiet_after is not None:
            command += ["--quiet-after", str(quiet_after), "--quiet-for", str(quiet_for)]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        self.url = self.proc.stdout.readline().strip()
        assert self.url.startswith("ws://"), f"replay child did not start: {self.url!r}"

    def stop(self) -> array.array:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        sent = array.array("d")
        with open(self.times, "rb") as source:
            sent.frombytes(source.read())
        return sent


# --------------------------------------------------------------------- observers


class CommitListener(threading.Thread):
    """LISTENs on the commit channel: (arrival time, new last id) of every commit."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.commits: list[tuple[float, int]] = []
        self.ready = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self.ready.set()
            while not self.stopping.is_set():
                for note in conn.notifies(timeout=0.5):
                    self.commits.append((time.monotonic(), int(note.payload)))


class Consumer(threading.Thread):
    """A long-poll consumer of ``/events``: (arrival time, id, seq) of every event."""

    def __init__(self, api_url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.api_url, self.token = api_url, token
        self.received: list[tuple[float, int, int | None]] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        since = 0
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.api_url, headers=headers, timeout=30) as client:
            while not self.stopping.is_set():
                try:
                    response = client.get("/events", params={"since": since, "limit": 1000,
                                                             "wait": 10})
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    time.sleep(0.1)
                    continue
                now = time.monotonic()
                if response.status_code != 200:
                    self.errors.append(f"{response.status_code} {response.text[:200]}")
                    time.sleep(0.1)
                    continue
                body = response.json()
                for event in body["events"]:
                    self.received.append((now, event["id"], event["seq"]))
                since = body["cursor"]


def _metric(api_url: str, name: str) -> float:
    text = httpx.get(f"{api_url}/metrics", timeout=10).text
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found[1]) if found else float("nan")


def _wal_lsn(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def _api_url(log: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            found = re.search(r"API listening on (http://\S+)", log.read_text(errors="replace"))
            if found:
                return found[1]
        time.sleep(0.1)
    raise RuntimeError("the service did not start its API:\n" + log.read_text()[-3000:])


def _token(env: dict[str, str]) -> str:
    done = subprocess.run([sys.executable, "-m", "skywire_trio", "tokens", "create",
                           f"bench-{time.monotonic_ns()}", "--rate-limit", "100000"],
                          env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    return done.stdout.strip()


# --------------------------------------------------------------------- one rate


@dataclass
class RateResult:
    """What one rate's run measured."""

    rate: float
    window: float = 0.0
    frames: int = 0
    events: int = 0
    commit_ms: list[float] = field(default_factory=list)
    commit_at: list[float] = field(default_factory=list)  # when each measured frame was sent
    consumer_ms: list[float] = field(default_factory=list)
    commits: float = 0.0
    wal_bytes: int = 0
    missing_commit: int = 0
    missing_consumer: int = 0
    consumer_errors: list[str] = field(default_factory=list)
    other_cores: float = 0.0
    exit_code: int | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, by nearest rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run_rate(cluster_url: str, rate: float, seconds: float, frames: list[bytes],
             workdir: Path, extra_env: dict[str, str],
             keep_logs: Path | None = None, consume: bool = True) -> RateResult:
    """Replay at ``rate`` events/s into a fresh database; measure one window."""
    result = RateResult(rate)
    name = f"bench_latency_{int(rate)}"
    with psycopg.connect(cluster_url + "/postgres", autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    url = f"{cluster_url}/{name}"
    migrate("postgresql+psycopg://" + url.split("://", 1)[1])
    count = int(rate / EVENTS_PER_FRAME * (WARM_UP + seconds + 10))
    recording = workdir / f"rate-{int(rate)}.bin"
    write_frames(recording, frames[:count])
    seq_of_index = [decode_frame(f).seq for f in frames[:count]]
    log = workdir / f"service-{int(rate)}.log"
    listener = CommitListener(url)
    listener.start()
    listener.ready.wait(10)
    replay = ReplayChild(recording, rate / EVENTS_PER_FRAME, workdir / f"sent-{int(rate)}.bin")
    env = service_env(url, replay.url, workdir, **extra_env)
    token = _token(env)
    service = start_service(env, log)
    try:
        api_url = _api_url(log)
        consumer = Consumer(api_url, token)
        if consume:
            consumer.start()
        # The window starts once the service has been ingesting for the warm-up.
        deadline = time.monotonic() + 60
        while not listener.commits and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(WARM_UP)
        wal0, batches0 = _wal_lsn(url), _metric(api_url, "skywire_batches_committed_total")
        busy0, t0 = machine_busy_seconds(), time.monotonic()
        id0 = listener.commits[-1][1]
        time.sleep(seconds)
        wal1, batches1 = _wal_lsn(url), _metric(api_url, "skywire_batches_committed_total")
        busy1, t1 = machine_busy_seconds(), time.monotonic()
        id1 = listener.commits[-1][1]
        time.sleep(1.0)  # let the consumer catch up with the window
        consumer.stopping.set()
        listener.stopping.set()
    finally:
        sent = replay.stop()
        service.send_signal(signal.SIGTERM)
        result.exit_code = service.wait(30)
        if keep_logs is not None:
            keep_logs.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(log, keep_logs / log.name)
    result.window = t1 - t0
    result.events = id1 - id0
    result.commits = (batches1 - batches0) / result.window
    result.wal_bytes = wal1 - wal0
    # Our own threads and the service's processes are part of the run; "other" is the rest.
    result.other_cores = max(0.0, (busy1 - busy0) / result.window)
    with psycopg.connect(url, autocommit=True) as conn:
        last_id_of_seq = dict(conn.execute(
            "SELECT seq, max(id) FROM firehose_events GROUP BY seq").fetchall())
    commit_times = listener.commits  # in commit order: last ids increase
    consumer_at: dict[int, float] = {}
    for at, event_id, _ in consumer.received:
        consumer_at.setdefault(event_id, at)
    result.consumer_errors = consumer.errors
    position = 0
    for index, sent_at in enumerate(sent[:count]):
        if not t0 <= sent_at < t1:
            continue
        result.frames += 1
        last_id = last_id_of_seq.get(seq_of_index[index])
        if last_id is None:
            result.missing_commit += 1
            continue
        while position < len(commit_times) and commit_times[position][1] < last_id:
            position += 1
        if position == len(commit_times):
            result.missing_commit += 1
        else:
            result.commit_ms.append((commit_times[position][0] - sent_at) * 1000)
            result.commit_at.append(sent_at - t0)
        received = consumer_at.get(last_id)
        if received is None:
            result.missing_consumer += 1
        else:
            result.consumer_ms.append((received - sent_at) * 1000)
    return result


def report_rate(result: RateResult) -> list[str]:
    """Lines describing one rate's result."""
    def dist(values: list[float]) -> str:
        return (f"p50 {percentile(values, 0.5):.1f} ms, p99 {percentile(values, 0.99):.1f} ms,"
                f" max {max(values, default=float('nan')):.1f} ms")

    lines = [
        f"rate {result.rate:,.0f} events/s: {result.frames:,} frames sent in the "
        f"{result.window:.1f}s window, {result.events:,} events committed "
        f"({result.events / result.window:,.0f} events/s)",
        f"  sent -> committed:         {dist(result.commit_ms)}",
        f"  sent -> consumer received: {dist(result.consumer_ms)}",
        f"  commits/s {result.commits:,.1f} ("
        f"{result.events / max(1, result.commits * result.window):.1f} events per commit); "
        f"WAL {result.wal_bytes / max(1, result.events):,.0f} bytes per event "
        f"({result.wal_bytes / result.window / 1e6:.2f} MB/s)",
        f"  frames without a commit / consumer receipt: {result.missing_commit} / "
        f"{result.missing_consumer}; consumer errors: {len(result.consumer_errors)} "
        f"{result.consumer_errors[:1]}; "
        f"machine busy {result.other_cores:.2f} cores (everything, this run included); "
        f"service exit code {result.exit_code}",
    ]
    slow = sorted(zip(result.commit_ms, result.commit_at, strict=True), reverse=True)[:5]
    lines.append("  slowest commits (ms at s into the window): "
                 + ", ".join(f"{ms:.0f} at {at:.2f}" for ms, at in slow))
    if result.rate == 200:
        checks = {"commit_p50": percentile(result.commit_ms, 0.5),
                  "commit_p99": percentile(result.commit_ms, 0.99),
                  "consumer_p99": percentile(result.consumer_ms, 0.99)}
        lines.append("  targets: " + ", ".join(
            f"{k} < {TARGETS[k]:g} ms: {'PASS' if v < TARGETS[k] else 'MISS'}"
            for k, v in checks.items()))
    return lines


# --------------------------------------------------------------------- a quiet upstream


def run_quiet(cluster_url: str, quiet: float, frames: list[bytes], workdir: Path) -> bool:
    """100 frames, ``quiet`` seconds of silence answering pings, 100 frames."""
    with psycopg.connect(cluster_url + "/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS bench_quiet")
        conn.execute("CREATE DATABASE bench_quiet")
    url = f"{cluster_url}/bench_quiet"
    migrate("postgresql+psycopg://" + url.split("://", 1)[1])
    recording = workdir / "quiet.bin"
    write_frames(recording, frames[:200])
    log = workdir / "service-quiet.log"
    replay = ReplayChild(recording, 0.0, workdir / "sent-quiet.bin", quiet_after=100,
                         quiet_for=quiet)
    env = service_env(url, replay.url, workdir)
    service = start_service(env, log)
    answers: list[tuple[float, int, dict]] = []
    try:
        api_url = _api_url(log)
        with httpx.Client(base_url=api_url, timeout=10) as client:
            # The quiet spell starts once the first 100 frames are in.
            deadline = time.monotonic() + 60
            while client.get("/health").json()["last_seq"] != 100:
                assert time.monotonic() < deadline, "the first 100 frames never arrived"
                time.sleep(0.1)
            started = time.monotonic()
            while time.monotonic() - started < quiet + 30:
                response = client.get("/health")
                answers.append((time.monotonic() - started, response.status_code,
                                response.json()))
                if answers[-1][2]["last_seq"] == 200:
                    break
                time.sleep(5.0)
    finally:
        replay.stop()
        service.send_signal(signal.SIGTERM)
        code = service.wait(30)
    text = log.read_text(errors="replace")
    connections = text.count("connected to ws://")
    longest = max((a[2].get("seconds_since_event") or 0.0) for a in answers)
    pong = [a[2].get("seconds_since_pong") for a in answers if a[2].get("seconds_since_pong")]
    for at, status, body in answers:
        print(f"  t={at:6.1f}s {status} status={body['status']} connected="
              f"{body['upstream_connected']} last_seq={body['last_seq']} "
              f"seconds_since_event={body.get('seconds_since_event')} "
              f"seconds_since_pong={body.get('seconds_since_pong')}")
    ok = (all(a[1] == 200 and a[2]["upstream_connected"] for a in answers)
          and answers[-1][2]["last_seq"] == 200 and connections == 1 and longest > quiet - 10
          and code == 0)
    print(f"quiet upstream for {quiet:g}s: {len(answers)} /health answers, all 200 and "
          f"connected: {all(a[1] == 200 and a[2]['upstream_connected'] for a in answers)}; "
          f"longest silence shown {longest:.1f}s; seconds_since_pong at most "
          f"{max(pong, default=float('nan')):.1f}s; connections {connections}; all 200 frames "
          f"committed: {answers[-1][2]['last_seq'] == 200}; service exit code {code}")
    print("quiet check " + ("PASS" if ok else "FAIL"))
    return ok


# --------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments; run the replay child, the rates, or the quiet check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rates", default="200,2000", help="events/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="window per rate")
    parser.add_argument("--quiet", type=float, default=None,
                        help="instead: a quiet upstream for this many seconds")
    parser.add_argument("--wait-quiet", type=float, default=30.0,
                        help="seconds to wait for an idle machine before each rate")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the service (e.g. SKYWIRE_BATCH_LINGER=0)")
    parser.add_argument("--no-consumer", action="store_true",
                        help="no long-poll consumer (commit latency alone)")
    parser.add_argument("--logs", type=Path, default=None,
                        help="copy each run's service log into this directory")
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--times", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--quiet-after", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quiet-for", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve is not None:
        return serve_child(args)

    now = datetime.datetime.now().astimezone()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                          capture_output=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "skywire_trio"], cwd=ROOT,
                           text=True, capture_output=True).stdout.strip()
    print(f"skywire-trio latency benchmark, {now:%Y-%m-%d %H:%M %Z}; source {head}"
          + (" + uncommitted changes" if dirty else ""))
    print(f"machine: {os.cpu_count()} cores, Python {platform.python_version()}; a private "
          "PostgreSQL 15 cluster (initdb defaults: fsync, synchronous_commit on)")
    rates = [float(r) for r in args.rates.split(",")]
    extra_env = dict(item.split("=", 1) for item in args.env)
    if extra_env:
        print(f"service environment: {extra_env}")
    needed = int(max(rates) / EVENTS_PER_FRAME * (WARM_UP + args.seconds + 10)) + 10
    frames = renumbered(relay_frames(), max(needed, 200))
    ok = True
    with tempfile.TemporaryDirectory(prefix="skywire-latency-") as tmp:
        workdir = Path(tmp)
        with throwaway_cluster(workdir / "postgres.log") as cluster:
            base = f"postgresql://postgres@127.0.0.1:{cluster.port}"
            if args.quiet is not None:
                return 0 if run_quiet(base, args.quiet, frames, workdir) else 1
            results = []
            for rate in rates:
                print(f"machine before {rate:g} events/s: {wait_until_quiet(args.wait_quiet)}")
                result = run_rate(base, rate, args.seconds, frames, workdir, extra_env,
                                  args.logs, consume=not args.no_consumer)
                results.append(result)
                for line in report_rate(result):
                    print(line, flush=True)
                ok = ok and result.exit_code == 0 and result.missing_commit == 0
    print(json.dumps([{"rate": r.rate, "commit_p50_ms": percentile(r.commit_ms, 0.5),
                       "commit_p99_ms": percentile(r.commit_ms, 0.99),
                       "consumer_p50_ms": percentile(r.consumer_ms, 0.5),
                       "consumer_p99_ms": percentile(r.consumer_ms, 0.99),
                       "commits_per_s": r.commits,
                       "wal_bytes_per_event": r.wal_bytes / max(1, r.events)}
                      for r in results]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
