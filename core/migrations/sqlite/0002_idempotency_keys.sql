-- relaybox schema v2 (SQLite): producers' idempotency keys. Every statement is idempotent.

-- One row per (topic, key) a producer enqueued with: the id of the message
-- that key wrote (see the PostgreSQL schema).
CREATE TABLE IF NOT EXISTS {prefix}idempotency_keys (
    topic       TEXT NOT NULL,
    key         TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    released_at INTEGER,
    PRIMARY KEY (topic, key)
);
CREATE INDEX IF NOT EXISTS {prefix}idempotency_keys_held ON {prefix}idempotency_keys (message_id)
    WHERE released_at IS NULL;
CREATE INDEX IF NOT EXISTS {prefix}idempotency_keys_released ON {prefix}idempotency_keys (released_at)
    WHERE released_at IS NOT NULL;
