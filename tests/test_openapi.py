"""Real responses of every endpoint validate against /openapi.json, which lists every field."""

from __future__ import annotations

import copy

import httpx
import jsonschema
import pytest

from skywire_trio.api.openapi import OPENAPI

from .test_api import api  # noqa: F401 - the fixture

# A websocket handshake: /subscribe answers it with a status before any upgrade.
UPGRADE = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
# (path, query, token, expected status): together they reach every documented path.
CASES = [
    ("/events", {"limit": 5}, "all", 200),
    ("/events", {"since": 100, "limit": 3, "collection": "app.bsky.feed.*"}, "all", 200),
    ("/events", {"limit": 2, "event_type": "sync"}, "all", 200),
    ("/events", {"limit": 0}, "all", 400),
    ("/events", {"since": 10**12}, "all", 400),
    ("/events", {}, None, 401),
    ("/events", {"collection": "app.bsky.feed.like"}, "posts", 403),
    ("/api/events", {"limit": 3, "action": "delete"}, "all", 200),
    ("/health", {}, None, 200),
    ("/api/health", {}, None, 200),
    ("/subscribe", {"wantedCollections": "not an nsid"}, "all", 400),
    ("/subscribe", {}, None, 401),
    ("/partitions", {}, "all", 200),
    ("/partitions", {}, None, 401),
    ("/metrics", {}, None, 200),
    ("/openapi.json", {}, None, 200),
    ("/", {}, None, 200),
    ("/status.json", {}, None, 200),
    ("/static/uPlot.iife.min.js", {}, None, 200),
    ("/static/nope.js", {}, None, 404),
]


def _rooted(schema: dict) -> dict:
    # Refs are "#/components/...": resolve them against the whole document.
    return {**schema, "components": OPENAPI["components"]}


def _response_schema(path: str, status: int, content_type: str) -> dict | None:
    template = "/static/{name}" if path.startswith("/static/") else path
    responses = OPENAPI["paths"][template]["get"]["responses"]
    assert str(status) in responses, f"{path} answered {status}, which is not documented"
    content = responses[str(status)]["content"]
    kind = content_type.split(";")[0].strip()
    assert kind in content, f"{path} {status} answered {kind}, documented {list(content)}"
    return content[kind]["schema"]


def _check(path: str, response: httpx.Response) -> None:
    schema = _response_schema(path, response.status_code, response.headers["content-type"])
    if response.headers["content-type"].startswith("application/json"):
        jsonschema.Draft202012Validator(_rooted(schema)).validate(response.json())


async def test_every_endpoint_conforms(api):  # noqa: F811
    reached = set()
    for path, params, token, status in CASES:
        async with api.client(token) as client:
            headers = UPGRADE if path == "/subscribe" else {}
            response = await client.get(path, params=params, headers=headers)
        assert response.status_code == status, (path, params, response.text[:300])
        _check(path, response)
        reached.add("/static/{name}" if path.startswith("/static/") else path)
    assert reached == set(OPENAPI["paths"])


async def test_a_missing_or_extra_field_is_caught(api):  # noqa: F811
    async with api.client() as client:
        page = (await client.get("/events", params={"limit": 1, "event_type": "commit",
                                                      "action": "create"})).json()
        health = (await client.get("/health")).json()
    page_schema = jsonschema.Draft202012Validator(
        _rooted(_response_schema("/events", 200, "application/json")))
    health_schema = jsonschema.Draft202012Validator(
        _rooted(_response_schema("/health", 200, "application/json")))
    page_schema.validate(page)
    health_schema.validate(health)
    for field in health:
        with pytest.raises(jsonschema.ValidationError):
            health_schema.validate({k: v for k, v in health.items() if k != field})
    event = page["events"][0]
    assert event["kind"] == "commit" and "operation" in event["commit"]
    for field in [*event, *(f"commit.{k}" for k in ("rev", "collection", "rkey"))]:
        broken = copy.deepcopy(page)
        if field.startswith("commit."):
            del broken["events"][0]["commit"][field[7:]]
        elif field == "commit":
            continue  # an event of another kind has none; its kind says which key it needs
        else:
            del broken["events"][0][field]
        with pytest.raises(jsonschema.ValidationError):
            page_schema.validate(broken)
    with pytest.raises(jsonschema.ValidationError):
        health_schema.validate({**health, "surprise": 1})


@pytest.mark.quick
def test_every_route_is_documented():
    from skywire_trio.api.app import ApiState, create_app

    app = create_app(ApiState(None, None, None, "salt"))  # routes only: nothing is served
    routes = {rule.rule.replace("<name>", "{name}") for rule in app.url_map.iter_rules()}
    documented = set(OPENAPI["paths"])
    assert routes - documented == set(), "routes missing from /openapi.json"
    assert documented - routes == set(), "documented paths the app does not serve"


@pytest.mark.quick
def test_document_is_valid_openapi_31():
    from jsonschema import Draft202012Validator

    assert OPENAPI["openapi"] == "3.1.0"
    for schema in OPENAPI["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)
    for path, item in OPENAPI["paths"].items():
        for parameter in item["get"].get("parameters", []):
            assert parameter.get("description"), (path, parameter["name"])
