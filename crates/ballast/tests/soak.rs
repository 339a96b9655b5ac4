//! The hardening soak (issue 10's acceptance): 32 clients create, mount,
//! write, unmount and remove volumes for 60 s (`BALLAST_SOAK_SECS`) while
//! another thread keeps making private mount namespaces (some sitting in a
//! mounted volume, as a container would) and a foreign loop device hangs on
//! a stopped FUSE server. No mount may report success without the volume
//! mounted, no write may land on the root filesystem, nothing may leak, and
//! SIGTERM must end the daemon within 10 s.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::hung_fuse::{mount_source, HungFuse};
use common::{require_root_loop, require_tool, Daemon, BIN};

#[derive(Default)]
struct Counts {
    cycles: AtomicU64,
    mounts: AtomicU64,
    failed_calls: AtomicU64,
    /// A mount that answered a path with no volume behind it.
    false_mounts: AtomicU64,
    /// A file written through the volume that stayed on the mountpoint
    /// directory after the unmount: it went to the root filesystem.
    root_writes: AtomicU64,
    namespaces: AtomicU64,
}

fn cli(sock: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(sock)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "ballast {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn worker(
    sock: PathBuf,
    id: usize,
    until: Instant,
    counts: Arc<Counts>,
    mounted: Arc<Mutex<Vec<PathBuf>>>,
    errors: Arc<Mutex<Vec<String>>>,
) {
    let fail = |e: String| {
        counts.failed_calls.fetch_add(1, Ordering::Relaxed);
        let mut errs = errors.lock().unwrap();
        if errs.len() < 20 {
            errs.push(e);
        }
    };
    let mut i = 0u64;
    while Instant::now() < until {
        i += 1;
        let name = format!("soak{id}-{i}");
        if let Err(e) = cli(&sock, &["volume", "create", &name, "--size", "16M"]) {
            fail(e);
            continue;
        }
        match cli(&sock, &["volume", "mount", &name]) {
            Ok(path) => {
                counts.mounts.fetch_add(1, Ordering::Relaxed);
                let path = PathBuf::from(path);
                if !mount_source(&path).is_some_and(|s| s.starts_with("/dev/loop")) {
                    counts.false_mounts.fetch_add(1, Ordering::Relaxed);
                }
                let file = path.join("payload");
                let body = format!("{name} payload");
                if let Err(e) = std::fs::write(&file, &body) {
                    fail(format!("write {}: {e}", file.display()));
                }
                mounted.lock().unwrap().push(path.clone());
                std::thread::sleep(Duration::from_millis(20));
                mounted.lock().unwrap().retain(|p| p != &path);
                if let Err(e) = cli(&sock, &["volume", "unmount", &name]) {
                    fail(e);
                }
                if file.exists() && mount_source(&path).is_none() {
                    counts.root_writes.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => fail(e),
        }
        if let Err(e) = cli(&sock, &["volume", "rm", &name]) {
            fail(e);
        }
        counts.cycles.fetch_add(1, Ordering::Relaxed);
    }
}

/// Private mount namespaces, made and ended all the time; every other one
/// sits in a volume that is mounted right now, holding its mount's copy.
fn namespaces(stop: Arc<AtomicBool>, counts: Arc<Counts>, mounted: Arc<Mutex<Vec<PathBuf>>>) {
    let mut alive: Vec<(Child, Instant)> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sleep", "3"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if n.is_multiple_of(2) {
            if let Some(p) = mounted.lock().unwrap().last().cloned() {
                cmd.current_dir(p);
            }
        }
        // The mountpoint may be gone by now: that is fine.
        if let Ok(child) = cmd.spawn() {
            counts.namespaces.fetch_add(1, Ordering::Relaxed);
            alive.push((child, Instant::now()));
        }
        alive.retain_mut(|(c, _)| c.try_wait().ok().flatten().is_none());
        std::thread::sleep(Duration::from_millis(50));
    }
    for (mut c, _) in alive {
        let _ = c.kill();
        let _ = c.wait();
    }
}

#[test]
fn soak_32_clients_with_namespaces_and_a_hung_foreign_loop_device() {
    if !require_root_loop("soak")
        || !require_tool("soak", "fuse-overlayfs")
        || !require_tool("soak", "unshare")
    {
        return;
    }
    let secs: u64 = std::env::var("BALLAST_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let fuse_dir = tempfile::Builder::new()
        .prefix("ballast-fuse-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut fuse = HungFuse::start(fuse_dir.path());
    fuse.hang();
    let mut d = Daemon::start();
    let counts = Arc::new(Counts::default());
    let mounted = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let ns = {
        let (stop, counts, mounted) = (stop.clone(), counts.clone(), mounted.clone());
        std::thread::spawn(move || namespaces(stop, counts, mounted))
    };
    let until = Instant::now() + Duration::from_secs(secs);
    let workers: Vec<_> = (0..32)
        .map(|id| {
            let (sock, counts, mounted, errors) =
                (d.socket(), counts.clone(), mounted.clone(), errors.clone());
            std::thread::spawn(move || worker(sock, id, until, counts, mounted, errors))
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    ns.join().unwrap();

    let c = &counts;
    eprintln!(
        "soak {secs}s: {} cycles, {} mounts, {} namespaces, {} failed calls, {} false mounts, {} root writes",
        c.cycles.load(Ordering::Relaxed),
        c.mounts.load(Ordering::Relaxed),
        c.namespaces.load(Ordering::Relaxed),
        c.failed_calls.load(Ordering::Relaxed),
        c.false_mounts.load(Ordering::Relaxed),
        c.root_writes.load(Ordering::Relaxed),
    );
    assert_eq!(
        c.false_mounts.load(Ordering::Relaxed),
        0,
        "mounts that reported success without the volume"
    );
    assert_eq!(
        c.root_writes.load(Ordering::Relaxed),
        0,
        "writes that landed on the root filesystem"
    );
    assert_eq!(
        c.failed_calls.load(Ordering::Relaxed),
        0,
        "failed calls: {:?}\n{}",
        errors.lock().unwrap(),
        d.log()
    );
    assert!(
        c.mounts.load(Ordering::Relaxed) >= 32,
        "the soak did too little"
    );
    assert!(
        d.json(&["volume", "ls"]).as_array().unwrap().is_empty(),
        "volumes left"
    );
    // Nothing mounted or attached of ours once the namespaces are gone.
    d.assert_no_leftovers();
    let mounts_dir = d.run.join("mounts");
    let left: Vec<_> = std::fs::read_dir(&mounts_dir)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "mountpoints left: {left:?}");

    let mut child = d.take_child();
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut exited = false;
    while started.elapsed() < Duration::from_secs(10) {
        if child.try_wait().unwrap().is_some() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !exited {
        let _ = child.kill();
    }
    let _ = child.wait();
    eprintln!("soak: SIGTERM exit took {:?}", started.elapsed());
    assert!(exited, "SIGTERM did not end the daemon within 10 s");
    drop(fuse);
}
