//! Test harness: a real `ballast serve` in a scratch directory, driven
//! through the real CLI and raw HTTP on its socket, with leak checks over the
//! host's real loop devices and mount table.
#![allow(dead_code)]

pub mod ceph;
pub mod etcd;
pub mod hung_fuse;
pub mod netns;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ballast");

/// name -> (node, state) as `volume ls` on `d` shows it.
pub fn volume_listing(d: &Daemon) -> std::collections::BTreeMap<String, (String, String)> {
    d.json(&["volume", "ls"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                (
                    v["node"].as_str().unwrap_or("-").to_string(),
                    v["state"].as_str().unwrap().to_string(),
                ),
            )
        })
        .collect()
}

/// A gRPC channel to the CSI server on a unix socket, waiting (up to 30 s)
/// for the daemon to bind it (the REST API may answer a moment before).
pub async fn csi_channel(socket: &Path) -> tonic::transport::Channel {
    use tonic::transport::{Endpoint, Uri};
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let path = socket.to_path_buf();
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        // The URI is required by the API and unused by the connector.
        match Endpoint::from_static("http://csi.invalid")
            .connect_with_connector(connector)
            .await
        {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("no CSI server on {}: {e}", socket.display()),
        }
    }
}

/// Whether this test can run here: root and loop devices. Locally a missing
/// prerequisite skips the test; with CI=true it fails it.
pub fn require_root_loop(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let loop_ok = Path::new("/dev/loop-control").exists();
    if root && loop_ok {
        return true;
    }
    let why =
        format!("{test}: needs root and /dev/loop-control (root={root}, loop-control={loop_ok})");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true makes a missing prerequisite a failure");
    }
    eprintln!("SKIP {why}");
    false
}

/// Whether `tool` is on PATH; missing is a failure under CI=true.
pub fn require_tool(test: &str, tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(tool).is_file()
        || Path::new("/sbin").join(tool).is_file();
    if found {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: needs {tool}; CI=true makes a missing prerequisite a failure");
    }
    eprintln!("SKIP {test}: needs {tool}");
    false
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub run: PathBuf,
    pub args: Vec<String>,
    child: Option<Child>,
    starts: u32,
    /// Multi-node tests: the network namespace (`/run/netns/X`) the daemon
    /// runs in, entered with `nsenter --net` (None: the test's own).
    netns: Option<PathBuf>,
}

impl Daemon {
    /// Start a daemon in a fresh scratch directory under /var/tmp (a real
    /// disk filesystem, so direct I/O on loop devices works).
    pub fn start() -> Daemon {
        Self::start_with(&[], &[])
    }

    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_inner(None, args, env)
    }

    // --- multi-node tests (tests/common/netns.rs) -------------------------

    /// Start a daemon in the network namespace at `netns` (`/run/netns/X`),
    /// through `nsenter --net`, so it shares the test's mount namespace (its
    /// mounts are the test's to see) and the child's pid is the daemon's.
    /// The API socket works across namespaces; the TCP listener does not
    /// reach the test's namespace, so pass `--listen <host addr>:0` (else it
    /// is the namespace's own 127.0.0.1:0).
    pub fn start_in_netns(netns: &Path, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        Self::start_inner(Some(netns.to_path_buf()), args, env)
    }

    /// The pid of the daemon process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    // --- end of multi-node additions ---------------------------------------

    fn start_inner(netns: Option<PathBuf>, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("ballast-test-")
            .tempdir_in("/var/tmp")
            .expect("scratch dir");
        let root = dir.path().canonicalize().unwrap();
        let mut d = Daemon {
            state: root.join("state"),
            run: root.join("run"),
            dir,
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            starts: 0,
            netns,
        };
        d.spawn(env);
        d.wait_ready();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.run.join("api.sock")
    }

    /// The address of the daemon's TCP listener (REST API and /metrics), from
    /// `<run-dir>/listen.addr`, which it writes before it answers.
    pub fn listen_addr(&self) -> std::net::SocketAddr {
        let path = self.run.join("listen.addr");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", path.display(), self.log()));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
    }

    /// GET `path` on the TCP listener from loopback (no token needed for
    /// reads); (status, content type, body).
    pub fn tcp_get(&self, path: &str) -> (u16, String, Vec<u8>) {
        http_get(self.listen_addr(), path)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("daemon-{}.log", self.starts))
    }

    pub fn log(&self) -> String {
        let mut all = String::new();
        for i in 1..=self.starts {
            let p = self.dir.path().join(format!("daemon-{i}.log"));
            all.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        all
    }

    fn spawn(&mut self, env: &[(&str, &str)]) {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path()).unwrap();
        let mut cmd = match &self.netns {
            // nsenter execs the daemon (no --fork): the child is the daemon.
            Some(ns) => netns::nsenter_command(ns, &[BIN]),
            None => Command::new(BIN),
        };
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--run-dir")
            .arg(&self.run)
            .args(&self.args)
            .args(
                // The TCP listener is on by default at 127.0.0.1:7420; test
                // daemons run in parallel, each on a port of its own.
                (!self
                    .args
                    .iter()
                    .any(|a| a == "--listen" || a.starts_with("--listen=")))
                .then_some(["--listen", "127.0.0.1:0"])
                .into_iter()
                .flatten(),
            )
            .args(
                // Only tests about Docker serve the plugin, each under its own name.
                (!self
                    .args
                    .iter()
                    .any(|a| a.starts_with("--docker-plugin-name")))
                .then_some("--no-docker"),
            )
            .env_remove("BALLAST_FAILPOINTS")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn ballast serve"));
    }

    /// Wait until the API answers, or fail with the daemon's log.
    pub fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait().unwrap() {
                    panic!("daemon exited early ({status}):\n{}", self.log());
                }
            }
            if let Ok((200, _)) = self.try_http("GET", "/v1/version", b"") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "daemon not ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start again (after a kill or exit), optionally with failpoints armed.
    pub fn restart_with(&mut self, env: &[(&str, &str)]) {
        self.stop();
        self.spawn(env);
        self.wait_ready();
    }

    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// Start with failpoints armed but without waiting for readiness beyond
    /// the socket answering.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait for the daemon to die by itself (a failpoint), up to 60 s.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("daemon did not exit:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Wait for the daemon to die at `failpoint`: by SIGKILL, with the
    /// failpoint named in its log (so it died there, not elsewhere).
    pub fn wait_killed_at(&mut self, failpoint: &str) {
        use std::os::unix::process::ExitStatusExt;
        let status = self.wait_exit();
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{failpoint}: the daemon should die by SIGKILL, got {status}\n{}",
            self.log()
        );
        let log = std::fs::read_to_string(self.log_path()).unwrap();
        assert!(
            log.contains("failpoint reached") && log.contains(failpoint),
            "{failpoint}: the daemon died elsewhere:\n{log}"
        );
    }

    /// Restart with `failpoint` armed, run the CLI with `args`, and insist
    /// the daemon died there; then start it again without failpoints.
    pub fn crash_at(&mut self, failpoint: &str, args: &[&str]) {
        self.restart_with(&[("BALLAST_FAILPOINTS", failpoint)]);
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "{failpoint}: ballast {args:?} succeeded, so the failpoint was not reached: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        self.wait_killed_at(failpoint);
        self.restart();
    }

    /// SIGTERM and wait: a clean stop.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Take the daemon's process, for a test that stops it by hand.
    pub fn take_child(&mut self) -> Child {
        self.child.take().expect("daemon running")
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Run the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(self.socket())
            .args(args)
            .env_remove("BALLAST_HOST")
            .stdin(Stdio::null())
            .output()
            .expect("run ballast")
    }

    /// Run the CLI and insist on success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ballast {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run the CLI, insist on failure with exit code 1 and a one-line
    /// message; returns the message.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "ballast {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.trim_end().lines().count(), 1, "one-line error: {err:?}");
        err
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["-o", "json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }

    /// A raw HTTP/1.1 request on the API socket; (status, body).
    pub fn try_http(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> std::io::Result<(u16, Vec<u8>)> {
        let mut s = UnixStream::connect(self.socket())?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes())?;
        // The server may answer (413) before reading a large body.
        let _ = s.write_all(body);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        parse_http(&resp)
    }

    pub fn http(&self, method: &str, path: &str, body: &[u8]) -> (u16, serde_json::Value) {
        let (status, body) = self.try_http(method, path, body).expect("http");
        let v = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!("non-json body ({e}): {}", String::from_utf8_lossy(&body))
            })
        };
        (status, v)
    }

    /// Make loop pool `name` on a directory of this daemon's scratch dir
    /// (a second pool to move or copy into); its directory.
    pub fn add_loop_pool(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        self.ok(&[
            "pool",
            "create",
            name,
            "--driver",
            "loop",
            "--path",
            dir.to_str().unwrap(),
        ]);
        dir
    }

    pub fn pool_dir(&self) -> PathBuf {
        self.state.join("pools").join("default")
    }

    /// Image files in the default pool.
    pub fn images(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.pool_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Loop devices and mounts of this daemon's that are still on the host.
    pub fn host_leftovers(&self) -> Vec<String> {
        let root = self.dir.path().canonicalize().unwrap();
        let mut out = Vec::new();
        for (dev, backing) in loop_devices() {
            if backing.starts_with(&root) {
                out.push(format!("loop {dev} -> {}", backing.display()));
            }
        }
        for m in mount_targets() {
            if m.starts_with(&root) {
                out.push(format!("mount {}", m.display()));
            }
        }
        out
    }

    pub fn assert_no_leftovers(&self) {
        // Autoclear detaches asynchronously on some kernels: allow a moment.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.host_leftovers();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("left behind on the host: {left:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        // Clean the host even when a test failed half-way.
        let root = self.dir.path().canonicalize().unwrap_or_default();
        let mut targets: Vec<PathBuf> = mount_targets()
            .into_iter()
            .filter(|m| m.starts_with(&root))
            .collect();
        targets.sort();
        for t in targets.iter().rev() {
            let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
        }
        for (dev, backing) in loop_devices() {
            if backing.starts_with(&root) {
                let _ = Command::new("losetup").arg("-d").arg(&dev).status();
            }
        }
    }
}

/// A plain HTTP/1.1 GET over TCP; (status, content type, body).
pub fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let mut s =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let (status, body) = parse_http(&resp).unwrap_or_else(|e| panic!("GET {path} on {addr}: {e}"));
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0);
    let head = String::from_utf8_lossy(&resp[..split]).to_ascii_lowercase();
    let content_type = head
        .lines()
        .find_map(|l| l.strip_prefix("content-type:"))
        .unwrap_or_default()
        .trim()
        .to_string();
    (status, content_type, body)
}

fn parse_http(resp: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad http reply");
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    let head = std::str::from_utf8(&resp[..split]).map_err(|_| bad())?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let mut body = resp[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let n = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap_or("0").trim(), 16)
            .unwrap_or(0);
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
}

/// (device, backing file) of every attached loop device.
pub fn loop_devices() -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/sys/block") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
                out.push((format!("/dev/{name}"), PathBuf::from(b.trim_end())));
            }
        }
    }
    out
}

/// Mount targets from /proc/self/mountinfo (octal escapes decoded).
pub fn mount_targets() -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|t| PathBuf::from(unescape(t)))
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push(
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap(), 8).unwrap(),
            );
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Write `bytes` of pseudo-random data to `path` and fsync; returns the
/// error, if any (ENOSPC is what capacity tests look for).
pub fn write_file(path: &Path, bytes: usize) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| i.wrapping_mul(2654435761).to_le_bytes()[1])
        .collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        f.write_all(&chunk[..n])?;
        left -= n;
    }
    f.sync_all()
}

/// Wait until `f` answers Ok (polling every 200 ms), at most `limit`; its
/// last error is in the panic.
pub fn eventually<T, E: std::fmt::Debug>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("never happened: {what}; last: {e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// The sha256 of a file, by `sha256sum`.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
