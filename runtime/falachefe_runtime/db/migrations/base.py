"""What a migration is: a versioned set of statements, or of indexes built concurrently.

``CREATE INDEX CONCURRENTLY`` cannot run inside a transaction, so a migration
is one or the other: statements applied in one transaction (all or nothing),
or indexes built one by one outside any transaction (each verified valid
afterwards, since a failed concurrent build leaves an INVALID index behind).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class ConcurrentIndex:
    """An index built with ``CREATE INDEX CONCURRENTLY``; every name here is a constant of ours."""

    name: str
    table: str
    #: The parenthesised key list, e.g. ``(company_id, created_at DESC)``.
    keys: str
    #: A partial index's predicate; it must be immutable (no ``NOW()``).
    where: str | None = None
    unique: bool = False

    def __post_init__(self) -> None:
        for field, value in (("name", self.name), ("table", self.table)):
            if not _IDENTIFIER.match(value):
                raise ValueError(f"index {field} {value!r} is not a plain lower-case identifier")
        if not (self.keys.startswith("(") and self.keys.endswith(")")):
            raise ValueError(f"index {self.name}: keys must be parenthesised, got {self.keys!r}")

    def create_sql(self) -> str:
        unique = "UNIQUE " if self.unique else ""
        where = f" WHERE {self.where}" if self.where else ""
        return f"CREATE {unique}INDEX CONCURRENTLY IF NOT EXISTS {self.name} ON {self.table} {self.keys}{where}"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...] = ()
    concurrent_indexes: tuple[ConcurrentIndex, ...] = ()

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ValueError(f"migration {self.name}: version must be positive, got {self.version}")
        if bool(self.statements) == bool(self.concurrent_indexes):
            raise ValueError(
                f"migration {self.version} ({self.name}): give either transactional statements or "
                "concurrent indexes, not both (CREATE INDEX CONCURRENTLY cannot run in a transaction)"
            )

    @property
    def checksum(self) -> str:
        """Fingerprint of the migration's SQL: an applied migration must never change."""
        parts = self.statements or tuple(index.create_sql() for index in self.concurrent_indexes)
        return hashlib.sha256("\n;\n".join(parts).encode()).hexdigest()
