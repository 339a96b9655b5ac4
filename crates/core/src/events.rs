//! Events: what happened to pools and volumes, kept in the store (the last
//! [`KEEP`] of each node's) and broadcast live to subscribers (SSE,
//! dashboard).
//!
//! An event's `seq` is the store revision of the transaction that recorded
//! it, so events of every node sharing a store are in one order, and a
//! client resuming after `seq` misses none. Its key, written before that
//! revision is known, is `event/<node>/<n>` with the node's own counter.

use std::collections::VecDeque;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::store::Txn;
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
    /// A node was fenced off shared storage, cleaned up, or unfenced.
    Fence,
    /// A volume's move to another node or pool.
    Move,
    /// A backup finished (a failed one is a warning).
    Backup,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// The store revision that recorded the event (0 until committed).
    pub seq: u64,
    /// The node the event happened on.
    #[serde(default)]
    pub node: String,
    /// This node's counter, which names the event's key.
    #[serde(skip)]
    #[schema(ignore)]
    pub slot: u64,
    pub time: DateTime<Utc>,
    pub kind: EventKind,
    pub pool: Option<String>,
    pub volume: Option<String>,
    pub message: String,
}

pub const EVENT_PREFIX: &str = "event/";

pub fn event_key(node: &str, slot: u64) -> String {
    format!("{EVENT_PREFIX}{node}/{slot:020}")
}

/// The node and counter of an event key; single-node releases wrote
/// `event/<n>` (node "").
pub fn parse_event_key(key: &str) -> Option<(&str, u64)> {
    let rest = key.strip_prefix(EVENT_PREFIX)?;
    let (node, n) = rest.rsplit_once('/').unwrap_or(("", rest));
    Some((node, n.parse().ok()?))
}

impl Event {
    /// Add the event to `txn`, and drop this node's event [`KEEP`] older.
    pub fn add_to(&self, txn: Txn) -> Txn {
        let value = serde_json::to_vec(self).expect("events serialise");
        let txn = txn.put(event_key(&self.node, self.slot), value);
        if self.slot > KEEP {
            txn.delete(event_key(&self.node, self.slot - KEEP))
        } else {
            txn
        }
    }

    /// An event read from the store: its order is the key's revision.
    pub fn from_record(key: &str, value: &[u8], mod_revision: u64) -> Option<Event> {
        let (node, slot) = parse_event_key(key)?;
        let mut ev: Event = serde_json::from_slice(value).ok()?;
        ev.seq = mod_revision;
        ev.slot = slot;
        if ev.node.is_empty() {
            ev.node = node.to_string();
        }
        Some(ev)
    }
}

/// The in-memory tail of the event log (every node's, in revision order)
/// and the live channel.
pub struct EventLog {
    node: String,
    /// This node's next counter, and the tail.
    inner: Mutex<(u64, VecDeque<Event>)>,
    live: broadcast::Sender<Event>,
}

impl EventLog {
    pub fn new(node: &str, mut restored: Vec<Event>) -> Self {
        restored.sort_by_key(|e| e.seq);
        let next = restored
            .iter()
            .filter(|e| e.node == node)
            .map(|e| e.slot + 1)
            .max()
            .unwrap_or(1);
        let skip = restored
            .len()
            .saturating_sub(usize::try_from(KEEP).unwrap_or(usize::MAX));
        let (live, _) = broadcast::channel(1024);
        Self {
            node: node.to_string(),
            inner: Mutex::new((next, restored.into_iter().skip(skip).collect())),
            live,
        }
    }

    /// Reserve this node's next counter and build the event; it is
    /// published with [`EventLog::publish`], with the revision that
    /// recorded it, once its transaction has committed.
    pub fn next(
        &self,
        kind: EventKind,
        pool: Option<&str>,
        volume: Option<&str>,
        message: String,
    ) -> Event {
        let mut inner = self.inner.lock();
        let slot = inner.0;
        inner.0 += 1;
        Event {
            seq: 0,
            node: self.node.clone(),
            slot,
            time: Utc::now(),
            kind,
            pool: pool.map(String::from),
            volume: volume.map(String::from),
            message,
        }
    }

    /// Take a committed event into the tail (in revision order: another
    /// node's event can arrive after a newer one of ours) and send it live.
    pub fn publish(&self, event: Event) {
        let mut inner = self.inner.lock();
        let at = inner.1.partition_point(|e| e.seq <= event.seq);
        if at > 0 && inner.1[at - 1].seq == event.seq && inner.1[at - 1].node == event.node {
            return;
        }
        inner.1.insert(at, event.clone());
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
