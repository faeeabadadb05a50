"""API read benchmark: how fast ``GET /events`` serves a large log while ingestion runs.

Run from the repository root::

    .venv/bin/python scripts/bench_api.py [--fill-frames N] [--live-rate R]

What it does:

1. Builds a recording of ``--fill-frames`` + ``--live-frames`` frames by cycling the 150
   production relay frames with fresh contiguous seqs (``tests.support.renumbered``) and
   splits it in two files: the *fill* part (seqs 1..F) and the *live* part (F+1..).
2. Fresh migrated database; a relay (``python -m skywire_trio replay``) on a fixed port
   serves the fill part as fast as the client reads; the service (a real process, default
   settings) ingests it; we wait until ``firehose_cursor.last_seq`` is F.
3. The fill relay is stopped and a second relay is started *on the same port* serving the
   live part at ``--live-rate`` frames/s. The service's reader reconnects with its cursor
   (the same upstream URL, as after a relay restart) and keeps ingesting at that steady
   rate. Measurements start once it has committed live events, and the actual ingest rate
   over each measurement (from ``firehose_cursor`` polled every 100 ms) is reported: the
   replay server sleeps ``1/rate`` after each frame, so it delivers less than asked (the
   default 1000 gives roughly the live Bluesky firehose's few hundred events/s).
4. With ingestion running, over the ids that were committed when the phase started:

   a. *walk*: a client walks the log from ``since=0`` to that head with ``limit=1000``,
      page by page (httpx, one keep-alive connection per walker), first alone, then two
      walkers concurrently (two threads, each with its own connection, each walking the
      whole range). The client reads each body in full but takes the cursor from its tail
      instead of parsing 1000 events (the client shares the machine's cores with the
      service and PostgreSQL); ``--parse`` makes it ``json.loads`` every page. Events
      served are counted from the cursors (ids are gapless), and the count is checked
      against a full parse of the first and last page of every walk.
   b. *latency*: ``--requests`` sequential ``limit=100`` requests at uniformly random
      ``since`` positions over the stored range, one keep-alive connection, after 50
      unmeasured warm-up requests; wall time per request including reading the body.

5. Optionally (on by default, ``--no-idle`` skips it) the same after the live relay is
   stopped (``--idle-requests`` latency requests): the service idle but for the API, for
   comparison.
6. The API's own SQL (``_event_query``) under ``EXPLAIN ANALYZE`` against the same rows
   selected without building the event JSON, to show what the rendering costs.

CPU seconds per phase are reported for the service process, the PostgreSQL backends of the
benchmark database, the relay, this script (the HTTP client), the whole machine and the
busiest other processes; PostgreSQL runs on the same machine, so the client, the server and
the database compete for its cores, and a warning says when other work took a large share.

Targets (reported, not enforced): >= 50,000 events/s served by ``limit=1000`` walks;
p99 < 50 ms for ``limit=100`` requests. Exit status 0 when the run completed and every
answer was a 200 with the expected number of events, whether or not targets are met.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import httpx  # noqa: E402
import psycopg  # noqa: E402
from benchlib import machine_busy_seconds, proc_cpu_seconds, wait_until_quiet  # noqa: E402

from skywire_trio.firehose.framefile import write_frames  # noqa: E402
from tests.support import (  # noqa: E402
    free_port,
    fresh_database,
    query,
    relay_frames,
    renumbered,
    service_env,
    start_service,
    wait_for,
)

WALK_TARGET_EPS = 50_000
P99_TARGET_MS = 50.0
WALK_LIMIT = 1000
LATENCY_LIMIT = 100
WARMUP_REQUESTS = 50
POLL_INTERVAL = 0.1


# --------------------------------------------------------------------------- processes


def all_processes_cpu() -> dict[int, tuple[str, float]]:
    """Every process's (short command line, CPU seconds so far)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            seconds = proc_cpu_seconds(int(entry.name))
        except OSError:
            continue
        found[int(entry.name)] = (cmdline.strip()[:70] or "[kernel thread]", seconds)
    return found


@contextlib.contextmanager
def relay(path: Path, port: int, rate: float) -> Iterator[tuple[str, int]]:
    """``python -m skywire_trio replay`` on ``port``; yields its ws:// URL and pid."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "skywire_trio", "replay", str(path), "--port", str(port),
         "--rate", str(rate)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("ws://"):
            raise RuntimeError(f"replay server did not start: {url!r}")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def create_token(env: dict[str, str]) -> str:
    """A fresh unscoped API token allowing 100,000 requests/s."""
    return subprocess.run(
        [sys.executable, "-m", "skywire_trio", "tokens", "create", "bench", "--rate-limit",
         "100000"], env=env, cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


class CursorSampler:
    """Polls ``firehose_cursor`` in a thread: (monotonic time, last_seq, last_id)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with psycopg.connect(self._url, autocommit=True) as conn:
            while not self._stop.is_set():
                row = conn.execute("SELECT last_seq, last_id FROM firehose_cursor").fetchone()
                if row is not None:
                    self.samples.append((time.monotonic(), row[0] or 0, row[1]))
                self._stop.wait(POLL_INTERVAL)

    def __enter__(self) -> CursorSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def last(self) -> tuple[int, int]:
        """The latest (last_seq, last_id)."""
        return self.samples[-1][1:] if self.samples else (0, 0)

    def rate(self, start: float, end: float) -> float:
        """Events/s committed between two monotonic times."""
        inside = [s for s in self.samples if start <= s[0] <= end]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            return 0.0
        return (inside[-1][2] - inside[0][2]) / (inside[-1][0] - inside[0][0])


# --------------------------------------------------------------------------- client


def client(base: str, token: str) -> httpx.Client:
    """One keep-alive HTTP/1.1 connection's worth of client."""
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                        timeout=30.0, limits=httpx.Limits(max_connections=1))


def tail_cursor(body: bytes) -> int:
    """The cursor of an /events body, read from its tail: ``...],"cursor":N}``."""
    return int(body[body.rindex(b":") + 1 : -1])


@dataclass
class Walk:
    """What one walker saw."""

    events: int = 0
    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def walk(base: str, token: str, head: int, parse: bool) -> Walk:
    """Page from since=0 to ``head`` with limit=1000; counts events from the cursors."""
    result = Walk()
    since = 0
    with client(base, token) as http:
        started = time.perf_counter()
        while since < head:
            response = http.get("/events", params={"since": since, "limit": WALK_LIMIT})
            body = response.content
            result.requests += 1
            result.bytes += len(body)
            if response.status_code != 200:
                result.errors.append(f"since={since}: {response.status_code} {body[:200]!r}")
                break
            expected = min(WALK_LIMIT, head - since) if since + WALK_LIMIT <= head else None
            if parse or since == 0 or expected is None:
                page = json.loads(body)
                cursor = page["cursor"]
                count = len(page["events"])
                ids_ok = [e["id"] for e in page["events"]] == list(range(since + 1, cursor + 1))
                if not ids_ok or (expected is not None and count != expected):
                    result.errors.append(f"since={since}: {count} events, ids ok {ids_ok}")
            else:
                cursor = tail_cursor(body)
                if cursor != since + WALK_LIMIT:
                    result.errors.append(f"since={since}: cursor {cursor}")
            if cursor <= since:
                result.errors.append(f"since={since}: cursor did not advance")
                break
            result.events += min(cursor, head) - since
            since = cursor
        result.seconds = time.perf_counter() - started
    return result


def walkers(base: str, token: str, head: int, count: int, parse: bool) -> tuple[float, list[Walk]]:
    """``count`` concurrent walkers over ids 1..head; (wall seconds, their results)."""
    results: list[Walk] = [Walk() for _ in range(count)]

    def run(i: int) -> None:
        results[i] = walk(base, token, head, parse)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, results


@dataclass
class Latency:
    """Sequential limit=100 requests at random positions."""

    millis: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def percentile(self, p: float) -> float:
        """Nearest-rank percentile in ms."""
        ordered = sorted(self.millis)
        if not ordered:
            return float("nan")
        rank = max(1, min(len(ordered), int(p / 100 * len(ordered) + 0.999999)))
        return ordered[rank - 1]


def latency(base: str, token: str, head: int, requests: int, seed: int) -> Latency:
    """``requests`` sequential limit=100 requests with since uniform in 0..head-100."""
    rng = random.Random(seed)
    result = Latency()
    with client(base, token) as http:
        for _ in range(WARMUP_REQUESTS):
            http.get("/events", params={"since": rng.randint(0, head - LATENCY_LIMIT),
                                        "limit": LATENCY_LIMIT}).read()
        started = time.perf_counter()
        for _ in range(requests):
            since = rng.randint(0, head - LATENCY_LIMIT)
            t0 = time.perf_counter()
            response = http.get("/events", params={"since": since, "limit": LATENCY_LIMIT})
            body = response.content
            result.millis.append((time.perf_counter() - t0) * 1000)
            if response.status_code != 200 or tail_cursor(body) != since + LATENCY_LIMIT:
                result.errors.append(f"since={since}: {response.status_code} {body[-80:]!r}")
        result.seconds = time.perf_counter() - started
    return result


# --------------------------------------------------------------------------- phases


@dataclass
class Cpu:
    """CPU seconds used over a phase."""

    wall: float
    service: float
    postgres: float
    relay: float
    client: float
    machine: float
    top_others: list[tuple[str, float]] = field(default_factory=list)  # busiest other pids

    @property
    def other(self) -> float:
        """CPU seconds of everything else on the machine (other work, PostgreSQL's own)."""
        return max(0.0, self.machine - self.service - self.postgres - self.relay - self.client)

    def describe(self) -> str:
        """One line: each party's share of a core, and the machine's."""
        def share(seconds: float) -> str:
            return f"{seconds:.1f}s ({seconds / self.wall:.0%} of a core)"

        cores = os.cpu_count() or 1
        return (f"over {self.wall:.1f}s: service {share(self.service)}, PostgreSQL backends "
                f"{share(self.postgres)}, relay {share(self.relay)}, client (this script) "
                f"{share(self.client)}, everything else {share(self.other)}; machine "
                f"{self.machine / (cores * self.wall):.0%} busy ({cores} cores)")

    def describe_others(self) -> str:
        """The busiest other processes."""
        return "; ".join(f"{seconds:.1f}s {name}" for name, seconds in self.top_others)


@dataclass
class Procs:
    """The processes whose CPU is accounted: the service, the relay, our backends."""

    service: int
    relay: int
    backends: Callable[[], list[int]]


@contextlib.contextmanager
def cpu_meter(procs: Procs, out: list[Cpu]) -> Iterator[None]:
    """Measure CPU seconds of the service, our database's backends, the relay, this
    process and the whole machine over the block; appends a ``Cpu`` to ``out``."""
    pids = procs.backends()
    relay_pid = procs.relay
    everyone0 = all_processes_cpu()
    t0 = time.perf_counter()
    s0, r0 = proc_cpu_seconds(procs.service), proc_cpu_seconds(relay_pid)
    m0, c0 = machine_busy_seconds(), time.process_time()
    p0 = {pid: proc_cpu_seconds(pid) for pid in pids}
    yield
    wall = time.perf_counter() - t0
    client = time.process_time() - c0
    machine = machine_busy_seconds() - m0
    service = proc_cpu_seconds(procs.service) - s0
    pg = sum(max(0.0, proc_cpu_seconds(pid) - p0[pid]) for pid in pids)
    now_backends = procs.backends()
    pg += sum(proc_cpu_seconds(pid) for pid in now_backends if pid not in p0)
    relay_cpu = max(0.0, proc_cpu_seconds(relay_pid) - r0) if relay_pid else 0.0
    ours = {os.getpid(), procs.service, relay_pid, *pids, *now_backends}
    others = [(name, seconds - everyone0.get(pid, (name, 0.0))[1])
              for pid, (name, seconds) in all_processes_cpu().items() if pid not in ours]
    top = sorted((o for o in others if o[1] > 0.05 * wall), key=lambda o: -o[1])[:4]
    out.append(Cpu(wall, service, pg, relay_cpu, client, machine, top))


@dataclass
class Phase:
    """One set of measurements and its conditions."""

    name: str
    head: int = 0  # events in the log when it started (the walked range)
    one: Walk = field(default_factory=Walk)
    two_seconds: float = 0.0
    two: list[Walk] = field(default_factory=list)
    lat: Latency = field(default_factory=Latency)
    ingest: dict[str, float] = field(default_factory=dict)  # sub-phase -> events/s
    cpu: dict[str, Cpu] = field(default_factory=dict)

    @property
    def one_eps(self) -> float:
        """Events/s of the lone walker."""
        return self.one.events / self.one.seconds if self.one.seconds else 0.0

    @property
    def two_eps(self) -> float:
        """Events/s served to both walkers together."""
        return sum(w.events for w in self.two) / self.two_seconds if self.two_seconds else 0.0

    @property
    def errors(self) -> list[str]:
        """Every unexpected answer."""
        return self.one.errors + [e for w in self.two for e in w.errors] + self.lat.errors


def measure(name: str, base: str, token: str, sampler: CursorSampler, procs: Procs,
            requests: int, args: argparse.Namespace) -> Phase:
    """Walk with one and two walkers, then the latency run; ingest rate and CPU for each."""
    phase = Phase(name, head=sampler.last()[1])
    print(f"[{name}] log head id {phase.head:,}", flush=True)
    cpus: list[Cpu] = []
    # Warm the service's pool (opened lazily, up to 4 connections) and the caches.
    walkers(base, token, min(phase.head, 20 * WALK_LIMIT), 4, False)

    t0 = time.monotonic()
    with cpu_meter(procs, cpus):
        phase.one = walk(base, token, phase.head, args.parse)
    phase.ingest["walk x1"] = sampler.rate(t0, time.monotonic())
    phase.cpu["walk x1"] = cpus[-1]
    print(f"[{name}] 1 walker: {phase.one_eps:,.0f} events/s", flush=True)

    t0 = time.monotonic()
    with cpu_meter(procs, cpus):
        phase.two_seconds, phase.two = walkers(base, token, phase.head, 2, args.parse)
    phase.ingest["walk x2"] = sampler.rate(t0, time.monotonic())
    phase.cpu["walk x2"] = cpus[-1]
    print(f"[{name}] 2 walkers: {phase.two_eps:,.0f} events/s", flush=True)

    t0 = time.monotonic()
    with cpu_meter(procs, cpus):
        phase.lat = latency(base, token, phase.head, requests, args.seed)
    phase.ingest["latency"] = sampler.rate(t0, time.monotonic())
    phase.cpu["latency"] = cpus[-1]
    print(f"[{name}] {requests} x limit=100: p50 {phase.lat.percentile(50):.1f} ms, "
          f"p99 {phase.lat.percentile(99):.1f} ms", flush=True)
    return phase


# --------------------------------------------------------------------------- SQL


def sql_costs(url: str, head: int) -> list[str]:
    """Server-side time of the API's own query (``_event_query``) vs the same rows unrendered.

    Median of 7 ``EXPLAIN (ANALYZE)`` runs each, since = head / 2. The comparison selects
    ``id, record::text`` (the stored record, serialised), so the difference is what building
    each event's JSON object in PostgreSQL costs on top of reading and serialising the rows.
    """
    from skywire_trio.log.reader import event_query as _event_query
    from skywire_trio.types import EventFilter

    lines = []
    with psycopg.connect(url, autocommit=True) as conn:
        for limit in (WALK_LIMIT, LATENCY_LIMIT):
            api_sql, _ = _event_query(EventFilter(since=head // 2, limit=limit))
            plain_sql = ("SELECT id, record::text FROM firehose_events WHERE id > $1 "
                         "ORDER BY id LIMIT $2")
            timings = {}
            for label, text in (("API query", api_sql), ("same rows, no JSON", plain_sql)):
                literal = text.replace("$1", str(head // 2)).replace("$2", str(limit))
                runs = []
                for _ in range(7):
                    plan = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + literal).fetchone()
                    assert plan is not None
                    runs.append(float(plan[0][0]["Execution Time"]))
                timings[label] = sorted(runs)[3]
            lines.append(f"PostgreSQL execution, limit={limit}: API query "
                         f"{timings['API query']:.1f} ms; the same rows' stored record as text, "
                         f"without building the event JSON: {timings['same rows, no JSON']:.1f} "
                         "ms (EXPLAIN ANALYZE, median of 7)")
    return lines


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned columns."""
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(width[i]) for i, c in enumerate(r)).rstrip()
                     for r in rows)


def report(phases: Sequence[Phase], conditions: Sequence[str]) -> None:
    """Print the figures, one column per phase; targets judged on the first (ingesting)."""
    live = phases[0]
    best_walk = max(live.one_eps, live.two_eps)
    p99 = live.lat.percentile(99)
    rows: list[list[str]] = [["", *(p.name for p in phases), "target (judged while ingesting)"]]

    def row(label: str, values: Sequence[str], target: str = "") -> None:
        rows.append([label, *values, target])

    def per_k(seconds: float, events: int) -> str:
        return f"{1e6 * seconds / max(1, events):.1f} ms"

    row("events in the log (walked range)", [f"{p.head:,}" for p in phases])
    row("limit=1000, 1 walker", [f"{p.one_eps:,.0f} events/s" for p in phases],
        f">= {WALK_TARGET_EPS:,}/s (best of 1 or 2 walkers): "
        f"{verdict(best_walk >= WALK_TARGET_EPS)}")
    row("  requests/s, MB/s", [f"{p.one.requests / p.one.seconds:,.1f} req/s, "
                               f"{p.one.bytes / p.one.seconds / 1e6:,.1f} MB/s"
                               for p in phases])
    row("  service CPU per 1000 events (API+ingest)", [per_k(p.cpu["walk x1"].service, p.one.events)
                                               for p in phases])
    row("  PostgreSQL CPU per 1000 events", [per_k(p.cpu["walk x1"].postgres, p.one.events)
                                                  for p in phases])
    row("  ingest meanwhile", [f"{p.ingest['walk x1']:,.0f} events/s" for p in phases])
    row("limit=1000, 2 walkers, total", [f"{p.two_eps:,.0f} events/s" for p in phases])
    row("  ingest meanwhile", [f"{p.ingest['walk x2']:,.0f} events/s" for p in phases])
    row("limit=100 requests (sequential)", [f"{len(p.lat.millis):,}" for p in phases])
    for q in (50, 90, 99):
        row(f"  p{q}", [f"{p.lat.percentile(q):.1f} ms" for p in phases],
            f"p99 < {P99_TARGET_MS:.0f} ms: {verdict(p99 < P99_TARGET_MS)}" if q == 99 else "")
    row("  max", [f"{max(p.lat.millis, default=float('nan')):.1f} ms" for p in phases])
    row("  mean, requests/s",
        [f"{sum(p.lat.millis) / max(1, len(p.lat.millis)):.1f} ms, "
         f"{len(p.lat.millis) / p.lat.seconds:,.0f} req/s" for p in phases])
    row("  service CPU per request (API+ingest)",
        [f"{1000 * p.cpu['latency'].service / max(1, len(p.lat.millis)):.1f} ms"
         for p in phases])
    row("  PostgreSQL CPU per request",
        [f"{1000 * p.cpu['latency'].postgres / max(1, len(p.lat.millis)):.1f} ms"
         for p in phases])
    row("  ingest meanwhile", [f"{p.ingest['latency']:,.0f} events/s" for p in phases])
    print()
    print(table(rows))
    print()
    print("conditions:")
    for line in conditions:
        print(f"  {line}")
    cores = os.cpu_count() or 1
    for p in phases:
        for sub, cpu in p.cpu.items():
            print(f"  CPU [{p.name}] {sub} {cpu.describe()}")
            if cpu.other > 0.25 * cores * cpu.wall:
                print("    WARNING: other work used over a quarter of the machine during this "
                      "measurement; the figures are pessimistic. Busiest other processes: "
                      + (cpu.describe_others() or "none visible (kernel, short-lived ones)"))


def main(argv: Sequence[str] | None = None) -> int:
    """Fill the log, switch to a steady live stream, measure, print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--fill-frames", type=int, default=60_000,
                        help="frames ingested before measuring (as fast as possible)")
    parser.add_argument("--live-rate", type=float, default=1000.0,
                        help="frames/s asked of the live relay during the measurements (its "
                             "pacing undershoots: ~1000 gives ~500 events/s; the committed "
                             "rate is measured and reported)")
    parser.add_argument("--live-frames", type=int, default=60_000,
                        help="frames of the live stream (lasts live-frames/live-rate s)")
    parser.add_argument("--requests", type=int, default=2000,
                        help="limit=100 requests in the latency run while ingesting")
    parser.add_argument("--idle-requests", type=int, default=500,
                        help="limit=100 requests in the comparison run without ingestion")
    parser.add_argument("--seed", type=int, default=1, help="random since positions")
    parser.add_argument("--parse", action="store_true",
                        help="json.loads every walked page (client CPU)")
    parser.add_argument("--no-idle", action="store_true",
                        help="skip the comparison run with ingestion stopped")
    parser.add_argument("--wait-quiet", type=float, default=10.0,
                        help="seconds to wait for an idle machine before starting")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the fill to be committed")
    args = parser.parse_args(argv)

    now = datetime.datetime.now().astimezone()
    pg_version = query("postgresql://postgres@127.0.0.1:5432/postgres", "SHOW server_version")
    print(f"skywire-trio API benchmark, {now:%Y-%m-%d %H:%M %Z}; {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, PostgreSQL {pg_version[0][0]} on this machine")

    started = time.perf_counter()
    frames = renumbered(relay_frames(), args.fill_frames + args.live_frames)
    with tempfile.TemporaryDirectory(prefix="skywire-bench-api-") as tmp:
        workdir = Path(tmp)
        fill_path, live_path = workdir / "fill.bin", workdir / "live.bin"
        write_frames(fill_path, frames[: args.fill_frames])
        write_frames(live_path, frames[args.fill_frames :])
        del frames
        print(f"recordings: {args.fill_frames:,} fill + {args.live_frames:,} live frames "
              f"built in {time.perf_counter() - started:.1f}s", flush=True)
        quiet = wait_until_quiet(args.wait_quiet)
        print(f"machine before starting: {quiet}", flush=True)
        port = free_port()
        phases: list[Phase] = []
        ok = True
        live_left = 0
        with fresh_database() as url:
            env = service_env(url, f"ws://127.0.0.1:{port}", workdir)
            token = create_token(env)
            base = f"http://127.0.0.1:{env['PORT']}"
            service = start_service(env, workdir / "service.log")

            def backends() -> list[int]:
                return [pid for (pid,) in query(
                    url, "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                    " AND pid <> pg_backend_pid()")]

            procs = Procs(service.pid, 0, backends)
            try:
                with CursorSampler(url) as sampler:
                    t_fill = time.monotonic()
                    with relay(fill_path, port, 0):
                        filled = wait_for(lambda: sampler.last()[0] >= args.fill_frames,
                                          args.timeout, 0.1)
                        if not filled:
                            raise RuntimeError(f"fill not committed in {args.timeout:.0f}s: "
                                               f"cursor {sampler.last()}")
                    fill_seconds = time.monotonic() - t_fill
                    fill_events = sampler.last()[1]
                    print(f"fill: {args.fill_frames:,} frames / {fill_events:,} events "
                          f"committed {fill_seconds:.1f}s after the service started",
                          flush=True)
                    with relay(live_path, port, args.live_rate) as (_, relay_pid):
                        procs.relay = relay_pid
                        resumed = wait_for(lambda: sampler.last()[0] > args.fill_frames + 100,
                                           30, 0.1)
                        if not resumed:
                            raise RuntimeError("ingestion did not resume on the live relay")
                        time.sleep(2.0)  # steady state
                        t_live = time.monotonic()
                        phases.append(measure("ingesting", base, token, sampler, procs,
                                              args.requests, args))
                        live_seconds = time.monotonic() - t_live
                        live_rate = sampler.rate(t_live, time.monotonic())
                        live_left = args.fill_frames + args.live_frames - sampler.last()[0]
                    procs.relay = 0
                    if live_left <= 0:
                        print("WARNING: the live stream ran out during the measurements; "
                              "raise --live-frames")
                        ok = False
                    if not args.no_idle:
                        time.sleep(1.0)  # the last batch commits
                        phases.append(measure("idle (no ingest)", base, token, sampler, procs,
                                              args.idle_requests, args))
                    sql_lines = sql_costs(url, sampler.last()[1])
            finally:
                service.send_signal(signal.SIGTERM)
                try:
                    exit_code = service.wait(30)
                except subprocess.TimeoutExpired:
                    service.kill()
                    exit_code = service.wait()
            events = query(url, "SELECT count(*) FROM firehose_events")[0][0]
            size = query(url, "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                         "WHERE inhparent = 'firehose_events'::regclass")[0][0]
    walk_client = "json.loads of every page" if args.parse else "cursor from the body tail"
    conditions = [
        f"fill: {args.fill_frames:,} frames ({fill_events:,} events) ingested as fast as "
        f"possible, {fill_seconds:.1f}s from service start to the last seq committed",
        f"then a live relay on the same URL at --rate {args.live_rate:g} frames/s: "
        f"{live_rate:,.0f} events/s actually committed over the {live_seconds:.0f}s of the "
        "'ingesting' measurements",
        f"walked/sampled range: ids 1..head at the start of each phase (head in the table); "
        f"{events:,} events in the log at the end, {int(size or 0) / 1e6:,.0f} MB "
        "(tables + indexes, all in cache)",
        "service: default settings (SKYWIRE_API_POOL_SIZE=4, batch 500 / 0.1 s), hypercorn "
        "(one process, one trio thread shared with ingestion), HTTP/1.1 keep-alive",
        f"client: httpx on the same machine; walk client: {walk_client}; limit=100 run: "
        f"sequential requests after {WARMUP_REQUESTS} warm-up ones, since uniform over the "
        f"range (seed {args.seed}), wall time per request including reading the body",
        f"machine before starting: {quiet}",
        *sql_lines,
        f"service exit code on SIGTERM: {exit_code}",
    ]
    report(phases, conditions)
    errors = [e for p in phases for e in p.errors]
    if errors:
        print(f"{len(errors)} unexpected answers, first: {errors[:3]}")
    ok = ok and not errors and exit_code == 0
    print(f"total runtime {time.perf_counter() - started:.0f}s; run valid: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
