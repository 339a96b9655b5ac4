//! btrfs pools end to end: the real daemon on real btrfs filesystems made
//! on loop devices, through the CLI and the REST API. A pool grows while a
//! writer fills it; snapshots and clones keep their data apart; the pool is
//! mounted again at start; crashes in a pool create, a disk add or a
//! snapshot are settled at the next start; bad input changes nothing.
//!
//! Disk files and the loop devices tests attach themselves live under the
//! daemon's scratch directory, so its drop guard unmounts and detaches
//! everything even when a test fails half-way; the tests that finish delete
//! their pools and check that nothing of theirs is left on the host.
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ballast_core::failpoint::ALL;
use common::{require_root_loop, require_tool, Daemon};
use serde_json::Value;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
/// For write sizes.
const MIB_USIZE: usize = 1 << 20;

/// Every pool failpoint and the crash test that covers it.
const POOL_FAILPOINTS: [&str; 5] = [
    "poolcreate.after_intent",
    "poolcreate.after_mkfs",
    "pooladd.after_intent",
    "pooladd.after_file",
    "pooladd.after_device_add",
];

fn prerequisites(test: &str) -> bool {
    require_root_loop(test) && require_tool(test, "mkfs.btrfs") && require_tool(test, "btrfs")
}

/// A daemon whose watcher looks every 200 ms.
fn daemon() -> Daemon {
    Daemon::start_with(&["--watch-interval", "200ms"], &[])
}

fn disk_dir(d: &Daemon) -> PathBuf {
    d.dir.path().canonicalize().unwrap().join("disks")
}

/// `.img` files in a directory, sorted.
fn images_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".img"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn pool(d: &Daemon, name: &str) -> Value {
    d.json(&["pool", "inspect", name])
}

fn pool_names(d: &Daemon) -> Vec<String> {
    d.json(&["pool", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect()
}

fn u64_field(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// The disk paths a pool records.
fn recorded_disks(p: &Value) -> Vec<String> {
    p["disks"]
        .as_array()
        .unwrap_or_else(|| panic!("no disks in {p}"))
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect()
}

/// Devices of the btrfs mounted at `mnt`, as `btrfs filesystem show` has
/// them, with loop devices replaced by their backing files.
fn fs_members(mnt: &Path) -> Vec<String> {
    let out = Command::new("btrfs")
        .args(["filesystem", "show", "--raw"])
        .arg(mnt)
        .output()
        .expect("btrfs filesystem show");
    assert!(
        out.status.success(),
        "btrfs filesystem show {}: {}",
        mnt.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let loops = common::loop_devices();
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(" path ").nth(1))
        .map(|dev| {
            let dev = dev.trim();
            loops
                .iter()
                .find(|(d, _)| d == dev)
                .map_or(dev.to_string(), |(_, b)| b.display().to_string())
        })
        .collect();
    v.sort();
    v
}

fn events(d: &Daemon) -> Vec<Value> {
    let (status, v) = d.http("GET", "/v1/events?limit=1000", b"");
    assert_eq!(status, 200, "{v}");
    v.as_array().unwrap().clone()
}

fn events_of(d: &Daemon, kind: &str, pool: &str) -> Vec<String> {
    events(d)
        .iter()
        .filter(|e| e["kind"] == kind && e["pool"] == pool)
        .map(|e| e["message"].as_str().unwrap().to_string())
        .collect()
}

/// Poll `f` until it is true, or fail with `what` and the daemon's log.
fn wait_for(d: &Daemon, what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn mount(d: &Daemon, name: &str) -> PathBuf {
    PathBuf::from(d.ok(&["volume", "mount", name]).trim())
}

/// Put 100 MiB in a new volume of `pool`: a fresh btrfs is about 1% full
/// (as `df` counts), so this takes a small pool past a 5% watermark.
fn put_data(d: &Daemon, pool: &str) -> PathBuf {
    let name = format!("{pool}-data");
    d.ok(&["volume", "create", &name, "--pool", pool, "--size", "200M"]);
    let mp = mount(d, &name);
    common::write_file(&mp.join("fill"), 100 * MIB_USIZE).unwrap();
    mp
}

/// A loop device the test attached itself (not autoclear), detached when
/// dropped.
struct LoopGuard {
    dev: String,
}

impl LoopGuard {
    fn new(image: &Path, size: u64) -> LoopGuard {
        std::fs::create_dir_all(image.parent().unwrap()).unwrap();
        let f = std::fs::File::create(image).unwrap();
        f.set_len(size).unwrap();
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()
            .expect("losetup");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        LoopGuard {
            dev: String::from_utf8(out.stdout).unwrap().trim().to_string(),
        }
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// A mount the test made itself, unmounted when dropped.
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Delete what the test made through the daemon, then check the host.
fn teardown(d: &Daemon) {
    clean(d);
    d.assert_no_leftovers();
}

/// Delete every snapshot, volume and pool but the default through the daemon.
fn clean(d: &Daemon) {
    for s in d.json(&["snapshot", "ls"]).as_array().unwrap() {
        d.ok(&["snapshot", "rm", s["name"].as_str().unwrap()]);
    }
    for v in d.json(&["volume", "ls"]).as_array().unwrap() {
        d.ok(&["volume", "rm", "--force", v["name"].as_str().unwrap()]);
    }
    for p in pool_names(d) {
        if p != "default" {
            d.ok(&["pool", "rm", &p]);
        }
    }
}

// ----- growth -----------------------------------------------------------------

/// The acceptance scenario: one 1 GiB disk file, watermark 60%, step 1 GiB,
/// max 4 GiB, a 3 GiB volume and a writer putting 900 MiB in, 50 MiB at a
/// time with short pauses. The writer never gets an error; a second disk
/// file appears and the pool's capacity grows.
#[test]
fn the_pool_grows_while_a_writer_fills_it() {
    if !prerequisites("the_pool_grows_while_a_writer_fills_it") {
        return;
    }
    let d = daemon();
    let disks = disk_dir(&d);
    let first = disks.join("p.img");
    d.ok(&[
        "pool",
        "create",
        "p",
        "--driver",
        "btrfs",
        "--disk-file",
        first.to_str().unwrap(),
        "--disk-size",
        "1G",
        "--high-watermark",
        "60%",
        "--grow-step",
        "1G",
        "--max-size",
        "4G",
    ]);
    let p0 = pool(&d, "p");
    assert_eq!(p0["driver"], "btrfs");
    assert_eq!(u64_field(&p0, "capacity_bytes"), GIB, "{p0}");
    // A pool that can grow offers its max size.
    assert_eq!(u64_field(&p0, "available_bytes"), 4 * GIB, "{p0}");
    assert_eq!(images_in(&disks), ["p.img"]);

    d.ok(&["volume", "create", "v", "--pool", "p", "--size", "3G"]);
    let mp = mount(&d, "v");
    let v = d.json(&["volume", "inspect", "v"]);
    assert_eq!(v["driver"], "btrfs");
    assert_eq!(u64_field(&v["usage"], "total_bytes"), 3 * GIB, "{v}");

    let start = Instant::now();
    for i in 0..18 {
        let f = mp.join(format!("chunk-{i:02}"));
        if let Err(e) = common::write_file(&f, 50 * MIB_USIZE) {
            panic!(
                "the writer got an error at {} MiB: {e}\n{}",
                i * 50,
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("900 MiB written in {:?}", start.elapsed());

    let p1 = pool(&d, "p");
    assert_eq!(
        images_in(&disks),
        ["p-1.img", "p.img"],
        "a second disk file: {p1}"
    );
    assert_eq!(u64_field(&p1, "capacity_bytes"), 2 * GIB, "{p1}");
    assert_eq!(recorded_disks(&p1).len(), 2, "{p1}");
    let mnt = PathBuf::from(p1["path"].as_str().unwrap());
    let mut want = recorded_disks(&p1);
    want.sort();
    assert_eq!(
        fs_members(&mnt),
        want,
        "the filesystem's devices are the record's"
    );
    let added = events_of(&d, "remediation", "p");
    assert_eq!(added.len(), 1, "{added:?}");
    assert!(added[0].contains("p-1.img"), "{added:?}");
    // The volume's usage comes from its qgroup, not the pool's statvfs.
    let used = u64_field(&d.json(&["volume", "inspect", "v"])["usage"], "used_bytes");
    assert!(used <= 950 * MIB, "qgroup usage {used}");
    teardown(&d);
}

/// A loop pool on a plain directory cannot add disks: it warns once per
/// crossing; a btrfs pool at its max size raises one critical event.
#[test]
fn pools_that_cannot_grow_warn_once() {
    if !prerequisites("pools_that_cannot_grow_warn_once") {
        return;
    }
    let d = daemon();
    let lp = d.dir.path().canonicalize().unwrap().join("lp");
    // Any used space is above 1%.
    d.ok(&[
        "pool",
        "create",
        "lp",
        "--driver",
        "loop",
        "--path",
        lp.to_str().unwrap(),
        "--high-watermark",
        "1%",
    ]);
    // A btrfs pool past its watermark that may not grow.
    let file = disk_dir(&d).join("m.img");
    d.ok(&[
        "pool",
        "create",
        "m",
        "--driver",
        "btrfs",
        "--disk-file",
        file.to_str().unwrap(),
        "--disk-size",
        "512M",
        "--high-watermark",
        "5%",
        "--grow-step",
        "512M",
        "--max-size",
        "512M",
    ]);
    put_data(&d, "m");
    wait_for(
        &d,
        "the warning and the critical event",
        Duration::from_secs(10),
        || !events_of(&d, "warning", "lp").is_empty() && !events_of(&d, "critical", "m").is_empty(),
    );
    // Ten more passes raise nothing new.
    std::thread::sleep(Duration::from_secs(2));
    let warnings = events_of(&d, "warning", "lp");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("cannot add disks"), "{warnings:?}");
    let critical = events_of(&d, "critical", "m");
    assert_eq!(critical.len(), 1, "{critical:?}");
    assert!(critical[0].contains("max size"), "{critical:?}");
    assert_eq!(images_in(&disk_dir(&d)), ["m.img"]);
    teardown(&d);
}

/// Spare disks are added before disk files, and an adopted btrfs is used as
/// it is and only forgotten on delete.
#[test]
fn spare_disks_and_an_adopted_filesystem() {
    if !prerequisites("spare_disks_and_an_adopted_filesystem") {
        return;
    }
    let d = daemon();
    let root = d.dir.path().canonicalize().unwrap();
    let spare = LoopGuard::new(&root.join("devs/spare.img"), 512 * MIB);
    let file = disk_dir(&d).join("s.img");
    d.ok(&[
        "pool",
        "create",
        "s",
        "--driver",
        "btrfs",
        "--disk-file",
        file.to_str().unwrap(),
        "--disk-size",
        "512M",
        "--high-watermark",
        "5%",
        "--spare-disk",
        &spare.dev,
        "--max-size",
        "1G",
    ]);
    put_data(&d, "s");
    wait_for(&d, "the spare to join", Duration::from_secs(10), || {
        recorded_disks(&pool(&d, "s")).len() == 2
    });
    let p = pool(&d, "s");
    assert_eq!(recorded_disks(&p)[1], spare.dev, "{p}");
    assert_eq!(p["growth"]["spare_disks"], serde_json::json!([]), "{p}");
    let mnt = PathBuf::from(p["path"].as_str().unwrap());
    assert_eq!(fs_members(&mnt).len(), 2);
    // Then it is at its max size: critical, once.
    wait_for(&d, "the critical event", Duration::from_secs(10), || {
        !events_of(&d, "critical", "s").is_empty()
    });

    // Adopt a btrfs mounted by someone else.
    let own = LoopGuard::new(&root.join("devs/own.img"), 512 * MIB);
    run(Command::new("mkfs.btrfs").args(["-q", &own.dev]));
    let at = root.join("adopt");
    std::fs::create_dir_all(&at).unwrap();
    run(Command::new("mount").arg(&own.dev).arg(&at));
    let _m = MountGuard(at.clone());
    d.ok(&[
        "pool",
        "create",
        "a",
        "--driver",
        "btrfs",
        "--path",
        at.to_str().unwrap(),
    ]);
    let p = pool(&d, "a");
    assert_eq!(p["adopted"], true, "{p}");
    d.ok(&["volume", "create", "av", "--pool", "a", "--size", "64M"]);
    let mp = mount(&d, "av");
    assert!(mp.starts_with(&at), "{}", mp.display());
    common::write_file(&mp.join("f"), MIB_USIZE).unwrap();
    d.ok(&["volume", "rm", "--force", "av"]);
    d.ok(&["pool", "rm", "a"]);
    assert!(
        common::mount_targets().contains(&at),
        "deleting an adopted pool leaves its mount"
    );
    drop(_m);
    drop(own);
    clean(&d);
    drop(spare);
    d.assert_no_leftovers();
}

// ----- volumes, snapshots, clones ------------------------------------------------

/// A volume's size is a hard limit (its qgroup), resize raises it; snapshot
/// and clone are O(1) and keep their data apart from the source's.
#[test]
fn snapshots_and_clones_keep_their_data() {
    if !prerequisites("snapshots_and_clones_keep_their_data") {
        return;
    }
    let d = daemon();
    let file = disk_dir(&d).join("p.img");
    d.ok(&[
        "pool",
        "create",
        "p",
        "--driver",
        "btrfs",
        "--disk-file",
        file.to_str().unwrap(),
        "--disk-size",
        "1G",
        "--overcommit",
        "4",
    ]);
    d.ok(&["volume", "create", "src", "--pool", "p", "--size", "160M"]);
    let mp = mount(&d, "src");
    // The size is a hard limit: 200 MiB does not fit in 160 MiB...
    let err = common::write_file(&mp.join("big"), 200 * MIB_USIZE).unwrap_err();
    assert!(
        matches!(err.raw_os_error(), Some(libc::EDQUOT | libc::ENOSPC)),
        "{err}"
    );
    std::fs::remove_file(mp.join("big")).unwrap();
    // ...and after a resize it does.
    d.ok(&["volume", "resize", "src", "--size", "320M"]);
    common::write_file(&mp.join("big"), 200 * MIB_USIZE).unwrap();
    common::write_file(&mp.join("small"), MIB_USIZE).unwrap();
    let big = sha256(&mp.join("big"));
    let small = sha256(&mp.join("small"));

    let t = Instant::now();
    d.ok(&["volume", "snapshot", "src", "s1"]);
    eprintln!("snapshot through the CLI: {:?}", t.elapsed());
    let t = Instant::now();
    d.ok(&["volume", "create", "c1", "--from-snapshot", "s1"]);
    eprintln!("clone through the CLI: {:?}", t.elapsed());
    let s = d.json(&["snapshot", "inspect", "s1"]);
    assert_eq!(s["ready"], true, "{s}");
    let cm = mount(&d, "c1");
    assert_ne!(cm, mp);
    assert_eq!(
        sha256(&cm.join("big")),
        big,
        "the clone's data is the source's"
    );
    assert_eq!(sha256(&cm.join("small")), small);

    // Later writes to the source do not reach the clone (or the snapshot).
    common::write_file(&mp.join("small"), 2 * MIB_USIZE).unwrap();
    std::fs::write(mp.join("new"), b"after the snapshot").unwrap();
    assert_ne!(sha256(&mp.join("small")), small);
    assert_eq!(sha256(&cm.join("small")), small, "the clone kept its data");
    assert!(!cm.join("new").exists());
    // And the clone's writes do not reach the source.
    std::fs::write(cm.join("clone-only"), b"x").unwrap();
    assert!(!mp.join("clone-only").exists());

    // A clone of the volume itself, bigger than its source.
    d.ok(&[
        "volume",
        "create",
        "c2",
        "--from-volume",
        "src",
        "--size",
        "512M",
    ]);
    let c2 = mount(&d, "c2");
    assert_eq!(
        std::fs::read(c2.join("new")).unwrap(),
        b"after the snapshot"
    );
    let v = d.json(&["volume", "inspect", "c2"]);
    assert_eq!(u64_field(&v["usage"], "total_bytes"), 512 * MIB, "{v}");

    // Snapshots outlive their volume; restoring one still works.
    d.ok(&["volume", "rm", "--force", "src"]);
    d.ok(&["volume", "create", "c3", "--from-snapshot", "s1"]);
    let c3 = mount(&d, "c3");
    assert_eq!(sha256(&c3.join("big")), big);
    let ls = d.ok(&["snapshot", "ls", "src"]);
    assert!(ls.contains("s1"), "{ls}");
    teardown(&d);
}

/// One sample of a /metrics family for a pool.
fn pool_metric(d: &Daemon, family: &str, pool: &str) -> u64 {
    let (status, _, body) = d.tcp_get("/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    let key = format!("{family}{{pool=\"{pool}\",driver=\"btrfs\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .unwrap_or_else(|| panic!("no {key} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Commit every filesystem, so btrfs accounts what was written in its
/// qgroups.
fn sync_all() {
    nix::unistd::sync();
}

/// The issue's repro: a pool of one 1 GiB disk file growing by 1 GiB up to
/// 4 GiB holds a 3 GiB volume; a snapshot of it shares every extent, so it
/// is charged its exclusive bytes (a node), not 3 GiB, and is admitted.
/// `pool inspect` and /metrics show the nominal sum and the charge apart;
/// the charge follows the live qgroup figures as the snapshot's source and
/// the clone are written; a volume of its own size is still charged in
/// full and refused when it does not fit.
#[test]
fn cow_snapshots_and_clones_are_charged_their_exclusive_bytes() {
    if !prerequisites("cow_snapshots_and_clones_are_charged_their_exclusive_bytes") {
        return;
    }
    let d = Daemon::start_with(&["--watch-interval", "1h"], &[]);
    let file = disk_dir(&d).join("p.img");
    d.ok(&[
        "pool",
        "create",
        "p",
        "--driver",
        "btrfs",
        "--disk-file",
        file.to_str().unwrap(),
        "--disk-size",
        "1G",
        "--grow-step",
        "1G",
        "--max-size",
        "4G",
    ]);
    d.ok(&["volume", "create", "db", "--pool", "p", "--size", "3G"]);
    let mp = mount(&d, "db");
    common::write_file(&mp.join("data"), 64 * MIB_USIZE).unwrap();
    sync_all();
    let p0 = pool(&d, "p");
    assert_eq!(u64_field(&p0, "provisioned_bytes"), 3 * GIB, "{p0}");
    assert_eq!(u64_field(&p0, "exclusive_bytes"), 3 * GIB, "{p0}");
    assert_eq!(u64_field(&p0, "available_bytes"), GIB, "{p0}");

    // Refused before the fix: "cannot hold 3221225472 more bytes".
    d.ok(&["volume", "snapshot", "db", "before"]);
    let p1 = pool(&d, "p");
    assert_eq!(u64_field(&p1, "provisioned_bytes"), 6 * GIB, "{p1}");
    let charged = u64_field(&p1, "exclusive_bytes");
    assert!(
        (3 * GIB..3 * GIB + MIB).contains(&charged),
        "the snapshot is charged a node or so: {p1}"
    );
    assert_eq!(u64_field(&p1, "available_bytes"), 4 * GIB - charged, "{p1}");
    // A clone of it is admitted the same way.
    d.ok(&["volume", "create", "db2", "--from-snapshot", "before"]);
    let p2 = pool(&d, "p");
    assert_eq!(u64_field(&p2, "provisioned_bytes"), 9 * GIB, "{p2}");
    let charged = u64_field(&p2, "exclusive_bytes");
    assert!((3 * GIB..3 * GIB + 2 * MIB).contains(&charged), "{p2}");
    assert_eq!(
        pool_metric(&d, "ballast_pool_provisioned_bytes", "p"),
        9 * GIB
    );
    let metric = pool_metric(&d, "ballast_pool_exclusive_bytes", "p");
    assert!((3 * GIB..3 * GIB + 2 * MIB).contains(&metric), "{metric}");
    let text = d.ok(&["pool", "inspect", "p"]);
    assert!(
        text.contains("provisioned:   9GiB") && text.contains("exclusive:     3.0GiB"),
        "{text}"
    );

    // A volume is charged its full size: 2 GiB more does not fit in 4 GiB.
    let err = d.fails(&["volume", "create", "big", "--pool", "p", "--size", "2G"]);
    assert!(err.contains("cannot hold"), "{err}");

    // The clone's own writes become its exclusive bytes...
    let cm = mount(&d, "db2");
    common::write_file(&cm.join("own"), 48 * MIB_USIZE).unwrap();
    sync_all();
    let p3 = pool(&d, "p");
    let grown = u64_field(&p3, "exclusive_bytes");
    assert!(grown >= charged + 48 * MIB, "{charged} -> {p3}");
    // ...and so do the snapshot's extents once its source and the clone,
    // which shared them, let go of them.
    std::fs::remove_file(mp.join("data")).unwrap();
    std::fs::remove_file(cm.join("data")).unwrap();
    sync_all();
    let p4 = pool(&d, "p");
    let after = u64_field(&p4, "exclusive_bytes");
    assert!(after >= grown + 64 * MIB, "{grown} -> {p4}");
    assert_eq!(u64_field(&p4, "provisioned_bytes"), 9 * GIB, "{p4}");
    assert_eq!(
        u64_field(&p4, "available_bytes"),
        4 * GIB - after,
        "admission sees the live figure: {p4}"
    );
    teardown(&d);
}

/// The pool is mounted again at start: a stop, an unmount (as a reboot
/// would) and a start find the volume and its data.
#[test]
fn the_pool_is_mounted_again_at_start() {
    if !prerequisites("the_pool_is_mounted_again_at_start") {
        return;
    }
    let mut d = daemon();
    let disks = disk_dir(&d);
    d.ok(&[
        "pool",
        "create",
        "p",
        "--driver",
        "btrfs",
        "--disk-file",
        disks.join("p.img").to_str().unwrap(),
        "--disk-size",
        "512M",
        "--high-watermark",
        "5%",
        "--grow-step",
        "512M",
        "--max-size",
        "1G",
    ]);
    // Two disk files, so the mount needs both attached.
    let mp = put_data(&d, "p");
    wait_for(&d, "a second disk", Duration::from_secs(10), || {
        recorded_disks(&pool(&d, "p")).len() == 2
    });
    std::fs::write(mp.join("f"), b"kept").unwrap();
    let mnt = PathBuf::from(pool(&d, "p")["path"].as_str().unwrap());
    d.stop();
    nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()).unwrap();
    // Autoclear frees the loop devices once the mount is gone.
    let root = d.dir.path().canonicalize().unwrap();
    wait_for(
        &d,
        "the loop devices to go",
        Duration::from_secs(10),
        || {
            !common::loop_devices()
                .iter()
                .any(|(_, b)| b.starts_with(&root))
        },
    );
    d.restart();
    assert!(common::mount_targets().contains(&mnt), "{}", d.log());
    assert_eq!(fs_members(&mnt).len(), 2);
    let v = d.json(&["volume", "inspect", "p-data"]);
    assert_eq!(v["state"], "mounted", "{v}");
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"kept");
    teardown(&d);
}

// ----- crashes -------------------------------------------------------------------

#[test]
fn every_pool_failpoint_has_a_scenario() {
    for fp in ALL.iter().filter(|f| f.starts_with("pool")) {
        assert!(POOL_FAILPOINTS.contains(fp), "{fp} has no crash test here");
    }
    for fp in POOL_FAILPOINTS {
        assert!(ALL.contains(&fp), "{fp} is not a failpoint");
    }
}

/// Insist the daemon died by SIGKILL at `failpoint`, then start it again.
fn died_at(d: &mut Daemon, failpoint: &str, env: &[(&str, &str)]) {
    d.wait_killed_at(failpoint);
    d.restart_with(env);
}

/// A crash in a disk add: the next start records the disk if the
/// filesystem has it and discards it if not; the watcher then adds what is
/// still missing. In the end the filesystem and the record hold the same
/// two disks, and the disk directory only their files.
fn crash_in_disk_add(failpoint: &str) {
    let mut d = daemon();
    let disks = disk_dir(&d);
    d.ok(&[
        "pool",
        "create",
        "p",
        "--driver",
        "btrfs",
        "--disk-file",
        disks.join("p.img").to_str().unwrap(),
        "--disk-size",
        "512M",
        "--high-watermark",
        "50%",
        "--grow-step",
        "512M",
        "--max-size",
        "1G",
    ]);
    d.ok(&["volume", "create", "v", "--pool", "p", "--size", "400M"]);
    let mp = mount(&d, "v");
    std::fs::write(mp.join("f"), b"kept").unwrap();
    // Armed, the daemon dies in the add that filling the pool past its
    // watermark sets off.
    d.restart_with(&[("BALLAST_FAILPOINTS", failpoint)]);
    common::write_file(&mp.join("fill"), 250 * MIB_USIZE).unwrap();
    died_at(&mut d, failpoint, &[]);

    let settled = events_of(&d, "reconcile", "p");
    let want = if failpoint == "pooladd.after_device_add" {
        "finished at start"
    } else {
        "undone at start"
    };
    assert!(
        settled.iter().any(|m| m.contains(want)),
        "{failpoint}: {settled:?}"
    );
    wait_for(&d, "two disks", Duration::from_secs(20), || {
        recorded_disks(&pool(&d, "p")).len() == 2
    });
    // Settled: no further add (the pool is at its max size).
    std::thread::sleep(Duration::from_secs(1));
    let p = pool(&d, "p");
    assert_eq!(recorded_disks(&p).len(), 2, "{p}");
    let mut recorded = recorded_disks(&p);
    recorded.sort();
    let mnt = PathBuf::from(p["path"].as_str().unwrap());
    assert_eq!(
        fs_members(&mnt),
        recorded,
        "{failpoint}: filesystem vs record"
    );
    assert_eq!(
        images_in(&disks),
        ["p-1.img", "p.img"],
        "{failpoint}: disk files"
    );
    // Rolled back, the watcher added the disk again, once.
    let adds = events_of(&d, "remediation", "p").len();
    assert_eq!(adds, usize::from(want == "undone at start"), "{failpoint}");
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"kept");
    teardown(&d);
}

#[test]
fn crash_after_the_add_intent() {
    if !prerequisites("crash_after_the_add_intent") {
        return;
    }
    crash_in_disk_add("pooladd.after_intent");
}

#[test]
fn crash_after_the_disk_file() {
    if !prerequisites("crash_after_the_disk_file") {
        return;
    }
    crash_in_disk_add("pooladd.after_file");
}

#[test]
fn crash_after_the_device_add() {
    if !prerequisites("crash_after_the_device_add") {
        return;
    }
    crash_in_disk_add("pooladd.after_device_add");
}

/// A crash in a pool create: the next start takes it back (no record, no
/// disk file, no mount, no loop device) and the same create then works.
fn crash_in_pool_create(failpoint: &str) {
    let mut d = daemon();
    let disks = disk_dir(&d);
    let file = disks.join("p.img");
    let args = [
        "pool",
        "create",
        "p",
        "--driver",
        "btrfs",
        "--disk-file",
        file.to_str().unwrap(),
        "--disk-size",
        "512M",
    ];
    d.restart_with(&[("BALLAST_FAILPOINTS", failpoint)]);
    let out = d.cli(&args);
    assert!(!out.status.success(), "{failpoint}: the create succeeded");
    died_at(&mut d, failpoint, &[]);
    assert_eq!(pool_names(&d), ["default"], "{failpoint}");
    assert_eq!(images_in(&disks), Vec::<String>::new(), "{failpoint}");
    d.assert_no_leftovers();
    assert!(
        events_of(&d, "reconcile", "p")
            .iter()
            .any(|m| m.contains("pool create undone")),
        "{failpoint}"
    );
    d.ok(&args);
    d.ok(&["volume", "create", "v", "--pool", "p", "--size", "64M"]);
    teardown(&d);
}

#[test]
fn crash_after_the_pool_intent() {
    if !prerequisites("crash_after_the_pool_intent") {
        return;
    }
    crash_in_pool_create("poolcreate.after_intent");
}

#[test]
fn crash_after_mkfs() {
    if !prerequisites("crash_after_mkfs") {
        return;
    }
    crash_in_pool_create("poolcreate.after_mkfs");
}

/// A crash right after a btrfs snapshot: the next start deletes it.
#[test]
fn crash_after_a_snapshot_drops_it() {
    if !prerequisites("crash_after_a_snapshot_drops_it") {
        return;
    }
    let mut d = daemon();
    let file = disk_dir(&d).join("p.img");
    d.ok(&[
        "pool",
        "create",
        "p",
        "--driver",
        "btrfs",
        "--disk-file",
        file.to_str().unwrap(),
        "--disk-size",
        "512M",
        "--overcommit",
        "2",
    ]);
    d.ok(&["volume", "create", "v", "--pool", "p", "--size", "64M"]);
    let mp = mount(&d, "v");
    std::fs::write(mp.join("f"), b"kept").unwrap();
    d.restart_with(&[("BALLAST_FAILPOINTS", "snapshot.after_copy")]);
    let out = d.cli(&["volume", "snapshot", "v", "s"]);
    assert!(!out.status.success());
    died_at(&mut d, "snapshot.after_copy", &[]);
    assert_eq!(d.json(&["snapshot", "ls"]), serde_json::json!([]));
    let mnt = PathBuf::from(pool(&d, "p")["path"].as_str().unwrap());
    let left: Vec<_> = std::fs::read_dir(mnt.join("snapshots")).unwrap().collect();
    assert!(
        left.is_empty(),
        "the snapshot's subvolume is gone: {left:?}"
    );
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"kept");
    d.ok(&["volume", "snapshot", "v", "s"]);
    teardown(&d);
}

// ----- bad input -----------------------------------------------------------------

/// What a refused request must leave alone.
fn observe(d: &Daemon) -> (Vec<String>, Vec<String>, Vec<String>, Vec<String>) {
    let mut host = d.host_leftovers();
    host.sort();
    let snaps = d
        .json(&["snapshot", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    (pool_names(d), images_in(&disk_dir(d)), host, snaps)
}

fn refused(d: &Daemon, args: &[&str], want: &str) {
    let before = observe(d);
    let err = d.fails(args);
    assert!(
        err.contains(want),
        "ballast {args:?}: {err:?} lacks {want:?}"
    );
    assert_eq!(observe(d), before, "ballast {args:?} changed something");
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    if !prerequisites("bad_input_is_refused_and_changes_nothing") {
        return;
    }
    let d = daemon();
    let root = d.dir.path().canonicalize().unwrap();
    let disks = disk_dir(&d);
    let p_file = disks.join("p.img");
    let p_file = p_file.to_str().unwrap();
    d.ok(&[
        "pool",
        "create",
        "p",
        "--driver",
        "btrfs",
        "--disk-file",
        p_file,
        "--disk-size",
        "512M",
    ]);
    let mnt = pool(&d, "p")["path"].as_str().unwrap().to_string();
    let b = LoopGuard::new(&root.join("devs/b.img"), 256 * MIB);
    d.ok(&["pool", "create", "b", "--driver", "btrfs", "--disk", &b.dev]);
    let small = LoopGuard::new(&root.join("devs/small.img"), 64 * MIB);
    let mounted = LoopGuard::new(&root.join("devs/mounted.img"), 256 * MIB);
    run(Command::new("mkfs.ext4").args(["-q", &mounted.dev]));
    let at = root.join("mounted");
    std::fs::create_dir_all(&at).unwrap();
    run(Command::new("mount").arg(&mounted.dev).arg(&at));
    let _m = MountGuard(at);

    let btrfs = |extra: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = ["pool", "create", "x", "--driver", "btrfs"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let file_x = disks.join("x.img").to_str().unwrap().to_string();
    let with_file = |extra: &[&str]| -> Vec<String> {
        let mut v = btrfs(&[]);
        v.extend(["--disk-file".into(), file_x.clone()]);
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(Vec<String>, &str)> = vec![
        // Disks: mounted, already in a pool, too small, not a device.
        (
            [btrfs(&[]), vec!["--disk".into(), mounted.dev.clone()]].concat(),
            "is mounted at",
        ),
        (
            [btrfs(&[]), vec!["--disk".into(), b.dev.clone()]].concat(),
            "already in pool \"b\"",
        ),
        (
            [btrfs(&[]), vec!["--disk".into(), small.dev.clone()]].concat(),
            "too small for btrfs",
        ),
        (
            [btrfs(&[]), vec!["--disk".into(), p_file.to_string()]].concat(),
            "not a block device",
        ),
        (
            [
                with_file(&["--disk-size", "512M"]),
                vec!["--spare-disk".into(), b.dev.clone()],
            ]
            .concat(),
            "already in pool \"b\"",
        ),
        (with_file(&["--disk-size", "64M"]), "too small for btrfs"),
        // Disk files inside another pool, or taken.
        (
            [
                btrfs(&["--disk-size", "512M"]),
                vec!["--disk-file".into(), format!("{mnt}/x.img")],
            ]
            .concat(),
            "inside pool \"p\"",
        ),
        (
            [
                btrfs(&["--disk-size", "512M"]),
                vec![
                    "--disk-file".into(),
                    d.pool_dir().join("x.img").to_str().unwrap().to_string(),
                ],
            ]
            .concat(),
            "inside pool \"default\"",
        ),
        (
            [
                btrfs(&["--disk-size", "512M"]),
                vec!["--disk-file".into(), p_file.to_string()],
            ]
            .concat(),
            "exists",
        ),
        // Watermarks outside 1-99%.
        (
            with_file(&["--disk-size", "512M", "--high-watermark", "0%"]),
            "between 1% and 99%",
        ),
        (
            with_file(&["--disk-size", "512M", "--high-watermark", "100%"]),
            "between 1% and 99%",
        ),
        (
            with_file(&["--disk-size", "512M", "--high-watermark", "150"]),
            "between 1% and 99%",
        ),
        (
            with_file(&["--disk-size", "512M", "--high-watermark", "abc"]),
            "between 1% and 99%",
        ),
        // Max size below the current size; grow step 0 or without a max.
        (
            with_file(&["--disk-size", "1G", "--max-size", "512M"]),
            "below the pool's current size",
        ),
        (
            with_file(&[
                "--disk-size",
                "512M",
                "--grow-step",
                "0",
                "--max-size",
                "2G",
            ]),
            "greater than zero",
        ),
        (
            with_file(&["--disk-size", "512M", "--grow-step", "512M"]),
            "needs --max-size",
        ),
        // Neither or two sources; btrfs flags on a loop pool.
        (btrfs(&[]), "exactly one of"),
        (
            vec![
                "pool".into(),
                "create".into(),
                "x".into(),
                "--driver".into(),
                "loop".into(),
                "--grow-step".into(),
                "1G".into(),
            ],
            "btrfs pools only",
        ),
        (
            vec![
                "pool".into(),
                "create".into(),
                "x".into(),
                "--driver".into(),
                "zfs".into(),
            ],
            "use loop, dir, btrfs or rbd",
        ),
    ];
    for (args, want) in &cases {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(&d, &refs, want);
    }
    // The same through REST: 400 with the API's error shape.
    let (status, body) = d.http(
        "POST",
        "/v1/pools",
        br#"{"name":"x","driver":"btrfs","disk_file":"/var/tmp/x.img","disk_size":"1G","high_watermark":"100%"}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "invalid_argument", "{body}");

    // Snapshots and clones.
    d.ok(&["volume", "create", "v", "--pool", "p", "--size", "64M"]);
    d.ok(&["volume", "create", "w", "--pool", "p", "--size", "64M"]);
    d.ok(&["volume", "snapshot", "v", "s"]);
    refused(&d, &["volume", "snapshot", "missing", "s2"], "not found");
    refused(&d, &["volume", "snapshot", "w", "s"], "already exists");
    refused(
        &d,
        &["volume", "create", "w", "--from-snapshot", "s"],
        "already exists",
    );
    refused(
        &d,
        &["volume", "create", "w", "--from-volume", "v"],
        "already exists",
    );
    refused(
        &d,
        &["volume", "create", "c", "--from-snapshot", "missing"],
        "not found",
    );
    refused(
        &d,
        &["volume", "create", "c", "--pool", "p", "--fs", "xfs"],
        "no filesystem of their own",
    );
    // A pool with volumes cannot go; the default pool never.
    refused(&d, &["pool", "rm", "p"], "delete them first");
    refused(&d, &["pool", "rm", "default"], "cannot be deleted");
    clean(&d);
    drop(_m);
    drop((mounted, b, small));
    d.assert_no_leftovers();
}
