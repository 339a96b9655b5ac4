//! The Docker volume plugin end to end against the machine's real dockerd:
//! `docker volume` and `docker run` drive a real `ballast serve` through its
//! plugin socket in /run/docker/plugins, and the plugin protocol is also
//! spoken raw, the way dockerd speaks it.
//!
//! dockerd is shared by the whole machine: every test serves the plugin
//! under its own name and names its volumes and containers after it (dockerd's
//! volume and container names are global), and a [`Session`] removes what the
//! test left in dockerd even when it fails.

mod common;

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{require_root_loop, require_tool, Daemon};
use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Value};

/// The test image: Debian's static busybox and nothing else.
const IMAGE: &str = "ballast-test-busybox:latest";
/// Applets linked in the image; the list is also the image's label, so an
/// image built with another list is rebuilt.
const APPLETS: &[&str] = &[
    "sh",
    "cat",
    "dd",
    "echo",
    "sleep",
    "sync",
    "ls",
    "rm",
    "df",
    "sha256sum",
    "head",
    "mkdir",
    "touch",
    "true",
];
const TOOLS_LABEL: &str = "ballast.test.applets";
const PLUGIN_DIR: &str = "/run/docker/plugins";
/// The container label that marks what a session must clean up.
const SESSION_LABEL: &str = "ballast-test";

/// Whether dockerd answers. Locally a missing dockerd skips the test; with
/// CI=true it fails it.
fn require_docker(test: &str) -> bool {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output();
    let why = match out {
        Ok(o) if o.status.success() => return true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("cannot run docker: {e}"),
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs a running dockerd ({why}); CI=true makes a missing prerequisite a failure");
    }
    eprintln!("SKIP {test}: needs a running dockerd ({why})");
    false
}

/// Everything a test that runs containers needs, the image included.
fn prerequisites(test: &str) -> bool {
    if !(require_root_loop(test) && require_docker(test) && require_tool(test, "busybox")) {
        return false;
    }
    ensure_image();
    true
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker")
}

/// Run docker and insist on success; returns stdout.
fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// stdout and stderr together, for messages that may land in either.
fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Build [`IMAGE`] once: `docker import` of a rootfs holding /bin/busybox
/// and its applet links. Tests in parallel processes take a file lock so
/// only one builds.
fn ensure_image() {
    let lock = std::fs::File::create("/var/tmp/ballast-test-busybox.lock").unwrap();
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock the image build");
    let want = APPLETS.join(",");
    let format = format!("{{{{index .Config.Labels \"{TOOLS_LABEL}\"}}}}");
    let out = docker(&["image", "inspect", "--format", &format, IMAGE]);
    if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == want {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("ballast-test-image-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let root = dir.path().join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox")).expect("copy /bin/busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
    }
    for d in ["data", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let tar = dir.path().join("rootfs.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed: {status}");
    docker_ok(&[
        "import",
        "--change",
        &format!("LABEL {TOOLS_LABEL}={want}"),
        tar.to_str().unwrap(),
        IMAGE,
    ]);
}

/// Poll `cond` until it holds; a generous deadline only turns a hang into a
/// failure, nothing is asserted about time.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Claim a plugin name for `test`: `bt-<test>` when no other process holds
/// it, else `bt-<test>-<pid>`. dockerd 20.10 caches every legacy plugin it
/// has seen until it restarts and retries a dead one for 15 s whenever it
/// probes all drivers, so names are reused across runs rather than made
/// anew each time; the lock keeps parallel runs apart.
fn claim_plugin_name(test: &str) -> (String, Flock<std::fs::File>) {
    for name in [
        format!("bt-{test}"),
        format!("bt-{test}-{}", std::process::id()),
    ] {
        let file = std::fs::File::create(format!("/var/tmp/ballast-test-plugin-{name}.lock"))
            .expect("plugin name lock file");
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // A daemon orphaned by a killed run may still serve the name.
            Ok(_)
                if UnixStream::connect(Path::new(PLUGIN_DIR).join(format!("{name}.sock")))
                    .is_ok() =>
            {
                continue
            }
            Ok(lock) => return (name, lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
            Err((_, e)) => panic!("locking plugin name {name}: {e}"),
        }
    }
    panic!("plugin name for {test}: both names are taken");
}

/// A ballast daemon serving the plugin under a name of its own, and the
/// dockerd objects made under that name. Dropping it removes the test's
/// containers (by label) and volumes from dockerd, then stops the daemon.
struct Session {
    plugin: String,
    plugin_dir: PathBuf,
    /// Volumes dockerd has a record of (made through it): removed through
    /// dockerd at the end. Any other volume is removed through ballast, since
    /// dockerd looks a name it has no record of up in every driver it knows.
    docker_known: RefCell<BTreeSet<String>>,
    d: Daemon,
    private_dir: Option<tempfile::TempDir>,
    _name: Flock<std::fs::File>,
}

impl Session {
    /// Serve the plugin where dockerd finds it.
    fn start(test: &str) -> Session {
        Self::start_in(test, None)
    }

    /// Serve the plugin in a directory of its own, out of dockerd's sight:
    /// for tests that speak the protocol themselves.
    fn start_private(test: &str) -> Session {
        let dir = tempfile::Builder::new()
            .prefix("ballast-test-plugins-")
            .tempdir_in("/var/tmp")
            .unwrap();
        Self::start_in(test, Some(dir))
    }

    fn start_in(test: &str, private: Option<tempfile::TempDir>) -> Session {
        let (plugin, name_lock) = claim_plugin_name(test);
        let plugin_dir = private
            .as_ref()
            .map_or_else(|| PathBuf::from(PLUGIN_DIR), |d| d.path().to_path_buf());
        let dir_arg = plugin_dir.to_str().unwrap().to_string();
        let d = Daemon::start_with(
            &[
                "--docker-plugin-name",
                &plugin,
                "--docker-plugin-dir",
                &dir_arg,
            ],
            &[],
        );
        let s = Session {
            plugin,
            plugin_dir,
            docker_known: RefCell::default(),
            d,
            private_dir: private,
            _name: name_lock,
        };
        if s.private_dir.is_none() {
            s.remove_containers();
        }
        s
    }

    /// A dockerd-wide unique name for a volume or container.
    fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.plugin)
    }

    fn socket(&self) -> PathBuf {
        self.plugin_dir.join(format!("{}.sock", self.plugin))
    }

    /// Note a volume dockerd made (implicitly, by `docker run`).
    fn docker_knows(&self, name: &str) {
        self.docker_known.borrow_mut().insert(name.to_string());
    }

    /// `docker volume create -d <plugin>` with options.
    fn docker_create(&self, name: &str, opts: &[&str]) {
        let mut args = vec!["volume", "create", "-d", &self.plugin];
        for o in opts {
            args.extend(["-o", o]);
        }
        args.push(name);
        docker_ok(&args);
        self.docker_knows(name);
    }

    /// `docker run` with the session's cleanup label.
    fn run(&self, args: &[&str]) -> Output {
        let label = format!("{SESSION_LABEL}={}", self.plugin);
        let mut all = vec!["run", "--label", &label];
        all.extend_from_slice(args);
        docker(&all)
    }

    fn run_ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "docker run {args:?} failed ({}): {}\n{}",
            out.status,
            combined(&out),
            self.d.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `ballast volume inspect` as JSON.
    fn volume(&self, name: &str) -> Value {
        self.d.json(&["volume", "inspect", name])
    }

    /// Names of ballast's volumes, sorted.
    fn ballast_volumes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .d
            .json(&["volume", "ls"])
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    fn consumers(&self, name: &str) -> Vec<Value> {
        self.volume(name)["consumers"].as_array().unwrap().clone()
    }

    /// Wait for dockerd's Unmount calls to land: `docker stop` may return
    /// before the container's cleanup has released its volumes.
    fn wait_consumers(&self, name: &str, n: usize) {
        wait_until(&format!("{name} to have {n} consumer(s)"), || {
            self.consumers(name).len() == n
        });
    }

    fn plugin(&self, endpoint: &str, body: Value) -> Value {
        let (status, v) = plugin_call(&self.socket(), endpoint, body.to_string().as_bytes());
        assert_eq!(status, 200, "{endpoint}: {v}");
        v
    }

    /// Remove the containers labelled with this session's plugin, this
    /// run's or a killed earlier run's.
    fn remove_containers(&self) {
        let label = format!("label={SESSION_LABEL}={}", self.plugin);
        let out = docker(&["ps", "-aq", "--filter", &label]);
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = docker(&args);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.private_dir.is_none() {
            self.remove_containers();
        }
        // Removing a volume goes through the plugin: bring it back if the
        // test left it dead.
        if !self.d.is_running() && !std::thread::panicking() {
            let d = &mut self.d;
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.restart()));
        }
        let out = self.d.cli(&["-o", "json", "volume", "ls"]);
        let left: Vec<String> = serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        let hex64 = |n: &str| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit());
        let known = self.docker_known.borrow().clone();
        for name in left {
            if known.contains(&name) || hex64(&name) {
                let _ = docker(&["volume", "rm", "-f", &name]);
            } else {
                let _ = self.d.cli(&["volume", "rm", "--force", &name]);
            }
        }
    }
}

/// One raw HTTP/1.1 request on a plugin socket; (status, body).
fn plugin_raw(sock: &Path, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) before it has read a large body.
    let _ = s.write_all(body);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {:?}", String::from_utf8_lossy(&resp)));
    let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let mut body = resp[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    (status, body)
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 4 + n..];
    }
    out
}

/// A POST on the plugin socket whose reply must be a JSON object, as every
/// plugin reply must be (at least `{}`); (status, body).
fn plugin_call(sock: &Path, endpoint: &str, body: &[u8]) -> (u16, Value) {
    let (status, bytes) = plugin_raw(sock, "POST", endpoint, body);
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "{endpoint}: reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    assert!(v.is_object(), "{endpoint}: reply is not an object: {v}");
    (status, v)
}

/// The reply's `Err`, which must be there and say something.
fn err_of(v: &Value) -> &str {
    let e = v["Err"].as_str().unwrap_or_default();
    assert!(!e.is_empty(), "expected an Err: {v}");
    e
}

fn no_err(v: &Value) {
    assert!(
        v.get("Err").is_none_or(|e| e.as_str() == Some("")),
        "unexpected Err: {v}"
    );
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

// ----- docker volume / docker run ---------------------------------------

#[test]
fn docker_volume_create_and_inspect_show_ballast_status() {
    if !prerequisites("docker_volume_create_and_inspect") {
        return;
    }
    let s = Session::start("inspect");
    let v = s.name("v");
    s.docker_create(&v, &["size=64M"]);
    let out = docker_ok(&["volume", "inspect", &v]);
    let all: Value = serde_json::from_str(&out).unwrap();
    let vol = &all.as_array().expect("an array")[0];
    assert_eq!(vol["Name"], v.as_str());
    assert_eq!(vol["Driver"], s.plugin.as_str());
    assert_eq!(vol["Scope"], "local");
    let status = &vol["Status"];
    assert_eq!(status["size_bytes"], 64 << 20, "{vol}");
    assert_eq!(status["pool"], "default");
    assert_eq!(status["fs"], "ext4");
    assert_eq!(status["state"], "available");
    let created = vol["CreatedAt"].as_str().expect("CreatedAt");
    chrono::DateTime::parse_from_rfc3339(created)
        .unwrap_or_else(|e| panic!("CreatedAt {created:?} is not RFC 3339: {e}"));
    // ballast holds the same volume.
    let b = s.volume(&v);
    assert_eq!(b["size_bytes"], 64 << 20);
    assert_eq!(s.d.images().len(), 1);
}

#[test]
fn data_written_by_one_container_is_read_by_the_next_and_size_is_enforced() {
    if !prerequisites("data_written_by_one_container") {
        return;
    }
    let s = Session::start("rw");
    let v = s.name("v");
    s.docker_create(&v, &["size=64M"]);
    let mount = format!("{v}:/data");
    let written = s.run_ok(&[
        "--rm",
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "echo persistent > /data/hello && dd if=/dev/urandom of=/data/blob bs=1M count=8 2>/dev/null && sync && sha256sum /data/blob",
    ]);
    // Unmounted between the two containers: the data outlives the mount.
    s.wait_consumers(&v, 0);
    assert_eq!(s.volume(&v)["state"], "available");
    s.d.assert_no_leftovers();
    let read = s.run_ok(&[
        "--rm",
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "cat /data/hello && sha256sum /data/blob",
    ]);
    let mut lines = read.lines();
    assert_eq!(lines.next(), Some("persistent"));
    assert_eq!(lines.next(), Some(written.trim()), "blob differs");
    assert!(written.contains("/data/blob"), "{written}");

    // 100 MiB cannot fit in 64 MiB: the container sees ENOSPC.
    let out = s.run(&[
        "--rm",
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "dd if=/dev/zero of=/data/big bs=1M count=100 conv=fsync 2>&1",
    ]);
    let text = combined(&out);
    assert!(!out.status.success(), "100 MiB fit in 64 MiB: {text}");
    assert!(text.contains("No space left"), "{text}");
    s.wait_consumers(&v, 0);
    s.d.assert_no_leftovers();
}

#[test]
fn two_containers_share_a_volume_until_both_stop() {
    if !prerequisites("two_containers_share") {
        return;
    }
    let s = Session::start("share");
    let v = s.name("v");
    s.docker_create(&v, &["size=64M"]);
    let mount = format!("{v}:/data");
    let (c1, c2) = (s.name("c1"), s.name("c2"));
    for c in [&c1, &c2] {
        s.run_ok(&[
            "-d", "--init", "--name", c, "-v", &mount, IMAGE, "sleep", "100000",
        ]);
    }
    let vol = s.volume(&v);
    assert_eq!(vol["state"], "mounted");
    let consumers = vol["consumers"].as_array().unwrap();
    assert_eq!(consumers.len(), 2, "one consumer per container: {vol}");
    assert!(consumers.iter().all(|c| c["kind"] == "docker"), "{vol}");
    let host_mp = PathBuf::from(vol["mountpoint"].as_str().unwrap());

    docker_ok(&["stop", "-t", "10", &c1]);
    s.wait_consumers(&v, 1);
    docker_ok(&[
        "exec",
        &c2,
        "sh",
        "-c",
        "echo still-here >> /data/after-stop && sync",
    ]);
    assert_eq!(
        std::fs::read_to_string(host_mp.join("after-stop")).unwrap(),
        "still-here\n"
    );
    assert_eq!(s.volume(&v)["state"], "mounted");

    docker_ok(&["stop", "-t", "10", &c2]);
    s.wait_consumers(&v, 0);
    assert_eq!(s.volume(&v)["state"], "available");
    s.d.assert_no_leftovers();
}

#[test]
fn docker_volume_rm_refuses_a_volume_in_use_then_removes_it() {
    if !prerequisites("docker_volume_rm") {
        return;
    }
    let s = Session::start("rm");
    let v = s.name("v");
    s.docker_create(&v, &["size=64M"]);
    let c = s.name("c");
    let mount = format!("{v}:/data");
    let id = s.run_ok(&[
        "-d", "--init", "--name", &c, "-v", &mount, IMAGE, "sleep", "100000",
    ]);
    assert_eq!(s.d.images().len(), 1);

    // dockerd refuses by itself, naming the container; ballast is not asked.
    let out = docker(&["volume", "rm", &v]);
    assert!(!out.status.success(), "removed a volume in use");
    let msg = combined(&out);
    assert!(msg.contains("volume is in use"), "{msg}");
    assert!(msg.contains(id.trim()), "{msg}");
    assert_eq!(s.ballast_volumes(), std::slice::from_ref(&v));
    assert_eq!(s.volume(&v)["state"], "mounted");

    docker_ok(&["rm", "-f", &c]);
    s.wait_consumers(&v, 0);
    docker_ok(&["volume", "rm", &v]);
    assert!(s.ballast_volumes().is_empty());
    assert!(s.d.images().is_empty(), "image left: {:?}", s.d.images());
    s.d.assert_no_leftovers();
    let driver = format!("driver={}", s.plugin);
    let listed = docker_ok(&["volume", "ls", "-q", "--filter", &driver]);
    assert!(listed.trim().is_empty(), "dockerd still lists {listed}");
}

#[test]
fn docker_run_creates_a_missing_volume_with_the_default_size() {
    if !prerequisites("docker_run_creates") {
        return;
    }
    let s = Session::start("implicit");
    let v = s.name("v");
    let mount = format!("{v}:/data");
    s.run_ok(&[
        "--rm",
        "--volume-driver",
        &s.plugin,
        "-v",
        &mount,
        IMAGE,
        "true",
    ]);
    s.docker_knows(&v);
    let vol = s.volume(&v);
    assert_eq!(vol["size_bytes"], 1u64 << 30, "{vol}");
    assert_eq!(vol["fs"], "ext4");
    s.wait_consumers(&v, 0);
    assert_eq!(s.volume(&v)["state"], "available");
    // A named volume outlives `--rm`.
    assert_eq!(s.ballast_volumes(), [v]);
    s.d.assert_no_leftovers();
}

#[test]
fn anonymous_volume_is_created_and_removed_with_the_container() {
    if !prerequisites("anonymous_volume") {
        return;
    }
    let s = Session::start("anon");
    // Foreground with --rm: dockerd creates a volume named by 64 hex
    // digits, mounts it, and removes it with the container.
    s.run_ok(&[
        "--rm",
        "--volume-driver",
        &s.plugin,
        "-v",
        "/data",
        IMAGE,
        "true",
    ]);
    let events = s.d.http("GET", "/v1/events?limit=1000", b"").1;
    let events = events.as_array().unwrap();
    let hex64 = |n: &str| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit());
    let created: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "create")
        .map(|e| e["volume"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 1, "{events:?}");
    let anon = created[0];
    assert!(hex64(anon), "anonymous volume name {anon:?}");
    for kind in ["mount", "unmount", "delete"] {
        assert!(
            events
                .iter()
                .any(|e| e["kind"] == kind && e["volume"] == anon),
            "no {kind} event of {anon}: {events:?}"
        );
    }
    wait_until("the anonymous volume to be removed", || {
        s.ballast_volumes().is_empty()
    });
    assert!(s.d.images().is_empty());

    // Detached: the volume is there while the container runs, and goes
    // when dockerd auto-removes the stopped container.
    let c = s.name("c");
    s.run_ok(&[
        "-d",
        "--rm",
        "--init",
        "--name",
        &c,
        "--volume-driver",
        &s.plugin,
        "-v",
        "/data",
        IMAGE,
        "sleep",
        "100000",
    ]);
    let names = s.ballast_volumes();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(hex64(&names[0]), "{names:?}");
    assert_eq!(s.volume(&names[0])["state"], "mounted");
    docker_ok(&["stop", "-t", "10", &c]);
    wait_until("the auto-removed container's volume to go", || {
        s.ballast_volumes().is_empty()
    });
    assert!(s.d.images().is_empty());
    s.d.assert_no_leftovers();
}

#[test]
fn docker_volume_ls_lists_exactly_ballasts_volumes() {
    if !prerequisites("docker_volume_ls") {
        return;
    }
    let s = Session::start("ls");
    let (a, b, c) = (s.name("a"), s.name("b"), s.name("c"));
    for v in [&a, &b] {
        s.docker_create(v, &["size=16M"]);
    }
    // Made behind dockerd's back: dockerd learns of it from List.
    s.d.ok(&["volume", "create", &c, "--size", "16M"]);
    let driver = format!("driver={}", s.plugin);
    let mut listed: Vec<String> = docker_ok(&["volume", "ls", "-q", "--filter", &driver])
        .split_whitespace()
        .map(str::to_string)
        .collect();
    listed.sort();
    assert_eq!(listed, s.ballast_volumes());
    assert_eq!(listed, [a.clone(), b.clone(), c.clone()]);

    // Unfiltered, among every other driver's volumes.
    let all = docker_ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    let ours: Vec<&str> = all
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{} ", s.plugin)))
        .collect();
    let mut ours: Vec<String> = ours.into_iter().map(str::to_string).collect();
    ours.sort();
    assert_eq!(ours, [a, b, c.clone()]);
    s.d.ok(&["volume", "rm", &c]);
}

#[test]
fn kill9_leaves_containers_writing_and_restart_serves_their_unmount() {
    if !prerequisites("kill9_leaves_containers_writing") {
        return;
    }
    let mut s = Session::start("kill9");
    let v = s.name("v");
    s.docker_create(&v, &["size=64M"]);
    let c = s.name("c");
    let mount = format!("{v}:/data");
    s.run_ok(&[
        "-d",
        "--init",
        "--name",
        &c,
        "-v",
        &mount,
        IMAGE,
        "sh",
        "-c",
        "i=0; while true; do echo $i >> /data/log; sync; i=$((i+1)); sleep 0.1; done",
    ]);
    let host_log = PathBuf::from(s.volume(&v)["mountpoint"].as_str().unwrap()).join("log");
    wait_until("the container to write", || line_count(&host_log) >= 3);

    s.d.kill9();
    let sock = s.socket();
    let meta = std::fs::symlink_metadata(&sock).expect("the dead daemon's socket file stays");
    assert!(meta.file_type().is_socket());
    assert!(UnixStream::connect(&sock).is_err(), "nobody should answer");
    let at_kill = line_count(&host_log);
    wait_until("the log to grow with ballast dead", || {
        line_count(&host_log) > at_kill + 2
    });

    s.d.restart();
    let act = s.plugin("/Plugin.Activate", json!({}));
    assert_eq!(act, json!({"Implements": ["VolumeDriver"]}));
    let vol = s.volume(&v);
    assert_eq!(vol["state"], "mounted", "{vol}");
    assert_eq!(vol["consumers"].as_array().unwrap().len(), 1, "{vol}");
    let after_restart = line_count(&host_log);
    wait_until("the log to grow after the restart", || {
        line_count(&host_log) > after_restart
    });

    docker_ok(&["stop", "-t", "10", &c]);
    s.wait_consumers(&v, 0);
    let vol = s.volume(&v);
    assert_eq!(vol["state"], "available", "{vol}");
    s.d.assert_no_leftovers();
    // What was written survives: the numbers count up without a gap.
    let mp = PathBuf::from(s.d.ok(&["volume", "mount", &v]).trim());
    let log = std::fs::read_to_string(mp.join("log")).unwrap();
    for (i, line) in log.lines().enumerate() {
        assert_eq!(line, i.to_string(), "log line {i}");
    }
    s.d.ok(&["volume", "unmount", &v]);
}

#[test]
fn clean_exit_removes_the_plugin_socket() {
    if !(require_root_loop("clean_exit_removes_the_plugin_socket")
        && require_docker("clean_exit_removes_the_plugin_socket"))
    {
        return;
    }
    let mut s = Session::start("exit");
    let sock = s.socket();
    assert!(std::fs::symlink_metadata(&sock)
        .expect("plugin socket")
        .file_type()
        .is_socket());
    s.d.stop();
    assert!(
        std::fs::symlink_metadata(&sock).is_err(),
        "{} left after SIGTERM",
        sock.display()
    );
}

// ----- the plugin protocol, raw ------------------------------------------

#[test]
fn plugin_protocol_activate_get_capabilities_create() {
    if !require_root_loop("plugin_protocol_activate") {
        return;
    }
    let s = Session::start_private("proto");
    assert_eq!(
        s.plugin("/Plugin.Activate", json!({})),
        json!({"Implements": ["VolumeDriver"]})
    );
    // An empty body is what dockerd sends to Activate.
    let (status, v) = plugin_call(&s.socket(), "/Plugin.Activate", b"");
    assert_eq!(
        (status, v["Implements"].clone()),
        (200, json!(["VolumeDriver"]))
    );
    assert_eq!(
        s.plugin("/VolumeDriver.Capabilities", json!({}))["Capabilities"]["Scope"],
        "local"
    );

    let unknown = s.plugin("/VolumeDriver.Get", json!({"Name": "nothing-here"}));
    err_of(&unknown);
    assert!(unknown.get("Volume").is_none(), "{unknown}");

    // dockerd sends "Opts": null when no -o was given.
    let v = s.name("v");
    for _ in 0..2 {
        no_err(&s.plugin("/VolumeDriver.Create", json!({"Name": v, "Opts": null})));
    }
    let sized = s.name("sized");
    for _ in 0..2 {
        no_err(&s.plugin(
            "/VolumeDriver.Create",
            json!({"Name": sized, "Opts": {"size": "16M", "fs": "ext4"}}),
        ));
    }
    // The same name with another size is not the same volume.
    err_of(&s.plugin(
        "/VolumeDriver.Create",
        json!({"Name": sized, "Opts": {"size": "32M"}}),
    ));
    assert_eq!(s.ballast_volumes(), {
        let mut n = vec![v.clone(), sized.clone()];
        n.sort();
        n
    });
    assert_eq!(s.volume(&v)["size_bytes"], 1u64 << 30);
    assert_eq!(s.volume(&sized)["size_bytes"], 16 << 20);
    assert_eq!(s.d.images().len(), 2);

    let got = s.plugin("/VolumeDriver.Get", json!({"Name": sized}));
    no_err(&got);
    assert_eq!(got["Volume"]["Name"], sized.as_str());
    assert_eq!(got["Volume"]["Status"]["size_bytes"], 16 << 20);
    let list = s.plugin("/VolumeDriver.List", json!({}));
    let mut names: Vec<&str> = list["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, s.ballast_volumes());
    // Not mounted: no path.
    let path = s.plugin("/VolumeDriver.Path", json!({"Name": sized}));
    no_err(&path);
    assert!(path["Mountpoint"].as_str().unwrap_or_default().is_empty());

    for name in [&v, &sized] {
        no_err(&s.plugin("/VolumeDriver.Remove", json!({"Name": name})));
    }
    assert!(s.ballast_volumes().is_empty());
    assert!(s.d.images().is_empty());
    err_of(&s.plugin("/VolumeDriver.Remove", json!({"Name": v})));
}

#[test]
fn plugin_protocol_mounts_are_counted_per_id() {
    if !require_root_loop("plugin_protocol_mounts") {
        return;
    }
    let s = Session::start_private("mounts");
    let v = s.name("v");
    no_err(&s.plugin(
        "/VolumeDriver.Create",
        json!({"Name": v, "Opts": {"size": "16M"}}),
    ));
    let mount = |body: Value| {
        let r = s.plugin("/VolumeDriver.Mount", body);
        no_err(&r);
        let mp = r["Mountpoint"].as_str().unwrap().to_string();
        assert!(!mp.is_empty(), "{r}");
        PathBuf::from(mp)
    };
    let unmount = |body: Value| no_err(&s.plugin("/VolumeDriver.Unmount", body));
    let state = || s.volume(&v)["state"].as_str().unwrap().to_string();
    let mounted_on_host = |mp: &Path| common::mount_targets().iter().any(|t| t == mp);

    // The same ID twice (`docker cp` does this) needs two Unmounts.
    let mp = mount(json!({"Name": v, "ID": "a"}));
    assert_eq!(mount(json!({"Name": v, "ID": "a"})), mp);
    assert!(mounted_on_host(&mp));
    let cons = s.consumers(&v);
    assert_eq!(cons.len(), 1, "{cons:?}");
    assert_eq!(cons[0]["count"], 2, "{cons:?}");
    let path = s.plugin("/VolumeDriver.Path", json!({"Name": v}));
    assert_eq!(path["Mountpoint"], mp.to_str().unwrap());
    unmount(json!({"Name": v, "ID": "a"}));
    assert_eq!(state(), "mounted");
    assert!(mounted_on_host(&mp));
    unmount(json!({"Name": v, "ID": "a"}));
    assert_eq!(state(), "available");
    assert!(!mounted_on_host(&mp));
    s.d.assert_no_leftovers();

    // Another ID keeps it mounted after the first is released.
    mount(json!({"Name": v, "ID": "a"}));
    mount(json!({"Name": v, "ID": "b"}));
    unmount(json!({"Name": v, "ID": "a"}));
    assert_eq!(state(), "mounted");
    assert_eq!(s.consumers(&v).len(), 1);
    unmount(json!({"Name": v, "ID": "b"}));
    assert_eq!(state(), "available");

    // No ID (Docker before 1.12, dvdcli) and an empty one are the same
    // anonymous consumer.
    mount(json!({"Name": v}));
    assert_eq!(state(), "mounted");
    unmount(json!({"Name": v, "ID": ""}));
    assert_eq!(state(), "available");
    mount(json!({"Name": v, "ID": ""}));
    unmount(json!({"Name": v}));
    assert_eq!(state(), "available");

    // An unknown ID releases nothing and is no error.
    mount(json!({"Name": v, "ID": "a"}));
    unmount(json!({"Name": v, "ID": "somebody-else"}));
    assert_eq!(state(), "mounted");
    unmount(json!({"Name": v, "ID": "a"}));
    unmount(json!({"Name": v, "ID": "somebody-else"}));
    assert_eq!(state(), "available");
    s.d.assert_no_leftovers();

    // In use: Remove refuses and says why.
    mount(json!({"Name": v, "ID": "a"}));
    let e = s.plugin("/VolumeDriver.Remove", json!({"Name": v}));
    assert!(err_of(&e).contains("in use"), "{e}");
    unmount(json!({"Name": v, "ID": "a"}));
    no_err(&s.plugin("/VolumeDriver.Remove", json!({"Name": v})));
    assert!(s.d.images().is_empty());
    s.d.assert_no_leftovers();
}

#[test]
fn plugin_protocol_bad_input_is_an_err_and_changes_nothing() {
    if !require_root_loop("plugin_protocol_bad_input") {
        return;
    }
    let mut s = Session::start_private("bad");
    let keep = s.name("keep");
    no_err(&s.plugin(
        "/VolumeDriver.Create",
        json!({"Name": keep, "Opts": {"size": "16M"}}),
    ));
    let snapshot = || (s.d.ok(&["-o", "json", "volume", "ls"]), s.d.images());
    let before = snapshot();
    let sock = s.socket();
    let endpoints = [
        "/VolumeDriver.Create",
        "/VolumeDriver.Remove",
        "/VolumeDriver.Mount",
        "/VolumeDriver.Unmount",
        "/VolumeDriver.Path",
        "/VolumeDriver.Get",
    ];
    let expect_err = |endpoint: &str, body: &[u8]| -> String {
        let (status, v) = plugin_call(&sock, endpoint, body);
        let e = err_of(&v).to_string();
        assert!(
            v.get("Volume").is_none() && v.get("Mountpoint").is_none(),
            "{endpoint}: {v}"
        );
        assert!(status == 200 || status >= 400, "{endpoint}: {status}");
        e
    };

    let long = "a".repeat(129);
    let bad_names = [
        "a/b",
        "../etc",
        "..",
        ".",
        "a:b",
        "a\u{1}b",
        "a\nb",
        "-flag",
        long.as_str(),
    ];
    for endpoint in endpoints {
        for name in bad_names {
            let body = json!({"Name": name, "ID": "x"}).to_string();
            let e = expect_err(endpoint, body.as_bytes());
            assert!(e.contains("name"), "{endpoint} {name:?}: {e}");
        }
        // Missing or empty Name, malformed JSON, wrong JSON types.
        for body in [
            &b"{}"[..],
            br#"{"Name": ""}"#,
            br#"{"Opts": {"size": "16M"}}"#,
            b"{",
            b"not json",
            br#"{"Name": 7}"#,
            br#"["Name"]"#,
            b"\xff\xfe",
        ] {
            expect_err(endpoint, body);
        }
    }
    // Mount IDs are keys, never paths, but still bounded and printable.
    for id in ["a\u{1}b".to_string(), "x".repeat(257)] {
        for endpoint in ["/VolumeDriver.Mount", "/VolumeDriver.Unmount"] {
            let body = json!({"Name": keep, "ID": id}).to_string();
            let e = expect_err(endpoint, body.as_bytes());
            assert!(e.contains("consumer id"), "{endpoint}: {e}");
        }
    }
    // Options: unknown, unparsable sizes, non-strings.
    let create = |opts: Value| {
        let body = json!({"Name": s.name("new"), "Opts": opts}).to_string();
        expect_err("/VolumeDriver.Create", body.as_bytes())
    };
    let e = create(json!({"colour": "blue"}));
    assert!(e.contains("colour"), "{e}");
    for size in ["lots", "1e3", "-5", "0", "64Q", "", "99999999999999999999P"] {
        let e = create(json!({ "size": size }));
        assert!(e.contains("size"), "{size:?}: {e}");
    }
    create(json!({"size": 64}));
    create(json!({"size": null}));
    create(json!("size=64M"));
    create(json!({"fs": "btrfs"}));
    create(json!({"pool": "no-such-pool"}));
    // Unknown endpoint: 404, still a JSON Err.
    let (status, v) = plugin_call(&sock, "/VolumeDriver.Frobnicate", b"{}");
    assert_eq!(status, 404);
    err_of(&v);
    let (status, v) = plugin_call(&sock, "/", b"");
    assert_eq!(status, 404);
    err_of(&v);
    // A known endpoint with the wrong method.
    let (status, bytes) = plugin_raw(&sock, "GET", "/VolumeDriver.List", b"");
    assert!(status >= 400, "{status}");
    let v: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("GET reply is not JSON ({e}): {bytes:?}"));
    err_of(&v);
    // 2 MiB body.
    let pad = "p".repeat(2 << 20);
    let body = json!({"Name": s.name("huge"), "Opts": {"size": "16M", "x": pad}}).to_string();
    let (status, v) = plugin_call(&sock, "/VolumeDriver.Create", body.as_bytes());
    assert_eq!(status, 413, "{v}");
    err_of(&v);

    // Still serving, and nothing changed.
    assert_eq!(
        s.plugin("/Plugin.Activate", json!({})),
        json!({"Implements": ["VolumeDriver"]})
    );
    assert_eq!(snapshot(), before);
    assert!(s.d.is_running(), "daemon died:\n{}", s.d.log());
    s.d.assert_no_leftovers();
}
