"""The seed's tables, plus what the auth and crew workers need to be correct.

Additions to the seed, and why:

- ``phone_link_codes``: one-time codes that link a phone to a user; only a
  hash of the code is stored.
- ``processed_messages``: a provider message id is claimed once per stage
  (``auth``, ``crew``) with ``INSERT ... ON CONFLICT DO NOTHING``, so a job
  delivered twice has one effect (BullMQ is at-least-once).
- unique ``(company_id, provider_message_id)`` on ``messages`` for the same
  reason, and at most one active session per user, so two concurrent jobs
  for one phone cannot open two sessions (upsert on it).
- ``whatsapp_auth_logs.company_id`` has no foreign key: the audit trail
  records attempts against unknown companies and outlives deleted ones.

Every table is created ``IF NOT EXISTS`` so a database that already has part
of the schema (e.g. from the original app) is completed rather than refused.
"""

from __future__ import annotations

from .base import Migration

MIGRATION = Migration(
    version=1,
    name="core_tables",
    statements=(
        """
        CREATE TABLE IF NOT EXISTS companies (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name text NOT NULL,
            domain text,
            is_active boolean NOT NULL DEFAULT true,
            settings jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS users (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            company_id uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            phone_number text NOT NULL
                CONSTRAINT users_phone_number_e164 CHECK (phone_number ~ '^\\+[1-9][0-9]{6,14}$'),
            name text,
            role text NOT NULL DEFAULT 'user',
            is_active boolean NOT NULL DEFAULT true,
            is_blocked boolean NOT NULL DEFAULT false,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT users_company_phone_unique UNIQUE (company_id, phone_number)
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS whatsapp_sessions (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            company_id uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            phone_number text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            last_used_at timestamptz NOT NULL DEFAULT now(),
            is_active boolean NOT NULL DEFAULT true
        )
        """,
        """
        CREATE UNIQUE INDEX IF NOT EXISTS uq_whatsapp_sessions_active_user
            ON whatsapp_sessions (user_id) WHERE is_active
        """,
        """
        CREATE TABLE IF NOT EXISTS whatsapp_auth_logs (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            company_id uuid NOT NULL,
            phone_number text NOT NULL,
            user_id uuid REFERENCES users (id) ON DELETE SET NULL,
            event text NOT NULL,
            success boolean NOT NULL,
            reason text,
            provider_message_id text,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS phone_link_codes (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            company_id uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            phone_number text NOT NULL,
            code_hash bytea NOT NULL,
            attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
            expires_at timestamptz NOT NULL,
            consumed_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS processed_messages (
            company_id uuid NOT NULL,
            provider_message_id text NOT NULL,
            stage text NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (company_id, provider_message_id, stage)
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS crews (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            company_id uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            name text NOT NULL,
            process text NOT NULL DEFAULT 'sequential'
                CONSTRAINT crews_process_kind CHECK (process IN ('sequential', 'hierarchical')),
            is_active boolean NOT NULL DEFAULT true,
            configuration jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS crew_agents (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            crew_id uuid NOT NULL REFERENCES crews (id) ON DELETE CASCADE,
            role text NOT NULL,
            goal text NOT NULL,
            backstory text NOT NULL DEFAULT '',
            agent_type text NOT NULL DEFAULT 'specialist',
            position integer NOT NULL DEFAULT 0,
            is_active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS crew_tasks (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            crew_id uuid NOT NULL REFERENCES crews (id) ON DELETE CASCADE,
            agent_id uuid REFERENCES crew_agents (id) ON DELETE SET NULL,
            description text NOT NULL,
            expected_output text NOT NULL DEFAULT '',
            position integer NOT NULL DEFAULT 0,
            status text NOT NULL DEFAULT 'active',
            priority integer NOT NULL DEFAULT 0,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS crew_memories (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            crew_id uuid NOT NULL REFERENCES crews (id) ON DELETE CASCADE,
            memory_type text NOT NULL,
            content text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            last_accessed_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS conversations (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            company_id uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
            crew_id uuid REFERENCES crews (id) ON DELETE SET NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE TABLE IF NOT EXISTS messages (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
            company_id uuid NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
            role text NOT NULL CONSTRAINT messages_role_kind CHECK (role IN ('user', 'assistant')),
            content text NOT NULL,
            provider_message_id text,
            created_at timestamptz NOT NULL DEFAULT now()
        )
        """,
        """
        CREATE UNIQUE INDEX IF NOT EXISTS uq_messages_provider_message
            ON messages (company_id, provider_message_id) WHERE provider_message_id IS NOT NULL
        """,
    ),
)
