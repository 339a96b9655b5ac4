//! The one small interface over the kernel and external tools.
//!
//! Everything that changes the host (loop devices, mounts, mkfs, filesystem
//! growth) or reads its truth (/proc/self/mountinfo, /sys/block) goes through
//! [`Host`]. The real implementation lives in `ballast-host`; unit tests use
//! [`crate::testing::FakeHost`], which records calls, so volume logic is tested
//! without root. This module must not contain any policy.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use crate::model::FsType;

/// A loop device this process attached.
///
/// Devices are attached with autoclear, so the kernel detaches one by itself
/// when its last user goes away: `hold` keeps it alive between attach and
/// mount. If the daemon dies in between, the device disappears with it.
#[derive(Debug)]
pub struct LoopDevice {
    pub path: PathBuf,
    pub hold: Option<OwnedFd>,
}

/// One loop device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopInfo {
    pub device: PathBuf,
    pub backing_file: PathBuf,
}

/// One line of /proc/self/mountinfo, the fields ballast needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    /// The mount source (a device such as `/dev/loop3`, or what the fs says).
    pub source: String,
    /// Where it is mounted (octal escapes decoded).
    pub target: PathBuf,
    pub fstype: String,
    /// The path inside the source filesystem that is mounted (`/` for a whole fs).
    pub root: String,
}

/// statvfs figures in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FsStats {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Free bytes available to unprivileged users.
    pub avail_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
}

/// I/O counters of a block device, from /sys/block/<dev>/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IoStats {
    pub read_ops: u64,
    pub read_bytes: u64,
    pub write_ops: u64,
    pub write_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountOptions {
    pub read_only: bool,
    /// Per-mount flags (applied to bind mounts).
    pub flags: crate::model::MountFlags,
}

/// A block device as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlockDevice {
    pub size_bytes: u64,
    /// Its partitions, as device paths (`/dev/sdb1`).
    pub partitions: Vec<PathBuf>,
    /// Kernel names of the devices stacked on it (device mapper, md, ...).
    pub holders: Vec<String>,
}

/// One device of a mounted btrfs filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BtrfsDevice {
    pub devid: u64,
    pub path: PathBuf,
    pub size_bytes: u64,
}

/// A failed host operation. `detail` carries the tool's stderr or the errno
/// text. The variants say what kind of failure it is, so the core can answer
/// "no space" or "retry later" without reading messages.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    #[error("{op}: {detail}")]
    Failed { op: String, detail: String },
    #[error("{op}: timed out after {secs}s")]
    TimedOut { op: String, secs: u64 },
    #[error("{op}: target is busy")]
    Busy { op: String },
    #[error("{op}: {detail}")]
    Unsupported { op: String, detail: String },
    /// A path or device the operation needs is not there.
    #[error("{op}: {detail}")]
    NotFound { op: String, detail: String },
    #[error("{op}: {detail}")]
    AlreadyExists { op: String, detail: String },
    /// ENOSPC or EDQUOT: the backing storage is full.
    #[error("{op}: {detail}")]
    NoSpace { op: String, detail: String },
    /// Something the operation needs cannot be reached now (EAGAIN, a
    /// device or server that does not answer); a retry may succeed.
    #[error("{op}: {detail}")]
    Unavailable { op: String, detail: String },
}

impl HostError {
    pub fn failed(op: impl Into<String>, detail: impl std::fmt::Display) -> Self {
        HostError::Failed {
            op: op.into(),
            detail: detail.to_string(),
        }
    }

    /// An error from a system call or file operation, classified by errno.
    pub fn os(op: impl Into<String>, errno: i32, detail: impl std::fmt::Display) -> Self {
        let (op, detail) = (op.into(), detail.to_string());
        match errno {
            libc::ENOENT | libc::ENXIO | libc::ENODEV => HostError::NotFound { op, detail },
            libc::EEXIST => HostError::AlreadyExists { op, detail },
            libc::ENOSPC | libc::EDQUOT => HostError::NoSpace { op, detail },
            libc::EBUSY => HostError::Busy { op },
            libc::ETIMEDOUT => HostError::TimedOut { op, secs: 0 },
            libc::EAGAIN | libc::EHOSTUNREACH | libc::ENOTCONN | libc::ECONNREFUSED => {
                HostError::Unavailable { op, detail }
            }
            libc::EOPNOTSUPP | libc::ENOSYS | libc::ENOTTY => HostError::Unsupported { op, detail },
            _ => HostError::Failed { op, detail },
        }
    }

    /// An `io::Error`, classified by its errno where it has one.
    pub fn io(op: impl Into<String>, e: &std::io::Error) -> Self {
        match e.raw_os_error() {
            Some(errno) => HostError::os(op, errno, e),
            None => HostError::failed(op, e),
        }
    }
}

/// Kernel and external tools. Every method is safe to repeat where noted.
pub trait Host: Send + Sync {
    /// Whether loop devices can be attached here (root and /dev/loop-control).
    fn loop_available(&self) -> bool;
    /// Attach `image` to a free loop device with direct I/O and autoclear.
    fn loop_attach(&self, image: &Path) -> Result<LoopDevice, HostError>;
    /// Turn a loop device's autoclear on or off (off for raw block volumes,
    /// which no mount holds).
    fn loop_set_autoclear(&self, device: &Path, on: bool) -> Result<(), HostError>;
    /// Detach a loop device. A device that is already free is not an error.
    fn loop_detach(&self, device: &Path) -> Result<(), HostError>;
    /// Make the loop device pick up the new size of its backing file.
    fn loop_refresh_capacity(&self, device: &Path) -> Result<(), HostError>;
    /// Every attached loop device and its backing file.
    fn loop_devices(&self) -> Result<Vec<LoopInfo>, HostError>;
    /// Make a filesystem on `device` (argument vector, timeout, stderr in the error).
    fn mkfs(&self, device: &Path, fs: FsType) -> Result<(), HostError>;
    /// Grow the mounted filesystem at `mountpoint` on `device` to fill the device.
    fn grow_fs(&self, fs: FsType, device: &Path, mountpoint: &Path) -> Result<(), HostError>;
    /// Grow an unmounted filesystem on `device` (ext4 only: check, then resize).
    fn grow_fs_offline(&self, fs: FsType, device: &Path) -> Result<(), HostError>;
    /// Whether a mounted filesystem of this type can be grown here (online
    /// ext4 resize needs CAP_SYS_RESOURCE, which sandboxes often drop).
    fn can_grow_online(&self, fs: FsType) -> bool;
    /// Mount `device` with filesystem `fs` at `target` (which must exist).
    fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs: FsType,
        opts: MountOptions,
    ) -> Result<(), HostError>;
    /// Bind-mount `source` onto `target`, with `opts` applied.
    fn bind_mount(&self, source: &Path, target: &Path, opts: MountOptions)
        -> Result<(), HostError>;
    /// Whether the mount at `target` is a bind of `source` (the same file
    /// seen through it).
    fn is_bind_of(&self, source: &Path, target: &Path) -> Result<bool, HostError>;
    /// Set the bind of `source` at `target` to `opts` (read-only, per-mount
    /// flags) on top of what `source`'s own mount has, replacing whatever
    /// the bind had. Idempotent: a retry after a half-done publish uses it.
    fn set_bind_flags(
        &self,
        source: &Path,
        target: &Path,
        opts: MountOptions,
    ) -> Result<(), HostError>;
    /// Unmount `target`. Not mounted is not an error; busy is [`HostError::Busy`].
    fn unmount(&self, target: &Path) -> Result<(), HostError>;
    /// The current mount table.
    fn mounts(&self) -> Result<Vec<MountEntry>, HostError>;
    /// statvfs of the filesystem holding `path`.
    fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError>;
    /// I/O counters of a block device such as `/dev/loop3`.
    fn io_stats(&self, device: &Path) -> Result<IoStats, HostError>;
    /// Freeze the filesystem mounted at `mountpoint` (FIFREEZE): writes
    /// block until [`Host::thaw`], so a copy of its device is consistent.
    fn freeze(&self, mountpoint: &Path) -> Result<(), HostError>;
    /// Thaw a frozen filesystem. Not frozen is not an error.
    fn thaw(&self, mountpoint: &Path) -> Result<(), HostError>;
    /// Size of the block device at `path` and what sits on it; an error if
    /// it is not a block device.
    fn block_device(&self, path: &Path) -> Result<BlockDevice, HostError>;
    /// Make one btrfs filesystem across `devices` (mkfs.btrfs, which
    /// refuses a device that holds a filesystem already).
    fn btrfs_mkfs(&self, devices: &[PathBuf]) -> Result<(), HostError>;
    /// Mount the btrfs on `devices` at `target` (which must exist); every
    /// device is named, so none needs a `btrfs device scan`.
    fn btrfs_mount(&self, devices: &[PathBuf], target: &Path) -> Result<(), HostError>;
    /// Turn quotas (qgroups) on for the btrfs mounted at `mountpoint`.
    /// Already on is not an error.
    fn btrfs_quota_enable(&self, mountpoint: &Path) -> Result<(), HostError>;
    /// Make a subvolume at `path` (its parent exists, `path` does not).
    fn btrfs_subvolume_create(&self, path: &Path) -> Result<(), HostError>;
    /// Whether the directory at `path` is the root of a btrfs subvolume.
    fn btrfs_is_subvolume(&self, path: &Path) -> Result<bool, HostError>;
    /// Delete the subvolume at `path` (empty of other subvolumes).
    fn btrfs_subvolume_delete(&self, path: &Path) -> Result<(), HostError>;
    /// Snapshot the subvolume `source` as `dest` (whose parent exists), read-only or writable.
    fn btrfs_snapshot(&self, source: &Path, dest: &Path, read_only: bool) -> Result<(), HostError>;
    /// Limit the bytes the subvolume at `path` may reference (its qgroup's
    /// max_rfer): a hard limit on what it holds.
    fn btrfs_qgroup_limit(&self, path: &Path, bytes: u64) -> Result<(), HostError>;
    /// Bytes the subvolume at `path` holds as its qgroup limit counts them
    /// (referenced, plus data written since the last commit).
    fn btrfs_qgroup_usage(&self, path: &Path) -> Result<u64, HostError>;
    /// Bytes only the subvolume at `path` holds, shared with no other
    /// subvolume (its qgroup's exclusive bytes, plus data written since the
    /// last commit).
    fn btrfs_qgroup_exclusive(&self, path: &Path) -> Result<u64, HostError>;
    /// Add `device` to the btrfs mounted at `mountpoint`, online.
    fn btrfs_device_add(&self, device: &Path, mountpoint: &Path) -> Result<(), HostError>;
    /// The devices of the btrfs mounted at `mountpoint`.
    fn btrfs_devices(&self, mountpoint: &Path) -> Result<Vec<BtrfsDevice>, HostError>;
    // ----- FUSE helpers (rbd-fuse) ---------------------------------------
    // A helper is a process of its own, outside the daemon, serving a mount;
    // restarting ballast leaves it serving. Defaults: not available.

    /// Start the FUSE helper `argv` for `mountpoint` (which exists); it
    /// daemonizes once its mount is up, within `timeout`. Afterwards the
    /// mount must be in the mount table, or the helper is stopped again.
    fn fuse_helper_start(
        &self,
        argv: &[String],
        mountpoint: &Path,
        timeout: std::time::Duration,
    ) -> Result<(), HostError> {
        let _ = (argv, timeout);
        Err(HostError::failed(
            format!("start a FUSE helper at {}", mountpoint.display()),
            "not available on this host",
        ))
    }
    /// The pids of the helper processes serving `mountpoint`.
    fn fuse_helper_pids(&self, _mountpoint: &Path) -> Result<Vec<u32>, HostError> {
        Ok(Vec::new())
    }
    /// Stop the helper at `mountpoint` without flushing anything (SIGKILL)
    /// and detach its mount lazily. Nothing there is fine.
    fn fuse_helper_kill(&self, _mountpoint: &Path) -> Result<(), HostError> {
        Ok(())
    }
    /// Whether `path` answers a stat within `limit` (a hung FUSE server
    /// does not; the probe thread is abandoned, never waited for).
    fn responds(&self, path: &Path, limit: std::time::Duration) -> bool {
        let _ = limit;
        path.exists()
    }
    /// Detach the mount at `target` lazily (MNT_DETACH): it goes from the
    /// table now and from the kernel when its last user lets go.
    fn unmount_lazy(&self, target: &Path) -> Result<(), HostError> {
        self.unmount(target)
    }

    /// This boot's ID; mounts and loop devices do not outlive it.
    fn boot_id(&self) -> Option<String> {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_string())
    }
}
