//! `VolumeService`: every rule about volumes lives here.
//!
//! It validates input, serialises operations per volume, journals intents
//! before side effects, keeps consumer reference counts in the store, and
//! emits events. It is the only caller of drivers and of the store. Reads are
//! served from an in-memory copy of the store's records, which only this
//! service writes, so `list` never touches a backend.
//!
//! Every operation that changes the host follows one pattern:
//! 1. under the volume's lock, write the intent (and the record's new
//!    transitional state) in one transaction;
//! 2. run the idempotent steps, with a failpoint after each;
//! 3. write the result and delete the intent in one transaction.
//!
//! A failed step undoes what the operation did and deletes the intent. A
//! crash leaves the intent for [`crate::reconcile`] to finish or undo.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Utc;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::driver::{Driver, DriverError, PoolUsage, SourceRef};
use crate::error::{Error, Result};
use crate::events::{event_key, Event, EventKind, EventLog, KEEP};
use crate::failpoint::Failpoints;
use crate::host::{Host, LoopDevice, MountOptions};
use crate::model::Sharing;
use crate::model::{
    validate_consumer_id, validate_label, validate_name, Autogrow, Consumer, ConsumerRef,
    CreateSource, DriverKind, FsType, InvalidInput, Pool, PoolCapacity, PublishTarget, Snapshot,
    Staging, Volume, VolumeState,
};
use crate::stats::Operation;
use crate::store::{Store, Txn};

pub(crate) const POOL_PREFIX: &str = "pool/";
pub(crate) const VOL_PREFIX: &str = "vol/";
pub(crate) const INTENT_PREFIX: &str = "intent/";
pub(crate) const EVENT_PREFIX: &str = "event/";
pub(crate) const BOOT_ID_KEY: &str = "meta/boot_id";
pub(crate) const SNAP_PREFIX: &str = "snap/";

pub(crate) fn snap_key(name: &str) -> String {
    format!("{SNAP_PREFIX}{name}")
}

/// How long a measurement of a pool's backing usage is reused.
pub const USAGE_TTL: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a waiting operation queues behind another one on the same
/// volume before it answers [`Error::Conflict`] (longer than any copy or
/// tool the other may be running, short of forever).
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// What an operation does when another one holds its volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Wait for it (the CLI, REST and Docker: operations queue).
    Block,
    /// Fail with [`Error::Conflict`] (CSI answers ABORTED and the CO retries).
    Fail,
}

/// A consumer's target must be an absolute, normalised path.
fn validate_target(path: &Path) -> Result<(), InvalidInput> {
    let bad = |reason: &str| Err(InvalidInput::new(format!("target path {path:?}"), reason));
    if !path.is_absolute() {
        return bad("must be absolute");
    }
    if path.components().any(|c| {
        matches!(
            c,
            std::path::Component::ParentDir | std::path::Component::CurDir
        )
    }) {
        return bad("must not contain '.' or '..'");
    }
    if path.as_os_str().len() > 4096 || path.to_string_lossy().chars().any(char::is_control) {
        return bad("must be at most 4096 bytes without control characters");
    }
    Ok(())
}

/// Settings the service needs; the daemon fills them from its config.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Where volumes are mounted: `<run-dir>/mounts/<name>`.
    pub mounts_dir: PathBuf,
    /// Where pools ballast makes live: `<state-dir>/pools/<name>` (a btrfs
    /// pool is mounted at `<name>/mnt` there).
    pub pools_dir: PathBuf,
    pub default_size: u64,
    pub default_fs: FsType,
}

/// A request to create a volume. Unset fields take the pool's defaults.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateVolume {
    pub name: String,
    pub size_bytes: Option<u64>,
    pub fs: Option<FsType>,
    pub pool: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// A raw block volume (loop pools only): never formatted or mounted.
    pub block: bool,
    /// Copy the new volume's data from a snapshot or another volume.
    pub source: Option<CreateSource>,
    /// Grow online before the filesystem fills.
    pub autogrow: Option<Autogrow>,
}

/// Live usage of a mounted volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VolumeUsage {
    pub used_bytes: u64,
    pub total_bytes: u64,
    pub used_inodes: u64,
    pub total_inodes: u64,
}

/// What an unfinished operation was doing; stored before its first side
/// effect and deleted with its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Intent {
    pub op: IntentOp,
    /// The volume record as the operation found it (for a create: as it
    /// will be).
    pub before: Volume,
    pub started: chrono::DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum IntentOp {
    Create,
    Stage {
        consumer: ConsumerRef,
        #[serde(default)]
        target: Option<PublishTarget>,
    },
    /// Bind an already staged volume onto a consumer's target.
    Publish {
        consumer: ConsumerRef,
        target: PublishTarget,
    },
    /// Unbind a consumer's target; other consumers remain.
    Unpublish {
        consumer: ConsumerRef,
    },
    Unstage {
        consumer: ConsumerRef,
    },
    Resize {
        from: u64,
        to: u64,
    },
    Delete,
    /// Copy the volume into this snapshot.
    Snapshot {
        snapshot: Snapshot,
    },
}

impl IntentOp {
    pub fn name(&self) -> &'static str {
        match self {
            IntentOp::Create => "create",
            IntentOp::Stage { .. } => "stage",
            IntentOp::Publish { .. } => "publish",
            IntentOp::Unpublish { .. } => "unpublish",
            IntentOp::Unstage { .. } => "unstage",
            IntentOp::Resize { .. } => "resize",
            IntentOp::Delete => "delete",
            IntentOp::Snapshot { .. } => "snapshot",
        }
    }
}

pub(crate) enum IntentWrite {
    Set(Box<Intent>),
    Clear,
}

pub(crate) fn vol_key(name: &str) -> String {
    format!("{VOL_PREFIX}{name}")
}
pub(crate) fn intent_key(name: &str) -> String {
    format!("{INTENT_PREFIX}{name}")
}
pub(crate) fn pool_key(name: &str) -> String {
    format!("{POOL_PREFIX}{name}")
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    // Our records are plain data (strings, numbers, maps with string keys):
    // serialising them cannot fail.
    serde_json::to_vec(v).expect("records serialise")
}

pub struct VolumeService {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) host: Arc<dyn Host>,
    pub(crate) drivers: HashMap<DriverKind, Arc<dyn Driver>>,
    pub(crate) config: ServiceConfig,
    pub(crate) volumes: RwLock<BTreeMap<String, Volume>>,
    pub(crate) pools: RwLock<BTreeMap<String, Pool>>,
    pub(crate) locks: crate::locks::NameLocks,
    /// Serialises capacity checks with the records they admit.
    pub(crate) admission: Mutex<()>,
    pub(crate) events: EventLog,
    pub(crate) failpoints: Failpoints,
    pub(crate) usage_cache: Mutex<HashMap<String, (std::time::Instant, PoolUsage)>>,
    pub(crate) snapshots: RwLock<BTreeMap<String, Snapshot>>,
    /// Operation durations and errors; see [`crate::stats`].
    pub(crate) stats: crate::stats::Stats,
    /// Volumes already warned about reaching their autogrow max.
    pub(crate) autogrow_at_max: Mutex<std::collections::HashSet<String>>,
    /// What the pool watcher remembers between passes.
    pub(crate) pool_watch: crate::remediation::PoolWatches,
    /// Copies in flight and how far they have got.
    pub(crate) operations: Arc<crate::progress::Operations>,
}

impl VolumeService {
    // ----- reads -------------------------------------------------------

    pub fn list_volumes(&self) -> Vec<Volume> {
        self.volumes.read().values().cloned().collect()
    }

    /// Up to `limit` volumes in name order after `after` (exclusive), and
    /// whether more follow. Clones only the page, so paging through 10,000
    /// volumes stays cheap.
    pub fn volumes_page(&self, after: Option<&str>, limit: usize) -> (Vec<Volume>, bool) {
        use std::ops::Bound;
        let vols = self.volumes.read();
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Unbounded,
        };
        let mut it = vols.range((lower, Bound::Unbounded)).map(|(_, v)| v);
        let page: Vec<Volume> = it.by_ref().take(limit).cloned().collect();
        let more = it.next().is_some();
        (page, more)
    }

    pub fn volume_count(&self) -> usize {
        self.volumes.read().len()
    }

    pub fn get_volume(&self, name: &str) -> Result<Volume> {
        validate_name("volume", name)?;
        self.volumes
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found("volume", name))
    }

    /// Filesystem usage of a mounted volume; None when it is not mounted.
    pub fn volume_usage(&self, vol: &Volume) -> Option<VolumeUsage> {
        let staging = vol.staging.as_ref()?;
        if let Some(u) = self.backend_volume_usage(vol) {
            return Some(u);
        }
        let st = self.host.fs_stats(&staging.mountpoint).ok()?;
        Some(VolumeUsage {
            used_bytes: st.total_bytes.saturating_sub(st.free_bytes),
            total_bytes: st.total_bytes,
            used_inodes: st.total_inodes.saturating_sub(st.free_inodes),
            total_inodes: st.total_inodes,
        })
    }

    /// Usage a backend accounts for itself (btrfs: the subvolume's qgroup
    /// against its limit), where statvfs would show the whole pool.
    fn backend_volume_usage(&self, vol: &Volume) -> Option<VolumeUsage> {
        let pool = self.get_pool(&vol.pool).ok()?;
        let (used, total) = self
            .driver(pool.driver)
            .ok()?
            .volume_usage(&pool, vol)
            .ok()??;
        Some(VolumeUsage {
            used_bytes: used,
            total_bytes: total,
            used_inodes: 0,
            total_inodes: 0,
        })
    }

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
    fn pool_usage(&self, pool: &Pool) -> Result<PoolUsage> {
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

    pub fn pool_capacity(&self, pool: &Pool) -> Result<PoolCapacity> {
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

    /// Long operations in flight (full copies), with their progress.
    pub fn operations(&self) -> Vec<crate::progress::Operation> {
        self.operations.list()
    }

    pub fn recent_events(&self, limit: usize) -> Vec<Event> {
        self.events.recent(limit)
    }

    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Unfinished intents (normally none outside an operation).
    pub fn intents(&self) -> Result<Vec<(String, Intent)>> {
        let mut out = Vec::new();
        for (k, v) in self.store.scan(INTENT_PREFIX)? {
            let intent: Intent =
                serde_json::from_slice(&v).map_err(|e| crate::store::StoreError::Corrupt {
                    path: k.clone(),
                    detail: e.to_string(),
                })?;
            out.push((k[INTENT_PREFIX.len()..].to_string(), intent));
        }
        Ok(out)
    }

    // ----- pools -------------------------------------------------------

    /// Record a pool and prepare its storage; an identical existing pool is
    /// fine.
    pub fn ensure_pool(&self, pool: Pool) -> Result<Pool> {
        validate_name("pool", &pool.name)?;
        crate::model::validate_overcommit_ratio(pool.overcommit_ratio)?;
        crate::pools::check_not_system_path("path", &pool.path)?;
        let _g = self.locks.lock(&format!("pool:{}", pool.name));
        if let Some(existing) = self.pools.read().get(&pool.name) {
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
        self.store.commit(
            Txn::new()
                .require_absent(pool_key(&pool.name))
                .put(pool_key(&pool.name), to_json(&pool)),
        )?;
        self.pools.write().insert(pool.name.clone(), pool.clone());
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
        self.store
            .commit(Txn::new().put(pool_key(name), to_json(&pool)))?;
        self.pools.write().insert(name.to_string(), pool.clone());
        Ok(pool)
    }

    // ----- create ------------------------------------------------------

    /// Create a volume; the same request again returns the same volume.
    pub fn create_volume(&self, req: CreateVolume) -> Result<Volume> {
        self.create_volume_with(req, Wait::Block)
    }

    /// [`VolumeService::create_volume`], failing fast on a busy name when
    /// `wait` is [`Wait::Fail`].
    pub fn create_volume_with(&self, req: CreateVolume, wait: Wait) -> Result<Volume> {
        let op = if req.source.is_some() {
            Operation::Clone
        } else {
            Operation::Create
        };
        let driver = self.pool_driver_label(req.pool.as_deref());
        self.timed(op, driver, || self.create_volume_op(req, wait))
    }

    fn create_volume_op(&self, req: CreateVolume, wait: Wait) -> Result<Volume> {
        validate_name("volume", &req.name)?;
        for (k, v) in &req.labels {
            validate_label(k, v)?;
        }
        let pool = match &req.pool {
            Some(p) => {
                validate_name("pool", p)?;
                self.get_pool(p)?
            }
            None => self.get_pool("default")?,
        };
        let _g = self.lock_op(&req.name, wait)?;
        if let Some(existing) = self.volumes.read().get(&req.name).cloned() {
            return check_same(&existing, &req).map(|()| existing);
        }
        if let Some(source) = req.source.clone() {
            return self.create_copy(req, source, wait);
        }
        let (size, fs) = self.resolve_shape(&req, &pool)?;
        Self::check_autogrow(&req, &pool, size)?;
        let vol = Volume {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: req.name.clone(),
            pool: pool.name.clone(),
            driver: pool.driver,
            size_bytes: size,
            fs,
            labels: req.labels.clone(),
            created_at: Utc::now(),
            state: VolumeState::Creating,
            formatted: false,
            block: req.block,
            fs_grow_pending: false,
            autogrow: req.autogrow,
            source: None,
            cow: false,
            staging: None,
            consumers: BTreeMap::new(),
        };
        let driver = self.driver(pool.driver)?;
        {
            let _admit = self.admission.lock();
            self.admit(&pool, size)?;
            let intent = Intent {
                op: IntentOp::Create,
                before: vol.clone(),
                started: Utc::now(),
            };
            let txn = Txn::new().require_absent(vol_key(&vol.name));
            self.persist(
                txn,
                &vol.name,
                Some(&vol),
                Some(IntentWrite::Set(Box::new(intent))),
                None,
            )?;
        }
        self.failpoints.hit("create.after_intent");
        if let Err(e) = driver.create(&pool, &vol) {
            self.undo_create(&pool, &vol);
            return Err(e.into());
        }
        self.failpoints.hit("create.after_image");
        let mut done = vol;
        done.state = VolumeState::Available;
        let ev = self.event(
            EventKind::Create,
            &done,
            format!(
                "created {} volume of {} bytes",
                fs.map_or(pool.driver.as_str(), FsType::as_str),
                size
            ),
        );
        if let Err(e) = self.persist(
            Txn::new(),
            &done.name,
            Some(&done),
            Some(IntentWrite::Clear),
            Some(ev),
        ) {
            self.undo_create(&pool, &done);
            return Err(e);
        }
        Ok(done)
    }

    /// Create a volume as a copy of a snapshot or of another volume, in the
    /// source's pool. The caller holds the new name's lock.
    fn create_copy(&self, req: CreateVolume, source: CreateSource, wait: Wait) -> Result<Volume> {
        // The source volume's lock keeps it still (no resize, unmount or
        // delete) during the copy.
        let (_src_guard, src_vol, src_snap) = match &source {
            CreateSource::Volume(name) => {
                validate_name("volume", name)?;
                if name == &req.name {
                    return Err(
                        InvalidInput::new("source volume", "is the volume being created").into(),
                    );
                }
                let g = self.lock_op(name, wait)?;
                let v = self.get_volume(name)?;
                self.check_settled(&v)?;
                (Some(g), Some(v), None)
            }
            CreateSource::Snapshot(name) => {
                let s = self.get_snapshot(name)?;
                if !s.ready {
                    return Err(Error::Busy {
                        kind: "snapshot",
                        name: name.clone(),
                        detail: "the snapshot is still being made".into(),
                    });
                }
                (None, None, Some(s))
            }
        };
        let (pool_name, src_size, fs, block, formatted) = match (&src_vol, &src_snap) {
            (Some(v), _) => (v.pool.clone(), v.size_bytes, v.fs, v.block, v.formatted),
            (None, Some(s)) => (s.pool.clone(), s.size_bytes, s.fs, s.block, s.formatted),
            (None, None) => unreachable!("one source is set"),
        };
        if req.pool.as_ref().is_some_and(|p| p != &pool_name) {
            return Err(InvalidInput::new(
                "pool",
                format!("a copy is made in its source's pool, {pool_name:?}"),
            )
            .into());
        }
        if req.fs.is_some() && req.fs != fs {
            return Err(InvalidInput::new(
                "fs",
                format!(
                    "the source's filesystem is {}",
                    fs.map_or("none", FsType::as_str)
                ),
            )
            .into());
        }
        if req.block && !block {
            return Err(
                InvalidInput::new("access type", "the source is not a block volume").into(),
            );
        }
        let size = req
            .size_bytes
            .unwrap_or(src_size)
            .checked_next_multiple_of(4096)
            .ok_or_else(|| InvalidInput::new("size", "is too large"))?;
        if size < src_size {
            return Err(InvalidInput::new(
                format!("size {size}"),
                format!("is smaller than the source's {src_size} bytes"),
            )
            .into());
        }
        let pool = self.get_pool(&pool_name)?;
        Self::check_autogrow(&req, &pool, size)?;
        let cow = self.driver(pool.driver)?.copies_share_extents(&pool)?;
        let vol = Volume {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: req.name.clone(),
            pool: pool.name.clone(),
            driver: pool.driver,
            size_bytes: size,
            fs,
            labels: req.labels.clone(),
            created_at: Utc::now(),
            state: VolumeState::Creating,
            formatted,
            block,
            fs_grow_pending: formatted && size > src_size,
            autogrow: req.autogrow,
            source: Some(source.clone()),
            cow,
            staging: None,
            consumers: BTreeMap::new(),
        };
        let driver = self.driver(pool.driver)?;
        {
            let _admit = self.admission.lock();
            // A copy-on-write clone starts out holding nothing of its own.
            self.admit(&pool, if cow { 0 } else { size })?;
            self.begin(
                Txn::new().require_absent(vol_key(&vol.name)),
                &vol.name,
                &vol,
                IntentOp::Create,
                &vol,
            )?;
        }
        self.failpoints.hit("create.after_intent");
        let op = self.operations.start("copy", &vol.name, source.name());
        let copied = match (&src_vol, &src_snap) {
            (Some(v), _) => self.with_still(v, || {
                driver.create_from(&pool, &vol, SourceRef::Volume(v), op.progress())
            }),
            (None, Some(s)) => driver
                .create_from(&pool, &vol, SourceRef::Snapshot(s), op.progress())
                .map_err(Error::from),
            (None, None) => unreachable!("one source is set"),
        };
        if let Err(e) = copied {
            self.undo_create(&pool, &vol);
            return Err(e);
        }
        self.failpoints.hit("create.after_image");
        let mut done = vol;
        done.state = VolumeState::Available;
        let what = match &source {
            CreateSource::Volume(n) => format!("cloned from volume {n}"),
            CreateSource::Snapshot(n) => format!("restored from snapshot {n}"),
        };
        let ev = self.event(EventKind::Create, &done, what);
        if let Err(e) = self.persist(
            Txn::new(),
            &done.name,
            Some(&done),
            Some(IntentWrite::Clear),
            Some(ev),
        ) {
            self.undo_create(&pool, &done);
            return Err(e);
        }
        Ok(done)
    }

    /// Run `f` with the volume's filesystem frozen if it is mounted, so a
    /// copy of its storage is consistent. Always thaws.
    fn with_still(
        &self,
        vol: &Volume,
        f: impl FnOnce() -> std::result::Result<(), DriverError>,
    ) -> Result<()> {
        let frozen = match &vol.staging {
            Some(s) if !vol.block && vol.driver == DriverKind::Loop => {
                self.host.freeze(&s.mountpoint).map_err(DriverError::from)?;
                Some(s.mountpoint.clone())
            }
            _ => None,
        };
        if frozen.is_some() {
            self.failpoints.hit("snapshot.after_freeze");
        }
        let result = f();
        if let Some(m) = &frozen {
            if let Err(e) = self.host.thaw(m) {
                tracing::error!(mountpoint = %m.display(), error = %e, "thaw failed");
            }
        }
        result.map_err(Error::from)
    }

    // ----- snapshots ---------------------------------------------------

    pub fn list_snapshots(&self) -> Vec<Snapshot> {
        self.snapshots.read().values().cloned().collect()
    }

    pub fn get_snapshot(&self, name: &str) -> Result<Snapshot> {
        validate_name("snapshot", name)?;
        self.snapshots
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found("snapshot", name))
    }

    /// Snapshot a volume: a consistent copy of its data now. The same
    /// request again returns the same snapshot.
    pub fn create_snapshot(&self, volume: &str, name: &str, wait: Wait) -> Result<Snapshot> {
        let driver = self.volume_driver_label(volume);
        self.timed(Operation::Snapshot, driver, || {
            self.create_snapshot_op(volume, name, wait)
        })
    }

    fn create_snapshot_op(&self, volume: &str, name: &str, wait: Wait) -> Result<Snapshot> {
        validate_name("volume", volume)?;
        validate_name("snapshot", name)?;
        let _g = self.lock_op(volume, wait)?;
        let _s = self.lock_op(&format!("snapshot:{name}"), wait)?;
        if let Some(existing) = self.snapshots.read().get(name).cloned() {
            if existing.source_volume == volume {
                return Ok(existing);
            }
            return Err(Error::AlreadyExists {
                kind: "snapshot",
                name: name.to_string(),
                detail: format!("it is a snapshot of volume {}", existing.source_volume),
            });
        }
        let vol = self.get_volume(volume)?;
        self.check_settled(&vol)?;
        let pool = self.get_pool(&vol.pool)?;
        let driver = self.driver(pool.driver)?;
        let cow = driver.copies_share_extents(&pool)?;
        let snap = Snapshot {
            id: uuid::Uuid::new_v4().simple().to_string(),
            name: name.to_string(),
            source_volume: vol.name.clone(),
            source_volume_id: vol.id.clone(),
            pool: pool.name.clone(),
            size_bytes: vol.size_bytes,
            fs: vol.fs,
            block: vol.block,
            formatted: vol.formatted,
            created_at: Utc::now(),
            ready: false,
            cow,
        };
        {
            let _admit = self.admission.lock();
            self.admit(&pool, if cow { 0 } else { snap.size_bytes })?;
            let intent = Intent {
                op: IntentOp::Snapshot {
                    snapshot: snap.clone(),
                },
                before: vol.clone(),
                started: Utc::now(),
            };
            self.store.commit(
                Txn::new()
                    .require_absent(snap_key(name))
                    .put(snap_key(name), to_json(&snap))
                    .put(intent_key(volume), to_json(&intent)),
            )?;
            self.snapshots
                .write()
                .insert(name.to_string(), snap.clone());
        }
        let op = self.operations.start("snapshot", name, volume);
        let copied = self.with_still(&vol, || {
            let r = driver.snapshot(&pool, &vol, &snap, op.progress());
            self.failpoints.hit("snapshot.after_copy");
            r
        });
        if let Err(e) = copied {
            self.undo_snapshot(&pool, volume, &snap);
            return Err(e);
        }
        let mut done = snap;
        done.ready = true;
        let ev = self.event(EventKind::Snapshot, &vol, format!("snapshot {name} taken"));
        self.store.commit(
            Txn::new()
                .put(snap_key(name), to_json(&done))
                .delete(intent_key(volume))
                .put(crate::events::event_key(ev.seq), to_json(&ev)),
        )?;
        self.snapshots
            .write()
            .insert(name.to_string(), done.clone());
        self.events.publish(ev);
        Ok(done)
    }

    /// Take back an interrupted snapshot: its storage, its record, the intent.
    pub(crate) fn undo_snapshot(&self, pool: &Pool, volume: &str, snap: &Snapshot) {
        let result = (|| -> Result<()> {
            self.driver(pool.driver)?.delete_snapshot(pool, snap)?;
            self.store.commit(
                Txn::new()
                    .delete(snap_key(&snap.name))
                    .delete(intent_key(volume)),
            )?;
            self.snapshots.write().remove(&snap.name);
            Ok(())
        })();
        if let Err(e) = result {
            tracing::error!(snapshot = %snap.name, error = %e, "undo snapshot failed; the intent stays for the reconciler");
        }
    }

    /// Delete a snapshot. Its storage goes first, so a crash in between
    /// leaves a record whose delete can simply be repeated.
    pub fn delete_snapshot(&self, name: &str, wait: Wait) -> Result<()> {
        let driver = self.snapshot_driver_label(name);
        self.timed(Operation::DeleteSnapshot, driver, || {
            self.delete_snapshot_op(name, wait)
        })
    }

    fn delete_snapshot_op(&self, name: &str, wait: Wait) -> Result<()> {
        validate_name("snapshot", name)?;
        let _s = self.lock_op(&format!("snapshot:{name}"), wait)?;
        let snap = self.get_snapshot(name)?;
        if !snap.ready {
            return Err(Error::Busy {
                kind: "snapshot",
                name: name.to_string(),
                detail: "the snapshot is still being made".into(),
            });
        }
        let pool = self.get_pool(&snap.pool)?;
        self.driver(pool.driver)?.delete_snapshot(&pool, &snap)?;
        let ev = self.events.next(
            EventKind::Snapshot,
            Some(&snap.pool),
            Some(&snap.source_volume),
            format!("snapshot {name} deleted"),
        );
        self.store.commit(
            Txn::new()
                .delete(snap_key(name))
                .put(crate::events::event_key(ev.seq), to_json(&ev)),
        )?;
        self.snapshots.write().remove(name);
        self.events.publish(ev);
        Ok(())
    }

    /// Autogrow needs a filesystem that can grow and room to grow into.
    fn check_autogrow(req: &CreateVolume, pool: &Pool, size: u64) -> Result<()> {
        let Some(a) = &req.autogrow else {
            return Ok(());
        };
        if req.block || pool.driver == DriverKind::Dir {
            return Err(InvalidInput::new(
                "autogrow",
                "needs a volume with a filesystem of its own (not block, not dir)",
            )
            .into());
        }
        if a.max_bytes < size {
            return Err(InvalidInput::new(
                format!("autogrow max {}", a.max_bytes),
                format!("is below the volume's size of {size} bytes"),
            )
            .into());
        }
        Ok(())
    }

    fn resolve_shape(&self, req: &CreateVolume, pool: &Pool) -> Result<(u64, Option<FsType>)> {
        let size = req.size_bytes.unwrap_or(self.config.default_size);
        if size == 0 {
            return Err(InvalidInput::new("size", "must be greater than zero").into());
        }
        // Loop devices and filesystems work in 4 KiB blocks.
        let size = size
            .checked_next_multiple_of(4096)
            .ok_or_else(|| InvalidInput::new("size", "is too large"))?;
        if req.block && pool.driver != DriverKind::Loop {
            return Err(InvalidInput::new(
                "access type block",
                format!(
                    "pool {:?} uses the {} driver, which has no block devices",
                    pool.name, pool.driver
                ),
            )
            .into());
        }
        if req.block && req.fs.is_some() {
            return Err(InvalidInput::new("fs", "a block volume has no filesystem").into());
        }
        let fs = match pool.driver {
            DriverKind::Loop if req.block => None,
            DriverKind::Dir | DriverKind::Btrfs => {
                if req.fs.is_some() {
                    return Err(InvalidInput::new(
                        "fs",
                        format!(
                            "pool {:?} uses the {} driver, whose volumes have no filesystem of their own",
                            pool.name, pool.driver
                        ),
                    )
                    .into());
                }
                None
            }
            DriverKind::Loop => {
                let fs = req.fs.unwrap_or(self.config.default_fs);
                if size < fs.min_size() {
                    return Err(InvalidInput::new(
                        format!("size {size}"),
                        format!(
                            "is below the {} minimum of {} bytes ({})",
                            fs,
                            fs.min_size(),
                            crate::model::format_size(fs.min_size())
                        ),
                    )
                    .into());
                }
                Some(fs)
            }
        };
        Ok((size, fs))
    }

    /// Refuse a volume the pool cannot back. Callers hold `admission`.
    fn admit(&self, pool: &Pool, extra: u64) -> Result<()> {
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

    pub(crate) fn undo_create(&self, pool: &Pool, vol: &Volume) {
        if let Ok(driver) = self.driver(pool.driver) {
            if let Err(e) = driver.delete(pool, vol) {
                tracing::error!(volume = %vol.name, error = %e, "undo create: removing storage failed");
                return;
            }
        }
        if let Err(e) = self.persist(Txn::new(), &vol.name, None, Some(IntentWrite::Clear), None) {
            tracing::error!(volume = %vol.name, error = %e, "undo create: clearing record failed");
        }
    }

    // ----- mount / unmount -------------------------------------------

    /// Record `consumer` on the volume, staging it (attach, format on first
    /// use, mount) if it is not staged yet. Returns the volume with its
    /// mountpoint.
    pub fn mount(&self, name: &str, consumer: ConsumerRef) -> Result<Volume> {
        self.publish(name, consumer, None, Wait::Block)
    }

    /// Like [`VolumeService::mount`], and with a target, bind-mount the
    /// volume (its staging path, or a block volume's device) onto it for
    /// this consumer. Publishing the same consumer again with the same
    /// target is a no-op; with other options it is `AlreadyExists`.
    pub fn publish(
        &self,
        name: &str,
        consumer: ConsumerRef,
        target: Option<PublishTarget>,
        wait: Wait,
    ) -> Result<Volume> {
        self.publish_with(name, consumer, target, Sharing::Unspecified, wait)
    }

    /// [`VolumeService::publish`] for a workload's target that may share
    /// the volume with other workloads' targets, or must be its only one
    /// ([`Sharing`]): an exclusive target is refused while another
    /// workload's is there, and refuses any later one. Recorded on the
    /// consumer, and part of the idempotency check.
    pub fn publish_with(
        &self,
        name: &str,
        consumer: ConsumerRef,
        target: Option<PublishTarget>,
        sharing: Sharing,
        wait: Wait,
    ) -> Result<Volume> {
        let driver = self.volume_driver_label(name);
        self.timed(Operation::Mount, driver, || {
            self.publish_op(name, consumer, target, sharing, wait)
        })
    }

    fn publish_op(
        &self,
        name: &str,
        consumer: ConsumerRef,
        target: Option<PublishTarget>,
        sharing: Sharing,
        wait: Wait,
    ) -> Result<Volume> {
        // Only a target asks anything of others.
        let sharing = if target.is_some() {
            sharing
        } else {
            Sharing::Unspecified
        };
        validate_name("volume", name)?;
        validate_consumer_id(&consumer.id)?;
        if let Some(t) = &target {
            validate_target(&t.path)?;
        }
        let _g = self.lock_op(name, wait)?;
        let mut vol = self.get_volume(name)?;
        self.check_settled(&vol)?;
        let key = consumer.key();
        if let Some(existing) = vol.consumers.get(&key) {
            if target.is_some() || existing.target.is_some() {
                let same = target.as_ref().is_some_and(|t| {
                    existing.target.as_deref() == Some(t.path.as_path())
                        && existing.read_only == t.read_only
                        && existing.flags == t.flags
                        && existing.sharing == sharing
                });
                if same {
                    return Ok(vol);
                }
                return Err(Error::AlreadyExists {
                    kind: "volume",
                    name: name.to_string(),
                    detail: format!("{key} is already published with other options"),
                });
            }
        }
        if target.is_some() {
            if let Some(other) = vol.sharing_conflict(&key, sharing) {
                let at = other
                    .target
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let detail = if sharing == Sharing::Exclusive {
                    format!("published at {at}; an exclusive publish needs the volume alone")
                } else {
                    format!("published for exclusive use at {at}")
                };
                return Err(Error::Busy {
                    kind: "volume",
                    name: name.to_string(),
                    detail,
                });
            }
        }
        let pool = self.get_pool(&vol.pool)?;
        let driver = self.driver(pool.driver)?;
        let node = driver.node();
        if let Some(staging) = &vol.staging {
            // The record may say staged while the mount is gone (unmounted
            // behind our back, or a record from before a failed unstage):
            // never serve a bare directory as the volume.
            if !vol.block
                && !node.serves_in_place()
                && !node.is_mounted(&vol, &staging.mountpoint)?
            {
                tracing::warn!(volume = name, mountpoint = %staging.mountpoint.display(), "the staging mount is gone; staging again");
                vol.staging = None;
                vol.state = VolumeState::Available;
            }
        }
        if vol.staging.is_none() {
            return self.stage_and_publish(&pool, vol, consumer, target, sharing);
        }
        let Some(target) = target else {
            add_consumer(&mut vol, &consumer, None, sharing);
            let ev = self.event(EventKind::Mount, &vol, format!("mounted for {key}"));
            self.persist(Txn::new(), name, Some(&vol), None, Some(ev))?;
            return Ok(vol);
        };
        self.begin(
            Txn::new(),
            name,
            &vol,
            IntentOp::Publish {
                consumer: consumer.clone(),
                target: target.clone(),
            },
            &vol,
        )?;
        // A failed bind_target leaves no bind of its own behind, and must
        // not take down a mount that was there before it.
        if let Err(e) = self.bind_target(&vol, &target) {
            let _ = node;
            let _ = self.persist(Txn::new(), name, Some(&vol), Some(IntentWrite::Clear), None);
            return Err(e);
        }
        add_consumer(&mut vol, &consumer, Some(&target), sharing);
        let ev = self.event(
            EventKind::Mount,
            &vol,
            format!("published at {} for {key}", target.path.display()),
        );
        self.persist(
            Txn::new(),
            name,
            Some(&vol),
            Some(IntentWrite::Clear),
            Some(ev),
        )?;
        Ok(vol)
    }

    /// Bind the volume onto a consumer's target. Idempotent.
    fn bind_target(&self, vol: &Volume, target: &PublishTarget) -> Result<()> {
        let staging = vol.staging.as_ref().ok_or_else(|| Error::Busy {
            kind: "volume",
            name: vol.name.clone(),
            detail: "not staged".into(),
        })?;
        let source = if vol.block {
            staging
                .device
                .clone()
                .unwrap_or_else(|| staging.mountpoint.clone())
        } else {
            staging.mountpoint.clone()
        };
        let mounted = self
            .host
            .mounts()
            .map_err(DriverError::from)?
            .iter()
            .any(|m| m.target == target.path);
        let opts = MountOptions {
            read_only: target.read_only,
            flags: target.flags,
        };
        if mounted {
            // Ours (a retry after an undo that failed): set its flags, which
            // an earlier attempt may have left otherwise. Anything else
            // mounted there is not ours to serve through or to change.
            if !self
                .host
                .is_bind_of(&source, &target.path)
                .map_err(DriverError::from)?
            {
                return Err(Error::AlreadyExists {
                    kind: "target",
                    name: target.path.display().to_string(),
                    detail: format!("something other than volume {} is mounted there", vol.name),
                });
            }
            self.host
                .set_bind_flags(&source, &target.path, opts)
                .map_err(DriverError::from)?;
        } else {
            self.host
                .bind_mount(&source, &target.path, opts)
                .map_err(DriverError::from)?;
        }
        Ok(())
    }

    fn stage_and_publish(
        &self,
        pool: &Pool,
        mut vol: Volume,
        consumer: ConsumerRef,
        target: Option<PublishTarget>,
        sharing: Sharing,
    ) -> Result<Volume> {
        let name = vol.name.clone();
        let driver = self.driver(pool.driver)?;
        let node = driver.node();
        if target.is_none() && node.serves_in_place() {
            // Nothing is attached or mounted (dir, btrfs): staging is one
            // record update, and there is nothing an intent would undo.
            let data = node.mount(pool, &vol, None, &self.mountpoint_for(&name))?;
            vol.state = VolumeState::Mounted;
            vol.staging = Some(Staging {
                device: None,
                mountpoint: data,
            });
            add_consumer(&mut vol, &consumer, None, sharing);
            let ev = self.event(
                EventKind::Mount,
                &vol,
                format!("staged and mounted for {}", consumer.key()),
            );
            self.persist(Txn::new(), &name, Some(&vol), None, Some(ev))?;
            return Ok(vol);
        }
        self.begin(
            Txn::new(),
            &name,
            &vol,
            IntentOp::Stage {
                consumer: consumer.clone(),
                target: target.clone(),
            },
            &vol,
        )?;
        self.failpoints.hit("stage.after_intent");
        let mountpoint = self.mountpoint_for(&name);
        let staged = (|| -> Result<(Option<LoopDevice>, PathBuf)> {
            let dev = node.attach(pool, &vol)?;
            self.failpoints.hit("stage.after_attach");
            let dev_path = dev.as_ref().map(|d| d.path.clone());
            if vol.block {
                // A raw block volume is only attached; it must outlive this
                // process's hold on it, since no mount will hold it.
                let path = dev_path.clone().ok_or_else(|| {
                    DriverError::Unsupported(format!("pool {} has no block devices", pool.name))
                })?;
                self.host
                    .loop_set_autoclear(&path, false)
                    .map_err(DriverError::from)?;
                return Ok((dev, path));
            }
            if let (Some(path), false) = (&dev_path, vol.formatted) {
                node.format(&vol, path)?;
            }
            self.failpoints.hit("stage.after_format");
            let offline_grow = vol.fs_grow_pending && node.grows_offline(&vol);
            if let (Some(path), true) = (&dev_path, offline_grow) {
                node.grow_fs(&vol, path, None)?;
            }
            std::fs::create_dir_all(&mountpoint).map_err(|e| DriverError::io(&mountpoint, e))?;
            let data = node.mount(pool, &vol, dev_path.as_deref(), &mountpoint)?;
            if data != mountpoint {
                // The backend serves its data in place (dir driver).
                remove_mountpoint(&mountpoint);
            }
            self.failpoints.hit("stage.after_mount");
            if let (Some(path), true) = (&dev_path, vol.fs_grow_pending && !offline_grow) {
                node.grow_fs(&vol, path, Some(&data))?;
            }
            Ok((dev, data))
        })();
        let (dev, data) = match staged {
            Ok(v) => v,
            Err(e) => {
                self.undo_stage(pool, &vol, target.as_ref());
                return Err(e);
            }
        };
        let before = vol.clone();
        vol.formatted = vol.formatted || (dev.is_some() && !vol.block);
        vol.fs_grow_pending = false;
        vol.state = VolumeState::Mounted;
        vol.staging = Some(Staging {
            device: dev.as_ref().map(|d| d.path.clone()),
            mountpoint: data,
        });
        if let Some(t) = &target {
            // bind_target cleans up after itself; the target is not ours
            // to unmount.
            if let Err(e) = self.bind_target(&vol, t) {
                self.undo_stage(pool, &before, None);
                return Err(e);
            }
        }
        add_consumer(&mut vol, &consumer, target.as_ref(), sharing);
        let ev = self.event(
            EventKind::Mount,
            &vol,
            format!("staged and mounted for {}", consumer.key()),
        );
        if let Err(e) = self.persist(
            Txn::new(),
            &name,
            Some(&vol),
            Some(IntentWrite::Clear),
            Some(ev),
        ) {
            self.undo_stage(pool, &before, target.as_ref());
            return Err(e);
        }
        // The mount now holds the loop device; autoclear frees it on umount.
        drop(dev);
        Ok(vol)
    }

    /// Take back what a failed or interrupted stage did: unbind the target,
    /// unmount, detach, remove the mountpoint, restore the record, drop the
    /// intent.
    pub(crate) fn undo_stage(&self, pool: &Pool, before: &Volume, target: Option<&PublishTarget>) {
        let mountpoint = self.mountpoint_for(&before.name);
        let result = (|| -> Result<()> {
            let driver = self.driver(pool.driver)?;
            let node = driver.node();
            if let Some(t) = target {
                self.host.unmount(&t.path).map_err(DriverError::from)?;
            }
            // Only our own mount: a stage that failed because something
            // else is mounted there must leave that alone.
            if self.our_mount_at(pool, before, &mountpoint)? {
                node.unmount(before, &mountpoint)?;
            }
            node.detach(pool, before)?;
            remove_mountpoint(&mountpoint);
            self.persist(
                Txn::new(),
                &before.name,
                Some(before),
                Some(IntentWrite::Clear),
                None,
            )
        })();
        if let Err(e) = result {
            tracing::error!(volume = %before.name, error = %e, "undo stage failed; the intent stays for the reconciler");
        }
    }

    /// Whether the mount visible at `mountpoint` is this volume's: a loop
    /// device backed by its image (drivers without an image serve in place
    /// and decide for themselves).
    fn our_mount_at(&self, pool: &Pool, vol: &Volume, mountpoint: &Path) -> Result<bool> {
        let Some(image) = self.driver(pool.driver)?.backing_file(pool, vol) else {
            return Ok(true);
        };
        let mounts = self.host.mounts().map_err(DriverError::from)?;
        let Some(top) = mounts.iter().rev().find(|m| m.target == mountpoint) else {
            return Ok(false);
        };
        let loops = self.host.loop_devices().map_err(DriverError::from)?;
        Ok(loops
            .iter()
            .any(|l| l.backing_file == image && Path::new(&top.source) == l.device))
    }

    /// Release `consumer`; the last one out unmounts and detaches. An
    /// unknown consumer is a logged no-op.
    pub fn unmount(&self, name: &str, consumer: &ConsumerRef) -> Result<Volume> {
        self.unpublish(name, consumer, Wait::Block)
    }

    /// Release `consumer`, unbinding its target if it has one; the last one
    /// out unmounts and detaches. An unknown consumer is a logged no-op.
    pub fn unpublish(&self, name: &str, consumer: &ConsumerRef, wait: Wait) -> Result<Volume> {
        let driver = self.volume_driver_label(name);
        self.timed(Operation::Unmount, driver, || {
            self.unpublish_op(name, consumer, wait)
        })
    }

    fn unpublish_op(&self, name: &str, consumer: &ConsumerRef, wait: Wait) -> Result<Volume> {
        validate_name("volume", name)?;
        validate_consumer_id(&consumer.id)?;
        let _g = self.lock_op(name, wait)?;
        let mut vol = self.get_volume(name)?;
        self.check_settled(&vol)?;
        let key = consumer.key();
        let Some(c) = vol.consumers.get_mut(&key) else {
            tracing::info!(volume = name, consumer = %key, "unmount of an unknown consumer: nothing to do");
            return Ok(vol);
        };
        if c.count > 1 {
            c.count -= 1;
            self.persist(Txn::new(), name, Some(&vol), None, None)?;
            return Ok(vol);
        }
        let target = c.target.clone();
        let before = vol.clone();
        vol.consumers.remove(&key);
        if !vol.consumers.is_empty() || vol.staging.is_none() {
            if let Some(t) = &target {
                self.begin(
                    Txn::new(),
                    name,
                    &before,
                    IntentOp::Unpublish {
                        consumer: consumer.clone(),
                    },
                    &before,
                )?;
                if let Err(e) = self.unbind(&before, t) {
                    let _ = self.persist(
                        Txn::new(),
                        name,
                        Some(&before),
                        Some(IntentWrite::Clear),
                        None,
                    );
                    return Err(e);
                }
            }
            let ev = self.event(EventKind::Unmount, &vol, format!("released by {key}"));
            self.persist(
                Txn::new(),
                name,
                Some(&vol),
                target.as_ref().map(|_| IntentWrite::Clear),
                Some(ev),
            )?;
            return Ok(vol);
        }
        self.begin(
            Txn::new(),
            name,
            &before,
            IntentOp::Unstage {
                consumer: consumer.clone(),
            },
            &before,
        )?;
        self.failpoints.hit("unstage.after_intent");
        match self.unstage_steps(&before) {
            Ok(()) => {}
            Err(e) => {
                // Still mounted (busy): the consumer stays recorded.
                let _ = self.persist(
                    Txn::new(),
                    name,
                    Some(&before),
                    Some(IntentWrite::Clear),
                    None,
                );
                return Err(e);
            }
        }
        vol.state = VolumeState::Available;
        vol.staging = None;
        let ev = self.event(
            EventKind::Unmount,
            &vol,
            format!("released by {key}; unmounted and detached"),
        );
        self.persist(
            Txn::new(),
            name,
            Some(&vol),
            Some(IntentWrite::Clear),
            Some(ev),
        )?;
        Ok(vol)
    }

    /// Unmount a consumer's target. Not mounted is fine; busy is an error.
    pub(crate) fn unbind(&self, vol: &Volume, target: &Path) -> Result<()> {
        match self.host.unmount(target) {
            Ok(()) => Ok(()),
            Err(crate::host::HostError::Busy { .. }) => Err(Error::Busy {
                kind: "volume",
                name: vol.name.clone(),
                detail: format!("{} is still in use on the host", target.display()),
            }),
            Err(e) => Err(DriverError::from(e).into()),
        }
    }

    /// Whether the volume's staged device is mounted anywhere in our mount
    /// namespace.
    fn device_mounted_here(&self, vol: &Volume) -> Result<bool> {
        let Some(device) = vol.staging.as_ref().and_then(|s| s.device.as_ref()) else {
            return Ok(false);
        };
        let mounts = self.host.mounts().map_err(DriverError::from)?;
        Ok(mounts.iter().any(|m| Path::new(&m.source) == device))
    }

    /// Unmount the staging mount and detach the device. Idempotent.
    pub(crate) fn unstage_steps(&self, vol: &Volume) -> Result<()> {
        let pool = self.get_pool(&vol.pool)?;
        let driver = self.driver(pool.driver)?;
        let node = driver.node();
        for c in vol.consumers.values() {
            if let Some(t) = &c.target {
                self.unbind(vol, t)?;
            }
        }
        let mountpoint = vol
            .staging
            .as_ref()
            .map_or_else(|| self.mountpoint_for(&vol.name), |s| s.mountpoint.clone());
        let unmounted = if vol.block {
            Ok(())
        } else {
            node.unmount(vol, &mountpoint)
        };
        match unmounted {
            Ok(()) => {}
            Err(DriverError::Host(crate::host::HostError::Busy { .. })) => {
                return Err(Error::Busy {
                    kind: "volume",
                    name: vol.name.clone(),
                    detail: format!("{} is still in use on the host", mountpoint.display()),
                })
            }
            Err(e) => return Err(e.into()),
        }
        self.failpoints.hit("unstage.after_umount");
        match node.detach(&pool, vol) {
            Ok(()) => {}
            // Unmounted here, but a mount namespace made while it was mounted
            // (any container start) still holds a copy of the mount. The
            // device has autoclear: the kernel frees it when that copy goes,
            // and a mount before then reuses it (one device, one filesystem
            // instance per image). For us the volume is unstaged.
            Err(DriverError::Host(crate::host::HostError::Busy { .. }))
                if !vol.block && !self.device_mounted_here(vol)? =>
            {
                tracing::info!(volume = %vol.name, "unmounted; the loop device is still referenced from another mount namespace and is left for autoclear");
            }
            // A raw block volume's device held open, or the device mounted
            // elsewhere in our own namespace: really in use.
            Err(DriverError::Host(crate::host::HostError::Busy { .. })) => {
                return Err(Error::Busy {
                    kind: "volume",
                    name: vol.name.clone(),
                    detail: "its device is still in use on the host".into(),
                })
            }
            Err(e) => return Err(e.into()),
        }
        self.failpoints.hit("unstage.after_detach");
        if !vol.block && mountpoint.starts_with(&self.config.mounts_dir) {
            remove_mountpoint(&mountpoint);
        }
        Ok(())
    }

    // ----- resize ------------------------------------------------------

    /// Grow a volume to `new_size` bytes, online if it is mounted.
    pub fn resize(&self, name: &str, new_size: u64) -> Result<Volume> {
        self.resize_with(name, new_size, Wait::Block)
    }

    /// [`VolumeService::resize`] with a choice of waiting.
    pub fn resize_with(&self, name: &str, new_size: u64, wait: Wait) -> Result<Volume> {
        let driver = self.volume_driver_label(name);
        self.timed(Operation::Resize, driver, || {
            self.resize_op(name, new_size, wait)
        })
    }

    fn resize_op(&self, name: &str, new_size: u64, wait: Wait) -> Result<Volume> {
        validate_name("volume", name)?;
        let _g = self.lock_op(name, wait)?;
        let vol = self.get_volume(name)?;
        self.check_settled(&vol)?;
        let new_size = new_size
            .checked_next_multiple_of(4096)
            .ok_or_else(|| InvalidInput::new("size", "is too large"))?;
        if new_size == vol.size_bytes {
            return Ok(vol);
        }
        if new_size < vol.size_bytes {
            return Err(InvalidInput::new(
                format!("size {new_size}"),
                format!(
                    "is smaller than the volume's {} bytes; shrinking is not supported",
                    vol.size_bytes
                ),
            )
            .into());
        }
        let pool = self.get_pool(&vol.pool)?;
        let mut growing = vol.clone();
        growing.state = VolumeState::Resizing;
        growing.size_bytes = new_size;
        {
            let _admit = self.admission.lock();
            // A copy-on-write clone is charged what it holds, not its size.
            self.admit(
                &pool,
                if vol.cow {
                    0
                } else {
                    new_size - vol.size_bytes
                },
            )?;
            self.begin(
                Txn::new(),
                name,
                &growing,
                IntentOp::Resize {
                    from: vol.size_bytes,
                    to: new_size,
                },
                &vol,
            )?;
        }
        self.failpoints.hit("resize.after_intent");
        match self.resize_steps(&pool, &vol, new_size) {
            Ok(done) => Ok(done),
            Err(e) => {
                // Growing the image is harmless to keep; the record keeps the
                // old size so accounting and the filesystem agree.
                let _ = self.persist(Txn::new(), name, Some(&vol), Some(IntentWrite::Clear), None);
                Err(e)
            }
        }
    }

    /// Grow the storage, then the filesystem, then record the result.
    /// Idempotent, so the reconciler rolls an interrupted resize forward.
    pub(crate) fn resize_steps(&self, pool: &Pool, vol: &Volume, new_size: u64) -> Result<Volume> {
        let driver = self.driver(pool.driver)?;
        driver.resize(pool, vol, new_size)?;
        self.failpoints.hit("resize.after_image");
        let mut done = vol.clone();
        done.size_bytes = new_size;
        let node = driver.node();
        let mut note = String::new();
        match &vol.staging {
            Some(Staging {
                device: Some(dev), ..
            }) if vol.block => {
                self.host
                    .loop_refresh_capacity(dev)
                    .map_err(DriverError::from)?;
            }
            None if vol.block => {}
            Some(Staging {
                device: Some(dev),
                mountpoint,
            }) if node.can_grow_online(vol) => {
                node.grow_fs(vol, dev, Some(mountpoint))?;
            }
            Some(Staging {
                device: Some(_), ..
            }) => {
                done.fs_grow_pending = true;
                note = "; the filesystem cannot grow online on this host (online ext4 resize needs CAP_SYS_RESOURCE) and grows at its next mount".into();
            }
            Some(Staging { device: None, .. }) => {}
            None => done.fs_grow_pending = vol.formatted,
        }
        self.failpoints.hit("resize.after_fsgrow");
        done.state = if done.staging.is_some() {
            VolumeState::Mounted
        } else {
            VolumeState::Available
        };
        let ev = self.event(
            EventKind::Resize,
            &done,
            format!("grown from {} to {} bytes{note}", vol.size_bytes, new_size),
        );
        self.persist(
            Txn::new(),
            &done.name,
            Some(&done),
            Some(IntentWrite::Clear),
            Some(ev),
        )?;
        Ok(done)
    }

    // ----- delete ------------------------------------------------------

    /// Delete a volume. A volume with consumers needs `force`, which
    /// unmounts it first.
    pub fn delete_volume(&self, name: &str, force: bool) -> Result<()> {
        self.delete_volume_with(name, force, Wait::Block)
    }

    /// [`VolumeService::delete_volume`] with a choice of waiting.
    pub fn delete_volume_with(&self, name: &str, force: bool, wait: Wait) -> Result<()> {
        let driver = self.volume_driver_label(name);
        self.timed(Operation::Delete, driver, || {
            self.delete_volume_op(name, force, wait)
        })
    }

    fn delete_volume_op(&self, name: &str, force: bool, wait: Wait) -> Result<()> {
        validate_name("volume", name)?;
        let _g = self.lock_op(name, wait)?;
        let vol = self.get_volume(name)?;
        self.check_settled(&vol)?;
        if !vol.consumers.is_empty() && !force {
            return Err(Error::InUse {
                name: name.to_string(),
                consumers: vol.consumers.len(),
            });
        }
        let mut deleting = vol.clone();
        deleting.state = VolumeState::Deleting;
        self.begin(Txn::new(), name, &deleting, IntentOp::Delete, &vol)?;
        self.failpoints.hit("delete.after_intent");
        if let Err(e) = self.delete_steps(&vol) {
            let _ = self.persist(Txn::new(), name, Some(&vol), Some(IntentWrite::Clear), None);
            return Err(e);
        }
        Ok(())
    }

    /// Unstage, remove the storage, drop the record. Idempotent.
    pub(crate) fn delete_steps(&self, vol: &Volume) -> Result<()> {
        let pool = self.get_pool(&vol.pool)?;
        let driver = self.driver(pool.driver)?;
        self.unstage_steps(vol)?;
        self.failpoints.hit("delete.after_unstage");
        driver.delete(&pool, vol)?;
        self.failpoints.hit("delete.after_image");
        let ev = self.event(EventKind::Delete, vol, "deleted".to_string());
        self.persist(
            Txn::new(),
            &vol.name,
            None,
            Some(IntentWrite::Clear),
            Some(ev),
        )
    }

    // ----- autogrow ------------------------------------------------------

    /// One pass of the autogrow watcher: grow every mounted autogrow volume
    /// whose filesystem use crossed its threshold, by its step, never past
    /// its max. Volumes busy with another operation are left for the next
    /// pass. Returns the volumes grown.
    pub fn autogrow_tick(&self) -> Vec<Volume> {
        let mut grown = Vec::new();
        for vol in self.list_volumes() {
            let (Some(a), Some(_)) = (vol.autogrow, &vol.staging) else {
                continue;
            };
            let Some(usage) = self.volume_usage(&vol) else {
                continue;
            };
            if usage.total_bytes == 0
                || usage.used_bytes.saturating_mul(100)
                    < u64::from(a.threshold_pct).saturating_mul(usage.total_bytes)
            {
                continue;
            }
            let pct = usage.used_bytes * 100 / usage.total_bytes;
            let can_grow = self
                .get_pool(&vol.pool)
                .and_then(|p| {
                    self.driver(p.driver)
                        .map(|d| d.node().can_grow_online(&vol))
                })
                .unwrap_or(false);
            if !can_grow {
                // Growing the image alone would only inflate the size.
                if self.autogrow_at_max.lock().insert(vol.id.clone()) {
                    let ev = self.event(
                        EventKind::Warning,
                        &vol,
                        format!(
                            "autogrow cannot grow this {} filesystem while mounted on this host (online ext4 resize needs CAP_SYS_RESOURCE) at {pct}% use",
                            vol.fs.map_or("-", FsType::as_str)
                        ),
                    );
                    let _ = self.persist(Txn::new(), &vol.name, Some(&vol), None, Some(ev));
                }
                continue;
            }
            if vol.size_bytes >= a.max_bytes {
                if self.autogrow_at_max.lock().insert(vol.id.clone()) {
                    let ev = self.event(
                        EventKind::Warning,
                        &vol,
                        format!(
                            "autogrow reached its max of {} bytes at {pct}% use",
                            a.max_bytes
                        ),
                    );
                    let _ = self.persist(Txn::new(), &vol.name, Some(&vol), None, Some(ev));
                }
                continue;
            }
            let target = a.next_size(vol.size_bytes);
            match self.resize_with(&vol.name, target, Wait::Fail) {
                Ok(v) => {
                    let ev = self.event(
                        EventKind::Autogrow,
                        &v,
                        format!(
                            "autogrow at {pct}% use: {} -> {} bytes",
                            vol.size_bytes, v.size_bytes
                        ),
                    );
                    let _ = self.persist(Txn::new(), &v.name, Some(&v), None, Some(ev));
                    self.stats.record_autogrow(&v.pool);
                    grown.push(v);
                }
                Err(Error::Conflict { .. }) => {}
                Err(e) => {
                    tracing::warn!(volume = %vol.name, error = %e, "autogrow failed");
                }
            }
        }
        grown
    }

    // ----- health and node-side checks ----------------------------------

    /// What is wrong with a volume on this host, if anything: a staged
    /// volume whose mount or device has gone, or a consumer's target that is
    /// no longer mounted.
    pub fn volume_condition(&self, vol: &Volume) -> Option<String> {
        let staging = vol.staging.as_ref()?;
        let mounts = match self.host.mounts() {
            Ok(m) => m,
            Err(e) => return Some(format!("cannot read the mount table: {e}")),
        };
        if let Some(dev) = &staging.device {
            let attached = self
                .host
                .loop_devices()
                .map(|l| l.iter().any(|d| &d.device == dev))
                .unwrap_or(false);
            if !attached {
                return Some(format!("device {} is gone", dev.display()));
            }
        }
        // The driver knows what "mounted" is for its volumes (a btrfs or
        // dir volume is a directory on its pool, not a mount of its own).
        let staged = match self
            .get_pool(&vol.pool)
            .and_then(|p| self.driver(p.driver).cloned())
        {
            Ok(d) => d
                .node()
                .is_mounted(vol, &staging.mountpoint)
                .unwrap_or(false),
            Err(_) => mounts.iter().any(|m| m.target == staging.mountpoint),
        };
        if !vol.block && !staged {
            return Some(format!(
                "{} is no longer mounted",
                staging.mountpoint.display()
            ));
        }
        for c in vol.consumers.values() {
            if let Some(t) = &c.target {
                if !mounts.iter().any(|m| &m.target == t) {
                    return Some(format!("{} is no longer mounted", t.display()));
                }
            }
        }
        None
    }

    /// Usage of a volume as seen at one of its paths on this host (its
    /// staging path or a consumer's target). An unknown path is not found.
    pub fn path_usage(&self, name: &str, path: &Path) -> Result<(VolumeUsage, Option<String>)> {
        let vol = self.get_volume(name)?;
        let known = vol.mountpoint() == Some(path)
            || vol
                .consumers
                .values()
                .any(|c| c.target.as_deref() == Some(path));
        if !known {
            return Err(Error::not_found("volume path", &path.display().to_string()));
        }
        let condition = self.volume_condition(&vol);
        if vol.block {
            let usage = VolumeUsage {
                total_bytes: vol.size_bytes,
                ..VolumeUsage::default()
            };
            return Ok((usage, condition));
        }
        if let Some(u) = self.backend_volume_usage(&vol) {
            return Ok((u, condition));
        }
        let st = self.host.fs_stats(path).map_err(DriverError::from)?;
        let usage = VolumeUsage {
            used_bytes: st.total_bytes.saturating_sub(st.free_bytes),
            total_bytes: st.total_bytes,
            used_inodes: st.total_inodes.saturating_sub(st.free_inodes),
            total_inodes: st.total_inodes,
        };
        Ok((usage, condition))
    }

    /// Finish a grow on this host: grow the mounted filesystem to its
    /// device if a grow is pending. Returns the volume.
    pub fn expand_on_node(&self, name: &str, wait: Wait) -> Result<Volume> {
        validate_name("volume", name)?;
        let _g = self.lock_op(name, wait)?;
        let mut vol = self.get_volume(name)?;
        self.check_settled(&vol)?;
        let (
            Some(Staging {
                device: Some(dev),
                mountpoint,
            }),
            true,
        ) = (vol.staging.clone(), vol.fs_grow_pending)
        else {
            return Ok(vol);
        };
        let pool = self.get_pool(&vol.pool)?;
        let node = self.driver(pool.driver)?.node();
        if !node.can_grow_online(&vol) {
            return Err(Error::Busy {
                kind: "volume",
                name: name.to_string(),
                detail: "the filesystem cannot grow while mounted on this host (online ext4 resize needs CAP_SYS_RESOURCE); it grows at its next mount".into(),
            });
        }
        node.grow_fs(&vol, &dev, Some(&mountpoint))?;
        vol.fs_grow_pending = false;
        self.persist(Txn::new(), name, Some(&vol), None, None)?;
        Ok(vol)
    }

    /// The size given to volumes created without one.
    pub fn default_size(&self) -> u64 {
        self.config.default_size
    }

    // ----- helpers -----------------------------------------------------

    pub(crate) fn driver(&self, kind: DriverKind) -> Result<&Arc<dyn Driver>> {
        self.drivers.get(&kind).ok_or_else(|| {
            DriverError::Unsupported(format!("driver {kind} is not available in this build")).into()
        })
    }

    /// Record an operation's intent before its first side effect, with the
    /// volume's record as it should read meanwhile, in one transaction.
    fn begin(
        &self,
        txn: Txn,
        name: &str,
        record: &Volume,
        op: IntentOp,
        before: &Volume,
    ) -> Result<()> {
        let intent = Intent {
            op,
            before: before.clone(),
            started: Utc::now(),
        };
        self.persist(
            txn,
            name,
            Some(record),
            Some(IntentWrite::Set(Box::new(intent))),
            None,
        )
    }

    /// Names (volumes, `pool:<name>`, `claim:<group>`) whose operation is
    /// running now.
    pub fn operations_in_flight(&self) -> Vec<String> {
        self.locks.held()
    }

    /// Take the volume's lock, waiting (at most [`LOCK_WAIT`]) or not.
    pub(crate) fn lock_op(&self, name: &str, wait: Wait) -> Result<crate::locks::NameGuard<'_>> {
        match wait {
            // Bounded: an operation stuck on the host (a pool whose own
            // filesystem hangs) must not queue every later call behind it.
            Wait::Block => self
                .locks
                .lock_for(name, LOCK_WAIT)
                .ok_or_else(|| Error::Conflict {
                    name: name.to_string(),
                }),
            Wait::Fail => self.locks.try_lock(name).ok_or_else(|| Error::Conflict {
                name: name.to_string(),
            }),
        }
    }

    pub fn mountpoint_for(&self, name: &str) -> PathBuf {
        self.config.mounts_dir.join(name)
    }

    /// Refuse to work on a volume whose last operation is unfinished (only
    /// possible if the reconciler could not finish it).
    fn check_settled(&self, vol: &Volume) -> Result<()> {
        match vol.state {
            VolumeState::Available | VolumeState::Mounted => Ok(()),
            VolumeState::Creating | VolumeState::Resizing | VolumeState::Deleting => {
                Err(Error::Busy {
                    kind: "volume",
                    name: vol.name.clone(),
                    detail: format!(
                        "an interrupted {} is unfinished; restart the daemon to reconcile it",
                        vol.state.as_str()
                    ),
                })
            }
        }
    }

    pub(crate) fn event(&self, kind: EventKind, vol: &Volume, message: String) -> Event {
        self.events
            .next(kind, Some(&vol.pool), Some(&vol.name), message)
    }

    /// Write a volume's record (or its removal), its intent and an event in
    /// one transaction, then update the in-memory copy.
    pub(crate) fn persist(
        &self,
        mut txn: Txn,
        name: &str,
        record: Option<&Volume>,
        intent: Option<IntentWrite>,
        event: Option<Event>,
    ) -> Result<()> {
        txn = match record {
            Some(v) => txn.put(vol_key(name), to_json(v)),
            None => txn.delete(vol_key(name)),
        };
        txn = match &intent {
            Some(IntentWrite::Set(i)) => txn.put(intent_key(name), to_json(i)),
            Some(IntentWrite::Clear) => txn.delete(intent_key(name)),
            None => txn,
        };
        if let Some(e) = &event {
            txn = txn.put(event_key(e.seq), to_json(e));
            if e.seq > KEEP {
                txn = txn.delete(event_key(e.seq - KEEP));
            }
        }
        self.store.commit(txn)?;
        {
            let mut vols = self.volumes.write();
            match record {
                Some(v) => {
                    vols.insert(name.to_string(), v.clone());
                }
                None => {
                    vols.remove(name);
                }
            }
        }
        if let Some(e) = event {
            self.events.publish(e);
        }
        Ok(())
    }
}

fn add_consumer(
    vol: &mut Volume,
    consumer: &ConsumerRef,
    target: Option<&PublishTarget>,
    sharing: Sharing,
) {
    let entry = vol
        .consumers
        .entry(consumer.key())
        .or_insert_with(|| Consumer {
            kind: consumer.kind,
            id: consumer.id.clone(),
            count: 0,
            since: Utc::now(),
            target: target.map(|t| t.path.clone()),
            read_only: target.is_some_and(|t| t.read_only),
            flags: target.map(|t| t.flags).unwrap_or_default(),
            sharing,
        });
    entry.count = if consumer.kind.counted() && !consumer.id.is_empty() {
        entry.count.saturating_add(1)
    } else {
        1
    };
}

fn remove_mountpoint(path: &Path) {
    match std::fs::remove_dir(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "could not remove mountpoint"),
    }
}

/// Create of an existing name: the parameters given must match.
fn check_same(existing: &Volume, req: &CreateVolume) -> Result<()> {
    let mut diffs = Vec::new();
    if let Some(pool) = &req.pool {
        if &existing.pool != pool {
            diffs.push(format!("pool is {}", existing.pool));
        }
    }
    if let Some(size) = req.size_bytes {
        // A size too large to round cannot be the existing one.
        if size.checked_next_multiple_of(4096) != Some(existing.size_bytes) {
            diffs.push(format!("size is {} bytes", existing.size_bytes));
        }
    }
    if let Some(fs) = req.fs {
        if Some(fs) != existing.fs {
            diffs.push(format!(
                "filesystem is {}",
                existing.fs.map_or("none", FsType::as_str)
            ));
        }
    }
    if req.autogrow.is_some() && req.autogrow != existing.autogrow {
        diffs.push(format!(
            "autogrow is {}",
            existing
                .autogrow
                .map_or("off".to_string(), |a| a.to_string())
        ));
    }
    if req.block != existing.block {
        diffs.push(format!(
            "access type is {}",
            if existing.block {
                "block"
            } else {
                "filesystem"
            }
        ));
    }
    if !req.labels.is_empty() && req.labels != existing.labels {
        diffs.push("labels differ".to_string());
    }
    if let Some(source) = &req.source {
        if existing.source.as_ref() != Some(source) {
            diffs.push(match &existing.source {
                Some(CreateSource::Snapshot(s)) => format!("source is snapshot {s}"),
                Some(CreateSource::Volume(v)) => format!("source is volume {v}"),
                None => "it was not made from a snapshot or volume".to_string(),
            });
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::AlreadyExists {
            kind: "volume",
            name: existing.name.clone(),
            detail: diffs.join(", "),
        })
    }
}
