"""The event-type index covers only non-commit events.

Revision ID: 0008_event_type_index
Revises: 0004_publisher
Create Date: 2026-11-30

Nine rows in ten are commit operations. A query for commits finds them through the id
index (almost every row matches), so indexing them by type only cost ingest: 1.1-1.5 us of
PostgreSQL time per row (docs/performance.md). The partial index still serves the rare
kinds (identity, account, sync, info); the reader adds the index's own predicate to any
event-type filter that leaves commits out, so the planner can use it.

Both directions rebuild the index on every partition under a SHARE lock on the table:
ingest waits while it builds (docs/operations.md).
"""

from alembic import op

revision = "0008_event_type_index"
down_revision = "0004_publisher"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Replace the event-type index with one over non-commit events only."""
    op.execute("DROP INDEX firehose_events_event_type_id_idx")
    op.execute("CREATE INDEX firehose_events_event_type_id_idx ON firehose_events "
               "(event_type, id) WHERE event_type <> 'commit'")


def downgrade() -> None:
    """Index every event by type again."""
    op.execute("DROP INDEX firehose_events_event_type_id_idx")
    op.execute("CREATE INDEX firehose_events_event_type_id_idx ON firehose_events "
               "(event_type, id)")
