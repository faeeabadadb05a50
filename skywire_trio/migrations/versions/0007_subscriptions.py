"""Webhook subscriptions (each with its own durable cursor) and their dead letters.

Revision ID: 0007_subscriptions
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0007_subscriptions"
down_revision = "0002"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE webhook_subscriptions (
    id               bigserial   PRIMARY KEY,
    name             text        NOT NULL UNIQUE,
    url              text        NOT NULL,
    -- The same filters as /events; empty arrays mean "any".
    collections      text[]      NOT NULL DEFAULT '{}',  -- NSIDs and prefix.*, as written
    event_types      text[]      NOT NULL DEFAULT '{}',
    repos            text[]      NOT NULL DEFAULT '{}',
    actions          text[]      NOT NULL DEFAULT '{}',
    jmespath         text,                                -- evaluated on each event's JSON
    batch_size       integer     NOT NULL DEFAULT 100 CHECK (batch_size BETWEEN 1 AND 1000),
    secret           text        NOT NULL,                -- whsec_<base64>, signs every request
    on_exhausted     text        NOT NULL DEFAULT 'deadletter'
                                 CHECK (on_exhausted IN ('deadletter', 'pause')),
    state            text        NOT NULL DEFAULT 'active'
                                 CHECK (state IN ('active', 'paused', 'disabled')),
    -- Every event with id <= cursor has been delivered (or did not match).
    cursor           bigint      NOT NULL CHECK (cursor >= 0),
    -- The batch in flight, saved before it is sent, so that a restart re-sends the same
    -- events under the same webhook-id: events after pending_after up to pending_upto.
    pending_id       text,
    pending_after    bigint,
    pending_upto     bigint,
    pending_attempts integer     NOT NULL DEFAULT 0,
    pending_since    timestamptz,
    delivered_events  bigint     NOT NULL DEFAULT 0,
    delivered_batches bigint     NOT NULL DEFAULT 0,
    failed_attempts   bigint     NOT NULL DEFAULT 0,
    dead_lettered     bigint     NOT NULL DEFAULT 0,
    skipped_events    bigint     NOT NULL DEFAULT 0,  -- dropped by retention before delivery
    last_status      integer,
    last_error       text,
    last_error_at    timestamptz,
    last_delivery_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((pending_id IS NULL) = (pending_upto IS NULL))
);

-- Batches that exhausted their retries: the exact body, so a retry sends what failed.
CREATE TABLE webhook_dead_letters (
    id               bigserial   PRIMARY KEY,
    subscription_id  bigint      NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    webhook_id       text        NOT NULL,
    after_id         bigint      NOT NULL,
    upto_id          bigint      NOT NULL,
    event_count      integer     NOT NULL,
    body             bytea       NOT NULL,
    attempts         integer     NOT NULL,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    retry_requested_at timestamptz          -- `deadletters retry`: the service re-sends it
);
CREATE INDEX webhook_dead_letters_subscription_idx ON webhook_dead_letters (subscription_id, id);
"""

DOWNGRADE = """
DROP TABLE webhook_dead_letters;
DROP TABLE webhook_subscriptions;
"""


def upgrade() -> None:
    """Create the subscription and dead-letter tables."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Drop them (the log itself is untouched)."""
    op.execute(DOWNGRADE)
