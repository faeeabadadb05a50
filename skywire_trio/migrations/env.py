"""Alembic environment: plain SQL migrations run over SQLAlchemy + psycopg 3.

The URL comes from the caller (``schema.alembic_config``, used by ``python -m skywire_trio
migrate``) or, for ``alembic upgrade head`` with the repository's alembic.ini, from
``DATABASE_URL`` like the service.
"""

from alembic import context
from sqlalchemy import create_engine, pool

from skywire_trio.config import from_env

url = context.config.attributes.get("url") or from_env(only=("database_url",)).sqlalchemy_url


def run_migrations_offline() -> None:
    """Print the SQL instead of running it (alembic upgrade --sql)."""
    context.configure(url=url, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations against the database, each in a transaction."""
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
