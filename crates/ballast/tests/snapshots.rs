//! Snapshots and clones end to end: the real daemon, real loop devices, real
//! ext4 and xfs, through the CLI and the REST API.
//!
//! Each test checks data by bytes (a pseudo-random pattern per seed), the
//! files in `<pool>/snapshots`, and what is left on the host. The crash tests
//! kill the daemon at the snapshot failpoints while the source is frozen and
//! insist the next start thaws it and takes the half-made copy back.
//!
//! Every test runs in its own daemon and scratch directory, so they may run
//! in parallel. Durations are printed for information only; nothing asserts
//! on wall-clock time.
mod common;

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ballast_core::failpoint::ALL;
use common::{require_root_loop, require_tool, Daemon};
use serde_json::{json, Value};

const MIB: u64 = 1 << 20;
/// What each source volume holds: about 20 MiB of data.
const DATA_LEN: usize = 20 << 20;
const DATA: &str = "data.bin";
/// Longest a write + fsync may take before the filesystem counts as frozen.
/// A liveness guard against a hang, not a timing assertion.
const THAW_GUARD: Duration = Duration::from_secs(30);
/// The snapshot failpoints this file crashes at.
const SNAPSHOT_FAILPOINTS: [&str; 2] = ["snapshot.after_freeze", "snapshot.after_copy"];

// ----- data ---------------------------------------------------------------

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

/// Write the seed's pattern to `path` and fsync it; returns what was written.
fn write_pattern(path: &Path, seed: u64, len: usize) -> Vec<u8> {
    let bytes = pattern(seed, len);
    let mut f = std::fs::File::create(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    f.write_all(&bytes)
        .and_then(|()| f.sync_all())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
}

/// Insist `path` holds exactly `expected`, without printing megabytes.
fn check_file(path: &Path, expected: &[u8], ctx: &str) {
    let got = std::fs::read(path).unwrap_or_else(|e| panic!("{ctx}: {}: {e}", path.display()));
    assert_eq!(
        got.len(),
        expected.len(),
        "{ctx}: length of {}",
        path.display()
    );
    if let Some(at) = got.iter().zip(expected).position(|(a, b)| a != b) {
        panic!("{ctx}: {} differs at byte {at}", path.display());
    }
}

/// Size of the filesystem mounted at `mp`, from statvfs.
fn fs_total(mp: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(mp).unwrap_or_else(|e| panic!("{}: {e}", mp.display()));
    st.blocks() * st.fragment_size()
}

// ----- frozen filesystems ---------------------------------------------------

// _IOWR('X', 120, int) from <linux/fs.h>.
const FITHAW: libc::Ioctl = 0xC004_5878;

/// Thaw the filesystem at `mp` from the test, so a failed test leaves no
/// frozen filesystem (and no hung writer) behind.
fn thaw(mp: &Path) {
    use std::os::fd::AsRawFd;
    if let Ok(dir) = std::fs::File::open(mp) {
        // SAFETY: FITHAW takes an int argument it ignores; the fd is open for
        // the duration of the call.
        unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW, 0) };
    }
}

/// Insist a write + fsync on `mp` completes: the filesystem is not frozen.
/// The write runs in a thread, so a frozen filesystem fails the test after
/// [`THAW_GUARD`] instead of hanging it.
fn assert_thawed(mp: &Path, ctx: &str) {
    let path = mp.join("liveness.bin");
    let (tx, rx) = mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let r = std::fs::File::create(&p).and_then(|mut f| {
            f.write_all(&[0x5a; 64 << 10])?;
            f.sync_all()
        });
        let _ = tx.send(r);
    });
    match rx.recv_timeout(THAW_GUARD) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{ctx}: write to {}: {e}", path.display()),
        Err(_) => {
            thaw(mp);
            panic!(
                "{ctx}: a write + fsync to {} did not finish in {THAW_GUARD:?}: the filesystem was left frozen",
                mp.display()
            );
        }
    }
    std::fs::remove_file(&path).unwrap();
}

// ----- the daemon's view ------------------------------------------------------

/// Mount through the CLI; returns the mountpoint.
fn mount(d: &Daemon, name: &str) -> PathBuf {
    let mp = PathBuf::from(d.ok(&["volume", "mount", name]).trim());
    assert!(
        common::mount_targets().contains(&mp),
        "{name}: {} is not a mount",
        mp.display()
    );
    mp
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {v}"))
}

fn volume_id(d: &Daemon, name: &str) -> String {
    str_field(&d.json(&["volume", "inspect", name]), "id").to_string()
}

fn volume_names(d: &Daemon) -> Vec<String> {
    d.json(&["volume", "ls"])
        .as_array()
        .expect("volume ls is a list")
        .iter()
        .map(|v| str_field(v, "name").to_string())
        .collect()
}

/// Names in `snapshot ls [volume]`, sorted.
fn snapshot_names(d: &Daemon, volume: Option<&str>) -> Vec<String> {
    let mut args = vec!["snapshot", "ls"];
    args.extend(volume);
    let mut v: Vec<String> = d
        .json(&args)
        .as_array()
        .expect("snapshot ls is a list")
        .iter()
        .map(|s| str_field(s, "name").to_string())
        .collect();
    v.sort();
    v
}

/// Take a snapshot through the CLI; prints how long it took.
fn snapshot(d: &Daemon, volume: &str, name: &str) -> Value {
    let t = Instant::now();
    let s = d.json(&["volume", "snapshot", volume, name]);
    eprintln!("timing: snapshot {name} of {volume}: {:?}", t.elapsed());
    assert_eq!(s["name"], name, "{s}");
    assert_eq!(s["source_volume"], volume, "{s}");
    assert_eq!(s["ready"], true, "{s}");
    s
}

/// Create a copy through the CLI (`extra` names the source and maybe a
/// size); prints how long it took.
fn clone(d: &Daemon, name: &str, extra: &[&str]) -> Value {
    let mut args = vec!["volume", "create", name];
    args.extend_from_slice(extra);
    let t = Instant::now();
    let v = d.json(&args);
    eprintln!("timing: create {name} {extra:?}: {:?}", t.elapsed());
    assert_eq!(v["name"], name, "{v}");
    v
}

fn snapshot_dir(d: &Daemon) -> PathBuf {
    d.pool_dir().join("snapshots")
}

/// Files in `<pool>/snapshots`, sorted (none if it does not exist).
fn snapshot_files(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(snapshot_dir(d))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The snapshot's storage, from its ID.
fn snapshot_file(d: &Daemon, snap: &Value) -> PathBuf {
    snapshot_dir(d).join(format!("{}.img", str_field(snap, "id")))
}

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Observed {
    images: Vec<String>,
    snapshot_files: Vec<String>,
    volumes: Value,
    snapshots: Value,
}

fn observe(d: &Daemon) -> Observed {
    Observed {
        images: d.images(),
        snapshot_files: snapshot_files(d),
        volumes: d.json(&["volume", "ls"]),
        snapshots: d.json(&["snapshot", "ls"]),
    }
}

/// A refused CLI call: exit 1, one line naming `want` (case-insensitive).
fn cli_refused(d: &Daemon, args: &[&str], want: &str) {
    let err = d.fails(args);
    assert!(
        err.to_lowercase().contains(want),
        "ballast {args:?}: expected {want:?} in {err:?}"
    );
}

/// A refused REST call: `status`, a JSON error with a code and a message.
fn http_refused(d: &Daemon, method: &str, path: &str, body: Value, status: u16) {
    let (got, reply) = d.http(method, path, body.to_string().as_bytes());
    assert_eq!(got, status, "{method} {path} {body}: {reply}");
    assert!(
        reply["error"]["code"].is_string() && reply["error"]["message"].is_string(),
        "{method} {path}: error body {reply}"
    );
}

// ----- snapshot and clone of mounted ext4 ---------------------------------------

#[test]
fn snapshot_of_mounted_ext4_restores_that_moment_and_copies_diverge() {
    if !require_root_loop("snapshot of mounted ext4") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "src", "--size", "64M"]);
    let src = mount(&d, "src");
    let at_snapshot = write_pattern(&src.join(DATA), 1, DATA_LEN);
    std::fs::write(src.join("small"), b"before").unwrap();

    let s = snapshot(&d, "src", "s1");
    assert_eq!(s["size_bytes"], 64 * MIB, "{s}");
    assert_eq!(s["fs"], "ext4", "{s}");
    assert_eq!(snapshot_files(&d), [format!("{}.img", str_field(&s, "id"))]);
    let file = snapshot_file(&d, &s);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 64 * MIB);
    // The snapshot shows the same through inspect, REST and both listings.
    assert_eq!(d.json(&["snapshot", "inspect", "s1"]), s);
    let (status, body) = d.http("GET", "/v1/snapshots/s1", b"");
    assert_eq!((status, &body), (200, &s));
    assert_eq!(snapshot_names(&d, None), ["s1"]);
    assert_eq!(snapshot_names(&d, Some("src")), ["s1"]);
    let (status, body) = d.http("GET", "/v1/snapshots?volume=src", b"");
    assert_eq!((status, body), (200, json!([s])));
    // The source stays mounted and writable.
    assert_eq!(d.json(&["volume", "inspect", "src"])["state"], "mounted");
    assert_thawed(&src, "source after a snapshot");

    // Later writes to the source are not in the snapshot.
    let later = write_pattern(&src.join(DATA), 2, DATA_LEN);
    std::fs::write(src.join("small"), b"after").unwrap();
    std::fs::write(src.join("new-in-source"), b"x").unwrap();

    let c = clone(&d, "c1", &["--from-snapshot", "s1"]);
    assert_eq!(c["size_bytes"], 64 * MIB, "{c}");
    assert_eq!(c["fs"], "ext4", "{c}");
    let c1 = mount(&d, "c1");
    check_file(&c1.join(DATA), &at_snapshot, "clone of s1");
    assert_eq!(std::fs::read(c1.join("small")).unwrap(), b"before");
    assert!(!c1.join("new-in-source").exists());

    // Writes to the clone stay in the clone, and the reverse.
    let in_clone = write_pattern(&c1.join(DATA), 3, DATA_LEN);
    std::fs::write(c1.join("new-in-clone"), b"y").unwrap();
    check_file(&src.join(DATA), &later, "source after writes to the clone");
    assert!(!src.join("new-in-clone").exists());
    write_pattern(&src.join(DATA), 4, DATA_LEN);
    check_file(
        &c1.join(DATA),
        &in_clone,
        "clone after more writes to the source",
    );

    // The snapshot itself did not change: a second restore is the first.
    clone(&d, "c2", &["--from-snapshot", "s1"]);
    let c2 = mount(&d, "c2");
    check_file(&c2.join(DATA), &at_snapshot, "second clone of s1");
    assert!(!c2.join("new-in-clone").exists());

    for v in ["c2", "c1"] {
        d.ok(&["volume", "rm", v, "--force"]);
    }
    d.ok(&["snapshot", "rm", "s1"]);
    d.ok(&["volume", "rm", "src", "--force"]);
    d.assert_no_leftovers();
}

#[test]
fn clone_of_a_mounted_volume_under_a_writer() {
    if !require_root_loop("clone of mounted volume") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "src", "--size", "64M"]);
    let src = mount(&d, "src");
    let data = write_pattern(&src.join(DATA), 11, DATA_LEN);

    // A writer appends the pattern in 64 KiB pieces, each flushed, until the
    // clone is done; the clone starts once it is under way.
    let stream = pattern(12, 24 << 20);
    let stop = Arc::new(AtomicBool::new(false));
    let progress = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::channel();
    let writer = {
        let path = src.join("stream.bin");
        let stream = stream.clone();
        let (stop, progress) = (stop.clone(), progress.clone());
        std::thread::spawn(move || {
            let r = (|| {
                let mut f = std::fs::File::create(&path)?;
                for piece in stream.chunks(64 << 10) {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    f.write_all(piece)?;
                    f.sync_data()?;
                    progress.fetch_add(piece.len(), Ordering::SeqCst);
                }
                Ok::<(), std::io::Error>(())
            })();
            let _ = tx.send(r);
        })
    };
    while progress.load(Ordering::SeqCst) < 1 << 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let c = clone(&d, "c", &["--from-volume", "src"]);
    let at_clone = progress.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    match rx.recv_timeout(THAW_GUARD) {
        Ok(r) => r.expect("writer"),
        Err(_) => {
            thaw(&src);
            panic!("the writer did not finish: the source was left frozen");
        }
    }
    let written = progress.load(Ordering::SeqCst);
    writer.join().unwrap();
    assert_eq!(c["size_bytes"], 64 * MIB, "{c}");
    assert_eq!(d.json(&["volume", "inspect", "src"])["state"], "mounted");

    let cm = mount(&d, "c");
    check_file(&cm.join(DATA), &data, "clone of a mounted volume");
    // The clone holds what the writer had written when the source froze: a
    // prefix of the stream, never torn or garbled.
    let got = std::fs::read(cm.join("stream.bin")).unwrap();
    assert!(got.len() <= written, "{} > {written}", got.len());
    assert!(
        got[..] == stream[..got.len()],
        "the clone's stream.bin is not a prefix of what was written"
    );
    eprintln!(
        "info: the clone caught {} streamed bytes; {at_clone} were written when it returned, {written} in all",
        got.len()
    );

    // After the clone the two diverge.
    let later = write_pattern(&src.join(DATA), 13, DATA_LEN);
    check_file(&cm.join(DATA), &data, "clone after writes to the source");
    let in_clone = write_pattern(&cm.join("only-in-clone"), 14, 1 << 20);
    assert!(!src.join("only-in-clone").exists());
    check_file(&src.join(DATA), &later, "source after writes to the clone");

    // A clone of the clone, unmounted meanwhile, has the clone's data.
    d.ok(&["volume", "unmount", "c"]);
    clone(&d, "cc", &["--from-volume", "c"]);
    let ccm = mount(&d, "cc");
    check_file(&ccm.join("only-in-clone"), &in_clone, "clone of a clone");

    for v in ["cc", "c", "src"] {
        d.ok(&["volume", "rm", v, "--force"]);
    }
    d.assert_no_leftovers();
}

#[test]
fn restore_into_a_bigger_size_grows_the_filesystem() {
    if !require_root_loop("restore bigger") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "src", "--size", "64M"]);
    let src = mount(&d, "src");
    let data = write_pattern(&src.join(DATA), 21, DATA_LEN);
    let small = fs_total(&src);
    assert!(small <= 64 * MIB, "{small}");
    snapshot(&d, "src", "s");

    let big = clone(&d, "big", &["--from-snapshot", "s", "--size", "128M"]);
    assert_eq!(big["size_bytes"], 128 * MIB, "{big}");
    let big_mp = mount(&d, "big");
    let total = fs_total(&big_mp);
    // ext4's own metadata takes about a tenth.
    assert!(
        total > 110 * MIB && total <= 128 * MIB,
        "restored into 128M: the filesystem is {total} bytes (the source's is {small})"
    );
    check_file(&big_mp.join(DATA), &data, "bigger restore");
    // The room is usable: more than the source could hold.
    write_pattern(&big_mp.join("more"), 22, 80 << 20);
    assert_eq!(
        d.json(&["volume", "inspect", "big"])["usage"]["total_bytes"],
        total
    );

    // The same through a clone of the mounted source.
    clone(&d, "big2", &["--from-volume", "src", "--size", "96M"]);
    let big2 = mount(&d, "big2");
    let total = fs_total(&big2);
    assert!(total > 80 * MIB && total <= 96 * MIB, "{total}");
    check_file(&big2.join(DATA), &data, "bigger clone");

    for v in ["big2", "big", "src"] {
        d.ok(&["volume", "rm", v, "--force"]);
    }
    d.ok(&["snapshot", "rm", "s"]);
    d.assert_no_leftovers();
}

// ----- unmounted and never-formatted sources ---------------------------------------

#[test]
fn snapshots_of_unmounted_and_unformatted_volumes() {
    if !require_root_loop("unmounted sources") {
        return;
    }
    let d = Daemon::start();
    // Written, then unmounted.
    d.ok(&["volume", "create", "cold", "--size", "64M"]);
    let mp = mount(&d, "cold");
    let data = write_pattern(&mp.join(DATA), 31, DATA_LEN);
    d.ok(&["volume", "unmount", "cold"]);
    snapshot(&d, "cold", "cold-snap");
    clone(&d, "cold-restored", &["--from-snapshot", "cold-snap"]);
    clone(&d, "cold-cloned", &["--from-volume", "cold"]);
    for v in ["cold-restored", "cold-cloned", "cold"] {
        let mp = mount(&d, v);
        check_file(&mp.join(DATA), &data, v);
        d.ok(&["volume", "unmount", v]);
    }

    // Never mounted: no filesystem yet; nor do its copies have one until
    // their first mount makes it.
    d.ok(&["volume", "create", "blank", "--size", "64M"]);
    let s = snapshot(&d, "blank", "blank-snap");
    let file = snapshot_file(&d, &s);
    let md = std::fs::metadata(&file).unwrap();
    assert_eq!(md.len(), 64 * MIB);
    assert_eq!(
        md.blocks(),
        0,
        "a snapshot of an empty image allocates nothing"
    );
    clone(&d, "blank-restored", &["--from-snapshot", "blank-snap"]);
    clone(&d, "blank-cloned", &["--from-volume", "blank"]);
    // Bigger: the filesystem is made at the new size.
    clone(
        &d,
        "blank-big",
        &["--from-snapshot", "blank-snap", "--size", "128M"],
    );
    for (v, size) in [
        ("blank-restored", 64 * MIB),
        ("blank-cloned", 64 * MIB),
        ("blank-big", 128 * MIB),
        ("blank", 64 * MIB),
    ] {
        let mp = mount(&d, v);
        let total = fs_total(&mp);
        assert!(total > size / 4 * 3 && total <= size, "{v}: {total}");
        // Empty but for what mkfs makes.
        let entries: Vec<String> = std::fs::read_dir(&mp)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "lost+found")
            .collect();
        assert!(entries.is_empty(), "{v}: {entries:?}");
        let bytes = write_pattern(&mp.join(DATA), 32, 4 << 20);
        d.ok(&["volume", "unmount", v]);
        let mp = mount(&d, v);
        check_file(&mp.join(DATA), &bytes, &format!("{v} after a remount"));
        d.ok(&["volume", "unmount", v]);
    }

    for v in volume_names(&d) {
        d.ok(&["volume", "rm", &v]);
    }
    for s in snapshot_names(&d, None) {
        d.ok(&["snapshot", "rm", &s]);
    }
    d.assert_no_leftovers();
}

// ----- xfs, sparse copies ------------------------------------------------------------

#[test]
fn xfs_snapshot_and_clones_keep_data_and_stay_sparse() {
    if !require_root_loop("xfs snapshot") || !require_tool("xfs snapshot", "mkfs.xfs") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "x", "--size", "320M", "--fs", "xfs"]);
    let xm = mount(&d, "x");
    let data = write_pattern(&xm.join(DATA), 41, DATA_LEN);
    let x_img = d.pool_dir().join(format!("{}.img", volume_id(&d, "x")));
    let s = snapshot(&d, "x", "xs");
    assert_eq!(s["fs"], "xfs", "{s}");
    let source_allocated = std::fs::metadata(&x_img).unwrap().blocks() * 512;
    let md = std::fs::metadata(snapshot_file(&d, &s)).unwrap();
    assert_eq!(md.len(), 320 * MIB);
    let allocated = md.blocks() * 512;
    eprintln!(
        "info: xfs snapshot of 320M allocates {allocated} bytes (its source {source_allocated})"
    );
    // The data and xfs's 64 MiB log are all there is: the copy moved only
    // the source's extents, no hole became zeros.
    assert!(
        allocated < md.len() / 3 && allocated <= source_allocated + 4 * MIB,
        "the snapshot is not sparse: {allocated} of {} bytes allocated, the source has {source_allocated}",
        md.len()
    );
    let later = write_pattern(&xm.join(DATA), 42, DATA_LEN);

    // Restore and clone while the source is still mounted: xfs refuses a
    // second mount of the same filesystem UUID unless told otherwise.
    clone(&d, "xr", &["--from-snapshot", "xs"]);
    let xr = mount(&d, "xr");
    check_file(&xr.join(DATA), &data, "xfs restore");
    let xr_img = d.pool_dir().join(format!("{}.img", volume_id(&d, "xr")));
    let md = std::fs::metadata(&xr_img).unwrap();
    assert!(
        md.blocks() * 512 < md.len() / 3,
        "the restore is not sparse"
    );

    clone(&d, "xc", &["--from-volume", "x"]);
    let xc = mount(&d, "xc");
    check_file(&xc.join(DATA), &later, "xfs clone of a mounted volume");
    write_pattern(&xc.join(DATA), 43, DATA_LEN);
    check_file(
        &xm.join(DATA),
        &later,
        "xfs source after writes to its clone",
    );
    check_file(&xr.join(DATA), &data, "xfs restore after writes to a clone");

    // Bigger: xfs grows once mounted.
    clone(&d, "xbig", &["--from-snapshot", "xs", "--size", "400M"]);
    let xbig = mount(&d, "xbig");
    let total = fs_total(&xbig);
    assert!(total > 330 * MIB && total <= 400 * MIB, "{total}");
    check_file(&xbig.join(DATA), &data, "bigger xfs restore");

    for v in ["xbig", "xc", "xr", "x"] {
        d.ok(&["volume", "rm", v, "--force"]);
    }
    d.ok(&["snapshot", "rm", "xs"]);
    d.assert_no_leftovers();
}

// ----- what copies are charged -------------------------------------------------------

/// A filesystem the test makes on a loop device of its own, mounted under
/// the daemon's scratch directory (whose drop guard cleans up after a
/// failure); `finish` unmounts and detaches it.
struct ScratchFs {
    dev: String,
    mnt: PathBuf,
}

impl ScratchFs {
    fn new(d: &Daemon, name: &str, size: u64, mkfs: &[&str]) -> ScratchFs {
        let root = d.dir.path().canonicalize().unwrap();
        let image = root.join(format!("{name}.fs"));
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size)
            .unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let out = std::process::Command::new(mkfs[0])
            .args(&mkfs[1..])
            .arg(&dev)
            .output()
            .unwrap();
        assert!(out.status.success(), "{mkfs:?}: {out:?}");
        let mnt = root.join(format!("{name}-mnt"));
        std::fs::create_dir(&mnt).unwrap();
        let out = std::process::Command::new("mount")
            .arg(&dev)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(out.status.success(), "mount: {out:?}");
        ScratchFs { dev, mnt }
    }

    fn finish(self) {
        nix::mount::umount(&self.mnt).unwrap();
        let st = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status()
            .unwrap();
        assert!(st.success());
    }
}

fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

/// A loop pool on xfs with reflink: a snapshot and a clone share their
/// source's extents (FICLONE), so each is charged the extents it does not
/// share, not its size; both are admitted in a pool that could not hold a
/// second full copy. Overwriting the source's data moves the snapshot's
/// charge up to what it now holds alone.
#[test]
fn reflinked_loop_copies_are_charged_their_unshared_extents() {
    let test = "reflinked_loop_copies_are_charged_their_unshared_extents";
    if !require_root_loop(test) || !require_tool(test, "mkfs.xfs") {
        return;
    }
    let d = Daemon::start();
    // Big enough that the volume's ext4 has 4 KiB blocks: a reflinked image
    // on xfs asks for block-aligned direct I/O, so its loop device has
    // 4 KiB sectors, on which 1 KiB-block ext4 does not mount.
    let fs = ScratchFs::new(
        &d,
        "xfs",
        1536 * MIB,
        &["mkfs.xfs", "-q", "-m", "reflink=1"],
    );
    let path = fs.mnt.join("pool");
    d.ok(&[
        "pool",
        "create",
        "x",
        "--driver",
        "loop",
        "--path",
        path.to_str().unwrap(),
    ]);
    let p0 = d.json(&["pool", "inspect", "x"]);
    let cap = u64_of(&p0, "available_bytes");
    // Over half of the pool: a second full copy could never fit.
    let size = (cap / 2 / MIB + 16) * MIB;
    let size_arg = format!("{}M", size / MIB);
    d.ok(&["volume", "create", "v", "--pool", "x", "--size", &size_arg]);
    let mp = mount(&d, "v");
    let data = write_pattern(&mp.join(DATA), 7, DATA_LEN);

    // Refused before the fix: charged its full size.
    snapshot(&d, "v", "s");
    let p = d.json(&["pool", "inspect", "x"]);
    assert_eq!(u64_of(&p, "provisioned_bytes"), 2 * size, "{p}");
    let charged = u64_of(&p, "exclusive_bytes");
    assert!(
        (size..size + MIB).contains(&charged),
        "a fresh reflink shares every extent: {p}"
    );
    clone(&d, "c", &["--from-snapshot", "s"]);
    let p = d.json(&["pool", "inspect", "x"]);
    assert_eq!(u64_of(&p, "provisioned_bytes"), 3 * size, "{p}");
    let charged = u64_of(&p, "exclusive_bytes");
    assert!((size..size + MIB).contains(&charged), "{p}");
    let cm = mount(&d, "c");
    check_file(&cm.join(DATA), &data, "the reflinked clone");
    // Shared extents count once in what the pool's images occupy, so its
    // capacity (free space plus that) stays what the filesystem holds.
    let p = d.json(&["pool", "inspect", "x"]);
    let (before, now) = (u64_of(&p0, "capacity_bytes"), u64_of(&p, "capacity_bytes"));
    assert!(now.abs_diff(before) < 8 * MIB, "capacity {before} -> {p}");

    // A new volume of the same size is charged in full: it does not fit.
    let err = d.fails(&[
        "volume", "create", "big", "--pool", "x", "--size", &size_arg,
    ]);
    assert!(err.contains("cannot hold"), "{err}");

    // Overwrite the source's data in place (the loop device writes to the
    // image with direct I/O: xfs copies on write): the snapshot's and the
    // clone's old extents are theirs alone now... but still shared with
    // each other, so write the clone's copy over too.
    for m in [&mp, &cm] {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(m.join(DATA))
            .unwrap();
        f.write_all(&pattern(8, DATA_LEN)).unwrap();
        f.sync_all().unwrap();
    }
    let p = d.json(&["pool", "inspect", "x"]);
    let grown = u64_of(&p, "exclusive_bytes");
    assert!(
        grown >= charged + DATA_LEN as u64,
        "the snapshot holds the old data alone: {charged} -> {p}"
    );
    assert!(grown <= 3 * size, "{p}");

    for v in ["c", "v"] {
        d.ok(&["volume", "rm", "--force", v]);
    }
    d.ok(&["snapshot", "rm", "s"]);
    d.ok(&["pool", "rm", "x"]);
    fs.finish();
    d.assert_no_leftovers();
}

/// A loop pool on ext4 (no reflink): a snapshot or clone is a full copy and
/// is charged its full size, so one that does not fit is refused before
/// any byte is copied, and nothing is left of it.
#[test]
fn full_copies_are_charged_their_size_and_refused_when_they_do_not_fit() {
    let test = "full_copies_are_charged_their_size_and_refused_when_they_do_not_fit";
    if !require_root_loop(test) || !require_tool(test, "mkfs.ext4") {
        return;
    }
    let d = Daemon::start();
    let fs = ScratchFs::new(&d, "ext4", 256 * MIB, &["mkfs.ext4", "-q", "-m", "0"]);
    let path = fs.mnt.join("pool");
    d.ok(&[
        "pool",
        "create",
        "e",
        "--driver",
        "loop",
        "--path",
        path.to_str().unwrap(),
    ]);
    let cap = u64_of(&d.json(&["pool", "inspect", "e"]), "available_bytes");
    // Two fit, three do not.
    let size = (cap * 2 / 5 / MIB) * MIB;
    let size_arg = format!("{}M", size / MIB);
    d.ok(&["volume", "create", "v", "--pool", "e", "--size", &size_arg]);
    let mp = mount(&d, "v");
    write_pattern(&mp.join(DATA), 9, DATA_LEN);
    snapshot(&d, "v", "s1");
    let p = d.json(&["pool", "inspect", "e"]);
    assert_eq!(u64_of(&p, "provisioned_bytes"), 2 * size, "{p}");
    assert_eq!(u64_of(&p, "exclusive_bytes"), 2 * size, "a full copy: {p}");
    let files = std::fs::read_dir(path.join("snapshots")).unwrap().count();
    let want = format!("cannot hold {size} more bytes");
    let err = d.fails(&["volume", "snapshot", "v", "s2"]);
    assert!(err.contains(&want), "{err}");
    let err = d.fails(&["volume", "create", "c", "--from-snapshot", "s1"]);
    assert!(err.contains(&want), "{err}");
    let err = d.fails(&["volume", "create", "c", "--from-volume", "v"]);
    assert!(err.contains(&want), "{err}");
    assert_eq!(snapshot_names(&d, None), ["s1"]);
    assert_eq!(volume_names(&d), ["v"]);
    assert_eq!(
        std::fs::read_dir(path.join("snapshots")).unwrap().count(),
        files,
        "nothing was copied"
    );
    let images = std::fs::read_dir(&path)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
        .count();
    assert_eq!(images, 1, "no clone image");

    d.ok(&["volume", "rm", "--force", "v"]);
    d.ok(&["snapshot", "rm", "s1"]);
    d.ok(&["pool", "rm", "e"]);
    fs.finish();
    d.assert_no_leftovers();
}

// ----- repeats and refusals ----------------------------------------------------------

#[test]
fn repeated_requests_are_idempotent_and_bad_ones_change_nothing() {
    if !require_root_loop("snapshot idempotency") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "src", "--size", "64M"]);
    d.ok(&["volume", "create", "other", "--size", "64M"]);
    let mp = mount(&d, "src");
    write_pattern(&mp.join(DATA), 51, 4 << 20);

    // The same snapshot again is the same snapshot, by CLI and by REST.
    let s1 = snapshot(&d, "src", "s1");
    let again = snapshot(&d, "src", "s1");
    assert_eq!(again["id"], s1["id"]);
    assert_eq!(again, s1);
    let (status, body) = d.http(
        "POST",
        "/v1/volumes/src/snapshots",
        json!({"name": "s1"}).to_string().as_bytes(),
    );
    assert_eq!((status, &body), (200, &s1));
    let (status, s2) = d.http(
        "POST",
        "/v1/volumes/src/snapshots",
        json!({"name": "s2"}).to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{s2}");
    assert_ne!(s2["id"], s1["id"]);
    assert_eq!(snapshot_files(&d).len(), 2);

    // The same clone again is the same volume.
    let c = clone(&d, "c", &["--from-snapshot", "s1"]);
    assert_eq!(clone(&d, "c", &["--from-snapshot", "s1"])["id"], c["id"]);
    assert_eq!(
        clone(&d, "c", &["--from-snapshot", "s1", "--size", "64M"])["id"],
        c["id"]
    );
    let (status, body) = d.http(
        "POST",
        "/v1/volumes",
        json!({"name": "c", "from_snapshot": "s1"})
            .to_string()
            .as_bytes(),
    );
    assert_eq!((status, &body["id"]), (200, &c["id"]), "{body}");

    let before = observe(&d);
    type Check<'a> = (&'a [&'a str], &'a str, &'a str, &'a str, Value, u16);
    let refusals: &[Check] = &[
        // A snapshot name taken by another volume's snapshot.
        (
            &["volume", "snapshot", "other", "s1"],
            "exists",
            "POST",
            "/v1/volumes/other/snapshots",
            json!({"name": "s1"}),
            409,
        ),
        // A clone's name taken with another source...
        (
            &["volume", "create", "c", "--from-snapshot", "s2"],
            "exists",
            "POST",
            "/v1/volumes",
            json!({"name": "c", "from_snapshot": "s2"}),
            409,
        ),
        (
            &["volume", "create", "c", "--from-volume", "src"],
            "exists",
            "POST",
            "/v1/volumes",
            json!({"name": "c", "from_volume": "src"}),
            409,
        ),
        // ... or another size.
        (
            &[
                "volume",
                "create",
                "c",
                "--from-snapshot",
                "s1",
                "--size",
                "128M",
            ],
            "exists",
            "POST",
            "/v1/volumes",
            json!({"name": "c", "from_snapshot": "s1", "size": "128M"}),
            409,
        ),
        // A plain volume's name, asked for as a clone.
        (
            &["volume", "create", "other", "--from-snapshot", "s1"],
            "exists",
            "POST",
            "/v1/volumes",
            json!({"name": "other", "from_snapshot": "s1"}),
            409,
        ),
        // Missing sources.
        (
            &["volume", "snapshot", "missing", "s9"],
            "not found",
            "POST",
            "/v1/volumes/missing/snapshots",
            json!({"name": "s9"}),
            404,
        ),
        (
            &["volume", "create", "n", "--from-snapshot", "missing"],
            "not found",
            "POST",
            "/v1/volumes",
            json!({"name": "n", "from_snapshot": "missing"}),
            404,
        ),
        (
            &["volume", "create", "n", "--from-volume", "missing"],
            "not found",
            "POST",
            "/v1/volumes",
            json!({"name": "n", "from_volume": "missing"}),
            404,
        ),
        // Smaller than the source.
        (
            &[
                "volume",
                "create",
                "n",
                "--from-snapshot",
                "s1",
                "--size",
                "32M",
            ],
            "smaller",
            "POST",
            "/v1/volumes",
            json!({"name": "n", "from_snapshot": "s1", "size": "32M"}),
            400,
        ),
        (
            &[
                "volume",
                "create",
                "n",
                "--from-volume",
                "src",
                "--size",
                "32M",
            ],
            "smaller",
            "POST",
            "/v1/volumes",
            json!({"name": "n", "from_volume": "src", "size": "32M"}),
            400,
        ),
        // Another filesystem than the source's.
        (
            &[
                "volume",
                "create",
                "n",
                "--from-snapshot",
                "s1",
                "--fs",
                "xfs",
            ],
            "filesystem",
            "POST",
            "/v1/volumes",
            json!({"name": "n", "from_snapshot": "s1", "fs": "xfs"}),
            400,
        ),
        // Bad names.
        (
            &["volume", "snapshot", "src", "bad/name"],
            "snapshot",
            "POST",
            "/v1/volumes/src/snapshots",
            json!({"name": "bad name"}),
            400,
        ),
        (
            &["snapshot", "rm", "missing"],
            "not found",
            "DELETE",
            "/v1/snapshots/missing",
            Value::Null,
            404,
        ),
        (
            &["snapshot", "inspect", "missing"],
            "not found",
            "GET",
            "/v1/snapshots/missing",
            Value::Null,
            404,
        ),
    ];
    for (args, want, method, path, body, status) in refusals {
        cli_refused(&d, args, want);
        assert_eq!(observe(&d), before, "after ballast {args:?}");
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (got, reply) = d.http(method, path, body.as_bytes());
        assert_eq!(got, *status, "{method} {path} {body}: {reply}");
        assert!(reply["error"]["message"].is_string(), "{reply}");
        assert_eq!(observe(&d), before, "after {method} {path} {body}");
    }
    // Both sources at once: the CLI refuses to send it, the API answers 400.
    let out = d.cli(&[
        "volume",
        "create",
        "n",
        "--from-snapshot",
        "s1",
        "--from-volume",
        "src",
    ]);
    assert!(!out.status.success());
    http_refused(
        &d,
        "POST",
        "/v1/volumes",
        json!({"name": "n", "from_snapshot": "s1", "from_volume": "src"}),
        400,
    );
    assert_eq!(observe(&d), before, "after both sources");
    // A clone of itself is nonsense.
    http_refused(
        &d,
        "POST",
        "/v1/volumes",
        json!({"name": "n", "from_volume": "n"}),
        400,
    );
    assert_eq!(observe(&d), before, "after a clone of itself");
    assert_thawed(&mp, "source after the refusals");

    d.ok(&["volume", "rm", "src", "--force"]);
    for v in ["c", "other"] {
        d.ok(&["volume", "rm", v]);
    }
    for s in ["s1", "s2"] {
        d.ok(&["snapshot", "rm", s]);
    }
    d.assert_no_leftovers();
}

// ----- deletion ---------------------------------------------------------------

#[test]
fn snapshots_outlive_their_volume_and_deleting_all_leaves_nothing() {
    if !require_root_loop("snapshot delete") {
        return;
    }
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "src", "--size", "64M"]);
    let mp = mount(&d, "src");
    let data = write_pattern(&mp.join(DATA), 61, DATA_LEN);
    let keep = snapshot(&d, "src", "keep");
    let gone = snapshot(&d, "src", "gone");

    // `snapshot rm` takes the file.
    d.ok(&["snapshot", "rm", "gone"]);
    assert!(!snapshot_file(&d, &gone).exists());
    assert_eq!(
        snapshot_files(&d),
        [format!("{}.img", str_field(&keep, "id"))]
    );
    assert_eq!(snapshot_names(&d, None), ["keep"]);
    d.fails(&["snapshot", "rm", "gone"]);
    let (status, _) = d.http("DELETE", "/v1/snapshots/gone", b"");
    assert_eq!(status, 404);

    // The volume goes; its snapshot stays and still restores.
    d.ok(&["volume", "rm", "src", "--force"]);
    assert_eq!(volume_names(&d), Vec::<String>::new());
    assert_eq!(snapshot_names(&d, None), ["keep"]);
    assert_eq!(snapshot_names(&d, Some("src")), ["keep"]);
    let s = d.json(&["snapshot", "inspect", "keep"]);
    assert_eq!(s["source_volume"], "src");
    assert_eq!(s["ready"], true);
    clone(&d, "restored", &["--from-snapshot", "keep"]);
    let rm = mount(&d, "restored");
    check_file(
        &rm.join(DATA),
        &data,
        "restore of a deleted volume's snapshot",
    );

    // Snapshots are records like volumes: a restart keeps them.
    d.restart();
    assert_eq!(snapshot_names(&d, None), ["keep"]);
    assert_eq!(d.json(&["snapshot", "inspect", "keep"]), s);
    check_file(&rm.join(DATA), &data, "restore after a daemon restart");

    // A new volume under the old name is not the snapshot's source.
    d.ok(&["volume", "create", "src", "--size", "64M"]);
    let s = snapshot(&d, "src", "fresh");
    assert_ne!(s["id"], keep["id"]);

    // Deleting everything leaves nothing.
    d.ok(&["volume", "rm", "restored", "--force"]);
    d.ok(&["volume", "rm", "src"]);
    for s in ["keep", "fresh"] {
        d.ok(&["snapshot", "rm", s]);
    }
    assert_eq!(snapshot_names(&d, None), Vec::<String>::new());
    assert_eq!(volume_names(&d), Vec::<String>::new());
    d.assert_no_leftovers();
    assert_eq!(snapshot_files(&d), Vec::<String>::new());
    let files: Vec<String> = d
        .images()
        .into_iter()
        .filter(|n| !(n == "snapshots" && snapshot_dir(&d).is_dir()))
        .collect();
    assert_eq!(files, Vec::<String>::new(), "left in the pool directory");
}

// ----- crashes ---------------------------------------------------------------

/// A mounted source with data: crash in a snapshot of it at `failpoint`;
/// the next start must thaw it and take the snapshot back.
fn crash_in_snapshot(failpoint: &str) {
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "src", "--size", "64M"]);
    let mp = mount(&d, "src");
    let data = write_pattern(&mp.join(DATA), 71, DATA_LEN);
    let image = format!("{}.img", volume_id(&d, "src"));

    d.crash_at(failpoint, &["volume", "snapshot", "src", "s"]);

    assert_eq!(
        snapshot_names(&d, None),
        Vec::<String>::new(),
        "{failpoint}"
    );
    assert_eq!(
        snapshot_files(&d),
        Vec::<String>::new(),
        "{failpoint}: left in {}",
        snapshot_dir(&d).display()
    );
    let (status, _) = d.http("GET", "/v1/snapshots/s", b"");
    assert_eq!(status, 404, "{failpoint}");
    let v = d.json(&["volume", "inspect", "src"]);
    assert_eq!(v["state"], "mounted", "{failpoint}: {v}");
    assert_eq!(str_field(&v, "mountpoint"), mp.to_str().unwrap());
    assert!(common::mount_targets().contains(&mp), "{failpoint}");
    assert_thawed(&mp, &format!("{failpoint}: source after restart"));
    check_file(&mp.join(DATA), &data, &format!("{failpoint}: source"));
    assert!(d.images().contains(&image), "{failpoint}: {:?}", d.images());
    let (status, events) = d.http("GET", "/v1/events?limit=1000", b"");
    assert_eq!(status, 200);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| str_field(e, "message") == "interrupted snapshot of src undone at start"),
        "{failpoint}: no reconcile event in {events}"
    );

    // A snapshot under the same name now works and restores the data.
    let s = snapshot(&d, "src", "s");
    assert_eq!(
        snapshot_files(&d),
        [format!("{}.img", str_field(&s, "id"))],
        "{failpoint}"
    );
    clone(&d, "c", &["--from-snapshot", "s"]);
    let cm = mount(&d, "c");
    check_file(&cm.join(DATA), &data, &format!("{failpoint}: restore"));
    assert_thawed(&mp, &format!("{failpoint}: source after the new snapshot"));

    for v in ["c", "src"] {
        d.ok(&["volume", "rm", v, "--force"]);
    }
    d.ok(&["snapshot", "rm", "s"]);
    d.assert_no_leftovers();
}

#[test]
fn crash_after_freeze_thaws_the_source_and_drops_the_snapshot() {
    if !require_root_loop("crash after freeze") {
        return;
    }
    crash_in_snapshot("snapshot.after_freeze");
}

#[test]
fn crash_after_copy_thaws_the_source_and_drops_the_snapshot() {
    if !require_root_loop("crash after copy") {
        return;
    }
    crash_in_snapshot("snapshot.after_copy");
}

#[test]
fn crash_while_cloning_a_mounted_volume_thaws_it_and_drops_the_clone() {
    if !require_root_loop("crash in clone") {
        return;
    }
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "src", "--size", "64M"]);
    let mp = mount(&d, "src");
    let data = write_pattern(&mp.join(DATA), 81, DATA_LEN);
    let images = d.images();

    d.crash_at(
        "snapshot.after_freeze",
        &["volume", "create", "c", "--from-volume", "src"],
    );

    assert_eq!(volume_names(&d), ["src"]);
    assert_eq!(d.images(), images, "the clone's image is gone");
    let (status, _) = d.http("GET", "/v1/volumes/c", b"");
    assert_eq!(status, 404);
    assert_eq!(d.json(&["volume", "inspect", "src"])["state"], "mounted");
    assert_thawed(&mp, "source after a crash in its clone");
    check_file(&mp.join(DATA), &data, "source after a crash in its clone");

    // The clone now works.
    clone(&d, "c", &["--from-volume", "src"]);
    let cm = mount(&d, "c");
    check_file(&cm.join(DATA), &data, "clone after the crash");

    for v in ["c", "src"] {
        d.ok(&["volume", "rm", v, "--force"]);
    }
    d.assert_no_leftovers();
}

// ----- without root ------------------------------------------------------------

/// Every snapshot failpoint has a crash test here (crash.rs leaves them to
/// this file).
#[test]
fn every_snapshot_failpoint_has_a_crash_test() {
    let ours: Vec<&str> = ALL
        .iter()
        .copied()
        .filter(|f| f.starts_with("snapshot."))
        .collect();
    assert_eq!(ours, SNAPSHOT_FAILPOINTS);
}

/// A copy interrupted by a crash leaves `<dst>.partial`; the next copy to the
/// same name replaces it, keeps holes, and leaves no `.partial`.
#[test]
fn copy_replaces_a_stale_partial_and_keeps_holes() {
    use ballast_core::progress::Progress;
    use ballast_drivers::copy::{copy_image, partial_name};
    use std::io::{Seek, SeekFrom};

    let dir = tempfile::Builder::new()
        .prefix("ballast-copy-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let src = dir.path().join("src.img");
    let mut f = std::fs::File::create(&src).unwrap();
    f.set_len(32 * MIB).unwrap();
    let head = pattern(91, 1 << 20);
    f.write_all(&head).unwrap();
    f.seek(SeekFrom::Start(20 * MIB)).unwrap();
    let mid = pattern(92, 1 << 20);
    f.write_all(&mid).unwrap();
    f.sync_all().unwrap();

    let dst = dir.path().join("snapshots").join("s.img");
    std::fs::create_dir(dst.parent().unwrap()).unwrap();
    std::fs::write(partial_name(&dst), b"half a copy from before a crash").unwrap();
    copy_image(&src, &dst, 0, false, &Progress::none()).unwrap();

    assert!(!partial_name(&dst).exists());
    let got = std::fs::read(&dst).unwrap();
    assert_eq!(got, std::fs::read(&src).unwrap());
    let md = std::fs::metadata(&dst).unwrap();
    assert_eq!(md.len(), 32 * MIB);
    assert!(
        md.blocks() * 512 < 8 * MIB,
        "the copy is not sparse: {} bytes allocated",
        md.blocks() * 512
    );
    // A copy onto an existing name replaces it (a repeated restore).
    copy_image(&src, &dst, 48 * MIB, false, &Progress::none()).unwrap();
    assert_eq!(std::fs::metadata(&dst).unwrap().len(), 48 * MIB);
    let got = std::fs::read(&dst).unwrap();
    assert_eq!(&got[..1 << 20], &head[..]);
    let at = usize::try_from(20 * MIB).unwrap();
    assert_eq!(&got[at..at + (1 << 20)], &mid[..]);
}

// ----- progress of a full copy ------------------------------------------------

/// A full copy (ext4 under /var/tmp has no reflink) is listed at
/// /v1/operations with its byte counts while it runs, the CLI draws a bar
/// from it on a terminal, and off a terminal it prints quiet lines only.
#[test]
fn a_full_copy_reports_its_progress() {
    if !require_root_loop("full copy progress") || !require_tool("full copy progress", "script") {
        return;
    }
    const WRITTEN: usize = 768 << 20;
    let d = Daemon::start();
    d.ok(&["volume", "create", "big", "--size", "2G"]);
    let mp = mount(&d, "big");
    common::write_file(&mp.join(DATA), WRITTEN).unwrap();

    // The CLI on a pseudo-terminal (script(1)), while this thread watches
    // the operation through REST.
    let command = format!(
        "{} --socket {} volume snapshot big s1",
        common::BIN,
        d.socket().display()
    );
    let cli = std::thread::spawn(move || {
        std::process::Command::new("script")
            .args(["-qfec", &command, "/dev/null"])
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run script")
    });
    let mut seen: Vec<Value> = Vec::new();
    while !cli.is_finished() {
        let (status, ops) = d.http("GET", "/v1/operations", b"");
        assert_eq!(status, 200, "{ops}");
        seen.extend(
            ops.as_array()
                .expect("a list")
                .iter()
                .filter(|o| o["target"] == "s1" && o["total_bytes"].as_u64() > Some(0))
                .cloned(),
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = cli.join().unwrap();
    let tty = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{tty}");
    assert!(!seen.is_empty(), "the copy was never listed as in flight");
    let total = seen[0]["total_bytes"].as_u64().unwrap();
    // The data extents of the image: what was written plus ext4's metadata,
    // and far less than the 2 GiB image.
    assert!(
        total >= WRITTEN as u64 && total < 2 << 30,
        "total {total} for {WRITTEN} written"
    );
    let mut last = 0;
    for op in &seen {
        assert_eq!(
            (&op["kind"], &op["source"]),
            (&json!("snapshot"), &json!("big")),
            "{op}"
        );
        assert_eq!(op["total_bytes"], total, "{op}");
        let done = op["done_bytes"].as_u64().unwrap();
        assert!(done >= last && done <= total, "{op} after {last}");
        last = done;
    }
    // Done means no longer listed.
    assert_eq!(d.http("GET", "/v1/operations", b""), (200, json!([])));
    // The bar: the message and the total in binary units.
    assert!(tty.contains("snapshotting big"), "{tty:?}");
    assert!(
        tty.contains("MiB") || tty.contains("GiB"),
        "no byte counts drawn: {tty:?}"
    );
    assert!(tty.trim_end().ends_with("s1"), "{tty:?}");

    // Off a terminal: no control characters, and the last line says done.
    let out = d.cli(&["volume", "create", "c1", "--from-snapshot", "s1"]);
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.contains('\u{1b}'), "{err:?}");
    let last_line = err.lines().last().unwrap_or_default();
    assert!(
        last_line.starts_with("copying s1 into c1: done in "),
        "{err:?}"
    );
    for line in err.lines() {
        assert!(line.starts_with("copying s1 into c1: "), "{err:?}");
    }
    d.ok(&["volume", "rm", "c1", "--force"]);
    d.ok(&["snapshot", "rm", "s1"]);
    d.ok(&["volume", "rm", "big", "--force"]);
    d.assert_no_leftovers();
}

/// A small volume (mke2fs would pick 1 KiB blocks below 512 MiB) cloned by
/// reflink on xfs: the clone's loop device has 4 KiB sectors, and the
/// clone must still mount with its data. Before volumes were made with
/// 4 KiB blocks the clone could not be mounted ("bad block size 1024").
#[test]
fn a_small_reflinked_clone_mounts() {
    let test = "a_small_reflinked_clone_mounts";
    if !require_root_loop(test) || !require_tool(test, "mkfs.xfs") {
        return;
    }
    let d = Daemon::start();
    let fs = ScratchFs::new(&d, "xfs", 512 * MIB, &["mkfs.xfs", "-q", "-m", "reflink=1"]);
    let path = fs.mnt.join("pool");
    d.ok(&[
        "pool",
        "create",
        "x",
        "--driver",
        "loop",
        "--path",
        path.to_str().unwrap(),
    ]);
    d.ok(&["volume", "create", "small", "--pool", "x", "--size", "64M"]);
    let mp = mount(&d, "small");
    let data = write_pattern(&mp.join(DATA), 3, 4 << 20);
    d.ok(&["volume", "unmount", "small"]);
    clone(&d, "small2", &["--from-volume", "small"]);
    let mp2 = mount(&d, "small2");
    check_file(&mp2.join(DATA), &data, "small reflinked clone");
    d.ok(&["volume", "unmount", "small2"]);
    for v in ["small2", "small"] {
        d.ok(&["volume", "rm", v]);
    }
}
