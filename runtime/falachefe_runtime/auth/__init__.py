"""The auth worker: who is writing (phone -> user), their session, and phone linking codes."""
