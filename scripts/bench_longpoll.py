"""Long-poll benchmark: many waiting long-polls that never match, while ingest commits.

Run from the repository root::

    .venv/bin/python scripts/bench_longpoll.py [--polls 1000] [--rate 20]

What it does:

1. A fresh migrated database; a relay (``python -m skywire_trio replay``) serving renumbered
   relay frames at ``--rate`` frames/s (about as many events/s), and the service as a real
   process (default settings) ingesting them.
2. *idle*: after a warm-up, ``--requests`` sequential ``GET /events?limit=100`` at random
   ``since`` (one keep-alive connection): the other requests' latency with nobody waiting.
   The service's RSS (``/proc/PID/status`` VmRSS) is the baseline.
3. *waiting*: ``--polls`` long-polls, each on its own connection, ask for events of a repo
   that does not exist (``wait=30``; each is asked again as soon as it is answered, from
   the cursor it got). Every commit is therefore a batch none of them can match. With all
   of them waiting, the same latency requests again, RSS and the service's CPU.
4. *after*: every long-poll connection is closed; after ``--settle`` seconds, RSS again
   (the figure checked against the target), and once more at three times that.

With ``--probe DIR`` the service runs under ``scripts/memory_probe.py``, which is asked what
holds memory when idle and after the long-polls closed (the live objects in memory mapped
since idle, and pymalloc's arenas when the service runs on it, ``PYTHONMALLOC=pymalloc``;
docs/performance.md has what it found).

Reported: p50 / p90 / p99 of the other requests in each phase, RSS, the service's CPU share,
the events committed per second, and from ``/metrics`` the long-polls waiting and the
wake-ups (a woken long-poll reads the log again: with filters that never match, none
should be woken). Targets (issue 17, reported, not enforced): p50 while waiting within 2x
of idle; RSS after within 10% of the baseline.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.benchlib import proc_cpu_seconds, wait_until_quiet  # noqa: E402
from skywire_trio.firehose.framefile import write_frames  # noqa: E402
from tests.support import (  # noqa: E402
    ROOT,
    fresh_database,
    query,
    relay_frames,
    renumbered,
    replay_process,
    service_env,
    wait_for,
)

NOBODY = "did:plc:benchnobodyatall0000000"


def rss_mb(pid: int) -> float:
    """The process's resident set size in MB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)[1]) / 1024


def metric(base: str, name: str) -> float:
    """One unlabelled sample from /metrics."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    found = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    return float(found[1]) if found else float("nan")


def latencies(base: str, token: str, head: int, count: int, seed: int) -> list[float]:
    """Wall ms of ``count`` sequential limit=100 reads at random ``since``."""
    rng = random.Random(seed)
    out = []
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"},
                      timeout=60) as client:
        for n in range(count + 20):
            since = rng.randrange(0, max(1, head - 100))
            began = time.perf_counter()
            response = client.get("/events", params={"since": since, "limit": 100})
            elapsed = (time.perf_counter() - began) * 1000
            if response.status_code != 200:
                raise RuntimeError(f"/events answered {response.status_code}: "
                                   f"{response.text[:200]}")
            if n >= 20:  # the first ones warm up
                out.append(elapsed)
    return out


def percentiles(values: Sequence[float]) -> str:
    """p50 / p90 / p99 in ms."""
    q = statistics.quantiles(values, n=100)
    return f"{statistics.median(values):.1f} / {q[89]:.1f} / {q[98]:.1f} ms"


async def hold_polls(port: int, token: str, polls: int, since: int, ready: trio.Event,
                     answered: list[int]) -> None:
    """``polls`` connections, each long-polling for ``NOBODY`` until cancelled."""
    request = (f"GET /events?repo={NOBODY}&wait=30&since={{since}} HTTP/1.1\r\n"
               f"Host: bench\r\nAuthorization: Bearer {token}\r\n\r\n")
    opened = 0

    async def one() -> None:
        nonlocal opened
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            cursor = since
            opened += 1
            if opened == polls:
                ready.set()
            while True:
                await stream.send_all(request.format(since=cursor).encode())
                data = b""
                while b"\r\n\r\n" not in data or not data.endswith(b"}"):
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        raise RuntimeError("the server closed a long-poll connection")
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"a long-poll got {head[:40]!r}")
                answered[0] += 1
                cursor = int(body[body.rindex(b":") + 1:-1])

    async with trio.open_nursery() as nursery:
        for _ in range(polls):
            nursery.start_soon(one)
            await trio.sleep(0.002)  # do not flood the accept queue


def arenas(stats: Path) -> str:
    """Arenas and empty pools from a ``mallocstats-N.txt`` of ``scripts/memory_probe.py``."""
    text = stats.read_text()

    def field(pattern: str) -> str:
        found = re.search(pattern, text, re.M)
        return found[1] if found else "?"

    current = field(r"^# arenas allocated current\s+=\s+([\d,]+)")
    reclaimed = field(r"^# arenas reclaimed\s+=\s+([\d,]+)")
    empty = field(r"^([\d,]+) unused pools")
    return f"{current} arenas ({reclaimed} given back so far), {empty} empty pools"


def probe(proc: subprocess.Popen, directory: Path, count: int) -> None:
    """Signal the memory probe and wait for its ``count``-th stats file."""
    proc.send_signal(signal.SIGUSR1)
    stats = directory / f"mallocstats-{count}.txt"
    if not wait_for(lambda: stats.exists() and (count == 1 or (
            directory / f"new-memory-{count}.txt").exists()), 120):
        raise RuntimeError("the memory probe did not answer")
    print(f"memory probe {count}: {arenas(stats)}")


@contextlib.contextmanager
def service(env: dict[str, str], log: Path,
            probe_dir: Path | None) -> Iterator[subprocess.Popen]:
    """The service as a real process (under the memory probe if asked), stopped with
    SIGTERM afterwards."""
    command = ([sys.executable, str(ROOT / "scripts" / "memory_probe.py"), str(probe_dir)]
               if probe_dir else [sys.executable, "-m", "skywire_trio"])
    proc = subprocess.Popen(command, env=env, cwd=ROOT,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--polls", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=20.0, help="relay frames per second")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--probe", type=Path, metavar="DIR",
                        help="run the service under scripts/memory_probe.py, writing into DIR "
                             "what it finds when idle and after the long-polls closed")
    args = parser.parse_args(argv)

    print(wait_until_quiet(30))
    frames = renumbered(relay_frames(), 20_000)
    with tempfile.TemporaryDirectory() as tmp_name, fresh_database() as database:
        tmp = Path(tmp_name)
        recording = tmp / "frames.bin"
        write_frames(recording, frames)
        with replay_process(recording, "--rate", str(args.rate)) as relay:
            env = service_env(database, relay, tmp)
            base = f"http://127.0.0.1:{env['PORT']}"
            with service(env, tmp / "service.log", args.probe) as proc:
                token = subprocess.run(
                    [sys.executable, "-m", "skywire_trio", "tokens", "create", "bench",
                     "--rate-limit", "100000"], env=env, cwd=ROOT, check=True,
                    capture_output=True, text=True).stdout.strip()
                if not wait_for(lambda: query(database, "SELECT last_id FROM firehose_cursor")
                                and query(database, "SELECT last_id FROM firehose_cursor")
                                [0][0] > 300, 60):
                    raise RuntimeError("the service did not ingest")

                def head() -> int:
                    return query(database, "SELECT last_id FROM firehose_cursor")[0][0]

                def phase(name: str) -> tuple[list[float], float, float, float]:
                    started_head, cpu, began = head(), proc_cpu_seconds(proc.pid), time.time()
                    ms = latencies(base, token, started_head, args.requests, args.seed)
                    took = time.time() - began
                    cpu_share = (proc_cpu_seconds(proc.pid) - cpu) / took
                    rate = (head() - started_head) / took
                    print(f"{name}: {percentiles(ms)}; service CPU {cpu_share:.0%}; "
                          f"{rate:.1f} events/s committed; RSS {rss_mb(proc.pid):.1f} MB")
                    return ms, cpu_share, rate, rss_mb(proc.pid)

                latencies(base, token, head(), 100, args.seed)  # warm-up
                idle, idle_cpu, idle_rate, baseline = phase("idle")
                if args.probe:
                    probe(proc, args.probe, 1)

                answered = [0]
                result: dict[str, object] = {}

                async def waiting_phase() -> None:
                    ready = trio.Event()
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(hold_polls, int(env["PORT"]), token, args.polls,
                                           head(), ready, answered)
                        await ready.wait()
                        with trio.fail_after(60):
                            while metric(base, "skywire_long_polls_waiting") < args.polls:
                                await trio.sleep(0.5)
                        woken = metric(base, "skywire_long_poll_wakeups_total")
                        result["phase"] = await trio.to_thread.run_sync(phase, "waiting")
                        result["woken"] = metric(base, "skywire_long_poll_wakeups_total") - woken
                        result["waiting"] = metric(base, "skywire_long_polls_waiting")
                        nursery.cancel_scope.cancel()

                trio.run(waiting_phase)
                busy, busy_cpu, busy_rate, during = result["phase"]  # type: ignore[misc]
                time.sleep(args.settle)
                after = rss_mb(proc.pid)
                time.sleep(2 * args.settle)
                later = rss_mb(proc.pid)
                if args.probe:
                    probe(proc, args.probe, 2)
                    print(f"memory probe: the objects in memory mapped since idle are in "
                          f"{args.probe / 'new-memory-2.txt'}")
                after_waiting = metric(base, "skywire_long_polls_waiting")
                releases = metric(base, "skywire_memory_releases_total")
                print(f"after: RSS {after:.1f} MB ({3 * args.settle:g} s after: {later:.1f} MB), "
                      f"long-polls waiting {after_waiting:.0f}, memory releases {releases:.0f}")

    p50_idle, p50_busy = statistics.median(idle), statistics.median(busy)
    print()
    print(f"| | idle | {args.polls} long-polls waiting | after they closed |")
    print("|---|---|---|---|")
    print(f"| other requests (`limit=100`), p50 / p90 / p99 | {percentiles(idle)} | "
          f"{percentiles(busy)} | |")
    print(f"| service RSS | {baseline:.1f} MB | {during:.1f} MB | {after:.1f} MB "
          f"({3 * args.settle:g} s after: {later:.1f} MB, {later / baseline - 1:+.1%}) |")
    print(f"| service CPU | {idle_cpu:.0%} | {busy_cpu:.0%} | |")
    print(f"| events committed | {idle_rate:.1f}/s | {busy_rate:.1f}/s | |")
    print(f"| long-polls waiting / woken during the phase | | {result['waiting']:.0f} / "
          f"{result['woken']:.0f} | |")
    print()
    ratio, growth = p50_busy / p50_idle, after / baseline - 1
    print(f"p50 waiting / idle: {ratio:.2f}x (target <= 2x: {'met' if ratio <= 2 else 'MISSED'})")
    print(f"RSS after / baseline: {growth:+.1%} (target within 10%: "
          f"{'met' if abs(growth) <= 0.10 else 'MISSED'})")
    print(f"long-poll answers received (timeouts after 30 s): {answered[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
