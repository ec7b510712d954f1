-- relaybox schema v2 (PostgreSQL): producers' idempotency keys. Every statement is idempotent.

-- One row per (topic, key) a producer enqueued with: the id of the message
-- that key wrote. A later enqueue with the same key writes nothing and
-- returns that id. Rows older than the relay's idempotency window whose
-- message has left the outbox are deleted.
CREATE TABLE IF NOT EXISTS {prefix}idempotency_keys (
    topic      TEXT NOT NULL,
    key        TEXT NOT NULL,
    message_id UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, key)
);
CREATE INDEX IF NOT EXISTS {prefix}idempotency_keys_created_at ON {prefix}idempotency_keys (created_at);
