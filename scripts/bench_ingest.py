"""Ingest benchmark: decoder throughput and end-to-end firehose -> PostgreSQL throughput.

Run from the repository root::

    .venv/bin/python scripts/bench_ingest.py [--frames N] [--kinds pds,relay] [--ceiling]

What it measures, over N frames (default 100,000) built by cycling the 150 production relay
frames with fresh contiguous seqs (``tests.support.renumbered``):

1. Our decoder (``skywire_trio.firehose.codec.decode_frame``) alone, pinned to one core.
2. The ``atproto`` SDK's own firehose decoding of the same frames, pinned to the same core:
   ``firehose_models.Frame.from_bytes`` + ``parse_subscribe_repos_message`` +
   ``CAR.from_bytes`` (which decodes every block with libipld) + a look-up of each op's
   record in ``car.blocks``; and, with ``--sdk-models``, the same plus
   ``models.get_or_create(record, strict=False)`` (the SDK's typed record models, as in its
   firehose examples). Decode only, no storage. The loop is timed warm, in this process;
   the wall time a fresh interpreter takes to import the SDK is measured apart (median of
   3), so that it can be counted from its start as the service is.
3. With ``--ceiling``, the harness's ceiling: the replay server feeding the receiver's
   websocket client that only receives -- no pipe, no decode, no database. End to end
   cannot beat this.
4. End to end: a fresh migrated database, ``python -m skywire_trio replay`` serving the
   recording, and ``python -m skywire_trio`` (the service, a real process) ingesting it; timed
   from the service's start until ``firehose_cursor.last_seq`` reaches the last seq. The
   cursor is polled every 20 ms, which also gives the time of the first commit (startup:
   interpreter, imports, migrations, connecting) and the steady-state rate after it. Peak
   RSS is the service's ``VmHWM`` plus that of its receiver process (the websocket),
   read just before the service is stopped with SIGTERM (it must exit 0). The log is then
   checked: one row per expected event, ids 1..count without a gap.

The machine is shared, so each phase first waits (``--wait-quiet``, default 30 s) for the
CPUs to be idle, and every phase reports how many cores *other* processes used while it
ran; the end-to-end line splits CPU seconds between the service, the replay server, the
PostgreSQL backends of the benchmark database and everything else. A run with other load
prints a warning: its figures are pessimistic.

Each of these runs on two kinds of frames (``--kinds``, both by default), each recording
``--frames`` long: the production relay frames above, and the 359 frames captured from the
reference PDS (``tests.support.pds_frames``), renumbered the same way. A summary compares,
per kind, the SDK's decode-only frames/s with ours committed.

Targets (reported, not enforced): decode >= 20,000 frames/s on one core; end to end >= 15,000
events/s committed; committed frames/s >= 1.2x the SDK's decode-only frames/s (floor 1.0x) on
both kinds; service RSS < 150 MB. The ratio is printed three ways (``RATIO_KINDS``): both
warm (ours after the first commit, the SDK's timed loop), both from a cold start (ours from
the service's start, the SDK's loop plus its imports), and ours from a cold start against
the SDK's warm loop, the strictest. The exit status is 0 when the run is *valid* (every event
committed and verified), whether or not the targets are met.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import psycopg  # noqa: E402
from benchlib import machine_busy_seconds, proc_cpu_seconds, wait_until_quiet  # noqa: E402

from skywire_trio.firehose.codec import decode_frame  # noqa: E402
from skywire_trio.firehose.framefile import write_frames  # noqa: E402
from tests.support import (  # noqa: E402
    child_processes,
    fresh_database,
    pds_frames,
    query,
    relay_frames,
    renumbered,
    replay_process,
    service_env,
    start_service,
)

DECODE_TARGET_FPS = 20_000
E2E_TARGET_EPS = 15_000
RSS_TARGET_MB = 150
RATIO_TARGET, RATIO_FLOOR = 1.2, 1.0
# The three ways to compare, in the order of KindResult.ratios (docs/performance.md).
RATIO_KINDS = (
    ("steady", "ours after the first commit / the SDK's warm loop"),
    ("cold", "ours from the service's start / the SDK from its interpreter's start"),
    ("cold/warm", "ours from the service's start / the SDK's warm loop"),
)
POLL_INTERVAL = 0.02
T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


@contextmanager
def pinned_to_one_core() -> Iterator[int]:
    """Pin this process to one CPU for the block (children must not inherit it)."""
    before = os.sched_getaffinity(0)
    cpu = max(before)
    os.sched_setaffinity(0, {cpu})
    try:
        yield cpu
    finally:
        os.sched_setaffinity(0, before)


def timed(run: Callable[..., T], *args: object) -> tuple[float, T]:
    """Seconds taken by ``run(*args)`` and what it returned."""
    started = time.perf_counter()
    result = run(*args)
    return time.perf_counter() - started, result


class LoadMeter:
    """CPU that *other* processes used while a phase ran, in cores (0.0 on a quiet machine).

    Everything busy on the machine minus this process (and any pids given to ``stop``).
    """

    def __init__(self) -> None:
        self._busy = machine_busy_seconds()
        self._own = time.process_time()
        self._wall = time.perf_counter()

    def stop(self, accounted_cpu: float = 0.0) -> float:
        """Other processes' cores, averaged over the phase; ``accounted_cpu`` is ours too."""
        busy = machine_busy_seconds()
        wall = max(1e-9, time.perf_counter() - self._wall)
        own = time.process_time() - self._own + accounted_cpu
        return max(0.0, busy - self._busy - own) / wall


def timed_with_load(run: Callable[..., T], *args: object) -> tuple[float, T, float]:
    """Like ``timed``, plus the cores other processes used meanwhile."""
    meter = LoadMeter()
    seconds, result = timed(run, *args)
    return seconds, result, meter.stop()


def proc_status(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmHWM, VmRSS), in kB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def source_state() -> str:
    """The commit measured, and whether the package had uncommitted changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "skywire_trio"],
                               cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"{head}" + (" + uncommitted changes in skywire_trio/" if dirty.strip() else "")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------- decoders


def decode_ours(frames: Sequence[bytes]) -> int:
    """Decode every frame with our decoder; returns the number of rows (events)."""
    events = 0
    for frame in frames:
        events += len(decode_frame(frame).rows)
    return events


def make_sdk_decoder(with_models: bool) -> Callable[[Sequence[bytes]], int]:
    """The atproto SDK's firehose decoding; returns a function counting decoded ops."""
    from atproto import CAR, firehose_models, models, parse_subscribe_repos_message

    commit_model = models.ComAtprotoSyncSubscribeRepos.Commit
    get_or_create = models.get_or_create

    def decode(frames: Sequence[bytes]) -> int:
        ops = 0
        for frame in frames:
            message = parse_subscribe_repos_message(firehose_models.Frame.from_bytes(frame))
            if not isinstance(message, commit_model):
                ops += 1
                continue
            car = CAR.from_bytes(message.blocks)
            for op in message.ops:
                ops += 1
                if op.cid is None:
                    continue
                record = car.blocks.get(op.cid)
                if with_models and record is not None:
                    get_or_create(record, strict=False)
        return ops

    return decode


SDK_IMPORTS = "from atproto import CAR, firehose_models, models, parse_subscribe_repos_message"


def sdk_start_seconds(runs: int = 3) -> float:
    """Wall seconds for a fresh interpreter to import what ``make_sdk_decoder`` uses (the
    median of ``runs``): the SDK's own start, which its warm decode loop leaves out."""
    walls = []
    for _ in range(runs):
        wall, _ = timed(lambda: subprocess.run([sys.executable, "-c", SDK_IMPORTS], check=True))
        walls.append(wall)
    return sorted(walls)[len(walls) // 2]


# --------------------------------------------------------------------------- end to end


def websocket_ceiling(recording: Path, frames: int) -> tuple[float, float, float, float]:
    """Frames/s the replay server delivers to a client that only receives (no decode, no DB).

    The client is the receiver's own websocket client (``firehose.wsclient``) with its
    settings, so this is the most the end-to-end figure can reach with this harness. Returns
    frames/s, the client's and the replay server's CPU seconds, and the cores other
    processes used meanwhile.
    """
    import trio

    from skywire_trio.firehose import receiver, wsclient

    async def receive_all(url: str) -> float:
        ws = await wsclient.connect(url, max_message=receiver.WEBSOCKET_MAX_MESSAGE,
                                    receive_bytes=receiver.RECEIVE_BUFFER)
        started = time.perf_counter()
        received = 0
        while received < frames:
            received += len(await ws.receive())
        seconds = time.perf_counter() - started
        await ws.aclose()
        return seconds

    with replay_process(recording) as relay_url:
        pids = child_processes(os.getpid(), "replay")
        cpu0 = sum(proc_cpu_seconds(p) for p in pids)
        meter, client0 = LoadMeter(), time.process_time()
        seconds = trio.run(receive_all, relay_url + "/xrpc/com.atproto.sync.subscribeRepos")
        client = time.process_time() - client0
        cpu = sum(proc_cpu_seconds(p) for p in pids) - cpu0
        load = meter.stop(cpu)
    return frames / seconds, client, cpu, load


@dataclass
class EndToEnd:
    """What the end-to-end run observed."""

    seconds: float = 0.0  # service start -> last seq committed
    first_commit: float | None = None  # service start -> first commit seen
    events_at_first_commit: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (t, last_id)
    peak_rss_kb: int | None = None  # the service process and its receiver process, summed
    receiver_rss_kb: int | None = None
    service_cpu: float | None = None  # CPU seconds over the run, per process group
    receiver_cpu: float | None = None  # the service's websocket process
    replay_cpu: float | None = None
    postgres_cpu: float | None = None  # the backends serving the benchmark database
    machine_cpu: float | None = None  # all CPUs, everything running on the machine
    bench_cpu: float | None = None  # this script (polling the cursor)
    exit_code: int | None = None
    rows: int = 0
    ids_ok: bool = False
    deadletters: int = 0
    restarts: int = 0
    completed: bool = False
    log_tail: str = ""


def run_end_to_end(recording: Path, last_seq: int, events: int, timeout: float,
                   workdir: Path) -> EndToEnd:
    """Replay ``recording`` into a fresh database through the real service process."""
    result = EndToEnd()
    log_path = workdir / "service.log"
    with fresh_database() as url, replay_process(recording) as relay_url:
        replay_pids = child_processes(os.getpid(), "replay")
        env = service_env(url, relay_url, workdir)
        replay_cpu0 = sum(proc_cpu_seconds(p) for p in replay_pids)
        busy0 = machine_busy_seconds()
        bench0 = time.process_time()
        started = time.perf_counter()
        service = start_service(env, log_path)
        try:
            with psycopg.connect(url, autocommit=True) as conn:
                backends: set[int] = set()
                receivers: set[int] = set()
                deadline = started + timeout
                while time.perf_counter() < deadline:
                    if service.poll() is not None:
                        break
                    row = conn.execute(
                        "SELECT last_seq, last_id FROM firehose_cursor").fetchone()
                    if len(result.samples) % 25 == 0:
                        receivers.update(child_processes(service.pid, "receiver"))
                        backends.update(pid for (pid,) in conn.execute(
                            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                            " AND pid <> pg_backend_pid()").fetchall())
                    now = time.perf_counter() - started
                    if row is not None and row[1]:
                        result.samples.append((now, row[1]))
                        if result.first_commit is None:
                            result.first_commit = now
                            result.events_at_first_commit = row[1]
                        if row[0] == last_seq:
                            result.seconds = now
                            result.completed = True
                            break
                    time.sleep(POLL_INTERVAL)
                busy1 = machine_busy_seconds()
                result.bench_cpu = time.process_time() - bench0
                result.machine_cpu = busy1 - busy0
                receivers.update(child_processes(service.pid, "receiver"))
                result.receiver_rss_kb = max((proc_status(p, "VmHWM") or 0 for p in receivers),
                                             default=0)
                result.peak_rss_kb = (proc_status(service.pid, "VmHWM") or 0) + \
                    result.receiver_rss_kb
                result.service_cpu = proc_cpu_seconds(service.pid)
                result.receiver_cpu = sum(proc_cpu_seconds(p) for p in receivers)
                result.replay_cpu = sum(proc_cpu_seconds(p)
                                        for p in replay_pids) - replay_cpu0
                result.postgres_cpu = sum(proc_cpu_seconds(p) for p in backends)
        finally:
            if service.poll() is None:
                service.send_signal(signal.SIGTERM)
                try:
                    result.exit_code = service.wait(30)
                except subprocess.TimeoutExpired:
                    service.kill()
                    result.exit_code = service.wait()
            else:
                result.exit_code = service.returncode
        count, low, high, distinct = query(
            url, "SELECT count(*), min(id), max(id), count(DISTINCT id) FROM firehose_events")[0]
        result.rows = count
        result.ids_ok = count == events and low == 1 and high == count and distinct == count
    deadletter = workdir / "deadletter"
    result.deadletters = len(list(deadletter.glob("*.bin"))) if deadletter.exists() else 0
    log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
    result.restarts = log_text.count("ingest stopped")
    result.log_tail = log_text[-2000:]
    return result


# --------------------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    """PASS or MISS."""
    return "PASS" if ok else "MISS"


@dataclass
class KindResult:
    """One kind of frames, measured: decoders and end to end."""

    kind: str
    frames: int
    events: int
    ours_fps: float
    sdk_fps: float
    sdk_start: float  # seconds for a fresh interpreter to import the SDK
    models_fps: float | None
    ceiling_fps: float | None
    e2e: EndToEnd
    valid: bool

    @property
    def e2e_fps(self) -> float:
        """Frames committed per second, service start to last seq."""
        return self.frames / self.e2e.seconds if self.e2e.seconds else float("nan")

    @property
    def sdk_cold_fps(self) -> float:
        """The SDK's frames/s counted from its interpreter's start, as ``e2e_fps`` is."""
        return self.frames / (self.frames / self.sdk_fps + self.sdk_start)

    @property
    def ratios(self) -> tuple[float, float, float]:
        """Ours / the SDK's: steady state (both warm), both from a cold start, and ours from
        a cold start against the SDK's warm loop (the strictest of the three)."""
        return (self.steady_fps / self.sdk_fps, self.e2e_fps / self.sdk_cold_fps,
                self.e2e_fps / self.sdk_fps)

    @property
    def steady_fps(self) -> float:
        """Frames committed per second after the first commit."""
        e2e = self.e2e
        if e2e.first_commit is None or not e2e.completed or e2e.seconds <= e2e.first_commit:
            return float("nan")
        span = e2e.seconds - e2e.first_commit
        return (self.events - e2e.events_at_first_commit) / span * self.frames / self.events


BASES: dict[str, tuple[str, Callable[[], list[bytes]]]] = {
    "relay": ("production relay frames (150, 5.4 KB on average)", relay_frames),
    "pds": ("reference-PDS frames (the 359 of the local capture)", pds_frames),
}


def measure_kind(kind: str, args: argparse.Namespace) -> KindResult:
    """Build ``args.frames`` frames of ``kind``, then run every measurement on them."""
    title, base = BASES[kind]
    print(f"\n=== {title} ===")
    build_s, frames = timed(renumbered, base(), args.frames)
    with tempfile.TemporaryDirectory(prefix="skywire-bench-") as tmp:
        workdir = Path(tmp)
        recording = workdir / "recording.bin"
        write_frames(recording, frames)
        size_mb = recording.stat().st_size / 1e6
        decoded = [decode_frame(f) for f in frames]
        events = sum(len(d.rows) for d in decoded)
        kinds: dict[str, int] = {}
        for d in decoded:
            kinds[d.kind] = kinds.get(d.kind, 0) + 1
        last_seq = max(d.seq for d in decoded if d.seq is not None)
        del decoded
        print(f"recording: {len(frames):,} frames ({size_mb:,.0f} MB, built in {build_s:.1f}s), "
              f"{events:,} events, seqs 1..{last_seq:,}; kinds: "
              + ", ".join(f"{k} {v:,}" for k, v in sorted(kinds.items())))

        # Decoders, one core each (same core, one after the other).
        print(f"machine before decoding: {wait_until_quiet(args.wait_quiet)}")
        with pinned_to_one_core() as cpu:
            decode_ours(frames[:2000])  # warm-up
            ours_s, ours_events, ours_load = timed_with_load(decode_ours, frames)
            assert ours_events == events, (ours_events, events)
            sdk = make_sdk_decoder(with_models=False)
            sdk(frames[:2000])
            sdk_s, sdk_ops, sdk_load = timed_with_load(sdk, frames)
            sdk_start = sdk_start_seconds()
            models_s: float | None = None
            models_load = 0.0
            if args.sdk_models:
                sdk_models = make_sdk_decoder(with_models=True)
                sdk_models(frames[:2000])
                models_s, _, models_load = timed_with_load(sdk_models, frames)
        n_frames = len(frames)
        print(f"decoders pinned to CPU {cpu}; SDK saw {sdk_ops:,} ops/events, and a fresh "
              f"interpreter took {sdk_start:.2f}s to import it; other processes "
              f"used {ours_load:.2f} / {sdk_load:.2f} / {models_load:.2f} cores meanwhile "
              "(ours / SDK / SDK + models)")
        del frames

        ceiling_fps: float | None = None
        if args.ceiling:
            print(f"machine before websocket ceiling: {wait_until_quiet(args.wait_quiet)}")
            ceiling_fps, client_cpu, replay_cpu, load = websocket_ceiling(recording, n_frames)
            print(f"replay server -> receive-only websocket client: {ceiling_fps:,.0f} "
                  f"frames/s (CPU seconds: client {client_cpu:.1f}, replay server "
                  f"{replay_cpu:.1f}; other processes used {load:.2f} cores)")
        print(f"machine before end to end: {wait_until_quiet(args.wait_quiet)}")
        e2e = run_end_to_end(recording, last_seq, events, args.timeout, workdir)

    result = KindResult(kind, n_frames, events, n_frames / ours_s, n_frames / sdk_s, sdk_start,
                        n_frames / models_s if models_s else None, ceiling_fps, e2e,
                        e2e.completed and e2e.exit_code == 0 and e2e.rows == events
                        and e2e.ids_ok)
    report_kind(result)
    return result


def report_kind(r: KindResult) -> None:
    """The table and the CPU split of one kind's run."""
    e2e = r.e2e
    if not e2e.completed:
        print(f"\nEND TO END DID NOT COMPLETE (last sample: "
              f"{e2e.samples[-1] if e2e.samples else None})")
        print("service log tail:\n" + e2e.log_tail)
    per_frame = r.events / r.frames
    rss_mb = (e2e.peak_rss_kb or 0) / 1024
    rows = [
        ("our decoder (1 core)", f"{r.ours_fps:,.0f} frames/s",
         f"{r.ours_fps * per_frame:,.0f} events/s",
         f">= {DECODE_TARGET_FPS:,} frames/s: {verdict(r.ours_fps >= DECODE_TARGET_FPS)}"),
        ("atproto SDK decode (1 core)", f"{r.sdk_fps:,.0f} frames/s",
         f"{r.sdk_fps * per_frame:,.0f} events/s", "Frame + parse + CAR + block look-up"),
        ("  from its start", f"{r.sdk_cold_fps:,.0f} frames/s",
         f"{r.sdk_cold_fps * per_frame:,.0f} events/s",
         f"+ {r.sdk_start:.2f}s for a fresh interpreter's imports"),
    ]
    if r.models_fps is not None:
        rows.append(("atproto SDK decode + models", f"{r.models_fps:,.0f} frames/s",
                     f"{r.models_fps * per_frame:,.0f} events/s",
                     "same + models.get_or_create(record)"))
    rows += [
        ("end to end, committed", f"{r.e2e_fps:,.0f} frames/s",
         f"{r.e2e_fps * per_frame:,.0f} events/s",
         f">= {E2E_TARGET_EPS:,} events/s: {verdict(r.e2e_fps * per_frame >= E2E_TARGET_EPS)}"),
        ("  after first commit", f"{r.steady_fps:,.0f} frames/s",
         f"{r.steady_fps * per_frame:,.0f} events/s",
         f"startup to first commit {e2e.first_commit or float('nan'):.2f}s"),
    ]
    if r.ceiling_fps is not None:
        rows.append(("  harness ceiling", f"{r.ceiling_fps:,.0f} frames/s",
                     f"{r.ceiling_fps * per_frame:,.0f} events/s",
                     "replay server -> receive-only client"))
    rows += [
        ("service peak RSS (VmHWM)", f"{rss_mb:,.0f} MB", "",
         f"< {RSS_TARGET_MB} MB: {verdict(0 < rss_mb < RSS_TARGET_MB)} (of which receiver "
         f"{(e2e.receiver_rss_kb or 0) / 1024:,.0f} MB)"),
        *[(f"ratio, {label}", f"{ratio:.2f}x", "",
           f">= {RATIO_TARGET}x: {verdict(ratio >= RATIO_TARGET)} (floor {RATIO_FLOOR}); "
           + how) for ratio, (label, how) in zip(r.ratios, RATIO_KINDS, strict=True)],
        ("ratio our / SDK decoder", f"{r.ours_fps / r.sdk_fps:.2f}x", "", ""),
    ]
    width = [max(len(row[i]) for row in rows) for i in range(4)]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width[i]) for i, cell in enumerate(row)).rstrip())
    print()
    print(f"end to end: {r.frames:,} frames / {r.events:,} events committed in "
          f"{e2e.seconds:.2f}s (service start -> last seq in the cursor); rows {e2e.rows:,}, ids "
          f"1..n gapless: {e2e.ids_ok}; service exit code on SIGTERM: {e2e.exit_code}; dead "
          f"letters: {e2e.deadletters}; ingest restarts: {e2e.restarts}")
    if e2e.service_cpu is not None and e2e.machine_cpu is not None and e2e.seconds:
        known = (e2e.service_cpu + (e2e.receiver_cpu or 0) + (e2e.replay_cpu or 0)
                 + (e2e.postgres_cpu or 0) + (e2e.bench_cpu or 0))
        other = max(0.0, e2e.machine_cpu - known)
        cores = os.cpu_count() or 1
        print(f"CPU seconds over the {e2e.seconds:.1f}s run: service {e2e.service_cpu:.1f} "
              f"({e2e.service_cpu / e2e.seconds:.0%} of one core) + its receiver process "
              f"{e2e.receiver_cpu or 0:.1f} ({(e2e.receiver_cpu or 0) / e2e.seconds:.0%}), "
              "replay server "
              f"{e2e.replay_cpu or 0:.1f}, PostgreSQL backends {e2e.postgres_cpu or 0:.1f}, "
              f"this script {e2e.bench_cpu or 0:.1f}; whole machine {e2e.machine_cpu:.1f} of "
              f"{cores * e2e.seconds:.1f} available, of which {other:.1f} by other processes "
              f"(PostgreSQL WAL writer/checkpointer, anything else running)")
        if other > 0.15 * cores * e2e.seconds:
            print("WARNING: the machine was busy with other work during the run; figures are "
                  "pessimistic")
    print(f"run valid: {r.valid}")


def main(argv: Sequence[str] | None = None) -> int:
    """Measure each kind of frames; print a table per kind, then the summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=100_000,
                        help="frames in each recording")
    parser.add_argument("--kinds", default="pds,relay",
                        help="comma-separated: pds (reference-PDS frames), relay (production)")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for the service to commit everything")
    parser.add_argument("--wait-quiet", type=float, default=30.0,
                        help="seconds to wait for an idle machine before each measurement")
    parser.add_argument("--sdk-models", action="store_true",
                        help="also time the slower SDK variant with typed record models")
    parser.add_argument("--ceiling", action="store_true",
                        help="also measure the harness's ceiling (receive-only client)")
    args = parser.parse_args(argv)

    now = datetime.datetime.now().astimezone()
    print(f"skywire-trio ingest benchmark, {now:%Y-%m-%d %H:%M %Z}")
    print(f"source: {source_state()}")
    print(f"machine: {os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, "
          f"{query('postgresql://postgres@127.0.0.1:5432/postgres', 'SHOW server_version')[0][0]}"
          " (PostgreSQL on the same machine)")
    results = [measure_kind(kind, args) for kind in args.kinds.split(",")]
    print("\nsummary (frames/s; ratios = committed / the SDK's decode-only, same frames: "
          + "; ".join(f"{label}: {how}" for label, how in RATIO_KINDS) + "):")
    header = ("frames", "SDK decode", "committed", "events/s",
              *(f"ratio {label}" for label, _ in RATIO_KINDS), "peak RSS")
    lines = [header] + [
        (r.kind, f"{r.sdk_fps:,.0f}", f"{r.e2e_fps:,.0f}",
         f"{r.e2e_fps * r.events / r.frames:,.0f}", *(f"{x:.2f}x" for x in r.ratios),
         f"{(r.e2e.peak_rss_kb or 0) / 1024:,.0f} MB")
        for r in results]
    width = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  " + "  ".join(cell.rjust(width[i]) for i, cell in enumerate(line)))
    valid = all(r.valid for r in results)
    print(f"run valid: {valid}")
    return 0 if valid else 1


if __name__ == "__main__":
    sys.exit(main())
