//! The volume lifecycle end to end: the real daemon, real loop devices,
//! real ext4/xfs, through the CLI.

mod common;

use std::path::PathBuf;

use common::{require_root_loop, require_tool, write_file, Daemon};

fn mountpoint(d: &Daemon, name: &str) -> PathBuf {
    PathBuf::from(d.ok(&["volume", "mount", name]).trim())
}

#[test]
fn create_mount_write_unmount_mount_keeps_data_and_enforces_size() {
    if !require_root_loop("lifecycle") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "data", "--size", "64M"]);
    let v = d.json(&["volume", "inspect", "data"]);
    assert_eq!(v["size_bytes"], 64 << 20);
    assert_eq!(v["state"], "available");
    assert_eq!(v["fs"], "ext4");

    let mp = mountpoint(&d, "data");
    assert!(mp.starts_with(&d.run), "{mp:?}");
    std::fs::write(mp.join("hello"), b"persistent").unwrap();
    write_file(&mp.join("blob"), 8 << 20).unwrap();
    let blob = std::fs::read(mp.join("blob")).unwrap();
    let v = d.json(&["volume", "inspect", "data"]);
    assert_eq!(v["state"], "mounted");
    let dev = v["device"].as_str().unwrap().to_string();
    let loopname = dev.trim_start_matches("/dev/");
    assert_eq!(
        std::fs::read_to_string(format!("/sys/block/{loopname}/loop/dio"))
            .unwrap()
            .trim(),
        "1",
        "direct I/O is on"
    );
    assert!(v["usage"]["used_bytes"].as_u64().unwrap() >= 8 << 20);

    d.ok(&["volume", "unmount", "data"]);
    d.assert_no_leftovers();
    assert_eq!(d.json(&["volume", "inspect", "data"])["state"], "available");

    let mp = mountpoint(&d, "data");
    assert_eq!(std::fs::read(mp.join("hello")).unwrap(), b"persistent");
    assert_eq!(std::fs::read(mp.join("blob")).unwrap(), blob);

    // 100 MiB cannot fit in 64 MiB: ENOSPC inside the volume.
    std::fs::remove_file(mp.join("blob")).unwrap();
    let err = write_file(&mp.join("big"), 100 << 20).expect_err("100 MiB fit in 64 MiB");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    std::fs::remove_file(mp.join("big")).unwrap();

    d.ok(&["volume", "unmount", "data"]);
    d.ok(&["volume", "rm", "data"]);
    d.assert_no_leftovers();
    assert!(d.images().is_empty(), "{:?}", d.images());
    d.fails(&["volume", "inspect", "data"]);
}

#[test]
fn repeated_mounts_and_ids_share_one_staging() {
    if !require_root_loop("mount ids") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "shared", "--size", "32M"]);
    let a = d.ok(&["volume", "mount", "shared", "--id", "a"]);
    let b = d.ok(&["volume", "mount", "shared", "--id", "b"]);
    let again = d.ok(&["volume", "mount", "shared", "--id", "a"]);
    assert_eq!(a, b);
    assert_eq!(a, again);
    let v = d.json(&["volume", "inspect", "shared"]);
    assert_eq!(v["consumers"].as_array().unwrap().len(), 2);
    // CLI consumers are set-like: one unmount per ID releases it.
    d.ok(&["volume", "unmount", "shared", "--id", "a"]);
    assert_eq!(d.json(&["volume", "inspect", "shared"])["state"], "mounted");
    // Unknown IDs are a no-op.
    d.ok(&["volume", "unmount", "shared", "--id", "nobody"]);
    assert_eq!(d.json(&["volume", "inspect", "shared"])["state"], "mounted");
    d.ok(&["volume", "unmount", "shared", "--id", "b"]);
    assert_eq!(
        d.json(&["volume", "inspect", "shared"])["state"],
        "available"
    );
    d.assert_no_leftovers();
    // rm --force of a mounted volume unmounts it first.
    d.ok(&["volume", "mount", "shared"]);
    d.fails(&["volume", "rm", "shared"]);
    d.ok(&["volume", "rm", "shared", "--force"]);
    d.assert_no_leftovers();
    assert!(d.images().is_empty());
}

#[test]
fn xfs_volume_and_its_minimum() {
    if !require_root_loop("xfs") || !require_tool("xfs", "mkfs.xfs") {
        return;
    }
    let d = Daemon::start();
    let err = d.fails(&["volume", "create", "small", "--fs", "xfs", "--size", "100M"]);
    assert!(err.contains("300MiB"), "{err}");
    assert!(d.images().is_empty());
    d.ok(&["volume", "create", "x", "--fs", "xfs", "--size", "320M"]);
    let mp = mountpoint(&d, "x");
    write_file(&mp.join("f"), 1 << 20).unwrap();
    let st = nix::sys::statvfs::statvfs(&mp).unwrap();
    let before = st.blocks() * st.fragment_size();
    // Online grow: xfs grows while mounted.
    d.ok(&["volume", "resize", "x", "--size", "640M"]);
    let st = nix::sys::statvfs::statvfs(&mp).unwrap();
    let after = st.blocks() * st.fragment_size();
    assert!(after > before + (250 << 20), "{before} -> {after}");
    assert_eq!(d.json(&["volume", "inspect", "x"])["size_bytes"], 640 << 20);
    d.ok(&["volume", "unmount", "x"]);
    d.ok(&["volume", "rm", "x"]);
    d.assert_no_leftovers();
}

#[test]
fn ext4_resize_grows_the_filesystem() {
    if !require_root_loop("ext4 resize") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "g", "--size", "64M"]);
    let mp = mountpoint(&d, "g");
    write_file(&mp.join("f"), 4 << 20).unwrap();
    let data = std::fs::read(mp.join("f")).unwrap();
    let out = d.cli(&["volume", "resize", "g", "--size", "256M"]);
    assert!(out.status.success());
    // Off a terminal, a long operation ends with one quiet line on stderr
    // and no spinner control characters.
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("growing g to 256M: done in "), "{err:?}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert_eq!(d.json(&["volume", "inspect", "g"])["size_bytes"], 256 << 20);
    // Online when the host allows it (CAP_SYS_RESOURCE), else at the next
    // mount: either way, after a remount the filesystem has the new size.
    d.ok(&["volume", "unmount", "g"]);
    let mp = mountpoint(&d, "g");
    let st = nix::sys::statvfs::statvfs(&mp).unwrap();
    assert!(
        st.blocks() * st.fragment_size() > 200 << 20,
        "filesystem did not grow: {} bytes",
        st.blocks() * st.fragment_size()
    );
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), data);
    write_file(&mp.join("more"), 150 << 20).expect("the grown space is usable");
    // Shrinking is refused and changes nothing.
    let err = d.fails(&["volume", "resize", "g", "--size", "32M"]);
    assert!(err.contains("shrinking"), "{err}");
    assert_eq!(d.json(&["volume", "inspect", "g"])["size_bytes"], 256 << 20);
    d.ok(&["volume", "rm", "g", "--force"]);
    d.assert_no_leftovers();
}

#[test]
fn state_survives_a_clean_restart() {
    if !require_root_loop("restart") {
        return;
    }
    let mut d = Daemon::start();
    d.ok(&[
        "volume", "create", "keep", "--size", "16M", "--label", "app=db",
    ]);
    let mp = mountpoint(&d, "keep");
    std::fs::write(mp.join("x"), b"1").unwrap();
    let before = d.json(&["volume", "inspect", "keep"]);
    d.restart();
    let after = d.json(&["volume", "inspect", "keep"]);
    assert_eq!(before["id"], after["id"]);
    assert_eq!(after["state"], "mounted");
    assert_eq!(after["labels"]["app"], "db");
    assert_eq!(std::fs::read(mp.join("x")).unwrap(), b"1");
    d.ok(&["volume", "unmount", "keep"]);
    d.ok(&["volume", "rm", "keep"]);
    d.assert_no_leftovers();
    let pools = d.json(&["pool", "ls"]);
    assert_eq!(pools[0]["name"], "default");
    assert_eq!(pools[0]["driver"], "loop");
}

#[test]
fn pool_accounting_refuses_what_cannot_be_backed() {
    if !require_root_loop("capacity") {
        return;
    }
    let d = Daemon::start();
    let p = d.json(&["pool", "inspect", "default"]);
    let avail = p["available_bytes"].as_u64().unwrap();
    assert!(avail > 0);
    // One byte-aligned step above what is available.
    let too_big = format!("{}K", avail / 1024 + 1024);
    let err = d.fails(&["volume", "create", "huge", "--size", &too_big]);
    assert!(err.contains("cannot hold"), "{err}");
    assert!(d.images().is_empty());
    d.ok(&["volume", "create", "a", "--size", "1G"]);
    let p2 = d.json(&["pool", "inspect", "default"]);
    assert_eq!(p2["provisioned_bytes"], 1 << 30);
    assert!(p2["available_bytes"].as_u64().unwrap() <= avail - (1 << 30) + (64 << 20));
}

#[test]
fn parallel_volumes_and_parallel_consumers_leak_nothing() {
    if !require_root_loop("parallel") {
        return;
    }
    let d = std::sync::Arc::new(Daemon::start());
    // 32 parallel create/mount/write/unmount/rm on distinct volumes.
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let d = d.clone();
            std::thread::spawn(move || {
                let name = format!("p{i}");
                d.ok(&["volume", "create", &name, "--size", "16M"]);
                let mp = PathBuf::from(d.ok(&["volume", "mount", &name]).trim());
                std::fs::write(mp.join("id"), name.as_bytes()).unwrap();
                d.ok(&["volume", "unmount", &name]);
                let mp = PathBuf::from(d.ok(&["volume", "mount", &name]).trim());
                assert_eq!(std::fs::read(mp.join("id")).unwrap(), name.as_bytes());
                d.ok(&["volume", "unmount", &name]);
                d.ok(&["volume", "rm", &name]);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker");
    }
    assert_eq!(d.json(&["volume", "ls"]).as_array().unwrap().len(), 0);
    d.assert_no_leftovers();
    assert!(d.images().is_empty(), "{:?}", d.images());

    // 32 parallel mount/unmount with distinct IDs on one volume.
    d.ok(&["volume", "create", "one", "--size", "16M"]);
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let d = d.clone();
            std::thread::spawn(move || {
                let id = format!("c{i}");
                let mp = PathBuf::from(d.ok(&["volume", "mount", "one", "--id", &id]).trim());
                // While this consumer holds it, the volume is mounted.
                std::fs::write(mp.join(&id), b"x").unwrap();
                d.ok(&["volume", "unmount", "one", "--id", &id]);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker");
    }
    let v = d.json(&["volume", "inspect", "one"]);
    assert_eq!(v["state"], "available");
    assert_eq!(v["consumers"].as_array().unwrap().len(), 0);
    d.assert_no_leftovers();
    let mp = mountpoint(&d, "one");
    let files = std::fs::read_dir(&mp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with('c'))
        .count();
    assert_eq!(files, 32, "every consumer wrote while mounted");
    d.ok(&["volume", "unmount", "one"]);
    d.ok(&["volume", "rm", "one"]);
    d.assert_no_leftovers();
}

#[test]
fn dir_pool_fallback_serves_plain_directories() {
    // The dir driver needs no root; its sizes are advisory.
    let d = Daemon::start_with(&["--default-driver", "dir"], &[]);
    let pools = d.json(&["pool", "ls"]);
    assert_eq!(pools[0]["driver"], "dir");
    d.ok(&["volume", "create", "d1", "--size", "1P"]);
    let err = d.fails(&["volume", "create", "d2", "--fs", "ext4"]);
    assert!(err.contains("dir driver"), "{err}");
    let mp = mountpoint(&d, "d1");
    assert!(mp.starts_with(d.pool_dir()), "{mp:?}");
    std::fs::write(mp.join("f"), b"x").unwrap();
    d.ok(&["volume", "unmount", "d1"]);
    let mp2 = mountpoint(&d, "d1");
    assert_eq!(std::fs::read(mp2.join("f")).unwrap(), b"x");
    d.ok(&["volume", "unmount", "d1"]);
    d.ok(&["volume", "rm", "d1"]);
    assert!(!mp.exists());
    assert!(d.images().is_empty());
}
