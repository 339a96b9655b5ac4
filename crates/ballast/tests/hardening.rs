//! Hardening (issue 10, items 1-5): a hung foreign filesystem, mount
//! namespaces that keep a copy of a mount, a second daemon on the same
//! directories, modes of directories ballast did not make, and the sockets
//! a start creates. Everything here runs the real binary as root against
//! real loop devices, mounts and a real FUSE server.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::hung_fuse::{mount_source, HungFuse};
use common::{loop_devices, require_root_loop, require_tool, Daemon, BIN};

/// Run the CLI against `d`, killing it after `limit`: a test of "never
/// hangs" must fail, not hang, when the daemon does.
fn cli_within(d: &Daemon, limit: Duration, args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("--socket")
        .arg(d.socket())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ballast");
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ballast {args:?} hung for {limit:?}\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn ok_within(d: &Daemon, args: &[&str]) -> String {
    let out = cli_within(d, Duration::from_secs(60), args);
    assert!(
        out.status.success(),
        "ballast {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        d.log()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Loop devices backed by `image`.
fn devices_of(image: &Path) -> Vec<String> {
    loop_devices()
        .into_iter()
        .filter(|(_, b)| b == image)
        .map(|(d, _)| d)
        .collect()
}

fn volume_image(d: &Daemon, name: &str) -> PathBuf {
    let v = d.json(&["volume", "inspect", name]);
    let id = v["id"].as_str().expect("volume id");
    d.pool_dir().join(format!("{id}.img"))
}

/// SIGTERM the daemon and wait for it to exit; the time it took.
fn sigterm_and_wait(child: &mut Child, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    while started.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A daemon started by hand (not the harness), for tests about how it
/// starts and stops.
fn spawn_serve(args: &[&str], log: &Path) -> Child {
    let log = std::fs::File::create(log).unwrap();
    Command::new(BIN)
        .arg("serve")
        .args(args)
        .args(["--listen", "none", "--no-docker"])
        .env_remove("BALLAST_SOCKET")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn serve_dirs(state: &Path, run: &Path, log: &Path) -> Child {
    spawn_serve(
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
        ],
        log,
    )
}

fn wait_for_socket(sock: &Path, child: &mut Child, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "daemon exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "daemon did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_exit(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(Instant::now() < deadline, "daemon did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- 1. a foreign hung filesystem ------------------------------------

#[test]
fn a_hung_foreign_fuse_loop_device_does_not_hang_ballast() {
    if !require_root_loop("hung fuse") || !require_tool("hung fuse", "fuse-overlayfs") {
        return;
    }
    let mut d = Daemon::start();
    let fuse_dir = d.dir.path().join("fuse");
    let mut fuse = HungFuse::start(&fuse_dir);
    // Pools of ours on the filesystem that will hang: work there gets
    // stuck in the kernel, which is what deadlines and SIGTERM are for.
    for (pool, driver) in [("hungloop", "loop"), ("hungdir", "dir")] {
        let path = fuse.mnt.join(pool);
        std::fs::create_dir_all(&path).unwrap();
        ok_within(
            &d,
            &[
                "pool",
                "create",
                pool,
                "--driver",
                driver,
                "--path",
                path.to_str().unwrap(),
            ],
        );
    }
    fuse.hang();

    // Our own volumes: create, mount, write, unmount, remove. Before the fix
    // the attach resolved the foreign device's backing file and never came
    // back.
    for i in 0..3 {
        let name = format!("fz{i}");
        ok_within(&d, &["volume", "create", &name, "--size", "32M"]);
        let path = ok_within(&d, &["volume", "mount", &name]);
        let path = PathBuf::from(path.trim());
        assert!(
            mount_source(&path).is_some_and(|s| s.starts_with("/dev/loop")),
            "{} is not a mounted loop device",
            path.display()
        );
        std::fs::write(path.join("data"), b"x").unwrap();
        ok_within(&d, &["volume", "unmount", &name]);
        ok_within(&d, &["volume", "rm", &name]);
    }

    // Work on the hung pool fails with a clear error after its deadline,
    // and the volume's lock is released: the same call again is answered
    // too (it would wait forever behind a held lock).
    for _ in 0..2 {
        let out = cli_within(
            &d,
            Duration::from_secs(60),
            &[
                "volume", "create", "stuck", "--pool", "hungloop", "--size", "8M",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "create on a hung pool succeeded");
        assert!(
            err.contains("did not answer in time"),
            "not a clear timeout: {err}"
        );
    }
    // The REST status of it is 503.
    let started = Instant::now();
    let (status, body) = d.http(
        "POST",
        "/v1/volumes",
        br#"{"name":"stuck2","pool":"hungloop","size":"8M"}"#,
    );
    assert_eq!(status, 503, "{body}");
    eprintln!("hung pool create answered 503 in {:?}", started.elapsed());

    // SIGTERM while a worker is stuck in the kernel (a dir volume's mkdir
    // on the hung pool): the daemon exits, and says what it left.
    let mut bg = Command::new(BIN)
        .arg("--socket")
        .arg(d.socket())
        .args(["volume", "create", "stuck3", "--pool", "hungdir"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let mut child = d.take_child();
    let took = sigterm_and_wait(&mut child, Duration::from_secs(10));
    let _ = bg.kill();
    let _ = bg.wait();
    let Some(took) = took else {
        let _ = child.kill();
        panic!("SIGTERM did not end the daemon within 10 s\n{}", d.log());
    };
    eprintln!("SIGTERM with a stuck worker: exited in {took:?}");
    let log = d.log();
    assert!(
        log.contains("leaving operations that are still in flight") && log.contains("stuck3"),
        "the daemon did not log what it abandoned:\n{log}"
    );
    // No socket left behind for the next start to trip over.
    assert!(!d.socket().exists(), "api.sock left behind");
    drop(fuse);
    d.restart();
    d.assert_no_leftovers();
}

// ----- 2. mount namespaces that keep a copy of a mount ------------------

/// `unshare -m --propagation private sleep 60`: a new mount namespace with
/// a private copy of every mount, as any container start makes.
struct PrivateNamespace(Child);

impl PrivateNamespace {
    /// `cwd`: where the process sits (a volume's mountpoint keeps that
    /// volume's mount referenced in its namespace).
    fn start(cwd: &Path) -> PrivateNamespace {
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sleep", "60"])
            // The copy of the mount stays alive through its cwd, even after
            // our rmdir of the mountpoint detaches it in that namespace.
            .current_dir(cwd)
            .spawn()
            .expect("unshare");
        let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
        let path = format!("/proc/{}/ns/mnt", child.id());
        let deadline = Instant::now() + Duration::from_secs(10);
        // Its namespace exists once unshare has exec'd sleep.
        while std::fs::read_link(&path).ok().is_none_or(|ns| ns == ours) {
            assert!(Instant::now() < deadline, "unshare did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        PrivateNamespace(child)
    }
}

impl Drop for PrivateNamespace {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn unmount_while_another_namespace_holds_a_copy_then_mount_reuses_the_device() {
    if !require_root_loop("namespace copy") || !require_tool("namespace copy", "unshare") {
        return;
    }
    let mut d = Daemon::start();
    d.ok(&["volume", "create", "ns", "--size", "64M"]);
    let image = volume_image(&d, "ns");
    let path = PathBuf::from(d.ok(&["volume", "mount", "ns"]).trim());
    std::fs::write(path.join("before"), b"kept").unwrap();
    let first_device = mount_source(&path).expect("mounted");
    let ns = PrivateNamespace::start(&path);

    // (b) The umount here succeeds; the device is still referenced from the
    // other namespace. Before the fix: "target is busy", still "mounted".
    d.ok(&["volume", "unmount", "ns"]);
    let v = d.json(&["volume", "inspect", "ns"]);
    assert_eq!(v["state"], "available", "{v}");
    assert!(v["mountpoint"].is_null(), "{v}");
    assert_eq!(mount_source(&path), None, "still mounted here");
    assert_eq!(
        devices_of(&image),
        vec![first_device.clone()],
        "the other namespace holds the device (image {}, devices {:?})",
        image.display(),
        loop_devices()
    );

    // (a, c) Mounting again mounts for real, on the same device: one
    // device and one filesystem instance per image.
    let again = PathBuf::from(d.ok(&["volume", "mount", "ns"]).trim());
    assert_eq!(again, path);
    assert_eq!(mount_source(&again).as_deref(), Some(first_device.as_str()));
    assert_eq!(devices_of(&image), vec![first_device.clone()]);
    assert_eq!(std::fs::read(again.join("before")).unwrap(), b"kept");
    std::fs::write(again.join("after"), b"new").unwrap();
    d.ok(&["volume", "unmount", "ns"]);

    // (d) A start with the device still held elsewhere knows that state:
    // neither an orphan to complain about nor a failure.
    d.restart();
    let log = d.log();
    let last_start = log.rsplit("reconciled").next().unwrap_or_default();
    assert!(
        !last_start.contains("could not detach"),
        "reconcile treated the held device as a failure:\n{log}"
    );
    assert!(
        log.contains("still referenced elsewhere; left for autoclear"),
        "reconcile did not recognise the held device:\n{log}"
    );
    assert!(log.contains("held_elsewhere=1"), "{log}");
    let path = PathBuf::from(d.ok(&["volume", "mount", "ns"]).trim());
    assert_eq!(mount_source(&path).as_deref(), Some(first_device.as_str()));
    assert_eq!(std::fs::read(path.join("after")).unwrap(), b"new");
    d.ok(&["volume", "unmount", "ns"]);

    // When the other namespace goes, the kernel frees the device.
    drop(ns);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !devices_of(&image).is_empty() {
        assert!(
            Instant::now() < deadline,
            "autoclear did not free the device"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.ok(&["volume", "rm", "ns"]);
    d.assert_no_leftovers();
}

#[test]
fn a_mount_whose_staging_vanished_is_mounted_again_not_served_bare() {
    if !require_root_loop("vanished staging") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "bare", "--size", "64M"]);
    let path = PathBuf::from(d.ok(&["volume", "mount", "bare"]).trim());
    std::fs::write(path.join("inside"), b"1").unwrap();
    // Someone unmounts it behind the daemon's back.
    nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).unwrap();
    assert_eq!(mount_source(&path), None);
    // Another consumer mounts it: before the fix this returned the bare
    // directory on the root filesystem.
    let again = PathBuf::from(d.ok(&["volume", "mount", "bare", "--id", "second"]).trim());
    assert!(
        mount_source(&again).is_some_and(|s| s.starts_with("/dev/loop")),
        "{} was handed out without the volume mounted on it",
        again.display()
    );
    assert_eq!(std::fs::read(again.join("inside")).unwrap(), b"1");
    d.ok(&["volume", "unmount", "bare", "--id", "second"]);
    d.ok(&["volume", "unmount", "bare"]);
    d.ok(&["volume", "rm", "bare"]);
    d.assert_no_leftovers();
}

// ----- 3. a second daemon on the same directories ----------------------

#[test]
fn a_second_daemon_on_the_same_run_or_state_dir_touches_nothing() {
    if !require_root_loop("second daemon") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "first", "--size", "64M"]);
    let path = PathBuf::from(d.ok(&["volume", "mount", "first"]).trim());
    let device = mount_source(&path).expect("mounted");
    let other = d.dir.path().join("other");
    for (state, run, what) in [
        (other.join("state"), d.run.clone(), "run dir"),
        (d.state.clone(), other.join("run"), "state dir"),
    ] {
        let log = d.dir.path().join("second.log");
        let mut second = serve_dirs(&state, &run, &log);
        let status = wait_exit(&mut second);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!status.success(), "a second daemon on the {what} started");
        assert!(
            text.contains(&format!("{what} ")) && text.contains("in use by another ballast daemon"),
            "no clear message: {text}"
        );
        assert!(
            !text.contains("unmounting a mount no volume owns") && !text.contains("reconciled"),
            "the second daemon reconciled: {text}"
        );
        // The first daemon's volume is still mounted, its socket answers.
        assert_eq!(mount_source(&path).as_deref(), Some(device.as_str()));
        assert_eq!(d.json(&["volume", "inspect", "first"])["state"], "mounted");
    }
    d.ok(&["volume", "unmount", "first"]);
    d.ok(&["volume", "rm", "first"]);
}

// ----- 4. modes of directories ballast did not make --------------------

#[test]
fn existing_directories_keep_their_modes_and_unsafe_state_is_refused() {
    if !require_root_loop("dir modes") {
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("ballast-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = scratch.path();
    let set_mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;

    // A run dir like /tmp (1777) stays 1777; a state dir made by ballast is 0700.
    let run = root.join("tmp");
    std::fs::create_dir(&run).unwrap();
    set_mode(&run, 0o1777);
    let state = root.join("made").join("state");
    let log = root.join("a.log");
    let mut child = serve_dirs(&state, &run, &log);
    wait_for_socket(&run.join("api.sock"), &mut child, &log);
    assert_eq!(mode(&run), 0o1777, "the run dir's mode was changed");
    assert_eq!(mode(&state), 0o700);
    assert!(sigterm_and_wait(&mut child, Duration::from_secs(30)).is_some());
    assert_eq!(mode(&run), 0o1777);

    // A token file others can read is fixed, with a warning.
    let token = state.join("token");
    set_mode(&token, 0o644);
    let log = root.join("b.log");
    let mut child = serve_dirs(&state, &run, &log);
    wait_for_socket(&run.join("api.sock"), &mut child, &log);
    assert_eq!(mode(&token), 0o600);
    assert!(sigterm_and_wait(&mut child, Duration::from_secs(30)).is_some());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("token was readable by others"), "{text}");

    // A group-readable state dir: a warning. A world-writable one: refused,
    // and nothing is made in it.
    set_mode(&state, 0o750);
    let log = root.join("c.log");
    let mut child = serve_dirs(&state, &run, &log);
    wait_for_socket(&run.join("api.sock"), &mut child, &log);
    assert!(sigterm_and_wait(&mut child, Duration::from_secs(30)).is_some());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("state dir is readable by others"), "{text}");
    assert_eq!(mode(&state), 0o750, "the state dir's mode was changed");

    let open = root.join("open");
    std::fs::create_dir(&open).unwrap();
    set_mode(&open, 0o777);
    let log = root.join("d.log");
    let mut child = serve_dirs(&open, &root.join("run2"), &log);
    let status = wait_exit(&mut child);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success());
    assert!(text.contains("world-writable"), "{text}");
    assert_eq!(
        std::fs::read_dir(&open).unwrap().count(),
        0,
        "something was made in a refused state dir"
    );
    assert_eq!(mode(&open), 0o777);
}

// ----- 5. serve --socket, and what a failed start leaves ----------------

#[test]
fn serve_honours_socket_and_a_failed_start_removes_what_it_made() {
    if !require_root_loop("serve socket") {
        return;
    }
    let scratch = tempfile::Builder::new()
        .prefix("ballast-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = scratch.path();
    let state = root.join("state");
    let run = root.join("run");
    let sock = root.join("elsewhere").join("my-api.sock");
    let log = root.join("a.log");
    let mut child = spawn_serve(
        &[
            "--state-dir",
            state.to_str().unwrap(),
            "--run-dir",
            run.to_str().unwrap(),
            "--socket",
            sock.to_str().unwrap(),
        ],
        &log,
    );
    wait_for_socket(&sock, &mut child, &log);
    assert!(!run.join("api.sock").exists(), "--socket was ignored");
    let out = Command::new(BIN)
        .arg("--socket")
        .arg(&sock)
        .args(["pool", "ls"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(sigterm_and_wait(&mut child, Duration::from_secs(30)).is_some());
    assert!(!sock.exists(), "the socket stays after a stop");

    // The Docker plugin socket cannot be made (its directory is a file):
    // the start fails and takes its api.sock and csi.sock back.
    let not_a_dir = root.join("plugins");
    std::fs::write(&not_a_dir, b"").unwrap();
    let log = root.join("b.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let status = Command::new(BIN)
        .arg("serve")
        .args(["--state-dir", state.to_str().unwrap()])
        .args(["--run-dir", run.to_str().unwrap()])
        .args(["--listen", "none"])
        .args(["--docker-plugin-dir", not_a_dir.to_str().unwrap()])
        .args(["--docker-plugin-name", "bt-failstart"])
        .env_remove("BALLAST_SOCKET")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .status()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "{text}");
    assert!(
        !run.join("api.sock").exists(),
        "api.sock left behind: {text}"
    );
    assert!(
        !run.join("csi.sock").exists(),
        "csi.sock left behind: {text}"
    );
}
