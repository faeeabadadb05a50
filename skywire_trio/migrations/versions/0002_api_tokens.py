"""API tokens: keyed hashes only, with scopes and a rate limit.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UPGRADE = """
CREATE TABLE api_tokens (
    name          text PRIMARY KEY,
    token_hash    bytea       NOT NULL UNIQUE,   -- HMAC-SHA256(API_TOKEN_SALT, token)
    collections   text[]      NOT NULL DEFAULT '{}',  -- empty: any
    event_types   text[]      NOT NULL DEFAULT '{}',
    repos         text[]      NOT NULL DEFAULT '{}',
    rate_limit    integer     NOT NULL CHECK (rate_limit > 0),  -- requests per second
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
"""


def upgrade() -> None:
    """Create the token table."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """Drop the token table."""
    op.execute("DROP TABLE api_tokens;")
