"""Bulk inserts with COPY, into tables and columns our code names.

``COPY`` is several times faster than ``executemany`` for many rows. The
seed built ``INSERT INTO ${table} (${columns})`` from its input, an injection
hole; here the table and columns must appear in this fixed allow-list (the
test suite checks it against the migrated schema), and asyncpg quotes them.
"""

from __future__ import annotations

from collections.abc import Sequence

#: Tables that take bulk inserts, with the columns a caller may fill.
COPY_COLUMNS: dict[str, frozenset[str]] = {
    "whatsapp_auth_logs": frozenset(
        {
            "id",
            "company_id",
            "phone_number",
            "user_id",
            "event",
            "success",
            "reason",
            "provider_message_id",
            "created_at",
        }
    ),
    "messages": frozenset(
        {"id", "conversation_id", "company_id", "role", "content", "provider_message_id", "created_at"}
    ),
    "crew_memories": frozenset({"id", "crew_id", "memory_type", "content", "created_at", "last_accessed_at"}),
    "crew_agents": frozenset(
        {"id", "crew_id", "role", "goal", "backstory", "agent_type", "position", "is_active", "created_at"}
    ),
    "crew_tasks": frozenset(
        {
            "id",
            "crew_id",
            "agent_id",
            "description",
            "expected_output",
            "position",
            "status",
            "priority",
            "created_at",
        }
    ),
}


def check_copy_target(table: str, columns: Sequence[str]) -> tuple[str, ...]:
    """The columns as a tuple, after checking table and columns against the allow-list."""
    allowed = COPY_COLUMNS.get(table)
    if allowed is None:
        raise ValueError(f"table {table!r} does not take bulk inserts; allowed tables: {sorted(COPY_COLUMNS)}")
    if not columns:
        raise ValueError(f"columns: name at least one column of {table!r} to copy into")
    unknown = [column for column in columns if column not in allowed]
    if unknown:
        raise ValueError(f"columns {unknown} are not bulk-insertable into {table!r}; allowed: {sorted(allowed)}")
    if len(set(columns)) != len(columns):
        raise ValueError(f"columns {list(columns)} name a column of {table!r} twice")
    return tuple(columns)
