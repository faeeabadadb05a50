"""Webhook subscriptions and their dead letters in the log's database.

The command line creates, lists and changes subscriptions here (synchronous, psycopg); the
delivery task reads them and saves its progress through ``DeliveryStore`` (async, pooled).
Each subscription's ``cursor`` is saved only after its receiver acknowledged; the batch in
flight is saved *before* it is sent, so a restart re-sends it under the same webhook-id.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg
import trio
import triopg

from ..types import DeadLetter, PendingBatch, Subscription
from .schema import conninfo

_COLUMNS = ("id, name, url, collections, event_types, repos, actions, jmespath, batch_size, "
            "secret, on_exhausted, state, cursor, pending_id, pending_after, pending_upto, "
            "pending_attempts, pending_since")
_DEAD_COLUMNS = ("id, subscription_id, webhook_id, after_id, upto_id, event_count, body, "
                 "attempts, last_status, last_error")
_HEAD = "(SELECT coalesce(max(last_id), 0) FROM firehose_cursor)"


# Progress of many subscriptions in one statement (see DeliveryStore._progress).
_PROGRESS = """
UPDATE webhook_subscriptions s SET cursor = v.cursor, pending_id = v.pending_id,
    pending_after = v.pending_after, pending_upto = v.pending_upto,
    pending_attempts = v.attempts, pending_since = v.since,
    delivered_events = s.delivered_events + v.events,
    delivered_batches = s.delivered_batches + v.batches,
    last_delivery_at = CASE WHEN v.batches > 0 THEN now() ELSE s.last_delivery_at END
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[],
            $6::integer[], $7::timestamptz[], $8::bigint[], $9::bigint[])
    AS v(id, cursor, pending_id, pending_after, pending_upto, attempts, since, events, batches)
WHERE s.id = v.id"""


@dataclasses.dataclass(frozen=True)
class _Progress:
    """A subscription's position: its cursor, the batch in flight (if any), new counts."""

    subscription_id: int
    cursor: int
    pending: PendingBatch | None
    events: int
    batches: int


class UnknownSubscription(LookupError):
    """No subscription has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"no subscription named {name!r}")


def _subscription(row: Sequence[object]) -> Subscription:
    (id_, name, url, collections, event_types, repos, actions, jmespath, batch_size, secret,
     on_exhausted, state, cursor, pending_id, pending_after, pending_upto, attempts,
     since) = row
    pending = None
    if pending_id is not None:
        pending = PendingBatch(str(pending_id), int(pending_after), int(pending_upto),
                               int(attempts), since)
    return Subscription(int(id_), str(name), str(url), tuple(collections), tuple(event_types),
                        tuple(repos), tuple(actions), jmespath, int(batch_size), str(secret),
                        str(on_exhausted), str(state), int(cursor), pending)


def _dead_letter(row: Sequence[object]) -> DeadLetter:
    (id_, subscription_id, webhook_id, after_id, upto_id, count, body, attempts, status,
     error) = row
    return DeadLetter(int(id_), int(subscription_id), str(webhook_id), int(after_id),
                      int(upto_id), int(count), bytes(body), int(attempts), status, error)


def _connect(database_url: str) -> psycopg.Connection:
    return psycopg.connect(conninfo(database_url), autocommit=True)


def start_cursor(database_url: str, start: str) -> int:
    """The cursor for ``--start``: ``latest`` (the head), ``oldest`` or the first id wanted."""
    with _connect(database_url) as conn:
        if start == "latest":
            return conn.execute(f"SELECT {_HEAD}").fetchone()[0]
        if start == "oldest":
            oldest = conn.execute("SELECT min(id) FROM firehose_events").fetchone()[0]
            return 0 if oldest is None else oldest - 1
    return int(start) - 1


def create_subscription(database_url: str, *, name: str, url: str,
                        collections: Sequence[str], event_types: Sequence[str],
                        repos: Sequence[str], actions: Sequence[str], jmespath: str | None,
                        batch_size: int, secret: str, on_exhausted: str,
                        cursor: int) -> Subscription:
    """Store a new subscription; raises ``ValueError`` if the name is taken."""
    with _connect(database_url) as conn:
        try:
            row = conn.execute(
                "INSERT INTO webhook_subscriptions (name, url, collections, event_types, repos, "
                "actions, jmespath, batch_size, secret, on_exhausted, cursor) VALUES "
                f"(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
                (name, url, list(collections), list(event_types), list(repos), list(actions),
                 jmespath, batch_size, secret, on_exhausted, cursor)).fetchone()
        except psycopg.errors.UniqueViolation:
            raise ValueError(f"a subscription named {name!r} already exists") from None
    return _subscription(row)


def list_subscriptions(database_url: str) -> list[dict[str, object]]:
    """Every subscription with its cursor, lag (events, seconds), state and last error."""
    with _connect(database_url) as conn:
        cur = conn.execute(
            "SELECT name, url, state, cursor, greatest(h.head - cursor, 0) AS lag_events, "
            "CASE WHEN cursor >= h.head THEN 0 ELSE round(extract(epoch FROM now() - ("
            "SELECT indexed_at FROM firehose_events e WHERE e.id = s.cursor + 1))::numeric, 3) "
            "END AS lag_seconds, collections, event_types, repos, actions, jmespath, "
            "batch_size, on_exhausted, pending_id, pending_attempts, delivered_events, "
            "delivered_batches, failed_attempts, dead_lettered, skipped_events, last_status, "
            "last_error, last_error_at, last_delivery_at, created_at "
            f"FROM webhook_subscriptions s, (SELECT {_HEAD} AS head) h ORDER BY name")
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def set_state(database_url: str, name: str, state: str) -> None:
    """Pause, resume (``active``) or disable a subscription; raises ``UnknownSubscription``.

    Resuming gives a batch that was waiting its full number of attempts again.
    """
    with _connect(database_url) as conn:
        cur = conn.execute(
            "UPDATE webhook_subscriptions SET state = %s, updated_at = now(), "
            "pending_attempts = CASE WHEN %s = 'active' THEN 0 ELSE pending_attempts END, "
            "pending_since = CASE WHEN %s = 'active' AND pending_id IS NOT NULL THEN now() "
            "ELSE pending_since END WHERE name = %s", (state, state, state, name))
        if cur.rowcount != 1:
            raise UnknownSubscription(name)


def delete_subscription(database_url: str, name: str) -> None:
    """Delete a subscription and its dead letters; raises ``UnknownSubscription``."""
    with _connect(database_url) as conn:
        cur = conn.execute("DELETE FROM webhook_subscriptions WHERE name = %s", (name,))
        if cur.rowcount != 1:
            raise UnknownSubscription(name)


def list_dead_letters(database_url: str, name: str | None = None) -> list[dict[str, object]]:
    """Dead letters (oldest first), of one subscription or all; never their bodies."""
    with _connect(database_url) as conn:
        if name is not None and conn.execute(
                "SELECT 1 FROM webhook_subscriptions WHERE name = %s", (name,)).fetchone() is None:
            raise UnknownSubscription(name)
        cur = conn.execute(
            "SELECT d.id, s.name AS subscription, d.webhook_id, d.after_id + 1 AS from_id, "
            "d.upto_id AS to_id, d.event_count, d.attempts, d.last_status, d.last_error, "
            "d.created_at, d.retry_requested_at FROM webhook_dead_letters d "
            "JOIN webhook_subscriptions s ON s.id = d.subscription_id "
            "WHERE %s::text IS NULL OR s.name = %s ORDER BY d.id", (name, name))
        names = [c.name for c in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def request_retry(database_url: str, name: str, dead_letter_id: int | None) -> int:
    """Ask the service to re-send one dead letter of ``name`` (or all: ``None``).

    Returns how many were queued; raises ``UnknownSubscription`` or ``LookupError``.
    """
    with _connect(database_url) as conn:
        found = conn.execute("SELECT id FROM webhook_subscriptions WHERE name = %s",
                             (name,)).fetchone()
        if found is None:
            raise UnknownSubscription(name)
        cur = conn.execute(
            "UPDATE webhook_dead_letters SET retry_requested_at = now() "
            "WHERE subscription_id = %s AND (%s::bigint IS NULL OR id = %s)",
            (found[0], dead_letter_id, dead_letter_id))
        if dead_letter_id is not None and cur.rowcount == 0:
            raise LookupError(f"subscription {name!r} has no dead letter {dead_letter_id}")
        return cur.rowcount


class DeliveryStore:
    """What the delivery task reads and writes: subscriptions, progress, dead letters."""

    def __init__(self, pool: triopg._triopg.TrioPoolProxy) -> None:
        self._pool = pool
        self._queued: list[tuple[_Progress, trio.Event]] = []
        self._wake = trio.Event()
        self._failure: BaseException | None = None

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[triopg._triopg.TrioConnectionProxy]:
        # Shielded: a pause or shutdown must not cut a write short (each is one statement
        # or transaction, bounded by command_timeout), or leave its connection mid-query.
        with trio.CancelScope(shield=True):
            async with self._pool.acquire() as conn:
                yield conn

    async def active_subscriptions(self) -> list[Subscription]:
        """Every subscription whose state is ``active``."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(f"SELECT {_COLUMNS} FROM webhook_subscriptions "
                                    "WHERE state = 'active' ORDER BY id")
        return [_subscription(tuple(row)) for row in rows]

    async def begin_batch(self, subscription_id: int, cursor: int, batch: PendingBatch,
                          events: int, batches: int) -> None:
        """Save the batch about to be sent, with the cursor and counts delivered before it.

        One write per batch: the previous batch's acknowledgement is saved here, with the
        next one, rather than in a write of its own.
        """
        await self._progress(_Progress(subscription_id, cursor, batch, events, batches))

    async def save_cursor(self, subscription_id: int, cursor: int, events: int,
                          batches: int) -> None:
        """Save the cursor (nothing in flight) and the counts delivered since the last save."""
        await self._progress(_Progress(subscription_id, cursor, None, events, batches))

    async def _progress(self, write: _Progress) -> None:
        # Every subscription saves progress once per batch: the writes queued while one
        # statement runs go together in the next (one transaction, one WAL flush), so a
        # hundred subscriptions do not wait for a hundred commits in turn.
        done = trio.Event()
        self._queued.append((write, done))
        self._wake.set()
        await done.wait()
        if self._failure is not None:
            raise self._failure

    async def write_progress(self, *,
                             task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                             ) -> None:
        """Run the progress writes queued by ``begin_batch``/``save_cursor`` until cancelled."""
        task_status.started()
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            queued, self._queued = self._queued, []
            merged: dict[int, _Progress] = {}
            for write, _ in queued:  # the latest state of each subscription, counts summed
                earlier = merged.get(write.subscription_id)
                if earlier is not None:
                    write = dataclasses.replace(write, events=write.events + earlier.events,
                                                batches=write.batches + earlier.batches)
                merged[write.subscription_id] = write
            writes = list(merged.values())
            try:
                async with self._write() as conn:
                    await conn.execute(
                        _PROGRESS, [w.subscription_id for w in writes],
                        [w.cursor for w in writes],
                        [w.pending.webhook_id if w.pending else None for w in writes],
                        [w.pending.after_id if w.pending else None for w in writes],
                        [w.pending.upto_id if w.pending else None for w in writes],
                        [w.pending.attempts if w.pending else 0 for w in writes],
                        [w.pending.since if w.pending else None for w in writes],
                        [w.events for w in writes], [w.batches for w in writes])
            except BaseException as exc:
                # The waiting workers fail with it; this task ends the delivery tree.
                self._failure = exc if isinstance(exc, Exception) else RuntimeError(
                    "the progress writer stopped")
                raise
            finally:
                for _, done in queued:
                    done.set()

    async def record_failure(self, subscription_id: int, attempts: int, status: int | None,
                             error: str) -> None:
        """A failed attempt of the batch in flight: its count and what went wrong."""
        async with self._write() as conn:
            await conn.execute(
                "UPDATE webhook_subscriptions SET pending_attempts = $2, last_status = $3, "
                "last_error = $4, last_error_at = now(), failed_attempts = failed_attempts + 1 "
                "WHERE id = $1", subscription_id, attempts, status, error)

    async def record_skip(self, subscription_id: int, cursor: int, skipped: int) -> None:
        """Retention dropped ``skipped`` events before they were delivered: move past them."""
        async with self._write() as conn:
            await conn.execute(
                "UPDATE webhook_subscriptions SET cursor = greatest(cursor, $2), "
                "skipped_events = skipped_events + $3, pending_id = NULL, pending_after = NULL, "
                "pending_upto = NULL, pending_attempts = 0, pending_since = NULL, "
                "last_error = $4, last_error_at = now() WHERE id = $1", subscription_id,
                cursor, skipped, f"retention dropped {skipped} events before delivery")

    async def dead_letter(self, subscription_id: int, batch: PendingBatch, event_count: int,
                          body: bytes, status: int | None, error: str) -> None:
        """Move the batch in flight to the dead letters and the cursor past it, atomically."""
        async with self._write() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO webhook_dead_letters (subscription_id, webhook_id, after_id, "
                "upto_id, event_count, body, attempts, last_status, last_error) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", subscription_id,
                batch.webhook_id, batch.after_id, batch.upto_id, event_count, body,
                batch.attempts, status, error)
            await conn.execute(
                "UPDATE webhook_subscriptions SET cursor = greatest(cursor, $2), "
                "pending_id = NULL, pending_after = NULL, pending_upto = NULL, "
                "pending_attempts = 0, pending_since = NULL, dead_lettered = dead_lettered + 1 "
                "WHERE id = $1", subscription_id, batch.upto_id)

    async def stop(self, subscription_id: int, state: str, status: int | None,
                   error: str) -> None:
        """Pause or disable a subscription from the delivery side (the batch stays saved)."""
        async with self._write() as conn:
            await conn.execute(
                "UPDATE webhook_subscriptions SET state = $2, last_status = $3, "
                "last_error = $4, last_error_at = now(), updated_at = now() WHERE id = $1",
                subscription_id, state, status, error)

    async def with_requested_retries(self) -> set[int]:
        """Subscriptions that have dead letters an operator asked to re-send."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch("SELECT DISTINCT subscription_id FROM webhook_dead_letters "
                                    "WHERE retry_requested_at IS NOT NULL")
        return {int(row[0]) for row in rows}

    async def requested_dead_letters(self, subscription_id: int) -> list[DeadLetter]:
        """Dead letters an operator asked to re-send, oldest first."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                f"SELECT {_DEAD_COLUMNS} FROM webhook_dead_letters WHERE subscription_id = $1 "
                "AND retry_requested_at IS NOT NULL ORDER BY id", subscription_id)
        return [_dead_letter(tuple(row)) for row in rows]

    async def dead_letter_delivered(self, dead_letter: DeadLetter) -> None:
        """A re-sent dead letter was acknowledged: it is gone."""
        async with self._write() as conn:
            await conn.execute(
                "WITH gone AS (DELETE FROM webhook_dead_letters WHERE id = $1 RETURNING 1) "
                "UPDATE webhook_subscriptions SET delivered_events = delivered_events + $3, "
                "delivered_batches = delivered_batches + 1, last_delivery_at = now() "
                "WHERE id = $2 AND EXISTS (SELECT 1 FROM gone)", dead_letter.id,
                dead_letter.subscription_id, dead_letter.event_count)

    async def dead_letter_failed(self, dead_letter: DeadLetter, attempts: int,
                                 status: int | None, error: str) -> None:
        """A re-sent dead letter failed again: it stays, no longer queued for a retry."""
        async with self._write() as conn:
            await conn.execute(
                "UPDATE webhook_dead_letters SET attempts = attempts + $2, last_status = $3, "
                "last_error = $4, retry_requested_at = NULL WHERE id = $1", dead_letter.id,
                attempts, status, error)


async def _keep(conn: object) -> None:
    """Pooled connections hold no session state: skip asyncpg's reset query."""


@asynccontextmanager
async def open_delivery_store(database_url: str, size: int = 4) -> AsyncIterator[DeliveryStore]:
    """A small pool for the delivery task's writes, and the task that groups them."""
    # Lifetimes 0, as in the read pool (log/reader.py): each would arm a 300 s timer per
    # release or cached statement, and a few hundred dead timers sat in memory at any time.
    async with triopg.create_pool(database_url, min_size=1, max_size=size,
                                  command_timeout=10, reset=_keep,
                                  max_inactive_connection_lifetime=0,
                                  max_cached_statement_lifetime=0) as pool, \
            trio.open_nursery() as nursery:
        store = DeliveryStore(pool)
        await nursery.start(store.write_progress)
        yield store
        nursery.cancel_scope.cancel()
