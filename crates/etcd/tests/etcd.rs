//! `EtcdStore` against a real etcd: each test starts its own `etcd` on free
//! ports in a temporary data directory and kills its whole process group
//! when done. Without an etcd binary the tests skip, except under `CI=true`,
//! where a missing etcd is a failure (scripts/test.sh installs it).

use std::io::{Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_core::store::{Store, StoreError, Txn, Watch, WatchEvent};
use ballast_core::store_conformance;
use ballast_etcd::{EtcdConfig, EtcdStore, EtcdTls};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

fn etcd_binary() -> Option<PathBuf> {
    let found = std::iter::once(PathBuf::from("/usr/bin/etcd"))
        .chain(
            std::env::var_os("PATH")
                .map(|p| {
                    std::env::split_paths(&p)
                        .map(|d| d.join("etcd"))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        )
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "etcd is not installed (Debian: etcd-server), and CI=true forbids skipping"
        );
        eprintln!("SKIP: no etcd binary (install Debian's etcd-server)");
    }
    found
}

/// A port free now, below Linux's ephemeral range (32768 up), so that no
/// outgoing connection takes it while etcd is down between restarts.
fn free_port() -> u16 {
    loop {
        let port = fastrand::u16(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Server TLS for an etcd started by [`Etcd::start_tls`].
struct ServerTls {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// One etcd server, killed (with its process group) on drop.
struct Etcd {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<ServerTls>,
    child: Option<Child>,
}

impl Etcd {
    fn start() -> Option<Etcd> {
        Self::start_with(|_| None)
    }

    /// An etcd that only speaks TLS and wants a client certificate;
    /// `make` writes the server's files into the data directory's parent.
    fn start_with(make: impl FnOnce(&Path) -> Option<ServerTls>) -> Option<Etcd> {
        let binary = etcd_binary()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = make(dir.path());
        let mut etcd = Etcd {
            binary,
            dir,
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            child: None,
        };
        // Another test may have taken a port between the check and etcd's
        // bind: then try others.
        for _ in 0..5 {
            match etcd.spawn() {
                Ok(()) => return Some(etcd),
                Err(log) if log.contains("address already in use") => {
                    eprintln!("etcd's ports were taken; trying others");
                    etcd.client_port = free_port();
                    etcd.peer_port = free_port();
                }
                Err(log) => panic!("etcd exited {log}"),
            }
        }
        panic!("no free ports for etcd");
    }

    fn client_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// Start etcd and wait until it answers; Err(its log) if it exited.
    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "etcd is already running");
        let client = self.client_url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log");
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name=default")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            // A single member elects itself after one election timeout;
            // etcd's default (1 s) would slow every (re)start.
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("etcd log"))
            .stderr(log)
            // Its own group, so Drop can kill whatever it started.
            .process_group(0);
        if let Some(tls) = &self.tls {
            cmd.arg(format!("--cert-file={}", tls.cert.display()))
                .arg(format!("--key-file={}", tls.key.display()))
                .arg(format!("--trusted-ca-file={}", tls.ca.display()))
                .arg("--client-cert-auth");
        }
        // etcd 3.4 runs only on amd64 (and ppc64le) unless told the
        // architecture is meant.
        match std::env::consts::ARCH {
            "x86_64" => {}
            "aarch64" => {
                cmd.env("ETCD_UNSUPPORTED_ARCH", "arm64");
            }
            other => {
                cmd.env("ETCD_UNSUPPORTED_ARCH", other);
            }
        }
        self.child = Some(cmd.spawn().expect("start etcd"));
        self.wait_ready()
    }

    /// Until etcd has a leader and answers (its /health, or for TLS, its
    /// port is open; the tests then retry their connect).
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("({status}):\n{}", self.log()));
            }
            if self.healthy() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn healthy(&self) -> bool {
        let Ok(mut conn) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        if self.tls.is_some() {
            return true;
        }
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        if conn
            .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = conn.read_to_string(&mut answer);
        answer.contains("\"health\":\"true\"")
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("etcd is running");
        let pid = i32::try_from(child.id()).expect("pid fits");
        killpg(Pid::from_raw(pid), signal).expect("signal etcd");
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = i32::try_from(child.id()).expect("pid fits");
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Start again on the same data directory and ports.
    fn restart(&mut self) {
        self.kill();
        if let Err(log) = self.spawn() {
            panic!("etcd did not restart {log}");
        }
    }

    fn config(&self, prefix: &str, timeout: Duration) -> EtcdConfig {
        EtcdConfig {
            endpoints: vec![self.client_url()],
            prefix: prefix.to_string(),
            timeout,
            user: None,
            tls: None,
        }
    }

    fn store(&self, prefix: &str, timeout: Duration) -> EtcdStore {
        EtcdStore::connect(&self.config(prefix, timeout)).expect("connect to etcd")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

#[track_caller]
fn assert_unavailable<T: std::fmt::Debug>(what: &str, r: Result<T, StoreError>) {
    match r {
        Err(e @ StoreError::Unavailable(_)) => {
            assert!(e.is_retryable());
            eprintln!("{what}: {e}");
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

/// Retry `f` while the store is Unavailable (etcd coming back).
#[track_caller]
fn eventually<T>(what: &str, mut f: impl FnMut() -> Result<T, StoreError>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match f() {
            Ok(v) => return v,
            Err(StoreError::Unavailable(why)) if Instant::now() < deadline => {
                eprintln!("{what}: still unavailable: {why}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{what}: {e}"),
        }
    }
}

/// (key, revision, is a put) of each event.
fn summary(events: &[WatchEvent]) -> Vec<(String, u64, bool)> {
    events
        .iter()
        .map(|e| {
            (
                e.key().to_string(),
                e.revision(),
                matches!(e, WatchEvent::Put(_)),
            )
        })
        .collect()
}

/// Read `n` events, counting the Unavailable notices on the way.
fn collect(watch: &mut dyn Watch, n: usize) -> (Vec<WatchEvent>, usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut got, mut notices) = (Vec::new(), 0);
    while got.len() < n && Instant::now() < deadline {
        match watch.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(batch)) => got.extend(batch),
            Ok(None) => {}
            Err(StoreError::Unavailable(_)) => notices += 1,
            Err(e) => panic!("watch: {e}"),
        }
    }
    (got, notices)
}

#[test]
fn conformance_suite_passes_on_etcd() {
    let Some(etcd) = Etcd::start() else { return };
    let store = Arc::new(etcd.store("/conformance/", Duration::from_secs(2)));
    let s = store.clone();
    let started = Instant::now();
    let conflicts = store_conformance::run_all(store, "t/", &move |rev| {
        s.compact(rev).expect("compact");
    });
    println!(
        "etcd conformance: {:.1?}, {conflicts} concurrent CAS conflicts (16 threads x 25)",
        started.elapsed()
    );
}

#[test]
fn calls_fail_as_unavailable_when_etcd_stops_and_recover_after() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let store = etcd.store("/down/", Duration::from_secs(1));
    let r1 = store
        .txn(Txn::new().put("k1", b"v1".to_vec()))
        .expect("put before");

    // Frozen: the connection stays open but nothing answers.
    etcd.signal(Signal::SIGSTOP);
    let t = Instant::now();
    assert_unavailable("get on a stopped etcd", store.get("k1"));
    assert_unavailable(
        "txn on a stopped etcd",
        store.txn(Txn::new().put("k2", b"v2".to_vec())),
    );
    assert_unavailable("range on a stopped etcd", store.range(""));
    assert_unavailable(
        "lease grant on a stopped etcd",
        store.lease_grant(Duration::from_secs(5)),
    );
    assert_unavailable("watch on a stopped etcd", store.watch("", r1).map(drop));
    eprintln!(
        "five calls on a stopped etcd returned in {:.1?}",
        t.elapsed()
    );
    etcd.signal(Signal::SIGCONT);
    let kv = eventually("get after SIGCONT", || store.get_kv("k1")).expect("k1 kept");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"v1"[..], r1));
    // The txn that timed out was on its way; etcd may have applied it on
    // waking. Either is allowed ("nothing is known to be written").
    eprintln!(
        "k2 after the timed-out txn: {:?}",
        store.get("k2").expect("get k2")
    );

    // Dead: connections refused.
    etcd.kill();
    let t = Instant::now();
    assert_unavailable("get on a dead etcd", store.get("k1"));
    assert_unavailable(
        "txn on a dead etcd",
        store.txn(Txn::new().put("k3", b"v3".to_vec())),
    );
    assert_unavailable("keepalive on a dead etcd", store.lease_keepalive(1));
    eprintln!("three calls on a dead etcd returned in {:.1?}", t.elapsed());

    // The same store works again once etcd is back, with its data.
    etcd.restart();
    let kv = eventually("get after restart", || store.get_kv("k1")).expect("k1 survived");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"v1"[..], r1));
    let r4 = store
        .txn(
            Txn::new()
                .require_revision("k1", r1)
                .put("k1", b"v4".to_vec()),
        )
        .expect("txn after restart");
    assert!(r4 > r1);
    assert_eq!(store.get("k1").unwrap().unwrap(), b"v4");
    let lease = store
        .lease_grant(Duration::from_secs(5))
        .expect("lease after restart");
    store.lease_revoke(lease).expect("revoke after restart");
}

#[test]
fn connecting_to_no_etcd_is_unavailable() {
    let config = EtcdConfig {
        endpoints: vec![format!("http://127.0.0.1:{}", free_port())],
        prefix: "/x/".into(),
        timeout: Duration::from_millis(500),
        user: None,
        tls: None,
    };
    match EtcdStore::connect(&config) {
        Err(e @ StoreError::Unavailable(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("127.0.0.1:"), "{msg}");
            eprintln!("{msg}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[test]
fn a_watch_resumes_without_gaps_across_an_etcd_restart() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let store = etcd.store("/watch/", Duration::from_secs(2));
    let start = store.range("w/").unwrap().revision;
    let mut watch = store.watch("w/", start).expect("watch");
    let ra = store.txn(Txn::new().put("w/a", b"1".to_vec())).unwrap();
    let rb = store.txn(Txn::new().put("w/b", b"1".to_vec())).unwrap();
    let (got, _) = collect(watch.as_mut(), 2);
    assert_eq!(
        summary(&got),
        [("w/a".into(), ra, true), ("w/b".into(), rb, true)]
    );

    etcd.kill();
    // The broken stream is reported (once), and polling goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    let notice = loop {
        match watch.recv_timeout(Duration::from_millis(200)) {
            Err(e @ StoreError::Unavailable(_)) => break e,
            Ok(None) => assert!(Instant::now() < deadline, "no Unavailable from a dead etcd"),
            other => panic!("unexpected {other:?}"),
        }
    };
    eprintln!("watch notice: {notice}");
    assert!(watch
        .recv_timeout(Duration::from_millis(300))
        .unwrap()
        .is_none());

    etcd.restart();
    // Written as soon as etcd is back, likely before the watch reopens: it
    // must then read them from etcd's history, after the last it delivered.
    let rc = eventually("put after restart", || {
        store.txn(Txn::new().put("w/c", b"1".to_vec()))
    });
    let rd = store.txn(Txn::new().delete("w/a")).unwrap();
    store
        .commit(Txn::new().put("outside", b"1".to_vec()))
        .unwrap();
    let re = store.txn(Txn::new().put("w/b", b"2".to_vec())).unwrap();
    let (got, notices) = collect(watch.as_mut(), 3);
    assert_eq!(
        summary(&got),
        [
            ("w/c".into(), rc, true),
            ("w/a".into(), rd, false),
            ("w/b".into(), re, true)
        ],
        "the watch lost, repeated or reordered changes across the restart"
    );
    assert!(notices <= 1, "{notices} more notices after etcd came back");
    assert!(watch
        .recv_timeout(Duration::from_millis(300))
        .unwrap()
        .is_none());
    let WatchEvent::Put(kv) = &got[2] else {
        unreachable!()
    };
    assert_eq!((kv.create_revision, kv.value.as_slice()), (rb, &b"2"[..]));
}

#[test]
fn a_watch_of_a_frozen_etcd_delivers_once_it_wakes() {
    let Some(etcd) = Etcd::start() else { return };
    let store = etcd.store("/frozen/", Duration::from_secs(1));
    let writer = etcd.store("/frozen/", Duration::from_secs(1));
    let start = store.range("").unwrap().revision;
    let mut watch = store.watch("", start).expect("watch");
    etcd.signal(Signal::SIGSTOP);
    // Nothing comes, and nothing hangs.
    for _ in 0..3 {
        match watch.recv_timeout(Duration::from_millis(300)) {
            Ok(None) | Err(StoreError::Unavailable(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    etcd.signal(Signal::SIGCONT);
    let r = eventually("put after SIGCONT", || {
        writer.txn(Txn::new().put("k", b"1".to_vec()))
    });
    let (got, _) = collect(watch.as_mut(), 1);
    assert_eq!(summary(&got), [("k".into(), r, true)]);
}

#[test]
fn two_prefixes_on_one_etcd_never_see_each_other() {
    let Some(etcd) = Etcd::start() else { return };
    let a = etcd.store("/cluster-a/", Duration::from_secs(2));
    let b = etcd.store("/cluster-b/", Duration::from_secs(2));
    let everything = etcd.store("", Duration::from_secs(2));

    let start_a = a.range("").unwrap().revision;
    let mut watch_a = a.watch("", start_a).unwrap();
    let ra = a
        .txn(
            Txn::new()
                .require_absent("vol/x")
                .put("vol/x", b"a".to_vec()),
        )
        .unwrap();
    // The same key is absent for B, whatever A holds.
    let rb = b
        .txn(
            Txn::new()
                .require_absent("vol/x")
                .put("vol/x", b"b".to_vec()),
        )
        .unwrap();
    b.commit(Txn::new().put("vol/y", b"b".to_vec())).unwrap();
    assert_eq!(a.get("vol/x").unwrap().unwrap(), b"a");
    assert_eq!(b.get("vol/x").unwrap().unwrap(), b"b");
    assert_eq!(a.get("vol/y").unwrap(), None);
    let keys = |s: &EtcdStore| -> Vec<String> {
        s.range("")
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect()
    };
    assert_eq!(keys(&a), ["vol/x"]);
    assert_eq!(keys(&b), ["vol/x", "vol/y"]);
    // In etcd the keys carry their prefix.
    assert_eq!(
        keys(&everything),
        ["/cluster-a/vol/x", "/cluster-b/vol/x", "/cluster-b/vol/y"]
    );
    // A compare in B on A's revision of the key fails: B's key is another.
    match b.txn(Txn::new().require_revision("vol/x", ra).delete("vol/x")) {
        Err(StoreError::Conflict { key }) => assert_eq!(key, "vol/x"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    b.commit(Txn::new().require_revision("vol/x", rb).delete("vol/x"))
        .unwrap();
    assert_eq!(a.get("vol/x").unwrap().unwrap(), b"a", "B deleted A's key");

    // A's watch saw only A's change.
    let (got, _) = collect(watch_a.as_mut(), 1);
    assert_eq!(summary(&got), [("vol/x".into(), ra, true)]);
    assert!(watch_a
        .recv_timeout(Duration::from_millis(300))
        .unwrap()
        .is_none());
}

#[test]
fn a_failed_compare_names_its_key_and_writes_nothing() {
    let Some(etcd) = Etcd::start() else { return };
    let store = etcd.store("/cmp/", Duration::from_secs(2));
    let r1 = store
        .txn(Txn::new().put("a", b"1".to_vec()).put("b", b"1".to_vec()))
        .unwrap();
    // The second compare fails; etcd does not say which, the store does.
    let bad = Txn::new()
        .require_revision("a", r1)
        .require_equals("b", b"2".to_vec())
        .require_absent("c")
        .put("a", b"x".to_vec())
        .delete("b");
    match store.txn(bad) {
        Err(StoreError::Conflict { key }) => assert_eq!(key, "b"),
        other => panic!("expected a conflict on b, got {other:?}"),
    }
    assert_eq!(store.get("a").unwrap().unwrap(), b"1");
    assert_eq!(store.get("b").unwrap().unwrap(), b"1");
    // Writing one key twice in a transaction: the last write wins.
    let r2 = store
        .txn(
            Txn::new()
                .put("a", b"2".to_vec())
                .delete("a")
                .put("a", b"3".to_vec()),
        )
        .unwrap();
    let kv = store.get_kv("a").unwrap().unwrap();
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"3"[..], r2));
    // A put under a lease that is gone.
    let lease = store.lease_grant(Duration::from_secs(30)).unwrap();
    store.lease_revoke(lease).unwrap();
    match store.txn(Txn::new().put_with_lease("l", b"1".to_vec(), lease)) {
        Err(StoreError::LeaseExpired(l)) => assert_eq!(l, lease),
        other => panic!("expected LeaseExpired, got {other:?}"),
    }
    assert!(matches!(
        store.lease_keepalive(lease),
        Err(StoreError::LeaseExpired(_))
    ));
    // A transaction that changes nothing makes no revision.
    let now = store.revision().unwrap();
    assert_eq!(store.txn(Txn::new().delete("never")).unwrap(), now);
    assert_eq!(store.txn(Txn::new()).unwrap(), now);
}

#[test]
fn user_and_password_and_an_etcd_restart() {
    let Some(mut etcd) = Etcd::start() else {
        return;
    };
    let url = etcd.client_url();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect([url.as_str()], None)
            .await
            .unwrap();
        c.user_add("root", "root-pw", None).await.unwrap();
        c.user_grant_role("root", "root").await.unwrap();
        c.auth_enable().await.unwrap();
    });

    // etcd checks passwords with bcrypt, slow on a loaded machine.
    let mut config = etcd.config("/auth/", Duration::from_secs(10));
    match EtcdStore::connect(&config) {
        Err(e) => {
            assert!(!e.is_retryable(), "{e}");
            eprintln!("without a user: {e}");
        }
        Ok(_) => panic!("etcd with auth took a call without a user"),
    }
    config.user = Some(("root".into(), "wrong".into()));
    match EtcdStore::connect(&config) {
        Err(e) => {
            assert!(!e.is_retryable(), "{e}");
            eprintln!("with a wrong password: {e}");
        }
        Ok(_) => panic!("etcd took a wrong password"),
    }
    config.user = Some(("root".into(), "root-pw".into()));
    let store = EtcdStore::connect(&config).expect("connect with the password");
    let r = store.txn(Txn::new().put("k", b"1".to_vec())).unwrap();
    // etcd's simple tokens do not survive its restart; the store gets anew.
    etcd.restart();
    let kv = eventually("get after restart", || store.get_kv("k")).expect("k kept");
    assert_eq!(kv.mod_revision, r);
    store.commit(Txn::new().put("k", b"2".to_vec())).unwrap();
}

/// A CA, and a server and a client certificate it signed, as PEM files.
fn make_certs(dir: &Path) -> (ServerTls, EtcdTls) {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose, name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(sans).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    };
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
    let (cert, key) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
        "server",
    );
    let (ccert, ckey) = leaf(
        vec!["client".into()],
        ExtendedKeyUsagePurpose::ClientAuth,
        "client",
    );
    (
        ServerTls {
            cert,
            key,
            ca: ca_path.clone(),
        },
        EtcdTls {
            ca: ca_path,
            cert: Some(ccert),
            key: Some(ckey),
        },
    )
}

#[test]
fn tls_with_a_client_certificate() {
    let mut client_tls = None;
    let Some(etcd) = Etcd::start_with(|dir| {
        let (server, client) = make_certs(dir);
        client_tls = Some(client);
        Some(server)
    }) else {
        return;
    };
    let client_tls = client_tls.expect("certs made");
    let url = format!(
        "etcds://127.0.0.1:{}/tls/?ca={}&cert={}&key={}",
        etcd.client_port,
        client_tls.ca.display(),
        client_tls.cert.as_ref().unwrap().display(),
        client_tls.key.as_ref().unwrap().display()
    );
    let config = EtcdConfig::parse_url(&url).expect("parse");
    assert_eq!(config.tls.as_ref(), Some(&client_tls));
    let store = eventually("connect over TLS", || EtcdStore::connect(&config));
    let r = store.txn(Txn::new().put("k", b"1".to_vec())).unwrap();
    assert_eq!(store.get_kv("k").unwrap().unwrap().mod_revision, r);

    // Without a client certificate etcd refuses the handshake.
    let mut anonymous = config.clone();
    anonymous.tls = Some(EtcdTls {
        cert: None,
        key: None,
        ..client_tls
    });
    anonymous.timeout = Duration::from_millis(800);
    assert!(EtcdStore::connect(&anonymous).is_err());
}
