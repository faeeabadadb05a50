"""Which database errors mean "unavailable, try again" rather than "a bug".

Supervised tasks retry these quietly with backoff (``supervise.TRANSIENT``); any other
database error (a missing column, a constraint, bad SQL) is a crash and is reported as one.
"""

from __future__ import annotations

from asyncpg import exceptions as pg

UNAVAILABLE: tuple[type[Exception], ...] = (
    pg.PostgresConnectionError,  # 08: cannot connect, connection lost
    pg.OperatorInterventionError,  # 57: shutting down, starting up, statement timeout
    pg.InsufficientResourcesError,  # 53: too many connections, disk full
    pg.TransactionRollbackError,  # 40: serialization failure, deadlock
    pg.LockNotAvailableError,  # 55P03: lock_timeout (partition DDL waits only briefly)
    pg.ReadOnlySQLTransactionError,  # 25006: connected to a standby during a failover
    pg.InterfaceError,  # the connection was closed under an operation
)
