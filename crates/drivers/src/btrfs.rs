//! The `btrfs` driver: a pool is a btrfs filesystem on one or more disks
//! (block devices, or image files on loop devices), mounted at the pool's
//! path; a volume is the subvolume `<pool>/volumes/<id>` with a qgroup
//! limit, its hard size limit. Snapshots are read-only snapshots in
//! `<pool>/snapshots/<id>`, clones writable snapshots: both O(1).
//!
//! Nothing is attached or mounted per volume: a staged volume's data is its
//! subvolume directory itself, as with the `dir` driver (see `NodeOps` below).
//! Disks are added online with `btrfs device add`; when and which is the
//! core's decision (`ballast_core::remediation`), the doing is here.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballast_core::backups::VolumeData;
use ballast_core::driver::{NodeOps, PoolUsage, SourceRef};
use ballast_core::host::{Host, LoopDevice};
use ballast_core::model::{DiskKind, DriverKind, Pool, PoolDisk, Snapshot, Volume};
use ballast_core::moves::MoveData;
use ballast_core::progress::Progress;
use ballast_core::{Driver, DriverError};

use crate::sync_dir;

pub struct BtrfsDriver {
    node: BtrfsNode,
}

pub struct BtrfsNode {
    host: Arc<dyn Host>,
}

impl BtrfsDriver {
    pub fn new(host: Arc<dyn Host>) -> Self {
        Self {
            node: BtrfsNode { host },
        }
    }

    fn host(&self) -> &dyn Host {
        self.node.host.as_ref()
    }

    /// Whether the pool's filesystem is mounted at its path.
    fn mounted(&self, pool: &Pool) -> Result<bool, DriverError> {
        Ok(self
            .host()
            .mounts()?
            .iter()
            .any(|m| m.target == pool.path && m.fstype == "btrfs"))
    }

    /// Attach a disk file (reusing a device that already backs it) or take a
    /// device as it is. The hold, if any, keeps an attached device alive
    /// until a mount or `device add` holds it.
    fn attach(&self, disk: &PoolDisk) -> Result<(PathBuf, Option<LoopDevice>), DriverError> {
        match disk.kind {
            DiskKind::Device => Ok((disk.path.clone(), None)),
            DiskKind::File => {
                let dev = self.host().loop_attach(&disk.path)?;
                Ok((dev.path.clone(), Some(dev)))
            }
        }
    }

    /// Loop devices backed by a disk file.
    fn loops_of(&self, file: &Path) -> Result<Vec<PathBuf>, DriverError> {
        let canonical = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        Ok(self
            .host()
            .loop_devices()?
            .into_iter()
            .filter(|l| l.backing_file == canonical || l.backing_file == file)
            .map(|l| l.device)
            .collect())
    }

    /// The pool's standing directories.
    fn make_dirs(&self, pool: &Pool) -> Result<(), DriverError> {
        for d in [volumes_dir(pool), snapshots_dir(pool)] {
            std::fs::create_dir_all(&d).map_err(|e| DriverError::io(&d, e))?;
        }
        Ok(())
    }
}

pub fn volumes_dir(pool: &Pool) -> PathBuf {
    pool.path.join("volumes")
}

pub fn snapshots_dir(pool: &Pool) -> PathBuf {
    pool.path.join("snapshots")
}

/// A move's source snapshots (`<id>/<pass>`).
fn moves_dir(pool: &Pool) -> PathBuf {
    pool.path.join("moves")
}

/// Where a move's target receives snapshots.
fn incoming_dir(pool: &Pool) -> PathBuf {
    pool.path.join("incoming")
}

/// The received snapshot of the highest pass in `work`.
fn latest_received(work: &Path) -> Result<Option<PathBuf>, DriverError> {
    let rd = match std::fs::read_dir(work) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(DriverError::io(work, e)),
    };
    Ok(rd
        .flatten()
        .filter_map(|e| {
            let n: u32 = e.file_name().to_str()?.parse().ok()?;
            Some((n, e.path()))
        })
        .max_by_key(|(n, _)| *n)
        .map(|(_, p)| p))
}

pub fn subvolume(pool: &Pool, vol: &Volume) -> PathBuf {
    volumes_dir(pool).join(&vol.id)
}

pub fn snapshot_path(pool: &Pool, snap: &Snapshot) -> PathBuf {
    snapshots_dir(pool).join(&snap.id)
}

/// Make a sparse disk file of `size` bytes; one of that size already there
/// is fine (a repeated add after a crash).
fn make_disk_file(path: &Path, size: u64) -> Result<(), DriverError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DriverError::io(dir, e))?;
    }
    let file = match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let len = std::fs::metadata(path)
                .map_err(|e| DriverError::io(path, e))?
                .len();
            if len == size {
                return Ok(());
            }
            return Err(DriverError::io(
                path,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("exists with {len} bytes, not {size}"),
                ),
            ));
        }
        Err(e) => return Err(DriverError::io(path, e)),
    };
    file.set_len(size)
        .and_then(|()| file.sync_all())
        .map_err(|e| DriverError::io(path, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), DriverError> {
    match std::fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(DriverError::io(path, e)),
    }
}

impl BtrfsDriver {
    /// Delete a move's work directory and the snapshots in it.
    fn clear_work(&self, work: &Path) -> Result<(), DriverError> {
        if std::fs::symlink_metadata(work).is_err() {
            return Ok(());
        }
        for nested in self.node.nested_subvolumes(work)? {
            self.host().btrfs_subvolume_delete(&nested)?;
        }
        std::fs::remove_dir_all(work).map_err(|e| DriverError::io(work, e))
    }
}

impl BtrfsNode {
    /// Whether `path` is the root of a subvolume (None: it does not exist).
    fn is_subvolume(&self, path: &Path) -> Result<Option<bool>, DriverError> {
        if std::fs::symlink_metadata(path).is_err() {
            return Ok(None);
        }
        Ok(Some(self.host.btrfs_is_subvolume(path)?))
    }

    /// Subvolumes below `root` (not `root` itself), deepest first.
    fn nested_subvolumes(&self, root: &Path) -> Result<Vec<PathBuf>, DriverError> {
        let mut found = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let rd = std::fs::read_dir(&dir).map_err(|e| DriverError::io(&dir, e))?;
            for e in rd.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                let p = e.path();
                if self.host.btrfs_is_subvolume(&p)? {
                    found.push(p.clone());
                }
                stack.push(p);
            }
        }
        // Longer paths are deeper: delete them first.
        found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        Ok(found)
    }

    /// Delete a subvolume and any subvolumes a consumer made inside it
    /// (deepest first). Already gone is fine.
    fn delete_subvolume(&self, path: &Path) -> Result<(), DriverError> {
        match self.is_subvolume(path)? {
            None => return Ok(()),
            Some(false) => {
                // A plain directory (never a subvolume here): ours to remove.
                return std::fs::remove_dir_all(path).map_err(|e| DriverError::io(path, e));
            }
            Some(true) => {}
        }
        for nested in self.nested_subvolumes(path)? {
            self.host.btrfs_subvolume_delete(&nested)?;
        }
        Ok(self.host.btrfs_subvolume_delete(path)?)
    }
}

impl Driver for BtrfsDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Btrfs
    }

    fn create_pool(&self, pool: &Pool) -> Result<(), DriverError> {
        if pool.adopted {
            return Ok(());
        }
        let mut devices = Vec::new();
        let mut holds = Vec::new();
        for disk in &pool.disks {
            if disk.kind == DiskKind::File {
                make_disk_file(&disk.path, disk.size_bytes)?;
            }
            let (dev, hold) = self.attach(disk)?;
            devices.push(dev);
            holds.extend(hold);
        }
        self.host().btrfs_mkfs(&devices)?;
        // The holds go here: autoclear frees the devices until init_pool
        // attaches and mounts them.
        drop(holds);
        Ok(())
    }

    fn init_pool(&self, pool: &Pool) -> Result<(), DriverError> {
        if pool.adopted {
            if !self.mounted(pool)? {
                return Err(DriverError::Unsupported(format!(
                    "{} is not a mounted btrfs filesystem",
                    pool.path.display()
                )));
            }
        } else if !self.mounted(pool)? {
            // After a reboot (or an unmount behind our back): attach every
            // disk file, then mount with every device named. A disk whose
            // add a crash interrupted may be in the filesystem already.
            let mut devices = Vec::new();
            let mut holds = Vec::new();
            let adding = pool
                .adding
                .iter()
                .filter(|d| d.kind == DiskKind::Device || d.path.exists());
            for disk in pool.disks.iter().chain(adding) {
                let (dev, hold) = self.attach(disk)?;
                devices.push(dev);
                holds.extend(hold);
            }
            std::fs::create_dir_all(&pool.path).map_err(|e| DriverError::io(&pool.path, e))?;
            self.host().btrfs_mount(&devices, &pool.path)?;
            drop(holds);
        }
        self.host().btrfs_quota_enable(&pool.path)?;
        self.make_dirs(pool)
    }

    fn destroy_pool(&self, pool: &Pool) -> Result<(), DriverError> {
        if pool.adopted {
            return Ok(());
        }
        if self.mounted(pool)? {
            self.host().unmount(&pool.path)?;
        }
        for disk in pool.disks.iter().chain(&pool.adding) {
            if disk.kind == DiskKind::File {
                for dev in self.loops_of(&disk.path)? {
                    self.host().loop_detach(&dev)?;
                }
                remove_file(&disk.path)?;
            }
        }
        match std::fs::remove_dir(&pool.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(DriverError::io(&pool.path, e)),
        }
    }

    fn disks_bytes(&self, pool: &Pool) -> Result<Option<u64>, DriverError> {
        let devices = self.host().btrfs_devices(&pool.path)?;
        Ok(Some(devices.iter().map(|d| d.size_bytes).sum()))
    }

    fn can_add_disks(&self) -> bool {
        true
    }

    fn prepare_disk(&self, _pool: &Pool, disk: &PoolDisk) -> Result<(), DriverError> {
        match disk.kind {
            DiskKind::File => make_disk_file(&disk.path, disk.size_bytes),
            DiskKind::Device => Ok(()),
        }
    }

    fn add_disk(&self, pool: &Pool, disk: &PoolDisk) -> Result<(), DriverError> {
        if self.has_disk(pool, disk)? {
            return Ok(());
        }
        let (dev, hold) = self.attach(disk)?;
        let added = self.host().btrfs_device_add(&dev, &pool.path);
        // The filesystem holds the device now; on failure autoclear frees it.
        drop(hold);
        Ok(added?)
    }

    fn has_disk(&self, pool: &Pool, disk: &PoolDisk) -> Result<bool, DriverError> {
        let members = self.host().btrfs_devices(&pool.path)?;
        let candidates = match disk.kind {
            DiskKind::File => self.loops_of(&disk.path)?,
            DiskKind::Device => {
                let canonical =
                    std::fs::canonicalize(&disk.path).unwrap_or_else(|_| disk.path.clone());
                vec![disk.path.clone(), canonical]
            }
        };
        Ok(members.iter().any(|m| {
            candidates.contains(&m.path)
                || std::fs::canonicalize(&m.path).is_ok_and(|c| candidates.contains(&c))
        }))
    }

    fn discard_disk(&self, _pool: &Pool, disk: &PoolDisk) -> Result<(), DriverError> {
        if disk.kind == DiskKind::File {
            for dev in self.loops_of(&disk.path)? {
                self.host().loop_detach(&dev)?;
            }
            remove_file(&disk.path)?;
        }
        Ok(())
    }

    fn usage(&self, pool: &Pool) -> Result<PoolUsage, DriverError> {
        let st = self.host().fs_stats(&pool.path)?;
        // What writers can still put in, and everything else as used
        // (data, metadata copies, reserves): capacity is then the
        // filesystem's size.
        Ok(PoolUsage {
            backing_avail_bytes: st.avail_bytes,
            volumes_used_bytes: st.total_bytes.saturating_sub(st.avail_bytes),
        })
    }

    fn create(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        let path = subvolume(pool, vol);
        match self.node.is_subvolume(&path)? {
            Some(true) => {}
            Some(false) => {
                return Err(DriverError::Unsupported(format!(
                    "{} exists and is not a subvolume",
                    path.display()
                )))
            }
            None => self.host().btrfs_subvolume_create(&path)?,
        }
        Ok(self.host().btrfs_qgroup_limit(&path, vol.size_bytes)?)
    }

    fn delete(&self, pool: &Pool, vol: &Volume) -> Result<(), DriverError> {
        self.node.delete_subvolume(&subvolume(pool, vol))
    }

    fn resize(&self, pool: &Pool, vol: &Volume, new_size: u64) -> Result<(), DriverError> {
        Ok(self
            .host()
            .btrfs_qgroup_limit(&subvolume(pool, vol), new_size)?)
    }

    // O(1) snapshots and clones: nothing to count in `progress`.
    fn snapshot_data(&self, pool: &Pool, snap: &Snapshot) -> Result<VolumeData, DriverError> {
        Ok(VolumeData::Tree(snapshot_path(pool, snap)))
    }

    fn volume_data(&self, pool: &Pool, vol: &Volume) -> Result<VolumeData, DriverError> {
        Ok(VolumeData::Tree(subvolume(pool, vol)))
    }

    fn snapshot(
        &self,
        pool: &Pool,
        vol: &Volume,
        snap: &Snapshot,
        _progress: &Progress,
    ) -> Result<(), DriverError> {
        let dst = snapshot_path(pool, snap);
        if self.node.is_subvolume(&dst)? == Some(true) {
            return Ok(());
        }
        self.make_dirs(pool)?;
        Ok(self
            .host()
            .btrfs_snapshot(&subvolume(pool, vol), &dst, true)?)
    }

    fn delete_snapshot(&self, pool: &Pool, snap: &Snapshot) -> Result<(), DriverError> {
        self.node.delete_subvolume(&snapshot_path(pool, snap))
    }

    fn create_from(
        &self,
        pool: &Pool,
        vol: &Volume,
        source: SourceRef<'_>,
        _progress: &Progress,
    ) -> Result<(), DriverError> {
        let src = match source {
            SourceRef::Snapshot(s) => snapshot_path(pool, s),
            SourceRef::Volume(v) => subvolume(pool, v),
        };
        let dst = subvolume(pool, vol);
        if self.node.is_subvolume(&dst)? != Some(true) {
            self.host().btrfs_snapshot(&src, &dst, false)?;
        }
        Ok(self.host().btrfs_qgroup_limit(&dst, vol.size_bytes)?)
    }

    fn backing_file(&self, _pool: &Pool, _vol: &Volume) -> Option<PathBuf> {
        None
    }

    fn move_source(
        &self,
        pool: &Pool,
        vol: &Volume,
        move_id: &str,
    ) -> Result<MoveData, DriverError> {
        let work = moves_dir(pool).join(move_id);
        std::fs::create_dir_all(&work).map_err(|e| DriverError::io(&work, e))?;
        Ok(MoveData::Subvolume {
            path: subvolume(pool, vol),
            work,
        })
    }

    fn move_incoming(
        &self,
        pool: &Pool,
        vol: &Volume,
        move_id: &str,
        installed: bool,
    ) -> Result<MoveData, DriverError> {
        let work = incoming_dir(pool).join(move_id);
        if installed {
            // The data is the volume's subvolume now; a new stream starts
            // over, so what an earlier one made goes.
            self.node.delete_subvolume(&subvolume(pool, vol))?;
        }
        // `btrfs receive` needs an empty place for a full send; every
        // stream to this node starts with one.
        self.clear_work(&work)?;
        std::fs::create_dir_all(&work).map_err(|e| DriverError::io(&work, e))?;
        Ok(MoveData::Subvolume {
            path: subvolume(pool, vol),
            work,
        })
    }

    fn move_install(&self, pool: &Pool, vol: &Volume, move_id: &str) -> Result<(), DriverError> {
        let work = incoming_dir(pool).join(move_id);
        let dst = subvolume(pool, vol);
        if self.node.is_subvolume(&dst)? != Some(true) {
            let latest = latest_received(&work)?.ok_or_else(|| {
                DriverError::NotFound(format!("nothing was received in {}", work.display()))
            })?;
            std::fs::create_dir_all(volumes_dir(pool))
                .map_err(|e| DriverError::io(&volumes_dir(pool), e))?;
            self.host().btrfs_snapshot(&latest, &dst, false)?;
        }
        self.host().btrfs_qgroup_limit(&dst, vol.size_bytes)?;
        self.clear_work(&work)
    }

    fn move_discard(
        &self,
        pool: &Pool,
        vol: &Volume,
        move_id: &str,
        installed: bool,
    ) -> Result<(), DriverError> {
        self.clear_work(&incoming_dir(pool).join(move_id))?;
        if installed {
            self.node.delete_subvolume(&subvolume(pool, vol))?;
        }
        Ok(())
    }

    fn move_cleanup(&self, pool: &Pool, _vol: &Volume, move_id: &str) -> Result<(), DriverError> {
        self.clear_work(&moves_dir(pool).join(move_id))
    }

    /// Every snapshot and clone is a btrfs snapshot.
    fn copies_share_extents(&self, _pool: &Pool) -> Result<bool, DriverError> {
        Ok(true)
    }

    fn exclusive_bytes(
        &self,
        pool: &Pool,
        item: SourceRef<'_>,
    ) -> Result<Option<u64>, DriverError> {
        let path = match item {
            SourceRef::Snapshot(s) => snapshot_path(pool, s),
            SourceRef::Volume(v) => subvolume(pool, v),
        };
        Ok(Some(self.host().btrfs_qgroup_exclusive(&path)?))
    }

    fn allocated_bytes(&self, pool: &Pool, vol: &Volume) -> Result<u64, DriverError> {
        Ok(self.host().btrfs_qgroup_usage(&subvolume(pool, vol))?)
    }

    fn volume_usage(&self, pool: &Pool, vol: &Volume) -> Result<Option<(u64, u64)>, DriverError> {
        let used = self.host().btrfs_qgroup_usage(&subvolume(pool, vol))?;
        Ok(Some((used, vol.size_bytes)))
    }

    fn node(&self) -> &dyn NodeOps {
        &self.node
    }
}

/// Nothing to attach, format or mount: the subvolume is already a directory
/// on the mounted pool, and its qgroup limit holds wherever it is seen from.
/// Consumers use the subvolume path itself (as with `dir`), which keeps
/// create + mount at a few milliseconds and leaves no per-volume mount to
/// leak or reconcile; CSI targets are bind mounts of it as usual.
impl NodeOps for BtrfsNode {
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
        let path = subvolume(pool, vol);
        match self.is_subvolume(&path)? {
            Some(true) => Ok(path),
            _ => Err(DriverError::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such subvolume (is the pool mounted?)",
                ),
            )),
        }
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
        Ok(self.is_subvolume(mountpoint)? == Some(true))
    }

    fn serves_in_place(&self) -> bool {
        true
    }
}
