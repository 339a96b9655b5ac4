//! Long operations in flight (full copies for snapshots and clones) and how
//! far each has got, so a client can draw a progress bar while its own call
//! is still running. The driver doing the work counts bytes into a
//! [`Progress`]; readers see [`Operation`]s. Nothing here is stored: after a
//! restart there is nothing in flight.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

/// Bytes done out of bytes to do, updated by the one thread doing the work.
#[derive(Debug, Default)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress {
    /// A counter nobody reads (callers that need no report).
    pub fn none() -> Self {
        Self::default()
    }

    /// How many bytes the operation will move, once it knows.
    pub fn set_total(&self, bytes: u64) {
        self.total.store(bytes, Ordering::Relaxed);
    }

    /// Start counting again from 0 (the next pass of a move).
    pub fn restart(&self, total: u64) {
        self.done.store(0, Ordering::Relaxed);
        self.total.store(total, Ordering::Relaxed);
    }

    pub fn advance(&self, bytes: u64) {
        self.done.fetch_add(bytes, Ordering::Relaxed);
    }

    /// (done, total) bytes; total is 0 until the operation knows it.
    pub fn get(&self) -> (u64, u64) {
        (
            self.done.load(Ordering::Relaxed),
            self.total.load(Ordering::Relaxed),
        )
    }
}

/// One long operation in flight.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Operation {
    /// `snapshot` or `copy` (a volume made from a snapshot or a volume).
    pub kind: String,
    /// The snapshot or volume being made.
    pub target: String,
    /// What it is copied from.
    pub source: String,
    pub started_at: DateTime<Utc>,
    pub done_bytes: u64,
    /// 0 until the operation has measured what it will copy.
    pub total_bytes: u64,
}

#[derive(Debug)]
struct Entry {
    kind: &'static str,
    target: String,
    source: String,
    started_at: DateTime<Utc>,
    progress: Arc<Progress>,
}

/// The operations in flight, keyed by a private sequence number.
#[derive(Debug, Default)]
pub struct Operations {
    next: AtomicU64,
    running: Mutex<BTreeMap<u64, Entry>>,
}

impl Operations {
    /// Register an operation; it is listed until the guard drops.
    pub fn start(
        self: &Arc<Self>,
        kind: &'static str,
        target: &str,
        source: &str,
    ) -> OperationGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(Progress::default());
        self.running.lock().insert(
            id,
            Entry {
                kind,
                target: target.to_string(),
                source: source.to_string(),
                started_at: Utc::now(),
                progress: progress.clone(),
            },
        );
        OperationGuard {
            ops: self.clone(),
            id,
            progress,
        }
    }

    pub fn list(&self) -> Vec<Operation> {
        self.running
            .lock()
            .values()
            .map(|e| {
                let (done_bytes, total_bytes) = e.progress.get();
                Operation {
                    kind: e.kind.to_string(),
                    target: e.target.clone(),
                    source: e.source.clone(),
                    started_at: e.started_at,
                    done_bytes,
                    total_bytes,
                }
            })
            .collect()
    }
}

/// Keeps an operation listed; dropping it (success, error or panic)
/// removes it.
pub struct OperationGuard {
    ops: Arc<Operations>,
    id: u64,
    progress: Arc<Progress>,
}

impl OperationGuard {
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// The counter, for a thread that reports it elsewhere.
    pub fn progress_arc(&self) -> Arc<Progress> {
        Arc::clone(&self.progress)
    }
}

impl Drop for OperationGuard {
    fn drop(&mut self) {
        self.ops.running.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_while_running_with_its_progress() {
        let ops = Arc::new(Operations::default());
        let a = ops.start("snapshot", "s1", "v1");
        let b = ops.start("copy", "v2", "s1");
        a.progress().set_total(100);
        a.progress().advance(40);
        a.progress().advance(20);
        let list = ops.list();
        assert_eq!(list.len(), 2);
        assert_eq!(
            (
                list[0].target.as_str(),
                list[0].done_bytes,
                list[0].total_bytes
            ),
            ("s1", 60, 100)
        );
        assert_eq!((list[1].kind.as_str(), list[1].total_bytes), ("copy", 0));
        drop(a);
        let list = ops.list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].target, "v2");
        drop(b);
        assert!(ops.list().is_empty());
    }
}
