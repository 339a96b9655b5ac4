//! Events: what happened to pools and volumes, kept in the store (the last
//! [`KEEP`] of them) and broadcast live to subscribers (SSE, dashboard).

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use utoipa::ToSchema;

/// How many events the store and memory keep.
pub const KEEP: u64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Create,
    Delete,
    Mount,
    Unmount,
    Resize,
    Autogrow,
    Snapshot,
    Reconcile,
    Warning,
    /// A pool's watcher added capacity to it.
    Remediation,
    /// Needs an operator now: a pool at its max size above its watermark,
    /// or one that could not be brought up.
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub kind: EventKind,
    pub pool: Option<String>,
    pub volume: Option<String>,
    pub message: String,
}

pub fn event_key(seq: u64) -> String {
    format!("event/{seq:020}")
}

/// The in-memory tail of the event log and the live channel.
pub struct EventLog {
    inner: Mutex<(u64, VecDeque<Event>)>,
    live: broadcast::Sender<Event>,
}

impl EventLog {
    pub fn new(restored: Vec<Event>) -> Self {
        let next = restored.last().map_or(1, |e| e.seq + 1);
        let (live, _) = broadcast::channel(1024);
        Self {
            inner: Mutex::new((next, restored.into())),
            live,
        }
    }

    /// Reserve the next sequence number and build the event; it is published
    /// with [`EventLog::publish`] once its transaction has committed.
    pub fn next(
        &self,
        kind: EventKind,
        pool: Option<&str>,
        volume: Option<&str>,
        message: String,
    ) -> Event {
        let mut inner = self.inner.lock();
        let seq = inner.0;
        inner.0 += 1;
        Event {
            seq,
            time: Utc::now(),
            kind,
            pool: pool.map(String::from),
            volume: volume.map(String::from),
            message,
        }
    }

    pub fn publish(&self, event: Event) {
        let mut inner = self.inner.lock();
        inner.1.push_back(event.clone());
        while inner.1.len() as u64 > KEEP {
            inner.1.pop_front();
        }
        let _ = self.live.send(event);
    }

    pub fn recent(&self, limit: usize) -> Vec<Event> {
        let inner = self.inner.lock();
        let skip = inner.1.len().saturating_sub(limit);
        inner.1.iter().skip(skip).cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.live.subscribe()
    }
}
