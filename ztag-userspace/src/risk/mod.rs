//! Risk events: what the request phases learn about a source or a
//! principal. The gateway publishes them here; the risk engine (scores,
//! rate limits, XDP blocks) subscribes. Publishing never blocks a request:
//! a subscriber that falls behind loses the oldest events, and the loss is
//! counted.

pub mod config;
pub mod engine;

use std::net::IpAddr;

use prometheus::{IntCounterVec, Opts, Registry};
use serde::Serialize;
use tokio::sync::broadcast;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The detector found prompt injection in a request.
    PromptInjection,
    /// The detector found injection in what an MCP server returned.
    IndirectInjection,
    /// The content filter found PII or a secret in a response.
    ContentLeak,
}

impl EventKind {
    /// The snake_case name (metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PromptInjection => "prompt_injection",
            EventKind::IndirectInjection => "indirect_injection",
            EventKind::ContentLeak => "content_leak",
        }
    }
}

/// One event.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub time_ms: i64,
    /// The client address (the TCP peer).
    pub source: IpAddr,
    /// The authenticated subject, if any.
    pub principal: Option<String>,
    /// The OAuth client id, if any.
    pub client_id: Option<String>,
    /// The route.
    pub route: String,
    /// What happened.
    pub kind: EventKind,
    /// Category or kind of finding (`instruction_override`, `aws_access_key` …).
    pub detail: String,
    /// Detector score, when there is one.
    pub score: Option<f32>,
}

/// The event bus.
#[derive(Clone)]
pub struct Events {
    tx: broadcast::Sender<Event>,
    published: IntCounterVec,
}

impl Events {
    /// A bus keeping at most `capacity` unread events per subscriber.
    pub fn new(capacity: usize, registry: &Registry) -> Result<Events, prometheus::Error> {
        let published = IntCounterVec::new(
            Opts::new(
                "ztag_risk_events_total",
                "Risk events published by the request phases, by kind.",
            ),
            &["kind"],
        )?;
        registry.register(Box::new(published.clone()))?;
        let (tx, _) = broadcast::channel(capacity.max(16));
        Ok(Events { tx, published })
    }

    /// Publishes (never blocks; without subscribers the event is only counted).
    pub fn publish(&self, e: Event) {
        self.published.with_label_values(&[e.kind.as_str()]).inc();
        let _ = self.tx.send(e);
    }

    /// A new subscriber, seeing events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
