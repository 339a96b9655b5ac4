//! Crash tests: the real daemon dies at every failpoint, or by `kill -9` in
//! the middle of work, on real loop devices and mounts; the next start must
//! roll each unfinished operation back or forward as `ballast_core::reconcile`
//! says, keep the data written before, and leave nothing behind on the host.
//!
//! Every scenario runs in its own daemon and scratch directory, so the tests
//! may run in parallel.
mod common;

use std::collections::BTreeSet;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_core::failpoint::ALL;
use common::Daemon;
use serde_json::Value;

const SIZE: &str = "64M";
const DATA_LEN: usize = 4 << 20;
const DATA_FILE: &str = "data.bin";
/// The volume each failpoint scenario crashes on.
const VOL: &str = "vol";
/// A volume no crash touches; it must come through every reconcile intact.
const KEEP: &str = "keep";

// ----- helpers ----------------------------------------------------------

/// `len` pseudo-random bytes, different for every seed (xorshift64).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Write the seed's pattern to `<mountpoint>/data.bin` and fsync it.
fn write_data(mountpoint: &Path, seed: u64, len: usize) -> Vec<u8> {
    let bytes = pattern(seed, len);
    let path = mountpoint.join(DATA_FILE);
    let mut f = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(&bytes).unwrap();
    f.sync_all().unwrap();
    bytes
}

fn check_data(mountpoint: &Path, expected: &[u8], ctx: &str) {
    let path = mountpoint.join(DATA_FILE);
    let got = std::fs::read(&path).unwrap_or_else(|e| panic!("{ctx}: {}: {e}", path.display()));
    assert_eq!(
        got.len(),
        expected.len(),
        "{ctx}: length of {}",
        path.display()
    );
    // Not assert_eq!: a mismatch would print megabytes.
    if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!(
            "{ctx}: {} differs from what was written at byte {at}",
            path.display()
        );
    }
}

fn inspect(d: &Daemon, name: &str) -> Value {
    d.json(&["volume", "inspect", name])
}

fn volumes(d: &Daemon) -> Vec<Value> {
    match d.json(&["volume", "ls"]) {
        Value::Array(v) => v,
        other => panic!("volume ls is not a list: {other}"),
    }
}

fn names(d: &Daemon) -> Vec<String> {
    volumes(d)
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

fn consumer_ids(v: &Value) -> Vec<String> {
    v["consumers"]
        .as_array()
        .unwrap_or_else(|| panic!("no consumers list in {v}"))
        .iter()
        .map(|c| format!("{}:{}", str_field(c, "kind"), str_field(c, "id")))
        .collect()
}

fn image_of(v: &Value) -> String {
    format!("{}.img", str_field(v, "id"))
}

/// Mount for consumer `id`; returns the mountpoint.
fn mount(d: &Daemon, name: &str, id: &str) -> PathBuf {
    let mp = PathBuf::from(d.ok(&["volume", "mount", name, "--id", id]).trim());
    assert!(
        common::mount_targets().contains(&mp),
        "{name}: {} is not a mount after mount",
        mp.display()
    );
    mp
}

fn unmount(d: &Daemon, name: &str, id: &str) {
    d.ok(&["volume", "unmount", name, "--id", id]);
}

/// Filesystem size of a mounted volume, from inspect.
fn fs_total(d: &Daemon, name: &str) -> u64 {
    let v = inspect(d, name);
    v["usage"]["total_bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("no usage in inspect of mounted {name}: {v}"))
}

/// Create a volume, write data in a first mount, unmount it.
fn prepare(d: &Daemon, name: &str, fs: Fs, seed: u64) -> Vec<u8> {
    d.ok(&[
        "volume",
        "create",
        name,
        "--size",
        fs.size().0,
        "--fs",
        fs.name(),
    ]);
    let mp = mount(d, name, "setup");
    let data = write_data(&mp, seed, DATA_LEN);
    unmount(d, name, "setup");
    data
}

/// Messages of the events the reconciler writes for interrupted operations.
fn interrupted_events(d: &Daemon) -> Vec<String> {
    let (status, body) = d.http("GET", "/v1/events?limit=1000", b"");
    assert_eq!(status, 200, "events: {body}");
    body.as_array()
        .unwrap()
        .iter()
        .map(|e| str_field(e, "message").to_string())
        .filter(|m| m.starts_with("interrupted "))
        .collect()
}

/// Entries left in the daemon's mounts directory.
fn mount_dirs(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.run.join("mounts"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Insist the daemon's loop devices and mounts on the host are exactly
/// `want`. Autoclear may free a device a moment after its unmount, so extra
/// entries get a few seconds to go.
fn assert_host_has(d: &Daemon, want: &BTreeSet<String>, ctx: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left: BTreeSet<String> = d.host_leftovers().into_iter().collect();
        if &left == want {
            return;
        }
        if Instant::now() > deadline || !want.is_subset(&left) {
            panic!(
                "{ctx}: on the host {left:?}, expected {want:?}\n{}",
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the host holds for a mounted volume: its mount and its loop device.
fn mounted_on_host(d: &Daemon, v: &Value) -> [String; 2] {
    [
        format!("mount {}", str_field(v, "mountpoint")),
        format!(
            "loop {} -> {}",
            str_field(v, "device"),
            d.pool_dir().join(image_of(v)).display()
        ),
    ]
}

/// Whether this process (root, like the daemon it starts) may grow a
/// mounted ext4: the kernel wants CAP_SYS_RESOURCE.
fn can_grow_ext4_online() -> bool {
    const CAP_SYS_RESOURCE: u32 = 24;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
}

/// The CLI against a socket, for threads that cannot borrow the Daemon.
fn cli_on(socket: &Path, args: &[&str]) -> Output {
    Command::new(common::BIN)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("BALLAST_HOST")
        .stdin(Stdio::null())
        .output()
        .expect("run ballast")
}

// ----- every failpoint --------------------------------------------------

/// What the crashed volume looks like before the crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Does not exist yet.
    Absent,
    /// Created, never mounted (so never formatted).
    Fresh,
    /// Created, data written in an earlier mount, unmounted.
    Unmounted,
    /// Data written, mounted for consumer `cli:c1`.
    Mounted,
}

/// The crashed volume's filesystem and sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fs {
    Ext4,
    /// xfs grows only while mounted, so it takes other resize paths.
    Xfs,
}

impl Fs {
    fn name(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
        }
    }
    /// (size flag, bytes) at creation.
    fn size(self) -> (&'static str, u64) {
        match self {
            Fs::Ext4 => ("64M", 64 << 20),
            Fs::Xfs => ("320M", 320 << 20),
        }
    }
    /// (size flag, bytes) after a resize.
    fn grown(self) -> (&'static str, u64) {
        match self {
            Fs::Ext4 => ("128M", 128 << 20),
            Fs::Xfs => ("448M", 448 << 20),
        }
    }
    /// A grown filesystem is bigger than the whole volume was.
    fn grown_fs_min(self) -> u64 {
        self.size().1 + (16 << 20)
    }
    fn grows_online(self) -> bool {
        self == Fs::Xfs || can_grow_ext4_online()
    }
}

/// The starting states worth crashing each operation in.
fn setups(failpoint: &str) -> &'static [(Setup, Fs)] {
    match failpoint.split('.').next() {
        Some("create") => &[(Setup::Absent, Fs::Ext4)],
        Some("stage") => &[(Setup::Unmounted, Fs::Ext4), (Setup::Fresh, Fs::Ext4)],
        Some("unstage") => &[(Setup::Mounted, Fs::Ext4)],
        Some("resize") => &[
            (Setup::Unmounted, Fs::Ext4),
            (Setup::Mounted, Fs::Ext4),
            (Setup::Unmounted, Fs::Xfs),
            (Setup::Mounted, Fs::Xfs),
        ],
        Some("delete") => &[(Setup::Unmounted, Fs::Ext4), (Setup::Mounted, Fs::Ext4)],
        _ => panic!("no crash scenario for failpoint {failpoint}: add one to crash.rs"),
    }
}

/// The command that reaches an operation's failpoints.
fn command(failpoint: &str, setup: Setup, fs: Fs) -> Vec<&'static str> {
    match failpoint.split('.').next().unwrap() {
        "create" => vec![
            "volume",
            "create",
            VOL,
            "--size",
            fs.size().0,
            "--fs",
            fs.name(),
        ],
        "stage" => vec!["volume", "mount", VOL, "--id", "c1"],
        "unstage" => vec!["volume", "unmount", VOL, "--id", "c1"],
        "resize" => vec!["volume", "resize", VOL, "--size", fs.grown().0],
        "delete" if setup == Setup::Mounted => vec!["volume", "rm", VOL, "--force"],
        "delete" => vec!["volume", "rm", VOL],
        other => panic!("no command for {other}"),
    }
}

/// Crash at `failpoint` from `setup`, restart, and check the reconciler's
/// work, the data, a full cycle afterwards, and a clean host at the end.
fn failpoint_scenario(failpoint: &str, setup: Setup, fs: Fs) {
    let ctx = format!("{failpoint} from {setup:?} {fs:?}");
    let op = failpoint.split('.').next().unwrap();
    let create = [
        "volume",
        "create",
        VOL,
        "--size",
        fs.size().0,
        "--fs",
        fs.name(),
    ];
    let mut d = Daemon::start();
    let keep_data = prepare(&d, KEEP, Fs::Ext4, 1);
    let keep_img = image_of(&inspect(&d, KEEP));
    let data = match setup {
        Setup::Absent => None,
        Setup::Fresh => {
            d.ok(&create);
            None
        }
        Setup::Unmounted => Some(prepare(&d, VOL, fs, 2)),
        Setup::Mounted => {
            let data = prepare(&d, VOL, fs, 2);
            mount(&d, VOL, "c1");
            Some(data)
        }
    };
    let before = (setup != Setup::Absent).then(|| inspect(&d, VOL));

    d.crash_at(failpoint, &command(failpoint, setup, fs));

    // The reconciler said what it did, once.
    let forward = matches!(op, "unstage" | "resize" | "delete");
    let word = if forward { "finished" } else { "undone" };
    assert_eq!(
        interrupted_events(&d),
        vec![format!("interrupted {op} of {VOL} {word} at start")],
        "{ctx}: reconcile events\n{}",
        d.log()
    );

    // The bystander is untouched.
    let keep = inspect(&d, KEEP);
    assert_eq!(str_field(&keep, "state"), "available", "{ctx}: {keep}");
    assert_eq!(image_of(&keep), keep_img, "{ctx}");

    let gone = matches!(op, "create" | "delete");
    let stays_mounted = op == "resize" && setup == Setup::Mounted;
    if gone {
        assert_eq!(names(&d), vec![KEEP.to_string()], "{ctx}: volumes");
        let err = d.fails(&["volume", "inspect", VOL]);
        assert!(err.contains("not found"), "{ctx}: inspect of {VOL}: {err}");
        assert_eq!(d.images(), vec![keep_img.clone()], "{ctx}: images");
    } else {
        let before = before.as_ref().unwrap();
        let v = inspect(&d, VOL);
        assert_eq!(str_field(&v, "id"), str_field(before, "id"), "{ctx}");
        let img = image_of(&v);
        let mut want_imgs = vec![keep_img.clone(), img.clone()];
        want_imgs.sort();
        assert_eq!(d.images(), want_imgs, "{ctx}: images");
        if op == "resize" {
            assert_eq!(v["size_bytes"].as_u64(), Some(fs.grown().1), "{ctx}: {v}");
            let len = std::fs::metadata(d.pool_dir().join(&img)).unwrap().len();
            assert_eq!(len, fs.grown().1, "{ctx}: image length");
        } else {
            assert_eq!(v["size_bytes"].as_u64(), Some(fs.size().1), "{ctx}: {v}");
        }
        if stays_mounted {
            assert_eq!(str_field(&v, "state"), "mounted", "{ctx}: {v}");
            assert_eq!(consumer_ids(&v), vec!["cli:c1"], "{ctx}: consumers");
            let mp = str_field(&v, "mountpoint");
            assert_eq!(Some(mp), before["mountpoint"].as_str(), "{ctx}");
            assert_eq!(v["device"], before["device"], "{ctx}");
            assert_host_has(&d, &mounted_on_host(&d, &v).into(), &ctx);
            if fs.grows_online() {
                let total = fs_total(&d, VOL);
                assert!(
                    total > fs.grown_fs_min(),
                    "{ctx}: filesystem of {total} bytes after an online grow"
                );
            }
            check_data(Path::new(mp), data.as_ref().unwrap(), &ctx);
            unmount(&d, VOL, "c1");
            assert_eq!(str_field(&inspect(&d, VOL), "state"), "available", "{ctx}");
        } else {
            assert_eq!(str_field(&v, "state"), "available", "{ctx}: {v}");
            assert!(consumer_ids(&v).is_empty(), "{ctx}: consumers of {v}");
            assert!(
                v["mountpoint"].is_null() && v["device"].is_null(),
                "{ctx}: {v}"
            );
        }
    }
    if !stays_mounted {
        d.assert_no_leftovers();
        assert!(mount_dirs(&d).is_empty(), "{ctx}: {:?}", mount_dirs(&d));
    }

    // A full cycle on the crashed volume: the data written before is there
    // (and survives another remount, so nothing reformatted it).
    if gone {
        d.ok(&create);
    }
    let mp = mount(&d, VOL, "c2");
    if op == "resize" {
        let total = fs_total(&d, VOL);
        assert!(
            total > fs.grown_fs_min(),
            "{ctx}: filesystem of {total} bytes after the grow"
        );
    }
    let expected = match (&data, gone) {
        (Some(b), false) => {
            check_data(&mp, b, &ctx);
            b.clone()
        }
        _ => write_data(&mp, 3, DATA_LEN),
    };
    unmount(&d, VOL, "c2");
    let mp = mount(&d, VOL, "c3");
    check_data(&mp, &expected, &ctx);
    unmount(&d, VOL, "c3");
    d.ok(&["volume", "rm", VOL]);

    let mp = mount(&d, KEEP, "c4");
    check_data(&mp, &keep_data, &format!("{ctx}: {KEEP}"));
    unmount(&d, KEEP, "c4");
    d.ok(&["volume", "rm", KEEP]);

    assert!(names(&d).is_empty(), "{ctx}");
    d.assert_no_leftovers();
    assert!(d.images().is_empty(), "{ctx}: images {:?}", d.images());
    assert!(mount_dirs(&d).is_empty(), "{ctx}: {:?}", mount_dirs(&d));

    // No intent outlived its reconcile: another start has nothing to do.
    d.restart();
    assert!(names(&d).is_empty(), "{ctx}");
    assert_eq!(
        interrupted_events(&d).len(),
        1,
        "{ctx}: {:?}",
        interrupted_events(&d)
    );
    assert!(d.images().is_empty(), "{ctx}");
    d.assert_no_leftovers();
}

fn failpoints_of(op: &str) {
    let prefix = format!("{op}.");
    let fps: Vec<&str> = ALL
        .iter()
        .copied()
        .filter(|f| f.starts_with(&prefix))
        .collect();
    assert!(
        !fps.is_empty(),
        "no {op} failpoints in ballast_core::failpoint::ALL"
    );
    for fp in fps {
        for &(setup, fs) in setups(fp) {
            eprintln!("crash at {fp} from {setup:?} {fs:?}");
            failpoint_scenario(fp, setup, fs);
        }
    }
}

/// The five tests below walk `ALL`; this one makes sure none is skipped.
#[test]
fn every_failpoint_has_a_scenario() {
    const OPS: [&str; 5] = ["create", "stage", "unstage", "resize", "delete"];
    for fp in ALL {
        let (op, _) = fp.split_once('.').unwrap();
        if op == "snapshot" {
            // Covered by tests/snapshots.rs, which crashes in copies.
            continue;
        }
        if op == "poolcreate" || op == "pooladd" {
            // Covered by tests/btrfs.rs, which crashes in pool creates and
            // disk adds.
            continue;
        }
        if op == "claim" {
            // Covered by tests/claims.rs, which crashes in acquires.
            continue;
        }
        if op == "fence" {
            // Covered by tests/rbd_cluster.rs, which kills the fencing node
            // at both fence failpoints (it needs Ceph and several hosts).
            continue;
        }
        if op == "move" {
            // Covered by tests/moves.rs, which kills the source and the
            // target at every move failpoint.
            continue;
        }
        if op == "backup" || op == "restore" {
            // Covered by tests/backups.rs, which kills the daemon at every
            // backup and restore failpoint.
            continue;
        }
        if op == "autogrow" {
            // A race hook, not a crash point: the pass has no side effect
            // before it; crates/drivers/tests/service.rs races a mount there.
            continue;
        }
        assert!(OPS.contains(&op), "failpoint {fp} belongs to no crash test");
        assert!(!setups(fp).is_empty(), "{fp}");
    }
}

#[test]
fn crash_in_create() {
    if !common::require_root_loop("crash_in_create") {
        return;
    }
    failpoints_of("create");
}

#[test]
fn crash_in_stage() {
    if !common::require_root_loop("crash_in_stage") {
        return;
    }
    failpoints_of("stage");
}

#[test]
fn crash_in_unstage() {
    if !common::require_root_loop("crash_in_unstage") {
        return;
    }
    failpoints_of("unstage");
}

#[test]
fn crash_in_resize() {
    if !common::require_root_loop("crash_in_resize") {
        return;
    }
    failpoints_of("resize");
}

#[test]
fn crash_in_delete() {
    if !common::require_root_loop("crash_in_delete") {
        return;
    }
    failpoints_of("delete");
}

// ----- kill -9 under load -------------------------------------------------

/// What the load thread got answers for before the daemon died.
#[derive(Default)]
struct Done {
    created: Vec<String>,
    /// Volumes whose data file was written and fsynced, with its seed.
    written: Vec<(String, u64)>,
}

/// Create, mount, write, unmount distinct volumes until a call fails.
fn load(socket: &Path, round: u32, stop: &AtomicBool, created: &AtomicUsize) -> Done {
    let mut done = Done::default();
    for i in 0u64.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let name = format!("r{round}-v{i}");
        let seed = u64::from(round) * 1000 + i;
        if !cli_on(socket, &["volume", "create", &name, "--size", SIZE])
            .status
            .success()
        {
            break;
        }
        done.created.push(name.clone());
        created.fetch_add(1, Ordering::SeqCst);
        let out = cli_on(socket, &["volume", "mount", &name, "--id", "load"]);
        if !out.status.success() {
            break;
        }
        let mp = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        write_data(&mp, seed, 1 << 20);
        done.written.push((name.clone(), seed));
        if !cli_on(socket, &["volume", "unmount", &name, "--id", "load"])
            .status
            .success()
        {
            break;
        }
    }
    done
}

/// Milliseconds from the clock's low bits, to vary where the kill lands.
fn jitter(max: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) % max
}

#[test]
fn kill9_during_creates_and_mounts() {
    if !common::require_root_loop("kill9_during_creates_and_mounts") {
        return;
    }
    let mut d = Daemon::start();
    for (round, base) in [(0u32, 300u64), (1, 700), (2, 1200)] {
        let delay = base + jitter(300);
        eprintln!("round {round}: kill -9 after {delay} ms");
        let socket = d.socket();
        let stop = Arc::new(AtomicBool::new(false));
        let created = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (stop, created) = (stop.clone(), created.clone());
            std::thread::spawn(move || load(&socket, round, &stop, &created))
        };
        // Count the delay from the first answer, so a slow host still kills
        // the daemon in the middle of the work.
        let deadline = Instant::now() + Duration::from_secs(60);
        while created.load(Ordering::SeqCst) == 0 {
            assert!(
                !worker.is_finished() && Instant::now() < deadline,
                "round {round}: the load never created a volume\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(delay));
        d.kill9();
        stop.store(true, Ordering::SeqCst);
        let done = worker.join().expect("load thread");
        d.restart();

        let vols = volumes(&d);
        let table = d.ok(&["volume", "ls"]);
        assert_eq!(
            table.lines().count(),
            vols.len() + 1,
            "round {round}: table has a header and a row per volume:\n{table}"
        );
        let listed: BTreeSet<&str> = vols.iter().map(|v| str_field(v, "name")).collect();
        for name in &done.created {
            assert!(
                listed.contains(name.as_str()),
                "round {round}: {name} was created but is gone"
            );
        }
        // Every volume settled; exactly the mounted ones are on the host.
        let mut want_left = BTreeSet::new();
        let mut imgs = Vec::new();
        for v in &vols {
            let name = str_field(v, "name");
            let state = str_field(v, "state");
            imgs.push(image_of(v));
            match state {
                "available" => {
                    assert!(v["mountpoint"].is_null(), "round {round}: {v}");
                }
                "mounted" => {
                    assert_eq!(consumer_ids(v), vec!["cli:load"], "round {round}: {v}");
                    want_left.extend(mounted_on_host(&d, v));
                }
                _ => panic!("round {round}: {name} is left {state}: {v}\n{}", d.log()),
            }
        }
        eprintln!(
            "round {round}: {} created, {} written, {} listed, {} mounted at restart",
            done.created.len(),
            done.written.len(),
            vols.len(),
            want_left.len() / 2
        );
        imgs.sort();
        assert_eq!(d.images(), imgs, "round {round}: images and volumes differ");
        assert_host_has(&d, &want_left, &format!("round {round}"));

        // Data written before the kill is intact.
        for (name, seed) in &done.written {
            let mp = mount(&d, name, "check");
            check_data(
                &mp,
                &pattern(*seed, 1 << 20),
                &format!("round {round}: {name}"),
            );
            unmount(&d, name, "check");
        }
        for v in &vols {
            d.ok(&["volume", "rm", str_field(v, "name"), "--force"]);
        }
        assert!(names(&d).is_empty(), "round {round}");
        d.assert_no_leftovers();
        assert!(
            d.images().is_empty(),
            "round {round}: images {:?}",
            d.images()
        );
        assert!(
            mount_dirs(&d).is_empty(),
            "round {round}: {:?}",
            mount_dirs(&d)
        );
    }
}

// ----- kill -9 with a file open on a mounted volume ------------------------

#[test]
fn kill9_with_open_file_keeps_mount() {
    if !common::require_root_loop("kill9_with_open_file_keeps_mount") {
        return;
    }
    let mut d = Daemon::start();
    d.ok(&["volume", "create", VOL, "--size", SIZE]);
    let mp = mount(&d, VOL, "c1");
    let data = write_data(&mp, 7, DATA_LEN);
    let mut open = std::fs::File::open(mp.join(DATA_FILE)).unwrap();
    let before = inspect(&d, VOL);

    d.kill9();
    d.restart();

    let v = inspect(&d, VOL);
    assert_eq!(str_field(&v, "state"), "mounted", "{v}\n{}", d.log());
    assert_eq!(consumer_ids(&v), vec!["cli:c1"], "{v}");
    assert_eq!(v["mountpoint"], before["mountpoint"], "{v}");
    assert_eq!(v["device"], before["device"], "{v}");
    assert_eq!(str_field(&v, "mountpoint"), mp.to_str().unwrap(), "{v}");
    assert_host_has(
        &d,
        &mounted_on_host(&d, &v).into(),
        "the mount and its device must survive",
    );

    // Readable through the open file and afresh.
    let mut got = Vec::new();
    open.rewind().unwrap();
    open.read_to_end(&mut got).unwrap();
    assert!(got == data, "data read through the open file differs");
    check_data(&mp, &data, "after restart");

    // While the file is open the unmount is refused and nothing changes.
    let err = d.fails(&["volume", "unmount", VOL, "--id", "c1"]);
    assert!(err.contains("in use") || err.contains("busy"), "{err}");
    let v = inspect(&d, VOL);
    assert_eq!(str_field(&v, "state"), "mounted", "{v}");
    assert_eq!(consumer_ids(&v), vec!["cli:c1"], "{v}");
    assert!(common::mount_targets().contains(&mp));

    drop(open);
    unmount(&d, VOL, "c1");
    let v = inspect(&d, VOL);
    assert_eq!(str_field(&v, "state"), "available", "{v}");
    assert!(consumer_ids(&v).is_empty(), "{v}");
    d.assert_no_leftovers();
    let mp = mount(&d, VOL, "c2");
    check_data(&mp, &data, "after remount");
    unmount(&d, VOL, "c2");
    d.ok(&["volume", "rm", VOL]);
    d.assert_no_leftovers();
    assert!(d.images().is_empty(), "images {:?}", d.images());
    assert!(mount_dirs(&d).is_empty(), "{:?}", mount_dirs(&d));
}
