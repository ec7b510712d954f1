//! The leases a relay's statements work on: those of the relays that serve
//! every topic (`leases`), or those of one lane of relays that serve some
//! topics only (`route_leases` rows of that lane), with the claim limited to
//! the lane's topics. See [`crate::route`].

use crate::route::Topics;

/// Pieces of SQL that put a relay's lease and claim statements in its scope.
/// Every piece is built from a table prefix and topic patterns, whose
/// characters (`[a-z0-9_]`, `[A-Za-z0-9._-*,]`) need no quoting.
#[derive(Clone, Debug)]
pub(crate) struct LeaseScope {
    /// The lease table.
    pub leases: String,
    /// A condition on lease rows, followed by `AND` (empty for every topic).
    pub mine: String,
    /// A condition on `relay_instances` rows, preceded by `AND`: the
    /// instances sharing these leases.
    pub peers: String,
    /// A condition on the claimed outbox row `o`, preceded by `AND` (empty
    /// for every topic): PostgreSQL `LIKE` patterns.
    pub topics_pg: String,
    /// The same condition for SQLite (`GLOB` patterns, case-sensitive).
    pub topics_sqlite: String,
    /// The lane and its topics as JSON, for relays serving some topics only.
    pub lane: Option<(String, String)>,
    /// A condition on the claimed outbox row `o`, preceded by `AND` (empty
    /// when keys are not parked): no dead letter of the relay holds its key
    /// (same partition and key). The same text for both dialects.
    pub parked: String,
}

impl LeaseScope {
    /// The scope of relays serving every topic.
    pub fn every_topic(p: &str) -> LeaseScope {
        LeaseScope {
            leases: format!("{p}leases"),
            mine: String::new(),
            peers: format!("owner NOT IN (SELECT owner FROM {p}relay_routes)"),
            topics_pg: String::new(),
            topics_sqlite: String::new(),
            lane: None,
            parked: parked_condition(p),
        }
    }

    /// The scope of relays serving exactly `topics`.
    pub fn lane(p: &str, topics: &Topics) -> LeaseScope {
        let lane = topics.lane();
        let any = |render: &dyn Fn(&str) -> String| {
            let terms: Vec<String> = topics
                .patterns()
                .iter()
                .map(|t| render(t.as_str()))
                .collect();
            format!(" AND ({})", terms.join(" OR "))
        };
        let topics_pg = any(&|t| {
            if t.contains('*') {
                let like = crate::route::TopicPattern::parse(t)
                    .map(|p| p.to_like())
                    .unwrap_or_default();
                format!("o.topic LIKE '{like}'")
            } else {
                format!("o.topic = '{t}'")
            }
        });
        let topics_sqlite = any(&|t| {
            if t.contains('*') {
                format!("o.topic GLOB '{t}'")
            } else {
                format!("o.topic = '{t}'")
            }
        });
        LeaseScope {
            leases: format!("{p}route_leases"),
            mine: format!("lane = '{lane}' AND "),
            peers: format!("owner IN (SELECT owner FROM {p}relay_routes WHERE lane = '{lane}')"),
            topics_pg,
            topics_sqlite,
            lane: Some((lane, topics.to_json())),
            parked: parked_condition(p),
        }
    }

    /// This scope with keys parked behind the relay's dead letters (`on`,
    /// the default of both constructors) or not.
    pub fn parking(self, p: &str, on: bool) -> LeaseScope {
        LeaseScope {
            parked: if on {
                parked_condition(p)
            } else {
                String::new()
            },
            ..self
        }
    }
}

/// The parked-key condition on the outbox row `o` (see [`LeaseScope::parked`]),
/// served by the partial index `dead_letters_parked` (migration 4). The
/// first test, evaluated once per statement, skips the per-row test while
/// no key is parked; inside the `OR`, PostgreSQL evaluates the per-row test
/// as a hashed subplan (the relay's keyed dead letters read once) rather
/// than an anti-join it may plan as a sort of the whole outbox.
fn parked_condition(p: &str) -> String {
    format!(
        " AND (NOT EXISTS (SELECT 1 FROM {p}dead_letters WHERE origin = 'relay' AND key IS NOT NULL) \
         OR NOT EXISTS (SELECT 1 FROM {p}dead_letters d WHERE d.origin = 'relay' AND d.key IS NOT NULL \
         AND d.partition = o.partition AND d.key = o.key))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_limit_the_claim_to_their_topics() {
        let topics = Topics::parse(&["orders.*", "audit_log"]).unwrap();
        let scope = LeaseScope::lane("app_", &topics);
        assert_eq!(scope.leases, "app_route_leases");
        assert_eq!(scope.mine, "lane = 'audit_log,orders.*' AND ");
        assert_eq!(
            scope.topics_pg,
            " AND (o.topic = 'audit_log' OR o.topic LIKE 'orders.%')"
        );
        assert_eq!(
            scope.topics_sqlite,
            " AND (o.topic = 'audit_log' OR o.topic GLOB 'orders.*')"
        );
        let every = LeaseScope::every_topic("app_");
        assert_eq!(every.leases, "app_leases");
        assert!(every.mine.is_empty() && every.topics_pg.is_empty());
    }

    #[test]
    fn parking_adds_or_drops_the_dead_letter_condition() {
        let every = LeaseScope::every_topic("app_");
        assert!(every
            .parked
            .contains("FROM app_dead_letters d WHERE d.origin = 'relay'"));
        assert!(every
            .parked
            .contains("d.partition = o.partition AND d.key = o.key"));
        let off = every.clone().parking("app_", false);
        assert!(off.parked.is_empty());
        assert_eq!(off.parking("app_", true).parked, every.parked);
    }
}
