//! [`RoutedSink`]: one relay publishing each topic to the transport of its route.

use std::sync::Arc;

use futures::future::join_all;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::route::Topics;
use crate::sink::{Acks, Sink};
use crate::validate::check_topic;

/// One route: the topics it serves, the sink they go to, and optionally the
/// name they are published under there.
#[derive(Clone)]
pub struct Route {
    topics: Topics,
    sink: Arc<dyn Sink>,
    destination: Option<String>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("topics", &self.topics.lane())
            .field("sink", &self.sink.name())
            .field("destination", &self.destination)
            .finish()
    }
}

impl Route {
    /// Messages of `topics` go to `sink` under their own topic name.
    pub fn new(topics: Topics, sink: Arc<dyn Sink>) -> Route {
        Route {
            topics,
            sink,
            destination: None,
        }
    }

    /// Publishes under `template` instead of the outbox topic: a name, in
    /// which `{topic}` stands for the outbox topic (`prod.{topic}`). The
    /// result must be a valid topic name.
    pub fn with_destination(mut self, template: &str) -> Result<Route> {
        check_destination(template)?;
        self.destination = Some(template.to_string());
        Ok(self)
    }

    /// The topics this route serves.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// The name `topic` is published under.
    pub fn destination_of(&self, topic: &str) -> String {
        destination(self.destination.as_deref(), topic)
    }
}

/// The name `topic` is published under with the destination `template`
/// (`{topic}` standing for the outbox topic); `topic` itself without one.
pub(crate) fn destination(template: Option<&str>, topic: &str) -> String {
    match template {
        Some(template) => template.replace("{topic}", topic),
        None => topic.to_string(),
    }
}

/// Checks a destination template: a topic name in which `{topic}` may appear.
pub(crate) fn check_destination(template: &str) -> Result<()> {
    check_topic(&template.replace("{topic}", "t")).map_err(|_| {
        Error::config(
            "destination",
            format!(
                "{template:?} is not a topic name (characters [A-Za-z0-9._-], \
                 with {{topic}} for the outbox topic)"
            ),
        )
    })
}

/// A [`Sink`] that sends each message to the first route whose topics match
/// it, renamed to the route's destination if it has one. It serves the union
/// of its routes' topics, so a relay publishing to it claims only those.
#[derive(Debug)]
pub struct RoutedSink {
    routes: Vec<Route>,
    topics: Topics,
}

impl RoutedSink {
    /// Routes in order of precedence; at least one.
    pub fn new(routes: Vec<Route>) -> Result<RoutedSink> {
        let patterns: Vec<String> = routes
            .iter()
            .flat_map(|r| r.topics.patterns().iter().map(|p| p.as_str().to_string()))
            .collect();
        if routes.is_empty() {
            return Err(Error::config("routes", "name at least one route"));
        }
        if let Some(route) = routes.iter().find(|r| r.sink.transactional().is_some()) {
            return Err(Error::config(
                "routes",
                format!(
                    "the {} transport of the route for {} publishes exactly once \
                     (transactional_id), which a relay does behind no routes: give it a relay \
                     that serves every topic of its outbox",
                    route.sink.name(),
                    route.topics.lane()
                ),
            ));
        }
        Ok(RoutedSink {
            topics: Topics::parse(&patterns)?,
            routes,
        })
    }

    /// The routes, in order of precedence.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The index of the route serving `topic`.
    pub fn route_of(&self, topic: &str) -> Option<usize> {
        self.routes.iter().position(|r| r.topics.matches(topic))
    }
}

#[async_trait::async_trait]
impl Sink for RoutedSink {
    fn name(&self) -> &str {
        "routes"
    }

    fn topics(&self) -> Option<&Topics> {
        Some(&self.topics)
    }

    async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
        self.send(batch).await.await
    }

    /// Tells each route's sink of its own messages.
    fn unrecorded(&self, messages: &[&Message]) {
        let mut own: Vec<Vec<&Message>> = vec![Vec::new(); self.routes.len()];
        for m in messages {
            if let Some(route) = self.route_of(&m.topic) {
                own[route].push(m);
            }
        }
        for (route, own) in self.routes.iter().zip(own) {
            if !own.is_empty() {
                route.sink.unrecorded(&own);
            }
        }
    }

    /// Checks every route's sink; the first that fails names its route.
    async fn check(&self) -> Result<()> {
        let results = join_all(self.routes.iter().map(|r| r.sink.check())).await;
        for (route, result) in self.routes.iter().zip(results) {
            if let Err(e) = result {
                return Err(Error::Transport {
                    transport: route.sink.name().to_string(),
                    message: format!("route {}: {e}", route.topics.lane()),
                    retryable: true,
                    message_id: None,
                });
            }
        }
        Ok(())
    }

    async fn send(&self, batch: &[Message]) -> Acks {
        let routed: Vec<Option<usize>> = batch.iter().map(|m| self.route_of(&m.topic)).collect();
        // The whole batch to one route under its own names: handed over as is.
        if let Some(Some(first)) = routed.first() {
            let route = &self.routes[*first];
            if route.destination.is_none() && routed.iter().all(|r| *r == Some(*first)) {
                return route.sink.send(batch).await;
            }
        }
        let mut parts: Vec<(usize, Vec<usize>, Vec<Message>)> = Vec::new();
        for (at, (message, route)) in batch.iter().zip(&routed).enumerate() {
            let Some(route) = *route else { continue };
            let part = match parts.iter().position(|(r, _, _)| *r == route) {
                Some(i) => &mut parts[i],
                None => {
                    parts.push((route, Vec::new(), Vec::new()));
                    parts.last_mut().expect("just pushed")
                }
            };
            let mut message = message.clone();
            message.topic = self.routes[route].destination_of(&message.topic);
            part.1.push(at);
            part.2.push(message);
        }
        let handed = join_all(
            parts
                .iter()
                .map(|(route, _, messages)| self.routes[*route].sink.send(messages)),
        )
        .await;
        let unrouted: Vec<(usize, String)> = batch
            .iter()
            .zip(&routed)
            .enumerate()
            .filter(|(_, (_, r))| r.is_none())
            .map(|(at, (m, _))| (at, m.topic.clone()))
            .collect();
        let places: Vec<Vec<usize>> = parts.into_iter().map(|(_, at, _)| at).collect();
        let ids: Vec<uuid::Uuid> = batch.iter().map(|m| m.id).collect();
        Box::pin(async move {
            let mut results: Vec<Option<Result<()>>> = (0..ids.len()).map(|_| None).collect();
            for (acks, at) in join_all(handed).await.into_iter().zip(places) {
                for (result, at) in acks.into_iter().zip(at) {
                    results[at] = Some(result);
                }
            }
            for (at, topic) in unrouted {
                results[at] = Some(Err(Error::Transport {
                    transport: "routes".into(),
                    message: format!("no route serves topic {topic:?}"),
                    retryable: false,
                    message_id: Some(ids[at]),
                }));
            }
            results
                .into_iter()
                .zip(&ids)
                .map(|(r, id)| {
                    r.unwrap_or_else(|| {
                        Err(Error::Transport {
                            transport: "routes".into(),
                            message: "the route's transport reported no result".into(),
                            retryable: true,
                            message_id: Some(*id),
                        })
                    })
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records what it was given and acknowledges everything.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl Sink for Recorder {
        fn name(&self) -> &str {
            "recorder"
        }

        async fn publish(&self, batch: &[Message]) -> Vec<Result<()>> {
            let mut seen = self.0.lock().unwrap();
            seen.extend(batch.iter().map(|m| m.topic.clone()));
            batch.iter().map(|_| Ok(())).collect()
        }
    }

    fn message(topic: &str) -> Message {
        Message::new(topic, b"{}".to_vec())
    }

    #[tokio::test]
    async fn each_topic_goes_to_its_route_renamed() {
        let orders = Arc::new(Recorder::default());
        let rest = Arc::new(Recorder::default());
        let sink = RoutedSink::new(vec![
            Route::new(Topics::parse(&["orders.*"]).unwrap(), orders.clone())
                .with_destination("prod.{topic}")
                .unwrap(),
            Route::new(Topics::parse(&["billing", "audit"]).unwrap(), rest.clone()),
        ])
        .unwrap();
        assert_eq!(sink.topics().unwrap().lane(), "audit,billing,orders.*");
        let batch = [
            message("orders.created"),
            message("billing"),
            message("stray"),
            message("orders.paid"),
        ];
        let results = sink.publish(&batch).await;
        assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok());
        assert!(matches!(
            &results[2],
            Err(Error::Transport {
                retryable: false,
                ..
            })
        ));
        assert_eq!(
            *orders.0.lock().unwrap(),
            ["prod.orders.created", "prod.orders.paid"]
        );
        assert_eq!(*rest.0.lock().unwrap(), ["billing"]);
    }

    #[test]
    fn destinations_must_make_topic_names() {
        let route = Route::new(
            Topics::parse(&["a"]).unwrap(),
            Arc::new(Recorder::default()),
        );
        assert!(route.clone().with_destination("x/{topic}").is_err());
        assert_eq!(
            route
                .with_destination("eu.{topic}")
                .unwrap()
                .destination_of("a"),
            "eu.a"
        );
    }
}
