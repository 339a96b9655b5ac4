//! A real, throwaway Ceph cluster for tests: one monitor, one manager and
//! one bluestore OSD (on a sparse file), with everything in a scratch
//! directory under /var/tmp, killed on drop.
//!
//! The daemons run in the foreground (`-f`) as children of the test, not
//! under systemd and not daemonized, so the harness holds their pids: it can
//! SIGKILL the monitor in the middle of an operation and restart it from its
//! data, and nothing outlives the test. Every command is given `-c <conf>`,
//! so the host's /etc/ceph plays no part and clusters of tests running in
//! parallel stay apart.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::netns::{nsenter_command, run_timeout};

/// What the cluster and the code under test need (`rbd-fuse` is how ballast
/// maps images; the rest bootstrap the cluster).
const TOOLS: &[&str] = &[
    "ceph-mon",
    "ceph-osd",
    "ceph-mgr",
    "ceph",
    "rbd",
    "rbd-fuse",
    "ceph-authtool",
    "monmaptool",
];

/// The monitor's port when the cluster has an address of its own.
const MON_PORT: u16 = 6789;
const MON: &str = "mon.a";
const MGR: &str = "mgr.x";
const RGW: &str = "rgw";
const RGW_ACCESS: &str = "BALLASTTESTACCESSKEY";
const RGW_SECRET: &str = "ballast-test-secret-key-0123456789abcdef";

/// A running RADOS Gateway and its S3 user.
#[derive(Debug, Clone)]
pub struct Rgw {
    pub url: String,
    pub port: u16,
    pub access_key: String,
    pub secret_key: String,
}

/// How long a client command may take before the harness gives up on it:
/// `ceph` and `rbd` wait for an unreachable monitor forever.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bootstrap to "1 OSD up" takes ~8 s on an idle machine; this allows for
/// parallel tests and builds.
const START_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(300);

/// Whether this test can run here: root (the daemons and FUSE need it) and
/// the Ceph binaries. Locally a missing prerequisite skips the test; with
/// CI=true it fails it.
pub fn require_ceph(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    let missing: Vec<&str> = TOOLS.iter().copied().filter(|t| !on_path(t)).collect();
    if root && missing.is_empty() {
        return true;
    }
    let why = if root {
        format!(
            "{test}: needs {} (Debian ceph-mon, ceph-osd, ceph-mgr, ceph-common, rbd-fuse)",
            missing.join(", ")
        )
    } else {
        format!("{test}: needs root to run a Ceph cluster")
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true makes a missing prerequisite a failure");
    }
    eprintln!("SKIP {why}");
    false
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/bin").join(tool).is_file()
        || Path::new("/usr/sbin").join(tool).is_file()
}

/// On loopback every cluster of the test process shares one address, so
/// each needs a monitor port of its own.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A port for the gateway: free on loopback; in a namespace of its own any
/// fixed one is.
fn free_port_on(addr: Ipv4Addr) -> u16 {
    if addr.is_loopback() {
        free_port()
    } else {
        7480
    }
}

fn new_uuid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("a uuid from /proc/sys/kernel/random/uuid")
        .trim()
        .to_string()
}

/// The last `n` lines of `path`, empty if it does not exist.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = lines[lines.len().saturating_sub(n)..].join("\n");
    out.push('\n');
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim_end(),
        String::from_utf8_lossy(&out.stderr).trim_end()
    )
}

pub struct Ceph {
    dir: tempfile::TempDir,
    /// `dir`, canonical: it is written into the conf.
    root: PathBuf,
    addr: Ipv4Addr,
    mon_port: u16,
    /// The network namespace (`/run/netns/X`) every daemon and client runs
    /// in, entered with `nsenter --net` (None: the test's own).
    netns: Option<PathBuf>,
    osd_id: String,
    /// (daemon name, process) of what runs: mon.a, mgr.x, osd.N, rgw.
    children: Vec<(String, Child)>,
    /// The gateway, once started.
    rgw: Option<Rgw>,
}

impl Ceph {
    /// A cluster on 127.0.0.1 in the test's own network namespace; returns
    /// once its OSD is up.
    pub fn start() -> Ceph {
        Self::start_inner(None, Ipv4Addr::LOCALHOST, free_port())
    }

    /// A cluster in the network namespace at `netns` (`/run/netns/X`, see
    /// [`super::netns::Net`]), on `addr` (the monitor on `addr:6789`), so
    /// it is reachable from the net's other hosts and cut off with its own.
    /// The daemons are entered with `nsenter --net` only, so they share the
    /// test's mount namespace and files. Drop it before the net.
    pub fn start_in_netns(netns: &Path, addr: Ipv4Addr) -> Ceph {
        Self::start_inner(Some(netns.to_path_buf()), addr, MON_PORT)
    }

    fn start_inner(netns: Option<PathBuf>, addr: Ipv4Addr, mon_port: u16) -> Ceph {
        let started = Instant::now();
        // A real disk filesystem: bluestore does direct I/O on its block file.
        let dir = tempfile::Builder::new()
            .prefix("ballast-ceph-")
            .tempdir_in("/var/tmp")
            .expect("ceph scratch dir");
        let root = dir.path().canonicalize().expect("canonical ceph dir");
        for sub in ["run", "log", "mon", "mgr", "osd"] {
            std::fs::create_dir(root.join(sub)).expect("ceph scratch subdir");
        }
        // From here on, a failure drops `c`, which kills what was started.
        let mut c = Ceph {
            dir,
            root,
            addr,
            mon_port,
            netns,
            osd_id: String::new(),
            children: Vec::new(),
            rgw: None,
        };
        let fsid = new_uuid();
        std::fs::write(c.conf(), c.conf_text(&fsid)).expect("write ceph.conf");
        c.bootstrap_mon(&fsid);
        c.spawn_mon();
        c.bootstrap_mgr();
        c.spawn(MGR, "ceph-mgr", "x");
        c.bootstrap_osd();
        let osd = format!("osd.{}", c.osd_id);
        let id = c.osd_id.clone();
        c.spawn(&osd, "ceph-osd", &id);
        c.wait_ready(started + START_TIMEOUT);
        c
    }

    /// The cluster's configuration, for every client (`-c`, or
    /// `CEPH_CONF`); it names the admin keyring, so no `--keyring` is needed.
    pub fn conf(&self) -> PathBuf {
        self.root.join("ceph.conf")
    }

    /// client.admin's keyring.
    pub fn keyring(&self) -> PathBuf {
        self.root.join("client.admin.keyring")
    }

    /// The monitor's address: where clients that are not given the conf
    /// (`mon_host`) connect.
    pub fn mon_addr(&self) -> SocketAddr {
        SocketAddr::from((self.addr, self.mon_port))
    }

    /// A replicated (size 1) RBD pool of 8 placement groups.
    pub fn create_pool(&self, name: &str) {
        self.ceph_ok(&["osd", "pool", "create", name, "8"]);
        let out = self.rbd(&["pool", "init", name]);
        assert!(
            out.status.success(),
            "rbd pool init {name}: {}\n{}",
            text(&out),
            self.log()
        );
    }

    /// `ceph -c <conf> ARGS` (in the cluster's namespace, if it has one),
    /// killed after 30 s (then the status has no exit code).
    pub fn ceph(&self, args: &[&str]) -> Output {
        self.client("ceph", args, CLIENT_TIMEOUT)
    }

    /// `rbd -c <conf> ARGS`, as [`Ceph::ceph`].
    pub fn rbd(&self, args: &[&str]) -> Output {
        self.client("rbd", args, CLIENT_TIMEOUT)
    }

    /// SIGKILL the monitor: clients stall (and the OSD keeps serving I/O on
    /// the maps it has) until [`Ceph::start_mon`].
    pub fn stop_mon(&mut self) {
        self.kill(MON);
    }

    /// Start the monitor again from its data; returns once it answers.
    pub fn start_mon(&mut self) {
        assert!(
            !self.children.iter().any(|(n, _)| n == MON),
            "{MON} is running already"
        );
        self.spawn_mon();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_children();
            if self
                .client("ceph", &["health"], Duration::from_secs(10))
                .status
                .success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{MON} does not answer after a restart:\n{}",
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Start a RADOS Gateway, Ceph's S3 service, on `addr:port` with an S3
    /// user of its own; returns once it answers HTTP. A gateway that ran
    /// before (see [`Ceph::stop_rgw`]) comes back with its data.
    pub fn start_rgw(&mut self) -> Rgw {
        let port = match &self.rgw {
            Some(r) => r.port,
            None => free_port_on(self.addr),
        };
        std::fs::create_dir_all(self.root.join("rgw")).expect("rgw data dir");
        let out_path = self.root.join("log").join("rgw.out");
        let out = File::options()
            .create(true)
            .append(true)
            .open(&out_path)
            .unwrap_or_else(|e| panic!("{}: {e}", out_path.display()));
        let err = out.try_clone().expect("dup rgw output");
        let child = self
            .command("radosgw")
            .arg("-f")
            .arg("-c")
            .arg(self.conf())
            .args(["-n", "client.admin"])
            .arg("--rgw-frontends")
            .arg(format!("beast endpoint={}:{port}", self.addr))
            .arg("--rgw-data")
            .arg(self.root.join("rgw"))
            .args([
                "--log-file",
                &self.root.join("log/rgw.log").display().to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn radosgw: {e}"));
        self.children.push((RGW.to_string(), child));
        let url = format!("http://{}:{port}", self.addr);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            self.check_children();
            let mut probe = self.command("curl");
            probe.args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-m",
                "5",
                &url,
            ]);
            let answered = run_timeout(probe, Duration::from_secs(10))
                .map(|o| String::from_utf8_lossy(&o.stdout).starts_with('2'))
                .unwrap_or(false);
            if answered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "radosgw does not answer on {url}:\n{}",
                tail(&self.root.join("log/rgw.log"), 40)
            );
            std::thread::sleep(POLL);
        }
        if self.rgw.is_none() {
            let mut cmd = self.command("radosgw-admin");
            cmd.arg("-c").arg(self.conf()).args([
                "user",
                "create",
                "--uid=ballast",
                "--display-name=ballast",
                "--access-key",
                RGW_ACCESS,
                "--secret-key",
                RGW_SECRET,
            ]);
            let out = run_timeout(cmd, CLIENT_TIMEOUT).expect("run radosgw-admin");
            assert!(
                out.status.success(),
                "radosgw-admin user create: {}",
                text(&out)
            );
        }
        let rgw = Rgw {
            url,
            port,
            access_key: RGW_ACCESS.into(),
            secret_key: RGW_SECRET.into(),
        };
        self.rgw = Some(rgw.clone());
        rgw
    }

    /// SIGKILL the gateway (S3 calls then fail: connection refused).
    pub fn stop_rgw(&mut self) {
        self.kill(RGW);
    }

    /// Make a bucket with the gateway's user, through the gateway.
    pub fn create_bucket(&self, bucket: &str) {
        let rgw = self.rgw.as_ref().expect("start_rgw first");
        let mut cmd = self.command("curl");
        // An unsigned PUT is refused; the harness signs with curl's SigV4.
        cmd.args([
            "-s",
            "-w",
            "\nHTTP %{http_code}",
            "-m",
            "20",
            "-X",
            "PUT",
            // S3 wants the payload's hash signed; curl 7.88 does not add it.
            "-H",
            "x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            &format!("{}:{}", rgw.access_key, rgw.secret_key),
            &format!("{}/{bucket}", rgw.url),
        ]);
        let out = run_timeout(cmd, CLIENT_TIMEOUT).expect("run curl");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.trim_end().ends_with("HTTP 200"),
            "create bucket {bucket}: {}",
            text(&out)
        );
    }

    /// The end of every daemon's log and output, for a failure message.
    pub fn log(&self) -> String {
        let mut out = String::new();
        let osd = format!("osd.{}", self.osd_id);
        for name in [MON, MGR, osd.as_str()] {
            for (file, lines) in [(format!("{name}.log"), 40), (format!("{name}.out"), 20)] {
                let path = self.root.join("log").join(&file);
                if path.exists() {
                    out.push_str(&format!("--- {} ---\n", path.display()));
                    out.push_str(&tail(&path, lines));
                }
            }
        }
        out
    }

    // --- bootstrap -----------------------------------------------------------

    fn conf_text(&self, fsid: &str) -> String {
        let d = self.root.display();
        let addr = self.addr;
        let port = self.mon_port;
        let keyring = self.keyring();
        let keyring = keyring.display();
        // `$name`, `$pid` etc. are Ceph's own metavariables.
        format!(
            "[global]
fsid = {fsid}
mon host = v1:{addr}:{port}
public addr = {addr}
cluster addr = {addr}
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {d}/run
admin socket = {d}/run/$name.$pid.asok
log file = {d}/log/$name.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 500
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
auth allow insecure global id reclaim = false
osd crush chooseleaf type = 0
ms bind msgr2 = false
[client]
keyring = {keyring}
[mon]
keyring = $mon_data/keyring
mon data = {d}/mon/$cluster-$id
[mgr]
mgr data = {d}/mgr/$cluster-$id
[osd]
osd data = {d}/osd/$cluster-$id
osd objectstore = bluestore
bluestore block create = true
bluestore block size = 4294967296
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096
"
        )
    }

    fn bootstrap_mon(&self, fsid: &str) {
        let mon_keyring = self.root.join("mon.keyring").display().to_string();
        let admin = self.keyring().display().to_string();
        let monmap = self.root.join("monmap").display().to_string();
        let conf = self.conf().display().to_string();
        let t = Duration::from_secs(30);
        self.tool_ok(
            &[
                "ceph-authtool",
                "--create-keyring",
                &mon_keyring,
                "--gen-key",
                "-n",
                "mon.",
                "--cap",
                "mon",
                "allow *",
            ],
            t,
        );
        self.tool_ok(
            &[
                "ceph-authtool",
                "--create-keyring",
                &admin,
                "--gen-key",
                "-n",
                "client.admin",
                "--cap",
                "mon",
                "allow *",
                "--cap",
                "osd",
                "allow *",
                "--cap",
                "mds",
                "allow *",
                "--cap",
                "mgr",
                "allow *",
            ],
            t,
        );
        self.tool_ok(
            &["ceph-authtool", &mon_keyring, "--import-keyring", &admin],
            t,
        );
        // `--addv` with an explicit v1 address: `--add` guesses the protocol
        // from the port, and loopback clusters use ports of their own.
        let v1 = format!("[v1:{}]", self.mon_addr());
        self.tool_ok(
            &[
                "monmaptool",
                "--create",
                "--addv",
                "a",
                &v1,
                "--fsid",
                fsid,
                &monmap,
            ],
            t,
        );
        self.tool_ok(
            &[
                "ceph-mon",
                "-c",
                &conf,
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                &monmap,
                "--keyring",
                &mon_keyring,
            ],
            Duration::from_secs(60),
        );
    }

    fn spawn_mon(&mut self) {
        self.spawn(MON, "ceph-mon", "a");
    }

    fn bootstrap_mgr(&self) {
        let data = self.root.join("mgr").join("ceph-x");
        std::fs::create_dir_all(&data).expect("mgr data dir");
        let keyring = data.join("keyring").display().to_string();
        self.ceph_ok(&[
            "auth",
            "get-or-create",
            "mgr.x",
            "mon",
            "allow profile mgr",
            "osd",
            "allow *",
            "mds",
            "allow *",
            "-o",
            &keyring,
        ]);
    }

    fn bootstrap_osd(&mut self) {
        let uuid = new_uuid();
        self.osd_id = self.ceph_ok(&["osd", "new", &uuid]).trim().to_string();
        let data = self.root.join("osd").join(format!("ceph-{}", self.osd_id));
        std::fs::create_dir_all(&data).expect("osd data dir");
        let keyring = data.join("keyring").display().to_string();
        let name = format!("osd.{}", self.osd_id);
        // The key first: mkfs authenticates to the monitor with it.
        self.ceph_ok(&[
            "auth",
            "get-or-create",
            &name,
            "osd",
            "allow *",
            "mon",
            "allow profile osd",
            "mgr",
            "allow profile osd",
            "-o",
            &keyring,
        ]);
        let conf = self.conf().display().to_string();
        self.tool_ok(
            &[
                "ceph-osd",
                "-c",
                &conf,
                "-i",
                &self.osd_id,
                "--mkfs",
                "--osd-uuid",
                &uuid,
            ],
            Duration::from_secs(60),
        );
    }

    /// Wait until the OSD is up and the monitor reports health (a warning
    /// will do: a one-OSD cluster has some); fails if a daemon exits.
    fn wait_ready(&mut self, deadline: Instant) {
        loop {
            self.check_children();
            let out = self.client(
                "ceph",
                &["status", "--format", "json"],
                Duration::from_secs(10),
            );
            if out.status.success() {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) {
                    // Older releases nest the counts one level deeper.
                    let osdmap = &v["osdmap"];
                    let up = osdmap["num_up_osds"]
                        .as_u64()
                        .or_else(|| osdmap["osdmap"]["num_up_osds"].as_u64())
                        .unwrap_or(0);
                    if up >= 1 && v["health"]["status"].is_string() {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "ceph cluster not ready: {}\n{}",
                text(&out),
                self.log()
            );
            std::thread::sleep(POLL);
        }
    }

    // --- processes -------------------------------------------------------------

    /// `prog` as a command, in the cluster's namespace if it has one.
    fn command(&self, prog: &str) -> Command {
        match &self.netns {
            // nsenter execs `prog` (no --fork): the child is `prog` itself.
            Some(ns) => nsenter_command(ns, &[prog]),
            None => Command::new(prog),
        }
    }

    fn client(&self, prog: &str, args: &[&str], timeout: Duration) -> Output {
        let mut cmd = self.command(prog);
        cmd.arg("-c").arg(self.conf()).args(args);
        run_timeout(cmd, timeout).unwrap_or_else(|e| panic!("run {prog} {args:?}: {e}"))
    }

    /// `ceph ARGS`, insisting on success; its stdout.
    fn ceph_ok(&self, args: &[&str]) -> String {
        let out = self.ceph(args);
        assert!(
            out.status.success(),
            "ceph {args:?}: {}\n{}",
            text(&out),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A bootstrap tool (`cmd[0]`), insisting on success.
    fn tool_ok(&self, cmd: &[&str], timeout: Duration) {
        let mut c = self.command(cmd[0]);
        c.args(&cmd[1..]);
        let out = run_timeout(c, timeout).unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}\n{}",
            text(&out),
            self.log()
        );
    }

    /// Start daemon `name` (`prog -i id`) in the foreground, its output
    /// appended to `log/<name>.out` (its log proper goes to `<name>.log`).
    fn spawn(&mut self, name: &str, prog: &str, id: &str) {
        let out_path = self.root.join("log").join(format!("{name}.out"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&out_path)
            .unwrap_or_else(|e| panic!("{}: {e}", out_path.display()));
        let err = out.try_clone().expect("dup daemon output");
        let child = self
            .command(prog)
            .arg("-f")
            .arg("-c")
            .arg(self.conf())
            .arg("-i")
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {prog}: {e}"));
        self.children.push((name.to_string(), child));
    }

    /// Fail, with the logs, if a daemon has exited.
    fn check_children(&mut self) {
        let mut dead = None;
        for (name, child) in &mut self.children {
            if let Some(status) = child.try_wait().expect("wait for a ceph daemon") {
                dead = Some((name.clone(), status));
                break;
            }
        }
        if let Some((name, status)) = dead {
            panic!("ceph {name} exited ({status}):\n{}", self.log());
        }
    }

    /// SIGKILL daemon `name` and reap it.
    fn kill(&mut self, name: &str) {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("{name} is not running"));
        let (_, mut child) = self.children.remove(i);
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        // SIGKILL: nothing of a throwaway cluster is worth a clean stop, and
        // `dir` removes the files once the daemons are gone.
        while let Some((_, mut child)) = self.children.pop() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
