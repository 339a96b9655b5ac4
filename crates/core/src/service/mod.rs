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
pub(crate) use crate::events::EVENT_PREFIX;
use crate::events::{Event, EventKind, EventLog};
use crate::failpoint::Failpoints;
use crate::host::{Host, LoopDevice, MountOptions};
use crate::model::Sharing;
use crate::model::{
    validate_consumer_id, validate_label, validate_name, Attachment, Autogrow, Consumer,
    ConsumerRef, CreateSource, DriverKind, FsType, InvalidInput, Pool, PublishTarget, Snapshot,
    Staging, Volume, VolumeState,
};
use crate::stats::Operation;
use crate::store::{Store, Txn};

pub(crate) const POOL_PREFIX: &str = "pool/";
pub(crate) const VOL_PREFIX: &str = "vol/";
pub(crate) const INTENT_PREFIX: &str = "intent/";
/// The boot the single-node releases recorded for the whole store; read once
/// to judge their records, then replaced by each node's `nodeboot/<node>`.
pub(crate) const BOOT_ID_KEY: &str = "meta/boot_id";
pub(crate) const NODE_BOOT_PREFIX: &str = "nodeboot/";
/// `attachment/<volume>/<node>`: what a volume has on one node.
pub(crate) const ATTACH_PREFIX: &str = "attachment/";
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
    /// This daemon's node: stable across restarts, unique in the cluster
    /// (config `node_id`, default the host name). Attachments, intents and
    /// pools are this node's when they carry it.
    pub node_id: String,
}

/// A request to create a volume. Unset fields take the pool's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// The node that runs the operation, and the only one that finishes or
    /// undoes it after a crash. Empty in intents of single-node releases:
    /// those are the opening node's.
    #[serde(default)]
    pub owner: String,
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
pub(crate) fn attachment_key(volume: &str, node: &str) -> String {
    format!("{ATTACH_PREFIX}{volume}/{node}")
}
pub(crate) fn node_boot_key(node: &str) -> String {
    format!("{NODE_BOOT_PREFIX}{node}")
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
    /// Each volume as this node sees it: its record with the staging and
    /// consumers of the attachment on the node that holds it.
    pub(crate) volumes: RwLock<BTreeMap<String, Volume>>,
    /// `nodeconf/<id>` records: what operators set on nodes.
    pub(crate) node_confs: RwLock<BTreeMap<String, crate::nodes::NodeConf>>,
    /// The elected controller's record, if one holds the key.
    pub(crate) controller: RwLock<Option<crate::nodes::ControllerRecord>>,
    /// Live `node/<id>` records (under their nodes' leases).
    pub(crate) nodes: RwLock<BTreeMap<String, crate::nodes::NodeRecord>>,
    /// `attachment/<volume>/<node>` records by volume, then node.
    pub(crate) attachments: RwLock<BTreeMap<String, BTreeMap<String, Attachment>>>,
    /// The mod revision of every record key this service has read or
    /// written: each update compares on it, so a write over another node's
    /// newer record fails instead of erasing it.
    pub(crate) revs: Mutex<HashMap<String, cache::Seen>>,
    /// Volumes whose last write did not answer in time (etcd hung or cut
    /// off): it may or may not have landed. The next operation on one, or the
    /// store watch once the store answers, reads it back and settles it.
    pub(crate) uncertain: Mutex<std::collections::BTreeSet<String>>,
    /// This host's boot, written into our attachments.
    pub(crate) boot_id: String,
    /// The store revision of the read the service opened with.
    pub(crate) store_revision: u64,
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
    /// Long operations in flight (copies, moves, backups, restores) and how
    /// far they have got.
    pub(crate) operations: Arc<crate::progress::Operations>,
    /// `want/<volume>` records: work asked of some node (see
    /// [`crate::desired`]).
    pub(crate) wants: RwLock<BTreeMap<String, crate::desired::Want>>,
    /// Bumped by every change of a want or of the live nodes.
    pub(crate) want_signal: Arc<crate::desired::Signal>,
    /// Ids of the wants this node's agent is working on.
    pub(crate) want_workers: Mutex<std::collections::HashSet<String>>,
    /// The lease this node's record lives under, while it is registered:
    /// the agent stands for controller with it as soon as the watch shows
    /// the controller gone, not at the next heartbeat.
    pub(crate) node_lease: Mutex<Option<crate::store::LeaseId>>,
    /// An agent runs (see [`VolumeService::is_clustered`]).
    pub(crate) clustered: std::sync::atomic::AtomicBool,
    /// `move/<volume>` records (see [`crate::moves`]).
    pub(crate) moves: RwLock<BTreeMap<String, crate::moves::MoveRecord>>,
    /// Ids of the moves this node's workers run.
    pub(crate) move_workers: Mutex<std::collections::HashSet<String>>,
    /// Carries move streams (set once the daemon listens for them).
    pub(crate) mover: std::sync::OnceLock<Arc<dyn crate::moves::MoveTransport>>,
    /// Stores backups (set by the daemon).
    pub(crate) backup_engine: std::sync::OnceLock<Arc<dyn crate::backups::BackupEngine>>,
    /// Ids of the backups this node's workers run.
    pub(crate) backup_workers: Mutex<std::collections::HashSet<String>>,
    /// Every node's backup runs as the runner's last pass read them (at
    /// most a second old): what `/v1/operations` lists of other nodes'
    /// runs without a store read per poll.
    pub(crate) backup_runs: RwLock<Vec<crate::backups::BackupRecord>>,
}

mod autogrow;
mod backups;
pub use backups::{BackupRequest, RestoreRequest, BACKUP_DEADLINE};
mod cache;
mod create;
mod delete;
mod health;
mod journal;
mod moves;
pub use moves::{MoveRequest, MOVE_STALL};
mod publish;
mod resize;
mod shared;
mod snapshot;
pub use shared::{Fence, Holder, FENCE_EXPIRY};
mod unpublish;

pub(crate) use cache::stored_record;
pub(crate) use create::check_same;
pub(crate) use unpublish::remove_mountpoint;

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

    /// `f` of each volume, in name order, with the store revisions its view
    /// is made of (its record's and its attachment's on the node that holds
    /// it): the same revisions, the same volume. For a caller that keeps
    /// something made from each volume (a serialised view) and remakes it
    /// only when they change. Locks `revs`, then the volumes (nothing takes
    /// them the other way round).
    pub fn map_volumes_versioned<T>(&self, mut f: impl FnMut(&Volume, (u64, u64)) -> T) -> Vec<T> {
        let revs = self.revs.lock();
        let vols = self.volumes.read();
        let rev = |key: &str| revs.get(key).map_or(0, |&(r, _)| r);
        vols.values()
            .map(|v| {
                let node = v.node.as_deref().unwrap_or(&self.config.node_id);
                let version = (rev(&vol_key(&v.name)), rev(&attachment_key(&v.name, node)));
                f(v, version)
            })
            .collect()
    }

    pub fn volume_count(&self) -> usize {
        self.volumes.read().len()
    }

    /// The volume with this uid (CSI's `volume_id`), if it exists.
    pub fn volume_by_id(&self, id: &str) -> Option<Volume> {
        self.volumes.read().values().find(|v| v.id == id).cloned()
    }

    pub fn get_volume(&self, name: &str) -> Result<Volume> {
        validate_name("volume", name)?;
        self.volumes
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found("volume", name))
    }

    /// Long operations in flight: this node's, and the moves other nodes
    /// run (as far as their records say), each with its rate and ETA.
    pub fn operations(&self) -> Vec<crate::progress::Operation> {
        let mut ops = self.operations.list();
        let me = self.config.node_id.as_str();
        let moves = self.moves.read();
        // Both ends in full: a move between two pools of one node would
        // otherwise read `n1 → n1`.
        let route = |m: &crate::moves::MoveRecord| {
            format!(
                "{}/{} → {}/{}",
                m.from_node, m.from_pool, m.to_node, m.to_pool
            )
        };
        for op in ops.iter_mut().filter(|o| o.kind == "move") {
            if let Some(m) = moves.get(&op.target) {
                op.source = route(m);
            }
        }
        for m in moves.values() {
            if m.in_flight() && m.from_node != me {
                ops.push(crate::progress::Operation::new(
                    "move",
                    &m.volume,
                    &route(m),
                    m.requested_at,
                    (m.progress.done_bytes, m.progress.total_bytes),
                    m.progress.rate,
                ));
            }
        }
        drop(moves);
        // Backups other nodes run, from their records as the runner last
        // read them (what runs here is listed above already).
        if self.is_clustered() {
            for r in self.backup_runs.read().iter() {
                if r.in_flight() && r.node != me {
                    ops.push(crate::progress::Operation::new(
                        "backup",
                        &r.volume,
                        &r.target,
                        r.requested_at,
                        (r.progress.done_bytes, r.progress.total_bytes),
                        r.progress.rate,
                    ));
                }
            }
        }
        ops
    }

    pub fn recent_events(&self, limit: usize) -> Vec<Event> {
        self.events.recent(limit)
    }

    pub fn subscribe_events(&self) -> tokio::sync::broadcast::Receiver<Event> {
        self.events.subscribe()
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

    /// Names (volumes, `pool:<name>`, `claim:<group>`) whose operation is
    /// running now.
    pub fn operations_in_flight(&self) -> Vec<String> {
        self.locks.held()
    }

    /// Take the volume's lock, waiting (at most [`LOCK_WAIT`]) or not.
    /// A volume whose last write's outcome is unknown is settled first.
    pub(crate) fn lock_op(&self, name: &str, wait: Wait) -> Result<crate::locks::NameGuard<'_>> {
        let guard = self.lock_only(name, wait)?;
        if self.uncertain.lock().contains(name) {
            self.settle_uncertain(name)?;
        }
        Ok(guard)
    }

    fn lock_only(&self, name: &str, wait: Wait) -> Result<crate::locks::NameGuard<'_>> {
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

    /// Refuse a node-side operation on a volume whose storage is on another
    /// node: its image, mount and devices are there, not here.
    pub(crate) fn check_here(&self, vol: &Volume) -> Result<()> {
        match &vol.node {
            Some(node) if *node != self.config.node_id => Err(Error::OtherNode {
                kind: "volume",
                name: vol.name.clone(),
                node: node.clone(),
            }),
            _ => Ok(()),
        }
    }

    pub(crate) fn check_pool_here(&self, pool: &Pool) -> Result<()> {
        if pool.is_on(&self.config.node_id) {
            return Ok(());
        }
        Err(Error::OtherNode {
            kind: "pool",
            name: pool.name.clone(),
            node: pool.node.clone().unwrap_or_default(),
        })
    }

    /// This node.
    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The pool a create without `--pool` goes to: `default` on a single
    /// node, and `default-<node>` on a node whose store already has another
    /// node's `default`.
    pub fn default_pool_name(&self) -> String {
        match self.pools.read().get("default") {
            Some(p) if !p.is_on(&self.config.node_id) => {
                format!("default-{}", self.config.node_id)
            }
            _ => "default".to_string(),
        }
    }

    /// Refuse to work on a volume whose last operation is unfinished (only
    /// possible if the reconciler could not finish it).
    pub(crate) fn check_settled(&self, vol: &Volume) -> Result<()> {
        match vol.state {
            VolumeState::Available | VolumeState::Mounted => Ok(()),
            VolumeState::Moving => Err(Error::Busy {
                kind: "volume",
                name: vol.name.clone(),
                detail: format!(
                    "it is held for the final pass of a move; wait, or `ballast volume move {} --cancel`",
                    vol.name
                ),
            }),
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
}
