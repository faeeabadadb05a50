"""Alembic migrations of the log (plain SQL), shipped inside the package."""
