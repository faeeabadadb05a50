"""/subscribe benchmark: many websocket subscribers on a service ingesting ~500 events/s.

Run from the repository root::

    .venv/bin/python scripts/bench_subscribe.py [--unfiltered 100] [--single 1000]
        [--rate 500] [--seconds 60] [--clients 2]

What it does:

1. A recording of production relay frames (the 150 of the Jetstream corpus, cycled with
   fresh contiguous seqs) long enough for the run; a fresh migrated database; the service
   as a real process with default settings; a token.
2. ``--clients`` client processes (this script with ``--client``) open the subscribers:
   ``--unfiltered`` with no filter and ``--single`` with one ``wantedCollections`` each,
   cycling through the collections of the recording (likes are ~70% of its events, posts
   ~12%, the rest a few percent each). They are light: tests/wsclient.py cuts frames out of
   64 KiB reads and reads only ``id`` and ``time_us`` of each message.
3. Then the relay (``python -m skywire_trio replay --rate``) starts. After a warm-up, for
   ``--seconds``, each client records, per group, the delay from commit to receipt of
   every message (receipt wall time minus the event's ``time_us``, which is the time the
   batch was handed to PostgreSQL, so the commit itself is included), counts messages and
   checks that ids only grow on each connection.
4. Reported: p50/p99/max delay per group, messages/s received, the service's messages/s
   (its /metrics counter), the ingest rate, CPU (service, its receiver process, the
   clients, PostgreSQL, the whole machine) and the service's peak RSS, and any connection
   the service closed.

Targets (reported, not enforced): p99 under 250 ms for the unfiltered subscribers.
PostgreSQL, the relay, the service and the clients all share this machine's two cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import httpx  # noqa: E402
import trio  # noqa: E402
from benchlib import machine_busy_seconds, proc_cpu_seconds, wait_until_quiet  # noqa: E402

from skywire_trio.firehose.codec import decode_frame  # noqa: E402
from skywire_trio.firehose.framefile import write_frames  # noqa: E402
from tests import wsclient  # noqa: E402
from tests.support import (  # noqa: E402
    api_listening,
    child_processes,
    free_port,
    fresh_database,
    query,
    relay_frames,
    renumbered,
    rss_kib,
    service_env,
    start_service,
    wait_for,
)
from tests.test_api import SALT, _make_token  # noqa: E402

BUCKET_MS = 1  # delay histogram resolution
BUCKETS = 60_000  # up to 60 s; later lands in the last bucket
P99_TARGET_MS = 250


# --------------------------------------------------------------------------- client side


async def _follow(port: int, target: str, group: str, state: dict) -> None:
    subscriber = await wsclient.Subscriber.connect("127.0.0.1", port, target)
    state["connected"] += 1
    histogram, last_id = state["histograms"][group], 0
    while messages := await subscriber.receive():
        if not state["measuring"]:
            last_id = wsclient.event_id(messages[-1])
            continue
        now_us = time.time() * 1e6
        for message in messages:
            event_id = wsclient.event_id(message)
            if event_id <= last_id:
                state["order_errors"] += 1
            last_id = event_id
            delay = int((now_us - wsclient.event_time_us(message)) / 1000 / BUCKET_MS)
            histogram[min(max(delay, 0), BUCKETS - 1)] += 1
        state["messages"][group] += len(messages)
    state["closed"].append((group, subscriber.close_code, subscriber.close_reason))


async def _client(port: int, targets: list[tuple[str, str]], warmup: float,
                  seconds: float) -> dict:
    groups = {group for _, group in targets}
    state = {"connected": 0, "measuring": False, "order_errors": 0, "closed": [],
             "histograms": {g: [0] * BUCKETS for g in groups},
             "messages": {g: 0 for g in groups}}
    async with trio.open_nursery() as nursery:
        for target, group in targets:
            nursery.start_soon(_follow, port, target, group, state)
        while state["connected"] < len(targets):
            await trio.sleep(0.05)
        print(json.dumps({"connected": state["connected"]}), flush=True)
        # The parent starts the relay now; measure after the warm-up.
        await trio.sleep(warmup)
        state["measuring"] = True
        await trio.sleep(seconds)
        state["measuring"] = False
        nursery.cancel_scope.cancel()
    return state


def client_main(args: argparse.Namespace) -> None:
    """``--client``: run the subscribers given on stdin, print the results as JSON."""
    targets = [tuple(t) for t in json.loads(sys.stdin.readline())]
    started = time.process_time()
    state = trio.run(_client, args.port, targets, args.warmup, args.seconds)
    state["cpu"] = time.process_time() - started
    print(json.dumps(state), flush=True)


# --------------------------------------------------------------------------- parent side


def _percentile(histogram: list[int], fraction: float) -> float:
    total = sum(histogram)
    if not total:
        return float("nan")
    wanted, seen = fraction * total, 0
    for bucket, count in enumerate(histogram):
        seen += count
        if seen >= wanted:
            return (bucket + 0.5) * BUCKET_MS
    return BUCKETS * BUCKET_MS


def _metric(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return float(next(line.split()[1] for line in text.splitlines()
                      if line.startswith(name + " ")))


def _postgres_cpu(database: str) -> float:
    """CPU seconds of the PostgreSQL backends serving the benchmark's database."""
    name = database.rsplit("/", 1)[1]
    total = 0.0
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if cmdline.startswith("postgres:") and f" {name} " in cmdline:
            total += proc_cpu_seconds(int(proc.name))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--unfiltered", type=int, default=100)
    parser.add_argument("--single", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=500.0, help="relay frames/s")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(args)
        return
    print(wait_until_quiet(60))
    tmp = Path(subprocess.check_output(["mktemp", "-d"], text=True).strip())
    frames = renumbered(relay_frames(), int(args.rate * (args.warmup + args.seconds + 60)))
    recording = tmp / "live.bin"
    write_frames(recording, frames)
    collections = sorted({r.collection for f in relay_frames() for r in decode_frame(f).rows
                          if r.collection})
    with fresh_database() as database:
        relay_port = free_port()
        env = service_env(database, f"ws://127.0.0.1:{relay_port}", tmp, API_TOKEN_SALT=SALT)
        port = int(env["PORT"])
        token = _make_token(database, "bench", rate=100_000)
        service = start_service(env, tmp / "service.log")
        relay = None
        clients: list[subprocess.Popen] = []
        try:
            assert wait_for(lambda: api_listening(port), 60), "the service did not start"
            targets = [("/subscribe?" + urlencode({"token": token}), "unfiltered")] \
                * args.unfiltered
            targets += [("/subscribe?" + urlencode({"token": token, "wantedCollections":
                                                     collections[i % len(collections)]}),
                         "single") for i in range(args.single)]
            for i in range(args.clients):
                client = subprocess.Popen(
                    [sys.executable, __file__, "--client", "--port", str(port),
                     "--warmup", str(args.warmup), "--seconds", str(args.seconds)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                client.stdin.write(json.dumps(targets[i::args.clients]) + "\n")
                client.stdin.flush()
                clients.append(client)
            for client in clients:
                assert json.loads(client.stdout.readline())["connected"] > 0
            relay = subprocess.Popen(
                [sys.executable, "-m", "skywire_trio", "replay", str(recording), "--port",
                 str(relay_port), "--rate", str(args.rate)], cwd=ROOT,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(args.warmup)
            pids = {"service": [service.pid], "receiver": child_processes(service.pid),
                    "clients": [c.pid for c in clients]}
            cpu0 = {k: sum(proc_cpu_seconds(p) for p in v) for k, v in pids.items()}
            pg0, busy0 = _postgres_cpu(database), machine_busy_seconds()
            sent0 = _metric(port, "skywire_subscribe_messages_total")
            fallbacks0 = _metric(port, "skywire_subscribe_fallbacks_total")
            id0 = query(database, "SELECT last_id FROM firehose_cursor")[0][0]
            started, peak_rss = time.monotonic(), 0
            while time.monotonic() - started < args.seconds:
                peak_rss = max(peak_rss, rss_kib(service.pid))
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            cpu = {k: (sum(proc_cpu_seconds(p) for p in v) - cpu0[k]) / elapsed
                   for k, v in pids.items()}
            pg = (_postgres_cpu(database) - pg0) / elapsed
            busy = (machine_busy_seconds() - busy0) / elapsed
            sent = (_metric(port, "skywire_subscribe_messages_total") - sent0) / elapsed
            fallbacks = _metric(port, "skywire_subscribe_fallbacks_total") - fallbacks0
            ingest = (query(database, "SELECT last_id FROM firehose_cursor")[0][0] - id0) \
                / elapsed
            results = [json.loads(c.stdout.readline()) for c in clients]
        finally:
            for proc in [*clients, relay, service]:
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(20)
    print(f"subscribers: {args.unfiltered} unfiltered + {args.single} single-collection "
          f"(cycling {len(collections)} collections), {args.clients} client processes")
    print(f"ingest: {ingest:.0f} events/s (relay asked for {args.rate:g} frames/s), "
          f"measured {elapsed:.0f} s after a {args.warmup:g} s warm-up")
    for group in ("unfiltered", "single"):
        histogram = [sum(r["histograms"][group][b] for r in results if group in r["histograms"])
                     for b in range(BUCKETS)]
        received = sum(r["messages"].get(group, 0) for r in results) / elapsed
        p50, p99 = _percentile(histogram, 0.5), _percentile(histogram, 0.99)
        top = max((b for b, n in enumerate(histogram) if n), default=0) * BUCKET_MS
        note = (f" (target p99 < {P99_TARGET_MS} ms: {'met' if p99 < P99_TARGET_MS else 'MISSED'})"
                if group == "unfiltered" else "")
        print(f"{group:>10}: {received:,.0f} msgs/s received; commit->receipt p50 {p50:.0f} ms,"
              f" p99 {p99:.0f} ms, max {top:.0f} ms{note}")
    print(f"service sent {sent:,.0f} msgs/s; service CPU {cpu['service']:.2f} cores, receiver "
          f"{cpu['receiver']:.2f}, clients {cpu['clients']:.2f}, PostgreSQL (its backends) "
          f"{pg:.2f}, machine "
          f"{busy:.2f} of {2} cores; service peak RSS {peak_rss / 1024:.0f} MiB")
    order_errors = sum(r["order_errors"] for r in results)
    closed = [c for r in results for c in r["closed"]]
    print(f"order errors: {order_errors}; connections closed by the service: {len(closed)}; "
          f"live subscribers cut off to pages (buffer full): {fallbacks:.0f}"
          + (f" (first: {closed[0]})" if closed else ""))


if __name__ == "__main__":
    main()
