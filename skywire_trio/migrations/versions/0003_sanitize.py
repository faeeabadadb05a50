"""firehose_events.sanitized: which fields of a row were stored NULL to store it, and why.

Revision ID: 0003_sanitize
Revises: 0007_subscriptions
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003_sanitize"
down_revision = "0007_subscriptions"
branch_labels = None
depends_on = None

# A nullable column without a default: a catalog change only, no table rewrite, and the
# partitions inherit it.
UPGRADE = """
ALTER TABLE firehose_events ADD COLUMN sanitized text;
COMMENT ON COLUMN firehose_events.sanitized IS
    'fields stored NULL because they could not be stored as received (see docs/architecture.md)';
"""

DOWNGRADE = """
ALTER TABLE firehose_events DROP COLUMN sanitized;
"""


def upgrade() -> None:
    """Add the ``sanitized`` column to the log (and so to every partition)."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Drop the ``sanitized`` column."""
    op.execute(DOWNGRADE)
