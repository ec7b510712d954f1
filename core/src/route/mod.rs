//! Routing by topic: the topic patterns a relay serves, and the routes that
//! send each topic to its transport.
//!
//! A pattern is a topic name (`orders`) or a glob in which `*` stands for any
//! run of characters, dots included (`orders.*`, `*.created`, `*`). A relay
//! whose sink serves some topics only ([`Sink::topics`](crate::Sink::topics),
//! as a [`RoutedSink`] does) claims only rows of those topics, and shares the
//! partitions of its *lane* (its sorted patterns) with the relays serving the
//! same patterns. Relays with disjoint patterns share one outbox without
//! waiting for one another; rows of a topic that no running relay serves
//! stay pending (`relaybox status` marks them).

mod sink;

pub(crate) use sink::{check_destination, destination};
pub use sink::{Route, RoutedSink};

use std::fmt;

use crate::error::{Error, Result};

/// Longest pattern accepted (a topic's limit).
const MAX_PATTERN_LEN: usize = 249;

/// One topic pattern: a topic name, or a glob with `*`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPattern(String);

impl TopicPattern {
    /// Parses `text`: 1 to 249 characters of `[A-Za-z0-9._-]` and `*`.
    pub fn parse(text: &str) -> Result<TopicPattern> {
        let ok = !text.is_empty()
            && text.len() <= MAX_PATTERN_LEN
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*'));
        if ok {
            Ok(TopicPattern(text.to_string()))
        } else {
            Err(Error::config(
                "topics",
                format!(
                    "{text:?} is not a topic pattern: use 1 to 249 characters of \
                     [A-Za-z0-9._-], with * for any run of characters"
                ),
            ))
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `topic` matches.
    pub fn matches(&self, topic: &str) -> bool {
        glob_matches(self.0.as_bytes(), topic.as_bytes())
    }

    /// A PostgreSQL `LIKE` pattern (backslash escapes) matching the same topics.
    pub(crate) fn to_like(&self) -> String {
        let mut out = String::with_capacity(self.0.len() + 4);
        for c in self.0.chars() {
            match c {
                '*' => out.push('%'),
                '_' => out.push_str("\\_"),
                c => out.push(c),
            }
        }
        out
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Glob matching with `*` only, iterative with one backtrack point.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The topics a relay serves: a sorted set of patterns, never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics(Vec<TopicPattern>);

impl Topics {
    /// From pattern texts; duplicates are dropped. An empty list is an error.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Topics> {
        let mut parsed = patterns
            .iter()
            .map(|p| TopicPattern::parse(p.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        if parsed.is_empty() {
            return Err(Error::config("topics", "name at least one topic pattern"));
        }
        parsed.sort();
        parsed.dedup();
        Ok(Topics(parsed))
    }

    /// The patterns, sorted.
    pub fn patterns(&self) -> &[TopicPattern] {
        &self.0
    }

    /// Whether `topic` matches one of the patterns.
    pub fn matches(&self, topic: &str) -> bool {
        self.0.iter().any(|p| p.matches(topic))
    }

    /// The lane of relays serving exactly these patterns: the patterns
    /// joined with `,`. Relays of one lane share its partitions.
    pub fn lane(&self) -> String {
        self.0
            .iter()
            .map(TopicPattern::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The patterns as a JSON array (as `relay_routes.topics` keeps them).
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(&self.0.iter().map(TopicPattern::as_str).collect::<Vec<_>>())
            .expect("strings serialise")
    }

    /// Patterns read back from [`to_json`](Topics::to_json); `None` when unreadable.
    pub(crate) fn from_json(text: &str) -> Option<Topics> {
        let list: Vec<String> = serde_json::from_str(text).ok()?;
        Topics::parse(&list).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(p: &str) -> TopicPattern {
        TopicPattern::parse(p).unwrap()
    }

    #[test]
    fn exact_and_glob_patterns_match() {
        assert!(pat("orders").matches("orders"));
        assert!(!pat("orders").matches("orders.created"));
        assert!(pat("orders.*").matches("orders.created"));
        assert!(pat("orders.*").matches("orders.eu.created"));
        assert!(!pat("orders.*").matches("orders"));
        assert!(!pat("orders.*").matches("billing.created"));
        assert!(pat("*.created").matches("orders.created"));
        assert!(!pat("*.created").matches("orders.updated"));
        assert!(pat("*").matches("anything"));
        assert!(pat("a*b*c").matches("a-x-b-y-c"));
        assert!(!pat("a*b*c").matches("a-x-c-y-b"));
    }

    #[test]
    fn bad_patterns_are_config_errors() {
        for bad in ["", "orders/*", "or ders", "x%", &"a".repeat(250)] {
            let err = TopicPattern::parse(bad).unwrap_err();
            assert_eq!(err.code(), "invalid_config", "{bad:?}");
        }
        assert!(Topics::parse::<&str>(&[]).is_err());
    }

    #[test]
    fn like_patterns_escape_underscores() {
        assert_eq!(pat("order_events.*").to_like(), "order\\_events.%");
    }

    #[test]
    fn lanes_are_sorted_and_deduplicated() {
        let t = Topics::parse(&["orders.*", "billing", "orders.*"]).unwrap();
        assert_eq!(t.lane(), "billing,orders.*");
        assert_eq!(Topics::from_json(&t.to_json()), Some(t));
    }
}
