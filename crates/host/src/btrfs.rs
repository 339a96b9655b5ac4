//! btrfs: subvolumes, snapshots and qgroup limits through the kernel's
//! ioctls (one syscall each, so a create or snapshot costs no process), and
//! the filesystem-wide work (mkfs, quota enable, device add, the device
//! list) through btrfs-progs. Qgroup usage comes from sysfs.
//!
//! This module only does what it is asked; which subvolume, which limit and
//! when are the driver's and the core's business.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use ballast_core::host::{BlockDevice, BtrfsDevice, HostError};
use nix::errno::Errno;

// From <linux/btrfs.h>; checked against the C header's values.
const BTRFS_IOC_SUBVOL_CREATE: libc::Ioctl = 0x5000_940E;
const BTRFS_IOC_SNAP_DESTROY: libc::Ioctl = 0x5000_940F;
const BTRFS_IOC_INO_LOOKUP: libc::Ioctl = 0xD000_9412;
const BTRFS_IOC_SNAP_CREATE_V2: libc::Ioctl = 0x5000_9417;
const BTRFS_IOC_FS_INFO: libc::Ioctl = 0x8400_941F;
const BTRFS_IOC_QGROUP_LIMIT: libc::Ioctl = 0x8030_942B;

const BTRFS_PATH_NAME_MAX: usize = 4087;
const BTRFS_SUBVOL_NAME_MAX: usize = 4039;
const BTRFS_INO_LOOKUP_PATH_MAX: usize = 4080;
const BTRFS_SUBVOL_RDONLY: u64 = 1 << 1;
const BTRFS_QGROUP_LIMIT_MAX_RFER: u64 = 1;
/// The inode number of every subvolume's root directory.
const BTRFS_FIRST_FREE_OBJECTID: u64 = 256;

/// `struct btrfs_ioctl_vol_args`.
#[repr(C)]
struct VolArgs {
    fd: i64,
    name: [u8; BTRFS_PATH_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_vol_args_v2` (the union members used here).
#[repr(C)]
struct VolArgsV2 {
    fd: i64,
    transid: u64,
    flags: u64,
    unused: [u64; 4],
    name: [u8; BTRFS_SUBVOL_NAME_MAX + 1],
}

/// `struct btrfs_ioctl_ino_lookup_args`.
#[repr(C)]
struct InoLookupArgs {
    treeid: u64,
    objectid: u64,
    name: [u8; BTRFS_INO_LOOKUP_PATH_MAX],
}

/// `struct btrfs_ioctl_fs_info_args`: only the fsid is read.
#[repr(C)]
struct FsInfoArgs {
    max_id: u64,
    num_devices: u64,
    fsid: [u8; 16],
    rest: [u8; 1024 - 32],
}

/// `struct btrfs_qgroup_limit`.
#[repr(C)]
struct QgroupLimit {
    flags: u64,
    max_rfer: u64,
    max_excl: u64,
    rsv_rfer: u64,
    rsv_excl: u64,
}

/// `struct btrfs_ioctl_qgroup_limit_args`.
#[repr(C)]
struct QgroupLimitArgs {
    qgroupid: u64,
    lim: QgroupLimit,
}

// The kernel ABI sizes; a layout mistake must not compile.
const _: () = assert!(std::mem::size_of::<VolArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<VolArgsV2>() == 4096);
const _: () = assert!(std::mem::size_of::<InoLookupArgs>() == 4096);
const _: () = assert!(std::mem::size_of::<FsInfoArgs>() == 1024);
const _: () = assert!(std::mem::size_of::<QgroupLimitArgs>() == 48);

fn failed(op: &str, e: impl std::fmt::Display) -> HostError {
    HostError::failed(op, e)
}

/// The parent directory and last component of `path`.
fn split(op: &str, path: &Path) -> Result<(PathBuf, Vec<u8>), HostError> {
    let name = path
        .file_name()
        .ok_or_else(|| failed(op, "the path has no last component"))?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .ok_or_else(|| failed(op, "the path has no parent directory"))?;
    Ok((parent.to_path_buf(), name.as_bytes().to_vec()))
}

fn open_dir(op: &str, path: &Path) -> Result<File, HostError> {
    File::open(path).map_err(|e| failed(op, format!("{}: {e}", path.display())))
}

/// Copy `name` into a NUL-terminated fixed buffer.
fn fill_name<const N: usize>(op: &str, buf: &mut [u8; N], name: &[u8]) -> Result<(), HostError> {
    if name.len() >= N || name.contains(&0) {
        return Err(failed(op, "the name is too long or contains NUL"));
    }
    buf[..name.len()].copy_from_slice(name);
    Ok(())
}

/// Run an ioctl whose argument is one `T` the kernel reads and may write.
fn ioctl_with<T>(file: &File, request: libc::Ioctl, arg: &mut T) -> Result<(), Errno> {
    // SAFETY: `file` is open for the call; every request passed here takes a
    // pointer to exactly one `T` (#[repr(C)], sizes asserted above against
    // <linux/btrfs.h>), which `arg` is, alive and exclusively borrowed for
    // the call.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), request, std::ptr::from_mut(arg)) };
    Errno::result(ret).map(drop)
}

pub(crate) fn subvolume_create(path: &Path) -> Result<(), HostError> {
    let op = format!("btrfs subvolume create {}", path.display());
    let (parent, name) = split(&op, path)?;
    let dir = open_dir(&op, &parent)?;
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    });
    fill_name(&op, &mut args.name, &name)?;
    ioctl_with(&dir, BTRFS_IOC_SUBVOL_CREATE, args.as_mut()).map_err(|e| failed(&op, e.desc()))
}

/// A subvolume's root is a directory with inode 256 on a btrfs.
pub(crate) fn is_subvolume(path: &Path) -> Result<bool, HostError> {
    let op = format!("inspect {}", path.display());
    let md = std::fs::symlink_metadata(path).map_err(|e| failed(&op, e))?;
    if !md.is_dir() || md.ino() != BTRFS_FIRST_FREE_OBJECTID {
        return Ok(false);
    }
    let st = nix::sys::statfs::statfs(path).map_err(|e| failed(&op, e.desc()))?;
    Ok(st.filesystem_type() == nix::sys::statfs::BTRFS_SUPER_MAGIC)
}

pub(crate) fn subvolume_delete(path: &Path) -> Result<(), HostError> {
    let op = format!("btrfs subvolume delete {}", path.display());
    let (parent, name) = split(&op, path)?;
    let dir = open_dir(&op, &parent)?;
    let mut args = Box::new(VolArgs {
        fd: 0,
        name: [0; BTRFS_PATH_NAME_MAX + 1],
    });
    fill_name(&op, &mut args.name, &name)?;
    ioctl_with(&dir, BTRFS_IOC_SNAP_DESTROY, args.as_mut()).map_err(|e| failed(&op, e.desc()))
}

pub(crate) fn snapshot(source: &Path, dest: &Path, read_only: bool) -> Result<(), HostError> {
    let op = format!(
        "btrfs subvolume snapshot{} {} {}",
        if read_only { " -r" } else { "" },
        source.display(),
        dest.display()
    );
    let (parent, name) = split(&op, dest)?;
    let src = open_dir(&op, source)?;
    let dir = open_dir(&op, &parent)?;
    let mut args = Box::new(VolArgsV2 {
        fd: i64::from(src.as_raw_fd()),
        transid: 0,
        flags: if read_only { BTRFS_SUBVOL_RDONLY } else { 0 },
        unused: [0; 4],
        name: [0; BTRFS_SUBVOL_NAME_MAX + 1],
    });
    fill_name(&op, &mut args.name, &name)?;
    ioctl_with(&dir, BTRFS_IOC_SNAP_CREATE_V2, args.as_mut()).map_err(|e| failed(&op, e.desc()))
}

pub(crate) fn qgroup_limit(path: &Path, bytes: u64) -> Result<(), HostError> {
    let op = format!("btrfs qgroup limit {bytes} {}", path.display());
    let dir = open_dir(&op, path)?;
    // qgroupid 0: the qgroup of the subvolume `dir` is in.
    let mut args = QgroupLimitArgs {
        qgroupid: 0,
        lim: QgroupLimit {
            flags: BTRFS_QGROUP_LIMIT_MAX_RFER,
            max_rfer: bytes,
            max_excl: 0,
            rsv_rfer: 0,
            rsv_excl: 0,
        },
    };
    ioctl_with(&dir, BTRFS_IOC_QGROUP_LIMIT, &mut args).map_err(|e| match e {
        Errno::ENOTCONN => failed(&op, "quotas are not enabled on this filesystem"),
        other => failed(&op, other.desc()),
    })
}

/// The ID of the subvolume `dir` is in.
fn subvolume_id(op: &str, dir: &File) -> Result<u64, HostError> {
    let mut args = Box::new(InoLookupArgs {
        treeid: 0,
        objectid: BTRFS_FIRST_FREE_OBJECTID,
        name: [0; BTRFS_INO_LOOKUP_PATH_MAX],
    });
    ioctl_with(dir, BTRFS_IOC_INO_LOOKUP, args.as_mut())
        .map_err(|e| failed(op, format!("INO_LOOKUP: {}", e.desc())))?;
    Ok(args.treeid)
}

/// The UUID of the filesystem `dir` is on, as sysfs names it.
fn fsid(op: &str, dir: &File) -> Result<String, HostError> {
    let mut args = Box::new(FsInfoArgs {
        max_id: 0,
        num_devices: 0,
        fsid: [0; 16],
        rest: [0; 1024 - 32],
    });
    ioctl_with(dir, BTRFS_IOC_FS_INFO, args.as_mut())
        .map_err(|e| failed(op, format!("FS_INFO: {}", e.desc())))?;
    Ok(format_uuid(&args.fsid))
}

fn format_uuid(b: &[u8; 16]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The sysfs directory of the qgroup of the subvolume at `path`:
/// /sys/fs/btrfs/<fsid>/qgroups/0_<id>/.
fn qgroup_dir(op: &str, path: &Path) -> Result<PathBuf, HostError> {
    let dir = open_dir(op, path)?;
    let id = subvolume_id(op, &dir)?;
    let fsid = fsid(op, &dir)?;
    Ok(PathBuf::from(format!(
        "/sys/fs/btrfs/{fsid}/qgroups/0_{id}"
    )))
}

/// One number from a qgroup's sysfs directory; None if the kernel has no
/// such file.
fn qgroup_value(op: &str, qgroup: &Path, name: &str) -> Result<Option<u64>, HostError> {
    let file = qgroup.join(name);
    match std::fs::read_to_string(&file) {
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| failed(op, format!("{}: unexpected {text:?}", file.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(failed(op, format!("{}: {e}", file.display()))),
    }
}

/// `field` of the qgroup at `path`, plus data reserved since the last
/// commit (written, even fsynced, but not yet accounted).
fn qgroup_with_reserve(op: &str, path: &Path, field: &str) -> Result<u64, HostError> {
    let qgroup = qgroup_dir(op, path)?;
    let value = qgroup_value(op, &qgroup, field)?.ok_or_else(|| {
        failed(
            op,
            format!(
                "{} is missing: quotas are not enabled on this filesystem",
                qgroup.join(field).display()
            ),
        )
    })?;
    // Kernels before 5.9's sysfs qgroups have no reserve to read.
    let reserved = qgroup_value(op, &qgroup, "rsv_data")?.unwrap_or(0);
    Ok(value.saturating_add(reserved))
}

/// Bytes the subvolume at `path` holds as its qgroup limit counts them:
/// referenced (accounted at each transaction commit) plus data reserved
/// since (written, even fsynced, but not yet committed), from
/// /sys/fs/btrfs/<fsid>/qgroups/0_<id>/ (no process, no sync). Without the
/// reserve, a writer could reach its limit seconds before `referenced` moved.
pub(crate) fn qgroup_usage(path: &Path) -> Result<u64, HostError> {
    let op = format!("btrfs qgroup usage of {}", path.display());
    qgroup_with_reserve(&op, path, "referenced")
}

/// Bytes only the subvolume at `path` holds (the qgroup's `exclusive`:
/// extents no other subvolume references), plus its uncommitted reserve,
/// which is new data and so its own. A fresh snapshot holds one node.
pub(crate) fn qgroup_exclusive(path: &Path) -> Result<u64, HostError> {
    let op = format!("btrfs qgroup exclusive of {}", path.display());
    qgroup_with_reserve(&op, path, "exclusive")
}

/// Parse `btrfs filesystem show --raw`: one `devid N size S used U path P`
/// line per device.
pub(crate) fn parse_filesystem_show(text: &str) -> Vec<BtrfsDevice> {
    let mut out = Vec::new();
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let field = |key: &str| {
            words
                .iter()
                .position(|w| *w == key)
                .and_then(|i| words.get(i + 1))
        };
        if words.first() != Some(&"devid") {
            continue;
        }
        let (Some(devid), Some(size), Some(path)) = (
            field("devid").and_then(|v| v.parse().ok()),
            field("size").and_then(|v| v.parse().ok()),
            // The path is the rest of the line: it may hold spaces.
            line.find(" path ").map(|i| line[i + 6..].trim()),
        ) else {
            continue;
        };
        out.push(BtrfsDevice {
            devid,
            path: PathBuf::from(path),
            size_bytes: size,
        });
    }
    out
}

/// Size, partitions and holders of a block device, from sysfs.
pub(crate) fn block_device(path: &Path) -> Result<BlockDevice, HostError> {
    let op = format!("inspect {}", path.display());
    let md = std::fs::metadata(path).map_err(|e| failed(&op, e))?;
    if !md.file_type().is_block_device() {
        return Err(failed(&op, "not a block device"));
    }
    let rdev = md.rdev();
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(rdev),
        libc::minor(rdev)
    ));
    let sectors: u64 = std::fs::read_to_string(sys.join("size"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| failed(&op, format!("cannot read {}/size", sys.display())))?;
    let mut dev = BlockDevice {
        size_bytes: sectors.saturating_mul(512),
        ..BlockDevice::default()
    };
    if let Ok(rd) = std::fs::read_dir(&sys) {
        for e in rd.flatten() {
            if e.path().join("partition").is_file() {
                dev.partitions.push(Path::new("/dev").join(e.file_name()));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(sys.join("holders")) {
        for e in rd.flatten() {
            dev.holders
                .push(e.file_name().to_string_lossy().into_owned());
        }
    }
    dev.partitions.sort();
    dev.holders.sort();
    Ok(dev)
}

/// Mount options naming every device of a multi-device btrfs.
pub(crate) fn mount_data(devices: &[PathBuf]) -> Result<CString, HostError> {
    let mut data = Vec::new();
    for d in devices {
        let bytes = d.as_os_str().as_bytes();
        if bytes.contains(&b',') || bytes.contains(&0) {
            return Err(failed(
                "mount btrfs",
                format!("device path {} contains ',' or NUL", d.display()),
            ));
        }
        if !data.is_empty() {
            data.push(b',');
        }
        data.extend_from_slice(b"device=");
        data.extend_from_slice(bytes);
    }
    CString::new(data).map_err(|e| failed("mount btrfs", e))
}

/// `OsStr` arguments of a tool from paths.
pub(crate) fn path_args<'a>(flags: &'a [&'a str], paths: &'a [PathBuf]) -> Vec<&'a OsStr> {
    flags
        .iter()
        .map(OsStr::new)
        .chain(paths.iter().map(|p| p.as_os_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filesystem_show_devices() {
        let text = "Label: none  uuid: 390aa5a3-4bc8-4838-9aa0-38dd56c69643\n\tTotal devices 2 FS bytes used 105136128\n\tdevid    1 size 1073741824 used 249954304 path /dev/loop0\n\tdevid    2 size 16777216 used 0 path /dev/loop2\n\n";
        let devs = parse_filesystem_show(text);
        assert_eq!(
            devs,
            vec![
                BtrfsDevice {
                    devid: 1,
                    path: "/dev/loop0".into(),
                    size_bytes: 1 << 30
                },
                BtrfsDevice {
                    devid: 2,
                    path: "/dev/loop2".into(),
                    size_bytes: 16 << 20
                },
            ]
        );
        assert!(parse_filesystem_show("garbage\n").is_empty());
    }

    #[test]
    fn uuid_format() {
        let b = [
            0x39, 0x0a, 0xa5, 0xa3, 0x4b, 0xc8, 0x48, 0x38, 0x9a, 0xa0, 0x38, 0xdd, 0x56, 0xc6,
            0x96, 0x43,
        ];
        assert_eq!(format_uuid(&b), "390aa5a3-4bc8-4838-9aa0-38dd56c69643");
    }

    #[test]
    fn mount_data_names_every_device() {
        let d = mount_data(&["/dev/loop1".into(), "/dev/loop2".into()]).unwrap();
        assert_eq!(d.to_str().unwrap(), "device=/dev/loop1,device=/dev/loop2");
        assert!(mount_data(&["/dev/a,b".into()]).is_err());
    }
}
