"""Archives: each day of the log exported to Parquet, verified, before its partition goes.

Revision ID: 0005_archives
Revises: 0003_sanitize
Create Date: 2026-11-29
"""

from alembic import op

revision = "0005_archives"
down_revision = "0003_sanitize"
branch_labels = None
depends_on = None

UPGRADE = """
-- One row per archived UTC day, written only after the file was read back and matched
-- the partition (row count, first and last id). Retention drops a day only once it is here.
CREATE TABLE archives (
    day        date        PRIMARY KEY,
    path       text        NOT NULL,     -- file path or s3://bucket/key
    rows       bigint      NOT NULL CHECK (rows > 0),
    first_id   bigint      NOT NULL,
    last_id    bigint      NOT NULL,
    bytes      bigint      NOT NULL,
    sha256     text        NOT NULL,     -- hex digest of the file
    created    timestamptz NOT NULL DEFAULT now()
);
"""


def upgrade() -> None:
    """Create the archives table."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Drop the archives table (the files stay where they are)."""
    op.execute("DROP TABLE archives;")
