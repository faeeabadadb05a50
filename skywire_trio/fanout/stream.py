"""The JetStream stream the publisher writes: its configuration, creation, last message.

asyncio coroutines (nats-py); ``link.NatsLink`` runs them from trio.
"""

from __future__ import annotations

import asyncio
import dataclasses

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError

from ..config import Settings
from .subjects import EVENT_ID

# How long a new replicated stream may take to elect its leader before publishing starts.
LEADER_WAIT = 10.0


class StreamRefused(RuntimeError):
    """JetStream refused to create or update the stream (the message says why)."""


@dataclasses.dataclass(frozen=True)
class StreamEnd:
    """Where the stream ends: its last sequence and the log id its last message carries
    (None when the stream holds no message of ours)."""

    last_seq: int
    last_id: int | None


def stream_config(settings: Settings) -> StreamConfig:
    """The stream as configured: ``<prefix>.>``, file storage, discard old."""
    return StreamConfig(
        name=settings.nats_stream,
        subjects=[f"{settings.nats_subject_prefix}.>"],
        storage=StorageType.FILE,
        max_age=settings.nats_max_age,
        duplicate_window=settings.nats_duplicate_window,
        num_replicas=settings.nats_replicas,
        discard=DiscardPolicy.OLD,
        max_bytes=settings.nats_max_bytes or -1,
    )


def _differs(current: StreamConfig, wanted: StreamConfig) -> bool:
    fields = ("subjects", "storage", "max_age", "duplicate_window", "num_replicas",
              "discard", "max_bytes")
    return any(getattr(current, f) != getattr(wanted, f) for f in fields)


async def ensure_stream(js: JetStreamContext, settings: Settings) -> StreamInfo:
    """Create the stream, or update it when its configuration differs from ``settings``;
    a replicated stream is returned once it has a leader."""
    wanted = stream_config(settings)
    try:
        try:
            info = await js.stream_info(settings.nats_stream)
        except NotFoundError:
            info = await js.add_stream(wanted)
        else:
            if _differs(info.config, wanted):
                info = await js.update_stream(wanted)
        # A new replicated stream answers publishes only once its replicas elected a
        # leader: before that, messages get "no responders".
        deadline = asyncio.get_running_loop().time() + LEADER_WAIT
        while (settings.nats_replicas > 1 and not (info.cluster and info.cluster.leader)
               and asyncio.get_running_loop().time() < deadline):
            await asyncio.sleep(0.05)
            info = await js.stream_info(settings.nats_stream)
        return info
    except APIError as exc:
        if isinstance(exc, NotFoundError):
            raise
        hint = ""
        if settings.nats_replicas > 1 and exc.err_code in (10074, 10023):
            hint = (" (SKYWIRE_NATS_REPLICAS must not exceed the number of JetStream "
                    "servers in the cluster)")
        raise StreamRefused(
            f"JetStream refused stream {settings.nats_stream} with "
            f"{settings.nats_replicas} replica(s) on subjects {wanted.subjects}: "
            f"{exc.description} (error {exc.err_code}){hint}") from exc


async def stream_end(js: JetStreamContext, name: str) -> StreamEnd:
    """The stream's last sequence and the log id in its last message's headers."""
    info = await js.stream_info(name)
    last_seq = info.state.last_seq
    if not info.state.messages:
        return StreamEnd(last_seq, None)
    try:
        message = await js.get_msg(name, last_seq)
    except NotFoundError:  # expired or deleted just now
        return StreamEnd(last_seq, None)
    ident = (message.headers or {}).get(EVENT_ID)
    return StreamEnd(last_seq, int(ident) if ident and ident.isdigit() else None)
