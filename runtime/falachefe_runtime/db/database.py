"""Pooled PostgreSQL access: a primary pool, an optional read-replica pool.

Every statement goes through :class:`~.monitoring.QueryMonitor` (timed,
counted, logged when slow). Routing is explicit: ``readonly=True`` sends a
read to the replica when one is configured; everything else, and every
transaction, goes to the primary.

A dropped connection is retried on a fresh one when that cannot repeat an
effect: always while acquiring a connection (nothing was sent yet), and
mid-statement only when the statement is safe to run twice: ``readonly=True``
reads, plain ``SELECT``/``SHOW``/``VALUES`` statements, and writes the caller
marks ``idempotent=True``. ``idempotent=False`` forbids it (e.g. a ``SELECT``
of a function with side effects).

JSON: ``json`` and ``jsonb`` columns are decoded to Python values and
encoded from them (pass a ``dict``, not a JSON string).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Literal, TypeVar

import asyncpg

from ..config import DatabaseSettings, PoolSettings
from ..redact import redact_text
from . import retry
from .bulk import check_copy_target
from .fingerprint import is_plain_read
from .metrics import ACQUIRE_WAIT, POOLS, REPLICA_FALLBACKS, RETRIES
from .monitoring import QueryMonitor

T = TypeVar("T")

#: asyncpg ships no type information; a row is an ``asyncpg.Record``.
Record = Any
Isolation = Literal["read_committed", "repeatable_read", "serializable"]

log = logging.getLogger("falachefe_runtime.db")

PRIMARY = "primary"
REPLICA = "replica"

#: The client gives up on a statement this long after the server should have
#: cancelled it (``statement_timeout``): only a dead network gets that far.
_CLIENT_TIMEOUT_MARGIN_S = 5.0

#: A replica outage is logged at most this often (each fallback is counted).
_FALLBACK_LOG_INTERVAL_S = 30.0


class DatabaseNotStarted(RuntimeError):
    """A query was made before ``start()`` or after ``close()``."""


class DatabaseStartError(ConnectionError):
    """A pool could not open: ``setting`` names the DSN's setting, the message why (never the DSN)."""

    def __init__(self, setting: str, error: BaseException) -> None:
        super().__init__(f"cannot open {setting}: {_why(error)}")
        self.setting = setting


def _why(error: BaseException) -> str:
    """What went wrong opening a pool, in words that hold no part of the DSN.

    The server's own messages and socket errors name hosts and users at
    most; a DSN that does not parse is only named as such, since the
    parser quotes the piece it choked on, which may be part of a password.
    """
    if isinstance(error, TimeoutError):
        return "no answer within database.connect_timeout_s"
    if isinstance(error, asyncpg.PostgresError | OSError):
        return redact_text(f"{type(error).__name__}: {error}")
    return f"the DSN is not usable ({type(error).__name__})"


async def _init_connection(connection: Any) -> None:
    """Per-connection set-up: JSON columns as Python values."""
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


class NoResetConnection(asyncpg.Connection):  # type: ignore[misc]
    """A pooled connection released without asyncpg's reset query.

    asyncpg resets a connection on every release to the pool with
    ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;``:
    one more PostgreSQL round trip for every statement run outside a
    transaction and every transaction (in ``worker_throughput``, 0.03-0.09
    ms of the worker's CPU and most of PostgreSQL's per cached auth job).
    Nothing the runtime sends leaves that state: ``QueryMonitor`` refuses
    statements that would outlive their transaction (``fingerprint.
    session_state``), so the query has nothing to undo. asyncpg still rolls
    back a transaction left open and drops listeners on release
    (``Connection._reset``), whatever this returns.
    """

    def get_reset_query(self) -> str:
        return ""


class Transaction:
    """A connection inside a transaction (or lent for one statement); statements are monitored.

    Obtained from :meth:`Database.transaction`; never retried on its own,
    since a transaction that lost its connection has been rolled back and
    only the caller knows how to start it again.
    """

    def __init__(self, connection: Any, monitor: QueryMonitor) -> None:
        self._connection = connection
        self._monitor = monitor

    async def fetch(self, sql: str, *args: Any, name: str | None = None, timeout: float | None = None) -> list[Record]:
        result: list[Record] = await self._monitor.run(
            sql, name, len(args), lambda: self._connection.fetch(sql, *args, timeout=timeout)
        )
        return result

    async def fetchrow(self, sql: str, *args: Any, name: str | None = None, timeout: float | None = None) -> Record:
        """The first row, or ``None`` when there is none."""
        return await self._monitor.run(
            sql, name, len(args), lambda: self._connection.fetchrow(sql, *args, timeout=timeout)
        )

    async def fetchval(
        self, sql: str, *args: Any, column: int = 0, name: str | None = None, timeout: float | None = None
    ) -> Any:
        return await self._monitor.run(
            sql, name, len(args), lambda: self._connection.fetchval(sql, *args, column=column, timeout=timeout)
        )

    async def execute(self, sql: str, *args: Any, name: str | None = None, timeout: float | None = None) -> str:
        """Run a statement; returns its status tag (``"UPDATE 3"``)."""
        status: str = await self._monitor.run(
            sql, name, len(args), lambda: self._connection.execute(sql, *args, timeout=timeout)
        )
        return status

    async def executemany(
        self, sql: str, args: Iterable[Sequence[Any]], *, name: str | None = None, timeout: float | None = None
    ) -> None:
        rows = list(args)
        param_count = len(rows[0]) if rows else 0
        await self._monitor.run(
            sql, name, param_count, lambda: self._connection.executemany(sql, rows, timeout=timeout)
        )

    async def copy_records(
        self,
        table: str,
        columns: Sequence[str],
        records: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
    ) -> int:
        """Bulk-insert ``records`` with binary COPY; returns the number of rows copied.

        ``table`` and ``columns`` must be in :data:`~.bulk.COPY_COLUMNS`.
        """
        checked = check_copy_target(table, columns)
        sql = f"COPY {table} ({', '.join(checked)}) FROM STDIN (FORMAT binary)"
        status: str = await self._monitor.run(
            sql,
            f"copy.{table}",
            len(checked),
            lambda: self._connection.copy_records_to_table(table, records=records, columns=checked, timeout=timeout),
        )
        return int(status.rsplit(" ", 1)[-1])


class _Pool:
    """One asyncpg pool with its role, its settings and its monitor."""

    def __init__(self, role: str, dsn: str, sizing: PoolSettings, settings: DatabaseSettings) -> None:
        self.role = role
        self.dsn = dsn
        self.sizing = sizing
        self.settings = settings
        self.monitor = QueryMonitor(role, settings.slow_query_threshold_s)
        self.acquire_wait = ACQUIRE_WAIT.labels(role)
        self.pool: Any = None

    @property
    def application_name(self) -> str:
        name = self.settings.application_name
        return name if self.role == PRIMARY else f"{name}-{REPLICA}"[:63]

    @property
    def target_session_attrs(self) -> str | None:
        """Where a multi-host DSN should land; a DSN that says so itself wins."""
        if "target_session_attrs=" in self.dsn:
            return None
        # The primary must accept writes (never a standby left over from a
        # failover); the replica pool prefers a standby but settles for
        # whatever answers, so a single-host "replica" DSN still works.
        return "read-write" if self.role == PRIMARY else "prefer-standby"

    async def open(self) -> None:
        statement_timeout_ms = int(self.sizing.statement_timeout_s * 1000)
        server_settings = {
            "application_name": self.application_name,
            "statement_timeout": str(statement_timeout_ms),
            # A transaction left open by a stuck job would hold its locks
            # and its connection forever.
            "idle_in_transaction_session_timeout": str(2 * statement_timeout_ms),
        }
        attempts = self.settings.retry_attempts
        for attempt in range(1, attempts + 1):
            try:
                self.pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=self.sizing.min_size,
                    max_size=self.sizing.max_size,
                    max_inactive_connection_lifetime=self.settings.idle_timeout_s,
                    timeout=self.settings.connect_timeout_s,
                    command_timeout=self.sizing.statement_timeout_s + _CLIENT_TIMEOUT_MARGIN_S,
                    server_settings=server_settings,
                    target_session_attrs=self.target_session_attrs,
                    init=_init_connection,
                    connection_class=NoResetConnection,
                )
                break
            except Exception as error:
                if not retry.is_connect_failure(error) or attempt == attempts:
                    raise
                RETRIES.labels(self.role, "connect").inc()
                await asyncio.sleep(retry.backoff_s(attempt, base_s=0.25, cap_s=2.0))
        POOLS.track(self.role, self.pool)

    async def close(self) -> None:
        if self.pool is None:
            return
        pool, self.pool = self.pool, None
        POOLS.forget(pool)
        await pool.close()

    async def acquire(self) -> Any:
        if self.pool is None:
            raise DatabaseNotStarted(f"the {self.role} pool is not open: call Database.start() first")
        started = time.perf_counter()
        connection = await self.pool.acquire()
        self.acquire_wait.observe(time.perf_counter() - started)
        return connection

    async def release(self, connection: Any) -> None:
        if self.pool is not None:
            await self.pool.release(connection)

    async def expire_connections(self) -> None:
        """Have every pooled connection replaced by a fresh one when it is next acquired.

        One dropped connection usually means a restart or failover: the
        pool's other connections are as dead as this one.
        """
        if self.pool is not None:
            await self.pool.expire_connections()

    async def _acquire_or_back_off(self, attempt: int) -> Any | None:
        """A connection; or ``None``, after a backoff, when acquiring failed and attempts are left.

        A failure to acquire never sent a statement, so it is always worth
        another attempt; the caller's loop counts it as one.
        """
        try:
            return await self.acquire()
        except Exception as error:
            if not retry.is_connect_failure(error) or attempt == self.settings.retry_attempts:
                raise
            RETRIES.labels(self.role, "acquire").inc()
            await asyncio.sleep(retry.backoff_s(attempt))
            return None

    async def run(self, work: Callable[[Transaction], Awaitable[T]], *, repeatable: bool) -> T:
        """Run ``work`` on a pooled connection, retrying as the module docstring says."""
        attempts = self.settings.retry_attempts
        for attempt in range(1, attempts + 1):
            connection = await self._acquire_or_back_off(attempt)
            if connection is None:
                continue
            try:
                return await work(Transaction(connection, self.monitor))
            except Exception as error:
                if not retry.is_connection_lost(error):
                    raise
                await self.expire_connections()
                if not repeatable or attempt == attempts:
                    raise
                RETRIES.labels(self.role, "query").inc()
                log.info(
                    "database connection lost on the %s pool; retrying (attempt %d of %d)",
                    self.role,
                    attempt + 1,
                    attempts,
                    extra={"event": "db_retry", "db_pool": self.role, "error": type(error).__name__},
                )
                await asyncio.sleep(retry.backoff_s(attempt))
            finally:
                await self.release(connection)
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover

    async def begin(self, *, isolation: Isolation, readonly: bool, deferrable: bool) -> tuple[Any, Any]:
        """A connection with a transaction started on it, retrying as :meth:`run` does (nothing has run yet)."""
        attempts = self.settings.retry_attempts
        for attempt in range(1, attempts + 1):
            connection = await self._acquire_or_back_off(attempt)
            if connection is None:
                continue
            transaction = connection.transaction(isolation=isolation, readonly=readonly, deferrable=deferrable)
            try:
                await transaction.start()
            except Exception as error:
                await self.release(connection)
                if not retry.is_connection_lost(error) or attempt == attempts or self.pool is None:
                    raise
                await self.expire_connections()
                RETRIES.labels(self.role, "begin").inc()
                await asyncio.sleep(retry.backoff_s(attempt))
                continue
            return connection, transaction
        raise AssertionError("unreachable: the last attempt returns or raises")  # pragma: no cover


class Database:
    """The runtime's PostgreSQL: ``await db.start()``, then ``fetch``/``execute``/``transaction``/``copy_records``."""

    def __init__(self, settings: DatabaseSettings) -> None:
        if settings.dsn is None:
            raise ValueError("database.dsn is required: set FALACHEFE_DATABASE__DSN from the database secret")
        self.settings = settings
        self._primary = _Pool(PRIMARY, settings.dsn.get_secret_value(), settings.primary, settings)
        self._replica: _Pool | None = None
        if settings.replica_dsn is not None:
            self._replica = _Pool(REPLICA, settings.replica_dsn.get_secret_value(), settings.replica, settings)
        self._next_fallback_log = 0.0

    @property
    def has_replica(self) -> bool:
        return self._replica is not None

    async def start(self) -> None:
        """Open the pools (their ``min_size`` connections), retrying a server that is not up yet.

        Raises ``DatabaseStartError`` naming the setting whose server could not be reached.
        """
        try:
            await self._primary.open()
        except Exception as error:
            raise DatabaseStartError("database.dsn", error) from error
        if self._replica is not None:
            try:
                await self._replica.open()
            except BaseException as error:
                await self._primary.close()
                if isinstance(error, Exception):
                    raise DatabaseStartError("database.replica_dsn", error) from error
                raise

    async def close(self) -> None:
        await self._primary.close()
        if self._replica is not None:
            await self._replica.close()

    async def __aenter__(self) -> Database:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def ping(self, timeout: float | None = None) -> bool:
        """Whether the primary answers ``SELECT 1`` within ``timeout`` (default: the connect timeout).

        For ``/readyz``: no retry and no exception. A replica outage does not
        make the worker unready, since reads fall back to the primary.
        """
        try:
            await self.probe(timeout)
        except Exception:
            return False
        return True

    async def probe(self, timeout: float | None = None) -> None:
        """Returns when the primary answers ``SELECT 1`` within ``timeout``; raises why not (no retry)."""
        budget = timeout if timeout is not None else self.settings.connect_timeout_s
        if self._primary.pool is None:
            raise DatabaseNotStarted("the database pools are not open")
        async with asyncio.timeout(budget):
            await self._primary.pool.fetchval("SELECT 1")

    # -- single statements -----------------------------------------------------

    async def fetch(
        self,
        sql: str,
        *args: Any,
        name: str | None = None,
        readonly: bool = False,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> list[Record]:
        """Rows of a query. ``readonly=True`` may read from the replica.

        ``idempotent`` says whether a statement may run again after its
        connection drops mid-way; by default only plain reads may (so an
        ``INSERT ... RETURNING`` is not repeated unless marked ``True``).
        """
        return await self._read_or_write(
            sql, lambda tx: tx.fetch(sql, *args, name=name, timeout=timeout), readonly=readonly, idempotent=idempotent
        )

    async def fetchrow(
        self,
        sql: str,
        *args: Any,
        name: str | None = None,
        readonly: bool = False,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> Record:
        """The first row of a query, or ``None``; routing and retries as :meth:`fetch`."""
        return await self._read_or_write(
            sql,
            lambda tx: tx.fetchrow(sql, *args, name=name, timeout=timeout),
            readonly=readonly,
            idempotent=idempotent,
        )

    async def fetchval(
        self,
        sql: str,
        *args: Any,
        column: int = 0,
        name: str | None = None,
        readonly: bool = False,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One value of the first row, or ``None``; routing and retries as :meth:`fetch`."""
        return await self._read_or_write(
            sql,
            lambda tx: tx.fetchval(sql, *args, column=column, name=name, timeout=timeout),
            readonly=readonly,
            idempotent=idempotent,
        )

    async def execute(
        self,
        sql: str,
        *args: Any,
        name: str | None = None,
        idempotent: bool | None = None,
        timeout: float | None = None,
    ) -> str:
        """Run a statement on the primary; returns its status tag (``"INSERT 0 1"``).

        A write is retried after a mid-statement disconnect only when marked
        ``idempotent=True`` (e.g. ``INSERT ... ON CONFLICT DO NOTHING`` without
        ``RETURNING``, or an ``UPDATE`` that sets absolute values).
        """
        return await self._primary.run(
            lambda tx: tx.execute(sql, *args, name=name, timeout=timeout), repeatable=_repeatable(sql, idempotent)
        )

    async def executemany(
        self,
        sql: str,
        args: Iterable[Sequence[Any]],
        *,
        name: str | None = None,
        idempotent: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Run a write once per row of ``args`` on the primary; for many rows prefer :meth:`copy_records`."""
        rows = list(args)
        await self._primary.run(lambda tx: tx.executemany(sql, rows, name=name, timeout=timeout), repeatable=idempotent)

    async def copy_records(
        self,
        table: str,
        columns: Sequence[str],
        records: Iterable[Sequence[Any]],
        *,
        timeout: float | None = None,
    ) -> int:
        """Bulk-insert with COPY on the primary; returns the rows copied. Never repeated mid-copy."""
        check_copy_target(table, columns)
        rows = list(records)
        return await self._primary.run(
            lambda tx: tx.copy_records(table, columns, rows, timeout=timeout), repeatable=False
        )

    # -- transactions ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(
        self, *, isolation: Isolation = "read_committed", readonly: bool = False, deferrable: bool = False
    ) -> AsyncIterator[Transaction]:
        """A transaction on the primary: committed when the block exits normally, else rolled back.

        Getting a connection and ``BEGIN`` are retried on a dropped
        connection (nothing has run yet); the block itself is not (see
        :class:`Transaction`).
        """
        pool = self._primary
        connection, transaction = await pool.begin(isolation=isolation, readonly=readonly, deferrable=deferrable)
        try:
            try:
                yield Transaction(connection, pool.monitor)
            except BaseException:
                with contextlib.suppress(Exception):
                    await transaction.rollback()
                raise
            await transaction.commit()
        except Exception as error:
            if retry.is_connection_lost(error):
                await pool.expire_connections()
            raise
        finally:
            await pool.release(connection)

    # -- routing ---------------------------------------------------------------

    async def _read_or_write(
        self, sql: str, work: Callable[[Transaction], Awaitable[T]], *, readonly: bool, idempotent: bool | None
    ) -> T:
        repeatable = (readonly and idempotent is not False) or _repeatable(sql, idempotent)
        if not readonly or self._replica is None:
            return await self._primary.run(work, repeatable=repeatable)
        try:
            return await self._replica.run(work, repeatable=repeatable)
        except Exception as error:
            if not retry.is_connect_failure(error):
                raise
            # A replica outage must not stop reads: the primary has the data.
            REPLICA_FALLBACKS.inc()
            now = time.monotonic()
            if now >= self._next_fallback_log:
                self._next_fallback_log = now + _FALLBACK_LOG_INTERVAL_S
                log.warning(
                    "read replica unreachable (%s); reading from the primary",
                    type(error).__name__,
                    extra={"event": "db_replica_fallback", "error": type(error).__name__},
                )
            return await self._primary.run(work, repeatable=repeatable)


def _repeatable(sql: str, idempotent: bool | None) -> bool:
    return is_plain_read(sql) if idempotent is None else idempotent
