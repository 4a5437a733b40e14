"""The crew worker's exchange (claim, user lock, conversation, both messages) as one server-side call.

Sent statement by statement, storing an exchange took six round trips
(``BEGIN``, the claim, the user's lock, the conversation, the messages,
``COMMIT``; seven when it started a conversation); called as a function it
takes one, and the statement is its
own transaction. The steps and their order are the ones the worker ran
before (see ``falachefe_runtime.crew.store``):

1. claim the provider message id for ``p_stage``; a message already
   claimed stores nothing and the call returns ``false``;
2. take the user's transaction-level advisory lock, so two concurrent
   messages of one user cannot both start a conversation;
3. touch the user's newest conversation with the crew, or start one;
4. store the message and the reply, with the transaction's ``now()``
   (how a repeat finds the reply that was stored for its message).

PL/pgSQL runs each statement under a fresh snapshot (the function is
``VOLATILE``), so the conversation lookup after the lock sees a
conversation another worker committed while this one waited for it, as
the separate statements did. Every value arrives as a parameter: no SQL is
built from data.
"""

from __future__ import annotations

from .base import Migration

MIGRATION = Migration(
    version=4,
    name="crew_exchange_function",
    statements=(
        """
        CREATE OR REPLACE FUNCTION falachefe_store_crew_exchange(
            p_company_id uuid,
            p_user_id uuid,
            p_crew_id uuid,
            p_provider_message_id text,
            p_stage text,
            p_message text,
            p_reply text
        ) RETURNS boolean
        LANGUAGE plpgsql
        VOLATILE
        AS $function$
        DECLARE
            v_conversation uuid;
        BEGIN
            INSERT INTO processed_messages (company_id, provider_message_id, stage)
                VALUES (p_company_id, p_provider_message_id, p_stage)
                ON CONFLICT DO NOTHING;
            IF NOT FOUND THEN
                RETURN false;
            END IF;
            PERFORM pg_advisory_xact_lock(hashtextextended(p_user_id::text, 0));
            UPDATE conversations SET updated_at = now() WHERE id = (
                SELECT id FROM conversations
                    WHERE user_id = p_user_id AND crew_id = p_crew_id
                    ORDER BY updated_at DESC LIMIT 1
            ) RETURNING id INTO v_conversation;
            IF v_conversation IS NULL THEN
                INSERT INTO conversations (company_id, user_id, crew_id)
                    VALUES (p_company_id, p_user_id, p_crew_id)
                    RETURNING id INTO v_conversation;
            END IF;
            INSERT INTO messages (conversation_id, company_id, role, content, provider_message_id)
                VALUES (v_conversation, p_company_id, 'user', p_message, p_provider_message_id),
                       (v_conversation, p_company_id, 'assistant', p_reply, NULL);
            RETURN true;
        END
        $function$
        """,
    ),
)
