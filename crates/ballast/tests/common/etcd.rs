//! A real etcd server for tests: Debian's `etcd` (3.4) on loopback ports
//! picked for it, with its data in a scratch directory, killed on drop.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";

/// Whether etcd is installed; missing is a failure under CI=true.
pub fn require_etcd(test: &str) -> bool {
    let built = cfg!(feature = "etcd");
    if built && Path::new(ETCD).is_file() {
        return true;
    }
    let why = if built {
        format!("{test}: needs {ETCD} (Debian etcd-server; scripts/test.sh installs it)")
    } else {
        format!("{test}: needs ballast built with --features etcd (scripts/test.sh does)")
    };
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true makes a missing prerequisite a failure");
    }
    eprintln!("SKIP {why}");
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub struct Etcd {
    dir: tempfile::TempDir,
    pub client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    pub fn start() -> Etcd {
        let mut e = Etcd {
            dir: tempfile::tempdir().expect("etcd dir"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        e.spawn();
        e
    }

    /// `etcd://127.0.0.1:PORT`, for `--store`.
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).unwrap();
        let child = Command::new(ETCD)
            .arg("--name")
            .arg("test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("test={peer}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = format!("127.0.0.1:{}", self.client_port);
        loop {
            if let Some(s) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("etcd exited ({s}):\n{}", self.log());
            }
            if let Ok((200, body)) = http_get(&addr, "/health") {
                if body.contains("true") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "etcd not ready:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// Kill it (its data stays for [`Etcd::restart`]).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A paused etcd dies of SIGKILL too; resume it so nothing waits.
            let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: etcd accepts connections and never answers (a hung or
    /// cut-off member), the case only deadlines help with.
    pub fn pause(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        let c = self.child.as_ref().expect("etcd running");
        let pid = nix::unistd::Pid::from_raw(i32::try_from(c.id()).unwrap());
        nix::sys::signal::kill(pid, sig).expect("signal etcd");
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn http_get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}

// ---------------------------------------------------------------------------
// A cluster of etcd members, each on a host of a [`Net`].

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use super::netns::{nsenter_command, run_in_netns, Net};

/// The client and peer ports of every member (each has an address of its own).
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

struct Member {
    name: String,
    addr: Ipv4Addr,
    netns: PathBuf,
    child: Option<Child>,
    starts: u32,
}

/// An etcd cluster of one member per host of a [`Net`] (each started with
/// `nsenter --net`, so cutting some other host off leaves it be), with its
/// data in a scratch directory, killed on drop. Drop it before the net.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    token: String,
    members: Vec<Member>,
}

impl EtcdCluster {
    /// One member on each of `hosts` of `net`; returns once every member
    /// says it is healthy (the cluster has a leader and answers reads).
    pub fn start(net: &Net, hosts: &[&str]) -> EtcdCluster {
        let mut c = EtcdCluster {
            dir: tempfile::Builder::new()
                .prefix("ballast-etcd-")
                .tempdir()
                .expect("etcd dir"),
            token: net.prefix().to_string(),
            members: hosts
                .iter()
                .map(|h| Member {
                    name: h.to_string(),
                    addr: net.addr(h),
                    netns: net.netns_path(h),
                    child: None,
                    starts: 0,
                })
                .collect(),
        };
        // All at once: a member of a new cluster waits for the others.
        for i in 0..c.members.len() {
            c.spawn(i);
        }
        c.wait_healthy();
        c
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// `etcd://a:2379,b:2379,c:2379`, for `--store`.
    pub fn urls(&self) -> String {
        let eps: Vec<String> = (0..self.len())
            .map(|i| self.endpoint(i).to_string())
            .collect();
        format!("etcd://{}", eps.join(","))
    }

    /// Member `i`'s client address.
    pub fn endpoint(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.members[i].addr, CLIENT_PORT))
    }

    pub fn name(&self, i: usize) -> &str {
        &self.members[i].name
    }

    /// The pid of member `i`'s etcd process, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(Child::id)
    }

    fn spawn(&mut self, i: usize) {
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}:{PEER_PORT}", m.name, m.addr))
            .collect();
        let data = self
            .dir
            .path()
            .join(format!("{}.data", self.members[i].name));
        let m = &mut self.members[i];
        m.starts += 1;
        let client = format!("http://{}:{CLIENT_PORT}", m.addr);
        let peer = format!("http://{}:{PEER_PORT}", m.addr);
        let log_path = self.dir.path().join(format!("{}-{}.log", m.name, m.starts));
        let log = std::fs::File::create(log_path).unwrap();
        let data = data.to_string_lossy().into_owned();
        let initial = initial.join(",");
        // With a data directory from an earlier start, etcd ignores the
        // --initial-* flags and rejoins as the member it was.
        let args = [
            ETCD,
            "--name",
            &m.name,
            "--data-dir",
            &data,
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &initial,
            "--initial-cluster-token",
            &self.token,
            "--initial-cluster-state",
            "new",
            "--logger",
            "zap",
        ];
        let child = nsenter_command(&m.netns, &args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        m.child = Some(child);
    }

    /// Whether member `i`'s process runs (it may not be healthy yet).
    pub fn is_running(&mut self, i: usize) -> bool {
        self.members[i]
            .child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    /// Whether member `i` answers its /health with true: it is part of a
    /// cluster that has a leader and a quorum.
    pub fn member_healthy(&self, i: usize) -> bool {
        let addr = self.endpoint(i).to_string();
        run_in_netns(&self.members[i].netns, || {
            matches!(http_request(&addr, "GET", "/health", ""),
                Ok((200, body)) if serde_json::from_str::<serde_json::Value>(&body)
                    .is_ok_and(|v| v["health"] == "true"))
        })
    }

    /// Wait until every running member is healthy (up to 60 s); fails if a
    /// member that should run has exited.
    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut all = true;
            for i in 0..self.len() {
                let Some(c) = self.members[i].child.as_mut() else {
                    continue;
                };
                if let Some(s) = c.try_wait().unwrap() {
                    panic!(
                        "etcd member {} exited ({s}):\n{}",
                        self.name(i),
                        self.log(i)
                    );
                }
                all &= self.member_healthy(i);
            }
            if all {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd cluster not healthy:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the member that is leader, as the first running member
    /// that answers sees it.
    pub fn leader(&self) -> Option<usize> {
        for i in 0..self.len() {
            if self.members[i].child.is_none() {
                continue;
            }
            let addr = self.endpoint(i).to_string();
            let status = run_in_netns(&self.members[i].netns, || {
                http_request(&addr, "POST", "/v3/maintenance/status", "{}")
            });
            let Ok((200, body)) = status else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
                continue;
            };
            let (Some(me), Some(leader)) =
                (v["header"]["member_id"].as_str(), v["leader"].as_str())
            else {
                continue;
            };
            if leader == "0" {
                continue;
            }
            if me == leader {
                return Some(i);
            }
            // Ask the others which of them it is.
            for j in (0..self.len()).filter(|&j| j != i) {
                let addr = self.endpoint(j).to_string();
                let s = run_in_netns(&self.members[j].netns, || {
                    http_request(&addr, "POST", "/v3/maintenance/status", "{}")
                });
                if let Ok((200, b)) = s {
                    if serde_json::from_str::<serde_json::Value>(&b)
                        .is_ok_and(|v| v["header"]["member_id"] == leader)
                    {
                        return Some(j);
                    }
                }
            }
        }
        None
    }

    /// SIGKILL member `i` (its data stays for [`EtcdCluster::restart_member`]).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start member `i` again from its data (killing it first if it runs);
    /// returns once every running member is healthy.
    pub fn restart_member(&mut self, i: usize) {
        self.kill_member(i);
        self.spawn(i);
        self.wait_healthy();
    }

    /// Member `i`'s log, over all its starts.
    pub fn log(&self, i: usize) -> String {
        let m = &self.members[i];
        (1..=m.starts)
            .map(|s| {
                std::fs::read_to_string(self.dir.path().join(format!("{}-{s}.log", m.name)))
                    .unwrap_or_default()
            })
            .collect()
    }

    /// Every member's log, each under a header.
    pub fn logs(&self) -> String {
        (0..self.len())
            .map(|i| format!("--- etcd {} ---\n{}", self.name(i), self.log(i)))
            .collect()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.len() {
            self.kill_member(i);
        }
    }
}

/// One HTTP/1.0 request; (status, body).
fn http_request(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let sa: SocketAddr = addr
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}
