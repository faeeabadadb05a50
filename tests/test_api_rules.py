"""One rule for filters on non-commit events, `since` beyond the head, the /api/ aliases."""

from __future__ import annotations

from .support import query
from .test_api import _walk, api  # noqa: F401 - the fixture


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
