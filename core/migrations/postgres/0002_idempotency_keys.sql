-- relaybox schema v2 (PostgreSQL): producers' idempotency keys. Every statement is idempotent.

-- One row per (topic, key) a producer enqueued with: the id of the message
-- that key wrote. A later enqueue with the same key writes nothing and
-- returns that id. Relays stamp `released_at` once the message has left the
-- outbox (delivered or dead-lettered) and delete the row a window later.
CREATE TABLE IF NOT EXISTS {prefix}idempotency_keys (
    topic       TEXT NOT NULL,
    key         TEXT NOT NULL,
    message_id  UUID NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL,
    released_at TIMESTAMPTZ,
    PRIMARY KEY (topic, key)
);
-- Keys whose message may still wait: what each purge looks at.
CREATE INDEX IF NOT EXISTS {prefix}idempotency_keys_held ON {prefix}idempotency_keys (message_id)
    WHERE released_at IS NULL;
CREATE INDEX IF NOT EXISTS {prefix}idempotency_keys_released ON {prefix}idempotency_keys (released_at)
    WHERE released_at IS NOT NULL;
