"""Subjects and headers of the messages the publisher sends; no I/O.

``<prefix>.<event_type>`` for every event but commits; ``<prefix>.commit.<collection>``
for commits, with the NSID's dots as subject tokens, so that
``atproto.firehose.commit.app.bsky.>`` selects an NSID prefix. A commit without a
collection (an account's first, empty commit) goes to ``<prefix>.commit``.
"""

from __future__ import annotations

import re

from ..types import LogEvent

# Anything that is not safe inside one subject token (dots separate tokens; '*' and '>'
# are wildcards; white space ends the subject) becomes '_'. Valid NSIDs pass unchanged.
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
# Collections are at most 317 characters by the NSID spec; a longer one is cut.
MAX_COLLECTION = 317

MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SEQUENCE = "Nats-Expected-Last-Sequence"
EVENT_ID = "Skywire-Id"
EVENT_SEQ = "Skywire-Seq"


def _token(text: str) -> str:
    return _UNSAFE.sub("_", text) or "_"


def subject_for(prefix: str, event: LogEvent) -> str:
    """The subject ``event`` is published on."""
    if event.event_type != "commit":
        return f"{prefix}.{_token(event.event_type)}"
    if not event.collection:
        return f"{prefix}.commit"
    tokens = event.collection[:MAX_COLLECTION].split(".")
    return f"{prefix}.commit." + ".".join(_token(t) for t in tokens)


def headers_for(event: LogEvent, expected_last_sequence: int) -> dict[str, str]:
    """The headers of ``event``'s message.

    ``Nats-Msg-Id`` is the log id (the stream's duplicate window drops a repeat);
    ``Nats-Expected-Last-Sequence`` makes JetStream refuse a message that does not follow
    the previous one exactly, so the stream can never hold a gap or a reordering, and its
    last message always says how far the log has been published.
    """
    ident = str(event.id)
    headers = {MSG_ID: ident, EXPECTED_LAST_SEQUENCE: str(expected_last_sequence),
               EVENT_ID: ident}
    if event.seq is not None:
        headers[EVENT_SEQ] = str(event.seq)
    return headers


def too_large_body(event: LogEvent) -> bytes:
    """What is published instead of an event whose JSON exceeds the server's max payload:
    enough for a consumer to fetch it from ``/events?since=<id - 1>&limit=1``."""
    seq = "null" if event.seq is None else str(event.seq)
    return (b'{"id":%d,"seq":%s,"kind":"%s","too_large":%d}'
            % (event.id, seq.encode(), _token(event.event_type).encode(), len(event.json)))
