//! Long operations in flight (full copies for snapshots and clones, moves)
//! and how far each has got, so a client can draw a progress bar, with a
//! rate and an ETA, while its own call is still running. The driver doing
//! the work counts bytes into a [`Progress`]; readers see [`Operation`]s.
//! Nothing here is stored: after a restart there is nothing in flight.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

/// Bytes done out of bytes to do, updated by the one thread doing the work.
#[derive(Debug)]
pub struct Progress {
    total: AtomicU64,
    done: AtomicU64,
    /// When the count last started from 0: the rate is over this span, so
    /// a move's second pass is not averaged with its first.
    since: Mutex<Instant>,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            total: AtomicU64::new(0),
            done: AtomicU64::new(0),
            since: Mutex::new(Instant::now()),
        }
    }
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
        *self.since.lock() = Instant::now();
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

    /// Bytes per second since the count last started from 0.
    pub fn rate(&self) -> u64 {
        let (done, _) = self.get();
        rate(done, self.since.lock().elapsed())
    }
}

/// `done` bytes over `elapsed`, in bytes per second (0 before a millisecond
/// has passed: nothing to tell yet).
pub fn rate(done: u64, elapsed: std::time::Duration) -> u64 {
    let ms = elapsed.as_millis();
    if ms == 0 {
        return 0;
    }
    u64::try_from(u128::from(done) * 1000 / ms).unwrap_or(u64::MAX)
}

/// Seconds left at `rate` bytes/s; None while the total or the rate is
/// not known yet.
pub fn eta_seconds(done: u64, total: u64, rate: u64) -> Option<u64> {
    if total == 0 || rate == 0 {
        return None;
    }
    Some(total.saturating_sub(done).div_ceil(rate))
}

/// One long operation in flight.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct Operation {
    /// `snapshot`, `copy` (a volume made from a snapshot or a volume),
    /// `move`, `backup` or `restore` (a volume made from a backup).
    pub kind: String,
    /// The snapshot or volume being made; for a move or a backup, the
    /// volume.
    pub target: String,
    /// What it is copied from; for a move `node/pool → node/pool`, for a
    /// backup where it goes.
    pub source: String,
    pub started_at: DateTime<Utc>,
    /// Bytes done (of a move: in its current pass).
    pub done_bytes: u64,
    /// 0 until the operation has measured what it will copy.
    pub total_bytes: u64,
    /// Bytes per second so far (of a move: over its current pass).
    pub rate_bytes_per_sec: u64,
    /// Seconds left at that rate; null while the total or the rate is not
    /// known. Always sent.
    #[schema(required = true)]
    pub eta_seconds: Option<u64>,
}

impl Operation {
    /// An operation with its ETA worked out from the figures given.
    pub fn new(
        kind: &str,
        target: &str,
        source: &str,
        started_at: DateTime<Utc>,
        (done_bytes, total_bytes): (u64, u64),
        rate_bytes_per_sec: u64,
    ) -> Self {
        Operation {
            kind: kind.to_string(),
            target: target.to_string(),
            source: source.to_string(),
            started_at,
            done_bytes,
            total_bytes,
            rate_bytes_per_sec,
            eta_seconds: eta_seconds(done_bytes, total_bytes, rate_bytes_per_sec),
        }
    }
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
                Operation::new(
                    e.kind,
                    &e.target,
                    &e.source,
                    e.started_at,
                    e.progress.get(),
                    e.progress.rate(),
                )
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

    #[test]
    fn rate_and_eta_from_the_figures() {
        use std::time::Duration;
        assert_eq!(rate(0, Duration::ZERO), 0);
        assert_eq!(rate(100 << 20, Duration::from_secs(2)), 50 << 20);
        assert_eq!(rate(1500, Duration::from_millis(1500)), 1000);
        assert_eq!(eta_seconds(0, 0, 0), None, "nothing known yet");
        assert_eq!(eta_seconds(10, 100, 0), None, "no rate yet");
        assert_eq!(eta_seconds(0, 0, 5), None, "no total yet");
        assert_eq!(eta_seconds(40, 100, 20), Some(3));
        assert_eq!(eta_seconds(41, 100, 20), Some(3), "rounded up");
        assert_eq!(eta_seconds(100, 100, 20), Some(0));
        let op = Operation::new(
            "move",
            "v",
            "a/p → b/q",
            Utc::now(),
            (1 << 30, 2 << 30),
            1 << 28,
        );
        assert_eq!((op.rate_bytes_per_sec, op.eta_seconds), (1 << 28, Some(4)));
    }

    #[test]
    fn a_restart_starts_the_rate_again() {
        let p = Progress::default();
        p.set_total(1 << 30);
        std::thread::sleep(std::time::Duration::from_millis(20));
        p.advance(1 << 20);
        assert!(p.rate() > 0);
        p.restart(1 << 30);
        assert_eq!(p.get(), (0, 1 << 30));
        assert_eq!(p.rate(), 0, "nothing done in the new pass");
    }
}
