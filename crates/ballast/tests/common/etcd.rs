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
