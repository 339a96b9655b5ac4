//! `volume move`: node-local volumes moving between test hosts (network
//! namespaces, tests/common/netns.rs) over the nodes' TLS transfer
//! endpoints, with the store on a real etcd. Real loop devices, ext4 and
//! btrfs; kill -9 of the source, the target and the controller at every
//! move failpoint.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::etcd::{require_etcd, EtcdCluster};
use common::netns::{require_netns, Net};
use common::{eventually, require_root_loop, sha256, Daemon};

/// h3 starts first and so is the controller; h1 and h2 hold the volumes.
const HOSTS: [&str; 3] = ["h3", "h1", "h2"];

struct Cluster {
    nodes: Vec<Daemon>,
    _etcd: EtcdCluster,
    _net: Net,
}

impl Cluster {
    fn start() -> Cluster {
        let net = Net::new(&["e1", "h1", "h2", "h3"]);
        let etcd = EtcdCluster::start(&net, &["e1"]);
        let mut nodes = Vec::new();
        for h in HOSTS {
            let listen = format!("{}:0", net.addr(h));
            nodes.push(Daemon::start_in_netns(
                &net.netns_path(h),
                &[
                    "--store",
                    &etcd.urls(),
                    "--store-prefix",
                    "/moves/",
                    "--node-id",
                    h,
                    "--node-ttl",
                    "3s",
                    "--listen",
                    &listen,
                ],
                &[],
            ));
        }
        let c = Cluster {
            nodes,
            _etcd: etcd,
            _net: net,
        };
        let status = c.node("h1").json(&["cluster", "status"]);
        assert_eq!(status["controller"]["node"], "h3", "{status}");
        c
    }

    fn node(&self, host: &str) -> &Daemon {
        &self.nodes[HOSTS.iter().position(|h| *h == host).unwrap()]
    }

    fn node_mut(&mut self, host: &str) -> &mut Daemon {
        &mut self.nodes[HOSTS.iter().position(|h| *h == host).unwrap()]
    }

    /// The volume's record as `host` sees it.
    fn placement(&self, host: &str, vol: &str) -> (String, String) {
        let v = self.node(host).json(&["volume", "inspect", vol]);
        (
            v["node"].as_str().unwrap_or("-").to_string(),
            v["pool"].as_str().unwrap_or("-").to_string(),
        )
    }

    /// Wait until the move of `vol` is over (its record gone or failed);
    /// returns the node that holds it then.
    fn settle(&self, vol: &str) -> String {
        eventually(
            &format!("the move of {vol} ends"),
            Duration::from_secs(120),
            || {
                let (code, body) =
                    self.node("h1")
                        .http("GET", &format!("/v1/volumes/{vol}/move"), b"");
                match code {
                    404 => Ok(()),
                    200 if body["phase"] == "failed" => Ok(()),
                    _ => Err(body),
                }
            },
        );
        let holder = self.placement("h1", vol).0;
        // Every node that runs agrees.
        for h in HOSTS.into_iter().filter(|h| self.node(h).pid().is_some()) {
            eventually(
                &format!("{h} sees {vol} on {holder}"),
                Duration::from_secs(10),
                || {
                    let p = self.placement(h, vol).0;
                    (p == holder).then_some(()).ok_or(p)
                },
            );
        }
        holder
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for (h, d) in HOSTS.iter().zip(&self.nodes) {
            let log = d.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- ballast {h} ---\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
    }
}

fn prerequisites(test: &str) -> bool {
    require_netns(test) && require_root_loop(test) && require_etcd(test)
}

/// Write `mib` MiB of random data into the file `name` of a mounted volume.
fn write_random(dir: &Path, name: &str, mib: usize) -> String {
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut rng = fastrand::Rng::with_seed(mib as u64 ^ name.len() as u64);
    for _ in 0..mib {
        rng.fill(&mut buf);
        std::io::Write::write_all(&mut f, &buf).unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    sha256(&path)
}

fn vol_id(d: &Daemon, vol: &str) -> String {
    d.json(&["volume", "inspect", vol])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The directory of host `h`'s default pool (h3 took `default`).
fn pool_dir(c: &Cluster, h: &str) -> PathBuf {
    c.node(h).state.join("pools").join(format!("default-{h}"))
}

fn image(c: &Cluster, h: &str, id: &str) -> PathBuf {
    pool_dir(c, h).join(format!("{id}.img"))
}

/// Files of a pool directory besides images (what a move may leave).
fn leftovers(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if p.parent() != Some(dir) {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// Mount on `host`, return the sha256 of `file` in it, unmount.
fn checksum_on(c: &Cluster, host: &str, vol: &str, file: &str) -> String {
    let mp = c.node(host).ok(&["volume", "mount", vol]);
    let sum = sha256(&Path::new(mp.trim()).join(file));
    c.node(host).ok(&["volume", "unmount", vol]);
    sum
}

#[test]
fn a_loop_volume_with_600_mib_moves_to_another_host_with_equal_checksums() {
    if !prerequisites("a_loop_volume_with_600_mib_moves_to_another_host_with_equal_checksums") {
        return;
    }
    let c = Cluster::start();
    let h1 = c.node("h1");
    h1.ok(&["volume", "create", "data", "--size", "1G", "--node", "h1"]);
    let mp = h1.ok(&["volume", "mount", "data"]);
    let file_sum = write_random(Path::new(mp.trim()), "random", 600);
    h1.ok(&["volume", "unmount", "data"]);
    let id = vol_id(h1, "data");
    let src = image(&c, "h1", &id);
    let image_sum = sha256(&src);

    // Asked on the controller, which is neither side.
    let out = c.node("h3").ok(&["volume", "move", "data", "--to", "h2"]);
    assert!(out.contains("moved to h2"), "{out}");
    assert_eq!(c.settle("data"), "h2");
    for h in HOSTS {
        assert_eq!(
            c.placement(h, "data"),
            ("h2".into(), "default-h2".into()),
            "{h}"
        );
    }
    let dst = image(&c, "h2", &id);
    assert!(!src.exists(), "the source image is still there");
    assert_eq!(sha256(&dst), image_sum, "the image differs after the move");
    assert!(leftovers(&pool_dir(&c, "h2")).is_empty());
    assert!(leftovers(&pool_dir(&c, "h1")).is_empty());
    // Sparse on the target too: about what was written, not the whole GiB.
    let allocated = std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(&dst).unwrap()) * 512;
    assert!(
        allocated < 800 << 20,
        "the copy is not sparse: {allocated} bytes"
    );
    // The old node refuses it; the new one serves the same bytes.
    let refused = c.node("h1").fails(&["volume", "mount", "data"]);
    assert!(refused.contains("h2"), "{refused}");
    assert_eq!(checksum_on(&c, "h2", "data", "random"), file_sum);
    let events = c.node("h2").ok(&["events"]);
    assert!(events.contains("every checksum matched"), "{events}");
    c.node("h1").assert_no_leftovers();
    c.node("h2").assert_no_leftovers();
}

#[test]
fn a_btrfs_volume_moves_by_send_and_receive_with_the_changes_of_the_first_pass() {
    if !prerequisites("a_btrfs_volume_moves_by_send_and_receive_with_the_changes_of_the_first_pass")
        || !common::require_tool("a_btrfs_volume_moves", "mkfs.btrfs")
    {
        return;
    }
    let c = Cluster::start();
    for (h, pool) in [("h1", "bt1"), ("h2", "bt2")] {
        let d = c.node(h);
        let disk = d.dir.path().join("bt.disk");
        d.ok(&[
            "pool",
            "create",
            pool,
            "--driver",
            "btrfs",
            "--disk-file",
            disk.to_str().unwrap(),
            "--disk-size",
            "1G",
        ]);
    }
    let h1 = c.node("h1");
    // The controller places it once h1's record shows the new pool's room.
    eventually("bv is created", Duration::from_secs(30), || {
        let out = h1.cli(&["volume", "create", "bv", "--size", "512M", "--pool", "bt1"]);
        out.status.success().then_some(()).ok_or(out)
    });
    let mp = h1.ok(&["volume", "mount", "bv"]);
    let first = write_random(Path::new(mp.trim()), "first", 64);
    // Mounted: the move waits for the consumer to go before its final pass.
    let started = h1.ok(&[
        "volume",
        "move",
        "bv",
        "--to",
        "h2",
        "--pool",
        "bt2",
        "--wait-idle",
        "--detach",
    ]);
    assert!(started.contains("bv"), "{started}");
    eventually("the first pass is done", Duration::from_secs(60), || {
        let (_, m) = c.node("h1").http("GET", "/v1/volumes/bv/move", b"");
        let waiting = m["phase"] == "copying"
            && m["progress"]["pass"] == 1
            && h1.log().contains("move: first pass done");
        waiting.then_some(()).ok_or(m)
    });
    // Written after the first pass: only the final (incremental) pass has it.
    let second = write_random(Path::new(mp.trim()), "second", 16);
    h1.ok(&["volume", "unmount", "bv"]);
    assert_eq!(c.settle("bv"), "h2");
    assert_eq!(c.placement("h1", "bv"), ("h2".into(), "bt2".into()));
    assert_eq!(checksum_on(&c, "h2", "bv", "first"), first);
    assert_eq!(checksum_on(&c, "h2", "bv", "second"), second);
    // The source subvolume and every move snapshot are gone on both sides.
    let mnt1 = c.node("h1").state.join("pools/bt1/mnt");
    let mnt2 = c.node("h2").state.join("pools/bt2/mnt");
    for d in [
        mnt1.join("volumes"),
        mnt1.join("moves"),
        mnt2.join("incoming"),
    ] {
        let n = std::fs::read_dir(&d).map(|r| r.count()).unwrap_or(0);
        assert_eq!(n, 0, "{} is not empty", d.display());
    }
    // The qgroup limit came along: the volume's size is still enforced.
    let mp2 = c.node("h2").ok(&["volume", "mount", "bv"]);
    let big = std::process::Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}/big", mp2.trim()),
            "bs=1M",
            "count=700",
            "conv=fsync",
        ])
        .output()
        .unwrap();
    assert!(!big.status.success(), "wrote 700M into a 512M volume");
    c.node("h2").ok(&["volume", "unmount", "bv"]);
}

#[test]
fn a_mounted_volume_is_not_cut_over_without_wait_idle_and_a_cancel_rolls_back() {
    if !prerequisites("a_mounted_volume_is_not_cut_over_without_wait_idle_and_a_cancel_rolls_back")
    {
        return;
    }
    let c = Cluster::start();
    let h1 = c.node("h1");
    h1.ok(&["volume", "create", "busy", "--size", "256M", "--node", "h1"]);
    let mp = h1.ok(&["volume", "mount", "busy"]);
    let sum = write_random(Path::new(mp.trim()), "f", 32);
    let err = h1.fails(&["volume", "move", "busy", "--to", "h2"]);
    assert!(err.contains("--wait-idle"), "{err}");
    // Still h1's, still mounted and written to, nothing left on h2.
    assert_eq!(c.placement("h2", "busy").0, "h1");
    assert_eq!(sha256(&Path::new(mp.trim()).join("f")), sum);
    write_random(Path::new(mp.trim()), "g", 1);
    assert!(leftovers(&pool_dir(&c, "h2")).is_empty());

    // With --wait-idle it waits; a cancel gives the volume back.
    h1.ok(&[
        "volume",
        "move",
        "busy",
        "--to",
        "h2",
        "--wait-idle",
        "--detach",
    ]);
    std::thread::sleep(Duration::from_secs(2));
    let out = h1.ok(&["volume", "move", "busy", "--cancel"]);
    assert!(out.contains("stays on h1"), "{out}");
    assert_eq!(c.settle("busy"), "h1");
    h1.ok(&["volume", "unmount", "busy"]);
    assert_eq!(checksum_on(&c, "h1", "busy", "f"), sum);
    eventually(
        "h2 discards what it received",
        Duration::from_secs(10),
        || {
            let l = leftovers(&pool_dir(&c, "h2"));
            l.is_empty().then_some(()).ok_or(l)
        },
    );
    // Bad requests change nothing.
    for (args, want) in [
        (
            vec!["volume", "move", "busy", "--to", "nosuchnode"],
            "nosuchnode",
        ),
        (
            vec![
                "volume",
                "move",
                "busy",
                "--to",
                "h2",
                "--pool",
                "default-h1",
            ],
            "not a pool of node",
        ),
        (
            vec!["volume", "move", "busy", "--to-pool", "default-h1"],
            "already in pool",
        ),
        (vec!["volume", "move", "nosuch", "--to", "h2"], "not found"),
        (vec!["volume", "move", "../x", "--to", "h2"], "volume name"),
    ] {
        let err = h1.fails(&args);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let (code, body) = h1.http("POST", "/v1/volumes/busy/move", br#"{"to":"h2","bogus":1}"#);
    assert_eq!(code, 400, "{body}");
    assert_eq!(c.placement("h1", "busy").0, "h1");
}

/// What every crash leaves, once the move settled: one copy, where the
/// record says, with the data; nothing half-made anywhere.
fn check_one_copy(c: &Cluster, vol: &str, id: &str, sum: &str, fp: &str) -> String {
    let holder = c.settle(vol);
    let other = if holder == "h1" { "h2" } else { "h1" };
    assert!(
        image(c, &holder, id).exists(),
        "{fp}: the holder {holder} lacks the image"
    );
    eventually(
        &format!("{fp}: {other} holds no copy"),
        Duration::from_secs(20),
        || {
            let mut left = leftovers(&pool_dir(c, other));
            if image(c, other, id).exists() {
                left.push("the image".into());
            }
            left.is_empty().then_some(()).ok_or(left)
        },
    );
    let refused = c.node(other).fails(&["volume", "mount", vol]);
    assert!(
        refused.contains(&holder),
        "{fp}: {other} mounts it: {refused}"
    );
    assert_eq!(checksum_on(c, &holder, vol, "f"), sum, "{fp}");
    for h in ["h1", "h2"] {
        c.node(h).assert_no_leftovers();
    }
    holder
}

#[test]
fn kill_9_of_source_or_target_at_every_move_failpoint_resumes_or_rolls_back() {
    if !prerequisites("kill_9_of_source_or_target_at_every_move_failpoint_resumes_or_rolls_back") {
        return;
    }
    let mut c = Cluster::start();
    c.node("h1")
        .ok(&["volume", "create", "fp", "--size", "128M", "--node", "h1"]);
    let id = vol_id(c.node("h1"), "fp");
    let mp = c.node("h1").ok(&["volume", "mount", "fp"]);
    let sum = write_random(Path::new(mp.trim()), "f", 24);
    c.node("h1").ok(&["volume", "unmount", "fp"]);
    let source = [
        "move.connected",
        "move.first_pass",
        "move.cut_over",
        "move.final_pass",
        "move.verified",
        "move.installed",
        "move.committed",
        "move.source_deleted",
    ];
    let target = ["move.target_prepared", "move.target_installed"];
    let mut seen = Vec::new();
    for fp in source.iter().chain(&target) {
        let holder = c.placement("h3", "fp").0;
        let to = if holder == "h1" { "h2" } else { "h1" };
        let dies = if source.contains(fp) {
            holder.clone()
        } else {
            to.to_string()
        };
        c.node_mut(&dies)
            .restart_with(&[("BALLAST_FAILPOINTS", fp)]);
        // The controller's CLI asks; it holds no state of the move.
        c.node("h3")
            .ok(&["volume", "move", "fp", "--to", to, "--detach"]);
        c.node_mut(&dies).wait_killed_at(fp);
        c.node_mut(&dies).restart();
        let now = check_one_copy(&c, "fp", &id, &sum, fp);
        eprintln!("{fp}: {holder} -> {now} (asked: {to})");
        // A crash after the switch ends on the target; one before it
        // either resumed there or rolled back.
        if ["move.committed", "move.source_deleted"].contains(fp) {
            assert_eq!(now, to, "{fp}");
        }
        seen.push(now);
    }
    // Most crashes resume: the stream picks up what the target kept.
    let moved = seen.windows(2).filter(|w| w[0] != w[1]).count() + usize::from(seen[0] != "h1");
    assert!(
        moved >= 5,
        "only {moved} of {} crashed moves completed: {seen:?}",
        seen.len()
    );

    // The controller killed mid-move: nothing of the move is its.
    let holder = c.placement("h3", "fp").0;
    let to = if holder == "h1" { "h2" } else { "h1" };
    c.node("h3")
        .ok(&["volume", "move", "fp", "--to", to, "--detach"]);
    c.node_mut("h3").kill9();
    assert_eq!(check_one_copy(&c, "fp", &id, &sum, "controller killed"), to);
    c.node_mut("h3").restart();
    eventually("h3 sees the move", Duration::from_secs(20), || {
        let p = c.placement("h3", "fp").0;
        (p == to).then_some(()).ok_or(p)
    });
}

/// The CLI following a move of a 1 GiB loop volume holding 800 MiB between
/// two loop pools of one daemon: on a terminal (script(1)'s pty) a bar that
/// is redrawn as the move advances, with the byte counts and the daemon's
/// rate and ETA; through a pipe, quiet lines only.
#[test]
fn the_cli_draws_a_moving_bar_on_a_terminal_and_quiet_lines_through_a_pipe() {
    let test = "the_cli_draws_a_moving_bar_on_a_terminal_and_quiet_lines_through_a_pipe";
    if !require_root_loop(test) || !common::require_tool(test, "script") {
        return;
    }
    let d = Daemon::start();
    d.add_loop_pool("p2");
    d.ok(&["volume", "create", "mv", "--size", "1G"]);
    let node = d.json(&["volume", "inspect", "mv"])["node"]
        .as_str()
        .expect("the volume's node")
        .to_string();
    let mp = d.ok(&["volume", "mount", "mv"]);
    let sum = write_random(Path::new(mp.trim()), "data", 800);
    d.ok(&["volume", "unmount", "mv"]);

    // From the disk, not the page cache, so the first pass takes a while.
    std::process::Command::new("sync").status().unwrap();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let command = format!(
        "{} --socket {} volume move mv --to-pool p2",
        common::BIN,
        d.socket().display()
    );
    let out = std::process::Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script");
    let tty = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{tty}");
    assert!(
        tty.trim_end().ends_with(&format!("mv moved to {node} p2")),
        "{tty:?}"
    );
    // Each redraw: `moving mv to N (p2) [===>   ]  42% 430.00 MiB/1.00 GiB
    // 412MiB/s, eta 2 seconds`.
    let draws: Vec<&str> = tty
        .split(['\r', '\n'])
        .filter(|l| l.contains("moving mv to") && l.contains("] "))
        .collect();
    let mut percents = std::collections::BTreeSet::new();
    let mut counts = std::collections::BTreeSet::new();
    let mut rated = false;
    for l in &draws {
        let Some((_, after)) = l.rsplit_once("] ") else {
            continue;
        };
        let Some((pct, rest)) = after.split_once('%') else {
            continue;
        };
        if let Ok(p) = pct.trim().parse::<u32>() {
            percents.insert(p);
        }
        if let Some((done, _)) = rest.trim_start().split_once('/') {
            counts.insert(done.to_string());
        }
        rated |= rest.contains("iB/s, eta ");
    }
    eprintln!("the bar drew {percents:?} with {counts:?}");
    assert!(
        percents.len() >= 3 && counts.len() >= 3,
        "the bar did not advance: percentages {percents:?}, byte counts {counts:?} in {tty:?}"
    );
    assert!(rated, "no rate and ETA in the bar: {tty:?}");
    assert_eq!(d.json(&["volume", "inspect", "mv"])["pool"], "p2");
    // The source drops the committed record once its copy is gone; until
    // then another move is refused.
    eventually("the move's record goes", Duration::from_secs(30), || {
        let (code, body) = d.http("GET", "/v1/volumes/mv/move", b"");
        (code == 404).then_some(()).ok_or(body)
    });

    // Through a pipe: no redraws, no escapes; every line names the move,
    // the last says it is done.
    let out = d.cli(&["volume", "move", "mv", "--to-pool", "default"]);
    let err = String::from_utf8(out.stderr).unwrap();
    eprintln!("through a pipe: {err:?}");
    assert!(out.status.success(), "{err}");
    assert!(!err.contains('\r') && !err.contains('\u{1b}'), "{err:?}");
    let what = format!("moving mv to {node} (default): ");
    for line in err.lines() {
        assert!(line.starts_with(&what), "{err:?}");
    }
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with(&format!("{what}done in ")), "{err:?}");
    assert_eq!(d.json(&["volume", "inspect", "mv"])["pool"], "default");
    let mp = d.ok(&["volume", "mount", "mv"]);
    assert_eq!(sha256(&Path::new(mp.trim()).join("data")), sum);
    d.ok(&["volume", "unmount", "mv"]);
    d.ok(&["volume", "rm", "mv", "--force"]);
    d.ok(&["pool", "rm", "p2"]);
    d.assert_no_leftovers();
}

/// A target that stops answering in the middle of a pass (SIGSTOP: its
/// sockets stay open, nothing is read): the source's calls time out, the
/// move makes no progress and is rolled back, and the volume, held for the
/// pass, is the source's again, intact. Once the target runs again it
/// discards what it received.
#[test]
fn a_target_that_stops_answering_mid_pass_is_rolled_back_and_nothing_blocks() {
    if !prerequisites("a_target_that_stops_answering_mid_pass_is_rolled_back_and_nothing_blocks") {
        return;
    }
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let c = Cluster::start();
    let h1 = c.node("h1");
    h1.ok(&["volume", "create", "st", "--size", "1G", "--node", "h1"]);
    let mp = h1.ok(&["volume", "mount", "st"]);
    let sum = write_random(Path::new(mp.trim()), "f", 600);
    h1.ok(&["volume", "unmount", "st"]);
    h1.ok(&["volume", "move", "st", "--to", "h2", "--detach"]);
    eventually("the pass is under way", Duration::from_secs(60), || {
        let (_, m) = h1.http("GET", "/v1/volumes/st/move", b"");
        let going = m["progress"]["done_bytes"].as_u64() > Some(0);
        assert_ne!(
            m["phase"], "committed",
            "the move ended before the target could be stopped"
        );
        going.then_some(()).ok_or(m)
    });
    let h2 = Pid::from_raw(c.node("h2").pid().unwrap() as i32);
    kill(h2, Signal::SIGSTOP).unwrap();
    // No progress for the stall limit: rolled back, with a reason.
    let failed = eventually("the move is rolled back", Duration::from_secs(240), || {
        let (code, m) = h1.http("GET", "/v1/volumes/st/move", b"");
        (code == 200 && m["phase"] == "failed")
            .then_some(m.clone())
            .ok_or(m)
    });
    kill(h2, Signal::SIGCONT).unwrap();
    assert!(
        failed["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{failed}"
    );
    // The source has it again, usable, with its data; nobody else does.
    let v = h1.json(&["volume", "inspect", "st"]);
    assert_eq!(v["state"], "available", "{v}");
    assert_eq!(c.placement("h3", "st").0, "h1");
    assert_eq!(checksum_on(&c, "h1", "st", "f"), sum);
    eventually(
        "h2 discards what it received",
        Duration::from_secs(60),
        || {
            let l = leftovers(&pool_dir(&c, "h2"));
            l.is_empty().then_some(()).ok_or(l)
        },
    );
    c.node("h1").assert_no_leftovers();
}
