"""The OpenAPI 3 description served at ``/openapi.json``."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(code): {"description": "error",
                        "content": {"application/json": {"schema": _ERROR}}} for code in codes}


_ARRAY_PARAM = {"type": "array", "items": {"type": "string"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "skywire-trio", "version": "0.1.0",
             "description": "The ATProto firehose as a durable, paged log."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error", "message"],
                      "properties": {"error": {"type": "string"},
                                     "message": {"type": "string"}}},
            "Event": {
                "type": "object", "required": ["id", "kind", "time_us"],
                "properties": {
                    "id": {"type": "integer"}, "seq": {"type": "integer", "nullable": True},
                    "did": {"type": "string", "nullable": True},
                    "time_us": {"type": "integer"}, "kind": {"type": "string"},
                    "commit": {"type": "object"}, "identity": {"type": "object"},
                    "account": {"type": "object"},
                },
            },
        },
    },
    "paths": {
        "/events": {"get": {
            "summary": "Events after `since`, in log order",
            "security": [{"bearer": []}],
            "parameters": [
                {"name": "since", "in": "query",
                 "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}},
                {"name": "limit", "in": "query",
                 "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                {"name": "wait", "in": "query",
                 "schema": {"type": "number", "minimum": 0, "maximum": 30}},
                {"name": "collection", "in": "query", "schema": _ARRAY_PARAM,
                 "style": "form", "explode": True},
                {"name": "repo", "in": "query", "schema": _ARRAY_PARAM,
                 "style": "form", "explode": True},
                {"name": "event_type", "in": "query", "style": "form", "explode": True,
                 "schema": {"type": "array", "items": {
                     "type": "string",
                     "enum": ["commit", "identity", "account", "sync", "info"]}}},
                {"name": "action", "in": "query",
                 "schema": {"type": "string", "enum": ["create", "update", "delete"]}},
            ],
            "responses": {
                "200": {"description": "a page of events", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["events", "cursor"],
                               "properties": {
                                   "events": {"type": "array",
                                              "items": {"$ref": "#/components/schemas/Event"}},
                                   "cursor": {"type": "integer"},
                                   "skipped": {
                                       "type": "integer", "minimum": 1,
                                       "description": "events after `since` that retention "
                                                      "already dropped"}}}}}},
                **_errors(400, 401, 403, 429, 503),
            },
        }},
        "/health": {"get": {
            "summary": "Ingest health (public)",
            "responses": {
                "200": {"description": "healthy", "content": {"application/json": {
                    "schema": {"type": "object"}}}},
                "503": {"description": "stalled or database unreachable",
                        "content": {"application/json": {"schema": {"type": "object"}}}},
            },
        }},
        "/partitions": {"get": {
            "summary": "Partitions of the log",
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "listing", "content": {"application/json": {
                    "schema": {"type": "object", "required": ["partitions"], "properties": {
                        "partitions": {"type": "array", "items": {"type": "object"}}}}}}},
                **_errors(401, 429, 503),
            },
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (public)",
            "responses": {"200": {"description": "Prometheus text",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}}},
        }},
        "/openapi.json": {"get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3",
                                  "content": {"application/json": {
                                      "schema": {"type": "object"}}}}},
        }},
    },
}
