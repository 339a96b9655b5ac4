//! Ballast's backends. Each module implements the core's `Driver` (control
//! side) and `NodeOps` (node side) for one kind of storage; none of them
//! holds policy (validation, journaling, reference counts are the core's).

pub mod btrfs;
pub mod copy;
pub mod dir;
pub mod loopback;
#[cfg(feature = "rbd")]
pub mod rbd;

pub use btrfs::BtrfsDriver;
pub use dir::DirDriver;
pub use loopback::LoopDriver;
#[cfg(feature = "rbd")]
pub use rbd::RbdDriver;

use std::path::Path;

use ballast_core::DriverError;

/// Make sure a directory is durable after creating or removing entries in it.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), DriverError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| DriverError::io(dir, e))
}
