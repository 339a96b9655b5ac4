//! The real Linux [`Host`]: loop-device ioctls, mount syscalls, mkfs and
//! resize tools, and the kernel's own tables (/proc/self/mountinfo,
//! /sys/block).
//!
//! [`LinuxHost`] holds no state beyond its tool timeout: every question is
//! answered from the kernel, so a restarted daemon sees what is really there.
//! No volume policy lives here; that is `ballast_core`'s job.

mod btrfs;
mod deadline;
mod fuse;
mod loopdev;
mod mountinfo;
mod tool;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ballast_core::host::{
    BlockDevice, BtrfsDevice, FsStats, Host, HostError, IoStats, LoopDevice, LoopInfo, MountEntry,
    MountOptions,
};
use ballast_core::model::FsType;
use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::statvfs::FsFlags;

pub use deadline::{abandoned_calls, HOST_CALL_DEADLINE};
pub use tool::run_tool;

/// How long mkfs and resize tools may run before they are killed.
pub const DEFAULT_TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// The host this process runs on.
#[derive(Debug, Clone)]
pub struct LinuxHost {
    /// Deadline for each external tool (mkfs, resize2fs, xfs_growfs).
    pub tool_timeout: Duration,
}

impl LinuxHost {
    pub fn new() -> Self {
        LinuxHost {
            tool_timeout: DEFAULT_TOOL_TIMEOUT,
        }
    }

    /// Whether the kernel does direct I/O for a loop device (its sysfs `dio`);
    /// `None` if the device is not a loop device or not attached.
    pub fn loop_direct_io(&self, device: &Path) -> Option<bool> {
        loopdev::dio_enabled(device)
    }

    /// Whether a mounted ext4 can be grown here: the kernel's resize ioctl
    /// demands CAP_SYS_RESOURCE, which containers and sandboxes often drop.
    pub fn can_grow_ext4_online(&self) -> bool {
        has_effective_capability(CAP_SYS_RESOURCE)
    }

    fn tool(&self, op: &str, program: &str, args: &[&OsStr]) -> Result<(), HostError> {
        tool::run_tool_as(op, program, args, self.tool_timeout).map(drop)
    }
}

impl Default for LinuxHost {
    fn default() -> Self {
        Self::new()
    }
}

/// The kernel flags of a bind mount's remount step for `opts`. A bind
/// remount sets exactly the flags it is given, so the ones of the source's
/// mount (`inherited`, from statvfs) are kept: a flag asked for only ever
/// adds a restriction. The access-time mode is the inherited one unless
/// `opts` names one.
fn per_mount_flags(opts: MountOptions, inherited: FsFlags) -> MsFlags {
    use ballast_core::model::AtimeFlag;
    let f = opts.flags;
    let has = |x: FsFlags| inherited.contains(x);
    let atime = f.atime.unwrap_or(if has(FsFlags::ST_NOATIME) {
        AtimeFlag::Noatime
    } else if has(FsFlags::ST_RELATIME) {
        AtimeFlag::Relatime
    } else {
        AtimeFlag::Strictatime
    });
    let mut out = MsFlags::empty();
    for (on, flag) in [
        (
            opts.read_only || has(FsFlags::ST_RDONLY),
            MsFlags::MS_RDONLY,
        ),
        (f.nodev || has(FsFlags::ST_NODEV), MsFlags::MS_NODEV),
        (f.nosuid || has(FsFlags::ST_NOSUID), MsFlags::MS_NOSUID),
        (f.noexec || has(FsFlags::ST_NOEXEC), MsFlags::MS_NOEXEC),
        (
            f.nodiratime || has(FsFlags::ST_NODIRATIME),
            MsFlags::MS_NODIRATIME,
        ),
        (atime == AtimeFlag::Noatime, MsFlags::MS_NOATIME),
        (atime == AtimeFlag::Relatime, MsFlags::MS_RELATIME),
        (atime == AtimeFlag::Strictatime, MsFlags::MS_STRICTATIME),
    ] {
        if on {
            out |= flag;
        }
    }
    out
}

fn errno_failed(op: String, e: Errno) -> HostError {
    HostError::os(op, e as i32, e.desc())
}

impl Host for LinuxHost {
    fn loop_available(&self) -> bool {
        nix::unistd::geteuid().is_root() && loopdev::control_available()
    }

    fn loop_attach(&self, image: &Path) -> Result<LoopDevice, HostError> {
        loopdev::attach(image)
    }

    fn loop_detach(&self, device: &Path) -> Result<(), HostError> {
        loopdev::detach(device)
    }

    fn loop_set_autoclear(&self, device: &Path, on: bool) -> Result<(), HostError> {
        loopdev::set_autoclear(device, on)
    }

    fn loop_refresh_capacity(&self, device: &Path) -> Result<(), HostError> {
        loopdev::refresh_capacity(device)
    }

    fn loop_devices(&self) -> Result<Vec<LoopInfo>, HostError> {
        loopdev::list()
    }

    fn mkfs(&self, device: &Path, fs: FsType) -> Result<(), HostError> {
        let (program, flags): (&str, &[&str]) = match fs {
            // Lazy init costs a loop volume nothing worth avoiding: the kernel
            // never zeroes the journal, and its background inode-table zeroing
            // reaches the image as hole punches (write-zeroes), not data.
            // Non-lazy would instead allocate the tables and journal in the
            // image at mkfs (about 50 MiB for 1 GiB) for no measured gain.
            FsType::Ext4 => (
                "mkfs.ext4",
                // 4 KiB blocks whatever the size (mke2fs picks 1 KiB below
                // 512 MiB): a reflinked copy of the image on xfs gets a loop
                // device with 4 KiB sectors, which cannot mount 1 KiB blocks.
                &[
                    "-q",
                    "-F",
                    "-b",
                    "4096",
                    "-m",
                    "0",
                    "-E",
                    "lazy_itable_init=1,lazy_journal_init=1,nodiscard",
                ],
            ),
            // 4 KiB sectors for the same reason (xfs refuses to mount on a
            // device whose sectors are larger than its own).
            FsType::Xfs => ("mkfs.xfs", &["-q", "-f", "-K", "-s", "size=4096"]),
        };
        let mut args: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
        args.push(device.as_os_str());
        let op = format!("{program} {}", device.display());
        self.tool(&op, program, &args)?;
        tracing::info!(device = %device.display(), fs = %fs, "made filesystem");
        Ok(())
    }

    fn grow_fs(&self, fs: FsType, device: &Path, mountpoint: &Path) -> Result<(), HostError> {
        match fs {
            // resize2fs grows a mounted ext4 online through its device.
            FsType::Ext4 => self
                .tool(
                    &format!("resize2fs {}", device.display()),
                    "resize2fs",
                    &[device.as_os_str()],
                )
                .map_err(|e| match e {
                    HostError::Failed { op, detail } if !self.can_grow_ext4_online() => {
                        HostError::Failed {
                            op,
                            detail: format!(
                                "{detail} (online ext4 resize needs CAP_SYS_RESOURCE, \
                                 which this process lacks)"
                            ),
                        }
                    }
                    other => other,
                })?,
            // xfs only grows while mounted, through the mountpoint.
            FsType::Xfs => self.tool(
                &format!("xfs_growfs {} ({})", mountpoint.display(), device.display()),
                "xfs_growfs",
                &[mountpoint.as_os_str()],
            )?,
        }
        tracing::info!(device = %device.display(), fs = %fs, "grew filesystem");
        Ok(())
    }

    fn grow_fs_offline(&self, fs: FsType, device: &Path) -> Result<(), HostError> {
        match fs {
            FsType::Ext4 => {
                // resize2fs insists on a freshly checked filesystem; e2fsck
                // exits 1 when it fixed something, which is fine here.
                tool::run_tool_codes(
                    &format!("e2fsck -f -p {}", device.display()),
                    "e2fsck",
                    &[OsStr::new("-f"), OsStr::new("-p"), device.as_os_str()],
                    self.tool_timeout,
                    &[1],
                )?;
                self.tool(
                    &format!("resize2fs {}", device.display()),
                    "resize2fs",
                    &[device.as_os_str()],
                )?;
            }
            FsType::Xfs => {
                return Err(HostError::Unsupported {
                    op: format!("grow xfs on {}", device.display()),
                    detail: "xfs grows only while mounted".into(),
                })
            }
        }
        tracing::info!(device = %device.display(), fs = %fs, "grew unmounted filesystem");
        Ok(())
    }

    fn can_grow_online(&self, fs: FsType) -> bool {
        match fs {
            FsType::Ext4 => self.can_grow_ext4_online(),
            FsType::Xfs => true,
        }
    }

    fn mount(
        &self,
        device: &Path,
        target: &Path,
        fs: FsType,
        opts: MountOptions,
    ) -> Result<(), HostError> {
        let op = format!("mount {} on {}", device.display(), target.display());
        let mut flags = MsFlags::empty();
        if opts.read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        // A copy of an xfs volume (snapshot restore, clone) carries its
        // source's UUID, and xfs refuses a second mount of one UUID: skip
        // that check, as each of our filesystems is addressed by device.
        let data = match fs {
            FsType::Xfs => Some("nouuid"),
            FsType::Ext4 => None,
        };
        nix::mount::mount(Some(device), target, Some(fs.as_str()), flags, data)
            .map_err(|e| errno_failed(op, e))?;
        tracing::info!(device = %device.display(), target = %target.display(), fs = %fs, read_only = opts.read_only, "mounted");
        Ok(())
    }

    fn bind_mount(
        &self,
        source: &Path,
        target: &Path,
        opts: MountOptions,
    ) -> Result<(), HostError> {
        let op = format!("bind {} on {}", source.display(), target.display());
        nix::mount::mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| errno_failed(op.clone(), e))?;
        // A bind ignores per-mount flags; they take a second, remount step.
        if opts.read_only || !opts.flags.is_empty() {
            if let Err(e) = self.set_bind_flags(source, target, opts) {
                // Never leave a bind without the read-only or no-exec that
                // was asked for.
                if let Err(undo) = nix::mount::umount2(target, MntFlags::empty()) {
                    tracing::error!(target = %target.display(), error = %undo, "cannot undo bind mount");
                }
                return Err(e);
            }
        }
        tracing::info!(source = %source.display(), target = %target.display(),
            read_only = opts.read_only, flags = ?opts.flags.names(), "bind-mounted");
        Ok(())
    }

    fn is_bind_of(&self, source: &Path, target: &Path) -> Result<bool, HostError> {
        use std::os::unix::fs::MetadataExt;
        // A target belongs to the caller (kubelet) and may sit on anything.
        let stat = |p: &Path| {
            let op = format!("stat {}", p.display());
            let path = p.to_path_buf();
            deadline::within(&op.clone(), move || {
                std::fs::metadata(&path)
                    .map(|m| (m.dev(), m.ino()))
                    .map_err(|e| HostError::failed(op, e.to_string()))
            })
        };
        Ok(stat(source)? == stat(target)?)
    }

    fn set_bind_flags(
        &self,
        source: &Path,
        target: &Path,
        opts: MountOptions,
    ) -> Result<(), HostError> {
        // From the source's own mount, not the bind's: a retry must also
        // take off what an earlier attempt put on.
        nix::sys::statvfs::statvfs(source)
            .and_then(|st| {
                nix::mount::mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | per_mount_flags(opts, st.flags()),
                    None::<&str>,
                )
            })
            .map_err(|e| {
                errno_failed(
                    format!(
                        "set flags on bind mount {} (read-only: {}, flags: {})",
                        target.display(),
                        opts.read_only,
                        opts.flags.names().join(",")
                    ),
                    e,
                )
            })
    }

    fn fuse_helper_start(
        &self,
        argv: &[String],
        mountpoint: &Path,
        timeout: Duration,
    ) -> Result<(), HostError> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| HostError::failed("start a FUSE helper", "no program"))?;
        tool::run_tool(program, args, timeout)?;
        let mounted = self.mounts()?.iter().any(|m| m.target == mountpoint);
        if !mounted {
            let _ = self.fuse_helper_kill(mountpoint);
            return Err(HostError::failed(
                format!("start {program} at {}", mountpoint.display()),
                "it exited without its mount in the mount table",
            ));
        }
        Ok(())
    }

    fn fuse_helper_pids(&self, mountpoint: &Path) -> Result<Vec<u32>, HostError> {
        Ok(fuse::helper_pids(mountpoint))
    }

    fn fuse_helper_kill(&self, mountpoint: &Path) -> Result<(), HostError> {
        fuse::kill_helpers(mountpoint);
        self.unmount_lazy(mountpoint)
    }

    fn responds(&self, path: &Path, limit: Duration) -> bool {
        let owned = path.to_path_buf();
        let op = format!("stat {}", path.display());
        deadline::within_for(&op, limit, move || {
            std::fs::metadata(&owned).map_err(|e| HostError::io("stat", &e))
        })
        .is_ok()
    }

    fn unmount_lazy(&self, target: &Path) -> Result<(), HostError> {
        let op = format!("unmount {} (lazily)", target.display());
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => {
                tracing::info!(target = %target.display(), "unmounted lazily");
                Ok(())
            }
            Err(Errno::EINVAL | Errno::ENOENT) => Ok(()),
            Err(e) => Err(errno_failed(op, e)),
        }
    }

    fn unmount(&self, target: &Path) -> Result<(), HostError> {
        let op = format!("unmount {}", target.display());
        match nix::mount::umount2(target, MntFlags::empty()) {
            Ok(()) => {
                tracing::info!(target = %target.display(), "unmounted");
                Ok(())
            }
            Err(Errno::EINVAL | Errno::ENOENT) => {
                tracing::debug!(target = %target.display(), "not mounted");
                Ok(())
            }
            Err(Errno::EBUSY) => Err(HostError::Busy { op }),
            Err(e) => Err(errno_failed(op, e)),
        }
    }

    fn mounts(&self) -> Result<Vec<MountEntry>, HostError> {
        const OP: &str = "read /proc/self/mountinfo";
        let text = std::fs::read("/proc/self/mountinfo").map_err(|e| HostError::failed(OP, e))?;
        mountinfo::parse_mountinfo(&text).map_err(|e| HostError::failed(OP, e))
    }

    // The statvfs field types are u64 on 64-bit Linux but narrower elsewhere.
    #[allow(clippy::useless_conversion)]
    fn fs_stats(&self, path: &Path) -> Result<FsStats, HostError> {
        let op = format!("statvfs {}", path.display());
        let owned = path.to_path_buf();
        let st = deadline::within(&op.clone(), move || {
            nix::sys::statvfs::statvfs(&owned).map_err(|e| errno_failed(op, e))
        })?;
        let frsize = u64::from(st.fragment_size());
        Ok(FsStats {
            total_bytes: u64::from(st.blocks()).saturating_mul(frsize),
            free_bytes: u64::from(st.blocks_free()).saturating_mul(frsize),
            avail_bytes: u64::from(st.blocks_available()).saturating_mul(frsize),
            total_inodes: u64::from(st.files()),
            free_inodes: u64::from(st.files_free()),
        })
    }

    fn freeze(&self, mountpoint: &Path) -> Result<(), HostError> {
        fs_ioctl(mountpoint, FIFREEZE, "FIFREEZE", false)
    }

    fn thaw(&self, mountpoint: &Path) -> Result<(), HostError> {
        // EINVAL: not frozen, which is what we want.
        fs_ioctl(mountpoint, FITHAW, "FITHAW", true)
    }

    fn block_device(&self, path: &Path) -> Result<BlockDevice, HostError> {
        btrfs::block_device(path)
    }

    fn btrfs_mkfs(&self, devices: &[PathBuf]) -> Result<(), HostError> {
        // -K: no discard pass, which on a large real disk takes minutes and
        // on a fresh sparse image does nothing.
        let args = btrfs::path_args(&["-q", "-K"], devices);
        let op = format!("mkfs.btrfs {}", display_all(devices));
        self.tool(&op, "mkfs.btrfs", &args)?;
        tracing::info!(devices = %display_all(devices), "made btrfs");
        Ok(())
    }

    fn btrfs_mount(&self, devices: &[PathBuf], target: &Path) -> Result<(), HostError> {
        let op = format!(
            "mount btrfs {} on {}",
            display_all(devices),
            target.display()
        );
        let first = devices
            .first()
            .ok_or_else(|| HostError::failed(&op, "no devices"))?;
        let data = btrfs::mount_data(devices)?;
        nix::mount::mount(
            Some(first.as_path()),
            target,
            Some("btrfs"),
            MsFlags::empty(),
            Some(data.as_c_str()),
        )
        .map_err(|e| errno_failed(op, e))?;
        tracing::info!(devices = %display_all(devices), target = %target.display(), "mounted btrfs");
        Ok(())
    }

    fn btrfs_quota_enable(&self, mountpoint: &Path) -> Result<(), HostError> {
        self.tool(
            &format!("btrfs quota enable {}", mountpoint.display()),
            "btrfs",
            &[
                OsStr::new("quota"),
                OsStr::new("enable"),
                mountpoint.as_os_str(),
            ],
        )
    }

    fn btrfs_subvolume_create(&self, path: &Path) -> Result<(), HostError> {
        btrfs::subvolume_create(path)
    }

    fn btrfs_is_subvolume(&self, path: &Path) -> Result<bool, HostError> {
        btrfs::is_subvolume(path)
    }

    fn btrfs_subvolume_delete(&self, path: &Path) -> Result<(), HostError> {
        btrfs::subvolume_delete(path)
    }

    fn btrfs_snapshot(&self, source: &Path, dest: &Path, read_only: bool) -> Result<(), HostError> {
        btrfs::snapshot(source, dest, read_only)
    }

    fn btrfs_qgroup_limit(&self, path: &Path, bytes: u64) -> Result<(), HostError> {
        btrfs::qgroup_limit(path, bytes)
    }

    fn btrfs_qgroup_usage(&self, path: &Path) -> Result<u64, HostError> {
        btrfs::qgroup_usage(path)
    }

    fn btrfs_qgroup_exclusive(&self, path: &Path) -> Result<u64, HostError> {
        btrfs::qgroup_exclusive(path)
    }

    fn btrfs_device_add(&self, device: &Path, mountpoint: &Path) -> Result<(), HostError> {
        // -K: no discard of the new device (see btrfs_mkfs).
        self.tool(
            &format!(
                "btrfs device add {} {}",
                device.display(),
                mountpoint.display()
            ),
            "btrfs",
            &[
                OsStr::new("device"),
                OsStr::new("add"),
                OsStr::new("-K"),
                device.as_os_str(),
                mountpoint.as_os_str(),
            ],
        )?;
        tracing::info!(device = %device.display(), mountpoint = %mountpoint.display(), "added device to btrfs");
        Ok(())
    }

    fn btrfs_devices(&self, mountpoint: &Path) -> Result<Vec<BtrfsDevice>, HostError> {
        let op = format!("btrfs filesystem show {}", mountpoint.display());
        let out = tool::run_tool_as(
            &op,
            "btrfs",
            &[
                OsStr::new("filesystem"),
                OsStr::new("show"),
                OsStr::new("--raw"),
                mountpoint.as_os_str(),
            ],
            self.tool_timeout,
        )?;
        let devices = btrfs::parse_filesystem_show(&String::from_utf8_lossy(&out.stdout));
        if devices.is_empty() {
            return Err(HostError::failed(op, "no devices in the output"));
        }
        Ok(devices)
    }

    fn io_stats(&self, device: &Path) -> Result<IoStats, HostError> {
        let op = format!("io stats of {}", device.display());
        let name = block_name(device).ok_or_else(|| HostError::failed(&op, "not a device path"))?;
        let stat_path = Path::new("/sys/class/block").join(name).join("stat");
        let text = std::fs::read_to_string(&stat_path)
            .map_err(|e| HostError::failed(&op, format!("{}: {e}", stat_path.display())))?;
        parse_block_stat(&text).ok_or_else(|| {
            HostError::failed(op, format!("unexpected {}: {text:?}", stat_path.display()))
        })
    }
}

fn display_all(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The kernel name (`loop3`) of a device path, following symlinks.
fn block_name(device: &Path) -> Option<String> {
    let resolved: PathBuf = std::fs::canonicalize(device).unwrap_or_else(|_| device.to_path_buf());
    resolved.file_name()?.to_str().map(str::to_string)
}

/// `CAP_SYS_RESOURCE` from <linux/capability.h>.
const CAP_SYS_RESOURCE: u32 = 24;

/// Whether capability number `cap` is in this process's effective set.
fn has_effective_capability(cap: u32) -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| parse_cap_eff(&s))
        .is_some_and(|set| cap < 64 && set & (1u64 << cap) != 0)
}

/// The `CapEff:` mask of /proc/<pid>/status.
fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

const SECTOR: u64 = 512;

/// Parse /sys/block/<dev>/stat (Documentation/block/stat.rst): read I/Os,
/// read merges, read sectors, read ticks, write I/Os, write merges, write
/// sectors, ... Sectors are always 512 bytes here, whatever the device.
fn parse_block_stat(text: &str) -> Option<IoStats> {
    let fields: Vec<u64> = text
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if fields.len() < 7 {
        return None;
    }
    Some(IoStats {
        read_ops: fields[0],
        read_bytes: fields[2].saturating_mul(SECTOR),
        write_ops: fields[4],
        write_bytes: fields[6].saturating_mul(SECTOR),
    })
}

// _IOWR('X', 119, int) and _IOWR('X', 120, int) from <linux/fs.h>.
const FIFREEZE: libc::Ioctl = 0xC004_5877;
const FITHAW: libc::Ioctl = 0xC004_5878;

/// FIFREEZE/FITHAW on the filesystem mounted at `mountpoint`.
fn fs_ioctl(
    mountpoint: &Path,
    request: libc::Ioctl,
    name: &str,
    einval_ok: bool,
) -> Result<(), HostError> {
    use std::os::fd::AsRawFd;
    let op = format!("{name} {}", mountpoint.display());
    let dir = std::fs::File::open(mountpoint).map_err(|e| HostError::io(&op, &e))?;
    // SAFETY: FIFREEZE and FITHAW take an int argument they ignore; the fd
    // is open for the duration of the call.
    let ret = unsafe { libc::ioctl(dir.as_raw_fd(), request, 0) };
    if ret < 0 {
        let err = Errno::last();
        if einval_ok && err == Errno::EINVAL {
            return Ok(());
        }
        return Err(HostError::os(&op, err as i32, err.desc()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_flags_add_to_what_the_bind_inherited() {
        let flags = |names: &[&str]| ballast_core::model::MountFlags::parse(names).unwrap().0;
        let opts = |read_only, names: &[&str]| MountOptions {
            read_only,
            flags: flags(names),
        };
        let inherited = FsFlags::ST_NOSUID | FsFlags::ST_NODEV | FsFlags::ST_RELATIME;
        // noatime replaces the access-time mode and keeps nosuid, nodev.
        assert_eq!(
            per_mount_flags(opts(false, &["noatime"]), inherited),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME
        );
        // nodiratime alone keeps the inherited access-time mode.
        assert_eq!(
            per_mount_flags(opts(false, &["nodiratime"]), FsFlags::ST_NOATIME),
            MsFlags::MS_NODIRATIME | MsFlags::MS_NOATIME
        );
        // Read-only over a plain mount: strictatime is what it had.
        assert_eq!(
            per_mount_flags(opts(true, &[]), FsFlags::empty()),
            MsFlags::MS_RDONLY | MsFlags::MS_STRICTATIME
        );
        // An inherited read-only stays.
        assert!(
            per_mount_flags(opts(false, &["noexec"]), FsFlags::ST_RDONLY)
                .contains(MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC)
        );
    }

    #[test]
    fn block_stat_fields() {
        let text = "    1234       5    8000     100      567       8     4096      50        0      120      150        0        0        0        0        0        0\n";
        let s = parse_block_stat(text).unwrap();
        assert_eq!(
            s,
            IoStats {
                read_ops: 1234,
                read_bytes: 8000 * 512,
                write_ops: 567,
                write_bytes: 4096 * 512,
            }
        );
    }

    #[test]
    fn block_stat_rejects_garbage() {
        assert_eq!(parse_block_stat("1 2 3"), None);
        assert_eq!(parse_block_stat("a b c d e f g"), None);
        assert_eq!(parse_block_stat(""), None);
    }

    #[test]
    fn block_name_of_plain_path() {
        assert_eq!(
            block_name(Path::new("/dev/loop-nonexistent-42")).as_deref(),
            Some("loop-nonexistent-42")
        );
    }

    #[test]
    fn cap_eff_mask() {
        let status = "Name:\tx\nCapPrm:\t000001ffffffffff\nCapEff:\t000001fffeffffff\n";
        let set = parse_cap_eff(status).unwrap();
        assert_eq!(set & (1 << CAP_SYS_RESOURCE), 0);
        assert_ne!(set & (1 << 21), 0);
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn default_timeout() {
        assert_eq!(LinuxHost::default().tool_timeout, DEFAULT_TOOL_TIMEOUT);
    }

    #[test]
    fn unmount_of_unmounted_path_is_ok() {
        // Needs no root: EINVAL (not a mountpoint) or EPERM without privilege.
        let dir = tempfile::tempdir().unwrap();
        let r = LinuxHost::new().unmount(dir.path());
        if nix::unistd::geteuid().is_root() {
            r.unwrap();
        }
        LinuxHost::new()
            .unmount(&dir.path().join("missing"))
            .or_else(|e| {
                if nix::unistd::geteuid().is_root() {
                    Err(e)
                } else {
                    Ok(())
                }
            })
            .unwrap();
    }
}
