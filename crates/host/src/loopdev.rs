//! Loop devices through their ioctls (no losetup).
//!
//! Attach asks /dev/loop-control for a free device and configures it in one
//! `LOOP_CONFIGURE` call with autoclear and direct I/O; the kernel's own state
//! in /sys/block/loopN/loop is the only record of what is attached. This module
//! does not decide when to attach or detach; it only does it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ballast_core::host::{HostError, LoopDevice, LoopInfo};
use nix::errno::Errno;

const LOOP_CONTROL: &str = "/dev/loop-control";

// From <linux/loop.h>. These are "bad" ioctls: plain numbers, no size encoding.
const LOOP_CLR_FD: libc::Ioctl = 0x4C01;
const LOOP_SET_STATUS64: libc::Ioctl = 0x4C04;
const LOOP_GET_STATUS64: libc::Ioctl = 0x4C05;
const LOOP_SET_CAPACITY: libc::Ioctl = 0x4C07;
const LOOP_CONFIGURE: libc::Ioctl = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::Ioctl = 0x4C82;

const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

const LO_NAME_SIZE: usize = 64;
const LO_KEY_SIZE: usize = 32;

/// How often attach retries when another process takes the free device first.
const ATTACH_ATTEMPTS: u32 = 16;
/// How long detach waits for the kernel to let go of the backing file.
const DETACH_WAIT: Duration = Duration::from_secs(2);

/// `struct loop_info64` from <linux/loop.h> (libc does not define it).
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; LO_KEY_SIZE],
    lo_init: [u64; 2],
}

/// `struct loop_config` from <linux/loop.h>, the `LOOP_CONFIGURE` argument.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

// The kernel ABI sizes; a layout mistake must not compile.
const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

impl LoopConfig {
    fn new(backing: &File, image: &Path, flags: u32) -> Result<Self, HostError> {
        let fd = u32::try_from(backing.as_raw_fd())
            .map_err(|_| HostError::failed(attach_op(image), "negative file descriptor"))?;
        let mut name = [0u8; LO_NAME_SIZE];
        // Informational only (sysfs reports the full path); keep a trailing NUL.
        let bytes = image.as_os_str().as_bytes();
        let n = bytes.len().min(LO_NAME_SIZE - 1);
        name[..n].copy_from_slice(&bytes[..n]);
        Ok(LoopConfig {
            fd,
            // 0: the kernel picks the backing device's logical block size when
            // direct I/O is on (512 otherwise), which is what dio needs. Not
            // 4096: ext4 writes 4 KiB blocks either way (measured: no change
            // in 4 KiB random-write throughput), and a 4096-byte device would
            // refuse existing 1 KiB-block ext4 and 512-byte-sector xfs volumes
            // and 512-byte direct I/O on raw block volumes.
            block_size: 0,
            info: LoopInfo64 {
                lo_device: 0,
                lo_inode: 0,
                lo_rdevice: 0,
                lo_offset: 0,
                lo_sizelimit: 0,
                lo_number: 0,
                lo_encrypt_type: 0,
                lo_encrypt_key_size: 0,
                lo_flags: flags,
                lo_file_name: name,
                lo_crypt_name: [0; LO_NAME_SIZE],
                lo_encrypt_key: [0; LO_KEY_SIZE],
                lo_init: [0; 2],
            },
            reserved: [0; 8],
        })
    }
}

fn attach_op(image: &Path) -> String {
    format!("attach {}", image.display())
}

fn open_rw(path: &Path) -> io::Result<File> {
    // std sets O_CLOEXEC on every open.
    OpenOptions::new().read(true).write(true).open(path)
}

/// An ioctl that takes no argument.
fn ioctl_none(file: &File, request: libc::Ioctl) -> Result<libc::c_int, Errno> {
    // SAFETY: `file` is an open descriptor for the whole call, and every
    // request passed here (LOOP_CLR_FD, LOOP_SET_CAPACITY, LOOP_CTL_GET_FREE)
    // takes no argument, so the kernel reads and writes no user memory.
    let ret = unsafe { libc::ioctl(file.as_raw_fd(), request) };
    Errno::result(ret)
}

fn loop_configure(device: &File, config: &LoopConfig) -> Result<(), Errno> {
    // SAFETY: `device` is an open loop device; LOOP_CONFIGURE reads exactly one
    // `struct loop_config`, which `config` is (#[repr(C)], size asserted above),
    // and the reference keeps it alive for the call. The kernel takes its own
    // reference to the backing fd named inside, which is open at this point.
    let ret = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_CONFIGURE,
            std::ptr::from_ref(config),
        )
    };
    Errno::result(ret).map(drop)
}

/// `/sys/block/loopN` for a device path such as `/dev/loopN`.
fn sys_dir(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?.to_str()?;
    name.starts_with("loop")
        .then(|| Path::new("/sys/block").join(name))
}

/// The backing file the kernel reports for `device`, `None` when unattached.
pub(crate) fn backing_file(device: &Path) -> Option<PathBuf> {
    let dir = sys_dir(device)?;
    read_backing_file(&dir.join("loop/backing_file"))
}

fn read_backing_file(path: &Path) -> Option<PathBuf> {
    let raw = fs::read(path).ok()?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    if raw.is_empty() {
        return None;
    }
    Some(PathBuf::from(std::ffi::OsStr::from_bytes(raw)))
}

/// Whether the kernel does direct I/O for `device` (its sysfs `dio` flag).
pub(crate) fn dio_enabled(device: &Path) -> Option<bool> {
    let dir = sys_dir(device)?;
    let text = fs::read_to_string(dir.join("loop/dio")).ok()?;
    Some(text.trim() == "1")
}

/// Every attached loop device, from /sys/block/loop*/loop/backing_file.
pub(crate) fn list() -> Result<Vec<LoopInfo>, HostError> {
    let entries =
        fs::read_dir("/sys/block").map_err(|e| HostError::failed("list loop devices", e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| HostError::failed("list loop devices", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !is_loop_name(name) {
            continue;
        }
        // Unattached devices have no backing_file at all.
        if let Some(backing) = read_backing_file(&entry.path().join("loop/backing_file")) {
            out.push(LoopInfo {
                device: Path::new("/dev").join(name),
                backing_file: backing,
            });
        }
    }
    out.sort_by_key(|info| loop_number(&info.device));
    Ok(out)
}

fn is_loop_name(name: &str) -> bool {
    name.strip_prefix("loop")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn loop_number(device: &Path) -> u64 {
    device
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("loop"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(u64::MAX)
}

/// The device's `struct loop_info64` (LOOP_GET_STATUS64).
///
/// The kernel may ask the backing filesystem for the file's attributes here,
/// so this is only ever called for devices whose backing path is ours.
fn get_status(device: &File) -> Result<LoopInfo64, Errno> {
    // SAFETY: all-zero is a valid `loop_info64` (integers and byte arrays).
    let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
    // SAFETY: LOOP_GET_STATUS64 fills a `struct loop_info64`, which `info` is
    // (#[repr(C)], size asserted at compile time), for the call's duration.
    let ret = unsafe {
        libc::ioctl(
            device.as_raw_fd(),
            LOOP_GET_STATUS64,
            &mut info as *mut LoopInfo64,
        )
    };
    Errno::result(ret).map(|_| info)
}

/// `(st_dev, st_ino)` of the loop device's backing file, from the kernel's
/// own record, `None` when the device is not attached.
fn backing_identity(device: &File) -> Option<(u64, u64)> {
    get_status(device)
        .ok()
        .map(|info| (info.lo_device, info.lo_inode))
}

/// An attached device already backed by our image `canonical`, whose
/// `(st_dev, st_ino)` is `identity`, opened so it stays.
///
/// Devices are picked by the backing path the kernel reports in sysfs, as a
/// string: a foreign device's backing file is never resolved, stat'ed or
/// opened, since it may sit on a filesystem that never answers (a FUSE
/// server that stopped). Only a device naming our own path is then checked
/// against the image's inode, so a file that replaced the image under the
/// same name is not mistaken for it.
fn find_attached(canonical: &Path, identity: (u64, u64)) -> Result<Option<LoopDevice>, HostError> {
    // An unreadable list is an error, not "not attached": a second device
    // on one image would be a second filesystem instance on it.
    let candidates = list()?;
    for info in candidates
        .into_iter()
        .filter(|info| info.backing_file == canonical)
    {
        match open_rw(&info.device) {
            Ok(file) => {
                // It may have been cleared between listing and opening.
                if backing_identity(&file) != Some(identity) {
                    continue;
                }
                tracing::debug!(
                    device = %info.device.display(),
                    image = %canonical.display(),
                    "image already attached; reusing device"
                );
                return Ok(Some(LoopDevice {
                    path: info.device,
                    hold: Some(OwnedFd::from(file)),
                }));
            }
            // ENXIO: being torn down right now; attach a fresh device instead.
            Err(e) => tracing::debug!(
                device = %info.device.display(),
                error = %e,
                "cannot open attached device; attaching anew"
            ),
        }
    }
    Ok(None)
}

/// Attach `image` with autoclear and direct I/O, or return the device that
/// already backs it.
pub(crate) fn attach(image: &Path) -> Result<LoopDevice, HostError> {
    let op = attach_op(image);
    // The image is ours, but the filesystem under the pool may still hang.
    let (canonical, backing, identity) = {
        let image = image.to_path_buf();
        let op = op.clone();
        crate::deadline::within(&op.clone(), move || {
            let canonical = fs::canonicalize(&image).map_err(|e| HostError::io(&op, &e))?;
            let backing = open_rw(&canonical).map_err(|e| HostError::io(&op, &e))?;
            let md = backing.metadata().map_err(|e| HostError::io(&op, &e))?;
            Ok((canonical, backing, (md.dev(), md.ino())))
        })?
    };
    if let Some(existing) = find_attached(&canonical, identity)? {
        return Ok(existing);
    }
    let control = open_rw(Path::new(LOOP_CONTROL))
        .map_err(|e| HostError::failed(&op, format!("{LOOP_CONTROL}: {e}")))?;

    let mut flags = LO_FLAGS_AUTOCLEAR | LO_FLAGS_DIRECT_IO;
    let mut last_err = None;
    for attempt in 1..=ATTACH_ATTEMPTS {
        let number = ioctl_none(&control, LOOP_CTL_GET_FREE).map_err(|e| {
            HostError::os(&op, e as i32, format!("LOOP_CTL_GET_FREE: {}", e.desc()))
        })?;
        let path = PathBuf::from(format!("/dev/loop{number}"));
        let device = match open_rw(&path) {
            Ok(f) => f,
            // The node can lag a moment behind a freshly created device, or the
            // device can be removed by someone else between the two calls.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) => {
                tracing::debug!(attempt, device = %path.display(), error = %e, "retrying attach");
                last_err = Some(format!("{}: {e}", path.display()));
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(e) => return Err(HostError::failed(&op, format!("{}: {e}", path.display()))),
        };
        let config = LoopConfig::new(&backing, &canonical, flags)?;
        match loop_configure(&device, &config) {
            Ok(()) => {}
            // Someone configured this device between GET_FREE and CONFIGURE.
            Err(Errno::EBUSY) => {
                tracing::debug!(attempt, device = %path.display(), "loop device taken; retrying");
                last_err = Some(format!("{}: {}", path.display(), Errno::EBUSY.desc()));
                continue;
            }
            // Newer kernels refuse DIO outright when the backing fs cannot do
            // it; the device is still free, so try again buffered.
            Err(Errno::EINVAL) if flags & LO_FLAGS_DIRECT_IO != 0 => {
                tracing::warn!(
                    image = %canonical.display(),
                    "direct I/O refused for the backing file; falling back to buffered I/O"
                );
                flags &= !LO_FLAGS_DIRECT_IO;
                last_err = Some(format!("{}: {}", path.display(), Errno::EINVAL.desc()));
                continue;
            }
            Err(e) => {
                return Err(HostError::failed(
                    &op,
                    format!("LOOP_CONFIGURE {}: {}", path.display(), e.desc()),
                ))
            }
        }
        if flags & LO_FLAGS_DIRECT_IO != 0 && dio_enabled(&path) != Some(true) {
            tracing::warn!(
                device = %path.display(),
                image = %canonical.display(),
                "direct I/O did not engage; the device uses buffered I/O"
            );
        }
        tracing::info!(device = %path.display(), image = %canonical.display(), "attached loop device");
        // The fd LOOP_CONFIGURE went through is the hold: autoclear waits for it.
        return Ok(LoopDevice {
            path,
            hold: Some(OwnedFd::from(device)),
        });
    }
    Err(HostError::failed(
        &op,
        format!(
            "no free loop device after {ATTACH_ATTEMPTS} attempts: {}",
            last_err.unwrap_or_default()
        ),
    ))
}

/// Detach `device`, then wait for the kernel to release the backing file.
///
/// A device still in use (mounted, or held open) is only marked for autoclear
/// by the kernel; if it has not let go after [`DETACH_WAIT`] this reports
/// [`HostError::Busy`], and the kernel frees it at the last close.
pub(crate) fn detach(device: &Path) -> Result<(), HostError> {
    let op = format!("detach {}", device.display());
    let file = match open_rw(device) {
        Ok(f) => f,
        // No such device, or one being torn down: nothing is attached.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) => {
            tracing::debug!(device = %device.display(), error = %e, "loop device already gone");
            return Ok(());
        }
        Err(e) => return Err(HostError::io(op, &e)),
    };
    match ioctl_none(&file, LOOP_CLR_FD) {
        Ok(_) => {}
        Err(Errno::ENXIO) => {
            tracing::debug!(device = %device.display(), "loop device already free");
            return Ok(());
        }
        Err(e) => return Err(HostError::failed(op, format!("LOOP_CLR_FD: {}", e.desc()))),
    }
    // Our own open counts as a user: the kernel clears at this close.
    drop(file);
    let deadline = Instant::now() + DETACH_WAIT;
    while backing_file(device).is_some() {
        if Instant::now() >= deadline {
            tracing::warn!(device = %device.display(), "loop device still in use; left for autoclear");
            return Err(HostError::Busy { op });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!(device = %device.display(), "detached loop device");
    Ok(())
}

/// Make `device` pick up the current size of its backing file.
pub(crate) fn refresh_capacity(device: &Path) -> Result<(), HostError> {
    let op = format!("refresh capacity of {}", device.display());
    let file = open_rw(device).map_err(|e| HostError::io(&op, &e))?;
    ioctl_none(&file, LOOP_SET_CAPACITY)
        .map_err(|e| HostError::failed(&op, format!("LOOP_SET_CAPACITY: {}", e.desc())))?;
    Ok(())
}

/// Turn autoclear on or off: a raw block volume has no mount to hold its
/// device, so its device must not go away when ballast closes it.
pub(crate) fn set_autoclear(device: &Path, on: bool) -> Result<(), HostError> {
    let op = format!("set autoclear of {}", device.display());
    let file = open_rw(device).map_err(|e| HostError::io(&op, &e))?;
    let mut info = get_status(&file)
        .map_err(|e| HostError::failed(&op, format!("LOOP_GET_STATUS64: {}", e.desc())))?;
    if on {
        info.lo_flags |= LO_FLAGS_AUTOCLEAR;
    } else {
        info.lo_flags &= !LO_FLAGS_AUTOCLEAR;
    }
    // SAFETY: LOOP_SET_STATUS64 reads a `struct loop_info64`, which `info` is.
    let ret = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            LOOP_SET_STATUS64,
            &info as *const LoopInfo64,
        )
    };
    if ret < 0 {
        return Err(HostError::failed(
            &op,
            format!("LOOP_SET_STATUS64: {}", Errno::last().desc()),
        ));
    }
    Ok(())
}

/// Whether /dev/loop-control can be opened for writing.
pub(crate) fn control_available() -> bool {
    open_rw(Path::new(LOOP_CONTROL)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_names() {
        assert!(is_loop_name("loop0"));
        assert!(is_loop_name("loop12"));
        assert!(!is_loop_name("loop"));
        assert!(!is_loop_name("loop-control"));
        assert!(!is_loop_name("loop1p1"));
        assert!(!is_loop_name("vda"));
    }

    #[test]
    fn numbers_sort_numerically() {
        assert!(loop_number(Path::new("/dev/loop2")) < loop_number(Path::new("/dev/loop10")));
        assert_eq!(loop_number(Path::new("/dev/vda")), u64::MAX);
    }

    #[test]
    fn sys_dir_only_for_loop_devices() {
        assert_eq!(
            sys_dir(Path::new("/dev/loop3")),
            Some(PathBuf::from("/sys/block/loop3"))
        );
        assert_eq!(sys_dir(Path::new("/dev/vda")), None);
    }

    #[test]
    fn backing_file_strips_newline_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("backing_file");
        fs::write(&f, "/var/tmp/a b.img (deleted)\n").unwrap();
        assert_eq!(
            read_backing_file(&f),
            Some(PathBuf::from("/var/tmp/a b.img (deleted)"))
        );
        fs::write(&f, "\n").unwrap();
        assert_eq!(read_backing_file(&f), None);
        assert_eq!(read_backing_file(&dir.path().join("missing")), None);
    }

    #[test]
    fn config_carries_flags_and_name() {
        let file = tempfile::tempfile().unwrap();
        let long = PathBuf::from(format!("/{}", "x".repeat(100)));
        let c = LoopConfig::new(&file, &long, LO_FLAGS_AUTOCLEAR).unwrap();
        assert_eq!(c.info.lo_flags, LO_FLAGS_AUTOCLEAR);
        assert_eq!(c.block_size, 0);
        assert_eq!(c.info.lo_file_name[LO_NAME_SIZE - 1], 0);
        assert_eq!(c.info.lo_file_name[0], b'/');
    }
}
