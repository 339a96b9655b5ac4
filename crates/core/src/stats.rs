//! Operation statistics: how long each public [`VolumeService`] operation
//! took and how it failed, per (operation, driver), and the counters of the
//! self-healing actions (pool remediation, volume autogrow) that the watchers
//! bump.
//!
//! Plain numbers behind one short lock, no metrics library: a front-end
//! (`ballast_server::metrics`) reads a [`StatsSnapshot`] at scrape time and
//! turns it into its exposition format. Operations take milliseconds to
//! seconds, so one uncontended mutex per operation costs nothing measurable.
//! This module does no I/O and holds no policy; the one timing wrapper,
//! [`VolumeService::timed`], is applied by the public operations.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::Result;
use crate::host::IoStats;
use crate::model::Volume;
use crate::VolumeService;

/// The public operations that are timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Create,
    /// A create from a snapshot or another volume.
    Clone,
    /// Mount / publish (stage on first use, add a consumer).
    Mount,
    /// Unmount / unpublish (remove a consumer, unstage with the last).
    Unmount,
    Resize,
    Delete,
    Snapshot,
    DeleteSnapshot,
}

impl Operation {
    pub const ALL: [Operation; 8] = [
        Operation::Create,
        Operation::Clone,
        Operation::Mount,
        Operation::Unmount,
        Operation::Resize,
        Operation::Delete,
        Operation::Snapshot,
        Operation::DeleteSnapshot,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Clone => "clone",
            Operation::Mount => "mount",
            Operation::Unmount => "unmount",
            Operation::Resize => "resize",
            Operation::Delete => "delete",
            Operation::Snapshot => "snapshot",
            Operation::DeleteSnapshot => "delete_snapshot",
        }
    }
}

/// The driver label of an operation whose volume or pool does not exist.
pub const UNKNOWN_DRIVER: &str = "unknown";

/// Upper bounds (seconds) of the duration buckets; a last bucket, +Inf,
/// takes the rest. From a dir create (well under a millisecond) to a full
/// copy of a large image (tens of seconds).
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A duration histogram: per-bucket (not cumulative) counts, the last one
/// for durations above every bound.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DurationHistogram {
    pub buckets: [u64; DURATION_BUCKETS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
}

impl DurationHistogram {
    pub fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_seconds += secs;
        self.count += 1;
    }
}

/// What [`Stats::snapshot`] returns: a consistent copy, sorted by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    /// (operation, driver) → durations of every call, failed ones included.
    pub durations: BTreeMap<(Operation, &'static str), DurationHistogram>,
    /// (operation, driver, error code) → failed calls.
    pub errors: BTreeMap<(Operation, &'static str, &'static str), u64>,
    /// Pool → capacity added by the pool's watcher.
    pub remediations: BTreeMap<String, u64>,
    /// Pool → online grows of its volumes by the autogrow watcher.
    pub autogrows: BTreeMap<String, u64>,
}

/// The live counters; see the module doc.
#[derive(Debug, Default)]
pub struct Stats {
    inner: Mutex<StatsSnapshot>,
}

impl Stats {
    /// Record one call: its duration, and its error code if it failed.
    pub fn observe(
        &self,
        op: Operation,
        driver: &'static str,
        elapsed: Duration,
        error: Option<&'static str>,
    ) {
        let mut s = self.inner.lock();
        s.durations
            .entry((op, driver))
            .or_default()
            .observe(elapsed);
        if let Some(code) = error {
            *s.errors.entry((op, driver, code)).or_default() += 1;
        }
    }

    /// A pool's watcher added capacity to it.
    pub fn record_remediation(&self, pool: &str) {
        *self
            .inner
            .lock()
            .remediations
            .entry(pool.to_string())
            .or_default() += 1;
    }

    /// A volume of this pool grew by itself.
    pub fn record_autogrow(&self, pool: &str) {
        *self
            .inner
            .lock()
            .autogrows
            .entry(pool.to_string())
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.inner.lock().clone()
    }
}

impl VolumeService {
    /// The service's operation statistics.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Run one public operation and record its duration and outcome.
    pub(crate) fn timed<T>(
        &self,
        op: Operation,
        driver: &'static str,
        f: impl FnOnce() -> Result<T>,
    ) -> Result<T> {
        let start = Instant::now();
        let result = f();
        let code = result.as_ref().err().map(crate::Error::code);
        self.stats.observe(op, driver, start.elapsed(), code);
        result
    }

    /// The driver label of an operation on volume `name`, read before it runs
    /// (a delete removes the record).
    pub(crate) fn volume_driver_label(&self, name: &str) -> &'static str {
        self.volumes
            .read()
            .get(name)
            .map_or(UNKNOWN_DRIVER, |v| v.driver.as_str())
    }

    /// The driver label of a create in `pool` (None: the default pool).
    pub(crate) fn pool_driver_label(&self, pool: Option<&str>) -> &'static str {
        self.pools
            .read()
            .get(pool.unwrap_or("default"))
            .map_or(UNKNOWN_DRIVER, |p| p.driver.as_str())
    }

    /// The driver label of an operation on snapshot `name`.
    pub(crate) fn snapshot_driver_label(&self, name: &str) -> &'static str {
        let pool = self.snapshots.read().get(name).map(|s| s.pool.clone());
        pool.map_or(UNKNOWN_DRIVER, |p| self.pool_driver_label(Some(&p)))
    }

    /// I/O counters of a staged volume's loop device; None for a volume
    /// with no device on this host (unstaged, or a dir volume). One read of
    /// /sys/block/<dev>/stat: callers ask only for staged volumes.
    pub fn volume_io(&self, vol: &Volume) -> Option<IoStats> {
        let device = vol.staging.as_ref()?.device.as_ref()?;
        self.host.io_stats(device).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_fall_into_their_buckets() {
        let mut h = DurationHistogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(100));
        assert_eq!(h.count, 4);
        assert_eq!(h.buckets[0], 2, "<= 1 ms: {h:?}");
        assert_eq!(h.buckets[5], 1, "<= 50 ms: {h:?}");
        assert_eq!(h.buckets[DURATION_BUCKETS.len()], 1, "+Inf: {h:?}");
        assert!((h.sum_seconds - 100.0315).abs() < 1e-9, "{}", h.sum_seconds);
    }

    #[test]
    fn errors_and_watchers_are_counted() {
        let s = Stats::default();
        s.observe(Operation::Create, "loop", Duration::from_millis(2), None);
        s.observe(
            Operation::Create,
            "loop",
            Duration::from_millis(3),
            Some("capacity"),
        );
        s.record_remediation("p");
        s.record_remediation("p");
        s.record_autogrow("q");
        let snap = s.snapshot();
        assert_eq!(snap.durations[&(Operation::Create, "loop")].count, 2);
        assert_eq!(snap.errors[&(Operation::Create, "loop", "capacity")], 1);
        assert_eq!(snap.remediations["p"], 2);
        assert_eq!(snap.autogrows["q"], 1);
    }
}
