//! What a backend implements: [`Driver`] (the control side: capacity, create,
//! delete, resize) and [`NodeOps`] (the node side: make a volume's bytes
//! appear on this host and mount them). Drivers hold no policy: validation,
//! journaling and reference counts are the core's.

use std::path::{Path, PathBuf};

use crate::host::{HostError, LoopDevice};
use crate::model::{DriverKind, Pool, Snapshot, Volume};

/// A driver failure: a host operation, or the driver's own file work.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Host(#[from] HostError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Unsupported(String),
}

impl DriverError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        DriverError::Io {
            path: path.to_path_buf(),
            source,
        }
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
    /// source still (frozen or unmounted) meanwhile.
    fn snapshot(&self, pool: &Pool, vol: &Volume, snap: &Snapshot) -> Result<(), DriverError>;
    /// Remove a snapshot's storage. Already gone is fine.
    fn delete_snapshot(&self, pool: &Pool, snap: &Snapshot) -> Result<(), DriverError>;
    /// Make `vol`'s storage as a copy of a snapshot's or another volume's,
    /// at `vol.size_bytes` (at least the source's size).
    fn create_from(
        &self,
        pool: &Pool,
        vol: &Volume,
        source: SourceRef<'_>,
    ) -> Result<(), DriverError>;
    /// The file that backs the volume (a loop image), if any.
    fn backing_file(&self, pool: &Pool, vol: &Volume) -> Option<PathBuf>;
    /// Bytes the volume occupies on the backing storage.
    fn allocated_bytes(&self, pool: &Pool, vol: &Volume) -> Result<u64, DriverError>;
    fn node(&self) -> &dyn NodeOps;
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
}
