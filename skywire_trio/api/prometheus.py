"""``/metrics`` in the Prometheus text exposition format."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from ..stats import (
    LATENCY_BUCKETS,
    DeliveryStats,
    IngestStats,
    PublisherStats,
    Roles,
    SubscriptionStats,
)
from .http_server import ConnectionCounts
from .longpoll import LongPolls


def _line(name: str, value: float, labels: str = "") -> str:
    return f"{name}{{{labels}}} {value}" if labels else f"{name} {value}"


def _partition_series(stats: IngestStats) -> list[tuple[str, str, str, list[tuple[str, float]]]]:
    """The partition manager's report, as of its last pass (none before the first)."""
    status = stats.partition_status
    if status is None:
        return []
    return [
        ("skywire_partition_manager_info", "gauge", "Who creates and drops partitions.",
         [(f'manager="{status.manager}"', 1)]),
        ("skywire_partitions_ahead", "gauge",
         "Consecutive days after today (UTC) that have a partition.",
         [("", status.partitions_ahead)]),
        ("skywire_partition_retention_seconds", "gauge",
         "Partitions older than this are dropped (-1: never).",
         [("", status.retention_seconds if status.retention_seconds is not None else -1)]),
        ("skywire_partition_alarms", "gauge",
         "Partition problems an operator must look at (see /health).",
         [("", len(status.alarms()))]),
    ]


def _archive_series(stats: IngestStats) -> list[tuple[str, str, str, list[tuple[str, float]]]]:
    """The Parquet archive's work (none when SKYWIRE_ARCHIVE_DIR is unset)."""
    archive = stats.archive
    if not archive.enabled:
        return []
    return [
        ("skywire_archives_written_total", "counter", "Days exported, verified and recorded.",
         [("", archive.written)]),
        ("skywire_archive_rows_total", "counter", "Rows in the archives written.",
         [("", archive.rows)]),
        ("skywire_archive_bytes_total", "counter", "Bytes of the archives written.",
         [("", archive.bytes)]),
        ("skywire_archive_failures_total", "counter", "Exports that failed (retried).",
         [("", archive.failures)]),
        ("skywire_archive_failing", "gauge", "1 while a day's export keeps failing.",
         [("", int(archive.failing_day is not None))]),
        ("skywire_partitions_waiting_for_archive", "gauge",
         "Days past retention kept until their archive is recorded.",
         [("", stats.partitions_waiting)]),
    ]


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _delivery_series(delivery: DeliveryStats, head: int
                     ) -> list[tuple[str, str, str, list[tuple[str, float]]]]:
    """Per-subscription webhook metrics (only the delivering instance has entries)."""
    subs = sorted(delivery.subscriptions.values(), key=lambda s: s.name)
    now = time.time()

    def each(value: Callable[[SubscriptionStats], float]) -> list[tuple[str, float]]:
        return [(f'subscription="{_label(s.name)}"', value(s)) for s in subs]

    latency: list[tuple[str, float]] = []
    for s in subs:
        name = f'subscription="{_label(s.name)}"'
        for bound, count in zip(LATENCY_BUCKETS, s.latency_buckets, strict=True):
            latency.append((f'{name},le="{bound:g}"', count))
        latency.append((f'{name},le="+Inf"', s.latency_count))
    return [
        ("skywire_webhook_leader", "gauge", "1 while this instance delivers webhooks.",
         [("", int(delivery.leader))]),
        ("skywire_webhook_delivered_events_total", "counter", "Events acknowledged (2xx).",
         each(lambda s: s.delivered_events)),
        ("skywire_webhook_delivered_batches_total", "counter", "Batches acknowledged (2xx).",
         each(lambda s: s.delivered_batches)),
        ("skywire_webhook_failures_total", "counter",
         "Failed attempts by kind (status, timeout, connect, refused, error).",
         [(f'subscription="{_label(s.name)}",kind="{kind}"', n)
          for s in subs for kind, n in sorted(s.failures.items())]),
        ("skywire_webhook_dead_letters_total", "counter", "Batches moved to dead letters.",
         each(lambda s: s.dead_letters)),
        ("skywire_webhook_skipped_events_total", "counter",
         "Events dropped by retention before delivery.", each(lambda s: s.skipped_events)),
        ("skywire_webhook_lag_events", "gauge", "Log head minus the subscription's cursor.",
         each(lambda s: max(0, head - s.cursor))),
        ("skywire_webhook_lag_seconds", "gauge",
         "Age of the oldest event not yet acknowledged (0 when caught up).",
         each(lambda s: round(max(0.0, now - s.oldest_undelivered), 3)
              if s.oldest_undelivered is not None else 0.0)),
    ] + [("skywire_webhook_latency_seconds", "histogram",
          "Commit of a batch's first event -> 2xx.", latency)]


def _role_series(roles: Roles | None, publisher: PublisherStats | None, head: int
                 ) -> list[tuple[str, str, str, list[tuple[str, float]]]]:
    """Leadership per role, and the NATS publisher's (when fan-out is on)."""
    series: list[tuple[str, str, str, list[tuple[str, float]]]] = [
        ("skywire_leader", "gauge",
         "1 for each singleton role this instance leads, 0 while it stands by.",
         [(f'role="{role}"', int(state == "leader"))
          for role, state in sorted((roles.states if roles else {}).items())]),
    ]
    if publisher is None:
        return series
    leading = roles is not None and roles.leads("publisher")
    lag_events, lag_seconds = publisher_lag(publisher, head) if leading else (0, 0.0)
    return series + [
        ("skywire_nats_connected", "gauge", "1 while the publisher's NATS connection is open.",
         [("", int(publisher.connected))]),
        ("skywire_published_total", "counter", "Messages JetStream acknowledged.",
         [("", publisher.published)]),
        ("skywire_publish_duplicates_total", "counter",
         "Acknowledged as already in the stream.", [("", publisher.duplicates)]),
        ("skywire_publish_errors_total", "counter",
         "Publisher failures (connection, refusal, ack timeout).", [("", publisher.errors)]),
        ("skywire_publish_skipped_total", "counter",
         "Events dropped by retention before they were published.",
         [("", publisher.skipped)]),
        ("skywire_publisher_last_id", "gauge", "Last log id acknowledged by JetStream.",
         [("", publisher.last_id)]),
        ("skywire_publisher_lag_events", "gauge", "Log head minus the publisher's last id.",
         [("", lag_events)]),
        ("skywire_publisher_lag_seconds", "gauge",
         "Seconds since the last published event was committed, while behind.",
         [("", round(lag_seconds, 3))]),
    ]


def publisher_lag(publisher: PublisherStats, head: int) -> tuple[int, float]:
    """The publisher's lag behind the log's head: events, and seconds since the last
    published event was committed (0 when caught up)."""
    events = max(0, head - publisher.last_id)
    if not events or publisher.last_time_us is None:
        return events, 0.0
    return events, max(0.0, time.time() - publisher.last_time_us / 1e6)


def _http_series(connections: ConnectionCounts, polls: LongPolls
                 ) -> list[tuple[str, str, str, list[tuple[str, float]]]]:
    """The HTTP server's connections and the waiting long-polls."""
    return [
        ("skywire_http_connections", "gauge", "Open HTTP connections.",
         [("", connections.open)]),
        ("skywire_http_connections_max", "gauge", "The cap on open HTTP connections.",
         [("", connections.limit)]),
        ("skywire_http_connections_evicted_total", "counter",
         "Idle connections closed at the cap to make room for a new one.",
         [("", connections.evicted)]),
        ("skywire_http_connections_refused_total", "counter",
         "Connections refused with 503 because the cap was reached with every one busy.",
         [("", connections.refused)]),
        ("skywire_memory_releases_total", "counter",
         "Full collections and memory given back to the system after a wave of connections "
         "closed.", [("", connections.releases)]),
        ("skywire_long_polls_waiting", "gauge", "Long-polls waiting for a matching commit.",
         [("", polls.waiting)]),
        ("skywire_long_poll_wakeups_total", "counter",
         "Long-polls woken by a commit that can match their filter.",
         [("", polls.wakeups)]),
    ]


def render_metrics(stats: IngestStats, responses: Counter[tuple[str, int]],
                   delivery: DeliveryStats | None = None, head: int = 0,
                   roles: Roles | None = None, publisher: PublisherStats | None = None,
                   connections: ConnectionCounts | None = None,
                   polls: LongPolls | None = None) -> str:
    """Every metric, with HELP and TYPE lines."""
    lag = ((datetime.now(UTC) - stats.last_event_time).total_seconds()
           if stats.last_event_time else 0.0)
    series: list[tuple[str, str, str, list[tuple[str, float]]]] = [
        ("skywire_frames_received_total", "counter", "Frames received from the upstream.",
         [("", stats.frames_in)]),
        ("skywire_bytes_received_total", "counter", "Frame bytes received from the upstream.",
         [("", stats.bytes_in)]),
        ("skywire_events_committed_total", "counter", "Log rows committed.",
         [("", stats.events_committed)]),
        ("skywire_batches_committed_total", "counter", "Batches committed.",
         [("", stats.batches_committed)]),
        ("skywire_batch_seconds_total", "counter", "Time spent writing batches.",
         [("", stats.batch_seconds_total)]),
        ("skywire_frames_rejected_total", "counter", "Unparseable frames saved aside.",
         [("", stats.frames_rejected)]),
        ("skywire_duplicates_skipped_total", "counter", "Frames at or below the cursor.",
         [("", stats.duplicates_skipped)]),
        ("skywire_reconnects_total", "counter", "Ingest restarts after a failure.",
         [("", stats.reconnects)]),
        ("skywire_buffer_overflows_total", "counter", "Times the buffer stayed full too long.",
         [("", stats.overflows)]),
        ("skywire_buffered_frames", "gauge", "Frames waiting for the batcher.",
         [("", stats.buffered_frames)]),
        ("skywire_upstream_connected", "gauge", "1 while the upstream socket is open.",
         [("", int(stats.upstream_connected))]),
        ("skywire_last_seq", "gauge", "Last committed upstream seq.",
         [("", stats.last_seq or 0)]),
        ("skywire_last_id", "gauge", "Last committed log id.", [("", stats.last_id)]),
        ("skywire_lag_seconds", "gauge", "Now minus the last committed event's time.",
         [("", round(lag, 3))]),
        ("skywire_default_partition_rows", "gauge",
         "Rows in firehose_events_default (should be 0).",
         [("", stats.default_partition_rows)]),
        ("skywire_partitions_dropped_total", "counter", "Expired daily partitions dropped.",
         [("", stats.partitions_dropped)]),
        ("skywire_subscribers", "gauge", "Open /subscribe websockets.",
         [("", stats.subscribers)]),
        ("skywire_subscribe_messages_total", "counter", "Events sent on /subscribe websockets.",
         [("", stats.subscribe_messages)]),
        ("skywire_subscribe_fallbacks_total", "counter",
         "Subscribers cut off from the commit feed that went back to reading pages.",
         [("", stats.subscribe_fallbacks)]),
        ("skywire_subscribe_too_slow_total", "counter",
         "Subscribers closed with 4408 consumer_too_slow.",
         [("", stats.subscribe_too_slow)]),
        ("skywire_task_faults_total", "counter",
         "Restarts of a supervised task after a transient fault (network, database, upstream).",
         [(f'task="{name}"', task.faults) for name, task in sorted(stats.tasks.items())]),
        ("skywire_task_crashes_total", "counter",
         "Restarts of a supervised task after a crash (any other exception: a bug).",
         [(f'task="{name}"', task.crashes) for name, task in sorted(stats.tasks.items())]),
        *_partition_series(stats),
        *_archive_series(stats),
        ("skywire_api_responses_total", "counter", "API responses by route and status.",
         [(f'route="{route}",status="{status}"', n)
          for (route, status), n in sorted(responses.items())]),
    ]
    series += _role_series(roles, publisher, head)
    if connections is not None and polls is not None:
        series += _http_series(connections, polls)
    if delivery is not None:
        series += _delivery_series(delivery, head)
    lines = []
    for name, kind, help_text, samples in series:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        if kind == "histogram":
            lines += [_line(name + "_bucket", value, labels) for labels, value in samples]
            for s in sorted(delivery.subscriptions.values() if delivery else [],
                            key=lambda s: s.name):
                labels = f'subscription="{_label(s.name)}"'
                lines += [_line(name + "_sum", round(s.latency_sum, 6), labels),
                          _line(name + "_count", s.latency_count, labels)]
            continue
        lines += [_line(name, value, labels) for labels, value in samples]
    return "\n".join(lines) + "\n"
