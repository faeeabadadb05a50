"""Webhook delivery end to end: the service as a process, a real receiver that verifies
every signature with the independent ``standardwebhooks`` package."""

from __future__ import annotations

from .support import (
    PDS_CAPTURE,
    query,
    replay_process,
    service_env,
    service_process,
    wait_for,
)
from .webhooks_support import create, delivered_ids, listing, receiver_process

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
                "event_type <> 'commit' OR action IN ('update', 'delete')"),
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
            assert rows[name]["state"] == "active"
            assert rows[name]["delivered_events"] == len(ids), rows[name]
        assert max(len(r["ids"]) for r in receiver.requests("/posts")) == 7
        assert rows["all"]["lag_events"] == 0
