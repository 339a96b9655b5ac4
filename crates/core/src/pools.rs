//! Pools: making, deleting and bringing them up at start.
//!
//! A pool on a plain directory (loop, dir) is a record and a directory. A
//! btrfs pool that ballast makes owns its disks (block devices, or image
//! files it creates on loop devices) and is mounted at
//! `<pools-dir>/<name>/mnt`; one given with a path is adopted as mounted.
//!
//! Pool creation follows the intent rule: the record is stored in state
//! `creating` before the first side effect and set `ready` with its result;
//! the reconciler undoes a create a crash interrupted. Disk checks (mounted,
//! already in a pool, too small) happen before anything changes.
//!
//! This module holds the rules; the doing is the driver's (`Driver::
//! create_pool`, `init_pool`, `destroy_pool`) and the host's.

use std::path::{Path, PathBuf};

use crate::driver::{DriverError, PoolUsage, SourceRef};
use crate::error::{Error, Result};
use crate::events::{Event, EventKind};
use crate::model::{
    format_size, validate_name, validate_overcommit_ratio, DiskKind, DriverKind, InvalidInput,
    Pool, PoolCapacity, PoolDisk, PoolState, Snapshot, Volume, VolumeState, BTRFS_MIN_DISK_SIZE,
};
use crate::reconcile::ReconcileReport;
use crate::service::{pool_key, to_json, VolumeService, USAGE_TTL};
use crate::store::Txn;

/// A request to make a pool.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CreatePool {
    pub name: String,
    pub driver: Option<DriverKind>,
    /// Block devices to make the filesystem on (btrfs).
    pub disks: Vec<PathBuf>,
    /// An image file ballast makes as the first disk, and its size (btrfs);
    /// disk files the pool adds later go in its directory.
    pub disk_file: Option<(PathBuf, u64)>,
    /// loop, dir: the directory of the pool's volumes [default:
    /// `<pools-dir>/<name>`]; btrfs: a mounted btrfs to adopt.
    pub path: Option<PathBuf>,
    /// Percent (1-99) [default: 80].
    pub high_watermark: Option<u8>,
    pub grow_step: Option<u64>,
    pub max_size: Option<u64>,
    pub spare_disks: Vec<PathBuf>,
    /// [default: 1.0]
    pub overcommit_ratio: Option<f64>,
    /// rbd: the Ceph cluster and pool.
    pub ceph: Option<crate::model::CephPool>,
}

fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
    InvalidInput::new(what, reason).into()
}

fn absolute(what: &str, path: &Path) -> Result<()> {
    if !path.is_absolute()
        || path.components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        })
    {
        return Err(invalid(
            format!("{what} {}", path.display()),
            "must be an absolute path without '.' or '..'",
        ));
    }
    Ok(())
}

/// Kernel filesystems, never storage: a pool or disk file there would write
/// into /proc, /sys or device nodes.
const SYSTEM_DIRS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Refuse a path in [`SYSTEM_DIRS`], as given (before anything resolves it)
/// and with its symlinks resolved (`/tmp/x -> /proc/self`).
pub(crate) fn check_not_system_path(what: &str, path: &Path) -> Result<()> {
    for p in [path.to_path_buf(), resolve(path)] {
        if let Some(dir) = SYSTEM_DIRS.iter().find(|d| p.starts_with(d)) {
            return Err(invalid(
                format!("{what} {}", path.display()),
                if p == path {
                    format!("is under {dir}, a kernel filesystem, not storage")
                } else {
                    format!(
                        "resolves to {}, under {dir}, a kernel filesystem, not storage",
                        p.display()
                    )
                },
            ));
        }
    }
    Ok(())
}

/// `path` with symlinks resolved as far as it exists.
fn resolve(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => resolve(parent).join(name),
        _ => path.to_path_buf(),
    }
}

impl VolumeService {
    /// Make a pool. The same request again returns the same pool.
    pub fn create_pool(&self, req: CreatePool) -> Result<Pool> {
        validate_name("pool", &req.name)?;
        let driver = req.driver.unwrap_or(DriverKind::Loop);
        let ratio = validate_overcommit_ratio(req.overcommit_ratio.unwrap_or(1.0))?;
        if let Some(w) = req.high_watermark {
            if !(1..=99).contains(&w) {
                return Err(invalid(
                    format!("high watermark {w}%"),
                    "must be between 1% and 99%",
                ));
            }
        }
        if let Some(step) = req.grow_step {
            if step == 0 {
                return Err(invalid("grow step", "must be greater than zero"));
            }
            if step < BTRFS_MIN_DISK_SIZE {
                return Err(invalid(
                    format!("grow step {}", format_size(step)),
                    format!(
                        "is below the smallest btrfs disk, {}",
                        format_size(BTRFS_MIN_DISK_SIZE)
                    ),
                ));
            }
        }
        // One pool create at a time: two must not claim the same disk.
        let _all = self.locks.lock("pools:create");
        let _g = self.locks.lock(&format!("pool:{}", req.name));
        if let Some(existing) = self.pools.read().get(&req.name).cloned() {
            return self
                .check_same_pool(&existing, &req, driver)
                .map(|()| existing);
        }
        let mut pool = Pool::new(
            &req.name,
            driver,
            self.config.pools_dir.join(&req.name),
            ratio,
        );
        if let Some(w) = req.high_watermark {
            pool.growth.high_watermark = w;
        }
        match driver {
            DriverKind::Loop | DriverKind::Dir => self.shape_plain_pool(&req, &mut pool)?,
            DriverKind::Btrfs => self.shape_btrfs_pool(&req, &mut pool)?,
            DriverKind::Rbd => shape_rbd_pool(&req, &mut pool)?,
        }
        if driver != DriverKind::Rbd && req.ceph.is_some() {
            return Err(invalid(
                "--ceph-conf, --ceph-pool",
                format!("apply to rbd pools only, not {driver}"),
            ));
        }
        self.make_pool(pool)
    }

    /// A create of an existing name must ask for the same pool.
    pub(crate) fn check_same_pool(
        &self,
        existing: &Pool,
        req: &CreatePool,
        driver: DriverKind,
    ) -> Result<()> {
        let mut diffs = Vec::new();
        if existing.driver != driver {
            diffs.push(format!("driver is {}", existing.driver));
        }
        if let Some(p) = &req.path {
            if p != &existing.path {
                diffs.push(format!("path is {}", existing.path.display()));
            }
        }
        let mut asked: Vec<&Path> = req.disks.iter().map(PathBuf::as_path).collect();
        asked.extend(req.disk_file.as_ref().map(|(p, _)| p.as_path()));
        if !asked.is_empty()
            && !asked
                .iter()
                .all(|a| existing.disks.iter().any(|d| d.path == *a))
        {
            diffs.push("its disks differ".into());
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(Error::AlreadyExists {
                kind: "pool",
                name: existing.name.clone(),
                detail: diffs.join(", "),
            })
        }
    }

    /// A loop or dir pool: a directory, no disks, and growth it cannot do.
    pub(crate) fn shape_plain_pool(&self, req: &CreatePool, pool: &mut Pool) -> Result<()> {
        let only_btrfs = [
            ("--disk", !req.disks.is_empty()),
            ("--disk-file", req.disk_file.is_some()),
            ("--spare-disk", !req.spare_disks.is_empty()),
            ("--grow-step", req.grow_step.is_some()),
            ("--max-size", req.max_size.is_some()),
        ];
        if let Some((flag, _)) = only_btrfs.iter().find(|(_, given)| *given) {
            return Err(invalid(
                *flag,
                format!(
                    "applies to btrfs pools only; a {} pool on a plain directory cannot add disks",
                    pool.driver
                ),
            ));
        }
        if let Some(path) = &req.path {
            absolute("path", path)?;
            check_not_system_path("path", path)?;
            pool.path = resolve(path);
        }
        check_not_system_path("path", &pool.path)?;
        self.check_outside_pools("path", &pool.path)?;
        Ok(())
    }

    /// A btrfs pool: made on disks or a disk file, or adopted at a path.
    pub(crate) fn shape_btrfs_pool(&self, req: &CreatePool, pool: &mut Pool) -> Result<()> {
        let sources = usize::from(!req.disks.is_empty())
            + usize::from(req.disk_file.is_some())
            + usize::from(req.path.is_some());
        if sources != 1 {
            return Err(invalid(
                "btrfs pool",
                "give exactly one of --disk (one or more), --disk-file with --disk-size, or --path",
            ));
        }
        for d in &req.disks {
            let size = self.check_free_disk("disk", d)?;
            if req.disks.iter().filter(|o| *o == d).count() > 1 {
                return Err(invalid(format!("disk {}", d.display()), "is given twice"));
            }
            pool.disks.push(PoolDisk {
                path: d.clone(),
                kind: DiskKind::Device,
                size_bytes: size,
            });
        }
        if let Some((file, size)) = &req.disk_file {
            absolute("disk file", file)?;
            check_not_system_path("disk file", file)?;
            let file = resolve(file);
            if *size < BTRFS_MIN_DISK_SIZE {
                return Err(invalid(
                    format!("disk file size {}", format_size(*size)),
                    format!(
                        "is too small for btrfs: the smallest disk is {}",
                        format_size(BTRFS_MIN_DISK_SIZE)
                    ),
                ));
            }
            if std::fs::symlink_metadata(&file).is_ok() {
                return Err(invalid(
                    format!("disk file {}", file.display()),
                    "exists; ballast makes the disk file itself (use --disk for a device)",
                ));
            }
            self.check_outside_pools("disk file", &file)?;
            self.check_not_in_pool("disk file", &file)?;
            let size = size
                .checked_next_multiple_of(4096)
                .ok_or_else(|| invalid("disk size", "is too large"))?;
            pool.growth.disk_dir = file.parent().map(Path::to_path_buf);
            pool.disks.push(PoolDisk {
                path: file,
                kind: DiskKind::File,
                size_bytes: size,
            });
        }
        if let Some(path) = &req.path {
            absolute("path", path)?;
            check_not_system_path("path", path)?;
            let path = resolve(path);
            let mounted = self
                .host
                .mounts()
                .map_err(DriverError::from)?
                .iter()
                .any(|m| m.target == path && m.fstype == "btrfs");
            if !mounted {
                return Err(invalid(
                    format!("path {}", path.display()),
                    "is not the mountpoint of a btrfs filesystem",
                ));
            }
            self.check_outside_pools("path", &path)?;
            pool.path = path;
            pool.adopted = true;
        } else {
            pool.path = self.config.pools_dir.join(&pool.name).join("mnt");
            if let Some(d) = pool.disks.iter().find(|d| d.path.starts_with(&pool.path)) {
                return Err(invalid(
                    format!("disk file {}", d.path.display()),
                    "is inside the pool's own mountpoint",
                ));
            }
        }
        for s in &req.spare_disks {
            self.check_free_disk("spare disk", s)?;
            if req.disks.contains(s) || req.spare_disks.iter().filter(|o| *o == s).count() > 1 {
                return Err(invalid(
                    format!("spare disk {}", s.display()),
                    "is given twice",
                ));
            }
        }
        pool.growth.spare_disks = req.spare_disks.clone();
        if let Some(step) = req.grow_step {
            if pool.growth.disk_dir.is_none() {
                return Err(invalid(
                    "--grow-step",
                    "needs --disk-file: new disk files go in its directory",
                ));
            }
            if req.max_size.is_none() {
                return Err(invalid(
                    "--grow-step",
                    "needs --max-size, or disk files would be added without bound",
                ));
            }
            pool.growth.grow_step = Some(step);
        } else {
            // Without a step the pool grows by spare disks only.
            pool.growth.disk_dir = None;
        }
        if let Some(max) = req.max_size {
            let current = if pool.adopted {
                self.host
                    .btrfs_devices(&pool.path)
                    .map_err(DriverError::from)?
                    .iter()
                    .map(|d| d.size_bytes)
                    .sum()
            } else {
                pool.disks_bytes()
            };
            if max < current {
                return Err(invalid(
                    format!("max size {}", format_size(max)),
                    format!(
                        "is below the pool's current size of {}",
                        format_size(current)
                    ),
                ));
            }
            pool.growth.max_size = Some(max);
        }
        Ok(())
    }

    /// A block device that can join a pool: its size.
    pub(crate) fn check_free_disk(&self, what: &str, path: &Path) -> Result<u64> {
        absolute(what, path)?;
        let label = format!("{what} {}", path.display());
        let dev = self
            .host
            .block_device(path)
            .map_err(|e| invalid(label.clone(), e.to_string()))?;
        let canonical = resolve(path);
        self.check_not_in_pool(what, &canonical)?;
        let names: Vec<PathBuf> = std::iter::once(canonical.clone())
            .chain(std::iter::once(path.to_path_buf()))
            .chain(dev.partitions.iter().cloned())
            .collect();
        for m in self.host.mounts().map_err(DriverError::from)? {
            let source = Path::new(&m.source);
            if !source.is_absolute() {
                continue;
            }
            if names.iter().any(|n| n == source || *n == resolve(source)) {
                return Err(invalid(
                    label,
                    format!(
                        "is mounted at {} ({}); unmount it first",
                        m.target.display(),
                        m.source
                    ),
                ));
            }
        }
        if !dev.holders.is_empty() {
            return Err(invalid(
                label,
                format!("is in use by {}", dev.holders.join(", ")),
            ));
        }
        if dev.size_bytes < BTRFS_MIN_DISK_SIZE {
            return Err(invalid(
                label,
                format!(
                    "is too small for btrfs: {} is below the smallest disk, {}",
                    format_size(dev.size_bytes),
                    format_size(BTRFS_MIN_DISK_SIZE)
                ),
            ));
        }
        Ok(dev.size_bytes)
    }

    /// A disk (file or device) no pool has or may take.
    pub(crate) fn check_not_in_pool(&self, what: &str, path: &Path) -> Result<()> {
        for p in self.pools.read().values() {
            let taken = p
                .disks
                .iter()
                .chain(&p.adding)
                .map(|d| &d.path)
                .chain(&p.growth.spare_disks)
                .any(|d| d == path || resolve(d) == path);
            if taken {
                return Err(invalid(
                    format!("{what} {}", path.display()),
                    format!("is already in pool {:?}", p.name),
                ));
            }
        }
        Ok(())
    }

    /// Pools must not nest: a path inside another pool, or another pool
    /// inside it, would mix their storage (a disk file on a btrfs pool would
    /// be written through that pool).
    pub(crate) fn check_outside_pools(&self, what: &str, path: &Path) -> Result<()> {
        for p in self.pools.read().values() {
            if path.starts_with(&p.path) {
                return Err(invalid(
                    format!("{what} {}", path.display()),
                    format!("is inside pool {:?} ({})", p.name, p.path.display()),
                ));
            }
            if p.path.starts_with(path) {
                return Err(invalid(
                    format!("{what} {}", path.display()),
                    format!("holds pool {:?} ({})", p.name, p.path.display()),
                ));
            }
        }
        Ok(())
    }

    /// [`Self::pool_charges`] of another node's pool, from the records
    /// alone: a copy-on-write item, which only its node can measure, is
    /// charged nothing here.
    pub(crate) fn pool_charges_without_measure(&self, pool: &Pool) -> (u64, u64) {
        let (provisioned, charged, _, _) = self.record_charges(pool);
        (provisioned, charged)
    }

    /// What the records in a pool charge (volumes and snapshots at their
    /// size, creates the controller placed there and that have no record
    /// yet at what they reserved), and the copy-on-write items, which only
    /// a measure can charge.
    fn record_charges(&self, pool: &Pool) -> (u64, u64, Vec<Volume>, Vec<Snapshot>) {
        let reserved = self.reserved_in(&pool.name);
        let mut provisioned = reserved;
        let mut charged = reserved;
        let mut cow_vols: Vec<Volume> = Vec::new();
        let mut cow_snaps: Vec<Snapshot> = Vec::new();
        for v in self.volumes.read().values().filter(|v| v.pool == pool.name) {
            provisioned = provisioned.saturating_add(v.size_bytes);
            if v.cow {
                cow_vols.push(v.clone());
            } else {
                charged = charged.saturating_add(v.size_bytes);
            }
        }
        for s in self
            .snapshots
            .read()
            .values()
            .filter(|s| s.pool == pool.name)
        {
            provisioned = provisioned.saturating_add(s.size_bytes);
            if s.cow {
                cow_snaps.push(s.clone());
            } else {
                charged = charged.saturating_add(s.size_bytes);
            }
        }
        (provisioned, charged, cow_vols, cow_snaps)
    }

    /// The pool's (provisioned, exclusive) bytes: the sum of its volumes'
    /// and snapshots' sizes, and what they are charged. A full copy or an
    /// original is charged its size; a copy-on-write snapshot or clone what
    /// it holds exclusively now, measured here (never cached), so what its
    /// source's or its own writes have made its own counts at the next
    /// admission, never more than its size.
    pub(crate) fn pool_charges(&self, pool: &Pool) -> (u64, u64) {
        let (provisioned, mut charged, cow_vols, cow_snaps) = self.record_charges(pool);
        if cow_vols.is_empty() && cow_snaps.is_empty() {
            return (provisioned, charged);
        }
        let driver = self.driver(pool.driver).ok();
        let measure = |item: SourceRef<'_>, size: u64, being_made: bool| -> u64 {
            match driver.as_ref().map(|d| d.exclusive_bytes(pool, item)) {
                Some(Ok(Some(bytes))) => bytes.min(size),
                // A copy being made was admitted at nothing of its own.
                _ if being_made => 0,
                Some(Err(e)) => {
                    tracing::debug!(pool = %pool.name, error = %e, "exclusive bytes unknown; charging the full size");
                    size
                }
                _ => size,
            }
        };
        for v in &cow_vols {
            let being_made = v.state == VolumeState::Creating;
            charged =
                charged.saturating_add(measure(SourceRef::Volume(v), v.size_bytes, being_made));
        }
        for s in &cow_snaps {
            charged =
                charged.saturating_add(measure(SourceRef::Snapshot(s), s.size_bytes, !s.ready));
        }
        (provisioned, charged)
    }

    /// Record the intent, make the storage, bring it up, record the pool.
    pub(crate) fn make_pool(&self, mut pool: Pool) -> Result<Pool> {
        let driver = self.driver(pool.driver)?.clone();
        // A shared pool (rbd) is no node's; every other keeps its storage
        // on this machine.
        pool.node = (!pool.is_shared()).then(|| self.config.node_id.clone());
        pool.state = PoolState::Creating;
        self.persist_pool(&pool.name.clone(), Some(&pool), None)?;
        self.failpoints.hit("poolcreate.after_intent");
        let made = (|| -> Result<()> {
            driver.create_pool(&pool)?;
            self.failpoints.hit("poolcreate.after_mkfs");
            driver.init_pool(&pool)?;
            Ok(())
        })();
        if let Err(e) = made {
            self.undo_create_pool(&pool);
            return Err(e);
        }
        pool.state = PoolState::Ready;
        let what = match (pool.adopted, pool.disks.is_empty()) {
            (true, _) => format!("adopted the btrfs mounted at {}", pool.path.display()),
            (false, true) => format!("created {} pool at {}", pool.driver, pool.path.display()),
            (false, false) => format!(
                "created {} pool of {} on {}",
                pool.driver,
                format_size(pool.disks_bytes()),
                pool.disks
                    .iter()
                    .map(|d| d.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let ev = self
            .events
            .next(EventKind::Create, Some(&pool.name), None, what);
        if let Err(e) = self.persist_pool(&pool.name, Some(&pool), Some(ev)) {
            self.undo_create_pool(&pool);
            return Err(e);
        }
        Ok(pool)
    }

    /// Take back a pool create: its storage, then its record.
    pub(crate) fn undo_create_pool(&self, pool: &Pool) {
        let result = (|| -> Result<()> {
            self.driver(pool.driver)?.destroy_pool(pool)?;
            self.persist_pool(&pool.name, None, None)
        })();
        if let Err(e) = result {
            tracing::error!(pool = %pool.name, error = %e, "undo pool create failed; the record stays for the reconciler");
        }
    }

    /// Delete an empty pool: its storage goes first (a btrfs pool ballast
    /// made: unmount, detach, remove its disk files), so a crash in between
    /// leaves a record whose delete can be repeated. An adopted btrfs or a
    /// plain directory is only forgotten.
    pub fn delete_pool(&self, name: &str) -> Result<()> {
        validate_name("pool", name)?;
        if name == self.default_pool_name() {
            return Err(invalid(
                format!("pool {name:?}"),
                "cannot be deleted: it is this node's default pool, which the daemon makes again at start",
            ));
        }
        let _g = self.locks.lock(&format!("pool:{name}"));
        let pool = self.get_pool(name)?;
        self.check_pool_here(&pool)?;
        let vols = self
            .volumes
            .read()
            .values()
            .filter(|v| v.pool == name)
            .count();
        let snaps = self
            .snapshots
            .read()
            .values()
            .filter(|s| s.pool == name)
            .count();
        if vols + snaps > 0 {
            return Err(Error::Busy {
                kind: "pool",
                name: name.to_string(),
                detail: format!(
                    "it holds {vols} volume(s) and {snaps} snapshot(s); delete them first"
                ),
            });
        }
        self.driver(pool.driver)?.destroy_pool(&pool)?;
        let ev = self
            .events
            .next(EventKind::Delete, Some(name), None, "pool deleted".into());
        self.persist_pool(name, None, Some(ev))?;
        self.usage_cache.lock().remove(name);
        Ok(())
    }

    /// Write a pool's record (or its removal) and an event in one
    /// transaction, then update the in-memory copy. The write compares on
    /// the record's revision last seen (absent if never seen), as volume
    /// writes do: a pool changed elsewhere is re-read, not overwritten.
    pub(crate) fn persist_pool(
        &self,
        name: &str,
        pool: Option<&Pool>,
        event: Option<Event>,
    ) -> Result<()> {
        let key = pool_key(name);
        let mut txn = self.compare_seen(Txn::new(), &key);
        txn = match pool {
            Some(p) => txn.put(key.clone(), to_json(p)),
            None => txn.delete(key.clone()),
        };
        if let Some(e) = &event {
            txn = e.add_to(txn);
        }
        let revision = match self.store.txn(txn) {
            Ok(r) => r,
            Err(crate::store::StoreError::Conflict { .. }) => {
                self.reread(&[&key]);
                return Err(Error::Conflict {
                    name: format!("pool:{name}"),
                });
            }
            Err(e) => return Err(e.into()),
        };
        self.revs.lock().insert(key, (revision, pool.is_some()));
        match pool {
            Some(p) => {
                self.pools.write().insert(name.to_string(), p.clone());
            }
            None => {
                self.pools.write().remove(name);
            }
        }
        if let Some(mut e) = event {
            e.seq = revision;
            self.events.publish(e);
        }
        Ok(())
    }

    /// At start, before volumes are reconciled: undo interrupted pool
    /// creates, bring every pool up (attach disk files, mount), and settle a
    /// disk add a crash interrupted: a disk the filesystem has is recorded,
    /// one it does not have is discarded, so none is added twice or lost.
    pub(crate) fn reconcile_pools(&self, report: &mut ReconcileReport) -> Result<()> {
        let me = self.config.node_id.clone();
        for pool in self.list_pools().into_iter().filter(|p| p.is_on(&me)) {
            if pool.state == PoolState::Creating {
                self.undo_create_pool(&pool);
                if self.pools.read().contains_key(&pool.name) {
                    report
                        .failed
                        .push(format!("poolcreate {}: could not be undone", pool.name));
                } else {
                    report.rolled_back.push(format!("poolcreate {}", pool.name));
                    self.pool_event(
                        EventKind::Reconcile,
                        &pool.name,
                        "interrupted pool create undone at start".into(),
                    )?;
                }
                continue;
            }
            let driver = self.driver(pool.driver)?.clone();
            if let Err(e) = driver.init_pool(&pool) {
                tracing::error!(pool = %pool.name, error = %e, "cannot bring the pool up");
                report.failed.push(format!("pool {}: {e}", pool.name));
                self.pool_event(
                    EventKind::Critical,
                    &pool.name,
                    format!("the pool could not be brought up at start: {e}"),
                )?;
                continue;
            }
            let Some(disk) = pool.adding.clone() else {
                continue;
            };
            let settled = (|| -> Result<(bool, Pool)> {
                let mut done = pool.clone();
                done.adding = None;
                let joined = driver.has_disk(&pool, &disk)?;
                if joined {
                    done.growth.spare_disks.retain(|s| s != &disk.path);
                    done.disks.push(disk.clone());
                } else {
                    driver.discard_disk(&pool, &disk)?;
                }
                Ok((joined, done))
            })();
            match settled {
                Ok((joined, done)) => {
                    let msg = if joined {
                        format!(
                            "interrupted add of {} finished at start: it is in the filesystem",
                            disk.path.display()
                        )
                    } else {
                        format!(
                            "interrupted add of {} undone at start: it never joined the filesystem",
                            disk.path.display()
                        )
                    };
                    tracing::warn!(pool = %pool.name, "{msg}");
                    let ev = self
                        .events
                        .next(EventKind::Reconcile, Some(&pool.name), None, msg);
                    self.persist_pool(&pool.name, Some(&done), Some(ev))?;
                    let entry = format!("pooladd {} {}", pool.name, disk.path.display());
                    if joined {
                        report.rolled_forward.push(entry);
                    } else {
                        report.rolled_back.push(entry);
                    }
                }
                Err(e) => {
                    tracing::error!(pool = %pool.name, error = %e, "cannot settle an interrupted disk add; it stays recorded");
                    report.failed.push(format!(
                        "pooladd {} {}: {e}",
                        pool.name,
                        disk.path.display()
                    ));
                }
            }
        }
        Ok(())
    }

    /// Store and publish an event about a pool.
    pub(crate) fn pool_event(&self, kind: EventKind, pool: &str, message: String) -> Result<()> {
        let ev = self.events.next(kind, Some(pool), None, message);
        self.commit_event(Txn::new(), Some(ev))?;
        Ok(())
    }
}

// ----- pools of the service (records, capacity, admission) -----

impl VolumeService {
    pub fn list_pools(&self) -> Vec<Pool> {
        self.pools.read().values().cloned().collect()
    }

    pub fn get_pool(&self, name: &str) -> Result<Pool> {
        self.pools
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found("pool", name))
    }

    /// The pool's backing usage, measured at most every [`USAGE_TTL`]:
    /// measuring walks every image, which at 10,000 volumes is too slow to
    /// repeat on each create. Provisioned bytes, which admission mostly
    /// turns on, are always current.
    pub(crate) fn pool_usage(&self, pool: &Pool) -> Result<PoolUsage> {
        if let Some((at, usage)) = self.usage_cache.lock().get(&pool.name) {
            if at.elapsed() < USAGE_TTL {
                return Ok(*usage);
            }
        }
        let usage = self.driver(pool.driver)?.usage(pool)?;
        self.usage_cache
            .lock()
            .insert(pool.name.clone(), (std::time::Instant::now(), usage));
        Ok(usage)
    }

    /// Another node's pool is measured there: its figures are what that
    /// node last wrote in its `node/<id>` record (zeros while it is
    /// unreachable).
    pub fn pool_capacity(&self, pool: &Pool) -> Result<PoolCapacity> {
        if !pool.is_on(&self.config.node_id) {
            let node = pool.node.clone().unwrap_or_default();
            return Ok(self
                .nodes
                .read()
                .get(&node)
                .and_then(|r| r.pools.iter().find(|p| p.name == pool.name))
                .map(|p| p.capacity)
                .unwrap_or_default());
        }
        let usage = self.pool_usage(pool)?;
        let (provisioned, exclusive) = self.pool_charges(pool);
        let capacity = usage
            .backing_avail_bytes
            .saturating_add(usage.volumes_used_bytes);
        let limit = crate::model::overcommitted(
            self.provisionable_bytes(pool, capacity),
            pool.overcommit_ratio,
        );
        Ok(PoolCapacity {
            capacity_bytes: capacity,
            used_bytes: usage.volumes_used_bytes,
            provisioned_bytes: provisioned,
            exclusive_bytes: exclusive,
            available_bytes: limit.saturating_sub(exclusive),
        })
    }

    /// Record a pool and prepare its storage; an identical existing pool is
    /// fine.
    pub fn ensure_pool(&self, mut pool: Pool) -> Result<Pool> {
        validate_name("pool", &pool.name)?;
        pool.node = Some(self.config.node_id.clone());
        crate::model::validate_overcommit_ratio(pool.overcommit_ratio)?;
        crate::pools::check_not_system_path("path", &pool.path)?;
        let _g = self.locks.lock(&format!("pool:{}", pool.name));
        if let Some(existing) = self.pools.read().get(&pool.name) {
            self.check_pool_here(existing)?;
            if existing.driver != pool.driver || existing.path != pool.path {
                return Err(Error::AlreadyExists {
                    kind: "pool",
                    name: pool.name.clone(),
                    detail: format!(
                        "pool exists with driver {} at {}",
                        existing.driver,
                        existing.path.display()
                    ),
                });
            }
            self.driver(existing.driver)?.init_pool(existing)?;
            return Ok(existing.clone());
        }
        self.driver(pool.driver)?.init_pool(&pool)?;
        self.persist_pool(&pool.name.clone(), Some(&pool), None)?;
        Ok(pool)
    }

    /// Change a pool's overcommit ratio.
    pub fn set_overcommit(&self, name: &str, ratio: f64) -> Result<Pool> {
        crate::model::validate_overcommit_ratio(ratio)?;
        let _g = self.locks.lock(&format!("pool:{name}"));
        let mut pool = self.get_pool(name)?;
        if pool.overcommit_ratio == ratio {
            return Ok(pool);
        }
        pool.overcommit_ratio = ratio;
        self.persist_pool(name, Some(&pool), None)?;
        Ok(pool)
    }

    // ----- create ------------------------------------------------------

    /// Refuse a volume the pool cannot back. Callers hold `admission`.
    pub(crate) fn admit(&self, pool: &Pool, extra: u64) -> Result<()> {
        if pool.driver == DriverKind::Dir {
            // Sizes of dir volumes are advisory.
            return Ok(());
        }
        let cap = self.pool_capacity(pool)?;
        if extra > cap.available_bytes {
            return Err(Error::Capacity {
                pool: pool.name.clone(),
                requested: extra,
                available: cap.available_bytes,
            });
        }
        Ok(())
    }
}

/// An rbd pool: a cluster and a RADOS pool, nothing on this node's disks.
fn shape_rbd_pool(req: &CreatePool, pool: &mut Pool) -> Result<()> {
    let local_only = [
        ("--disk", !req.disks.is_empty()),
        ("--disk-file", req.disk_file.is_some()),
        ("--spare-disk", !req.spare_disks.is_empty()),
        ("--grow-step", req.grow_step.is_some()),
        ("--max-size", req.max_size.is_some()),
        ("--path", req.path.is_some()),
    ];
    if let Some((flag, _)) = local_only.iter().find(|(_, given)| *given) {
        return Err(invalid(
            *flag,
            "does not apply to rbd pools, whose storage is the Ceph cluster's",
        ));
    }
    let ceph = req
        .ceph
        .clone()
        .ok_or_else(|| invalid("rbd pool", "needs --ceph-conf and --ceph-pool"))?;
    absolute("ceph.conf", &ceph.conf)?;
    if let Some(k) = &ceph.keyring {
        absolute("keyring", k)?;
    }
    validate_name("ceph pool", &ceph.pool)?;
    if let Some(u) = &ceph.user {
        validate_name("ceph user", u)?;
        if u.starts_with("client.") {
            return Err(invalid(
                format!("ceph user {u:?}"),
                "is the id without \"client.\"",
            ));
        }
    }
    pool.ceph = Some(ceph);
    Ok(())
}
