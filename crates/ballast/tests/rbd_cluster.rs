//! rbd volumes following their workload across three test hosts (network
//! namespaces, tests/common/netns.rs) with a 3-member etcd and a real Ceph
//! cluster on a host of its own: one writer enforced, a dead holder fenced
//! before the volume is mapped elsewhere, and unfenced automatically when
//! it comes back.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::ceph::{require_ceph, Ceph};
use common::etcd::{require_etcd, EtcdCluster};
use common::netns::{require_netns, Net};
use common::{eventually, require_root_loop, Daemon};

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];
const MEMBERS: [&str; 3] = ["e1", "e2", "e3"];
const NODE_TTL: &str = "2s";
const PLUGIN: &str = "ballast";

struct Cluster {
    nodes: Vec<Daemon>,
    plugins: tempfile::TempDir,
    ceph: Ceph,
    /// Kept for its lifetime: the nodes' store.
    _etcd: EtcdCluster,
    net: Net,
}

impl Cluster {
    fn start() -> Cluster {
        let mut hosts: Vec<&str> = MEMBERS.to_vec();
        hosts.extend(HOSTS);
        hosts.push("ceph");
        let net = Net::new(&hosts);
        let etcd = EtcdCluster::start(&net, &MEMBERS);
        let ceph = Ceph::start_in_netns(&net.netns_path("ceph"), net.addr("ceph"));
        ceph.create_pool("rbd");
        let plugins = tempfile::tempdir().unwrap();
        let nodes = HOSTS
            .iter()
            .map(|h| {
                let dir = plugins.path().join(h);
                std::fs::create_dir_all(&dir).unwrap();
                let listen = format!("{}:0", net.addr(h));
                Daemon::start_in_netns(
                    &net.netns_path(h),
                    &[
                        "--store",
                        &etcd.urls(),
                        "--store-prefix",
                        "/rbd/",
                        "--node-id",
                        h,
                        "--node-ttl",
                        NODE_TTL,
                        "--listen",
                        &listen,
                        "--docker-plugin-name",
                        PLUGIN,
                        "--docker-plugin-dir",
                        dir.to_str().unwrap(),
                    ],
                    &[],
                )
            })
            .collect();
        let c = Cluster {
            nodes,
            plugins,
            ceph,
            _etcd: etcd,
            net,
        };
        let conf = c.ceph.conf();
        c.node("h1").ok(&[
            "pool",
            "create",
            "ceph",
            "--driver",
            "rbd",
            "--ceph-conf",
            conf.to_str().unwrap(),
            "--ceph-pool",
            "rbd",
        ]);
        for h in HOSTS {
            eventually(
                &format!("{h} sees the pool"),
                Duration::from_secs(30),
                || {
                    let out = c.node(h).cli(&["pool", "inspect", "ceph"]);
                    out.status.success().then_some(()).ok_or(out)
                },
            );
        }
        c
    }

    fn node(&self, host: &str) -> &Daemon {
        &self.nodes[HOSTS.iter().position(|h| *h == host).unwrap()]
    }

    fn plugin_sock(&self, host: &str) -> PathBuf {
        self.plugins
            .path()
            .join(host)
            .join(format!("{PLUGIN}.sock"))
    }

    fn signal(&self, host: &str, sig: nix::sys::signal::Signal) {
        let pid = self.node(host).pid().expect("running") as i32;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
    }

    fn blocklist(&self) -> String {
        let out = self.ceph.ceph(&["osd", "blocklist", "ls"]);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }

    fn fences(&self, host: &str) -> serde_json::Value {
        self.node(host)
            .json(&["volume", "inspect", "db"])
            .get("holders")
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let tail = |text: String| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        for (h, d) in HOSTS.iter().zip(&self.nodes) {
            eprintln!("--- ballast {h} ---\n{}", tail(d.log()));
        }
        eprintln!("--- ceph ---\n{}", tail(self.ceph.log()));
    }
}

fn prerequisites(test: &str) -> bool {
    require_netns(test) && require_root_loop(test) && require_etcd(test) && require_ceph(test)
}

/// One POST to a Docker volume plugin socket, as dockerd sends it.
fn plugin_call(sock: &Path, endpoint: &str, body: serde_json::Value) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap_or_else(|e| panic!("{}: {e}", sock.display()));
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let body = body.to_string();
    let head = format!(
        "POST {endpoint} HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP reply: {:?}", String::from_utf8_lossy(&resp)));
    serde_json::from_slice(&resp[split + 4..]).unwrap_or_else(|e| {
        panic!(
            "{endpoint}: {e}: {:?}",
            String::from_utf8_lossy(&resp[split + 4..])
        )
    })
}

/// Nothing of `d`'s mapping is left on its host: no rbd-fuse, no mount or
/// loop device under its state or mounts.
fn holds_no_mapping(d: &Daemon) -> Result<(), String> {
    let state = d.state.to_str().unwrap().to_string();
    let run = d.run.to_str().unwrap().to_string();
    let mut left = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c);
            if c.starts_with("rbd-fuse") && c.contains(&state) {
                left.push(format!("process {c}"));
            }
        }
    }
    for t in common::mount_targets() {
        let t = t.display().to_string();
        if t.starts_with(&state) || t.starts_with(&run) {
            left.push(format!("mount {t}"));
        }
    }
    for (dev, f) in common::loop_devices() {
        if f.display().to_string().starts_with(&state) {
            left.push(format!("loop {dev}"));
        }
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(left.join("; "))
    }
}

/// Append fsynced records `<who> <n>` to `file`; each one acknowledged
/// (written and fsynced) bumps `acked`. Stops at the first error or when
/// told.
fn writer(
    file: PathBuf,
    who: &'static str,
    first: u64,
    acked: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Option<String>> {
    std::thread::spawn(move || {
        let mut f = match std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&file)
        {
            Ok(f) => f,
            Err(e) => return Some(e.to_string()),
        };
        let mut n = first;
        while !stop.load(Ordering::SeqCst) {
            let rec = format!("{who} {n:08}\n");
            if let Err(e) = f.write_all(rec.as_bytes()).and_then(|()| f.sync_data()) {
                return Some(e.to_string());
            }
            acked.store(n, Ordering::SeqCst);
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    })
}

#[test]
fn a_writer_fails_over_to_another_host_with_the_dead_holder_fenced_and_unfenced_automatically() {
    let test = "a_writer_fails_over_to_another_host_with_the_dead_holder_fenced_and_unfenced_automatically";
    if !prerequisites(test) {
        return;
    }
    let c = Cluster::start();
    let (a, b) = (c.node("h1"), c.node("h2"));
    // Docker 1.12's scope: a shared pool makes names cluster-wide.
    let caps = plugin_call(
        &c.plugin_sock("h2"),
        "/VolumeDriver.Capabilities",
        serde_json::json!({}),
    );
    assert_eq!(caps["Capabilities"]["Scope"], "global", "{caps}");
    a.ok(&["volume", "create", "db", "--pool", "ceph", "--size", "64M"]);

    // The workload on A, through the Docker plugin as dockerd calls it.
    let m = plugin_call(
        &c.plugin_sock("h1"),
        "/VolumeDriver.Mount",
        serde_json::json!({"Name": "db", "ID": "container-a"}),
    );
    let mp_a = PathBuf::from(m["Mountpoint"].as_str().unwrap_or_else(|| panic!("{m}")));
    let log = "records";
    let acked_a = Arc::new(AtomicU64::new(0));
    let stop_a = Arc::new(AtomicBool::new(false));
    let wa = writer(mp_a.join(log), "A", 1, acked_a.clone(), stop_a.clone());
    eventually("A acknowledges records", Duration::from_secs(30), || {
        (acked_a.load(Ordering::SeqCst) >= 50)
            .then_some(())
            .ok_or(())
    });

    // B sees A hold it, and a mount on B while A is alive is refused,
    // naming A.
    let holders = c.fences("h2");
    assert!(holders.to_string().contains("\"h1\""), "{holders}");
    let refused = plugin_call(
        &c.plugin_sock("h2"),
        "/VolumeDriver.Mount",
        serde_json::json!({"Name": "db", "ID": "container-b"}),
    );
    let err = refused["Err"].as_str().unwrap_or_default();
    assert!(err.contains("h1") && err.contains("preempt"), "{refused}");

    // Cut A off and stop its daemon (no more lease renewal).
    c.net.partition("h1");
    c.signal("h1", nix::sys::signal::Signal::SIGSTOP);
    let cut_acked = acked_a.load(Ordering::SeqCst);
    let cut = Instant::now();

    // The orchestrator retries the start on B until it works, as dockerd's
    // restart policy or a scheduler would: no operator step.
    let mp_b = eventually("the mount on B", Duration::from_secs(60), || {
        let r = plugin_call(
            &c.plugin_sock("h2"),
            "/VolumeDriver.Mount",
            serde_json::json!({"Name": "db", "ID": "container-b"}),
        );
        match r["Mountpoint"].as_str() {
            Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
            _ => Err(r),
        }
    });
    let failover = cut.elapsed();
    eprintln!("failover: {failover:?} from the cut to the mount on B");
    let mounted_b = acked_a.load(Ordering::SeqCst);
    assert!(
        c.blocklist().contains(&c.net.addr("h1").to_string()),
        "A's clients are blocklisted before B mapped: {}",
        c.blocklist()
    );

    // The writer resumes on B.
    let text = std::fs::read_to_string(mp_b.join(log)).unwrap();
    let acked_b = Arc::new(AtomicU64::new(0));
    let stop_b = Arc::new(AtomicBool::new(false));
    let wb = writer(mp_b.join(log), "B", 1, acked_b.clone(), stop_b.clone());
    eventually("B acknowledges records", Duration::from_secs(30), || {
        (acked_b.load(Ordering::SeqCst) >= 50)
            .then_some(())
            .ok_or(())
    });

    // A comes back: its stuck writes must not land, its mapping goes, and
    // the fence is lifted, all by itself.
    c.net.heal("h1");
    c.signal("h1", nix::sys::signal::Signal::SIGCONT);
    stop_a.store(true, Ordering::SeqCst);
    eventually("A holds no mapping", Duration::from_secs(60), || {
        holds_no_mapping(a)
    });
    eventually("the fence is lifted", Duration::from_secs(60), || {
        let bl = c.blocklist();
        let holders = c.fences("h2").to_string();
        (!bl.contains(&c.net.addr("h1").to_string()) && !holders.contains("fenced"))
            .then_some(())
            .ok_or((bl, holders))
    });
    stop_b.store(true, Ordering::SeqCst);
    assert_eq!(wb.join().unwrap(), None, "B's writer never failed");
    // A's writer ends with an error (fenced) or was stopped; either way
    // nothing it wrote after B's mount may be on the volume.
    let _ = wa.join();

    let after = std::fs::read_to_string(mp_b.join(log)).unwrap();
    let a_recs: Vec<u64> = after
        .lines()
        .filter_map(|l| l.strip_prefix("A ").and_then(|n| n.parse().ok()))
        .collect();
    let b_recs: Vec<u64> = after
        .lines()
        .filter_map(|l| l.strip_prefix("B ").and_then(|n| n.parse().ok()))
        .collect();
    for n in 1..=cut_acked {
        assert!(a_recs.contains(&n), "A's acknowledged record {n} is lost");
    }
    // A record in flight at the cut may have reached the storage unacked;
    // then B found it at its mount. Anything of A's beyond that landed
    // after B's mount: the fence failed.
    let a_at_mount: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("A ").and_then(|n| n.parse().ok()))
        .collect();
    assert_eq!(
        a_recs, a_at_mount,
        "records of A's landed after B's mount (A had {mounted_b} acknowledged then)"
    );
    assert!(
        a_at_mount.iter().all(|n| *n <= mounted_b + 1),
        "B's mount found A's records beyond the one in flight: {a_at_mount:?}"
    );
    assert!(
        after.starts_with(&text),
        "what B found at its mount was changed afterwards by someone else"
    );
    assert_eq!(b_recs.len() as u64, acked_b.load(Ordering::SeqCst));
    assert!(
        after
            .lines()
            .all(|l| l.starts_with("A ") || l.starts_with("B ")),
        "the record file is intact"
    );

    // A is a full member again: it can take the volume back once B lets go.
    plugin_call(
        &c.plugin_sock("h2"),
        "/VolumeDriver.Unmount",
        serde_json::json!({"Name": "db", "ID": "container-b"}),
    );
    let back = eventually("A mounts it again", Duration::from_secs(30), || {
        let r = plugin_call(
            &c.plugin_sock("h1"),
            "/VolumeDriver.Mount",
            serde_json::json!({"Name": "db", "ID": "container-a2"}),
        );
        r["Mountpoint"].as_str().map(PathBuf::from).ok_or(r)
    });
    assert_eq!(std::fs::read_to_string(back.join(log)).unwrap(), after);
    plugin_call(
        &c.plugin_sock("h1"),
        "/VolumeDriver.Unmount",
        serde_json::json!({"Name": "db", "ID": "container-a2"}),
    );
    a.ok(&["volume", "rm", "db"]);
    for h in HOSTS {
        eventually(
            &format!("{h} holds nothing"),
            Duration::from_secs(10),
            || holds_no_mapping(c.node(h)),
        );
    }
    let _ = b;
}

#[test]
fn preempt_takes_a_volume_from_a_live_holder_only_when_asked() {
    if !prerequisites("preempt_takes_a_volume_from_a_live_holder_only_when_asked") {
        return;
    }
    let c = Cluster::start();
    let (a, b) = (c.node("h1"), c.node("h2"));
    // Placement constraints do not apply to shared storage (it was
    // refused as "no node can take it").
    let placed = b.json(&[
        "volume",
        "create",
        "placed",
        "--pool",
        "ceph",
        "--size",
        "16M",
        "--selector",
        "zone=x",
    ]);
    assert!(placed.get("node").is_none(), "{placed}");
    b.ok(&["volume", "rm", "placed"]);
    a.ok(&["volume", "create", "db", "--pool", "ceph", "--size", "32M"]);
    let mp_a = PathBuf::from(a.ok(&["volume", "mount", "db"]).trim());
    // Durable on A (a preempt loses what A had not flushed, by design).
    std::fs::write(mp_a.join("from-a"), b"a").unwrap();
    std::fs::File::open(mp_a.join("from-a"))
        .unwrap()
        .sync_all()
        .unwrap();
    std::fs::File::open(&mp_a).unwrap().sync_all().unwrap();

    let err = b.fails(&["volume", "mount", "db"]);
    assert!(err.contains("h1") && err.contains("--preempt"), "{err}");
    assert!(holds_no_mapping(b).is_ok(), "a refused mount maps nothing");
    let holders = c.fences("h3");
    assert_eq!(holders.as_array().map(Vec::len), Some(1), "{holders}");
    assert_eq!(holders[0]["node"], "h1");
    assert!(holders[0].get("fenced").is_none(), "{holders}");

    let mp_b = PathBuf::from(b.ok(&["volume", "mount", "db", "--preempt"]).trim());
    assert_eq!(std::fs::read(mp_b.join("from-a")).unwrap(), b"a");
    // A, alive and in touch, tears its mapping down by itself and the
    // fence goes.
    eventually("A holds no mapping", Duration::from_secs(30), || {
        holds_no_mapping(a)
    });
    eventually("the fence is lifted", Duration::from_secs(30), || {
        let holders = c.fences("h3");
        let bl = c.blocklist();
        let only_b = holders
            .as_array()
            .is_some_and(|h| h.len() == 1 && h[0]["node"] == "h2");
        (only_b && !bl.contains(&c.net.addr("h1").to_string()))
            .then_some(())
            .ok_or((holders, bl))
    });
    let v = a.json(&["volume", "inspect", "db"]);
    assert!(
        v["mountpoint"].is_null() && v["consumers"].as_array().is_some_and(Vec::is_empty),
        "A no longer has it mounted: {v}"
    );
    b.ok(&["volume", "unmount", "db"]);
    b.ok(&["volume", "rm", "db"]);
}

/// A node whose fence cannot be carried out (its cephx user may not
/// blocklist) never maps the volume: the attach on B fails, naming the
/// fence, and A, back again, still holds the only mapping.
#[test]
fn a_fence_that_fails_fails_the_attach_and_never_makes_two_writers() {
    if !prerequisites("a_fence_that_fails_fails_the_attach_and_never_makes_two_writers") {
        return;
    }
    let c = Cluster::start();
    let (a, b) = (c.node("h1"), c.node("h2"));
    let keyring = c.plugins.path().join("weak.keyring");
    let made = c.ceph.ceph(&[
        "auth",
        "get-or-create",
        "client.weak",
        "mon",
        "allow r",
        "osd",
        "allow rwx pool=rbd",
        "-o",
        keyring.to_str().unwrap(),
    ]);
    assert!(made.status.success(), "{made:?}");
    let conf = c.ceph.conf();
    a.ok(&[
        "pool",
        "create",
        "weak",
        "--driver",
        "rbd",
        "--ceph-conf",
        conf.to_str().unwrap(),
        "--ceph-pool",
        "rbd",
        "--ceph-user",
        "weak",
        "--keyring",
        keyring.to_str().unwrap(),
    ]);
    a.ok(&["volume", "create", "w", "--pool", "weak", "--size", "32M"]);
    let mp = PathBuf::from(a.ok(&["volume", "mount", "w"]).trim());
    std::fs::write(mp.join("a"), b"a").unwrap();

    c.net.partition("h1");
    c.signal("h1", nix::sys::signal::Signal::SIGSTOP);
    // Once A's lease lapsed B tries to fence it, and must fail each time.
    let err = eventually(
        "B's attempt reaches the fence",
        Duration::from_secs(60),
        || {
            let err = b.fails(&["volume", "mount", "w"]);
            if err.contains("blocklist") {
                Ok(err)
            } else {
                Err(err)
            }
        },
    );
    assert!(err.contains("fence"), "{err}");
    for _ in 0..3 {
        let again = b.fails(&["volume", "mount", "w"]);
        assert!(again.contains("blocklist"), "{again}");
    }
    assert!(holds_no_mapping(b).is_ok(), "{:?}", holds_no_mapping(b));
    assert!(
        !c.blocklist().contains(&c.net.addr("h1").to_string()),
        "nothing was blocklisted: {}",
        c.blocklist()
    );
    c.net.heal("h1");
    c.signal("h1", nix::sys::signal::Signal::SIGCONT);
    eventually("A is ready again", Duration::from_secs(30), || {
        let v = a.json(&["volume", "inspect", "w"]);
        (v["mountpoint"].as_str().map(PathBuf::from) == Some(mp.clone()))
            .then_some(())
            .ok_or(v)
    });
    std::fs::write(mp.join("b"), b"still A's").unwrap();
    a.ok(&["volume", "unmount", "w"]);
    a.ok(&["volume", "rm", "w"]);
    holds_no_mapping(a).unwrap();
}

/// CSI MULTI_NODE_READER_ONLY on an rbd volume: readers stage it on two
/// nodes at once, read-only (a write is refused), while a writer on a
/// third node is refused, naming a reader; a node-local pool still
/// refuses the mode.
#[test]
fn readers_on_several_nodes_share_an_rbd_volume_and_keep_writers_out() {
    use ballast_csi_proto::v1 as csi;
    use csi::node_client::NodeClient;
    use csi::volume_capability::access_mode::Mode;
    use csi::volume_capability::{AccessMode, AccessType, MountVolume};
    if !prerequisites("readers_on_several_nodes_share_an_rbd_volume_and_keep_writers_out") {
        return;
    }
    let c = Cluster::start();
    let a = c.node("h1");
    let v = a.json(&[
        "volume", "create", "shared", "--pool", "ceph", "--size", "32M",
    ]);
    let id = v["id"].as_str().unwrap().to_string();
    let mp = PathBuf::from(a.ok(&["volume", "mount", "shared"]).trim());
    std::fs::write(mp.join("readme"), b"for everyone").unwrap();
    a.ok(&["volume", "unmount", "shared"]);

    let cap = csi::VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeReaderOnly as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let staging = |h: &str| c.node(h).dir.path().join("rox-staging");
    rt.block_on(async {
        for h in ["h1", "h2"] {
            let mut node =
                NodeClient::new(common::csi_channel(&c.node(h).run.join("csi.sock")).await);
            std::fs::create_dir_all(staging(h)).unwrap();
            node.node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging(h).display().to_string(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("stage on {h}: {e}"));
            assert_eq!(
                std::fs::read(staging(h).join("readme")).unwrap(),
                b"for everyone",
                "{h} reads the data"
            );
            let w = std::fs::write(staging(h).join("nope"), b"x").unwrap_err();
            assert_eq!(w.raw_os_error(), Some(libc::EROFS), "{h}: {w}");
        }
        // Nobody fences a reader to write: a writer on h3 is refused.
        let err = c.node("h3").fails(&["volume", "mount", "shared"]);
        assert!(
            err.contains("read-only") && (err.contains("h1") || err.contains("h2")),
            "{err}"
        );
        assert!(holds_no_mapping(c.node("h3")).is_ok());
        for h in ["h1", "h2"] {
            let mut node =
                NodeClient::new(common::csi_channel(&c.node(h).run.join("csi.sock")).await);
            node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
                volume_id: id.clone(),
                staging_target_path: staging(h).display().to_string(),
            })
            .await
            .unwrap();
        }
        // A node-local volume still refuses the mode.
        let pools = a.json(&["pool", "ls"]);
        let local = pools
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["driver"] == "loop" && p["node"] == "h1")
            .map(|p| p["name"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("h1 has a loop pool: {pools}"));
        let lv = a.json(&[
            "volume", "create", "local", "--pool", &local, "--size", "16M",
        ]);
        let mut node = NodeClient::new(common::csi_channel(&a.run.join("csi.sock")).await);
        let err = node
            .node_stage_volume(csi::NodeStageVolumeRequest {
                volume_id: lv["id"].as_str().unwrap().to_string(),
                staging_target_path: staging("h1").display().to_string(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err}");
    });
    a.ok(&["volume", "rm", "local"]);
    a.ok(&["volume", "rm", "shared"]);
    for h in HOSTS {
        holds_no_mapping(c.node(h)).unwrap();
    }
}

/// The CSI path of a failover: ControllerPublish to B is refused while A
/// holds the volume and lives, and once A's lease lapsed it fences A, so
/// B's NodeStage of the image A still watches succeeds at the first try.
#[test]
fn csi_controller_publish_fences_a_dead_holder_and_the_stage_then_succeeds() {
    use ballast_csi_proto::v1 as csi;
    use csi::controller_client::ControllerClient;
    use csi::controller_service_capability::{rpc::Type, Type as Cap};
    use csi::node_client::NodeClient;
    use csi::volume_capability::access_mode::Mode;
    use csi::volume_capability::{AccessMode, AccessType, MountVolume};
    if !prerequisites("csi_controller_publish_fences_a_dead_holder_and_the_stage_then_succeeds") {
        return;
    }
    let c = Cluster::start();
    let a = c.node("h1");
    let v = a.json(&["volume", "create", "pv", "--pool", "ceph", "--size", "32M"]);
    let id = v["id"].as_str().unwrap().to_string();
    let cap = csi::VolumeCapability {
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(AccessType::Mount(MountVolume::default())),
    };
    let staging = |h: &str| c.node(h).dir.path().join("pv-staging");
    let stage = |h: &str| csi::NodeStageVolumeRequest {
        volume_id: id.clone(),
        staging_target_path: staging(h).display().to_string(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    let publish = |node: &str| csi::ControllerPublishVolumeRequest {
        volume_id: id.clone(),
        node_id: node.into(),
        volume_capability: Some(cap.clone()),
        ..Default::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut ctl =
            ControllerClient::new(common::csi_channel(&c.node("h3").run.join("csi.sock")).await);
        let caps = ctl
            .controller_get_capabilities(csi::ControllerGetCapabilitiesRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(
            caps.capabilities.iter().any(|c| matches!(
                &c.r#type,
                Some(Cap::Rpc(r)) if r.r#type == Type::PublishUnpublishVolume as i32
            )),
            "with a shared pool the controller publishes: {caps:?}"
        );
        ctl.controller_publish_volume(publish("h1")).await.unwrap();
        let mut na = NodeClient::new(common::csi_channel(&a.run.join("csi.sock")).await);
        std::fs::create_dir_all(staging("h1")).unwrap();
        na.node_stage_volume(stage("h1")).await.unwrap();
        std::fs::write(staging("h1").join("a"), b"from a").unwrap();
        std::fs::File::open(staging("h1").join("a"))
            .unwrap()
            .sync_all()
            .unwrap();
        std::fs::File::open(staging("h1"))
            .unwrap()
            .sync_all()
            .unwrap();

        let refused = ctl
            .controller_publish_volume(publish("h2"))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused}");
        assert!(refused.message().contains("h1"), "{refused}");

        c.net.partition("h1");
        c.signal("h1", nix::sys::signal::Signal::SIGSTOP);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match ctl.controller_publish_volume(publish("h2")).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("ControllerPublish to h2 never succeeded: {e}"),
            }
        }
        let mut nb = NodeClient::new(common::csi_channel(&c.node("h2").run.join("csi.sock")).await);
        std::fs::create_dir_all(staging("h2")).unwrap();
        nb.node_stage_volume(stage("h2"))
            .await
            .expect("the first NodeStage after the publish works");
        assert_eq!(std::fs::read(staging("h2").join("a")).unwrap(), b"from a");

        c.net.heal("h1");
        c.signal("h1", nix::sys::signal::Signal::SIGCONT);
        eventually("A holds no mapping", Duration::from_secs(60), || {
            holds_no_mapping(a)
        });
        nb.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging("h2").display().to_string(),
        })
        .await
        .unwrap();
        ctl.controller_unpublish_volume(csi::ControllerUnpublishVolumeRequest {
            volume_id: id.clone(),
            node_id: "h2".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    });
    eventually("the fence is lifted", Duration::from_secs(60), || {
        let bl = c.blocklist();
        (!bl.contains(&c.net.addr("h1").to_string()))
            .then_some(())
            .ok_or(bl)
    });
    a.ok(&["volume", "rm", "pv"]);
}

/// kill -9 of the fencing node before and after its blocklist call: the
/// fence was recorded first, so after the restart the attach goes through,
/// the fenced node still cleans up when back, and the fence is lifted.
#[test]
fn kill_9_of_the_fencing_node_mid_fence_still_ends_unfenced() {
    if !prerequisites("kill_9_of_the_fencing_node_mid_fence_still_ends_unfenced") {
        return;
    }
    let mut c = Cluster::start();
    c.node("h1")
        .ok(&["volume", "create", "db", "--pool", "ceph", "--size", "32M"]);
    for fp in ["fence.before_blocklist", "fence.after_blocklist"] {
        let mp = PathBuf::from(c.node("h1").ok(&["volume", "mount", "db"]).trim());
        std::fs::write(mp.join(fp), b"a").unwrap();
        std::fs::File::open(mp.join(fp))
            .unwrap()
            .sync_all()
            .unwrap();
        std::fs::File::open(&mp).unwrap().sync_all().unwrap();
        c.net.partition("h1");
        c.signal("h1", nix::sys::signal::Signal::SIGSTOP);
        eventually("h2 sees h1's lease lapse", Duration::from_secs(30), || {
            let nodes = c.node("h2").json(&["node", "ls"]);
            let h1 = nodes
                .as_array()
                .unwrap()
                .iter()
                .find(|n| n["id"] == "h1")
                .cloned();
            h1.filter(|n| n["state"] == "unreachable")
                .map(drop)
                .ok_or(nodes)
        });
        let b = &mut c.nodes[1];
        b.crash_at(fp, &["volume", "mount", "db"]);
        let mp_b = eventually(
            "the mount on B after its restart",
            Duration::from_secs(60),
            || {
                let out = c.node("h2").cli(&["volume", "mount", "db"]);
                out.status
                    .success()
                    .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
                    .ok_or(out)
            },
        );
        assert_eq!(std::fs::read(mp_b.join(fp)).unwrap(), b"a", "{fp}");
        c.net.heal("h1");
        c.signal("h1", nix::sys::signal::Signal::SIGCONT);
        eventually("A holds no mapping", Duration::from_secs(60), || {
            holds_no_mapping(c.node("h1"))
        });
        eventually("the fence is lifted", Duration::from_secs(60), || {
            let bl = c.blocklist();
            (!bl.contains(&c.net.addr("h1").to_string()))
                .then_some(())
                .ok_or(bl)
        });
        c.node("h2").ok(&["volume", "unmount", "db"]);
        eventually("h1 is ready again", Duration::from_secs(30), || {
            let out = c.node("h1").cli(&["node", "inspect", "h1"]);
            String::from_utf8_lossy(&out.stdout)
                .contains("ready")
                .then_some(())
                .ok_or(out)
        });
    }
    c.node("h1").ok(&["volume", "rm", "db"]);
}
