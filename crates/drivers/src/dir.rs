//! The `dir` driver: each volume is a plain directory `<pool>/<id>`. No size
//! limit (the size is advisory) and nothing to attach or mount: for
//! development and hosts without loop devices.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballast_core::backups::VolumeData;
use ballast_core::driver::{NodeOps, PoolUsage, SourceRef};
use ballast_core::host::{Host, LoopDevice};
use ballast_core::model::{DriverKind, Pool, Snapshot, Volume};
use ballast_core::progress::Progress;
use ballast_core::{Driver, DriverError};

use crate::sync_dir;

pub struct DirDriver {
    node: DirNode,
}

pub struct DirNode {
    host: Arc<dyn Host>,
}

impl DirDriver {
    pub fn new(host: Arc<dyn Host>) -> Self {
        Self {
            node: DirNode { host },
        }
    }
}

pub fn volume_dir(pool: &Pool, vol: &Volume) -> PathBuf {
    pool.path.join(&vol.id)
}

pub fn snapshot_dir(pool: &Pool, snap: &Snapshot) -> PathBuf {
    pool.path.join("snapshots").join(&snap.id)
}

impl Driver for DirDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Dir
    }

    fn init_pool(&self, pool: &Pool) -> Result<(), DriverError> {
        std::fs::create_dir_all(&pool.path).map_err(|e| DriverError::io(&pool.path, e))
    }

    fn usage(&self, pool: &Pool) -> Result<PoolUsage, DriverError> {
        let st = self.node.host.fs_stats(&pool.path)?;
        // Walking every directory for its size is too slow to do on each
        // create; dir sizes are advisory anyway.
        Ok(PoolUsage {
            backing_avail_bytes: st.avail_bytes,
            volumes_used_bytes: 0,
        })
    }

    fn create(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        let path = volume_dir(pool, vol);
        match std::fs::create_dir(&path) {
            Ok(()) => sync_dir(&pool.path),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(DriverError::io(&path, e)),
        }
    }

    fn delete(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        let path = volume_dir(pool, vol);
        // remove_dir_all does not follow symlinks, so a link a container left
        // inside cannot reach outside the volume.
        match std::fs::remove_dir_all(&path) {
            Ok(()) => sync_dir(&pool.path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io(&path, e)),
        }
    }

    fn resize(&self, _pool: &Pool, _vol: &Volume, _new_size: u64) -> Result<(), DriverError> {
        Ok(())
    }

    fn snapshot_data(&self, pool: &Pool, snap: &Snapshot) -> Result<VolumeData, DriverError> {
        Ok(VolumeData::Tree(snapshot_dir(pool, snap)))
    }

    fn volume_data(&self, pool: &Pool, vol: &Volume) -> Result<VolumeData, DriverError> {
        Ok(VolumeData::Tree(volume_dir(pool, vol)))
    }

    fn snapshot(
        &self,
        pool: &Pool,
        vol: &Volume,
        snap: &Snapshot,
        progress: &Progress,
    ) -> Result<(), DriverError> {
        let dst = snapshot_dir(pool, snap);
        self.delete_snapshot(pool, snap)?;
        let parent = pool.path.join("snapshots");
        std::fs::create_dir_all(&parent).map_err(|e| DriverError::io(&parent, e))?;
        crate::copy::copy_tree(&volume_dir(pool, vol), &dst, progress)
            .map_err(|e| DriverError::io(&dst, e))?;
        sync_dir(&parent)
    }

    fn delete_snapshot(&self, pool: &Pool, snap: &Snapshot) -> Result<(), DriverError> {
        let dst = snapshot_dir(pool, snap);
        match std::fs::remove_dir_all(&dst) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io(&dst, e)),
        }
    }

    fn create_from(
        &self,
        pool: &Pool,
        vol: &Volume,
        source: SourceRef<'_>,
        progress: &Progress,
    ) -> Result<(), DriverError> {
        let src = match source {
            SourceRef::Snapshot(s) => snapshot_dir(pool, s),
            SourceRef::Volume(v) => volume_dir(pool, v),
        };
        let dst = volume_dir(pool, vol);
        self.delete(pool, vol)?;
        crate::copy::copy_tree(&src, &dst, progress).map_err(|e| DriverError::io(&dst, e))?;
        sync_dir(&pool.path)
    }

    fn backing_file(&self, _pool: &Pool, _vol: &Volume) -> Option<PathBuf> {
        None
    }

    fn allocated_bytes(&self, _pool: &Pool, _vol: &Volume) -> Result<u64, DriverError> {
        Ok(0)
    }

    fn node(&self) -> &dyn NodeOps {
        &self.node
    }
}

impl NodeOps for DirNode {
    fn attach(&self, _pool: &Pool, _vol: &Volume) -> Result<Option<LoopDevice>, DriverError> {
        Ok(None)
    }

    fn format(&self, _vol: &Volume, _device: &Path) -> Result<(), DriverError> {
        Ok(())
    }

    fn mount(
        &self,
        pool: &Pool,
        vol: &Volume,
        _device: Option<&Path>,
        _mountpoint: &Path,
    ) -> Result<PathBuf, DriverError> {
        let dir = volume_dir(pool, vol);
        if !dir.is_dir() {
            return Err(DriverError::io(
                &dir,
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        }
        Ok(dir)
    }

    fn unmount(&self, _vol: &Volume, _mountpoint: &Path) -> Result<(), DriverError> {
        Ok(())
    }

    fn detach(&self, _pool: &Pool, _vol: &Volume) -> Result<(), DriverError> {
        Ok(())
    }

    fn grow_fs(
        &self,
        _vol: &Volume,
        _device: &Path,
        _mountpoint: Option<&Path>,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    fn can_grow_online(&self, _vol: &Volume) -> bool {
        true
    }

    fn grows_offline(&self, _vol: &Volume) -> bool {
        false
    }

    fn is_mounted(&self, _vol: &Volume, mountpoint: &Path) -> Result<bool, DriverError> {
        Ok(mountpoint.is_dir())
    }

    fn serves_in_place(&self) -> bool {
        true
    }
}
