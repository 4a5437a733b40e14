"""Which database failures mean "the connection dropped", and how to wait before trying again.

A dropped connection (server restart, failover, ``pg_terminate_backend``, a
network blip) is worth one more try on a fresh connection; a query error is
not. Whether the *statement* may be repeated is the caller's call: a failure
while acquiring a connection never sent anything, so it is always safe; a
failure mid-statement is safe only for reads and idempotent writes, since the
server may have committed before the connection died.
"""

from __future__ import annotations

import random

import asyncpg

#: The connection died or was refused by a server going up or down.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.PostgresConnectionError,  # SQLSTATE class 08 and "connection was closed"
    asyncpg.exceptions.AdminShutdownError,  # 57P01: pg_terminate_backend, smart/fast shutdown
    asyncpg.exceptions.CrashShutdownError,  # 57P02
    asyncpg.exceptions.CannotConnectNowError,  # 57P03: starting up or shutting down
    # The server ended an idle pooled session (its FATAL message arrived, its
    # EOF not yet) and the pool lent it out: asyncpg refuses to send on it.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)

#: Failures of opening a connection, on top of the above; a timeout here
#: never ran a statement, unlike a statement's own timeout.
CONNECT_FAILED: tuple[type[BaseException], ...] = (
    *CONNECTION_LOST,
    OSError,
    TimeoutError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def is_connection_lost(error: BaseException) -> bool:
    return isinstance(error, CONNECTION_LOST)


def is_connect_failure(error: BaseException) -> bool:
    return isinstance(error, CONNECT_FAILED)


def backoff_s(attempt: int, base_s: float = 0.05, cap_s: float = 1.0) -> float:
    """Full-jitter exponential backoff before attempt ``attempt + 1`` (``attempt`` counts from 1)."""
    return random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))
