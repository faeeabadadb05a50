"""Query parameters of ``GET /events``: parsed, validated, turned into an ``EventFilter``."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping, Sequence

from ..identifiers import (
    ACTIONS,
    EVENT_TYPES,
    MAX_VALUES,
    split_collections,
    valid_collection,
    valid_did,
)
from ..types import EventFilter
from .errors import ApiError

__all__ = ["ApiError", "EventsRequest", "parse_events", "split_collections"]

MAX_LIMIT = 1000
MAX_WAIT = 30.0
MAX_ID = 2**63 - 1
_KNOWN = {"since", "limit", "wait", "collection", "repo", "event_type", "action"}


@dataclasses.dataclass(frozen=True)
class EventsRequest:
    """A validated /events request."""

    filter: EventFilter
    collections: tuple[str, ...]  # as written: NSIDs and prefix.*
    wait: float


def bad_request(message: str) -> ApiError:
    """A 400 ``bad_request`` saying what is wrong with the query."""
    return ApiError(400, "bad_request", message)


def single(args: Mapping[str, Sequence[str]], name: str) -> str | None:
    """The value of a parameter that may be given at most once (None when absent)."""
    values = args.get(name) or []
    if len(values) > 1:
        raise bad_request(f"{name} may be given once")
    return values[0] if values else None


def _integer(raw: str | None, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,19}", raw) or not low <= int(raw) <= high:
        raise bad_request(f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _wait(raw: str | None) -> float:
    if raw is None:
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0 <= value <= MAX_WAIT:  # also false for NaN
        raise bad_request(f"wait must be a number of seconds from 0 to {MAX_WAIT:g}")
    return value


def _many(args: Mapping[str, Sequence[str]], name: str, valid: Callable[[str], bool] | None,
          choices: tuple[str, ...] = ()) -> tuple[str, ...]:
    values = tuple(dict.fromkeys(args.get(name) or []))  # de-duplicated, in order
    if len(values) > MAX_VALUES:
        raise bad_request(f"at most {MAX_VALUES} {name} values")
    for value in values:
        if choices and value not in choices:
            raise bad_request(f"{name} must be one of {', '.join(choices)}")
        if valid is not None and not valid(value):
            raise bad_request(f"{name} {value[:100]!r} is not valid")
    return values


def parse_events(args: Mapping[str, Sequence[str]]) -> EventsRequest:
    """Validate the query string of /events (``args`` maps a name to all its values)."""
    unknown = sorted(set(args) - _KNOWN)
    if unknown:
        raise bad_request(f"unknown parameter {unknown[0][:100]!r}")
    collections = _many(args, "collection", None)
    bad = [c for c in collections if not valid_collection(c)]
    if bad:
        raise bad_request(f"collection {bad[0][:100]!r} is not an NSID or an NSID prefix "
                          "ending in .*")
    action = single(args, "action")
    if action is not None and action not in ACTIONS:
        raise bad_request(f"action must be one of {', '.join(ACTIONS)}")
    event_filter = EventFilter(
        since=_integer(single(args, "since"), "since", 0, 0, MAX_ID),
        limit=_integer(single(args, "limit"), "limit", 100, 1, MAX_LIMIT),
        repos=_many(args, "repo", valid_did),
        event_types=_many(args, "event_type", None, EVENT_TYPES),
        action=action,
    )
    return EventsRequest(event_filter, collections, _wait(single(args, "wait")))
