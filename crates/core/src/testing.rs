//! A recording fake [`Host`] for unit tests of volume logic without root.
//!
//! It keeps a model of loop devices and mounts, so the core's and drivers'
//! bookkeeping can be checked against it, and it can be told to fail the
//! next call of a given operation.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::host::{
    BlockDevice, BtrfsDevice, FsStats, Host, HostError, IoStats, LoopDevice, LoopInfo, MountEntry,
    MountOptions,
};
use crate::model::FsType;

#[derive(Default)]
struct State {
    next_loop: u32,
    loops: BTreeMap<PathBuf, PathBuf>,
    mounts: Vec<MountEntry>,
    formatted: HashSet<PathBuf>,
    calls: Vec<String>,
    fail_next: HashSet<String>,
    busy: HashSet<PathBuf>,
    boot_id: String,
    no_online_grow: bool,
    frozen: HashSet<PathBuf>,
    /// Fake block devices (not loop devices) and their sizes.
    block_devices: BTreeMap<PathBuf, u64>,
    /// Each btrfs made: its devices.
    btrfs: Vec<Vec<PathBuf>>,
    /// Subvolume paths and their qgroup limits (0: none).
    subvolumes: BTreeMap<PathBuf, u64>,
    /// Exclusive bytes of subvolumes set by a test (else one 16 KiB node,
    /// as a fresh btrfs snapshot has).
    exclusive: BTreeMap<PathBuf, u64>,
    /// statvfs answers by path prefix (the longest match wins).
    fs_stats: BTreeMap<PathBuf, FsStats>,
    /// The options each bind target was last given.
    bind_options: BTreeMap<PathBuf, MountOptions>,
}

/// A fake host that models loop devices and mounts in memory.
pub struct FakeHost {
    state: Mutex<State>,
}

impl Default for FakeHost {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeHost {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                boot_id: "boot-1".into(),
                ..State::default()
            }),
        }
    }
    /// Every call so far, as `op arg`.
    /// The options the bind at `target` was last given.
    pub fn bind_options(&self, target: &Path) -> Option<MountOptions> {
        self.state.lock().bind_options.get(target).copied()
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().calls.clone()
    }
    /// Make the next call of `op` (e.g. "mkfs") fail.
    pub fn fail_next(&self, op: &str) {
        self.state.lock().fail_next.insert(op.to_string());
    }
    /// Make unmounts of `target` fail with busy until cleared.
    pub fn set_busy(&self, target: &Path, busy: bool) {
        let mut s = self.state.lock();
        if busy {
            s.busy.insert(target.to_path_buf());
        } else {
            s.busy.remove(target);
        }
    }
    /// Pretend online growth is impossible (as without CAP_SYS_RESOURCE).
    pub fn set_no_online_grow(&self, no: bool) {
        self.state.lock().no_online_grow = no;
    }
    pub fn set_boot_id(&self, id: &str) {
        self.state.lock().boot_id = id.to_string();
    }
    /// Forget all mounts and loop devices, as a reboot would.
    pub fn reboot(&self, new_boot_id: &str) {
        let mut s = self.state.lock();
        s.loops.clear();
        s.mounts.clear();
        s.boot_id = new_boot_id.to_string();
    }
    /// Filesystems frozen and not yet thawed.
    pub fn frozen_count(&self) -> usize {
        self.state.lock().frozen.len()
    }
    pub fn loop_count(&self) -> usize {
        self.state.lock().loops.len()
    }
    pub fn mount_count(&self) -> usize {
        self.state.lock().mounts.len()
    }
    pub fn is_formatted(&self, image: &Path) -> bool {
        self.state.lock().formatted.contains(image)
    }
    /// Make a fake block device (not a loop device) of `size` bytes.
    pub fn add_block_device(&self, path: &Path, size: u64) {
        self.state
            .lock()
            .block_devices
            .insert(path.to_path_buf(), size);
    }
    /// Answer statvfs of paths under `prefix` with `stats`.
    pub fn set_fs_stats(&self, prefix: &Path, stats: FsStats) {
        self.state
            .lock()
            .fs_stats
            .insert(prefix.to_path_buf(), stats);
    }
    /// The devices of every btrfs made so far.
    pub fn btrfs_filesystems(&self) -> Vec<Vec<PathBuf>> {
        self.state.lock().btrfs.clone()
    }
    /// Make the subvolume at `path` hold `bytes` exclusively (as writes
    /// to a snapshot's source or to a clone would).
    pub fn set_exclusive(&self, path: &Path, bytes: u64) {
        self.state
            .lock()
            .exclusive
            .insert(path.to_path_buf(), bytes);
    }
    /// The qgroup limit of a subvolume, if it exists.
    pub fn qgroup_limit(&self, path: &Path) -> Option<u64> {
        self.state.lock().subvolumes.get(path).copied()
    }

    fn enter(&self, op: &str, arg: &Path) -> Result<parking_lot::MutexGuard<'_, State>, HostError> {
        let mut s = self.state.lock();
        s.calls.push(format!("{op} {}", arg.display()));
        if s.fail_next.remove(op) {
            return Err(HostError::failed(op, "injected failure"));
        }
        Ok(s)
    }
}

impl Host for FakeHost {
    fn loop_available(&self) -> bool {
        true
    }
    fn loop_attach(&self, image: &Path) -> Result<LoopDevice, HostError> {
        let mut s = self.enter("loop_attach", image)?;
        if let Some((dev, _)) = s.loops.iter().find(|(_, b)| b.as_path() == image) {
            return Ok(LoopDevice {
                path: dev.clone(),
                hold: None,
            });
        }
        let dev = PathBuf::from(format!("/dev/loop{}", s.next_loop));
        s.next_loop += 1;
        s.loops.insert(dev.clone(), image.to_path_buf());
        Ok(LoopDevice {
            path: dev,
            hold: None,
        })
    }
    fn loop_set_autoclear(&self, device: &Path, _on: bool) -> Result<(), HostError> {
        self.enter("loop_set_autoclear", device).map(|_| ())
    }
    fn loop_detach(&self, device: &Path) -> Result<(), HostError> {
        let mut s = self.enter("loop_detach", device)?;
        s.loops.remove(device);
        Ok(())
    }
    fn loop_refresh_capacity(&self, device: &Path) -> Result<(), HostError> {
        self.enter("loop_refresh_capacity", device).map(|_| ())
    }
    fn loop_devices(&self) -> Result<Vec<LoopInfo>, HostError> {
        let s = self.state.lock();
        Ok(s.loops
            .iter()
            .map(|(d, b)| LoopInfo {
                device: d.clone(),
                backing_file: b.clone(),
            })
            .collect())
    }
    fn mkfs(&self, device: &Path, _fs: FsType) -> Result<(), HostError> {
        let mut s = self.enter("mkfs", device)?;
        let Some(image) = s.loops.get(device).cloned() else {
            return Err(HostError::failed("mkfs", "no such device"));
        };
        s.formatted.insert(image);
        Ok(())
    }
    fn grow_fs(&self, _fs: FsType, device: &Path, _mountpoint: &Path) -> Result<(), HostError> {
        self.enter("grow_fs", device).map(|_| ())
    }
    fn grow_fs_offline(&self, _fs: FsType, device: &Path) -> Result<(), HostError> {
        self.enter("grow_fs_offline", device).map(|_| ())
    }
    fn can_grow_online(&self, _fs: FsType) -> bool {
        !self.state.lock().no_online_grow
    }
    fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs: FsType,
        _opts: MountOptions,
    ) -> Result<(), HostError> {
        let mut s = self.enter("mount", target)?;
        if !s.loops.contains_key(device) {
            return Err(HostError::failed("mount", "no such device"));
        }
        s.mounts.push(MountEntry {
            source: device.display().to_string(),
            target: target.to_path_buf(),
            fstype: fs.as_str().to_string(),
            root: "/".into(),
        });
        Ok(())
    }
    fn bind_mount(
        &self,
        source: &Path,
        target: &Path,
        opts: MountOptions,
    ) -> Result<(), HostError> {
        let mut s = self.enter("bind_mount", target)?;
        s.bind_options.insert(target.to_path_buf(), opts);
        s.mounts.push(MountEntry {
            source: source.display().to_string(),
            target: target.to_path_buf(),
            fstype: "bind".into(),
            root: "/".into(),
        });
        Ok(())
    }
    fn is_bind_of(&self, source: &Path, target: &Path) -> Result<bool, HostError> {
        let s = self.enter("is_bind_of", target)?;
        Ok(s.mounts
            .iter()
            .any(|m| m.target == target && m.source == source.display().to_string()))
    }
    fn set_bind_flags(
        &self,
        _source: &Path,
        target: &Path,
        opts: MountOptions,
    ) -> Result<(), HostError> {
        let mut s = self.enter("set_bind_flags", target)?;
        s.bind_options.insert(target.to_path_buf(), opts);
        Ok(())
    }
    fn unmount(&self, target: &Path) -> Result<(), HostError> {
        let mut s = self.enter("unmount", target)?;
        if s.busy.contains(target) {
            return Err(HostError::Busy {
                op: format!("unmount {}", target.display()),
            });
        }
        if let Some(i) = s.mounts.iter().rposition(|m| m.target == target) {
            let m = s.mounts.remove(i);
            // Autoclear: the device goes when its last mount does.
            let dev = PathBuf::from(&m.source);
            if !s.mounts.iter().any(|o| o.source == m.source) {
                s.loops.remove(&dev);
            }
        }
        Ok(())
    }
    fn mounts(&self) -> Result<Vec<MountEntry>, HostError> {
        Ok(self.state.lock().mounts.clone())
    }
    fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        let s = self.state.lock();
        if let Some((_, st)) = s
            .fs_stats
            .iter()
            .filter(|(p, _)| path.starts_with(p))
            .max_by_key(|(p, _)| p.as_os_str().len())
        {
            return Ok(*st);
        }
        Ok(FsStats {
            total_bytes: 100 << 30,
            free_bytes: 50 << 30,
            avail_bytes: 50 << 30,
            total_inodes: 1000,
            free_inodes: 500,
        })
    }
    fn freeze(&self, mountpoint: &Path) -> Result<(), HostError> {
        let mut s = self.enter("freeze", mountpoint)?;
        s.frozen.insert(mountpoint.to_path_buf());
        Ok(())
    }
    fn thaw(&self, mountpoint: &Path) -> Result<(), HostError> {
        let mut s = self.enter("thaw", mountpoint)?;
        s.frozen.remove(mountpoint);
        Ok(())
    }
    fn io_stats(&self, _device: &Path) -> Result<IoStats, HostError> {
        Ok(IoStats::default())
    }
    fn boot_id(&self) -> Option<String> {
        Some(self.state.lock().boot_id.clone())
    }
    fn block_device(&self, path: &Path) -> Result<BlockDevice, HostError> {
        let s = self.enter("block_device", path)?;
        let size = s.block_devices.get(path).copied().or_else(|| {
            let image = s.loops.get(path)?;
            std::fs::metadata(image).ok().map(|m| m.len())
        });
        match size {
            Some(size_bytes) => Ok(BlockDevice {
                size_bytes,
                ..BlockDevice::default()
            }),
            None => Err(HostError::failed(
                format!("inspect {}", path.display()),
                "not a block device",
            )),
        }
    }
    fn btrfs_mkfs(&self, devices: &[PathBuf]) -> Result<(), HostError> {
        let mut s = self.enter("btrfs_mkfs", devices.first().map_or(Path::new(""), |d| d))?;
        for d in devices {
            if !s.block_devices.contains_key(d) && !s.loops.contains_key(d) {
                return Err(HostError::failed(
                    "mkfs.btrfs",
                    format!("{}: no such device", d.display()),
                ));
            }
        }
        s.btrfs.retain(|fs| !fs.iter().any(|d| devices.contains(d)));
        s.btrfs.push(devices.to_vec());
        Ok(())
    }
    fn btrfs_mount(&self, devices: &[PathBuf], target: &Path) -> Result<(), HostError> {
        let mut s = self.enter("btrfs_mount", target)?;
        let Some(first) = devices.first() else {
            return Err(HostError::failed("mount btrfs", "no devices"));
        };
        let made = s.btrfs.iter().any(|fs| fs.contains(first));
        if !made {
            return Err(HostError::failed(
                "mount btrfs",
                "wrong fs type, bad superblock",
            ));
        }
        s.mounts.push(MountEntry {
            source: first.display().to_string(),
            target: target.to_path_buf(),
            fstype: "btrfs".into(),
            root: "/".into(),
        });
        Ok(())
    }
    fn btrfs_quota_enable(&self, mountpoint: &Path) -> Result<(), HostError> {
        self.enter("btrfs_quota_enable", mountpoint).map(|_| ())
    }
    fn btrfs_subvolume_create(&self, path: &Path) -> Result<(), HostError> {
        let mut s = self.enter("btrfs_subvolume_create", path)?;
        std::fs::create_dir(path).map_err(|e| HostError::failed("btrfs subvolume create", e))?;
        s.subvolumes.insert(path.to_path_buf(), 0);
        Ok(())
    }
    fn btrfs_is_subvolume(&self, path: &Path) -> Result<bool, HostError> {
        Ok(self.state.lock().subvolumes.contains_key(path))
    }
    fn btrfs_subvolume_delete(&self, path: &Path) -> Result<(), HostError> {
        let mut s = self.enter("btrfs_subvolume_delete", path)?;
        std::fs::remove_dir_all(path)
            .map_err(|e| HostError::failed("btrfs subvolume delete", e))?;
        s.subvolumes.remove(path);
        Ok(())
    }
    fn btrfs_snapshot(
        &self,
        source: &Path,
        dest: &Path,
        _read_only: bool,
    ) -> Result<(), HostError> {
        let mut s = self.enter("btrfs_snapshot", dest)?;
        copy_dir(source, dest).map_err(|e| HostError::failed("btrfs subvolume snapshot", e))?;
        let limit = s.subvolumes.get(source).copied().unwrap_or(0);
        s.subvolumes.insert(dest.to_path_buf(), limit);
        Ok(())
    }
    fn btrfs_qgroup_limit(&self, path: &Path, bytes: u64) -> Result<(), HostError> {
        let mut s = self.enter("btrfs_qgroup_limit", path)?;
        match s.subvolumes.get_mut(path) {
            Some(l) => {
                *l = bytes;
                Ok(())
            }
            None => Err(HostError::failed("btrfs qgroup limit", "not a subvolume")),
        }
    }
    fn btrfs_qgroup_usage(&self, path: &Path) -> Result<u64, HostError> {
        let _s = self.enter("btrfs_qgroup_usage", path)?;
        dir_bytes(path).map_err(|e| HostError::failed("btrfs qgroup usage", e))
    }
    fn btrfs_qgroup_exclusive(&self, path: &Path) -> Result<u64, HostError> {
        let s = self.state.lock();
        if !s.subvolumes.contains_key(path) || !path.exists() {
            return Err(HostError::failed(
                "btrfs qgroup exclusive",
                "not a subvolume",
            ));
        }
        Ok(s.exclusive.get(path).copied().unwrap_or(16 << 10))
    }
    fn btrfs_device_add(&self, device: &Path, mountpoint: &Path) -> Result<(), HostError> {
        let mut s = self.enter("btrfs_device_add", device)?;
        if s.btrfs.iter().any(|fs| fs.iter().any(|d| d == device)) {
            return Err(HostError::failed(
                "btrfs device add",
                "device is already in a filesystem",
            ));
        }
        let Some(first) = s
            .mounts
            .iter()
            .find(|m| m.target == mountpoint && m.fstype == "btrfs")
            .map(|m| PathBuf::from(&m.source))
        else {
            return Err(HostError::failed("btrfs device add", "not a mounted btrfs"));
        };
        let device = device.to_path_buf();
        match s.btrfs.iter_mut().find(|fs| fs.contains(&first)) {
            Some(fs) => {
                fs.push(device);
                Ok(())
            }
            None => Err(HostError::failed("btrfs device add", "unknown filesystem")),
        }
    }
    fn btrfs_devices(&self, mountpoint: &Path) -> Result<Vec<BtrfsDevice>, HostError> {
        let s = self.state.lock();
        let Some(first) = s
            .mounts
            .iter()
            .find(|m| m.target == mountpoint && m.fstype == "btrfs")
            .map(|m| PathBuf::from(&m.source))
        else {
            return Err(HostError::failed(
                "btrfs filesystem show",
                "not a mounted btrfs",
            ));
        };
        let fs = s
            .btrfs
            .iter()
            .find(|fs| fs.contains(&first))
            .cloned()
            .unwrap_or_default();
        Ok(fs
            .into_iter()
            .zip(1..)
            .map(|(path, devid)| {
                let size_bytes = s.block_devices.get(&path).copied().unwrap_or_else(|| {
                    s.loops
                        .get(&path)
                        .and_then(|image| std::fs::metadata(image).ok())
                        .map_or(0, |m| m.len())
                });
                BtrfsDevice {
                    devid,
                    path,
                    size_bytes,
                }
            })
            .collect())
    }
}

/// Copy a directory tree (the fake's snapshot).
fn copy_dir(src: &Path, dst: &Path) -> std::io::Result<()> {
    std::fs::create_dir(dst)?;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let to = dst.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_dir(&e.path(), &to)?;
        } else {
            std::fs::copy(e.path(), to)?;
        }
    }
    Ok(())
}

/// Bytes of the files under `dir` (the fake's qgroup usage).
fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        n += if e.file_type()?.is_dir() {
            dir_bytes(&e.path())?
        } else {
            e.metadata()?.len()
        };
    }
    Ok(n)
}
