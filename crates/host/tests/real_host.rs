//! Tests against the real kernel: loop devices, mkfs, mount, online growth.
//!
//! They need root and /dev/loop-control. Without them they print a line and
//! pass, except with `CI=true`, where a missing privilege fails the test. Every
//! mount and loop device is undone by [`Cleanup`], also when an assertion fails.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ballast_core::host::{Host, HostError, MountOptions};
use ballast_core::model::FsType;
use ballast_host::{run_tool, LinuxHost};
use nix::mount::MntFlags;

const MIB: u64 = 1 << 20;

/// Whether privileged tests can run; panics instead of skipping under CI.
fn privileged(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let control = Path::new("/dev/loop-control").exists();
    if root && control {
        return true;
    }
    let why = if root {
        "/dev/loop-control is missing"
    } else {
        "not running as root"
    };
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}, and CI=true forbids skipping");
    }
    println!("skipping {test}: {why}");
    false
}

/// Undoes every mount and loop device a test made, in reverse order.
struct Cleanup {
    host: LinuxHost,
    dir: tempfile::TempDir,
    mounts: Vec<PathBuf>,
    /// Device and the image it was attached to: a freed device number may be
    /// reused by someone else, so only detach while it still backs our image.
    devices: Vec<(PathBuf, PathBuf)>,
}

impl Cleanup {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ballast-host-test-")
            .tempdir_in("/var/tmp")
            .expect("tempdir under /var/tmp");
        Cleanup {
            host: LinuxHost::new(),
            dir,
            mounts: Vec::new(),
            devices: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn sparse_image(&self, name: &str, size: u64) -> PathBuf {
        let path = self.path(name);
        File::create(&path).unwrap().set_len(size).unwrap();
        fs::canonicalize(&path).unwrap()
    }

    fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        fs::create_dir_all(&path).unwrap();
        path
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for target in self.mounts.iter().rev() {
            if let Err(e) = self.host.unmount(target) {
                eprintln!("cleanup: {e}; detaching lazily");
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            }
        }
        for (device, image) in self.devices.iter().rev() {
            let ours = self
                .host
                .loop_devices()
                .unwrap_or_default()
                .iter()
                .any(|i| &i.device == device && &i.backing_file == image);
            if ours {
                if let Err(e) = self.host.loop_detach(device) {
                    eprintln!("cleanup: {e}");
                }
            }
        }
    }
}

fn attached(host: &LinuxHost, device: &Path, image: &Path) -> bool {
    host.loop_devices()
        .unwrap()
        .iter()
        .any(|i| i.device == device && i.backing_file == image)
}

/// Poll until `device` no longer backs `image`; how long it took, if it did.
fn wait_detached(host: &LinuxHost, device: &Path, image: &Path) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        if !attached(host, device, image) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn device_bytes(device: &Path) -> u64 {
    let name = device.file_name().unwrap().to_str().unwrap();
    let sectors: u64 = fs::read_to_string(format!("/sys/block/{name}/size"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    sectors * 512
}

/// Attach, mkfs, mount, write, grow online, unmount, watch autoclear.
fn lifecycle(fs: FsType, initial: u64, grown: u64) {
    let mut g = Cleanup::new();
    let host = LinuxHost::new();
    assert!(host.loop_available());

    let image = g.sparse_image(&format!("{fs}.img"), initial);
    let dev = host.loop_attach(&image).unwrap();
    g.devices.push((dev.path.clone(), image.clone()));
    assert!(dev.hold.is_some());
    assert_eq!(
        host.loop_direct_io(&dev.path),
        Some(true),
        "dio not engaged"
    );
    assert!(
        attached(&host, &dev.path, &image),
        "backing file not listed"
    );
    assert_eq!(device_bytes(&dev.path), initial);

    // Attaching the same image again (by another spelling) reuses the device.
    let again = host
        .loop_attach(&g.dir.path().join(".").join(format!("{fs}.img")))
        .unwrap();
    assert_eq!(again.path, dev.path);
    drop(again);

    host.mkfs(&dev.path, fs).unwrap();
    let mnt = g.mkdir("mnt");
    host.mount(&dev.path, &mnt, fs, MountOptions::default())
        .unwrap();
    g.mounts.push(mnt.clone());
    // Mounted: the mount keeps the device, the hold is no longer needed.
    drop(dev.hold);
    assert!(attached(&host, &dev.path, &image));

    let entry = host
        .mounts()
        .unwrap()
        .into_iter()
        .find(|m| m.target == mnt)
        .expect("mount listed in mountinfo");
    assert_eq!(Path::new(&entry.source), dev.path);
    assert_eq!(entry.fstype, fs.as_str());
    assert_eq!(entry.root, "/");

    let data = vec![0x5au8; 4 << 20];
    {
        let mut f = File::create(mnt.join("data")).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
    }
    let mut back = Vec::new();
    File::open(mnt.join("data"))
        .unwrap()
        .read_to_end(&mut back)
        .unwrap();
    assert_eq!(back, data);
    let io = host.io_stats(&dev.path).unwrap();
    assert!(io.write_bytes >= 4 * MIB, "{io:?}");
    assert!(io.write_ops > 0 && io.read_ops > 0, "{io:?}");

    // Unmounting while a file is open is Busy, not a generic failure.
    {
        let _open = File::open(mnt.join("data")).unwrap();
        match host.unmount(&mnt) {
            Err(HostError::Busy { .. }) => {}
            other => panic!("expected busy, got {other:?}"),
        }
    }

    // Read-only bind of a subdirectory.
    fs::create_dir(mnt.join("sub")).unwrap();
    let bind = g.mkdir("bind");
    host.bind_mount(
        &mnt.join("sub"),
        &bind,
        MountOptions {
            read_only: true,
            ..MountOptions::default()
        },
    )
    .unwrap();
    g.mounts.push(bind.clone());
    let err = File::create(bind.join("x")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    let bound = host.mounts().unwrap();
    let bound = bound.iter().find(|m| m.target == bind).unwrap();
    assert_eq!(bound.root, "/sub");
    host.unmount(&bind).unwrap();

    // Per-mount flags on a writable bind: they hold on the bind only, and
    // add to what the bind inherits (nosuid on the source mount here).
    nix::mount::mount(
        None::<&str>,
        &mnt,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND
            | nix::mount::MsFlags::MS_REMOUNT
            | nix::mount::MsFlags::MS_NOSUID,
        None::<&str>,
    )
    .unwrap();
    let (flags, ro) =
        ballast_core::model::MountFlags::parse(&["noexec", "nodev", "noatime"]).unwrap();
    assert!(!ro);
    host.bind_mount(
        &mnt.join("sub"),
        &bind,
        MountOptions {
            read_only: false,
            flags,
        },
    )
    .unwrap();
    use nix::sys::statvfs::{statvfs, FsFlags};
    let on_bind = statvfs(&bind).unwrap().flags();
    for f in [
        FsFlags::ST_NOEXEC,
        FsFlags::ST_NOSUID,
        FsFlags::ST_NODEV,
        FsFlags::ST_NOATIME,
    ] {
        assert!(
            on_bind.contains(f),
            "{f:?} missing on the bind: {on_bind:?}"
        );
    }
    assert!(!on_bind.contains(FsFlags::ST_RDONLY), "{on_bind:?}");
    File::create(bind.join("w")).expect("the bind is writable");
    let on_source = statvfs(&mnt).unwrap().flags();
    assert!(
        !on_source.contains(FsFlags::ST_NOEXEC),
        "the source changed: {on_source:?}"
    );
    host.unmount(&bind).unwrap();

    // Grow online.
    let before = host.fs_stats(&mnt).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(grown)
        .unwrap();
    host.loop_refresh_capacity(&dev.path).unwrap();
    assert_eq!(device_bytes(&dev.path), grown);
    let mut grow_offline = false;
    match host.grow_fs(fs, &dev.path, &mnt) {
        Ok(()) => {
            let after = host.fs_stats(&mnt).unwrap();
            assert!(
                after.total_bytes > before.total_bytes + (grown - initial) / 2,
                "before {before:?} after {after:?}"
            );
            assert!(after.free_bytes <= after.total_bytes);
            assert!(after.avail_bytes <= after.free_bytes);
            assert!(after.total_inodes >= after.free_inodes && after.total_inodes > 0);
        }
        // Sandboxes drop CAP_SYS_RESOURCE, which the ext4 resize ioctl needs.
        // Sandboxes drop CAP_SYS_RESOURCE, which the ext4 resize ioctl
        // needs; the error must say so, and the offline grow (what the core
        // falls back to) is tested below instead.
        Err(e) if fs == FsType::Ext4 && !host.can_grow_ext4_online() => {
            assert!(e.to_string().contains("CAP_SYS_RESOURCE"), "{e}");
            assert!(!host.can_grow_online(FsType::Ext4));
            grow_offline = true;
        }
        Err(e) => panic!("{e}"),
    }

    // Unmount: autoclear should free the device once the last user is gone.
    host.unmount(&mnt).unwrap();
    let sync = !attached(&host, &dev.path, &image);
    match wait_detached(&host, &dev.path, &image) {
        Some(took) => println!(
            "{fs}: autoclear freed {} {} after umount ({took:?})",
            dev.path.display(),
            if sync {
                "synchronously"
            } else {
                "asynchronously"
            },
        ),
        None => {
            println!("{fs}: autoclear did not free the device; detaching");
            host.loop_detach(&dev.path).unwrap();
            assert!(!attached(&host, &dev.path, &image));
        }
    }
    assert!(!host.mounts().unwrap().iter().any(|m| m.target == mnt));

    // Both are safe to repeat.
    host.unmount(&mnt).unwrap();
    host.loop_detach(&dev.path).unwrap();

    if grow_offline {
        // Attach again, grow the unmounted filesystem, and see it bigger.
        let again = host.loop_attach(&image).unwrap();
        host.grow_fs_offline(fs, &again.path).unwrap();
        host.mount(&again.path, &mnt, fs, MountOptions::default())
            .unwrap();
        drop(again);
        let after = host.fs_stats(&mnt).unwrap();
        assert!(
            after.total_bytes > before.total_bytes + (grown - initial) / 2,
            "offline grow: before {before:?} after {after:?}"
        );
        host.unmount(&mnt).unwrap();
        let _ = wait_detached(&host, &dev.path, &image);
    }
}

#[test]
fn ext4_lifecycle() {
    if privileged("ext4_lifecycle") {
        lifecycle(FsType::Ext4, 64 * MIB, 128 * MIB);
    }
}

#[test]
fn xfs_lifecycle() {
    if privileged("xfs_lifecycle") {
        lifecycle(FsType::Xfs, 320 * MIB, 640 * MIB);
    }
}

/// Parallel attaches race for the same free device; all must win one.
#[test]
fn concurrent_attach_and_autoclear_on_release() {
    if !privileged("concurrent_attach_and_autoclear_on_release") {
        return;
    }
    let mut g = Cleanup::new();
    let images: Vec<PathBuf> = (0..6)
        .map(|i| g.sparse_image(&format!("c{i}.img"), 16 * MIB))
        .collect();
    let devices: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = images
            .iter()
            .map(|img| s.spawn(move || LinuxHost::new().loop_attach(img)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let devices: Vec<_> = devices.into_iter().map(Result::unwrap).collect();
    for (d, img) in devices.iter().zip(&images) {
        g.devices.push((d.path.clone(), img.clone()));
    }
    let mut paths: Vec<_> = devices.iter().map(|d| d.path.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), images.len(), "two images share a device");

    let host = LinuxHost::new();
    for (d, img) in devices.iter().zip(&images) {
        assert!(attached(&host, &d.path, img));
    }
    // Nothing mounted: dropping the hold is the last close, autoclear frees it.
    for (d, img) in devices.into_iter().zip(&images) {
        let path = d.path.clone();
        drop(d);
        assert!(
            wait_detached(&host, &path, img).is_some(),
            "{} not freed by autoclear",
            path.display()
        );
    }
}

#[test]
fn detach_frees_a_held_device_after_release() {
    if !privileged("detach_frees_a_held_device_after_release") {
        return;
    }
    let mut g = Cleanup::new();
    let host = LinuxHost::new();
    let image = g.sparse_image("held.img", 16 * MIB);
    let dev = host.loop_attach(&image).unwrap();
    g.devices.push((dev.path.clone(), image.clone()));
    // Still held: the kernel only marks it and detach reports busy.
    match host.loop_detach(&dev.path) {
        Err(HostError::Busy { .. }) => {}
        other => panic!("expected busy, got {other:?}"),
    }
    drop(dev.hold);
    assert!(wait_detached(&host, &dev.path, &image).is_some());
    host.loop_detach(&dev.path).unwrap();
}

#[test]
fn attach_missing_image_fails() {
    if !privileged("attach_missing_image_fails") {
        return;
    }
    let err = LinuxHost::new()
        .loop_attach(Path::new("/var/tmp/ballast-no-such-image.img"))
        .unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");
}

#[test]
fn tool_timeout_kills_the_tool() {
    let start = Instant::now();
    let err = run_tool("sleep", &["5"], Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(err, HostError::TimedOut { ref op, secs: 1 } if op == "sleep 5"),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn tool_failure_carries_stderr() {
    let err = run_tool("ls", &["/nonexistent-ballast"], Duration::from_secs(10)).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("ls /nonexistent-ballast: exit status: 2"),
        "{msg}"
    );
    assert!(msg.contains("No such file"), "{msg}");
    let err = run_tool("/nonexistent/no-such-tool", &["x"], Duration::from_secs(10)).unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    // A real failure of a real tool on a non-device.
    if privileged("tool_failure_carries_stderr") {
        let err = LinuxHost::new()
            .mkfs(Path::new("/nonexistent/dev"), FsType::Ext4)
            .unwrap_err();
        match err {
            HostError::Failed { op, detail } => {
                assert_eq!(op, "mkfs.ext4 /nonexistent/dev");
                assert!(!detail.is_empty());
            }
            other => panic!("{other:?}"),
        }
    }
}

/// ramfs cannot do O_DIRECT: the attach must still work, buffered.
#[test]
fn attach_without_direct_io_support_falls_back_to_buffered() {
    if !privileged("attach_without_direct_io_support_falls_back_to_buffered") {
        return;
    }
    let mut g = Cleanup::new();
    let host = LinuxHost::new();
    let ram = g.mkdir("ram");
    nix::mount::mount(
        Some("ramfs"),
        &ram,
        Some("ramfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .expect("mount ramfs");
    g.mounts.push(ram.clone());
    let image = ram.join("img");
    File::create(&image).unwrap().set_len(8 * MIB).unwrap();
    let dev = host.loop_attach(&image).unwrap();
    g.devices.push((dev.path.clone(), image.clone()));
    assert_eq!(host.loop_direct_io(&dev.path), Some(false));
    assert!(attached(&host, &dev.path, &image));
    assert_eq!(device_bytes(&dev.path), 8 * MIB);
    drop(dev.hold);
    assert!(wait_detached(&host, &dev.path, &image).is_some());
}
