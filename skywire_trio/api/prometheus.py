"""``/metrics`` in the Prometheus text exposition format."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from ..stats import IngestStats


def _line(name: str, value: float, labels: str = "") -> str:
    return f"{name}{{{labels}}} {value}" if labels else f"{name} {value}"


def render_metrics(stats: IngestStats, responses: Counter[tuple[str, int]]) -> str:
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
        ("skywire_task_faults_total", "counter",
         "Restarts of a supervised task after a transient fault (network, database, upstream).",
         [(f'task="{name}"', task.faults) for name, task in sorted(stats.tasks.items())]),
        ("skywire_task_crashes_total", "counter",
         "Restarts of a supervised task after a crash (any other exception: a bug).",
         [(f'task="{name}"', task.crashes) for name, task in sorted(stats.tasks.items())]),
        ("skywire_api_responses_total", "counter", "API responses by route and status.",
         [(f'route="{route}",status="{status}"', n)
          for (route, status), n in sorted(responses.items())]),
    ]
    lines = []
    for name, kind, help_text, samples in series:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [_line(name, value, labels) for labels, value in samples]
    return "\n".join(lines) + "\n"
