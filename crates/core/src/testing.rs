//! A recording fake [`Host`] for unit tests of volume logic without root.
//!
//! It keeps a model of loop devices and mounts, so the core's and drivers'
//! bookkeeping can be checked against it, and it can be told to fail the
//! next call of a given operation.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use crate::host::{
    FsStats, Host, HostError, IoStats, LoopDevice, LoopInfo, MountEntry, MountOptions,
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
        _opts: MountOptions,
    ) -> Result<(), HostError> {
        let mut s = self.enter("bind_mount", target)?;
        s.mounts.push(MountEntry {
            source: source.display().to_string(),
            target: target.to_path_buf(),
            fstype: "bind".into(),
            root: "/".into(),
        });
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
    fn fs_stats(&self, _path: &Path) -> Result<FsStats, HostError> {
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
}
