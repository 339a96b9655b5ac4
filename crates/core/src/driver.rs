//! What a backend implements: [`Driver`] (the control side: capacity, create,
//! delete, resize) and [`NodeOps`] (the node side: make a volume's bytes
//! appear on this host and mount them). Drivers hold no policy: validation,
//! journaling and reference counts are the core's.

use std::path::{Path, PathBuf};

use crate::backups::VolumeData;
use crate::host::{HostError, LoopDevice};
use crate::model::{DriverKind, Pool, PoolDisk, Snapshot, Volume};
use crate::moves::MoveData;
use crate::progress::Progress;

/// A driver failure: a host operation, or the driver's own file work. The
/// kinds (not found, no space, busy, unavailable, timeout, unsupported) are
/// variants, so the core and the surfaces map them without reading text.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Host(#[from] HostError),
    /// Any other I/O failure of the driver's own files.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    /// The backing storage is full (ENOSPC, EDQUOT).
    #[error("{0}")]
    NoSpace(String),
    #[error("{0}")]
    Busy(String),
    /// A backend that cannot be reached now; a retry may succeed.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unsupported(String),
    /// Data read back does not match its checksum.
    #[error("{0}")]
    Corrupt(String),
}

impl DriverError {
    /// An I/O error on `path`, classified by its errno.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        let text = || format!("{}: {source}", path.display());
        match source.raw_os_error() {
            Some(libc::ENOENT) => DriverError::NotFound(text()),
            Some(libc::EEXIST) => DriverError::AlreadyExists(text()),
            Some(libc::ENOSPC | libc::EDQUOT) => DriverError::NoSpace(text()),
            Some(libc::EBUSY) => DriverError::Busy(text()),
            Some(libc::ETIMEDOUT) => DriverError::Timeout(text()),
            Some(libc::EAGAIN | libc::ENOTCONN) => DriverError::Unavailable(text()),
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => DriverError::Unsupported(text()),
            _ => DriverError::Io {
                path: path.to_path_buf(),
                source,
            },
        }
    }

    /// The backing storage is full: the caller asked for more than there is.
    pub fn is_no_space(&self) -> bool {
        matches!(
            self,
            DriverError::NoSpace(_) | DriverError::Host(HostError::NoSpace { .. })
        )
    }

    /// Worth retrying later: a deadline passed or a backend was unreachable.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            DriverError::Unavailable(_)
                | DriverError::Timeout(_)
                | DriverError::Host(HostError::TimedOut { .. } | HostError::Unavailable { .. })
        )
    }
}

/// What a new volume is copied from.
#[derive(Debug, Clone, Copy)]
pub enum SourceRef<'a> {
    Snapshot(&'a Snapshot),
    Volume(&'a Volume),
}

/// Space on a pool's backing storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolUsage {
    /// Free bytes on the backing filesystem.
    pub backing_avail_bytes: u64,
    /// Bytes the pool's volumes occupy there now.
    pub volumes_used_bytes: u64,
}

/// The control side of a backend. Every method is idempotent.
pub trait Driver: Send + Sync {
    fn kind(&self) -> DriverKind;
    /// Prepare the pool's storage (make its directory).
    fn init_pool(&self, pool: &Pool) -> Result<(), DriverError>;
    fn usage(&self, pool: &Pool) -> Result<PoolUsage, DriverError>;
    /// Make the volume's storage. An existing one of the right size is fine.
    fn create(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError>;
    /// Remove the volume's storage. Already gone is fine.
    fn delete(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError>;
    /// Grow the volume's storage to `new_size` bytes.
    fn resize(&self, pool: &Pool, vol: &Volume, new_size: u64) -> Result<(), DriverError>;
    /// Copy the volume's storage into the snapshot's. The core keeps the
    /// source still (frozen or unmounted) meanwhile. A copy that moves data
    /// counts it into `progress`.
    fn snapshot(
        &self,
        pool: &Pool,
        vol: &Volume,
        snap: &Snapshot,
        progress: &Progress,
    ) -> Result<(), DriverError>;
    /// Remove a snapshot's storage. Already gone is fine.
    fn delete_snapshot(&self, pool: &Pool, snap: &Snapshot) -> Result<(), DriverError>;
    /// Make `vol`'s storage as a copy of a snapshot's or another volume's,
    /// at `vol.size_bytes` (at least the source's size), counting the bytes
    /// it moves into `progress`.
    fn create_from(
        &self,
        pool: &Pool,
        vol: &Volume,
        source: SourceRef<'_>,
        progress: &Progress,
    ) -> Result<(), DriverError>;
    /// The file that backs the volume (a loop image), if any.
    fn backing_file(&self, pool: &Pool, vol: &Volume) -> Option<PathBuf>;
    /// Bytes the volume occupies on the backing storage.
    fn allocated_bytes(&self, pool: &Pool, vol: &Volume) -> Result<u64, DriverError>;
    fn node(&self) -> &dyn NodeOps;

    // ----- pools that own their storage (btrfs) ------------------------
    // Drivers on a plain directory keep the defaults: nothing to make, no
    // disks to add.

    /// Make a new pool's storage (btrfs: its disk files and filesystem).
    /// Runs once, before [`Driver::init_pool`]; never for an existing pool.
    fn create_pool(&self, _pool: &Pool) -> Result<(), DriverError> {
        Ok(())
    }
    /// Take an empty pool's storage down and remove what ballast made for
    /// it (btrfs: unmount, detach, remove its disk files). Idempotent.
    fn destroy_pool(&self, _pool: &Pool) -> Result<(), DriverError> {
        Ok(())
    }
    /// Bytes of the disks under the pool's storage now; None for a pool on
    /// a plain directory, which has no disks of its own.
    fn disks_bytes(&self, _pool: &Pool) -> Result<Option<u64>, DriverError> {
        Ok(None)
    }
    /// Whether this driver's pools can take more disks online.
    fn can_add_disks(&self) -> bool {
        false
    }
    /// Make a disk ready to add (a disk file: create it, sparse). Idempotent.
    fn prepare_disk(&self, pool: &Pool, _disk: &PoolDisk) -> Result<(), DriverError> {
        Err(DriverError::Unsupported(format!(
            "pool {} ({}) cannot add disks",
            pool.name, pool.driver
        )))
    }
    /// Add a prepared disk to the pool's storage, online. Idempotent: a
    /// disk already in the pool is fine.
    fn add_disk(&self, pool: &Pool, _disk: &PoolDisk) -> Result<(), DriverError> {
        Err(DriverError::Unsupported(format!(
            "pool {} ({}) cannot add disks",
            pool.name, pool.driver
        )))
    }
    /// Whether `disk` is part of the pool's storage now.
    fn has_disk(&self, _pool: &Pool, _disk: &PoolDisk) -> Result<bool, DriverError> {
        Ok(false)
    }
    /// Undo [`Driver::prepare_disk`] for a disk that did not join the pool
    /// (a disk file: detach and remove it; a device: nothing). Idempotent.
    fn discard_disk(&self, _pool: &Pool, _disk: &PoolDisk) -> Result<(), DriverError> {
        Ok(())
    }
    /// Whether a snapshot or clone made in this pool now would share its
    /// source's extents (btrfs snapshots; reflinks where the backing
    /// filesystem has them), so admission charges it what it holds
    /// exclusively rather than its size. A copy the core records as such
    /// ([`Snapshot::cow`], [`Volume::cow`]) must be made that way or fail.
    fn copies_share_extents(&self, _pool: &Pool) -> Result<bool, DriverError> {
        Ok(false)
    }
    /// Bytes a copy-on-write snapshot or clone holds that nothing else in
    /// the pool shares, now (btrfs: the qgroup's exclusive bytes; a
    /// reflinked image: its extents not shared). None when the driver has
    /// no such figure; the core then charges the full size.
    fn exclusive_bytes(
        &self,
        _pool: &Pool,
        _item: SourceRef<'_>,
    ) -> Result<Option<u64>, DriverError> {
        Ok(None)
    }
    /// A volume's (used, total) bytes when the backend accounts for them
    /// itself (btrfs: qgroups); None to use statvfs of its mount.
    fn volume_usage(&self, _pool: &Pool, _vol: &Volume) -> Result<Option<(u64, u64)>, DriverError> {
        Ok(None)
    }

    // ----- shared storage (rbd) -----------------------------------------

    /// Who must be cut off the volume's storage before this node maps it:
    /// `addrs` (what the last holder's mappings registered) and whoever
    /// still has it open (this node has not mapped it yet).
    fn fence_targets(
        &self,
        pool: &Pool,
        _vol: &Volume,
        _addrs: &[String],
    ) -> Result<Vec<String>, DriverError> {
        Err(DriverError::Unsupported(format!(
            "pool {} ({}) has no clients to fence",
            pool.name, pool.driver
        )))
    }
    /// Blocklist `addrs` for `expire`; returns once the cluster enforces
    /// it. Repeating it is fine.
    fn fence(
        &self,
        pool: &Pool,
        _addrs: &[String],
        _expire: std::time::Duration,
    ) -> Result<(), DriverError> {
        Err(DriverError::Unsupported(format!(
            "pool {} ({}) has no clients to fence",
            pool.name, pool.driver
        )))
    }
    /// Lift the blocklist entries of a fence whose node has cleaned up.
    fn unfence(&self, _pool: &Pool, _addrs: &[String]) -> Result<(), DriverError> {
        Ok(())
    }

    // ----- moves (see crate::moves) ---------------------------------------

    /// Where a move's source reads the volume (and keeps its move's
    /// snapshots, `move_id` naming them).
    fn move_source(
        &self,
        pool: &Pool,
        _vol: &Volume,
        _move_id: &str,
    ) -> Result<MoveData, DriverError> {
        Err(DriverError::Unsupported(format!(
            "volumes of pool {} ({}) do not move",
            pool.name, pool.driver
        )))
    }
    /// Where a move's target receives the volume (made on first call,
    /// kept on later ones); `installed`: already put in place.
    fn move_incoming(
        &self,
        pool: &Pool,
        _vol: &Volume,
        _move_id: &str,
        _installed: bool,
    ) -> Result<MoveData, DriverError> {
        Err(DriverError::Unsupported(format!(
            "volumes do not move into pool {} ({})",
            pool.name, pool.driver
        )))
    }
    /// Put what was received where the volume's data lives. Idempotent.
    fn move_install(&self, pool: &Pool, _vol: &Volume, _move_id: &str) -> Result<(), DriverError> {
        Err(DriverError::Unsupported(format!(
            "volumes do not move into pool {} ({})",
            pool.name, pool.driver
        )))
    }
    /// Delete what a move that did not commit received (also installed).
    fn move_discard(
        &self,
        _pool: &Pool,
        _vol: &Volume,
        _move_id: &str,
        _installed: bool,
    ) -> Result<(), DriverError> {
        Ok(())
    }
    /// Delete the source's move snapshots. Idempotent.
    fn move_cleanup(&self, _pool: &Pool, _vol: &Volume, _move_id: &str) -> Result<(), DriverError> {
        Ok(())
    }

    // ----- backups (see crate::backups) -----------------------------------

    /// A snapshot's data, for a backup to read.
    fn snapshot_data(&self, pool: &Pool, _snap: &Snapshot) -> Result<VolumeData, DriverError> {
        Err(DriverError::Unsupported(format!(
            "snapshots of pool {} ({}) cannot be backed up",
            pool.name, pool.driver
        )))
    }
    /// A volume's data (made empty, not staged), for a restore to write.
    fn volume_data(&self, pool: &Pool, _vol: &Volume) -> Result<VolumeData, DriverError> {
        Err(DriverError::Unsupported(format!(
            "backups cannot be restored into pool {} ({})",
            pool.name, pool.driver
        )))
    }
}

/// The node side of a backend. Every method is idempotent.
pub trait NodeOps: Send + Sync {
    /// Make the volume a block device on this host (loop: attach the image).
    /// None for backends without a device.
    fn attach(&self, pool: &Pool, vol: &Volume) -> Result<Option<LoopDevice>, DriverError>;
    /// Make the filesystem (first use only; the core decides when).
    fn format(&self, vol: &Volume, device: &Path) -> Result<(), DriverError>;
    /// Mount the volume at `mountpoint` (which exists) and return where its
    /// data is; a backend without a device may return its own directory.
    fn mount(
        &self,
        pool: &Pool,
        vol: &Volume,
        device: Option<&Path>,
        mountpoint: &Path,
    ) -> Result<PathBuf, DriverError>;
    /// Like [`NodeOps::mount`], read-only (shared storage with readers on
    /// several nodes: none may write the filesystem, not even its
    /// superblock). Local storage has no such readers.
    fn mount_read_only(
        &self,
        _pool: &Pool,
        vol: &Volume,
        _device: Option<&Path>,
        _mountpoint: &Path,
    ) -> Result<PathBuf, DriverError> {
        Err(DriverError::Unsupported(format!(
            "volume {} is node-local: it has no readers on other nodes",
            vol.name
        )))
    }
    /// Unmount what [`NodeOps::mount`] returned. Not mounted is fine.
    fn unmount(&self, vol: &Volume, mountpoint: &Path) -> Result<(), DriverError>;
    /// Detach every device backing the volume. Not attached is fine.
    fn detach(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError>;
    /// After a grow of the backing storage: refresh the device's size and
    /// grow the filesystem, mounted at `mountpoint` or, with None, unmounted.
    fn grow_fs(
        &self,
        vol: &Volume,
        device: &Path,
        mountpoint: Option<&Path>,
    ) -> Result<(), DriverError>;
    /// Whether [`NodeOps::grow_fs`] can grow this volume while mounted.
    fn can_grow_online(&self, vol: &Volume) -> bool;
    /// Whether this volume's filesystem grows while unmounted (before mount)
    /// rather than after mounting.
    fn grows_offline(&self, vol: &Volume) -> bool;
    /// Whether `mountpoint` is a mount of this volume right now.
    fn is_mounted(&self, vol: &Volume, mountpoint: &Path) -> Result<bool, DriverError>;
    /// The cluster client addresses this node's mapping of the volume
    /// registered (rbd: the mapping helper's), recorded so a later holder
    /// can fence exactly them. Empty for node-local storage.
    fn clients(&self, _pool: &Pool, _vol: &Volume) -> Result<Vec<String>, DriverError> {
        Ok(Vec::new())
    }
    /// How this node maps the driver's volumes (rbd: krbd, rbd-nbd or
    /// rbd-fuse), for `node inspect`; None for local storage.
    fn mapping(&self) -> Option<String> {
        None
    }
    /// Find mapping helpers that stopped answering, kill them and detach
    /// their mounts lazily; returns what it killed. Never blocks on one.
    fn watchdog(&self) -> Vec<String> {
        Vec::new()
    }
    /// Tear the volume down on this node without flushing anything to its
    /// storage, after another node fenced this one off it: the data here
    /// is stale and must not reach the storage. Best effort, never blocks
    /// on a hung mapping. Local storage just unmounts and detaches.
    fn abandon(&self, pool: &Pool, vol: &Volume, mountpoint: &Path) {
        let _ = self.unmount(vol, mountpoint);
        let _ = self.detach(pool, vol);
    }
    /// Whether volumes are served where they are (dir, btrfs): nothing to
    /// attach, format or mount, so staging has no side effect to undo and
    /// [`NodeOps::mount`] only names the volume's directory.
    fn serves_in_place(&self) -> bool {
        false
    }
}
