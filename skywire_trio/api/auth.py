"""API tokens: generation, keyed hashing, scopes and per-token rate limits.

Tokens are 256 random bits, shown once; the database keeps only HMAC-SHA256(salt, token),
so a leaked table yields nothing usable without the salt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets

import trio

from ..types import EventFilter, Token
from .errors import ApiError

TOKEN_PREFIX = "swt_"
_TOKEN_RE = re.compile(r"swt_[A-Za-z0-9_-]{43}")


def new_token() -> str:
    """A fresh random token (256 bits of entropy)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(salt: str, token: str) -> bytes:
    """The keyed hash stored for ``token``."""
    return hmac.new(salt.encode(), token.encode(), hashlib.sha256).digest()


def bearer_token(header: str | None) -> str:
    """The token in an ``Authorization: Bearer`` header, or a 401."""
    if not header:
        raise ApiError(401, "missing_token", "send Authorization: Bearer <token>")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _TOKEN_RE.fullmatch(token):
        raise ApiError(401, "malformed_token",
                       "the Authorization header is not a valid bearer token")
    return token


def check_token(stored: Token | None, presented_hash: bytes) -> Token:
    """The token if it exists, matches and is not revoked; otherwise a 401."""
    # The look-up was by hash; compare again in constant time so no code path depends on
    # a byte-by-byte comparison of secrets.
    if stored is None or not hmac.compare_digest(stored.token_hash, presented_hash):
        raise ApiError(401, "unknown_token", "this token is not known")
    if stored.revoked:
        raise ApiError(401, "revoked_token", "this token has been revoked")
    return stored


def _covered(collection: str, scope: tuple[str, ...]) -> bool:
    """Whether a requested NSID or ``prefix.*`` lies inside the scope's collections."""
    for allowed in scope:
        if allowed.endswith(".*"):
            if collection.removesuffix("*").startswith(allowed[:-1]):
                return True
        elif not collection.endswith(".*") and collection == allowed:
            return True
    return False


def _outside(kind: str, value: str) -> ApiError:
    return ApiError(403, "out_of_scope", f"{kind} {value[:100]} is outside this token's scope")


def narrow(requested: EventFilter, requested_collections: tuple[str, ...], token: Token
           ) -> tuple[EventFilter, tuple[str, ...]]:
    """Apply a token's scope: 403 outside it; an absent filter becomes the scope.

    ``requested_collections`` are the collection filters as the client wrote them (exact
    NSIDs and ``prefix.*``); returns the filter and the effective collection list.
    """
    collections = requested_collections
    if token.collections:
        outside = [c for c in collections if not _covered(c, token.collections)]
        if outside:
            raise _outside("collection", outside[0])
        collections = collections or token.collections
    event_types, repos = requested.event_types, requested.repos
    if token.event_types:
        outside = [t for t in event_types if t not in token.event_types]
        if outside:
            raise _outside("event_type", outside[0])
        event_types = event_types or token.event_types
    if token.repos:
        outside = [r for r in repos if r not in token.repos]
        if outside:
            raise _outside("repo", outside[0])
        repos = repos or token.repos
    return dataclasses.replace(requested, event_types=event_types, repos=repos), collections


class RateLimiter:
    """Token buckets per API token: ``rate`` requests a second, bursts up to ``rate``."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, name: str, rate: int) -> None:
        """Take one request from ``name``'s bucket, or raise a 429 with Retry-After."""
        now = trio.current_time()
        level, stamp = self._buckets.get(name, (float(rate), now))
        level = min(float(rate), level + (now - stamp) * rate)
        if level < 1.0:
            self._buckets[name] = (level, now)
            retry = max(1, int((1.0 - level) / rate + 0.999))
            raise ApiError(429, "rate_limited", f"more than {rate} requests per second",
                           {"Retry-After": str(retry)})
        self._buckets[name] = (level - 1.0, now)


# Failed authentications allowed per client address: a burst, then a steady rate. A bad
# token costs a pool connection and a query; 238 a second slowed everyone else to 99 ms.
AUTH_FAILURE_BURST = 20
AUTH_FAILURE_RATE = 5.0
# Addresses tracked before the ones whose allowance has refilled are forgotten.
MAX_TRACKED_ADDRESSES = 10_000


class FailureLimiter:
    """Failed authentications per client address; over the allowance, a 429 before any work.

    Only failures are counted, so an address that presents valid tokens is never limited,
    however many requests it makes at once. A burst of concurrent bad attempts can pass the
    check together, but each of their failures is counted and the allowance goes negative:
    the address then waits until it has refilled, so over time it gets no more than the
    rate. Behind a reverse proxy every client shares the proxy's address (see
    docs/operations.md).
    """

    def __init__(self, rate: float = AUTH_FAILURE_RATE, burst: int = AUTH_FAILURE_BURST) -> None:
        self._rate, self._burst = rate, float(burst)
        self._levels: dict[str, tuple[float, float]] = {}

    def _level(self, address: str, now: float) -> float:
        level, stamp = self._levels.get(address, (self._burst, now))
        return min(self._burst, level + (now - stamp) * self._rate)

    def check(self, address: str) -> None:
        """Raise a 429 with Retry-After if ``address`` has used up its failures."""
        level = self._level(address, trio.current_time())
        if level < 1.0:
            retry = max(1, int((1.0 - level) / self._rate + 0.999))
            raise ApiError(429, "too_many_failures",
                           "too many failed authentications from this address",
                           {"Retry-After": str(retry)})

    def failed(self, address: str) -> None:
        """Count one failed authentication from ``address``."""
        now = trio.current_time()
        self._levels[address] = (self._level(address, now) - 1.0, now)
        if len(self._levels) > MAX_TRACKED_ADDRESSES:
            self._levels = {a: (level, stamp) for a, (level, stamp) in self._levels.items()
                            if self._level(a, now) < self._burst}

    @property
    def tracked(self) -> int:
        """How many addresses are being tracked."""
        return len(self._levels)
