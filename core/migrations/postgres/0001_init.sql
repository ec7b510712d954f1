-- relaybox schema v1 (PostgreSQL). Every statement is idempotent.

CREATE TABLE IF NOT EXISTS {prefix}outbox (
    id           UUID PRIMARY KEY,
    seq          BIGINT GENERATED ALWAYS AS IDENTITY,
    topic        TEXT NOT NULL,
    key          TEXT,
    partition    INTEGER NOT NULL,
    type         TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    content_type TEXT NOT NULL,
    headers      JSONB NOT NULL DEFAULT '{}',
    created_at   TIMESTAMPTZ NOT NULL,
    available_at TIMESTAMPTZ NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    sent_at      TIMESTAMPTZ
);
-- Undelivered rows in commit-independent insertion order: what the relay claims.
CREATE INDEX IF NOT EXISTS {prefix}outbox_pending ON {prefix}outbox (seq) WHERE sent_at IS NULL;
-- Rows held back (retry backoff or delayed delivery): they hold back their key.
CREATE INDEX IF NOT EXISTS {prefix}outbox_held ON {prefix}outbox (partition, key, seq)
    WHERE available_at > created_at AND sent_at IS NULL;
-- Delivered rows kept for a retention period.
CREATE INDEX IF NOT EXISTS {prefix}outbox_sent ON {prefix}outbox (sent_at) WHERE sent_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS {prefix}dead_letters (
    id           UUID NOT NULL,
    origin       TEXT NOT NULL,
    topic        TEXT NOT NULL,
    key          TEXT,
    partition    INTEGER NOT NULL,
    type         TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    content_type TEXT NOT NULL,
    headers      JSONB NOT NULL DEFAULT '{}',
    created_at   TIMESTAMPTZ NOT NULL,
    attempts     INTEGER NOT NULL,
    last_error   TEXT NOT NULL,
    failed_at    TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (id, origin)
);
CREATE INDEX IF NOT EXISTS {prefix}dead_letters_failed_at ON {prefix}dead_letters (failed_at);

CREATE TABLE IF NOT EXISTS {prefix}inbox (
    consumer_group TEXT NOT NULL,
    message_id     UUID NOT NULL,
    processed_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer_group, message_id)
);
CREATE INDEX IF NOT EXISTS {prefix}inbox_processed_at ON {prefix}inbox (processed_at);

CREATE TABLE IF NOT EXISTS {prefix}positions (
    consumer_group TEXT NOT NULL,
    source         TEXT NOT NULL,
    position       BIGINT NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (consumer_group, source)
);

CREATE TABLE IF NOT EXISTS {prefix}leases (
    partition  INTEGER PRIMARY KEY,
    owner      TEXT,
    epoch      BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS {prefix}relay_instances (
    owner        TEXT PRIMARY KEY,
    started_at   TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS {prefix}log (
    position     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id           UUID NOT NULL,
    topic        TEXT NOT NULL,
    key          TEXT,
    partition    INTEGER NOT NULL,
    type         TEXT NOT NULL,
    payload      BYTEA NOT NULL,
    content_type TEXT NOT NULL,
    headers      JSONB NOT NULL DEFAULT '{}',
    created_at   TIMESTAMPTZ NOT NULL,
    available_at TIMESTAMPTZ NOT NULL,
    appended_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX IF NOT EXISTS {prefix}log_topic_position ON {prefix}log (topic, position);
