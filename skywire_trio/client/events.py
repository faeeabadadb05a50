"""The events of ``GET /events`` as typed values, each with its JSON object at hand."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any


@dataclasses.dataclass(frozen=True, slots=True)
class Commit:
    """One record operation (Jetstream's ``commit`` object).

    Deletes have no ``record`` or ``cid``; an account's first commit has no operation;
    ``record_error`` says why a record could not be stored.
    """

    rev: str | None
    operation: str | None
    collection: str | None
    rkey: str | None
    record: Mapping[str, Any] | None
    cid: str | None
    record_error: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """One event of the log: its position, who and when, and what happened.

    ``raw`` is the JSON object exactly as the service sent it (for fields this class
    does not name); ``body`` is the object under the event's kind for kinds other than
    commit (``identity``, ``account``, ``sync``, ...).
    """

    id: int
    seq: int | None
    did: str | None
    time_us: int
    kind: str
    commit: Commit | None
    body: Mapping[str, Any] | None
    raw: Mapping[str, Any]

    @property
    def uri(self) -> str | None:
        """``at://did/collection/rkey`` of a commit's record; None for other events."""
        if self.commit is None or not self.commit.collection or self.commit.rkey is None:
            return None
        return f"at://{self.did}/{self.commit.collection}/{self.commit.rkey}"

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Event:
        """An event from its decoded JSON object."""
        kind = raw["kind"]
        commit = None
        if kind == "commit":
            c = raw.get("commit") or {}
            commit = Commit(c.get("rev"), c.get("operation"), c.get("collection"),
                            c.get("rkey"), c.get("record"), c.get("cid"),
                            c.get("record_error"))
        return cls(raw["id"], raw.get("seq"), raw.get("did"), raw["time_us"], kind, commit,
                   None if kind == "commit" else raw.get(kind), raw)


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One answer of ``/events``: events in id order and the cursor to pass back.

    ``skipped`` counts events that retention dropped before they could be read (the
    service says so instead of silently jumping).
    """

    events: list[Event]
    cursor: int
    skipped: int = 0


def parse_page(body: bytes) -> Page:
    """A page from the body of a 200 answer of ``/events``."""
    decoded = json.loads(body)
    return Page([Event.from_json(e) for e in decoded["events"]], int(decoded["cursor"]),
                int(decoded.get("skipped", 0)))
