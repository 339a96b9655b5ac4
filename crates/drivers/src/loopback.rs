//! The `loop` driver: each volume is a sparse image file `<pool>/<id>.img`,
//! attached to a loop device (direct I/O, autoclear) and formatted on first
//! use. The image's size is a hard limit: a write past it is ENOSPC inside
//! the volume, never on the host.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballast_core::backups::VolumeData;
use ballast_core::driver::{NodeOps, PoolUsage, SourceRef};
use ballast_core::host::{Host, LoopDevice, MountOptions};
use ballast_core::model::{DriverKind, FsType, Pool, Snapshot, Volume};
use ballast_core::moves::MoveData;
use ballast_core::progress::Progress;
use ballast_core::{Driver, DriverError};

use crate::sync_dir;

pub struct LoopDriver {
    node: LoopNode,
}

pub struct LoopNode {
    host: Arc<dyn Host>,
}

impl LoopNode {
    /// The node side of loop devices, for drivers whose volumes end up as
    /// a file to attach (rbd through rbd-fuse).
    pub fn new(host: Arc<dyn Host>) -> Self {
        LoopNode { host }
    }
}

impl LoopDriver {
    pub fn new(host: Arc<dyn Host>) -> Self {
        Self {
            node: LoopNode { host },
        }
    }
}

pub fn image_path(pool: &Pool, vol: &Volume) -> PathBuf {
    pool.path.join(format!("{}.img", vol.id))
}

/// Where a move's target receives an image before it is installed.
fn incoming_dir(pool: &Pool) -> PathBuf {
    pool.path.join("incoming")
}

fn incoming_path(pool: &Pool, move_id: &str) -> PathBuf {
    incoming_dir(pool).join(format!("{move_id}.img"))
}

fn remove_if_there(path: &Path) -> Result<(), DriverError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DriverError::io(path, e)),
    }
}

/// Snapshots live beside the images, in their own directory.
pub fn snapshot_path(pool: &Pool, snap: &Snapshot) -> PathBuf {
    pool.path.join("snapshots").join(format!("{}.img", snap.id))
}

impl Driver for LoopDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Loop
    }

    fn init_pool(&self, pool: &Pool) -> Result<(), DriverError> {
        std::fs::create_dir_all(&pool.path).map_err(|e| DriverError::io(&pool.path, e))
    }

    fn usage(&self, pool: &Pool) -> Result<PoolUsage, DriverError> {
        let st = self.node.host.fs_stats(&pool.path)?;
        // Reflinked images share extents: count each shared byte once, or
        // the pool would seem to hold more than its filesystem does.
        let shares = crate::copy::reflink_supported(&pool.path);
        let mut shared = Vec::new();
        let mut used = 0u64;
        let rd = std::fs::read_dir(&pool.path).map_err(|e| DriverError::io(&pool.path, e))?;
        // Snapshots occupy the pool's space as much as volumes do.
        let snaps = std::fs::read_dir(pool.path.join("snapshots"))
            .into_iter()
            .flatten();
        for entry in rd.flatten().chain(snaps.flatten()) {
            let name = entry.file_name();
            if !name.to_string_lossy().ends_with(".img") {
                continue;
            }
            if shares {
                if let Ok((own, sh)) = crate::copy::extents(&entry.path()) {
                    used += own;
                    shared.extend(sh);
                    continue;
                }
            }
            if let Ok(md) = entry.metadata() {
                used += md.blocks() * 512;
            }
        }
        used += crate::copy::union_len(shared);
        Ok(PoolUsage {
            backing_avail_bytes: st.avail_bytes,
            volumes_used_bytes: used,
        })
    }

    fn create(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        let path = image_path(pool, vol);
        let file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(f) => f,
            // A repeated create (after a crash) finds its own image: the ID is
            // unique to this volume.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| DriverError::io(&path, e))?,
            Err(e) => return Err(DriverError::io(&path, e)),
        };
        // Sparse: set_len allocates nothing.
        file.set_len(vol.size_bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| DriverError::io(&path, e))?;
        sync_dir(&pool.path)
    }

    fn delete(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        let path = image_path(pool, vol);
        let _ = std::fs::remove_file(crate::copy::partial_name(&path));
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&pool.path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io(&path, e)),
        }
    }

    fn resize(&self, pool: &Pool, vol: &Volume, new_size: u64) -> Result<(), DriverError> {
        let path = image_path(pool, vol);
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| DriverError::io(&path, e))?;
        let len = file
            .metadata()
            .map_err(|e| DriverError::io(&path, e))?
            .len();
        if len < new_size {
            file.set_len(new_size)
                .and_then(|()| file.sync_all())
                .map_err(|e| DriverError::io(&path, e))?;
        }
        Ok(())
    }

    fn snapshot_data(&self, pool: &Pool, snap: &Snapshot) -> Result<VolumeData, DriverError> {
        Ok(VolumeData::Image(snapshot_path(pool, snap)))
    }

    fn volume_data(&self, pool: &Pool, vol: &Volume) -> Result<VolumeData, DriverError> {
        Ok(VolumeData::Image(image_path(pool, vol)))
    }

    fn snapshot(
        &self,
        pool: &Pool,
        vol: &Volume,
        snap: &Snapshot,
        progress: &Progress,
    ) -> Result<(), DriverError> {
        let dir = pool.path.join("snapshots");
        std::fs::create_dir_all(&dir).map_err(|e| DriverError::io(&dir, e))?;
        let kind = crate::copy::copy_image(
            &image_path(pool, vol),
            &snapshot_path(pool, snap),
            0,
            snap.cow,
            progress,
        )?;
        tracing::info!(volume = %vol.name, snapshot = %snap.name, ?kind, "snapshot copied");
        Ok(())
    }

    fn delete_snapshot(&self, pool: &Pool, snap: &Snapshot) -> Result<(), DriverError> {
        let path = snapshot_path(pool, snap);
        for p in [crate::copy::partial_name(&path), path] {
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DriverError::io(&p, e)),
            }
        }
        Ok(())
    }

    fn create_from(
        &self,
        pool: &Pool,
        vol: &Volume,
        source: SourceRef<'_>,
        progress: &Progress,
    ) -> Result<(), DriverError> {
        let src = match source {
            SourceRef::Snapshot(s) => snapshot_path(pool, s),
            SourceRef::Volume(v) => image_path(pool, v),
        };
        let kind = crate::copy::copy_image(
            &src,
            &image_path(pool, vol),
            vol.size_bytes,
            vol.cow,
            progress,
        )?;
        tracing::info!(volume = %vol.name, source = %src.display(), ?kind, "volume copied");
        Ok(())
    }

    fn backing_file(&self, pool: &Pool, vol: &Volume) -> Option<PathBuf> {
        Some(image_path(pool, vol))
    }

    fn move_source(
        &self,
        pool: &Pool,
        vol: &Volume,
        _move_id: &str,
    ) -> Result<MoveData, DriverError> {
        Ok(MoveData::Image(image_path(pool, vol)))
    }

    fn move_incoming(
        &self,
        pool: &Pool,
        vol: &Volume,
        move_id: &str,
        installed: bool,
    ) -> Result<MoveData, DriverError> {
        if installed {
            return Ok(MoveData::Image(image_path(pool, vol)));
        }
        let path = incoming_path(pool, move_id);
        let dir = incoming_dir(pool);
        std::fs::create_dir_all(&dir).map_err(|e| DriverError::io(&dir, e))?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| DriverError::io(&path, e))?;
        let len = file
            .metadata()
            .map_err(|e| DriverError::io(&path, e))?
            .len();
        if len != vol.size_bytes {
            file.set_len(vol.size_bytes)
                .map_err(|e| DriverError::io(&path, e))?;
        }
        sync_dir(&dir)?;
        Ok(MoveData::Image(path))
    }

    fn move_install(&self, pool: &Pool, vol: &Volume, move_id: &str) -> Result<(), DriverError> {
        let from = incoming_path(pool, move_id);
        let to = image_path(pool, vol);
        if !from.exists() && to.exists() {
            return Ok(());
        }
        std::fs::rename(&from, &to).map_err(|e| DriverError::io(&from, e))?;
        // Empty now unless another move is arriving.
        let _ = std::fs::remove_dir(incoming_dir(pool));
        sync_dir(&pool.path)
    }

    fn move_discard(
        &self,
        pool: &Pool,
        vol: &Volume,
        move_id: &str,
        installed: bool,
    ) -> Result<(), DriverError> {
        remove_if_there(&incoming_path(pool, move_id))?;
        if installed {
            remove_if_there(&image_path(pool, vol))?;
        }
        Ok(())
    }

    fn copies_share_extents(&self, pool: &Pool) -> Result<bool, DriverError> {
        Ok(crate::copy::reflink_supported(&pool.path))
    }

    fn exclusive_bytes(
        &self,
        pool: &Pool,
        item: SourceRef<'_>,
    ) -> Result<Option<u64>, DriverError> {
        let path = match item {
            SourceRef::Snapshot(s) => snapshot_path(pool, s),
            SourceRef::Volume(v) => image_path(pool, v),
        };
        crate::copy::unshared_bytes(&path).map(Some)
    }

    fn allocated_bytes(&self, pool: &Pool, vol: &Volume) -> Result<u64, DriverError> {
        let path = image_path(pool, vol);
        let md = std::fs::metadata(&path).map_err(|e| DriverError::io(&path, e))?;
        Ok(md.blocks() * 512)
    }

    fn node(&self) -> &dyn NodeOps {
        &self.node
    }
}

impl NodeOps for LoopNode {
    fn attach(&self, pool: &Pool, vol: &Volume) -> Result<Option<LoopDevice>, DriverError> {
        Ok(Some(self.host.loop_attach(&image_path(pool, vol))?))
    }

    fn format(&self, vol: &Volume, device: &Path) -> Result<(), DriverError> {
        let fs = vol.fs.ok_or_else(|| {
            DriverError::Unsupported(format!("loop volume {} has no filesystem", vol.name))
        })?;
        Ok(self.host.mkfs(device, fs)?)
    }

    fn mount(
        &self,
        _pool: &Pool,
        vol: &Volume,
        device: Option<&Path>,
        mountpoint: &Path,
    ) -> Result<PathBuf, DriverError> {
        self.mount_with(vol, device, mountpoint, MountOptions::default())
    }

    fn unmount(&self, _vol: &Volume, mountpoint: &Path) -> Result<(), DriverError> {
        Ok(self.host.unmount(mountpoint)?)
    }

    fn detach(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        let image = image_path(pool, vol);
        for l in self.host.loop_devices()? {
            if l.backing_file == image {
                self.host.loop_detach(&l.device)?;
            }
        }
        Ok(())
    }

    fn grow_fs(
        &self,
        vol: &Volume,
        device: &Path,
        mountpoint: Option<&Path>,
    ) -> Result<(), DriverError> {
        let fs = vol.fs.ok_or_else(|| {
            DriverError::Unsupported(format!("loop volume {} has no filesystem", vol.name))
        })?;
        self.host.loop_refresh_capacity(device)?;
        match mountpoint {
            Some(m) => Ok(self.host.grow_fs(fs, device, m)?),
            None => Ok(self.host.grow_fs_offline(fs, device)?),
        }
    }

    fn can_grow_online(&self, vol: &Volume) -> bool {
        vol.fs.is_some_and(|fs| self.host.can_grow_online(fs))
    }

    fn grows_offline(&self, vol: &Volume) -> bool {
        vol.fs == Some(FsType::Ext4)
    }

    fn is_mounted(&self, vol: &Volume, mountpoint: &Path) -> Result<bool, DriverError> {
        let top = self.top_mount(mountpoint)?;
        Ok(match vol.staging.as_ref().and_then(|s| s.device.as_ref()) {
            // Mounted, and by the volume's own device.
            Some(device) => top.is_some_and(|source| Path::new(&source) == device),
            None => top.is_some(),
        })
    }
}

impl LoopNode {
    /// Mount the volume's device at `mountpoint` with `opts` (read-only for
    /// rbd readers), refusing anything else mounted there, and check the
    /// mount table afterwards.
    pub fn mount_with(
        &self,
        vol: &Volume,
        device: Option<&Path>,
        mountpoint: &Path,
        opts: MountOptions,
    ) -> Result<PathBuf, DriverError> {
        let (Some(device), Some(fs)) = (device, vol.fs) else {
            return Err(DriverError::Unsupported(format!(
                "loop volume {} has no device or filesystem to mount",
                vol.name
            )));
        };
        let device_name = device.display().to_string();
        match self.top_mount(mountpoint)? {
            Some(source) if source == device_name => return Ok(mountpoint.to_path_buf()),
            Some(source) => {
                return Err(DriverError::Unsupported(format!(
                    "{} is a mount of {source}, not of volume {}'s device {device_name}; leaving it alone",
                    mountpoint.display(),
                    vol.name
                )))
            }
            None => {}
        }
        self.host.mount(device, mountpoint, fs, opts)?;
        // Never hand out a path on faith: a directory without the volume
        // behind it would take the application's writes onto the host's disk.
        match self.top_mount(mountpoint)? {
            Some(source) if source == device_name => Ok(mountpoint.to_path_buf()),
            other => Err(DriverError::Unsupported(format!(
                "mounted {device_name} at {}, but the mount table shows {}",
                mountpoint.display(),
                other.as_deref().unwrap_or("nothing there")
            ))),
        }
    }
}

impl LoopNode {
    /// The source of the mount visible at `mountpoint` (the last one
    /// mounted there), if any.
    fn top_mount(&self, mountpoint: &Path) -> Result<Option<String>, DriverError> {
        Ok(self
            .host
            .mounts()?
            .into_iter()
            .rev()
            .find(|m| m.target == mountpoint)
            .map(|m| m.source))
    }
}
