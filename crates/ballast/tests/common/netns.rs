//! Test hosts on one machine: each a network namespace of its own, joined by
//! a Linux bridge that lives in a namespace of its own too (dockerd sets the
//! root namespace's FORWARD policy to DROP and enables bridge netfilter
//! there, so a bridge in the root namespace would not forward).
//!
//! ```text
//!   bl<pid>-<n>-h1          bl<pid>-<n>  (the bridge namespace)       bl<pid>-<n>-h2
//!   lo, eth0 10.x.y.1/24 ── veth ── p-h1 ┐                     ┌ p-h2 ── veth ── eth0 10.x.y.2/24
//!                                        └──────── br0 ────────┘
//! ```
//!
//! Every veth is created with its ends directly in the host and the bridge
//! namespaces, so no device ever appears in the root namespace, and deleting
//! a namespace (once no process is left in it) destroys its links with it.
//! The namespaces are named `bl<pid>-<n>[-<host>]` (`n` counts the nets of
//! this process), so test processes running in parallel never collide, and a
//! new [`Net`] deletes those of processes that died without cleaning up.
//!
//! `ip netns exec` also makes a private mount namespace; anything whose
//! mounts the test must see (a ballast daemon) is started with
//! `nsenter --net=/run/netns/X` instead ([`Net::command`]).

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const NETNS_DIR: &str = "/run/netns";
/// The bridge inside the bridge namespace.
const BRIDGE: &str = "br0";
/// Each host's end of its veth, inside the host's namespace.
const HOST_IF: &str = "eth0";
/// How long one `ip` call may take before the harness gives up on it.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

static NETS: AtomicU32 = AtomicU32::new(0);

/// Whether namespaces can be made here: root, `ip` and `nsenter`. Locally a
/// missing prerequisite skips the test; with CI=true it fails it.
pub fn require_netns(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        let why = format!("{test}: needs root to make network namespaces");
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{why}; CI=true makes a missing prerequisite a failure");
        }
        eprintln!("SKIP {why}");
        return false;
    }
    super::require_tool(test, "ip") && super::require_tool(test, "nsenter")
}

/// One test host: a network namespace with `lo` and `eth0` on the net.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    /// The namespace's name (`ip netns list`).
    pub ns: String,
    /// Its veth end in the bridge namespace (what [`Net::partition`] cuts).
    port: String,
    addr: Ipv4Addr,
}

impl Host {
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// `/run/netns/<ns>`, for `nsenter --net=` and `setns`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.ns)
    }
}

/// N test hosts on one private /24, removed on drop (also after a panic).
pub struct Net {
    prefix: String,
    subnet: [u8; 3],
    hosts: Vec<Host>,
    /// Whether the bridge namespace was made (so drop removes it).
    bridge_made: bool,
}

impl Net {
    /// Make a host for each of `names` (lowercase letters, digits, `-`; at
    /// most 13 characters, so `p-<name>` fits an interface name).
    pub fn new(names: &[&str]) -> Net {
        assert!(
            !names.is_empty() && names.len() < 250,
            "1..250 hosts: {names:?}"
        );
        for (i, n) in names.iter().enumerate() {
            assert!(
                !n.is_empty()
                    && n.len() <= 13
                    && n.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "host name {n:?}: 1-13 of [a-z0-9-]"
            );
            assert!(!names[..i].contains(n), "host {n:?} named twice");
        }
        cleanup_stale();
        let pid = std::process::id();
        let n = NETS.fetch_add(1, Ordering::Relaxed);
        // Each net is an island (nothing routes between it and any other
        // namespace), so subnets could not clash even if equal; a distinct
        // one per net still keeps logs and packet dumps unambiguous.
        let subnet = [
            10,
            200 + u8::try_from(pid % 50).unwrap(),
            u8::try_from(n % 256).unwrap(),
        ];
        let mut net = Net {
            prefix: format!("bl{pid}-{n}"),
            subnet,
            hosts: Vec::new(),
            bridge_made: false,
        };
        // From here on, a failure drops `net`, which removes what exists.
        let br = net.prefix.clone();
        ip(&["netns", "add", &br]);
        net.bridge_made = true;
        ip(&["-n", &br, "link", "set", "lo", "up"]);
        ip(&["-n", &br, "link", "add", BRIDGE, "type", "bridge"]);
        ip(&["-n", &br, "link", "set", BRIDGE, "up"]);
        for (i, name) in names.iter().enumerate() {
            let host = Host {
                name: name.to_string(),
                ns: format!("{br}-{name}"),
                port: format!("p-{name}"),
                addr: Ipv4Addr::new(
                    subnet[0],
                    subnet[1],
                    subnet[2],
                    u8::try_from(i + 1).unwrap(),
                ),
            };
            ip(&["netns", "add", &host.ns]);
            net.hosts.push(host.clone());
            let ns = host.ns.as_str();
            ip(&[
                "link", "add", HOST_IF, "netns", ns, "type", "veth", "peer", "name", &host.port,
                "netns", &br,
            ]);
            ip(&["-n", &br, "link", "set", &host.port, "master", BRIDGE, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", host.addr),
                "dev",
                HOST_IF,
            ]);
            ip(&["-n", ns, "link", "set", HOST_IF, "up"]);
        }
        net
    }

    /// `bl<pid>-<n>`: every namespace of this net starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `10.x.y.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} in {}", self.prefix))
    }

    pub fn addr(&self, name: &str) -> Ipv4Addr {
        self.host(name).addr()
    }

    pub fn netns_path(&self, name: &str) -> PathBuf {
        self.host(name).netns_path()
    }

    /// Every namespace this net made (the bridge's included).
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.hosts.iter().map(|h| h.ns.clone()).collect();
        if self.bridge_made {
            v.push(self.prefix.clone());
        }
        v
    }

    /// Cut `name` off the net: its veth end in the bridge namespace goes
    /// down, so every packet to or from it is lost (connections stall, new
    /// ones time out); `lo` inside it keeps working.
    pub fn partition(&self, name: &str) {
        let h = self.host(name);
        ip(&["-n", &self.prefix, "link", "set", &h.port, "down"]);
    }

    /// Undo [`Net::partition`].
    pub fn heal(&self, name: &str) {
        let h = self.host(name);
        ip(&["-n", &self.prefix, "link", "set", &h.port, "up"]);
    }

    /// `nsenter --net=/run/netns/<ns> <cmd...>`: a command in `name`'s
    /// network namespace and the test's mount namespace. For `cmd` run with
    /// `spawn`, the child's pid is `cmd`'s own (nsenter execs it).
    pub fn command(&self, name: &str, cmd: &[&str]) -> Command {
        nsenter_command(&self.netns_path(name), cmd)
    }

    /// Run `cmd` in `name`'s namespace to its end, killed after `timeout`
    /// (then the output has no exit code).
    pub fn exec_timeout(&self, name: &str, cmd: &[&str], timeout: Duration) -> Output {
        run_timeout(self.command(name, cmd), timeout)
            .unwrap_or_else(|e| panic!("{name}: {cmd:?}: {e}"))
    }

    /// [`Net::exec_timeout`] with 30 s, insisting on success; its stdout.
    pub fn exec(&self, name: &str, cmd: &[&str]) -> String {
        let out = self.exec_timeout(name, cmd, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "{name}: {cmd:?}: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run `f` on a thread that entered `name`'s network namespace: sockets
    /// it makes belong there (and stay there when returned).
    pub fn run_in<T: Send>(&self, name: &str, f: impl FnOnce() -> T + Send) -> T {
        run_in_netns(&self.netns_path(name), f)
    }

    /// Whether a TCP connection from `from` to `to` gets an answer within
    /// `timeout`: accepted or refused (a refusal proves the packets got
    /// there and back); false if it timed out or the net was unreachable.
    pub fn reaches(&self, from: &str, to: SocketAddr, timeout: Duration) -> bool {
        self.run_in(from, || match TcpStream::connect_timeout(&to, timeout) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        })
    }

    /// Processes inside `name`'s namespace.
    pub fn host_pids(&self, name: &str) -> Vec<u32> {
        ns_pids(&self.host(name).ns)
    }

    /// Processes still inside any namespace of this net.
    pub fn pids(&self) -> Vec<u32> {
        self.namespaces()
            .iter()
            .flat_map(|ns| ns_pids(ns))
            .collect()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let namespaces = self.namespaces();
        for ns in &namespaces {
            // A process left inside would keep the namespace, and its links,
            // alive after `ip netns del`. Whatever is still here was started
            // by this test (daemons, etcd members) and outlived its owner.
            let pids = ns_pids(ns);
            if !pids.is_empty() {
                eprintln!("netns {ns}: killing processes left inside: {pids:?}");
                kill_all(&pids);
            }
        }
        for ns in &namespaces {
            if let Err(e) = try_ip(&["netns", "del", ns]) {
                eprintln!("netns {ns}: {e}");
            }
        }
    }
}

/// Taken from a [`Net`] before it is dropped, to check after the drop that
/// nothing of it is left: [`CleanupCheck::leftovers`].
///
/// It holds each namespace open meanwhile, so none of them is freed and its
/// inode reused by a namespace made since (by a test running in parallel)
/// while the check looks for processes in it.
pub struct CleanupCheck {
    prefix: String,
    held: Vec<(String, File)>,
}

impl CleanupCheck {
    /// What of the net is still on the machine: namespaces named by its
    /// prefix, processes in any of its namespaces (such a process keeps a
    /// deleted namespace alive, and its links with it), and devices of its
    /// names in the root namespace (where none is ever made). Dropping the
    /// check releases the namespaces: without a name or a process, the
    /// kernel frees them and destroys their veths and bridge.
    pub fn leftovers(&self) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let prefix = &self.prefix;
        let mut out: Vec<String> = list_netns()
            .into_iter()
            .filter(|n| n == prefix || n.starts_with(&format!("{prefix}-")))
            .map(|n| format!("netns {n}"))
            .collect();
        let inodes: Vec<(u64, &str)> = self
            .held
            .iter()
            .filter_map(|(n, f)| f.metadata().ok().map(|m| (m.ino(), n.as_str())))
            .collect();
        for pid in all_pids() {
            let Some(ino) = pid_netns_inode(pid) else {
                continue;
            };
            if let Some((_, ns)) = inodes.iter().find(|(i, _)| *i == ino) {
                let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .unwrap_or_default()
                    .replace('\0', " ");
                out.push(format!("process {pid} in (deleted) {ns}: {}", cmd.trim()));
            }
        }
        let links = try_ip(&["-o", "link", "show"]).unwrap_or_default();
        for l in links.lines() {
            if let Some(name) = l.split(':').nth(1).map(str::trim) {
                if name.starts_with(prefix.as_str()) || name.starts_with("p-") {
                    out.push(format!("link {name} in the root namespace"));
                }
            }
        }
        out
    }
}

impl Net {
    /// See [`CleanupCheck`].
    pub fn cleanup_check(&self) -> CleanupCheck {
        CleanupCheck {
            prefix: self.prefix.clone(),
            held: self
                .namespaces()
                .into_iter()
                .filter_map(|ns| {
                    let f = File::open(Path::new(NETNS_DIR).join(&ns)).ok()?;
                    Some((ns, f))
                })
                .collect(),
        }
    }
}

/// `nsenter --net=<path> <cmd...>`.
pub fn nsenter_command(netns: &Path, cmd: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(cmd);
    c
}

/// Run `f` on a thread of its own that entered the network namespace at
/// `netns` (network namespaces are per thread; the test's other threads stay
/// where they are).
pub fn run_in_netns<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(netns).unwrap_or_else(|e| panic!("{}: {e}", netns.display()));
    std::thread::scope(|s| {
        let t = s.spawn(move || {
            // SAFETY: setns only reads the descriptor, which `file` keeps
            // open for the call; it changes this thread's namespace only.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "setns {}: {}",
                netns.display(),
                std::io::Error::last_os_error()
            );
            drop(file);
            f()
        });
        t.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Run `cmd` to its end with stdout and stderr captured; after `timeout` it
/// is killed and its output so far returned.
pub fn run_timeout(mut cmd: Command, timeout: Duration) -> std::io::Result<Output> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read both pipes on threads, so a chatty command cannot block on them.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let ro = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let re = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Ok(Output {
        status,
        stdout: ro.join().unwrap_or_default(),
        stderr: re.join().unwrap_or_default(),
    })
}

fn try_ip(args: &[&str]) -> Result<String, String> {
    let mut c = Command::new("ip");
    c.args(args);
    let out = run_timeout(c, IP_TIMEOUT).map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> String {
    try_ip(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Names in /run/netns (what `ip netns list` shows).
fn list_netns() -> Vec<String> {
    std::fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn ns_pids(ns: &str) -> Vec<u32> {
    try_ip(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn kill_all(pids: &[u32]) {
    for &p in pids {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(p).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
    }
    // Wait for them to be gone (they are not our children to reap, or are
    // zombies of a Child someone else holds: then /proc shows state Z).
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && pids.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .map(|s| {
                    !s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        })
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

fn pid_netns_inode(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// Delete the namespaces (and kill what runs in them) of test processes
/// that died without cleaning up: `bl<pid>-...` whose pid is gone.
fn cleanup_stale() {
    for ns in list_netns() {
        let Some(pid) = ns
            .strip_prefix("bl")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if !ns.starts_with(&format!("bl{pid}-")) {
            continue;
        }
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if alive {
            continue;
        }
        eprintln!("netns {ns}: left by dead process {pid}; removing it");
        kill_all(&ns_pids(&ns));
        // Another test process may be removing it at the same time.
        let _ = try_ip(&["netns", "del", &ns]);
    }
}
