"""``GET /subscribe``: the log as a Jetstream-compatible websocket.

A subscriber names what it wants with Jetstream's query parameters (``wantedCollections``,
``wantedDids``, ``cursor`` in unix microseconds, ``maxMessageSizeBytes``, ``requireHello``)
or our own (``since=<id>``, ``wantedKinds``), and may change its filters later with
Jetstream's ``options_update`` message. It receives the same JSON objects as ``/events``,
one per text message, in id order: first what the log already holds (read in pages), then
what is committed while it is connected (from the shared ``CommitFeed``, matched in
memory, so a thousand live subscribers cost one read per commit).

Every subscriber has a bounded buffer: the feed's channel. One that cannot keep up is cut
off from the feed and goes back to reading pages from the log; one that, after it has been
live, is sending events committed more than ``max_lag`` seconds ago, or whose client reads
nothing for ``stall_seconds``, is closed with 4408 ``consumer_too_slow``. Errors before the upgrade
are HTTP answers like ``/events``' (400, 401, 403, 429, 503); after it, close codes
(the constants below; the table in docs/consumers.md).
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import logging
import math
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import TYPE_CHECKING

import trio
from quart import websocket
from quart_trio import QuartTrio

from ..config import Settings
from ..identifiers import EVENT_TYPES, split_collections, valid_collection, valid_did
from ..log.notify import CommitBatch
from ..log.reader import ReadSession
from ..types import COLLECTION_EXEMPT, EventFilter, LogEvent, Token
from . import auth
from .errors import DB_ERRORS, ApiError
from .params import MAX_ID, bad_request, single
from .ws_writer import MessageWriter, frames

if TYPE_CHECKING:
    from .app import ApiState

log = logging.getLogger(__name__)

Authenticate = Callable[[ReadSession, str], Awaitable[Token]]

# The kinds Jetstream sends; real Jetstream clients reject others, so the rest (sync,
# info) only go to subscribers that ask for them with wantedKinds.
JETSTREAM_KINDS = ("commit", "identity", "account")
KINDS = EVENT_TYPES
MAX_COLLECTIONS = 100  # Jetstream's limits
MAX_DIDS = 10_000
# A client message (options_update) of more characters is refused with 1009. Hypercorn
# itself closes with 1009 (no reason) above its own websocket_max_message_size (16 MiB).
MAX_CLIENT_MESSAGE = 1024 * 1024
MAX_MESSAGE_SIZE = 2**32 - 1  # maxMessageSizeBytes is a uint32 in Jetstream
PAGE_SIZE = 500  # events per page while catching up from the log
INDEXED_BATCHES = 256  # batches whose by-collection index is kept
# One write to the socket carries at most this many events or about this many bytes:
# the stall bound is about one write, so a client that reads even slowly finishes one
# well within it.
WRITE_EVENTS = 256
WRITE_BYTES = 64 * 1024
FRAMED_WRITES = 512  # live writes kept framed for the next subscriber with the same filter
_KNOWN = {"wantedCollections", "wantedDids", "cursor", "maxMessageSizeBytes", "requireHello",
          "compress", "since", "wantedKinds", "token"}

# Close codes after the upgrade: 4000 + the HTTP status the same problem gets before it.
BAD_REQUEST = 4400
UNAUTHORIZED = 4401
FORBIDDEN = 4403
TOO_SLOW = 4408
RATE_LIMITED = 4429
UNAVAILABLE = 4503
MESSAGE_TOO_BIG = 1009


@dataclasses.dataclass(frozen=True)
class Limits:
    """The per-service bounds of /subscribe (``Settings.subscribe_*`` says what each is)."""

    max_connections: int
    # Once live, a subscriber is closed when the event it is sending was committed more
    # than this many seconds ago (it reads, but slower than the log grows) ...
    max_lag: float
    # ... or when one write has waited this long for a client that reads nothing.
    stall_seconds: float
    # Committed batches a live subscriber may have waiting: its buffer (a batch is what
    # one commit wrote, ~50 events at 500 events/s). Past it: back to reading pages.
    buffer_batches: int
    token_recheck: float  # seconds between checks that the token was not revoked

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Limits:
        """The limits configured for the service (the defaults without ``settings``)."""
        settings = settings or Settings()
        return cls(settings.subscribe_max_connections, settings.subscribe_max_lag,
                   settings.subscribe_stall_seconds, settings.subscribe_buffer,
                   settings.subscribe_token_recheck)


@dataclasses.dataclass(frozen=True)
class Options:
    """What a subscriber wants: the filter (``since``/``limit`` unused) and a size cap."""

    filter: EventFilter
    max_message_size: int  # 0: no cap; larger events are skipped, as Jetstream does


@dataclasses.dataclass(frozen=True)
class Subscription:
    """A validated /subscribe request, before the token's scope is applied."""

    collections: tuple[str, ...]
    dids: tuple[str, ...]
    kinds: tuple[str, ...]  # empty: Jetstream's kinds
    max_message_size: int
    since: int | None  # the id to start after; None: from cursor_us, or live
    cursor_us: int | None
    require_hello: bool
    token: str | None


def _integer(raw: str | None, name: str, high: int) -> int | None:
    if raw is None:
        return None
    if not re.fullmatch(r"[0-9]{1,19}", raw) or int(raw) > high:
        raise bad_request(f"{name} must be an integer from 0 to {high}")
    return int(raw)


def _boolean(raw: str | None, name: str) -> bool:
    if raw not in (None, "true", "false"):
        raise bad_request(f"{name} must be true or false")
    return raw == "true"


def _collections(values: Sequence[object]) -> tuple[str, ...]:
    collections = tuple(dict.fromkeys(values))
    if len(collections) > MAX_COLLECTIONS:
        raise bad_request(f"at most {MAX_COLLECTIONS} wantedCollections")
    for value in collections:
        if not isinstance(value, str) or not valid_collection(value):
            raise bad_request(f"wantedCollections {str(value)[:100]!r} is not an NSID or an NSID "
                       "prefix ending in .*")
    return collections  # type: ignore[return-value]


def _dids(values: Sequence[object]) -> tuple[str, ...]:
    dids = tuple(dict.fromkeys(values))
    if len(dids) > MAX_DIDS:
        raise bad_request(f"at most {MAX_DIDS} wantedDids")
    for value in dids:
        if not isinstance(value, str) or not valid_did(value):
            raise bad_request(f"wantedDids {str(value)[:100]!r} is not a DID")
    return dids  # type: ignore[return-value]


def parse_subscription(args: Mapping[str, Sequence[str]]) -> Subscription:
    """Validate the query string of /subscribe (``args``: each name's values)."""
    unknown = sorted(set(args) - _KNOWN)
    if unknown:
        raise bad_request(f"unknown parameter {unknown[0][:100]!r}")
    if _boolean(single(args, "compress"), "compress"):
        raise bad_request("compress=true (zstd) is not supported: leave it out for JSON text")
    kinds = tuple(dict.fromkeys(args.get("wantedKinds") or []))
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise bad_request(f"wantedKinds must be among {', '.join(KINDS)}")
    since = _integer(single(args, "since"), "since", MAX_ID)
    cursor = _integer(single(args, "cursor"), "cursor", MAX_ID)
    if since is not None and cursor is not None:
        raise bad_request("give cursor (a time) or since (an id), not both")
    if cursor is not None and cursor > _now_us():
        cursor = None  # a cursor in the future means live, as on Jetstream
    return Subscription(
        collections=_collections(args.get("wantedCollections") or []),
        dids=_dids(args.get("wantedDids") or []),
        kinds=kinds,
        max_message_size=_integer(single(args, "maxMessageSizeBytes"), "maxMessageSizeBytes",
                                  MAX_MESSAGE_SIZE) or 0,
        since=since,
        cursor_us=cursor,
        require_hello=_boolean(single(args, "requireHello"), "requireHello"),
        token=single(args, "token"),
    )


def parse_options_update(message: str) -> tuple[tuple[str, ...], tuple[str, ...], int] | None:
    """The collections, DIDs and size cap of an ``options_update``; None for other types.

    Like Jetstream: other message types are ignored; absent fields mean "all" and "no cap".
    """
    try:
        parsed = json.loads(message)
    except ValueError:
        raise bad_request("a client message must be JSON") from None
    if not isinstance(parsed, dict):
        raise bad_request("a client message must be a JSON object with a type")
    if parsed.get("type") != "options_update":
        return None
    payload = parsed.get("payload")
    if not isinstance(payload, dict):
        raise bad_request("options_update needs a payload object")
    collections = payload.get("wantedCollections") or []
    dids = payload.get("wantedDids") or []
    size = payload.get("maxMessageSizeBytes") or 0
    if not isinstance(collections, list) or not isinstance(dids, list):
        raise bad_request("wantedCollections and wantedDids must be lists")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_MESSAGE_SIZE:
        raise bad_request(f"maxMessageSizeBytes must be an integer from 0 to {MAX_MESSAGE_SIZE}")
    return _collections(collections), _dids(dids), size


def scoped_options(collections: tuple[str, ...], dids: tuple[str, ...],
                   kinds: tuple[str, ...], max_message_size: int, token: Token) -> Options:
    """The options within ``token``'s scope, exactly as /events narrows (403 outside it).

    Without ``wantedKinds`` a subscriber gets Jetstream's kinds, within the token's scope.
    """
    if not kinds:
        kinds = tuple(k for k in JETSTREAM_KINDS
                      if not token.event_types or k in token.event_types)
        if not kinds:
            raise ApiError(403, "out_of_scope", "this token's scope has none of the kinds "
                           f"Jetstream sends ({', '.join(JETSTREAM_KINDS)}); ask for "
                           "wantedKinds explicitly")
    requested = EventFilter(repos=dids, event_types=kinds)
    narrowed, scoped = auth.narrow(requested, collections, token)
    exact, prefixes = split_collections(scoped)
    return Options(dataclasses.replace(narrowed, collections=exact, prefixes=prefixes),
                   max_message_size)


def _now_us() -> int:
    now = datetime.now(UTC)
    return int(now.timestamp()) * 1_000_000 + now.microsecond


def _time_of(time_us: int) -> datetime:
    """Unix microseconds as an exact datetime (a float would lose microseconds)."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_us)


def _close_reason(code: str, message: str) -> str:
    """``code: message`` within the 123 bytes a close frame allows."""
    return f"{code}: {message}".encode()[:123].decode(errors="ignore")


def _wanted(event: LogEvent, options: Options) -> bool:
    return options.filter.matches(event) and not (
        options.max_message_size and len(event.json) > options.max_message_size)


def _on_exact_collections(event_filter: EventFilter) -> bool:
    """Whether the filter names collections, and only exact ones (the index serves it)."""
    return bool(event_filter.collections) and not event_filter.prefixes


class _ByCollection:
    """One committed batch's events by collection, built once for every subscriber."""

    def __init__(self, events: list[LogEvent]) -> None:
        self.collections: dict[str | None, list[LogEvent]] = {}
        self.exempt: list[LogEvent] = []  # identity and account: they pass collections
        for event in events:
            if event.event_type in COLLECTION_EXEMPT:
                self.exempt.append(event)
            else:
                self.collections.setdefault(event.collection, []).append(event)

    def has_any(self, collections: tuple[str, ...]) -> bool:
        """Whether ``select(collections)`` would give any event."""
        return bool(self.exempt) or any(c in self.collections for c in collections)

    def select(self, collections: tuple[str, ...]) -> Iterable[LogEvent]:
        """The events a filter on exactly these collections can want, in id order."""
        lists = [self.collections[c] for c in collections if c in self.collections]
        if self.exempt:
            lists.append(self.exempt)
        if len(lists) == 1:
            return lists[0]
        return heapq.merge(*lists, key=attrgetter("id"))


@dataclasses.dataclass
class _TokenCheck:
    """One look at a token's revocation, shared by the subscribers that hold the token."""

    at: float
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    revoked: bool = False


class _Hub:
    """What the subscribers of one app share: the state, the limits, who is connected."""

    def __init__(self, state: ApiState, authenticate: Authenticate) -> None:
        self.state = state
        self.authenticate = authenticate
        self.limits = state.subscribe_limits
        self.connections: set[Subscriber] = set()
        # The last batches' indexes, by range: a thousand subscribers on one collection
        # each pick their events instead of matching every event of every batch.
        self._indexes: OrderedDict[tuple[int, int], _ByCollection] = OrderedDict()
        # The last live writes, framed, by selection and range: subscribers with the same
        # filter that are at the same place send the same bytes, framed once.
        self._framed: OrderedDict[tuple[object, ...], tuple[bytes, int, int]] = OrderedDict()
        # By token hash (tokens are few): subscribers connected together fall due together.
        self._token_checks: dict[bytes, _TokenCheck] = {}

    async def revoked(self, token: Token) -> bool:
        """Whether ``token`` has been revoked or deleted: one query per token at most every
        quarter of ``token_recheck``, however many subscribers hold it and ask."""
        now = trio.current_time()
        check = self._token_checks.get(token.token_hash)
        if check is not None and (not check.done.is_set()
                                  or now - check.at < self.limits.token_recheck / 4):
            await check.done.wait()  # if that look failed, its asker closes; these go on
            return check.revoked
        check = self._token_checks[token.token_hash] = _TokenCheck(now)
        try:
            async with self.state.store.session() as session:
                stored = await session.token(token.token_hash)
            check.revoked = stored is None or stored.revoked
        except BaseException:
            check.at = -math.inf  # the next asker looks again
            raise
        finally:
            check.done.set()
        return check.revoked

    def candidates(self, batch: CommitBatch, event_filter: EventFilter) -> Iterable[LogEvent]:
        """The events of ``batch`` that ``event_filter`` might want, in id order."""
        if not _on_exact_collections(event_filter):
            return batch.events
        return self._index(batch).select(event_filter.collections)

    def may_want(self, batch: CommitBatch, event_filter: EventFilter) -> bool:
        """False when no event of ``batch`` can pass ``event_filter`` (checked on exact
        collections only: a subscriber on a rare collection is not woken by every commit)."""
        if not _on_exact_collections(event_filter):
            return True
        return self._index(batch).has_any(event_filter.collections)

    def _index(self, batch: CommitBatch) -> _ByCollection:
        key = (batch.after_id, batch.last_id)
        index = self._indexes.get(key)
        if index is None:
            index = self._indexes[key] = _ByCollection(batch.events)
            if len(self._indexes) > INDEXED_BATCHES:
                self._indexes.popitem(last=False)
        return index

    def framed(self, candidates: Sequence[LogEvent], options: Options
               ) -> tuple[bytes, int, int] | None:
        """The websocket frames of what ``options`` wants of ``candidates`` (a live
        subscriber's next events), their number and the first one's ``time_us``; None when
        they exceed one write.

        The same filter over the same range of a batch always picks the same events (the
        candidates are every event of that range the filter may want), so the result is
        kept for the subscribers after the first.
        """
        f = options.filter
        key = (f.collections, f.prefixes, f.repos, f.event_types, f.action,
               options.max_message_size, candidates[0].id, candidates[-1].id, len(candidates))
        hit = self._framed.get(key)
        if hit is None:
            chosen = [event for event in candidates if _wanted(event, options)]
            if len(chosen) > WRITE_EVENTS or sum(len(e.json) for e in chosen) > WRITE_BYTES:
                return None
            hit = (frames([event.json for event in chosen]), len(chosen),
                   chosen[0].time_us if chosen else 0)
            self._framed[key] = hit
            if len(self._framed) > FRAMED_WRITES:
                self._framed.popitem(last=False)
        return hit


class Subscriber:
    """One accepted websocket: replay, then live, until closed."""

    def __init__(self, hub: _Hub, token: Token, options: Options, since: int | None,
                 kinds: tuple[str, ...], require_hello: bool) -> None:
        self._hub = hub
        self._feed = hub.state.feed
        self._socket = websocket._get_current_object()  # once: the proxy costs per call
        self._writer = MessageWriter(self._socket)
        self.token = token
        self.options = options
        self.kinds = kinds  # as asked for (empty: Jetstream's); fixed for the connection
        self.position = since  # every event up to this id has been dealt with
        self.went_live = False
        self._stats = hub.state.stats
        # While a message is being written: since when (trio clock), and its commit time.
        self._sending: tuple[float, int] | None = None
        self._hello = trio.Event()
        if not require_hello:
            self._hello.set()
        self._closing: tuple[int, str] | None = None
        self._close_requested = trio.Event()
        # Live and waiting for a batch, with none queued: the feed may write the next one
        # itself (``_deliver``).
        self._parked = False
        # The part of a write the socket did not take at once (and the first event's
        # time_us); it goes out before anything else.
        self._unsent: tuple[bytes, int] | None = None

    def _fail(self, code: int, reason: str) -> None:
        """Close with ``code`` (the first reason wins)."""
        if self._closing is None:
            self._closing = (code, reason)
            self._close_requested.set()
            if code == TOO_SLOW:
                self._stats.subscribe_too_slow += 1

    def _fail_api(self, exc: ApiError) -> None:
        self._fail(4000 + exc.status, _close_reason(exc.code, exc.message))

    async def run(self) -> None:
        """Serve until the client goes away or a bound closes it."""
        async with trio.open_nursery() as nursery:
            work = trio.CancelScope()
            nursery.start_soon(self._work, work)
            await self._close_requested.wait()
            work.cancel()
            code, reason = self._closing or (1000, "")
            # Sent after the message in flight, if any: a client that stalled gets what
            # was already in its socket, then this close frame, once it reads again.
            await self._write_unsent()
            await self._socket.close(code, reason)

    async def _work(self, scope: trio.CancelScope) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, self._pump)
                nursery.start_soon(self._guard, self._read_messages)
                nursery.start_soon(self._guard, self._watch)

    async def _guard(self, task: Callable[[], Awaitable[None]]) -> None:
        try:
            await task()
        except ApiError as exc:
            self._fail_api(exc)
        except DB_ERRORS as exc:
            log.warning("subscriber closed: the log could not be read: %s", exc)
            self._fail(UNAVAILABLE, "database_unavailable: the log could not be read; "
                       "reconnect with your cursor")

    # -- sending --------------------------------------------------------------------------

    async def _send(self, candidates: Sequence[LogEvent], read_with: Options | None = None
                    ) -> bool:
        """Send the ``candidates`` (in id order, after ``position``) the options want.

        Each write is chosen with the options current when it is made, so an
        options_update applies from the next write on. ``read_with``: the options the
        candidates were read from the log with; when they change, stop (False) so that
        the caller reads again from ``position``.
        """
        index = 0
        while index < len(candidates):
            options = self.options
            if read_with is not None and options is not read_with:
                return False
            chosen = []
            size = 0
            while index < len(candidates) and len(chosen) < WRITE_EVENTS \
                    and size < WRITE_BYTES:
                event = candidates[index]
                index += 1
                if _wanted(event, options):
                    chosen.append(event)
                    size += len(event.json)
            if chosen:
                # Cancelled (closing) while the previous write was in flight: stop here,
                # before the websocket refuses data after its close frame.
                await trio.lowlevel.checkpoint_if_cancelled()
                await self._write_unsent()
                self._sending = (trio.current_time(), chosen[0].time_us)
                await self._writer.write([event.json for event in chosen])
                self._sending = None
                self._stats.subscribe_messages += len(chosen)
            self.position = candidates[index - 1].id
        return True

    async def _send_live(self, candidates: Sequence[LogEvent]) -> None:
        """``_send`` for a live subscriber: one write shared with the subscribers that have
        the same filter, when it fits in one write and the socket takes frames whole."""
        options = self.options
        framed = self._hub.framed(candidates, options) if self._writer.batched else None
        if framed is None:
            await self._send(candidates)
            return
        data, count, first_time_us = framed
        if count:
            await trio.lowlevel.checkpoint_if_cancelled()  # as in _send
            await self._write_framed(data, first_time_us)
            self._stats.subscribe_messages += count
        self.position = candidates[-1].id

    async def _write_framed(self, data: bytes, first_time_us: int) -> None:
        """Write frames (from ``frames``), watched by the bounds while the socket waits."""
        self._sending = (trio.current_time(), first_time_us)
        await self._writer.write_framed(data)
        self._sending = None

    async def _write_unsent(self) -> None:
        """Finish the write that ``_deliver`` could only start."""
        if self._unsent is not None:
            data, first_time_us = self._unsent
            self._unsent = None
            await self._write_framed(data, first_time_us)

    def _candidates(self, batch: CommitBatch) -> list[LogEvent]:
        """The events of ``batch`` after ``position`` the filter may want, in id order (a
        list the caller must not change: it can be the batch's own)."""
        assert self.position is not None
        candidates = self._hub.candidates(batch, self.options.filter)
        if batch.after_id < self.position:
            return [event for event in candidates if event.id > self.position]
        return candidates if isinstance(candidates, list) else list(candidates)

    def _deliver(self, batch: CommitBatch) -> bool:
        """Write a live batch from the feed's task, without waking this subscriber's task;
        False when the task must deal with it (queue it).

        Possible when the task is parked waiting for a batch (so nothing is queued or in
        hand before this one) and the socket takes the write at once, which is the common
        case at live rates. Waking a thousand tasks for every commit, each for one write,
        was most of the service's CPU with 1,100 subscribers (trio's rescheduling, the
        connection's lock and hypercorn's send path around a one-line system call).
        """
        if not self._parked or self._closing is not None or self.position is None:
            return False
        self._parked = False  # until it is known that the batch was dealt with here
        candidates = self._candidates(batch)
        if candidates:
            framed = self._hub.framed(candidates, self.options)
            if framed is None:
                return False
            data, count, first_time_us = framed
            if count:
                sent = self._writer.write_now(data)
                if not sent:
                    return False
                self._stats.subscribe_messages += count
                if sent < len(data):
                    # The task, woken by the queued batch, writes the rest first; the
                    # batch itself has nothing more for it.
                    self._unsent = (data[sent:], first_time_us)
                    self.position = max(self.position, batch.last_id)
                    return False
        self.position = max(self.position, batch.last_id)
        self._parked = True
        return True

    def _may_want(self, batch: CommitBatch) -> bool:
        # With the options current when the batch is committed: an options_update applies
        # to what is committed after it.
        return self._hub.may_want(batch, self.options.filter)

    async def _pump(self) -> None:
        """Replay from the log, then follow the feed; back to pages when cut off."""
        await self._hello.wait()
        while True:
            if self.position is not None:
                # Catch up without a subscription first: a long replay would only
                # overflow it.
                await self._page()
            with self._feed.subscribe(self._hub.limits.buffer_batches, self._may_want,
                                      self._deliver) as subscription:
                if self.position is None:
                    self.position = subscription.start
                else:
                    await self._page()  # the commits since the catch-up
                self.position = max(self.position, subscription.start)
                self.went_live = True
                receive = subscription.receive
                while True:
                    # Parked only with nothing queued: a batch already taken from the
                    # channel is in this task's hands until the write below.
                    self._parked = receive.statistics().current_buffer_used == 0
                    try:
                        batch = await receive.receive()
                    except trio.EndOfChannel:
                        break
                    finally:
                        self._parked = False
                    await self._write_unsent()
                    candidates = self._candidates(batch)
                    last_id = batch.last_id
                    # Commits already waiting go out in the same write.
                    while len(candidates) < WRITE_EVENTS:
                        try:
                            more = receive.receive_nowait()
                        except (trio.WouldBlock, trio.EndOfChannel):
                            break
                        candidates = [*candidates, *self._candidates(more)]
                        last_id = more.last_id
                    if candidates:
                        await self._send_live(candidates)
                    self.position = max(self.position, last_id)
            # The channel ended: this subscriber was too slow for the feed and was cut off.
            self._stats.subscribe_fallbacks += 1

    async def _page(self) -> None:
        """Send what the log holds after ``position`` until a page is not full."""
        assert self.position is not None
        while True:
            options = self.options
            head = self._feed.head  # the query below sees at least this much
            async with self._hub.state.store.session() as session:
                events = await session.matching_events(
                    dataclasses.replace(options.filter, since=self.position, limit=PAGE_SIZE))
            if not await self._send(events, read_with=options):
                continue  # the filters changed: read again from position with the new ones
            if len(events) < PAGE_SIZE:
                # Nothing else matched up to the head the query saw.
                self.position = max(self.position, head)
                return

    # -- the client's messages ------------------------------------------------------------

    async def _read_messages(self) -> None:
        state = self._hub.state
        while True:
            message = await self._socket.receive()
            if isinstance(message, bytes):
                continue  # Jetstream ignores binary messages
            if len(message) > MAX_CLIENT_MESSAGE:
                self._fail(MESSAGE_TOO_BIG, _close_reason(
                    "message_too_big", f"client messages are limited to {MAX_CLIENT_MESSAGE} "
                    "characters"))
                return
            update = parse_options_update(message)
            if update is None:
                continue
            # Option updates count against the token's rate, like requests.
            state.limiter.check(self.token.name, self.token.rate_limit)
            collections, dids, size = update
            self.options = scoped_options(collections, dids, self.kinds, size, self.token)
            self._hello.set()

    # -- bounds ---------------------------------------------------------------------------

    async def _watch(self) -> None:
        limits = self._hub.limits
        checked = trio.current_time()
        while True:
            # Each bound is checked at least four times over its length (one timer a
            # subscriber: a second apiece was 1,100 expiries a second, ~7% of the CPU).
            await trio.sleep(min(limits.stall_seconds / 4, limits.max_lag / 4,
                                 limits.token_recheck))
            now = trio.current_time()
            sending = self._sending
            if sending is not None and now - sending[0] > limits.stall_seconds:
                self._fail(TOO_SLOW, _close_reason(
                    "consumer_too_slow", f"nothing read for {limits.stall_seconds:g} s"))
                return
            if sending is not None and self.went_live and \
                    _now_us() - sending[1] > limits.max_lag * 1e6:
                self._fail(TOO_SLOW, _close_reason(
                    "consumer_too_slow", f"more than {limits.max_lag:g} s behind the log"))
                return
            if now - checked >= limits.token_recheck:
                checked = now
                if await self._hub.revoked(self.token):
                    self._fail(UNAUTHORIZED, "revoked_token: this token has been revoked")
                    return


def _presented_token(subscription: Subscription) -> str:
    """The token from the Authorization header, or else from ``?token=``."""
    header = websocket.headers.get("Authorization")
    if header or subscription.token is None:
        return auth.bearer_token(header)
    return auth.bearer_token(f"Bearer {subscription.token}")


async def _subscribe(hub: _Hub) -> None:
    state = hub.state
    # Everything that can be refused is refused before the upgrade, as an HTTP answer.
    subscription = parse_subscription(websocket.args.to_dict(flat=False))
    presented = _presented_token(subscription)
    if len(hub.connections) >= hub.limits.max_connections:
        raise ApiError(503, "too_many_subscribers",
                       f"this service serves at most {hub.limits.max_connections} "
                       "subscribers; retry later", {"Retry-After": "5"})
    async with state.store.session() as session:
        token = await hub.authenticate(session, presented)
        options = scoped_options(subscription.collections, subscription.dids,
                                 subscription.kinds, subscription.max_message_size, token)
        since = subscription.since
        if since is not None and since > state.feed.head:
            head = await session.head()  # the feed may be a commit behind: ask the log
            if since > head:  # as on /events: a cursor of another log would wait forever
                raise ApiError(400, "since_beyond_head",
                               f"since={since} is beyond the log's head ({head}): pass the "
                               "id of an event this log sent, or 0")
        if subscription.cursor_us is not None:
            since = await session.id_before(_time_of(subscription.cursor_us))
    subscriber = Subscriber(hub, token, options, since, subscription.kinds,
                            subscription.require_hello)
    await websocket.accept()
    hub.connections.add(subscriber)
    state.stats.subscribers = len(hub.connections)
    try:
        await subscriber.run()
    finally:
        hub.connections.discard(subscriber)
        state.stats.subscribers = len(hub.connections)


def register(app: QuartTrio, state: ApiState, authenticate: Authenticate) -> None:
    """Add ``GET /subscribe`` to ``app``; ``authenticate`` checks a presented token."""
    hub = _Hub(state, authenticate)

    @app.websocket("/subscribe")
    async def subscribe() -> None:
        await _subscribe(hub)

    del subscribe


__all__ = ["JETSTREAM_KINDS", "Limits", "parse_options_update",
           "parse_subscription", "register"]
