-- relaybox schema v4 (SQLite): keys parked behind a dead letter. Every statement is idempotent.

-- The outbox position (`seq`) a message had when the relay dead-lettered it,
-- by dead letter: a retry puts it back at that position, ahead of its key's
-- later messages. A table beside `dead_letters` rather than a column of it,
-- since SQLite cannot add a column only when it is missing. A dead letter
-- without a row here (a consumer's, or one written before this table) goes
-- back at the end of the outbox; rows of dead letters that are gone are
-- deleted with them.
CREATE TABLE IF NOT EXISTS {prefix}dead_letter_seqs (
    id     TEXT NOT NULL,
    origin TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (id, origin)
);

-- The relay's dead letters of keyed messages: a relay that parks keys claims
-- no later message of a key (partition and key) that has one.
CREATE INDEX IF NOT EXISTS {prefix}dead_letters_parked ON {prefix}dead_letters (partition, key)
    WHERE origin = 'relay' AND key IS NOT NULL;
