//! The store on etcd against the embedded one (issue 11's targets):
//! - lifecycle through REST on a daemon with `--store etcd://` against the
//!   same on the default redb store (target: at most 1.3x);
//! - `volume ls` at N volumes in etcd, served from the watch-fed cache
//!   (target: at most 50 ms), and the daemon's start (load + watch) at N
//!   volumes (target: at most 2 s);
//! - CAS contention: 32 clients updating one record by compare-and-swap on
//!   its revision, as the service updates a volume's record; no update may
//!   be lost; conflicts per second are reported.
//!
//! A single local etcd member (Debian's etcd-server 3.4) is started on
//! loopback ports picked for it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ballast_core::store::{Store, StoreError, Txn};

use crate::{ms, rest_round, stats, Daemon};

pub(crate) struct Etcd {
    child: Child,
    port: u16,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Etcd {
    pub(crate) fn start(dir: &Path) -> Result<Etcd> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let (port, peer) = (free_port()?, free_port()?);
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer}");
        let child = Command::new("/usr/bin/etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(dir.join("data"))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("bench={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("etcd.log"))?)
            .spawn()
            .context("starting /usr/bin/etcd (Debian etcd-server)")?;
        let e = Etcd { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("etcd did not start; see {}", dir.join("etcd.log").display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(e)
    }

    pub(crate) fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.port)
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn cluster_bench(dir: &Path, n: usize, volumes: usize, clients: usize) -> Result<()> {
    let etcd = Etcd::start(&dir.join("etcd"))?;
    let url = etcd.url();

    println!("== store: lifecycle through REST, redb vs etcd (n={n})");
    let redb = Daemon::start(&dir.join("redb"), &[])?;
    let on_etcd = Daemon::start(
        &dir.join("etcd-node"),
        &["--store", &url, "--store-prefix", "/bench-lifecycle/"],
    )?;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    // Interleaved, so drift in the machine hits both alike.
    for i in 0..n {
        a.push(rest_round(&redb, &format!("r{i}"))?);
        b.push(rest_round(&on_etcd, &format!("e{i}"))?);
    }
    drop((redb, on_etcd));
    let (a, b) = (stats(a), stats(b));
    println!("{:<6} {:>10} {:>10}", "store", "p50 ms", "p99 ms");
    println!("{:<6} {:>10.1} {:>10.1}", "redb", ms(a.p50), ms(a.p99));
    println!("{:<6} {:>10.1} {:>10.1}", "etcd", ms(b.p50), ms(b.p99));
    println!(
        "etcd / redb at p50: {:.2}x (target <= 1.3x)",
        ms(b.p50) / ms(a.p50)
    );

    println!("== store: {volumes} volumes in etcd");
    let node_dir = dir.join("etcd-scale");
    let args = [
        "--store",
        url.as_str(),
        "--store-prefix",
        "/bench-scale/",
        "--overcommit-ratio",
        "100",
    ];
    let d = Daemon::start(&node_dir, &args)?;
    let t = Instant::now();
    for i in 0..volumes {
        d.rest(
            "POST",
            "/v1/volumes",
            &format!(r#"{{"name":"s{i:05}","size":"64M"}}"#),
        )?;
        if (i + 1) % 1000 == 0 {
            eprintln!("  created {}/{volumes}", i + 1);
        }
    }
    let create_s = t.elapsed().as_secs_f64();
    let mut ls = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        let body = d.rest("GET", "/v1/volumes", "")?;
        ls.push(t.elapsed());
        let count = serde_json::from_str::<serde_json::Value>(&body)?
            .as_array()
            .map_or(0, Vec::len);
        if count != volumes {
            bail!("listed {count} volumes, expected {volumes}");
        }
    }
    let ls = stats(ls);
    println!(
        "create: {volumes} in {create_s:.1} s ({:.2} ms each)",
        create_s * 1000.0 / volumes as f64
    );
    println!(
        "volume ls (REST, from the cache): p50 {:.1} ms, p99 {:.1} ms (target <= 50 ms)",
        ms(ls.p50),
        ms(ls.p99)
    );
    drop(d);
    // A start on the same state: load every record, reconcile, watch.
    let mut starts = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let d = Daemon::restart(&node_dir, &args)?;
        starts.push(t.elapsed());
        drop(d);
    }
    let starts = stats(starts);
    println!(
        "daemon start at {volumes} volumes (to the API answering): p50 {:.0} ms (target <= 2000 ms)",
        ms(starts.p50)
    );

    println!("== store: CAS contention, {clients} clients on one record");
    let store = ballast_etcd::EtcdStore::connect(&ballast_etcd::EtcdConfig {
        prefix: "/bench-cas/".into(),
        ..ballast_etcd::EtcdConfig::parse_url(&url)?
    })?;
    let store: Arc<dyn Store> = Arc::new(store);
    store.commit(Txn::new().put("vol/hot", b"0".to_vec()))?;
    let per_client = 50u64;
    let conflicts = Arc::new(AtomicU64::new(0));
    let t = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (store, conflicts) = (store.clone(), conflicts.clone());
            std::thread::spawn(move || -> Result<()> {
                let mut done = 0;
                while done < per_client {
                    let kv = store.get_kv("vol/hot")?.context("the record")?;
                    let n: u64 = String::from_utf8_lossy(&kv.value).parse()?;
                    let next = (n + 1).to_string().into_bytes();
                    match store.txn(
                        Txn::new()
                            .require_revision("vol/hot", kv.mod_revision)
                            .put("vol/hot", next),
                    ) {
                        Ok(_) => done += 1,
                        Err(StoreError::Conflict { .. }) => {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join()
            .map_err(|_| anyhow::anyhow!("a client panicked"))??;
    }
    let secs = t.elapsed().as_secs_f64();
    let value: u64 =
        String::from_utf8_lossy(&store.get("vol/hot")?.context("the record")?).parse()?;
    let want = per_client * clients as u64;
    let c = conflicts.load(Ordering::Relaxed);
    println!(
        "{want} updates in {secs:.2} s ({:.0}/s), {c} conflicts ({:.0}/s), final value {value} ({})",
        want as f64 / secs,
        c as f64 / secs,
        if value == want { "no update lost" } else { "UPDATES LOST" }
    );
    if value != want {
        bail!("lost updates: {value} != {want}");
    }
    Ok(())
}

/// The controller named by `d`, if any.
fn controller_of(d: &Daemon) -> Result<Option<String>> {
    let v: serde_json::Value = serde_json::from_str(&d.rest("GET", "/v1/cluster", "")?)?;
    Ok(v["controller"]["node"].as_str().map(String::from))
}

/// Controller failover (issue 12's target: p50 <= 2 s over 10 kills): two
/// daemons on one etcd with `--node-ttl TTL`; kill -9 the controller's, time
/// until the survivor names itself, restart the dead one, again.
pub fn failover_bench(dir: &Path, kills: usize, ttl: &str) -> Result<()> {
    println!("== controller failover: {kills} kills, --node-ttl {ttl}");
    let etcd = Etcd::start(&dir.join("etcd"))?;
    let url = etcd.url();
    let args = |id: &str| -> Vec<String> {
        [
            "--store",
            url.as_str(),
            "--store-prefix",
            "/bench-failover/",
            "--node-id",
            id,
            "--node-ttl",
            ttl,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let ids = ["node-a", "node-b"];
    let dirs: Vec<PathBuf> = ids.iter().map(|id| dir.join(id)).collect();
    let start = |i: usize, fresh: bool| -> Result<Daemon> {
        let a = args(ids[i]);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        if fresh {
            Daemon::start(&dirs[i], &a)
        } else {
            Daemon::restart(&dirs[i], &a)
        }
    };
    let mut nodes = [Some(start(0, true)?), Some(start(1, true)?)];
    let mut times = Vec::new();
    for _ in 0..kills {
        let deadline = Instant::now() + Duration::from_secs(60);
        let holder = loop {
            if let Some(h) = controller_of(nodes[0].as_ref().context("node-a")?)? {
                break h;
            }
            if Instant::now() > deadline {
                bail!("no controller elected");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let dead = ids.iter().position(|id| *id == holder).context("holder")?;
        let alive = 1 - dead;
        let t = Instant::now();
        if let Some(mut d) = nodes[dead].take() {
            let _ = d.child.kill();
            let _ = d.child.wait();
            // Dead already: its Drop would only signal a reaped pid.
            std::mem::forget(d);
        }
        loop {
            let survivor = nodes[alive].as_ref().context("survivor")?;
            if controller_of(survivor)?.as_deref() == Some(ids[alive]) {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("no failover within 60 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        times.push(t.elapsed());
        nodes[dead] = Some(start(dead, false)?);
    }
    let s = stats(times);
    println!(
        "failover (kill -9 to the survivor naming itself): p50 {:.0} ms, p99 {:.0} ms (target p50 <= 2000 ms)",
        ms(s.p50),
        ms(s.p99)
    );
    Ok(())
}
