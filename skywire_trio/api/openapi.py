"""The OpenAPI 3.1 description served at ``/openapi.json``.

Every response schema lists every field (``additionalProperties: false``), so that
tests/test_openapi.py, which validates real responses of every endpoint against this
document, fails when a response and its description drift apart.
"""

from __future__ import annotations

from typing import Any

from ..identifiers import ACTIONS as _ACTIONS
from ..identifiers import EVENT_TYPES

KINDS = list(EVENT_TYPES)
ACTIONS = list(_ACTIONS)
HEALTH_STATUSES = ["ok", "connecting", "stalled", "database_unavailable"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "bad parameters", 401: "missing, unknown or revoked token",
            403: "outside the token's scope", 404: "not found",
            429: "`rate_limited` (the token's rate) or `too_many_failures` (failed "
                 "authentications from this address); see Retry-After",
            500: "`database_permission` or `database_error`: the operator has to act",
            503: "`database_unavailable`, `database_timeout` or `too_many_connections`; "
                 "see Retry-After"}
    return {str(code): _json(text[code], _ref("Error")) for code in codes}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": list(properties) if required is None else required}


def _nullable(kind: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], "description": description, **extra}


def _array_param(name: str, description: str, items: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "style": "form",
            "explode": True, "schema": {"type": "array", "items": items}}


_COMMIT = _object({
    "rev": {"type": "string", "description": "the repository revision of the commit"},
    "operation": {"type": "string", "enum": ACTIONS},
    "collection": {"type": "string", "description": "NSID of the record's collection"},
    "rkey": {"type": "string", "description": "record key"},
    "record": {"type": "object", "description": "the record in the atproto data model "
               "(absent for deletes)"},
    "cid": {"type": "string", "description": "CID of the record (absent for deletes)"},
    "record_error": {"type": "string", "description": "why the record could not be stored "
                     "(only then)"},
}, required=["rev"])
# A commit without operations (an account's first) has only `rev`; any other has all three.
_COMMIT["dependentRequired"] = {"operation": ["collection", "rkey"],
                                "collection": ["operation", "rkey"]}

_EVENT = {
    "type": "object", "additionalProperties": False,
    "description": "Jetstream's v1 event plus the log position (`id`) and the upstream `seq`. "
                   "A commit event carries `commit`; other kinds carry their upstream body "
                   "under a key named like the kind.",
    "required": ["id", "seq", "did", "time_us", "kind"],
    "properties": {
        "id": {"type": "integer", "minimum": 1, "description": "log position (paging cursor)"},
        "seq": _nullable("integer", "upstream sequence number (null for #info)"),
        "did": _nullable("string", "the repository / account DID"),
        "time_us": {"type": "integer", "description": "commit time in the log, unix µs"},
        "kind": {"type": "string", "description": "event kind",
                 "anyOf": [{"enum": KINDS},
                           {"pattern": "^[A-Za-z][A-Za-z0-9]*$",
                            "description": "an upstream kind this version does not know"}]},
        "commit": {**_COMMIT, "required": [],
                   "dependentRequired": {"operation": ["collection", "rkey"],
                                         "collection": ["rkey"]},
                   "description": "with `sanitized`, `rev` and `operation` may be absent"},
        "identity": _nullable("object", "the #identity body"),
        "account": _nullable("object", "the #account body"),
        "sync": _nullable("object", "the #sync body"),
        "info": _nullable("object", "the #info body"),
        "sanitized": {"type": "string", "description":
                      "only when a field could not be stored as received: which fields were "
                      "stored as null, why, and how each began (docs/architecture.md)"},
        "record_error": {"type": "string", "description": "a non-commit event whose body "
                         "could not be stored (its body is null): why"},
    },
}
# The body of a kind this version does not know arrives under that kind's name.
_EVENT["additionalProperties"] = {"type": ["object", "null"]}
# A field that could not be stored as received is absent, and `sanitized` says which; a
# body that could not be stored is null, and `record_error` says why. Otherwise the
# commit has all its fields and the body is an object.
_EVENT["allOf"] = [
    {"if": {"not": {"required": ["sanitized"]}}, "then": {"properties": {"commit": _COMMIT}}},
    {"if": {"not": {"required": ["record_error"]}},
     "then": {"properties": {kind: {"type": "object"}
                             for kind in ("identity", "account", "sync", "info")}}},
]

_PAGE = _object({
    "events": {"type": "array", "items": _ref("Event")},
    "cursor": {"type": "integer", "description": "id of the last event returned, or `since`: "
               "pass it as the next `since`"},
    "skipped": {"type": "integer", "minimum": 1,
                "description": "events after `since` that retention already dropped"},
}, required=["events", "cursor"])

_PARTITION_STATUS = _object({
    "manager": {"type": "string", "enum": ["builtin", "pg_partman"],
                "description": "who creates and drops partitions"},
    "retention": _nullable("string", "partitions older than this are dropped (e.g. "
                           "\"14 days\"; pg_partman's own when it manages them)"),
    "premake": _nullable("integer", "days kept ahead of today"),
    "partitions_ahead": {"type": "integer", "description": "consecutive days after today "
                         "(UTC) that have their partition"},
    "default_rows": {"type": "integer", "description": "rows in the default partition"},
    "alarms": {"type": "array", "items": {"type": "string"},
               "description": "what an operator must look at; empty when all is well"},
})

_ARCHIVE = _object({
    "day": {"type": "string", "format": "date"},
    "path": {"type": "string", "description": "file path or s3:// URL"},
    "rows": {"type": "integer"}, "first_id": {"type": "integer"},
    "last_id": {"type": "integer"}, "bytes": {"type": "integer"},
    "sha256": {"type": "string"}, "created": {"type": "string", "format": "date-time"},
})

_ARCHIVE_HEALTH = _object({
    "written": {"type": "integer", "description": "days archived by this process"},
    "failures": {"type": "integer", "description": "exports that failed (each retried)"},
    "last_day": _nullable("string", "the newest day this process archived", format="date"),
    "failing": {"type": "boolean", "description": "a day's export keeps failing; its "
                "partition is kept until it succeeds"},
    "failing_day": _nullable("string", "that day", format="date"),
    "last_error": _nullable("string", "why"),
})

_HEALTH = _object({
    "status": {"type": "string", "enum": HEALTH_STATUSES},
    "database": {"type": "string", "enum": ["ok", "unreachable", "timeout", "permission",
                                            "error"],
                 "description": "the last probe's result (probed every second on a "
                                "connection of its own)"},
    "database_checked_seconds_ago": _nullable("number", "age of that result"),
    "upstream_connected": {"type": "boolean"},
    "last_seq": _nullable("integer", "last upstream seq committed"),
    "last_id": {"type": "integer", "description": "last log id committed"},
    "last_event_time": _nullable("string", "the newest committed event's own time",
                                 format="date-time"),
    "lag_seconds": _nullable("number", "age of the newest committed event's own time"),
    "seconds_since_commit": _nullable("number", "seconds since this process last committed"),
    "seconds_since_event": _nullable("number", "seconds since the upstream last sent a frame"),
    "seconds_since_pong": _nullable("number", "seconds since the upstream last answered a "
                                              "ping (pings start after a quiet spell)"),
    "buffered_events": {"type": "integer", "description": "frames waiting to be committed"},
    "default_partition_rows": {"type": "integer",
                               "description": "rows in the default partition (an alarm)"},
    "ingest_restarts": {"type": "integer"},
    "partitions": {"oneOf": [_ref("PartitionStatus"), {"type": "null"}],
                   "description": "the partitions' status (null when the database is down)"},
    "archive": {"oneOf": [_ARCHIVE_HEALTH, {"type": "null"}],
                "description": "the Parquet archive (null when it is off)"},
    "tasks": {"type": "object", "description": "each supervised task by name (supervise.py)",
              "additionalProperties": _ref("TaskHealth")},
    "seconds_waiting": _nullable("number", "how long received frames have waited for a "
                                 "commit, across ingest restarts (null: none wait)"),
    "last_error": _nullable("string", "why ingest last stopped"),
    "seconds_since_error": _nullable("number", "seconds since ingest last stopped"),
    "role": {"type": "string", "enum": ["all", "ingest", "api", "publisher"],
             "description": "what this instance was started to run (`SKYWIRE_ROLE`)"},
    "leadership": {"type": "object", "description": "each singleton role this instance runs "
                   "(ingest, publisher, delivery): whether it leads it or stands by",
                   "additionalProperties": {"type": "string", "enum": ["leader", "standby"]}},
    "leader_since": {"type": "object", "description": "when this instance became the leader "
                     "of each role it leads", "additionalProperties": {
                         "type": "string", "format": "date-time"}},
    "publisher": _object({
        "nats_connected": {"type": "boolean"},
        "last_id": _nullable("integer", "last log id JetStream acknowledged (null on a "
                             "standby)"),
        "lag_events": _nullable("integer", "log head minus last_id (null on a standby)"),
        "lag_seconds": _nullable("number", "seconds since the last published event was "
                                 "committed, while behind; 0 when caught up"),
        "published": {"type": "integer", "description": "messages acknowledged since start"},
        "errors": {"type": "integer", "description": "publisher failures since start"},
        "skipped": {"type": "integer", "description": "events retention dropped before they "
                    "were published"},
        "last_error": _nullable("string", "the latest failure, with its UTC time"),
    }),
})
# Only when NATS fan-out is on in this instance.
_HEALTH["required"].remove("publisher")

_TASK_HEALTH = _object({
    "state": {"type": "string", "enum": ["starting", "running", "backing_off"]},
    "restarts": {"type": "integer", "description": "faults + crashes"},
    "faults": {"type": "integer", "description": "transient faults, retried with backoff"},
    "crashes": {"type": "integer",
                "description": "any other exception (a bug), logged with its traceback"},
    "last_fault": _nullable("string", "the latest transient fault"),
    "last_crash": {"oneOf": [{"type": "null"}, _object({
        "error": {"type": "string", "description": "exception type and message"},
        "where": _nullable("string", "file:line in function where it was raised"),
        "at": _nullable("string", "when", format="date-time"),
    })]},
})

_PARTITION = _object({
    "name": {"type": "string"},
    "from": _nullable("string", "lower bound (UTC), null for the default partition",
                      format="date-time"),
    "to": _nullable("string", "upper bound (UTC)", format="date-time"),
    "rows_estimate": {"type": "integer", "description": "planner estimate (exact for the "
                      "default partition)"},
    "bytes": {"type": "integer"},
    "current": {"type": "boolean", "description": "holds the current UTC day"},
    "default": {"type": "boolean"},
    "archive": {"oneOf": [_ref("Archive"), {"type": "null"}],
                "description": "the day's recorded Parquet archive (in /partitions)"},
}, required=["name", "from", "to", "rows_estimate", "bytes", "current", "default"])

_STATUS = _object({
    "status": {"type": "string", "enum": HEALTH_STATUSES},
    "healthy": {"type": "boolean"},
    "role": {"type": "string"},
    "upstream": {"type": "string"},
    "started_at": {"type": "string", "format": "date-time"},
    "uptime_seconds": {"type": "number"},
    "health": _ref("Health"),
    "consumers": {"type": "object", "additionalProperties": {"type": "integer"},
                  "description": "consumer-facing counts (long-polls open, subscribers, ...)"},
    "partitions": {"type": "array", "items": _ref("Partition")},
    "history": _object({
        "at": {"type": "array", "items": {"type": "number"}, "description": "unix seconds"},
        "rate": {"type": "array", "items": {"type": "number"},
                 "description": "committed events/s"},
        "lag_seconds": {"type": "array", "items": {"type": ["number", "null"]}},
        "buffered": {"type": "array", "items": {"type": "integer"}},
        "requests": {"type": "array", "items": {"type": "number"},
                     "description": "API responses/s"},
    }),
    "warnings": {"type": "array", "items": _object({
        "at": {"type": "string", "format": "date-time"}, "level": {"type": "string"},
        "logger": {"type": "string"}, "message": {"type": "string"}})},
})

_FILTER_PARAMS = [
    {"name": "since", "in": "query", "description": "return events with an id greater than "
     "this (the previous page's `cursor`; 0 or absent: from the oldest retained event). "
     "Beyond the log's head: 400 `since_beyond_head`.",
     "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1, "default": 0}},
    {"name": "limit", "in": "query", "description": "at most this many events",
     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
    {"name": "wait", "in": "query", "description": "long-poll: wait up to this many seconds "
     "for at least one matching event", "schema": {"type": "number", "minimum": 0,
                                                   "maximum": 30, "default": 0}},
    _array_param("collection", "an NSID or an NSID prefix ending in `.*` (repeatable); "
                 "identity and account events pass, other non-commit events do not",
                 {"type": "string"}),
    _array_param("repo", "a DID (repeatable)", {"type": "string"}),
    _array_param("event_type", "event kinds to return (repeatable)",
                 {"type": "string", "enum": KINDS}),
    {"name": "action", "in": "query", "description": "commits with this operation only; "
     "identity and account events pass, other non-commit events do not",
     "schema": {"type": "string", "enum": ACTIONS}},
]


def _events_op(alias: bool) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": "Events after `since`, in log order" + (" (alias of /events)" if alias
                                                         else ""),
        "operationId": "events_alias" if alias else "events",
        "security": [{"bearer": []}],
        "parameters": _FILTER_PARAMS,
        "responses": {"200": _json("a page of events", _PAGE),
                      **_errors(400, 401, 403, 429, 500, 503)},
    }
    if alias:
        op["description"] = "The path of the original Skywire README; same as `/events`."
    return op


def _health_op(alias: bool) -> dict[str, Any]:
    return {
        "summary": "Ingest health (public)" + (" (alias of /health)" if alias else ""),
        "operationId": "health_alias" if alias else "health",
        "responses": {"200": _json("ingesting normally, or a standby", _ref("Health")),
                      "503": _json("connecting past the grace, stalled, or the database "
                                   "unreachable", _ref("Health"))},
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "skywire-trio", "version": "0.1.0",
             "description": "The ATProto firehose as a durable, paged log. Errors are "
                            "`{\"error\": code, \"message\": text}`, including the "
                            "server's own before a request reaches a route (400 malformed, "
                            "431 headers too large, 501 unsupported transfer coding, 503 "
                            "`too_many_connections`). Public, no token: /health, "
                            "/api/health, /metrics, /openapi.json, /, /status.json and "
                            "/static/*."},
    "components": {
        "securitySchemes": {"bearer": {
            "type": "http", "scheme": "bearer",
            "description": "a token from `python -m skywire_trio tokens create NAME`"}},
        "schemas": {
            "Error": _object({"error": {"type": "string", "description": "stable code"},
                              "message": {"type": "string", "description": "for humans"}}),
            "Event": _EVENT, "Page": _PAGE, "Health": _HEALTH, "TaskHealth": _TASK_HEALTH,
            "Partition": _PARTITION, "PartitionStatus": _PARTITION_STATUS, "Archive": _ARCHIVE,
            "Status": _STATUS,
        },
    },
    "paths": {
        "/events": {"get": _events_op(alias=False)},
        "/api/events": {"get": _events_op(alias=True)},
        "/health": {"get": _health_op(alias=False)},
        "/api/health": {"get": _health_op(alias=True)},
        "/subscribe": {"get": {
            "summary": "The log as a Jetstream-compatible websocket (upgrade required)",
            "operationId": "subscribe",
            "description": "One JSON event per text message, in id order: replay from "
                           "`cursor` or `since`, then live. After the upgrade, errors are "
                           "close codes with a reason (docs/consumers.md).",
            "security": [{"bearer": []}],
            "parameters": [
                _array_param("wantedCollections", "NSIDs or prefixes ending in `.*`",
                             {"type": "string"}),
                _array_param("wantedDids", "DIDs", {"type": "string"}),
                {"name": "cursor", "in": "query", "description": "unix microseconds: replay "
                 "from the first event at or after that time (in the future: live)",
                 "schema": {"type": "integer", "minimum": 0}},
                {"name": "since", "in": "query", "description": "replay after this log id",
                 "schema": {"type": "integer", "minimum": 0}},
                {"name": "maxMessageSizeBytes", "in": "query",
                 "description": "skip events larger than this (0: no cap)",
                 "schema": {"type": "integer", "minimum": 0}},
                {"name": "requireHello", "in": "query", "description": "send nothing until "
                 "the first `options_update` message", "schema": {"type": "boolean"}},
                {"name": "compress", "in": "query", "description": "zstd compression "
                 "(refused: not supported)", "schema": {"type": "boolean"}},
                _array_param("wantedKinds", "kinds beyond Jetstream's commit, identity and "
                             "account (e.g. sync)", {"type": "string", "enum": KINDS}),
                {"name": "token", "in": "query", "description": "the API token, for clients "
                 "that cannot set headers", "schema": {"type": "string"}},
            ],
            "responses": {"101": {"description": "switching to the websocket protocol"},
                          **_errors(400, 401, 403, 429, 503)},
        }},
        "/partitions": {"get": {
            "summary": "Partitions of the log", "operationId": "partitions",
            "security": [{"bearer": []}],
            "responses": {"200": _json("the manager's status, then the partitions, oldest "
                                       "first, the default partition last",
                                       _object({**_PARTITION_STATUS["properties"],
                                                "partitions": {"type": "array",
                                                               "items": _ref("Partition")}})),
                          **_errors(401, 429, 500, 503)},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (public)", "operationId": "metrics",
            "responses": {"200": {"description": "Prometheus text exposition format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/": {"get": {
            "summary": "Status page (public; HTML, no event contents)",
            "operationId": "status_page",
            "responses": {"200": {"description": "HTML page",
                                  "content": {"text/html": {"schema": {"type": "string"}}}}},
        }},
        "/status.json": {"get": {
            "summary": "The status page's data (public, no event contents)",
            "operationId": "status", "responses": {"200": _json("status", _ref("Status"))},
        }},
        "/static/{name}": {"get": {
            "summary": "The status page's vendored chart library (public)",
            "operationId": "static",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "description": "file name",
                            "schema": {"type": "string",
                                       "enum": ["uPlot.iife.min.js", "uPlot.min.css"]}}],
            "responses": {"200": {"description": "the file", "content": {
                "text/javascript": {"schema": {"type": "string"}},
                "text/css": {"schema": {"type": "string"}}}}, **_errors(404)},
        }},
        "/openapi.json": {"get": {
            "summary": "This document (public)", "operationId": "openapi",
            "responses": {"200": _json("OpenAPI 3.1", {"type": "object",
                                                        "required": ["openapi", "paths"]})},
        }},
    },
}
