"""The quart-trio application: routes, authentication, errors as JSON.

``create_app`` takes everything it needs as arguments (read store, stats, the commit feed
and the waiting long-polls, the database's health, the token salt); there is no global
state.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from contextlib import nullcontext
from datetime import UTC, date, datetime
from functools import partial

import trio
from quart import Response, has_request_context, request, websocket
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from ..log.notify import CommitFeed
from ..log.reader import ReadSession, ReadStore
from ..shutdown import Shutdown
from ..stats import DeliveryStats, IngestStats, PublisherStats, Roles
from ..timeouts import Timeouts
from ..types import Archive, Partition, PartitionPolicy, Token
from . import auth, params, subscribe
from .errors import ApiError, database_error, database_fault
from .health import PROBE_INTERVAL, PROBE_TIMEOUT, DatabaseHealth
from .http_server import ConnectionCounts
from .longpoll import LongPolls
from .openapi import OPENAPI
from .prometheus import publisher_lag, render_metrics
from .status_page import PARTITIONS_TTL, StatusSources, register_static, render_page, status_body

# last_used_at is written at most this often per token: a write per request is not worth it.
TOUCH_INTERVAL = 60.0


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status=status,
                    content_type="application/json", headers=headers)


@dataclasses.dataclass
class ApiState:
    """What the routes share: stores, counters, limiter."""

    store: ReadStore
    stats: IngestStats
    feed: CommitFeed
    salt: str
    stall_seconds: float = 60.0  # disconnected, or buffered work without a commit, this long
    delivery: DeliveryStats = dataclasses.field(default_factory=DeliveryStats)
    partition_policy: PartitionPolicy = PartitionPolicy()
    polls: LongPolls = dataclasses.field(init=False)  # waiting long-polls, on ``feed``
    timeouts: Timeouts = dataclasses.field(default_factory=Timeouts)  # long-polls' waits
    database: DatabaseHealth = dataclasses.field(default_factory=DatabaseHealth)
    shutdown: Shutdown = dataclasses.field(default_factory=Shutdown)
    connections: ConnectionCounts = dataclasses.field(
        default_factory=lambda: ConnectionCounts(0))
    limiter: auth.RateLimiter = dataclasses.field(default_factory=auth.RateLimiter)
    failures: auth.FailureLimiter = dataclasses.field(default_factory=auth.FailureLimiter)
    responses: Counter[tuple[str, int]] = dataclasses.field(default_factory=Counter)
    touched: dict[str, float] = dataclasses.field(default_factory=dict)
    status: StatusSources | None = None  # the status page's sources (None: no page)
    subscribe_limits: subscribe.Limits = dataclasses.field(
        default_factory=subscribe.Limits.from_settings)
    roles: Roles = dataclasses.field(default_factory=Roles)
    publisher: PublisherStats | None = None  # None: fan-out is off in this instance

    def __post_init__(self) -> None:
        self.polls = LongPolls(self.feed)


def _address() -> str:
    source = request if has_request_context() else websocket
    return source.remote_addr or "unknown"


def _presented(state: ApiState) -> str:
    """The request's bearer token; a missing or malformed one counts as a failure."""
    state.failures.check(_address())  # a 429 here costs no database work
    try:
        return auth.bearer_token(request.headers.get("Authorization"))
    except ApiError:
        state.failures.failed(_address())
        raise


async def _authenticate(state: ApiState, session: ReadSession) -> Token:
    return await _authenticate_token(state, session, _presented(state))


async def _authenticate_token(state: ApiState, session: ReadSession, presented: str) -> Token:
    """The valid token ``presented``, or 401 (counted against the client's address)."""
    state.failures.check(_address())
    digest = auth.token_hash(state.salt, presented)
    try:
        token = auth.check_token(await session.token(digest), digest)
    except ApiError:
        state.failures.failed(_address())
        raise
    state.limiter.check(token.name, token.rate_limit)
    now = trio.current_time()
    if now - state.touched.get(token.name, -TOUCH_INTERVAL) >= TOUCH_INTERVAL:
        state.touched[token.name] = now
        await session.touch_token(token.name)
    return token


async def _events(state: ApiState) -> Response:
    presented = _presented(state)  # before taking a pooled connection
    async with state.store.session() as session:
        token = await _authenticate_token(state, session, presented)
    parsed = params.parse_events(request.args.to_dict(flat=False))
    event_filter, collections = auth.narrow(parsed.filter, parsed.collections, token)
    exact, prefixes = params.split_collections(collections)
    event_filter = dataclasses.replace(event_filter, collections=exact, prefixes=prefixes)
    # A long-poll registers before its first read, so a batch committed after that read
    # wakes it whatever the interleaving; it is woken only by a batch that can match.
    waiting = state.polls.waiter(event_filter) if parsed.wait > 0 else nullcontext()
    with waiting as waiter:
        async with state.store.session() as session:
            page = await session.events(event_filter)
            if not page.count and event_filter.since > state.feed.head:
                head = await session.head()  # the feed may be a commit behind: ask the log
                if event_filter.since > head:
                    raise ApiError(400, "since_beyond_head",
                                   f"since={event_filter.since} is beyond the log's head "
                                   f"({head}): pass the cursor of a page this log returned, "
                                   "or 0")
            skipped = b""
            if page.first_id != event_filter.since + 1:
                # Ids are gapless, so anything between `since` and the oldest retained id
                # was dropped by retention: say so, with the count, so the consumer knows.
                oldest = await session.oldest_id()
                if oldest is not None and oldest > event_filter.since + 1:
                    skipped = b',"skipped":%d' % (oldest - event_filter.since - 1)
        if waiter is not None and not page.count:
            # Woken only by a committed batch that can match; until the wait is over or the
            # service starts shutting down (then the answer is the empty page, at once).
            state.stats.long_polls_open += 1
            try:
                with state.timeouts.move_on_after(parsed.wait), state.shutdown.intake():
                    while not page.count:
                        await waiter.wait()
                        async with state.store.session() as session:
                            # The token may have been revoked while this request waited.
                            auth.check_token(await session.token(token.token_hash),
                                             token.token_hash)
                            page = await session.events(event_filter)
            finally:
                state.stats.long_polls_open -= 1
    cursor = page.last_id if page.count else event_filter.since
    body = b'{"events":[%s],"cursor":%d%s}' % (page.json, cursor, skipped)
    return Response(body, content_type="application/json")


def _archive_of(partition: Partition, archived: dict[date, Archive]) -> dict[str, object] | None:
    if partition.lower is None:
        return None
    found = archived.get(partition.lower.date())
    return None if found is None else found.as_json()


def _health_body(state: ApiState) -> tuple[dict[str, object], bool]:
    stats = state.stats
    now = trio.current_time()
    checked_ago = state.database.age()
    # A probe result older than this means the probe itself is stuck: do not trust it.
    database_ok = (state.database.fault is None and checked_ago is not None
                   and checked_ago <= PROBE_INTERVAL + PROBE_TIMEOUT + 1.0)
    partitions = state.database.partitions
    last_event = stats.last_event_time
    lag = (datetime.now(UTC) - last_event).total_seconds() if last_event else None
    since_commit = now - stats.last_commit_monotonic if stats.last_commit_monotonic else None
    # A quiet upstream that answers pings is connected and healthy; these show the silence.
    since_event = now - stats.last_frame_monotonic if stats.last_frame_monotonic else None
    since_pong = now - stats.last_pong_monotonic if stats.last_pong_monotonic else None
    # Only the ingest leader can stall: a standby (or an api or publisher instance) is not
    # supposed to be connected upstream.
    stalled = state.roles.leads("ingest") and stats.stalled(now, state.stall_seconds)
    healthy = database_ok and not stalled
    if not database_ok:
        status = "database_unavailable"
    elif not stats.upstream_reached and state.roles.leads("ingest"):
        # No upstream reached since start: "connecting" (503 once past the stall bound).
        # Only the ingest leader connects: a standby or an api instance is "ok".
        status = "connecting"
    else:
        status = "stalled" if stalled else "ok"
    body = {
        "status": status,
        "database": "ok" if database_ok else (state.database.fault or "unreachable"),
        "database_checked_seconds_ago": (round(checked_ago, 3) if checked_ago is not None
                                         else None),
        "upstream_connected": stats.upstream_connected,
        "last_seq": stats.last_seq,
        "last_id": stats.last_id,
        "last_event_time": last_event.isoformat() if last_event else None,
        "lag_seconds": round(lag, 3) if lag is not None else None,
        "seconds_since_commit": round(since_commit, 3) if since_commit is not None else None,
        "seconds_since_event": round(since_event, 3) if since_event is not None else None,
        "seconds_since_pong": round(since_pong, 3) if since_pong is not None else None,
        "buffered_events": stats.buffered_frames,
        "default_partition_rows": stats.default_partition_rows,
        "ingest_restarts": stats.ingest_restarts,
        # Each supervised task: state, restarts, and its last crash (a bug, with where).
        "tasks": {name: task.as_json() for name, task in sorted(stats.tasks.items())},
        # Alarms here (rows in the default partition, no partition for tomorrow) leave the
        # status ok: the service still works; /metrics carries them for alerting.
        "partitions": partitions.as_json() if partitions else None,
        "seconds_waiting": (round(now - stats.waiting_since, 3)
                            if stats.waiting_since is not None else None),
        "last_error": stats.last_error,
        "seconds_since_error": (round(now - stats.last_error_at, 3)
                                if stats.last_error_at is not None else None),
        # The Parquet archive (null when SKYWIRE_ARCHIVE_DIR is unset): a failing export
        # holds its day's partition back from retention until it succeeds.
        "archive": stats.archive.as_json() if stats.archive.enabled else None,
        "role": state.roles.configured,
        # Each singleton role this instance runs: "leader" or "standby", and since when
        # it leads.
        "leadership": _leadership(state),
        "leader_since": {role: datetime.fromtimestamp(since, UTC).isoformat()
                         for role, since in sorted(state.roles.since.items())
                         if state.roles.leads(role)},
    }
    if state.publisher is not None:
        body["publisher"] = _publisher_health(state, state.publisher)
    return body, healthy


def _leadership(state: ApiState) -> dict[str, str]:
    leadership = dict(state.roles.states)
    if "delivery" in leadership:  # webhook delivery keeps its own flag (delivery/manager.py)
        leadership["delivery"] = "leader" if state.delivery.leader else "standby"
    return leadership


def _publisher_health(state: ApiState, publisher: PublisherStats) -> dict[str, object]:
    leading = state.roles.leads("publisher")
    lag_events, lag_seconds = publisher_lag(publisher, state.feed.head)
    return {
        "nats_connected": publisher.connected,
        "last_id": publisher.last_id if leading else None,
        "lag_events": lag_events if leading else None,
        "lag_seconds": round(lag_seconds, 3) if leading else None,
        "published": publisher.published,
        "errors": publisher.errors,
        "skipped": publisher.skipped,
        "last_error": publisher.last_error,
    }


async def _status(state: ApiState) -> dict[str, object]:
    sources = state.status
    if sources is None:
        raise ApiError(404, "not_found", "this instance has no status page")
    now = trio.current_time()
    if now - sources.partitions_read_at >= PARTITIONS_TTL:
        sources.partitions_read_at = now
        try:
            with trio.fail_after(2):
                async with state.store.session() as session:
                    sources.partitions = await session.partitions()
        except Exception as exc:
            if database_fault(exc) is None:
                raise
            # The page still shows the last listing; health says what is wrong.
    health, healthy = _health_body(state)
    consumers = {"long_polls_open": state.stats.long_polls_open,
                 "feed_subscribers": state.feed.subscribers,
                 "api_requests_total": state.stats.api_requests}
    return status_body(health, healthy, sources, consumers)


def create_app(state: ApiState) -> QuartTrio:
    """The application, bound to ``state``."""
    # No built-in static route: /static/<name> serves the status page's two files only.
    app = QuartTrio(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024
    # quart-trio bounds sending each response by a trio deadline of its own (60 s), which
    # stays in trio's deadline heap, with its cancel scope, for that long after the answer
    # (timeouts.py says why that matters). The server already bounds every write
    # (http_server.SEND_TIMEOUT).
    app.config["RESPONSE_TIMEOUT"] = None

    # /api/... are the paths of the original Skywire README (same handlers).
    @app.route("/events")
    @app.route("/api/events")
    async def events() -> Response:
        return await _events(state)

    @app.route("/health")
    @app.route("/api/health")
    async def health() -> Response:
        # From state kept fresh by the service (api/health.py): no database round trip.
        body, healthy = _health_body(state)
        return _json(body, 200 if healthy else 503)

    @app.route("/")
    async def status_page() -> Response:
        return Response(render_page(await _status(state)),
                        content_type="text/html; charset=utf-8")

    @app.route("/status.json")
    async def status_json() -> Response:
        return _json(await _status(state))

    @app.route("/partitions")
    async def partitions() -> Response:
        presented = _presented(state)  # before taking a pooled connection
        async with state.store.session() as session:
            await _authenticate_token(state, session, presented)
            now = datetime.now(UTC)
            listing = await session.partitions()
            summary = await session.partition_status(state.partition_policy, now.date())
            archived = await session.archives()
        return _json({**summary.as_json(), "partitions": [
            {**p.as_json(now), "archive": _archive_of(p, archived)} for p in listing]})

    @app.route("/metrics")
    async def metrics() -> Response:
        text = render_metrics(state.stats, state.responses, state.delivery, state.feed.head,
                              state.roles, state.publisher, state.connections, state.polls)
        return Response(text, content_type="text/plain; version=0.0.4")

    @app.route("/openapi.json")
    async def openapi() -> Response:
        return _json(OPENAPI)

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        return _json({"error": exc.code, "message": exc.message}, exc.status, exc.headers)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        code = (exc.name or "error").lower().replace(" ", "_")
        return _json({"error": code, "message": exc.description or exc.name}, exc.code or 500)

    @app.errorhandler(Exception)
    async def unexpected(exc: Exception) -> Response:
        kind = database_fault(exc)
        if kind is not None:
            error = database_error(kind)
            if error.status != 503:  # not a passing condition: the operator must act
                app.logger.error("database error: %s", exc)
            return _json({"error": error.code, "message": error.message}, error.status,
                         error.headers)
        app.logger.exception("unexpected error")
        return _json({"error": "internal", "message": "internal error"}, 500)

    @app.after_request
    async def count(response: Response) -> Response:
        route = request.url_rule.rule if request.url_rule else "other"
        state.responses[(route, response.status_code)] += 1
        state.stats.api_requests += 1
        return response

    register_static(app)
    subscribe.register(app, state, partial(_authenticate_token, state))
    del status_page, status_json, events, health, partitions, metrics, openapi, api_error
    del http_error, unexpected, count
    return app
