"""The firehose log: cursor row and the day-partitioned event table.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

UPGRADE = """
-- Exactly one row (the singleton key can only be true), bound to one upstream.
CREATE TABLE firehose_cursor (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    upstream    text        NOT NULL,
    last_seq    bigint,                       -- NULL: nothing received yet, start live
    last_id     bigint      NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per record operation and one per non-commit event. `id` is the log position
-- consumers page by: assigned by the single writer, gapless, in commit order.
CREATE TABLE firehose_events (
    id            bigint      NOT NULL,
    seq           bigint,                     -- upstream seq (NULL for #info)
    repo          text,
    event_type    text        NOT NULL,       -- commit, identity, account, sync, info, ...
    action        text,                       -- create, update, delete (commits only)
    collection    text,
    rkey          text,
    cid           text,
    rev           text,
    record        jsonb,                      -- atproto data-model JSON; event body if not a commit
    record_error  text,                       -- why record is NULL when it should not be
    raw           bytea,                      -- the undecodable record block, kept
    event_time    timestamptz,                -- the event's own `time`
    indexed_at    timestamptz NOT NULL        -- when we committed it; the partition key
) PARTITION BY RANGE (indexed_at);

-- pg_partman 5 names: firehose_events_pYYYYMMDD for each UTC day, and this catch-all.
CREATE TABLE firehose_events_default PARTITION OF firehose_events DEFAULT;

CREATE INDEX firehose_events_id_idx ON firehose_events (id);
CREATE INDEX firehose_events_collection_id_idx ON firehose_events (collection, id);
CREATE INDEX firehose_events_repo_id_idx ON firehose_events (repo, id);
CREATE INDEX firehose_events_event_type_id_idx ON firehose_events (event_type, id);
"""

DOWNGRADE = """
DROP TABLE firehose_events;
DROP TABLE firehose_cursor;
"""


def upgrade() -> None:
    """Create the cursor and the partitioned log."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Drop the log and the cursor (all partitions go with the parent)."""
    op.execute(DOWNGRADE)
