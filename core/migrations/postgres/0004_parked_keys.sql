-- relaybox schema v4 (PostgreSQL): keys parked behind a dead letter. Every statement is idempotent.

-- The outbox position (`seq`) a message had when the relay dead-lettered it:
-- a retry puts it back at that position, ahead of its key's later messages.
-- NULL for consumers' dead letters and for those written before this column.
ALTER TABLE {prefix}dead_letters ADD COLUMN IF NOT EXISTS seq BIGINT;

-- The relay's dead letters of keyed messages: a relay that parks keys claims
-- no later message of a key (partition and key) that has one.
CREATE INDEX IF NOT EXISTS {prefix}dead_letters_parked ON {prefix}dead_letters (partition, key)
    WHERE origin = 'relay' AND key IS NOT NULL;
