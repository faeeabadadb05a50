"""Migration scripts, one revision each (alembic loads them by path, not by import)."""
