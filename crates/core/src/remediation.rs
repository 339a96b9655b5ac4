//! Pool self-remediation: the watcher's pass over the pools.
//!
//! A pool whose used space crosses its high watermark gets raw capacity
//! while writers keep writing: the next spare disk, else a new disk file of
//! the grow step in the pool's disk directory, added online by the driver,
//! never past the pool's max size. A pool that cannot add disks (loop or
//! dir on a plain directory, or one without spares or a grow step) raises a
//! warning instead, and one at its max size a critical event: each once per
//! crossing, not on every pass.
//!
//! An add follows the intent rule: the disk is recorded as the pool's
//! `adding` before the disk file is made, and moved to its disks with the
//! result; `crate::pools::reconcile_pools` settles one a crash interrupted.
//! Used space is statvfs of the pool's path (for btrfs, its mount), as
//! `df` reports it: one syscall per pool per pass.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::Result;
use crate::events::EventKind;
use crate::model::{format_size, DiskKind, Pool, PoolDisk, PoolState, BTRFS_MIN_DISK_SIZE};
use crate::service::VolumeService;

/// How long after a failed add the watcher tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What the watcher remembers of each pool between passes (in memory: after
/// a restart a pool still above its watermark is reported once more).
#[derive(Debug, Default)]
pub struct PoolWatches(Mutex<HashMap<String, PoolWatch>>);

#[derive(Debug, Default, Clone, Copy)]
struct PoolWatch {
    /// The warning or critical event of this crossing has been raised.
    reported: bool,
    /// No add before this (after a failure).
    retry_at: Option<Instant>,
}

/// What one pass did for one pool.
#[derive(Debug, Clone, PartialEq)]
pub enum Remediation {
    /// A disk joined the pool.
    Added { pool: String, disk: PoolDisk },
    /// Above the watermark with no way to grow: warned.
    CannotGrow { pool: String },
    /// Above the watermark at the max size: critical.
    AtMax { pool: String },
    /// An add failed; retried after [`RETRY_AFTER`].
    Failed { pool: String, error: String },
}

/// How a pool above its watermark can grow.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Plan {
    Add(PoolDisk),
    /// It could grow, but not without passing its max size.
    AtMax(String),
    /// It has no way to grow.
    CannotGrow(String),
}

/// Decide the next disk of a pool whose disks hold `current` bytes.
/// `spare_size` is the size of the next spare disk, if there is one.
pub(crate) fn plan(
    pool: &Pool,
    can_add_disks: bool,
    current: u64,
    spare_size: Option<u64>,
) -> Plan {
    if !can_add_disks {
        return Plan::CannotGrow(format!(
            "a {} pool on a plain directory cannot add disks",
            pool.driver
        ));
    }
    let max = pool.growth.max_size.unwrap_or(u64::MAX);
    let room = max.saturating_sub(current);
    let at_max = || {
        Plan::AtMax(format!(
            "it is at its max size of {}",
            format_size(pool.growth.max_size.unwrap_or(current))
        ))
    };
    if let (Some(spare), Some(size)) = (pool.growth.spare_disks.first(), spare_size) {
        if size <= room {
            return Plan::Add(PoolDisk {
                path: spare.clone(),
                kind: DiskKind::Device,
                size_bytes: size,
            });
        }
    }
    if let (Some(step), Some(dir)) = (pool.growth.grow_step, &pool.growth.disk_dir) {
        // The last step may be short, to end exactly at the max size.
        let size = step.min(room) / 4096 * 4096;
        if size < BTRFS_MIN_DISK_SIZE {
            return at_max();
        }
        return Plan::Add(PoolDisk {
            path: next_disk_file(pool, dir),
            kind: DiskKind::File,
            size_bytes: size,
        });
    }
    // A spare that does not fit, or no room for any disk: the max size.
    let full = pool.growth.max_size.is_some() && room < BTRFS_MIN_DISK_SIZE;
    if !pool.growth.spare_disks.is_empty() || full {
        return at_max();
    }
    Plan::CannotGrow("it has no spare disks left and no grow step".into())
}

/// `<dir>/<pool>-<n>.img` for the lowest n that is neither a disk of the
/// pool nor an existing file.
fn next_disk_file(pool: &Pool, dir: &Path) -> PathBuf {
    (1u64..)
        .map(|n| dir.join(format!("{}-{n}.img", pool.name)))
        .find(|p| !pool.disks.iter().any(|d| &d.path == p) && std::fs::symlink_metadata(p).is_err())
        .unwrap_or_else(|| dir.join(format!("{}-new.img", pool.name)))
}

/// Used percent of statvfs figures as `df` shows it, rounded down: used
/// (total - free) of what is used or available to users, so space reserved
/// for root or the filesystem itself counts for neither.
fn used_percent(total: u64, free: u64, avail: u64) -> u64 {
    let used = u128::from(total.saturating_sub(free));
    let base = used + u128::from(avail);
    if base == 0 {
        return 0;
    }
    u64::try_from(used * 100 / base).unwrap_or(100)
}

impl VolumeService {
    /// One pass of the pool watcher: every pool above its high watermark
    /// grows by one disk, or is reported once per crossing when it cannot.
    pub fn remediate_pools(&self) -> Vec<Remediation> {
        let mut done = Vec::new();
        for pool in self.list_pools() {
            if pool.state != PoolState::Ready {
                continue;
            }
            if let Some(r) = self.remediate_pool(&pool.name) {
                done.push(r);
            }
        }
        done
    }

    fn remediate_pool(&self, name: &str) -> Option<Remediation> {
        // Under the pool's lock: one add at a time, and the record read here
        // is the one the add updates. Volume operations do not take it.
        let _g = self.locks.lock(&format!("pool:{name}"));
        let pool = self.get_pool(name).ok()?;
        if pool.adding.is_some() {
            // An add that could not be undone waits for the reconciler.
            return None;
        }
        let st = match self.host.fs_stats(&pool.path) {
            Ok(st) => st,
            Err(e) => {
                tracing::debug!(pool = name, error = %e, "watcher: no statvfs of the pool");
                return None;
            }
        };
        let pct = used_percent(st.total_bytes, st.free_bytes, st.avail_bytes);
        let watermark = u64::from(pool.growth.high_watermark);
        if pct < watermark {
            self.pool_watch.0.lock().remove(name);
            return None;
        }
        let watch = self
            .pool_watch
            .0
            .lock()
            .get(name)
            .copied()
            .unwrap_or_default();
        if watch.retry_at.is_some_and(|t| Instant::now() < t) {
            return None;
        }
        let driver = self.driver(pool.driver).ok()?.clone();
        let planned = (|| -> Result<Plan> {
            if !driver.can_add_disks() {
                return Ok(plan(&pool, false, 0, None));
            }
            let current = driver.disks_bytes(&pool)?.unwrap_or(0);
            let spare_size = match pool.growth.spare_disks.first() {
                Some(s) => Some(
                    self.host
                        .block_device(s)
                        .map_err(crate::driver::DriverError::from)?
                        .size_bytes,
                ),
                None => None,
            };
            Ok(plan(&pool, true, current, spare_size))
        })();
        let head = format!("pool {name} is {pct}% full (high watermark {watermark}%)");
        let report_once = |kind: EventKind, msg: String| {
            if !watch.reported {
                if let Err(e) = self.pool_event(kind, name, msg) {
                    tracing::error!(pool = name, error = %e, "cannot record a watcher event");
                }
                self.pool_watch.0.lock().insert(
                    name.to_string(),
                    PoolWatch {
                        reported: true,
                        retry_at: None,
                    },
                );
            }
        };
        match planned {
            Ok(Plan::CannotGrow(why)) => {
                report_once(EventKind::Warning, format!("{head} and cannot grow: {why}"));
                Some(Remediation::CannotGrow {
                    pool: name.to_string(),
                })
            }
            Ok(Plan::AtMax(why)) => {
                report_once(
                    EventKind::Critical,
                    format!("{head} and cannot grow: {why}; free space or raise its max size"),
                );
                Some(Remediation::AtMax {
                    pool: name.to_string(),
                })
            }
            Ok(Plan::Add(disk)) => match self.add_disk(&pool, disk.clone(), &head) {
                Ok(()) => {
                    self.pool_watch.0.lock().remove(name);
                    Some(Remediation::Added {
                        pool: name.to_string(),
                        disk,
                    })
                }
                Err(e) => Some(self.add_failed(name, &head, &e.to_string())),
            },
            Err(e) => Some(self.add_failed(name, &head, &e.to_string())),
        }
    }

    fn add_failed(&self, name: &str, head: &str, error: &str) -> Remediation {
        tracing::error!(pool = name, error, "adding capacity failed");
        let msg = format!(
            "{head}; adding capacity failed: {error}; retrying in {}s",
            RETRY_AFTER.as_secs()
        );
        if let Err(e) = self.pool_event(EventKind::Warning, name, msg) {
            tracing::error!(pool = name, error = %e, "cannot record a watcher event");
        }
        self.pool_watch.0.lock().insert(
            name.to_string(),
            PoolWatch {
                reported: false,
                retry_at: Some(Instant::now() + RETRY_AFTER),
            },
        );
        Remediation::Failed {
            pool: name.to_string(),
            error: error.to_string(),
        }
    }

    /// Add one disk to a pool. The caller holds the pool's lock.
    fn add_disk(&self, pool: &Pool, disk: PoolDisk, head: &str) -> Result<()> {
        let driver = self.driver(pool.driver)?.clone();
        let before = driver.disks_bytes(pool)?.unwrap_or(0);
        let mut adding = pool.clone();
        adding.adding = Some(disk.clone());
        self.persist_pool(&pool.name, Some(&adding), None)?;
        self.failpoints.hit("pooladd.after_intent");
        let added = (|| -> Result<()> {
            driver.prepare_disk(&adding, &disk)?;
            self.failpoints.hit("pooladd.after_file");
            driver.add_disk(&adding, &disk)?;
            self.failpoints.hit("pooladd.after_device_add");
            Ok(())
        })();
        if let Err(e) = added {
            // A tool that failed late (a timeout) may have added the disk
            // all the same: then it is recorded as added, never discarded.
            if !driver.has_disk(&adding, &disk).unwrap_or(false) {
                // Back to the record as it was; a disk file that never
                // joined goes. A crash here instead is settled at start.
                if let Err(undo) = driver.discard_disk(pool, &disk) {
                    tracing::error!(pool = %pool.name, error = %undo, "cannot discard a disk that did not join");
                    return Err(e);
                }
                self.persist_pool(&pool.name, Some(pool), None)?;
                return Err(e);
            }
            tracing::warn!(pool = %pool.name, error = %e, "the add reported an error but the disk joined");
        }
        let mut done = adding;
        done.adding = None;
        done.growth.spare_disks.retain(|s| s != &disk.path);
        done.disks.push(disk.clone());
        let what = match disk.kind {
            DiskKind::File => "disk file",
            DiskKind::Device => "spare disk",
        };
        let ev = self.events.next(
            EventKind::Remediation,
            Some(&pool.name),
            None,
            format!(
                "{head}: added {what} {} of {}, {} -> {}",
                disk.path.display(),
                format_size(disk.size_bytes),
                format_size(before),
                format_size(before + disk.size_bytes)
            ),
        );
        self.persist_pool(&pool.name, Some(&done), Some(ev))?;
        self.usage_cache.lock().remove(&pool.name);
        self.stats.record_remediation(&pool.name);
        Ok(())
    }

    /// Bytes a pool offers for provisioning before its overcommit ratio:
    /// what it holds now, or, for a pool that can grow, its max size.
    pub(crate) fn provisionable_bytes(&self, pool: &Pool, capacity: u64) -> u64 {
        let can_add = self.driver(pool.driver).is_ok_and(|d| d.can_add_disks());
        let g = &pool.growth;
        let grows = (g.grow_step.is_some() && g.disk_dir.is_some()) || !g.spare_disks.is_empty();
        match (can_add && grows, g.max_size) {
            (true, Some(max)) => capacity.max(max),
            _ => capacity,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DriverKind;

    const GIB: u64 = 1 << 30;

    fn btrfs_pool() -> Pool {
        let mut p = Pool::new("p", DriverKind::Btrfs, "/pools/p/mnt".into(), 1.0);
        p.disks.push(PoolDisk {
            path: "/disks/p.img".into(),
            kind: DiskKind::File,
            size_bytes: GIB,
        });
        p.growth.grow_step = Some(GIB);
        p.growth.max_size = Some(4 * GIB);
        p.growth.disk_dir = Some("/nonexistent-ballast-dir".into());
        p
    }

    #[test]
    fn plain_pools_cannot_grow() {
        let p = Pool::new("d", DriverKind::Dir, "/x".into(), 1.0);
        assert!(matches!(plan(&p, false, 0, None), Plan::CannotGrow(_)));
    }

    #[test]
    fn a_disk_file_of_the_step_then_a_short_last_one_then_max() {
        let p = btrfs_pool();
        match plan(&p, true, GIB, None) {
            Plan::Add(d) => {
                assert_eq!(d.kind, DiskKind::File);
                assert_eq!(d.size_bytes, GIB);
                assert_eq!(d.path, PathBuf::from("/nonexistent-ballast-dir/p-1.img"));
            }
            other => panic!("{other:?}"),
        }
        match plan(&p, true, 3 * GIB + GIB / 2, None) {
            Plan::Add(d) => assert_eq!(d.size_bytes, GIB / 2),
            other => panic!("{other:?}"),
        }
        assert!(matches!(plan(&p, true, 4 * GIB, None), Plan::AtMax(_)));
        // A remainder below the smallest btrfs disk is the max too.
        assert!(matches!(
            plan(&p, true, 4 * GIB - (64 << 20), None),
            Plan::AtMax(_)
        ));
    }

    #[test]
    fn spares_first_and_never_past_max() {
        let mut p = btrfs_pool();
        p.growth.spare_disks = vec!["/dev/sdz".into()];
        match plan(&p, true, GIB, Some(2 * GIB)) {
            Plan::Add(d) => {
                assert_eq!(d.kind, DiskKind::Device);
                assert_eq!(d.path, PathBuf::from("/dev/sdz"));
            }
            other => panic!("{other:?}"),
        }
        // The spare would pass the max: a disk file of what is left.
        match plan(&p, true, 3 * GIB, Some(2 * GIB)) {
            Plan::Add(d) => assert_eq!((d.kind, d.size_bytes), (DiskKind::File, GIB)),
            other => panic!("{other:?}"),
        }
        p.growth.grow_step = None;
        p.growth.disk_dir = None;
        assert!(matches!(
            plan(&p, true, 3 * GIB, Some(2 * GIB)),
            Plan::AtMax(_)
        ));
        p.growth.spare_disks.clear();
        assert!(matches!(plan(&p, true, GIB, None), Plan::CannotGrow(_)));
    }

    #[test]
    fn percent() {
        assert_eq!(used_percent(100, 40, 40), 60);
        assert_eq!(used_percent(0, 0, 0), 0);
        assert_eq!(used_percent(u64::MAX, 0, 0), 100);
        // Reserved space is neither used nor available (df's Use%).
        assert_eq!(used_percent(100, 60, 40), 50);
    }
}
