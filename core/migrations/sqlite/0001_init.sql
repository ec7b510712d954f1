-- relaybox schema v1 (SQLite). Every statement is idempotent.
-- Timestamps are INTEGER microseconds since the Unix epoch; ids are hyphenated UUID text.

CREATE TABLE IF NOT EXISTS {prefix}outbox (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL UNIQUE,
    topic        TEXT NOT NULL,
    key          TEXT,
    partition    INTEGER NOT NULL,
    type         TEXT NOT NULL,
    payload      BLOB NOT NULL,
    content_type TEXT NOT NULL,
    headers      TEXT NOT NULL DEFAULT '{}',
    created_at   INTEGER NOT NULL,
    available_at INTEGER NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    last_error   TEXT,
    sent_at      INTEGER
);
CREATE INDEX IF NOT EXISTS {prefix}outbox_pending ON {prefix}outbox (seq) WHERE sent_at IS NULL;
CREATE INDEX IF NOT EXISTS {prefix}outbox_held ON {prefix}outbox (partition, key, seq)
    WHERE available_at > created_at AND sent_at IS NULL;
CREATE INDEX IF NOT EXISTS {prefix}outbox_sent ON {prefix}outbox (sent_at) WHERE sent_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS {prefix}dead_letters (
    id           TEXT NOT NULL,
    origin       TEXT NOT NULL,
    topic        TEXT NOT NULL,
    key          TEXT,
    partition    INTEGER NOT NULL,
    type         TEXT NOT NULL,
    payload      BLOB NOT NULL,
    content_type TEXT NOT NULL,
    headers      TEXT NOT NULL DEFAULT '{}',
    created_at   INTEGER NOT NULL,
    attempts     INTEGER NOT NULL,
    last_error   TEXT NOT NULL,
    failed_at    INTEGER NOT NULL,
    PRIMARY KEY (id, origin)
);
CREATE INDEX IF NOT EXISTS {prefix}dead_letters_failed_at ON {prefix}dead_letters (failed_at);

CREATE TABLE IF NOT EXISTS {prefix}inbox (
    consumer_group TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    processed_at   INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, message_id)
);
CREATE INDEX IF NOT EXISTS {prefix}inbox_processed_at ON {prefix}inbox (processed_at);

CREATE TABLE IF NOT EXISTS {prefix}positions (
    consumer_group TEXT NOT NULL,
    source         TEXT NOT NULL,
    position       INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (consumer_group, source)
);

CREATE TABLE IF NOT EXISTS {prefix}leases (
    partition  INTEGER PRIMARY KEY,
    owner      TEXT,
    epoch      INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS {prefix}relay_instances (
    owner        TEXT PRIMARY KEY,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS {prefix}log (
    position     INTEGER PRIMARY KEY AUTOINCREMENT,
    id           TEXT NOT NULL,
    topic        TEXT NOT NULL,
    key          TEXT,
    partition    INTEGER NOT NULL,
    type         TEXT NOT NULL,
    payload      BLOB NOT NULL,
    content_type TEXT NOT NULL,
    headers      TEXT NOT NULL DEFAULT '{}',
    created_at   INTEGER NOT NULL,
    available_at INTEGER NOT NULL,
    appended_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS {prefix}log_topic_position ON {prefix}log (topic, position);
