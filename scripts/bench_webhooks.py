"""Webhook delivery benchmark: many subscriptions while ingesting, and a backlog drain.

Run from the repository root::

    .venv/bin/python scripts/bench_webhooks.py [--subscriptions 100] [--rate 500]
        [--seconds 60] [--backlog 50000]

What it does (everything real: PostgreSQL on 127.0.0.1:5432, the service, the replay relay
and the receiver as processes; the receiver is ``tests/webhook_receiver.py``, which checks
every signature with the independent ``standardwebhooks`` package):

1. *Fan-out*: a fresh database; ``--subscriptions`` subscriptions with ten different
   filters (all events, single collections, NSID prefixes, event types, actions, one with a
   JMESPath expression) are created before the service starts, delivering to ``--receivers``
   local receiver processes (2 by default: on this 2-core machine one Python receiver
   parsing ~1,000 signed requests/s would be the bottleneck, not the service; they find
   event ids and times by pattern, ``--light``, and still verify every signature). A relay
   replays production relay frames (``tests.support.renumbered``) at the
   frame rate that gives ``--rate`` events/s for ``--seconds``. For each event received by
   each subscription: receipt time minus the event's ``time_us`` (its commit time in the
   log), as p50/p95/p99. Completeness is checked against the log (every subscription got
   exactly its matching events). Service CPU (share of one core) and peak RSS are sampled
   from /proc.
2. *Backlog drain*: a fresh database filled with ``--backlog`` events (no subscription),
   then one subscription with ``--start oldest`` per batch size (100, then 1000): events/s
   from its creation to the receipt of the last event, and the service's CPU meanwhile.

Targets (reported, not enforced): p95 commit -> receipt under 1 s in part 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.benchlib import proc_cpu_seconds, wait_until_quiet  # noqa: E402
from skywire_trio.firehose.framefile import write_frames  # noqa: E402
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
from tests.webhooks_support import ReceiverProcess, create  # noqa: E402

FILTERS: list[tuple[tuple[str, ...], str]] = [
    ((), "true"),
    (("--collection", "app.bsky.feed.post"),
     "collection = 'app.bsky.feed.post' OR event_type IN ('identity', 'account')"),
    (("--collection", "app.bsky.feed.like"),
     "collection = 'app.bsky.feed.like' OR event_type IN ('identity', 'account')"),
    (("--collection", "app.bsky.feed.*"),
     "collection LIKE 'app.bsky.feed.%' OR event_type IN ('identity', 'account')"),
    (("--collection", "app.bsky.graph.*", "--event-type", "commit"),
     "event_type = 'commit' AND collection LIKE 'app.bsky.graph.%'"),
    (("--event-type", "commit", "--action", "create"),
     "event_type = 'commit' AND action = 'create'"),
    (("--event-type", "identity", "--event-type", "account"),
     "event_type IN ('identity', 'account')"),
    (("--collection", "app.bsky.feed.post", "--event-type", "commit", "--jmespath",
      "commit.operation == 'create' && commit.record.text != ''"),
     "event_type = 'commit' AND collection = 'app.bsky.feed.post' AND action = 'create' "
     "AND record->>'text' <> ''"),
    (("--collection", "app.bsky.actor.profile"),
     "collection = 'app.bsky.actor.profile' OR event_type IN ('identity', 'account')"),
    (("--action", "delete"), "event_type IN ('identity', 'account') OR action = 'delete'"),
]


class Sampler:
    """CPU seconds and peak RSS of one process, sampled every 0.5 s in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_rss_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))
            except OSError:
                return

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _expected(database: str, condition: str) -> int:
    return query(database, f"SELECT count(*) FROM firehose_events WHERE {condition}")[0][0]


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def fan_out(args: argparse.Namespace, tmp: Path) -> dict:
    per_frame = len(expected_rows(relay_frames())) / len(relay_frames())
    frames = int(args.rate * args.seconds / per_frame)
    recording = tmp / "fanout.bin"
    write_frames(recording, renumbered(relay_frames(), frames))
    receivers = []
    for i in range(args.receivers):
        (tmp / f"fanout{i}").mkdir(exist_ok=True)
        receivers.append(ReceiverProcess(tmp / f"fanout{i}", light=True))
        receivers[-1].start()

    def requests() -> list[dict]:
        return [r for receiver in receivers for r in receiver.requests()]

    log = tmp / "fanout-service.log"
    try:
        with fresh_database() as database, \
                replay_process(recording, "--rate", f"{args.rate / per_frame:.1f}") as relay:
            env = service_env(database, relay, tmp)
            names = []
            for i in range(args.subscriptions):
                options, _ = FILTERS[i % len(FILTERS)]
                name = f"s{i:03d}"
                create(env, receivers[i % len(receivers)], name, *options)
                names.append(name)
            proc = start_service(env, log)
            try:
                with Sampler(proc.pid) as sampler:
                    assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                                    not in ([], [(None,)]), 60), log.read_text()[-2000:]
                    cpu0, t0 = proc_cpu_seconds(proc.pid), time.monotonic()
                    assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                                    == [(frames,)], args.seconds * 4 + 60), \
                        log.read_text()[-2000:]
                    cpu1, t1 = proc_cpu_seconds(proc.pid), time.monotonic()
                    expected = {name: _expected(database, FILTERS[i % len(FILTERS)][1])
                                for i, name in enumerate(names)}

                    def counts() -> dict[str, int]:
                        got: dict[str, int] = dict.fromkeys(names, 0)
                        for r in requests():
                            if r["status"] == 200:
                                got[r["path"][1:]] += len(r["ids"])
                        return got

                    complete = wait_for(lambda: counts() == expected, 180, interval=3.0)
                    events = query(database, "SELECT count(*) FROM firehose_events")[0][0]
            finally:
                _stop(proc)
    finally:
        for receiver in receivers:
            receiver.stop()
    received = requests()
    latencies = [r["t"] - tus / 1e6 for r in received if r["status"] == 200
                 for tus in r["times"]]
    return {
        "subscriptions": args.subscriptions, "frames": frames, "events": events,
        "ingest_seconds": round(t1 - t0, 1), "events_per_s": round(events / (t1 - t0)),
        "deliveries": len(latencies), "requests": len(received),
        "unverified": sum(1 for r in received if not r["verified"]),
        "complete": complete,
        "p50": round(_percentile(latencies, 0.50), 3),
        "p95": round(_percentile(latencies, 0.95), 3),
        "p99": round(_percentile(latencies, 0.99), 3),
        "max": round(max(latencies), 3),
        "service_cpu_share": round((cpu1 - cpu0) / (t1 - t0), 2),
        "service_peak_rss_mb": round(sampler.peak_rss_kb / 1024),
    }


def drain(args: argparse.Namespace, tmp: Path) -> list[dict]:
    per_frame = len(expected_rows(relay_frames())) / len(relay_frames())
    frames = int(args.backlog / per_frame) + 1
    recording = tmp / "backlog.bin"
    write_frames(recording, renumbered(relay_frames(), frames))
    (tmp / "drain").mkdir(exist_ok=True)
    receiver = ReceiverProcess(tmp / "drain", light=True)
    receiver.start()
    log = tmp / "drain-service.log"
    results = []
    try:
        with fresh_database() as database, replay_process(recording) as relay:
            env = service_env(database, relay, tmp)
            proc = start_service(env, log)
            try:
                assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                                == [(frames,)], 300), log.read_text()[-2000:]
                events = query(database, "SELECT count(*) FROM firehose_events")[0][0]
                with Sampler(proc.pid) as sampler:
                    for batch in (100, 1000):
                        name = f"drain{batch}"
                        cpu0, t0 = proc_cpu_seconds(proc.pid), time.time()
                        create(env, receiver, name, "--start", "oldest", "--batch", str(batch))

                        def received(name: str = name) -> int:
                            return sum(len(r["ids"]) for r in receiver.requests(f"/{name}")
                                       if r["status"] == 200)

                        assert wait_for(lambda: received() >= events, 600, interval=0.5)
                        last = max(r["t"] for r in receiver.requests(f"/{name}"))
                        cpu1 = proc_cpu_seconds(proc.pid)
                        results.append({
                            "batch": batch, "events": events,
                            "seconds": round(last - t0, 2),
                            "events_per_s": round(events / (last - t0)),
                            "requests": len(receiver.requests(f"/{name}")),
                            "service_cpu_share": round((cpu1 - cpu0) / (last - t0), 2),
                            "service_peak_rss_mb": round(sampler.peak_rss_kb / 1024)})
            finally:
                _stop(proc)
    finally:
        receiver.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscriptions", type=int, default=100)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--backlog", type=int, default=50_000)
    parser.add_argument("--receivers", type=int, default=2,
                        help="receiver processes sharing the subscriptions (part 1)")
    parser.add_argument("--skip-fanout", action="store_true")
    parser.add_argument("--skip-drain", action="store_true")
    args = parser.parse_args()
    print(f"# {platform.node()} {os.cpu_count()} cores, python {platform.python_version()}; "
          f"{wait_until_quiet(30)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as tmp_dir:
        tmp = Path(tmp_dir)
        with contextlib.suppress(KeyboardInterrupt):
            if not args.skip_fanout:
                print(json.dumps({"fan_out": fan_out(args, tmp)}), flush=True)
            if not args.skip_drain:
                for result in drain(args, tmp):
                    print(json.dumps({"drain": result}), flush=True)


if __name__ == "__main__":
    main()
