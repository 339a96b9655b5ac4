//! `ballast-bench rbd-failover`: how long an rbd volume takes to follow its
//! workload to another node when the node holding it hangs.
//!
//! One etcd and two daemons on this host (`node-a`, `node-b`, each with its
//! own state directory and socket, `--node-ttl TTL`), one rbd pool on an
//! existing Ceph cluster, one 64 MiB volume `fo`. Each round the holder has
//! `fo` mounted and a record written + fsynced on it; then its daemon is
//! stopped with SIGSTOP (lease renewal stops, its rbd-fuse helper goes on:
//! the hung node that must be fenced). From the SIGSTOP the other node
//! retries `volume mount fo` every 100 ms (refused, naming the holder,
//! while its lease is alive; then it fences the holder and maps) and
//! writes and fsyncs a record on its mountpoint: that is the failover time.
//! The records acknowledged before must all be there.
//!
//! Then the old holder gets SIGCONT; the unfence time runs until its
//! mapping is gone (no rbd-fuse with its state directory on the command
//! line) and the blocklist entries of the fence are lifted. Roles swap,
//! `kills` rounds.
//!
//! At the end the volume and the pool are removed, the daemons and etcd
//! stopped, and the host checked for rbd-fuse helpers, mounts and loop
//! devices left under the scratch directory. The image's id is kept in the
//! scratch directory while it exists, so a run that was interrupted is
//! cleaned up by the next.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::Etcd;
use crate::rbd::{Ceph, Leftovers};
use crate::{ms, stats, Daemon};

/// The daemons' name for the bench's pool.
const POOL: &str = "ceph";
const VOLUME: &str = "fo";
const IDS: [&str; 2] = ["node-a", "node-b"];
/// How often the other node asks to mount.
const RETRY: Duration = Duration::from_millis(100);
/// Give up on a failover or an unfence after this long.
const PATIENCE: Duration = Duration::from_secs(120);
/// The target, as the issue words it.
const TARGET: Duration = Duration::from_secs(10);
const RECORDS: &str = "records";

pub struct Opts<'a> {
    pub ceph_conf: &'a Path,
    pub ceph_pool: &'a str,
    pub kills: usize,
    pub ttl: &'a str,
}

/// A daemon of the bench, continued (if it was stopped) before its Drop
/// terminates it.
struct Node {
    id: &'static str,
    dir: PathBuf,
    d: Daemon,
    /// Its mountpoint of `fo`, while it holds it.
    mp: Option<PathBuf>,
}

impl Node {
    fn pid(&self) -> libc::pid_t {
        libc::pid_t::try_from(self.d.child.id()).unwrap_or(0)
    }

    fn signal(&self, sig: libc::c_int) -> Result<()> {
        // SAFETY: kill(2) on the pid of a child of ours, not yet reaped.
        if unsafe { libc::kill(self.pid(), sig) } != 0 {
            bail!(
                "kill -{sig} {}: {}",
                self.pid(),
                std::io::Error::last_os_error()
            );
        }
        Ok(())
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.signal(libc::SIGCONT);
    }
}

/// One round's figures.
struct Round {
    failover: Duration,
    unfence: Duration,
}

pub fn rbd_failover_bench(dir: &Path, o: &Opts) -> Result<()> {
    if o.kills == 0 {
        bail!("--kills must be at least 1");
    }
    let conf = std::fs::canonicalize(o.ceph_conf)
        .with_context(|| format!("--ceph-conf {}", o.ceph_conf.display()))?;
    let conf = conf.to_str().context("utf-8 path")?.to_string();
    let ceph = Ceph {
        conf: &conf,
        pool: o.ceph_pool,
    };
    println!(
        "== rbd failover: {} rounds, two nodes on one etcd, --node-ttl {}, volume {VOLUME} 64M in ceph pool {} ({conf})",
        o.kills, o.ttl, o.ceph_pool
    );
    let dir = dir.join("rbd-failover");
    let images_file = dir.join("images");
    clean_earlier_run(&dir, &ceph, &images_file);
    std::fs::create_dir_all(&dir)?;
    let blocklist_before = blocklist(&conf)?;

    let etcd = Etcd::start(&dir.join("etcd"))?;
    let url = etcd.url();
    let mut nodes = Vec::new();
    for id in IDS {
        let node_dir = dir.join(id);
        let d = Daemon::start(
            &node_dir,
            &[
                "--store",
                &url,
                "--store-prefix",
                "/bench-rbd-failover/",
                "--node-id",
                id,
                "--node-ttl",
                o.ttl,
            ],
        )?;
        nodes.push(Node {
            id,
            dir: node_dir,
            d,
            mp: None,
        });
    }
    let result = setup_and_run(&mut nodes, &ceph, o, &images_file);

    // Clean up whatever happened.
    for n in &nodes {
        let _ = n.signal(libc::SIGCONT);
    }
    remove_all(&nodes, &ceph, &images_file);
    drop(nodes);
    drop(etcd);
    let left = Leftovers::find(&dir);
    if left.is_empty() {
        println!("left behind on the host: nothing (no rbd-fuse, mount or loop device)");
    } else {
        println!("WARNING: left behind on the host: {left}; removing");
        left.sweep();
        let still = Leftovers::find(&dir);
        if !still.is_empty() {
            println!("WARNING: could not remove: {still}");
        }
    }
    match blocklist(&conf) {
        Ok(now) => {
            let ours: Vec<&String> = now.difference(&blocklist_before).collect();
            if !ours.is_empty() {
                println!("WARNING: blocklist entries added during the run still there: {ours:?}");
            }
        }
        Err(e) => println!("WARNING: could not list the blocklist: {e:#}"),
    }
    result
}

fn setup_and_run(nodes: &mut [Node], ceph: &Ceph, o: &Opts, images_file: &Path) -> Result<()> {
    let t = Instant::now();
    nodes[0].d.cli(&[
        "pool",
        "create",
        POOL,
        "--driver",
        "rbd",
        "--ceph-conf",
        ceph.conf,
        "--ceph-pool",
        ceph.pool,
    ])?;
    println!("pool create on node-a: {:.0} ms", ms(t.elapsed()));
    let reply = nodes[0].d.rest(
        "POST",
        "/v1/volumes",
        &format!(r#"{{"name":"{VOLUME}","size":"64M","pool":"{POOL}"}}"#),
    )?;
    let v: serde_json::Value = serde_json::from_str(&reply)?;
    let id = v["id"].as_str().context("the reply has no id")?;
    std::fs::write(images_file, format!("{id}\n"))?;
    // node-b learns of the pool and the volume through its watch.
    let deadline = Instant::now() + Duration::from_secs(30);
    while nodes[1]
        .d
        .rest("GET", &format!("/v1/volumes/{VOLUME}"), "")
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("node-b does not see volume {VOLUME}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let t = Instant::now();
    let mp = mount(&nodes[0])?;
    println!(
        "first mount of {VOLUME} on node-a (rbd-fuse, loop, mkfs): {:.0} ms",
        ms(t.elapsed())
    );
    nodes[0].mp = Some(mp);

    let mut acked: Vec<String> = Vec::new();
    let mut rounds = Vec::new();
    let mut holder = 0;
    for r in 1..=o.kills {
        rounds.push(round(nodes, ceph, r, holder, &mut acked)?);
        holder = 1 - holder;
    }

    let failover: Vec<Duration> = rounds.iter().map(|r| r.failover).collect();
    let max = failover.iter().max().copied().unwrap_or_default();
    let f = stats(failover);
    let u = stats(rounds.iter().map(|r| r.unfence).collect());
    println!(
        "== rbd failover summary ({} rounds, --node-ttl {}, retry every {} ms)",
        o.kills,
        o.ttl,
        RETRY.as_millis()
    );
    println!(
        "failover (SIGSTOP of the holder -> mounted on the other + record written and fsynced): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        ms(f.p50),
        ms(f.p99),
        ms(max)
    );
    println!(
        "unfence (SIGCONT of the old holder -> its mapping gone and the blocklist lifted): p50 {:.0} ms",
        ms(u.p50)
    );
    println!(
        "target: failover p50 <= 10 s (lease TTL included; a DRBD quorum HA controller takes ~10 s; Kubernetes defaults take 6-15 minutes): {} ({:.1} s)",
        if f.p50 <= TARGET { "met" } else { "MISSED" },
        f.p50.as_secs_f64()
    );
    println!(
        "records: {} written + fsynced across the rounds, none lost",
        acked.len()
    );
    Ok(())
}

/// One round: `holder` has the volume mounted; stop it, fail over to the
/// other, continue the old holder and wait for it to be unfenced.
fn round(
    nodes: &mut [Node],
    ceph: &Ceph,
    r: usize,
    holder: usize,
    acked: &mut Vec<String>,
) -> Result<Round> {
    let other = 1 - holder;
    let (h, o) = (&nodes[holder], &nodes[other]);
    let mp_h = h.mp.clone().context("the holder's mountpoint")?;
    append_record(&mp_h, &format!("round {r} {} before the stop", h.id), acked)?;
    let before = blocklist(ceph.conf)?;

    h.signal(libc::SIGSTOP)?;
    let t0 = Instant::now();
    let mut refused = 0usize;
    let mut other_errors = 0usize;
    let mut first_refusal: Option<(Duration, String)> = None;
    let mut first_other: Option<String> = None;
    let (mp_o, call) = loop {
        let at = t0.elapsed();
        match mount(o) {
            Ok(mp) => break (mp, t0.elapsed() - at),
            Err(e) => {
                let e = format!("{e:#}");
                if e.contains(h.id) && e.contains("preempt") {
                    refused += 1;
                    first_refusal.get_or_insert((at, e));
                } else {
                    other_errors += 1;
                    first_other.get_or_insert(e);
                }
            }
        }
        if t0.elapsed() > PATIENCE {
            bail!(
                "round {r}: {} did not get {VOLUME} within {} s of {}'s SIGSTOP; first refusal {first_refusal:?}, first other error {first_other:?}",
                o.id,
                PATIENCE.as_secs(),
                h.id
            );
        }
        std::thread::sleep(RETRY);
    };
    let mounted = t0.elapsed();
    let found = std::fs::read_to_string(mp_o.join(RECORDS)).unwrap_or_default();
    let t_w = Instant::now();
    append_record(
        &mp_o,
        &format!("round {r} {} after the failover", o.id),
        acked,
    )?;
    let write = t_w.elapsed();
    let failover = t0.elapsed();
    // Checked after the clock: every record acknowledged before the stop
    // is on the volume, and nothing else.
    let want: String = acked[..acked.len() - 1].concat();
    if found != want {
        bail!(
            "round {r}: {} found on {VOLUME}:\n{found}\nbut the records acknowledged were:\n{want}",
            o.id
        );
    }
    let fenced: BTreeSet<String> = blocklist(ceph.conf)?.difference(&before).cloned().collect();
    if r == 1 {
        if let Some((_, e)) = &first_refusal {
            println!("  the refusal while {} was alive: {e}", h.id);
        }
        let v: serde_json::Value =
            serde_json::from_str(&o.d.cli(&["-o", "json", "volume", "inspect", VOLUME])?)?;
        println!("  holders after the failover: {}", v["holders"]);
    }
    if let Some(e) = &first_other {
        println!("  {other_errors} attempts failed otherwise; the first: {e}");
    }

    h.signal(libc::SIGCONT)?;
    let t1 = Instant::now();
    let state = h.state();
    let unfence = loop {
        let helpers = Leftovers::find(&state).helpers;
        if helpers.is_empty() {
            let bl = blocklist(ceph.conf)?;
            if fenced.is_disjoint(&bl) && bl.is_subset(&before) {
                break t1.elapsed();
            }
        }
        if t1.elapsed() > PATIENCE {
            bail!(
                "round {r}: {} not unfenced within {} s of its SIGCONT (rbd-fuse pids {helpers:?}, blocklist {:?})",
                h.id,
                PATIENCE.as_secs(),
                blocklist(ceph.conf)?
            );
        }
        std::thread::sleep(RETRY);
    };
    // Before the next round: the old holder's mounts and loop devices gone
    // too, and no fence left in the store.
    let settled = loop {
        let left = Leftovers::find(&h.dir);
        let v: serde_json::Value =
            serde_json::from_str(&o.d.cli(&["-o", "json", "volume", "inspect", VOLUME])?)?;
        let fence_left = v["holders"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| !x["fenced"].is_null());
        if left.is_empty() && !fence_left {
            break t1.elapsed();
        }
        if t1.elapsed() > PATIENCE {
            bail!(
                "round {r}: {} not settled within {} s of its SIGCONT: {left}; holders {}",
                h.id,
                PATIENCE.as_secs(),
                v["holders"]
            );
        }
        std::thread::sleep(RETRY);
    };

    let refusals = match &first_refusal {
        Some((at, _)) => format!(
            "{refused} refused, the first at +{:.0} ms, success {:.0} ms after it",
            ms(*at),
            ms(mounted - *at)
        ),
        None => "none refused".to_string(),
    };
    println!(
        "round {r}: {} -> {}: failover {:.0} ms (mount call {:.0} ms, write+fsync {:.1} ms); {refusals}; fenced {} client(s); unfence {:.0} ms (settled {:.0} ms)",
        h.id,
        o.id,
        ms(failover),
        ms(call),
        ms(write),
        fenced.len(),
        ms(unfence),
        ms(settled)
    );
    if fenced.is_empty() {
        println!("  WARNING: no blocklist entry was added for {}", h.id);
    }
    nodes[holder].mp = None;
    nodes[other].mp = Some(mp_o);
    Ok(Round { failover, unfence })
}

fn mount(n: &Node) -> Result<PathBuf> {
    let out = n.d.cli(&["volume", "mount", VOLUME])?;
    let mp = PathBuf::from(out.trim());
    if !mp.is_dir() {
        bail!("{} printed no mountpoint: {out:?}", n.id);
    }
    Ok(mp)
}

/// Append one line to the records file and fsync it; acknowledged then.
fn append_record(mp: &Path, what: &str, acked: &mut Vec<String>) -> Result<()> {
    let line = format!("{what}\n");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(mp.join(RECORDS))
        .with_context(|| format!("open {}", mp.join(RECORDS).display()))?;
    f.write_all(line.as_bytes())?;
    f.sync_all()?;
    acked.push(line);
    Ok(())
}

/// The addresses on the cluster's blocklist (`ceph osd blocklist ls`: one
/// entry a line on stdout, "listed N entries" on stderr).
fn blocklist(conf: &str) -> Result<BTreeSet<String>> {
    let out = Command::new("ceph")
        .args(["-c", conf, "osd", "blocklist", "ls"])
        .output()
        .context("running ceph (Debian ceph-common)")?;
    if !out.status.success() {
        bail!(
            "ceph osd blocklist ls: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// Unmount `fo` wherever it is mounted, remove it and the pool; the image
/// gone, forget its id.
fn remove_all(nodes: &[Node], ceph: &Ceph, images_file: &Path) {
    for n in nodes {
        if n.mp.is_some() {
            if let Err(e) = n.d.cli(&["volume", "unmount", VOLUME]) {
                eprintln!("WARNING: unmount of {VOLUME} on {}: {e:#}", n.id);
            }
        }
    }
    let d = &nodes[0].d;
    if d.rest("GET", &format!("/v1/volumes/{VOLUME}"), "").is_ok() {
        // A fenced node that was just continued may still hold it for a
        // moment.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match d.cli(&["volume", "rm", "--force", VOLUME]) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("WARNING: volume {VOLUME} not removed: {e:#}");
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }
    if d.rest("GET", &format!("/v1/pools/{POOL}"), "").is_ok() {
        if let Err(e) = d.cli(&["pool", "rm", POOL]) {
            eprintln!("WARNING: pool {POOL} not removed: {e:#}");
        }
    }
    let ids = std::fs::read_to_string(images_file).unwrap_or_default();
    match ceph.images() {
        Ok(images) => {
            let left: Vec<&str> = ids
                .lines()
                .filter(|i| images.iter().any(|x| x == i))
                .collect();
            if left.is_empty() {
                let _ = std::fs::remove_file(images_file);
            } else {
                println!(
                    "WARNING: image left in ceph pool {}: {left:?} (the next run removes it)",
                    ceph.pool
                );
            }
        }
        Err(e) => println!("WARNING: could not list ceph pool {}: {e:#}", ceph.pool),
    }
}

/// What an interrupted run left: its daemons and etcd (still running, maybe
/// stopped), their mappings, and the image.
fn clean_earlier_run(dir: &Path, ceph: &Ceph, images_file: &Path) {
    let stale = processes_under(dir);
    for pid in &stale {
        let _ = Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status();
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    if !stale.is_empty() {
        eprintln!("  killed processes of an earlier run: {stale:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Before the scratch directory is removed: through a live rbd-fuse
    // mount that would delete the image.
    let swept = Leftovers::find(dir).sweep();
    if !swept.is_empty() {
        eprintln!("  removed leftovers of an earlier run: {swept}");
    }
    let ids = std::fs::read_to_string(images_file).unwrap_or_default();
    for id in ids.lines().filter(|l| !l.is_empty()) {
        // The watch of a helper killed lingers a while in the cluster.
        let deadline = Instant::now() + Duration::from_secs(60);
        let image = format!("{}/{id}", ceph.pool);
        loop {
            match ceph.rbd(&["rm", "--no-progress", &image]) {
                Ok(_) => {
                    eprintln!("  removed image {image} of an earlier run");
                    break;
                }
                Err(e) if e.to_string().contains("No such file") => break,
                Err(e) if Instant::now() > deadline => {
                    eprintln!("WARNING: image {image} of an earlier run not removed: {e:#}");
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_secs(1)),
            }
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Processes (other than rbd-fuse helpers, which the sweep handles) with
/// a path under `dir` on their command line: a ballast daemon or etcd of
/// an earlier run.
fn processes_under(dir: &Path) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let prog = argv.first().map(String::as_str).unwrap_or_default();
        if (prog.ends_with("/ballast") || prog.ends_with("/etcd"))
            && argv.iter().any(|a| Path::new(a).starts_with(dir))
        {
            out.push(pid);
        }
    }
    out
}
