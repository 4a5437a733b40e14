"""The lookup the admin worker makes that no earlier index serves.

``aggregate-metrics`` counts the messages of the current and the previous
hour every five minutes. ``messages`` only grows, and its seed index leads
with ``conversation_id``: without an index on ``created_at`` every run
would read the whole table.
"""

from __future__ import annotations

from .base import ConcurrentIndex, Migration

MIGRATION = Migration(
    version=3,
    name="admin_indexes",
    concurrent_indexes=(ConcurrentIndex("idx_messages_created", "messages", "(created_at)"),),
)
