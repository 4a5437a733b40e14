"""The schema's migrations, in the order they apply. A new one gets the next version; none is ever edited.

Each is a module ``vNNNN_<name>.py`` in this package defining ``MIGRATION``;
they are found by name, so adding a migration is adding its file (and an
image built with it migrates the database before its workers start: the
operator runs ``falachefe-runtime migrate`` as a Job, and workers refuse a
schema that lacks one).
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from .base import ConcurrentIndex, Migration

_MODULE = re.compile(r"^v(\d{4})_[a-z0-9_]+$")


def _discover() -> tuple[Migration, ...]:
    found: list[Migration] = []
    for module in pkgutil.iter_modules(__path__):
        match = _MODULE.match(module.name)
        if match is None:
            continue
        migration = importlib.import_module(f"{__name__}.{module.name}").MIGRATION
        if not isinstance(migration, Migration) or migration.version != int(match.group(1)):
            raise ImportError(f"{module.name} must define MIGRATION, a Migration with version {int(match.group(1))}")
        found.append(migration)
    return tuple(sorted(found, key=lambda migration: migration.version))


MIGRATIONS: tuple[Migration, ...] = _discover()

__all__ = ["MIGRATIONS", "ConcurrentIndex", "Migration"]
