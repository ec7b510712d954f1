-- relaybox schema v3 (SQLite): relays that serve some topics only. Every statement is idempotent.

-- The partition leases of relays that serve a set of topics (see the
-- PostgreSQL schema).
CREATE TABLE IF NOT EXISTS {prefix}route_leases (
    lane       TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    owner      TEXT,
    epoch      INTEGER NOT NULL DEFAULT 0,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (lane, partition)
);

-- The lane of each running relay that serves some topics only.
CREATE TABLE IF NOT EXISTS {prefix}relay_routes (
    owner  TEXT PRIMARY KEY,
    lane   TEXT NOT NULL,
    topics TEXT NOT NULL
);
