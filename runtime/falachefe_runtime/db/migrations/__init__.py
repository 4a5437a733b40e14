"""The schema's migrations, in the order they apply. A new one gets the next version; none is ever edited."""

from __future__ import annotations

from . import v0001_core_tables, v0002_seed_indexes, v0003_admin_indexes
from .base import ConcurrentIndex, Migration

MIGRATIONS: tuple[Migration, ...] = (
    v0001_core_tables.MIGRATION,
    v0002_seed_indexes.MIGRATION,
    v0003_admin_indexes.MIGRATION,
)

__all__ = ["MIGRATIONS", "ConcurrentIndex", "Migration"]
