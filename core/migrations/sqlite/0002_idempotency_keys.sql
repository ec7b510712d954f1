-- relaybox schema v2 (SQLite): producers' idempotency keys. Every statement is idempotent.

-- One row per (topic, key) a producer enqueued with: the id of the message
-- that key wrote (see the PostgreSQL schema).
CREATE TABLE IF NOT EXISTS {prefix}idempotency_keys (
    topic      TEXT NOT NULL,
    key        TEXT NOT NULL,
    message_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (topic, key)
);
CREATE INDEX IF NOT EXISTS {prefix}idempotency_keys_created_at ON {prefix}idempotency_keys (created_at);
