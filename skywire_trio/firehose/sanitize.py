"""One rule for each frame field that cannot always be stored as it was received.

The decoder (``codec``) calls these while it builds rows. Two kinds of field, two outcomes:

- Fields that say *what* the event is and *whose* it is -- ``seq``, the event type, the
  account (``repo`` / ``did``) and an op's ``path`` -- are stored exactly or not at all: a
  value that cannot be stored raises ``FrameError``, and the frame goes to the dead letters
  with its bytes and the reason. Rewriting them would file the event under another account,
  type or record, which is worse than not filing it.
- Fields that *describe* the event -- ``rev``, an op's ``action``, the event ``time`` -- are
  kept when they can be stored (an action only when it is one of the lexicon's known
  values, which the API's schema promises consumers); otherwise the column is NULL and the
  row's ``sanitized`` column says which field was changed, why, and how the original began.

Records and non-commit bodies keep their own rule (``record`` NULL, ``record_error``, the raw
block kept; see ``codec``). Invalid UTF-8 and nesting deeper than 128 levels in the frame
envelope are refused by the CBOR decoders themselves (a ``FrameError``).

The limits are far above what the protocol allows (DIDs are at most 2 KB, an NSID 317
characters, a record key 512, a TID 13) and below what PostgreSQL refuses (a btree index
entry must fit in ~2.7 KB; ``repo``, ``collection`` and ``event_type`` are indexed).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from ..identifiers import ACTIONS
from .errors import FrameError

# seq is stored in a bigint column and in the cursor; 0 and below are not upstream seqs.
MAX_SEQ = 2**63 - 1
# Event types are lexicon definition names (commit, identity, account, sync, info, ...):
# a letter, then letters and digits.
EVENT_TYPE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
KNOWN_TYPES = {f"#{name}": name for name in ("commit", "identity", "account", "sync", "info")}
MAX_DID_BYTES = 2048
MAX_PATH_BYTES = 1024
# rev (a TID) and action (create / update / delete) are short words.
MAX_WORD_CHARS = 64
# How much of a changed value a note quotes.
QUOTE_CHARS = 64


def quote(value: object) -> str:
    """The start of ``value`` as JSON text (NUL and control characters escaped)."""
    if isinstance(value, str):
        text = json.dumps(value[:QUOTE_CHARS], ensure_ascii=False)
        if len(value) > QUOTE_CHARS:
            return f"{text} (first {QUOTE_CHARS} of {len(value)} characters)"
        return text
    return f"a {type(value).__name__}"


def seq(value: object, event_type: str) -> int:
    """The upstream seq: an integer from 1 to 2^63-1, or the frame is refused."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise FrameError(f"#{event_type} without an integer seq ({quote(value)})")
    if not 0 < value <= MAX_SEQ:
        raise FrameError(f"#{event_type} seq {value} is outside 1..2^63-1")
    return value


def event_type(t: object) -> str:
    """The event type from the header's ``t`` (``#commit`` -> ``commit``), or refused."""
    if type(t) is str and t in KNOWN_TYPES:
        return KNOWN_TYPES[t]
    if not isinstance(t, str) or not t.startswith("#"):
        raise FrameError(f"frame header t is {quote(t)}, not a #type")
    if not EVENT_TYPE.fullmatch(t[1:]):
        raise FrameError(f"event type {quote(t)} is not a name of 1-64 letters and digits")
    return t[1:]


def _text_fault(value: str, max_bytes: int) -> str | None:
    if "\x00" in value:
        return "contains U+0000 (NUL)"
    # A character is at most 4 bytes of UTF-8: only long strings need encoding to tell.
    if len(value) * 4 > max_bytes and len(value.encode("utf-8")) > max_bytes:
        return f"is longer than {max_bytes} bytes"
    return None


def did(value: str, field: str) -> str:
    """An account DID (a commit's ``repo``, another event's ``did``), or the frame is refused."""
    if len(value) <= MAX_DID_BYTES // 4 and "\x00" not in value:
        return value  # the common case, first
    fault = _text_fault(value, MAX_DID_BYTES)
    if fault:
        raise FrameError(f"{field} {quote(value)} {fault}")
    return value


def path(value: str) -> tuple[str, str]:
    """An op's ``collection/rkey`` split in two, or the frame is refused."""
    fault = (_text_fault(value, MAX_PATH_BYTES)
             if len(value) > MAX_PATH_BYTES // 4 or "\x00" in value else None)
    if fault:
        raise FrameError(f"op path {quote(value)} {fault}")
    collection, _, rkey = value.partition("/")
    return collection, rkey


# Notes are plain lists of strings: a frame's list, copied for an op only when the op adds
# one. (A note object per frame and op cost ~0.5 us an event, ~2% of the service's CPU.)
Notes = list[str]


def note(field: str, value: object, why: str) -> str:
    """The note for ``field`` (originally ``value``) stored NULL, and why."""
    return f"{field}: {why}; stored NULL (was {quote(value)})"


def joined(notes: Notes) -> str | None:
    """The ``sanitized`` column: the notes joined, or None when nothing was changed."""
    return "; ".join(notes) if notes else None


def word(field: str, value: object, notes: Notes, required: bool = False) -> str | None:
    """``rev`` or ``action``: kept if a string of at most 64 characters without NUL.

    Missing (None) is stored as NULL, with a note only if the lexicon ``required`` it (a
    commit's ``rev``, an op's ``action``): a consumer then knows it is not an oversight.
    """
    if type(value) is str and len(value) <= MAX_WORD_CHARS and "\x00" not in value:
        return value  # the common case, first
    if value is None:
        if required:
            notes.append(f"{field}: missing; stored NULL")
    elif not isinstance(value, str):
        notes.append(note(field, value, "not a string"))
    elif len(value) > MAX_WORD_CHARS:
        notes.append(note(field, value, f"is longer than {MAX_WORD_CHARS} characters"))
    else:
        notes.append(note(field, value, "contains U+0000 (NUL)"))
    return None


def action(value: object, notes: Notes) -> str | None:
    """An op's ``action``: kept if it is ``create``, ``update`` or ``delete``.

    The lexicon lists these as known values, and ``/openapi.json`` and Jetstream's clients
    treat ``operation`` as that enum; anything else is stored NULL with a note that keeps
    how it began.
    """
    if value in ACTIONS:
        return value  # type: ignore[return-value]  # one of three str constants
    kept = word("action", value, notes, required=True)
    if kept is not None:
        notes.append(note("action", kept, f"is not one of {', '.join(ACTIONS)}"))
    return None


def event_time(value: object, notes: Notes) -> datetime | None:
    """The event's ``time`` in UTC, if it is an ISO 8601 time with an offset that fits.

    Times are converted to UTC here: ``0001-01-01T00:00:00+14:00`` and
    ``9999-12-31T23:59:59-14:00`` parse but have no UTC equivalent in years 1-9999.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        notes.append(note("time", value, "not a string"))
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        notes.append(note("time", value, "not an ISO 8601 time"))
        return None
    if parsed.tzinfo is UTC:  # "...Z", as upstreams send it
        return parsed
    if parsed.tzinfo is None:
        notes.append(note("time", value, "has no UTC offset"))
        return None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        notes.append(note("time", value, "outside years 1-9999 in UTC"))
        return None
