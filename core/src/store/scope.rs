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
        }
    }
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
}
