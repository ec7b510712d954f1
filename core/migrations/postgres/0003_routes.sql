-- relaybox schema v3 (PostgreSQL): relays that serve some topics only. Every statement is idempotent.

-- The partition leases of relays that serve a set of topics (a lane: the
-- sorted topic patterns of their routes). Relays of one lane share its
-- partitions as relays without routes share those of `leases`; relays of
-- disjoint lanes never wait for one another.
CREATE TABLE IF NOT EXISTS {prefix}route_leases (
    lane       TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    owner      TEXT,
    epoch      BIGINT NOT NULL DEFAULT 0,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (lane, partition)
);

-- The lane of each running relay that serves some topics only (relays
-- without a row here serve every topic): what `relaybox status` reads to
-- tell which pending topics no running relay serves.
CREATE TABLE IF NOT EXISTS {prefix}relay_routes (
    owner  TEXT PRIMARY KEY,
    lane   TEXT NOT NULL,
    topics TEXT NOT NULL
);
