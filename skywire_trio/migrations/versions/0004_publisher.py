"""The NATS publisher's position: the last log id JetStream acknowledged, per stream.

Revision ID: 0004_publisher
Revises: 0005_archives
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004_publisher"
down_revision = "0005_archives"
branch_labels = None
depends_on = None

UPGRADE = """
-- Saved after JetStream acknowledged every id up to last_id (at-least-once: a crash before
-- the save republishes, and the stream's duplicate window and start-up reconciliation
-- remove the repeats). One row per stream name.
CREATE TABLE publisher_cursor (
    stream      text        PRIMARY KEY,
    last_id     bigint      NOT NULL CHECK (last_id >= 0),
    skipped     bigint      NOT NULL DEFAULT 0,  -- ids dropped by retention before publishing
    updated_at  timestamptz NOT NULL DEFAULT now()
);
"""


def upgrade() -> None:
    """Create the publisher's cursor table."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Drop the publisher's cursor table."""
    op.execute("DROP TABLE publisher_cursor;")
