"""What a filter or a token's scope may name: NSIDs, NSID prefixes, DIDs, event types,
actions. One set of rules, used by the API's query parameters, the ``tokens`` command and
the readers that take filters from their clients. No I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

EVENT_TYPES = ("commit", "identity", "account", "sync", "info")
ACTIONS = ("create", "update", "delete")
MAX_VALUES = 100  # per filter kind (collections, repos, event types)
_NSID = re.compile(r"[a-zA-Z]([a-zA-Z0-9-]{0,62})(\.[a-zA-Z0-9-]{1,63}){2,}")
_NSID_PREFIX = re.compile(r"[a-zA-Z]([a-zA-Z0-9-]{0,62})(\.[a-zA-Z0-9-]{1,63})*\.\*")
_DID = re.compile(r"did:[a-z]+:[a-zA-Z0-9._:%-]{1,2000}")


def valid_collection(value: str) -> bool:
    """An NSID (``app.bsky.feed.post``) or an NSID prefix ending in ``.*``."""
    return bool(_NSID.fullmatch(value) or _NSID_PREFIX.fullmatch(value)) and len(value) <= 317


def valid_did(value: str) -> bool:
    """A DID (``did:method:identifier``)."""
    return bool(_DID.fullmatch(value))


def like_pattern(prefix: str) -> str:
    """``app.bsky.*`` -> the LIKE pattern ``app.bsky.%`` (LIKE metacharacters escaped)."""
    stem = prefix[:-1]
    return stem.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def split_collections(collections: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Exact NSIDs, and LIKE patterns for the ``prefix.*`` entries."""
    exact = tuple(c for c in collections if not c.endswith(".*"))
    prefixes = tuple(like_pattern(c) for c in collections if c.endswith(".*"))
    return exact, prefixes


def check_scope(collections: Sequence[str], event_types: Sequence[str],
                repos: Sequence[str]) -> None:
    """Raise ``ValueError`` naming the first value a token's scope may not hold."""
    for name, values in (("collection", collections), ("event_type", event_types),
                         ("repo", repos)):
        if len(set(values)) > MAX_VALUES:
            raise ValueError(f"at most {MAX_VALUES} {name} values")
    bad = [c for c in collections if not valid_collection(c)]
    if bad:
        raise ValueError(f"collection {bad[0][:100]!r} is not an NSID or an NSID prefix "
                         "ending in .*")
    bad = [t for t in event_types if t not in EVENT_TYPES]
    if bad:
        raise ValueError(f"event_type must be one of {', '.join(EVENT_TYPES)}")
    bad = [r for r in repos if not valid_did(r)]
    if bad:
        raise ValueError(f"repo {bad[0][:100]!r} is not valid")
