"""The runtime's PostgreSQL layer: pooled access, schema migrations, bulk inserts.

``Database`` is what job handlers use; ``migrate`` is what the ``migrate``
command runs.
"""

from __future__ import annotations

from .bulk import COPY_COLUMNS
from .database import Database, DatabaseNotStarted, DatabaseStartError, Isolation, Record, Transaction
from .migrate import MigrationError, MigrationReport, migrate

__all__ = [
    "COPY_COLUMNS",
    "Database",
    "DatabaseNotStarted",
    "DatabaseStartError",
    "Isolation",
    "MigrationError",
    "MigrationReport",
    "Record",
    "Transaction",
    "migrate",
]
