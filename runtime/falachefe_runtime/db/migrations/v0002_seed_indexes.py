"""The seed's indexes, built concurrently, fixed where the seed is wrong; plus the lookups the workers make.

Fixes:

- ``idx_whatsapp_sessions_cleanup``: the seed's predicate
  ``WHERE expires_at < NOW() + INTERVAL '1 day'`` is refused (an index
  predicate must be immutable, and would be frozen at build time anyway). A
  plain index on ``(expires_at, is_active)`` serves the clean-up's range scan.
- ``IF NOT EXISTS`` on every index, and the runner rebuilds any index a
  failed concurrent build left INVALID (``IF NOT EXISTS`` alone would skip it).
"""

from __future__ import annotations

from .base import ConcurrentIndex, Migration

#: The seed's eleven indexes, under the names the seed document gives them.
SEED_INDEXES: tuple[ConcurrentIndex, ...] = (
    ConcurrentIndex(
        "idx_whatsapp_sessions_lookup", "whatsapp_sessions", "(phone_number, company_id, expires_at)", "is_active"
    ),
    ConcurrentIndex("idx_whatsapp_sessions_cleanup", "whatsapp_sessions", "(expires_at, is_active)"),
    ConcurrentIndex("idx_whatsapp_auth_logs_search", "whatsapp_auth_logs", "(phone_number, created_at, success)"),
    ConcurrentIndex("idx_crews_company_active", "crews", "(company_id, is_active, created_at)"),
    ConcurrentIndex("idx_crew_agents_active", "crew_agents", "(crew_id, is_active, agent_type)"),
    ConcurrentIndex("idx_crew_tasks_status", "crew_tasks", "(status, created_at, priority)"),
    ConcurrentIndex("idx_crew_memories_access", "crew_memories", "(crew_id, memory_type, last_accessed_at)"),
    ConcurrentIndex("idx_conversations_company_date", "conversations", "(company_id, created_at DESC)"),
    ConcurrentIndex("idx_messages_conversation_created", "messages", "(conversation_id, created_at DESC)"),
    ConcurrentIndex("idx_users_company_role", "users", "(company_id, role, is_active)"),
    ConcurrentIndex("idx_companies_active_domain", "companies", "(is_active, domain)", "domain IS NOT NULL"),
)

#: Lookups the workers make that no seed index serves.
WORKER_INDEXES: tuple[ConcurrentIndex, ...] = (
    # The crew's task templates in order.
    ConcurrentIndex("idx_crew_tasks_crew_position", "crew_tasks", "(crew_id, position)"),
    # A user's latest conversation with a crew.
    ConcurrentIndex("idx_conversations_user_crew", "conversations", "(user_id, crew_id, updated_at DESC)"),
    # The latest one-time code of a phone, and how many it requested lately.
    ConcurrentIndex("idx_phone_link_codes_phone", "phone_link_codes", "(company_id, phone_number, created_at DESC)"),
    # Clean-up of old idempotency claims.
    ConcurrentIndex("idx_processed_messages_age", "processed_messages", "(processed_at)"),
)

MIGRATION = Migration(version=2, name="seed_indexes", concurrent_indexes=SEED_INDEXES + WORKER_INDEXES)
