"""One rule for filters on non-commit events, `since` beyond the head, the /api/ aliases."""

from __future__ import annotations

import psycopg

from skywire_trio.log import reader
from skywire_trio.types import EventFilter

from .support import query
from .test_api import _ids, _walk, api  # noqa: F401 - the fixture


async def test_since_beyond_head_is_a_400_naming_the_head(api):  # noqa: F811
    (head,) = query(api.database, "SELECT last_id FROM firehose_cursor")[0]
    async with api.client() as client:
        at_head = await client.get("/events", params={"since": head})
        beyond = await client.get("/events", params={"since": head + 1, "wait": 1})
    assert at_head.status_code == 200 and at_head.json() == {"events": [], "cursor": head}
    assert beyond.status_code == 400
    assert beyond.json()["error"] == "since_beyond_head"
    assert f"({head})" in beyond.json()["message"]


async def test_commit_only_filters_share_one_rule(api):  # noqa: F811
    kinds = dict(query(api.database, "SELECT event_type, count(*) FROM firehose_events "
                                     "GROUP BY 1"))
    assert kinds.get("sync") and kinds.get("identity") and kinds.get("account")
    async with api.client() as client:
        for params in ({"action": "delete"}, {"collection": "app.bsky.feed.*"}):
            events = await _walk(client, 1000, **params)
            got = {e["kind"] for e in events}
            assert "sync" not in got and "info" not in got, params
            assert {"identity", "account"} <= got, params
            commits = [e for e in events if e["kind"] == "commit"]
            assert commits
            if "action" in params:
                assert {e["commit"]["operation"] for e in commits} == {"delete"}


async def test_api_aliases_answer_like_the_originals(api):  # noqa: F811
    async with api.client() as client:
        for original, alias, params in [("/events", "/api/events", {"limit": 7, "since": 3}),
                                        ("/health", "/api/health", {})]:
            a, b = await client.get(original, params=params), await client.get(alias,
                                                                              params=params)
            assert a.status_code == b.status_code == 200
            if original == "/events":
                assert a.json() == b.json()
            else:
                assert a.json().keys() == b.json().keys()
        assert (await client.get("/api/events", headers={"Authorization": ""})).status_code == 401


async def test_event_type_filters_find_every_event_and_rare_kinds_use_their_index(api):  # noqa: F811
    # Commits are not in the event-type index (migration 0008): a filter with commits in it
    # walks the id index, one without them the partial index; both must find every event.
    async with api.client() as client:
        for kinds in (["identity"], ["account", "sync"], ["commit"], ["commit", "identity"]):
            got = [e["id"] for e in await _walk(client, 50, event_type=kinds)]
            listed = ", ".join(f"'{k}'" for k in kinds)
            assert got == _ids(api.database, f"event_type IN ({listed})"), kinds
            assert got, kinds
    # A log where commits outnumber the rest as they do live, so that reading identity
    # events through the id index would be the costly plan.
    query(api.database, "INSERT INTO firehose_events (id, event_type, indexed_at) "
                        "SELECT g, 'commit', now() FROM generate_series("
                        "(SELECT last_id + 1 FROM firehose_cursor), "
                        "(SELECT last_id + 50000 FROM firehose_cursor)) g")
    query(api.database, "ANALYZE firehose_events")
    sql, args = reader.event_query(EventFilter(since=0, limit=100, event_types=("identity",)))
    with psycopg.connect(api.database) as conn:
        # Generic, as a prepared statement's plan becomes after a few runs: the array
        # argument is then unknown to the planner, so only the literal predicate helps.
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE rare AS {sql}")
        plan = "\n".join(line for (line,) in conn.execute(
            "EXPLAIN EXECUTE rare(0, 100, '{identity}')"))
    assert "event_type_id_idx" in plan, plan
