//! The SQL the relay runs on PostgreSQL, for operators and benchmarks that
//! `EXPLAIN` it: the claim of a batch, the fused move of a batch into the log
//! (the path a [`DatabaseSink`](crate::DatabaseSink) on the relay's own store
//! takes) and the database transport's log append. The PostgreSQL store
//! builds these statements with the functions of this module, so the text
//! returned is the text the relay sends.
//!
//! Each public function takes the store's table prefix
//! ([`StoreOptions::table_prefix`](crate::StoreOptions::table_prefix)) and
//! returns the statement as a relay serving every topic runs it, with keys
//! parked behind the relay's dead letters (the defaults). The texts follow
//! the schema and change with it between versions: read them, do not store
//! them.

use super::scope::LeaseScope;

/// The settings the relay's batch transactions begin with (`SET LOCAL`
/// commands, `;`-separated): run them first in a transaction to `EXPLAIN` a
/// statement of this module with the plan the relay gets. Among them,
/// `plan_cache_mode = force_generic_plan` (one plan per connection) and
/// `enable_seqscan = off` (that plan reads the outbox through its indexes
/// even when it was made while the outbox was empty).
pub fn batch_settings() -> &'static str {
    super::postgres::BATCH_BEGIN
        .strip_prefix("BEGIN; ")
        .unwrap_or(super::postgres::BATCH_BEGIN)
}

/// The relay's claim: up to `$4` claimable rows of the partitions whose
/// leases relay `$1` holds in batch loop `$3` of `$2` (`partition % $2 =
/// $3`), in `seq` order, locked `FOR UPDATE SKIP LOCKED`, with the lease
/// rows locked `FOR KEY SHARE`. Parameters: `$1` text, `$2` and `$3` int4,
/// `$4` int8.
pub fn claim(prefix: &str) -> String {
    claim_sql(prefix, &LeaseScope::every_topic(prefix))
}

/// The fused relay path's statement: claims up to `$2` due rows of the
/// partitions in `$1` (int4[]), deletes them from the outbox and appends them
/// to the log in `seq` order, all in one statement, returning each row's
/// topic. Runs in the claim transaction, after the lease rows are locked.
pub fn move_to_log(prefix: &str) -> String {
    let scope = LeaseScope::every_topic(prefix);
    move_to_log_sql(prefix, &scope.topics_pg, &scope.parked, MOVE, false)
}

/// The database transport's log append: one row per element of the ten
/// parallel arrays `$1` id (uuid[]), `$2` topic, `$3` key (text[]), `$4`
/// partition (int4[]), `$5` type (text[]), `$6` payload (bytea[]), `$7`
/// content type, `$8` headers as JSON text (text[]), `$9` created at and
/// `$10` available at (timestamptz[]), appended in array order.
pub fn log_append(prefix: &str) -> String {
    log_append_sql(prefix)
}

/// The relay's claim, in one statement: the lease rows this batch loop
/// holds (`$1` owner, slice `partition % $2 = $3`) locked `FOR KEY SHARE`
/// (see the store's `claim_leases`), then up to `$4` claimable rows of their
/// partitions in `seq` order, locked `FOR UPDATE SKIP LOCKED`. A row is
/// claimable when no earlier row of its key is held back (retry backoff,
/// delayed delivery) and, when the relay parks keys, no dead letter of the
/// relay holds its key. When the loop holds no lease, the one-time `EXISTS`
/// test stops the statement before it reads the outbox.
pub(crate) fn claim_sql(p: &str, scope: &LeaseScope) -> String {
    let LeaseScope {
        leases: l,
        mine: m,
        topics_pg: topics,
        parked,
        ..
    } = scope;
    format!(
        "WITH held AS MATERIALIZED (SELECT partition FROM {l} \
             WHERE {m}owner = $1 AND expires_at > now() AND partition % $2 = $3 ORDER BY partition FOR KEY SHARE) \
         SELECT o.ctid::text AS row_address, o.seq, o.partition, o.attempts, o.id, o.topic, o.key, o.type, o.payload, o.content_type, o.headers::text AS headers, o.created_at, o.available_at \
         FROM {p}outbox o \
         WHERE EXISTS (SELECT 1 FROM held) \
         AND o.sent_at IS NULL AND o.partition = ANY(ARRAY(SELECT partition FROM held)) AND o.available_at <= now(){topics} \
         AND NOT EXISTS (SELECT 1 FROM {p}outbox h WHERE h.available_at > h.created_at AND h.sent_at IS NULL \
             AND h.partition = o.partition AND h.key = o.key AND h.seq < o.seq AND h.available_at > now()){parked} \
         ORDER BY o.seq LIMIT $4 FOR UPDATE OF o SKIP LOCKED"
    )
}

// `ctid = ANY(ARRAY(...))` reads each claimed row's page directly (a TID
// scan); a join with the CTE turns into a scan of the whole outbox for large
// batches.
/// How [`move_to_log_sql`] takes claimed rows out of the outbox: deletes them.
pub(crate) const MOVE: &str =
    "DELETE FROM {p}outbox o WHERE o.ctid = ANY(ARRAY(SELECT ctid FROM claimed))";
/// How [`move_to_log_sql`] takes claimed rows out of the outbox: marks them sent.
pub(crate) const COPY: &str =
    "UPDATE {p}outbox o SET sent_at = now() WHERE o.ctid = ANY(ARRAY(SELECT ctid FROM claimed))";

/// The statement moving (or copying) claimed rows into the log: claims due
/// rows of the partitions in `$1` (at most `$2`), takes them out of the
/// outbox with `take` ([`MOVE`] or [`COPY`]) and appends them to the log in
/// `seq` order, all in one statement, so the payloads never leave the
/// server. It returns each row's topic, and with `traced` its id and trace
/// context headers. Rows are claimed as by [`claim_sql`], `parked` included.
pub(crate) fn move_to_log_sql(
    p: &str,
    topics: &str,
    parked: &str,
    take: &str,
    traced: bool,
) -> String {
    let take = take.replace("{p}", p);
    let returning = if traced {
        "topic, id, headers->>'traceparent', headers->>'tracestate'"
    } else {
        "topic"
    };
    format!(
        "WITH claimed AS (SELECT o.ctid FROM {p}outbox o \
             WHERE o.sent_at IS NULL AND o.partition = ANY($1) AND o.available_at <= now(){topics} \
             AND NOT EXISTS (SELECT 1 FROM {p}outbox h WHERE h.available_at > h.created_at AND h.sent_at IS NULL \
                 AND h.partition = o.partition AND h.key = o.key AND h.seq < o.seq AND h.available_at > now()){parked} \
             ORDER BY o.seq LIMIT $2 FOR UPDATE OF o SKIP LOCKED), \
         taken AS ({take} RETURNING o.seq, o.id, o.topic, o.key, o.partition, o.type, o.payload, o.content_type, o.headers, o.created_at, o.available_at) \
         INSERT INTO {p}log (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, appended_at) \
         SELECT id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, now() FROM taken ORDER BY seq \
         RETURNING {returning}"
    )
}

/// The log append of [`log_append`] (see there for its parameters).
pub(crate) fn log_append_sql(p: &str) -> String {
    format!(
        "INSERT INTO {p}log (id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, appended_at) \
         SELECT u.id, u.topic, u.key, u.partition, u.type, u.payload, u.content_type, u.headers::jsonb, u.created_at, u.available_at, now() \
         FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::bytea[], $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[]) WITH ORDINALITY \
         AS u(id, topic, key, partition, type, payload, content_type, headers, created_at, available_at, ord) ORDER BY u.ord"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_statements_carry_the_prefix_and_the_default_scope() {
        let claim = claim("app_");
        assert!(claim.contains("FROM app_leases"));
        assert!(claim.contains("FROM app_outbox o"));
        assert!(claim.contains(&LeaseScope::every_topic("app_").parked));
        let moved = move_to_log("app_");
        assert!(moved.contains("taken AS (DELETE FROM app_outbox o"));
        assert!(moved.ends_with("RETURNING topic"));
        assert!(log_append("app_").starts_with("INSERT INTO app_log "));
        assert!(batch_settings().starts_with("SET LOCAL "));
        assert!(batch_settings().contains("enable_seqscan = off"));
    }
}
