"""Webhook delivery end to end: the service as a process, a real receiver that verifies
every signature with the independent ``standardwebhooks`` package."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time

import httpx

from .support import (
    PDS_CAPTURE,
    ROOT,
    free_port,
    query,
    replay_process,
    service_env,
    service_process,
    start_service,
    wait_for,
)
from .webhooks_support import (
    check_stream,
    cli,
    create,
    delivered_ids,
    listing,
    receiver_process,
)

# Short retries so that failure scenarios take seconds, not minutes.
FAST = {"SKYWIRE_WEBHOOK_RETRY_MIN": "0.05", "SKYWIRE_WEBHOOK_RETRY_MAX": "0.3",
        "SKYWIRE_WEBHOOK_TIMEOUT": "1"}

# name -> (options, SQL condition selecting exactly what it must receive), written
# independently of the service's own filter code.
SUBSCRIPTIONS = {
    "all": ((), "true"),
    "jmes": (("--collection", "app.bsky.feed.post", "--event-type", "commit", "--jmespath",
              "commit.operation == 'create' && contains(commit.record.text, 'e')",
              "--batch", "5"),
             "event_type = 'commit' AND collection = 'app.bsky.feed.post' "
             "AND action = 'create' AND record->>'text' LIKE '%e%'"),
    "posts": (("--collection", "app.bsky.feed.post", "--start", "oldest", "--batch", "7"),
              "collection = 'app.bsky.feed.post' OR event_type IN ('identity', 'account')"),
    "feed-creates": (("--collection", "app.bsky.feed.*", "--event-type", "commit",
                      "--action", "create", "--start", "oldest", "--batch", "50"),
                     "event_type = 'commit' AND collection LIKE 'app.bsky.feed.%' "
                     "AND action = 'create'"),
    "changes": (("--action", "update", "--action", "delete", "--start", "oldest"),
                "event_type IN ('identity', 'account') OR action IN ('update', 'delete')"),
}


def _expected(database: str, condition: str) -> list[int]:
    return [i for (i,) in query(database, f"SELECT id FROM firehose_events WHERE {condition} "
                                          "ORDER BY id")]


def test_each_subscription_receives_exactly_its_events_in_order(database, tmp_path):
    log = tmp_path / "service.log"
    with receiver_process(tmp_path) as receiver, replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path, **FAST)
        # Two follow the log live from the start (the commit feed), three are created once
        # everything is in and read it from the oldest event (pages of their own).
        for name in ("all", "jmes"):
            create(env, receiver, name, *SUBSCRIPTIONS[name][0])
        with service_process(env, log):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 60), log.read_text()[-3000:]
            for name in ("posts", "feed-creates", "changes"):
                create(env, receiver, name, *SUBSCRIPTIONS[name][0])
            expected = {name: _expected(database, condition)
                        for name, (_, condition) in SUBSCRIPTIONS.items()}
            assert all(expected.values()) and len(expected["all"]) > 400
            assert wait_for(lambda: all(
                len(delivered_ids(receiver.requests(f"/{name}"))) >= len(ids)
                for name, ids in expected.items()), 60), log.read_text()[-3000:]
            # The counts and cursors are saved within a second of the last acknowledgement.
            assert wait_for(lambda: all(
                row["delivered_events"] == len(expected[name]) and row["lag_events"] == 0
                for name, row in listing(env).items()), 10), listing(env)
            rows = listing(env)
        for name, ids in expected.items():
            requests = receiver.requests(f"/{name}")
            assert all(r["verified"] is not False for r in requests), name
            assert all(r["verified"] for r in requests if r["status"] == 200), name
            assert delivered_ids(requests) == ids, name  # all, once, in order
            acked = [r for r in requests if r["status"] == 200]
            assert len({r["webhook_id"] for r in acked}) == len(acked)
            # A request answered 503 (before the test registered the secret) was re-sent
            # whole, under its webhook-id.
            assert all(r["ids"] == by_id[r["webhook_id"]]
                       for by_id in [{r["webhook_id"]: r["ids"] for r in acked}]
                       for r in requests)
            assert all(r["cursor"] == r["ids"][-1] for r in requests)
            assert rows[name]["state"] == "active" and rows[name]["last_error"] is None
        assert max(len(r["ids"]) for r in receiver.requests("/posts")) == 7


def test_failures_then_recovery_deliver_everything_in_order(database, tmp_path):
    log = tmp_path / "service.log"
    with receiver_process(tmp_path) as receiver, \
            replay_process(PDS_CAPTURE, "--rate", "60") as relay:
        env = service_env(database, relay, tmp_path, SKYWIRE_WEBHOOK_MAX_ATTEMPTS="1000",
                          **FAST)
        create(env, receiver, "steady", "--batch", "20")
        create(env, receiver, "picky", "--collection", "app.bsky.feed.like", "--batch", "3")
        with service_process(env, log) as proc:
            api = f"http://127.0.0.1:{env['PORT']}"
            # The replay takes ~6 s: the receiver fails in three ways while it runs.
            assert wait_for(lambda: receiver.acknowledged("/steady"), 30), \
                log.read_text()[-3000:]
            receiver.set_mode("500")
            time.sleep(1.5)
            receiver.set_mode("timeout")  # held past SKYWIRE_WEBHOOK_TIMEOUT (1 s)
            time.sleep(2.5)
            receiver.stop()  # connections refused
            time.sleep(1.5)
            receiver.set_mode("ok")
            receiver.start()
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 60), log.read_text()[-3000:]
            expected = {
                "steady": _expected(database, "true"),
                "picky": _expected(database, "collection = 'app.bsky.feed.like' "
                                             "OR event_type IN ('identity', 'account')")}
            assert wait_for(lambda: all(
                set(delivered_ids(receiver.requests(f"/{n}"))) >= set(ids)
                for n, ids in expected.items()), 60), log.read_text()[-3000:]
            metrics = httpx.get(f"{api}/metrics").text
            assert proc.poll() is None
        for name, ids in expected.items():
            check_stream(receiver.requests(f"/{name}"), ids)
        statuses = {r["status"] for r in receiver.requests()}
        assert {500, 0, 200} <= statuses  # 0: held until the sender timed out
        for kind in ("status", "timeout", "connect"):
            assert f'skywire_webhook_failures_total{{subscription="steady",kind="{kind}"}}' \
                in metrics, metrics
        assert 'skywire_webhook_lag_events{subscription="steady"}' in metrics


def test_sigkill_during_delivery_misses_nothing_and_repeats_whole_batches(database, tmp_path):
    log = tmp_path / "service.log"
    rng = random.Random(20261129)
    with receiver_process(tmp_path) as receiver, \
            replay_process(PDS_CAPTURE, "--rate", "80") as relay:
        env = service_env(database, relay, tmp_path, **FAST)
        create(env, receiver, "everything", "--batch", "4")
        create(env, receiver, "posts", "--collection", "app.bsky.feed.post",
               "--jmespath", "kind == 'commit'", "--batch", "2")
        kills = 0
        while kills < 4:
            before = len(receiver.requests())
            proc = start_service(env, log)
            # Once it delivers again, kill it at a random instant of the next ~0.5 s.
            assert wait_for(lambda before=before: len(receiver.requests()) > before, 30), \
                log.read_text()[-3000:]
            time.sleep(rng.uniform(0, 0.5))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            kills += 1
        with service_process(env, log):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 60), log.read_text()[-3000:]
            expected = {
                "everything": _expected(database, "true"),
                "posts": _expected(database, "event_type = 'commit' "
                                             "AND collection = 'app.bsky.feed.post'")}
            assert wait_for(lambda: all(
                set(delivered_ids(receiver.requests(f"/{n}"))) >= set(ids)
                for n, ids in expected.items()), 60), log.read_text()[-3000:]
    repeats = sum(check_stream(receiver.requests(f"/{n}"), ids) for n, ids in expected.items())
    # Every kill can repeat the batch in flight of each subscription, nothing more.
    assert repeats <= kills * len(expected), repeats


def test_exhausted_batches_become_dead_letters_and_retry_delivers_them(database, tmp_path):
    log = tmp_path / "service.log"
    with receiver_process(tmp_path) as receiver, replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path, SKYWIRE_WEBHOOK_MAX_ATTEMPTS="3", **FAST)
        with service_process(env, log):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 60), log.read_text()[-3000:]
            expected = _expected(database, "true")
            receiver.set_mode("500", "/dl")
            receiver.set_mode("500", "/halt")
            receiver.set_mode("410", "/gone")
            create(env, receiver, "dl", "--start", "oldest", "--batch", "25")
            create(env, receiver, "halt", "--start", "oldest", "--batch", "25",
                   "--on-exhausted", "pause")
            create(env, receiver, "gone", "--start", "oldest")

            def dead_letters() -> list[dict]:
                done = cli(env, "deadletters", "list", "dl", "--json")
                assert done.returncode == 0, done.stderr
                return [json.loads(line) for line in done.stdout.splitlines()]

            # Three batches fail three times each and are set aside; delivery goes on.
            assert wait_for(lambda: len(dead_letters()) >= 3, 30), log.read_text()[-3000:]
            receiver.set_mode("ok", "/dl")
            assert wait_for(lambda: listing(env)["dl"]["lag_events"] == 0, 30)
            letters = dead_letters()
            requests = receiver.requests("/dl")
            failed_only = {r["webhook_id"] for r in requests} - {
                r["webhook_id"] for r in requests if r["status"] == 200}
            assert {d["webhook_id"] for d in letters} == failed_only
            assert all(d["attempts"] == 3 and d["last_error"].startswith("HTTP 500")
                       for d in letters)
            assert sum(d["event_count"] for d in letters) + len(
                delivered_ids(requests)) == len(expected)

            # `deadletters retry` has the service send them again, under their webhook-ids.
            one = cli(env, "deadletters", "retry", "dl", str(letters[0]["id"]))
            assert one.returncode == 0, one.stderr
            assert wait_for(lambda: len(dead_letters()) == len(letters) - 1, 15)
            done = cli(env, "deadletters", "retry", "dl", "--all")
            assert done.returncode == 0, done.stderr
            assert wait_for(lambda: dead_letters() == [], 15), log.read_text()[-3000:]
            assert sorted(delivered_ids(receiver.requests("/dl"))) == expected
            retried = [r for r in receiver.requests("/dl")[len(requests):]]
            assert {r["webhook_id"] for r in retried} == failed_only

            # The pause policy: the first batch stays pending, the subscription pauses.
            assert wait_for(lambda: listing(env)["halt"]["state"] == "paused", 15)
            halted = receiver.requests("/halt")
            assert len(halted) == 3 and len({r["webhook_id"] for r in halted}) == 1
            # 410 disables at once, without retries.
            assert wait_for(lambda: listing(env)["gone"]["state"] == "disabled", 15)
            gone = listing(env)["gone"]
            assert gone["last_status"] == 410 and len(receiver.requests("/gone")) == 1

            # Both come back with `resume` and deliver everything in order.
            receiver.set_mode("ok", "/halt")
            receiver.set_mode("ok", "/gone")
            for name in ("halt", "gone"):
                assert cli(env, "subscriptions", "resume", name).returncode == 0
            assert wait_for(lambda: all(
                len(delivered_ids(receiver.requests(f"/{n}"))) >= len(expected)
                for n in ("halt", "gone")), 30), log.read_text()[-3000:]
            for name in ("halt", "gone"):
                check_stream(receiver.requests(f"/{name}"), expected)
            assert query(database, "SELECT count(*) FROM webhook_dead_letters") == [(0,)]


def test_pause_resume_and_delete_take_effect_without_a_restart(database, tmp_path):
    log = tmp_path / "service.log"
    with receiver_process(tmp_path) as receiver, \
            replay_process(PDS_CAPTURE, "--rate", "40") as relay:
        env = service_env(database, relay, tmp_path, **FAST)
        create(env, receiver, "held", "--batch", "10")
        create(env, receiver, "dropped", "--batch", "10")
        with service_process(env, log):
            assert wait_for(lambda: receiver.acknowledged("/held")
                            and receiver.acknowledged("/dropped"), 30), log.read_text()[-3000:]
            assert cli(env, "subscriptions", "pause", "held").returncode == 0
            assert cli(env, "subscriptions", "delete", "dropped").returncode == 0
            # The delivery task notices within its 1 s poll (a few seconds on a busy
            # machine): from then on the log grows and nothing is sent.
            deadline = time.monotonic() + 8

            def sent() -> tuple[int, int]:
                return len(receiver.requests("/held")), len(receiver.requests("/dropped"))

            while True:
                counts = sent()
                head = query(database, "SELECT last_id FROM firehose_cursor")[0][0]
                time.sleep(1.5)
                if sent() == counts:
                    break
                assert time.monotonic() < deadline, "still delivering after pause/delete"
            assert query(database, "SELECT last_id FROM firehose_cursor")[0][0] > head
            assert listing(env)["held"]["state"] == "paused" and "dropped" not in listing(env)
            assert cli(env, "subscriptions", "resume", "held").returncode == 0
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 60), log.read_text()[-3000:]
            expected = _expected(database, "true")
            assert wait_for(lambda: len(delivered_ids(receiver.requests("/held")))
                            >= len(expected), 30), log.read_text()[-3000:]
        check_stream(receiver.requests("/held"), expected)


def test_the_receiver_in_the_consumer_docs_verifies_and_handles_everything(database, tmp_path):
    doc = (ROOT / "docs" / "consumers.md").read_text()
    example = re.search(r"```python webhook-receiver\n(.*?)```", doc, re.S).group(1)
    port = free_port()
    log = tmp_path / "service.log"
    with replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path, **FAST)
        with service_process(env, log):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 60), log.read_text()[-3000:]
            done = cli(env, "subscriptions", "create", "docs", "--url",
                       f"http://127.0.0.1:{port}/", "--start", "oldest", "--batch", "50")
            assert done.returncode == 0, done.stderr
            secret = done.stdout.splitlines()[-1]
            script = tmp_path / "receiver.py"
            script.write_text(example.replace('"whsec_..."', f'"{secret}"')
                              .replace("8000", str(port)))
            receiver = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path,
                                        stdout=subprocess.PIPE, text=True)
            try:
                expected = _expected(database, "true")
                lines = []
                while len(lines) < len(expected):
                    line = receiver.stdout.readline()
                    assert line, "the receiver stopped"
                    lines.append(line.split())
                forged = httpx.post(f"http://127.0.0.1:{port}/", content=b'{"events":[]}',
                                    headers={"webhook-id": "msg_x", "webhook-timestamp":
                                             str(int(time.time())),
                                             "webhook-signature": "v1,AAAA"})
                assert forged.status_code == 401
            finally:
                receiver.kill()
                receiver.wait(10)
    assert [int(fields[0]) for fields in lines] == expected
    posts = query(database, "SELECT id FROM firehose_events WHERE collection = "
                            "'app.bsky.feed.post' AND action = 'create' ORDER BY id")
    assert [int(f[0]) for f in lines if f[2:] == ["app.bsky.feed.post", "create"]] == \
        [i for (i,) in posts]


def test_a_subscription_behind_retention_skips_to_the_oldest_event_and_says_so(database,
                                                                               tmp_path):
    log = tmp_path / "service.log"
    with receiver_process(tmp_path) as receiver, replay_process(PDS_CAPTURE) as relay:
        env = service_env(database, relay, tmp_path, **FAST)
        receiver.set_mode("500", "/held")
        create(env, receiver, "held", "--start", "oldest", "--batch", "30")
        with service_process(env, log):
            assert wait_for(lambda: query(database, "SELECT last_seq FROM firehose_cursor")
                            == [(359,)], 60), log.read_text()[-3000:]
            assert wait_for(lambda: receiver.requests("/held"), 30)
            # Paused with its first batch (ids 1..30) saved as pending.
            assert cli(env, "subscriptions", "pause", "held").returncode == 0
            time.sleep(1.5)
        # The oldest events leave the log (as a dropped day would) before delivery: one
        # subscription has them in its pending batch, the other still has to read them.
        query(database, "DELETE FROM firehose_events WHERE id <= 100")
        create(env, receiver, "late", "--start", "1")
        receiver.set_mode("ok", "/held")
        assert cli(env, "subscriptions", "resume", "held").returncode == 0
        expected = _expected(database, "true")
        with service_process(env, log):
            assert wait_for(lambda: all(
                delivered_ids(receiver.requests(f"/{n}"))[-1:] == expected[-1:]
                for n in ("held", "late")), 30), log.read_text()[-3000:]
            assert wait_for(lambda: all(listing(env)[n]["skipped_events"] == 100
                                        for n in ("held", "late")), 10), listing(env)
            rows = listing(env)
        for name in ("held", "late"):
            assert rows[name]["last_error"] == "retention dropped 100 events before delivery"
            check_stream(receiver.requests(f"/{name}"), expected)  # from the oldest on
        assert log.read_text().count("retention dropped 100 events (ids 1..100)") == 2
