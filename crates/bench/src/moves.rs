//! `ballast-bench move`: the move throughput target of issue 14 (a move
//! runs at >= 80% of the floor measured in the same run).
//!
//! - loop: a 1 GiB ext4 volume holding 600 MiB of random data moved
//!   (`--to-pool`, through REST) between two loop pools on the scratch
//!   directory's filesystem, against `cp --sparse=always` of the same image
//!   file into the other pool's directory plus an fsync of the copy;
//! - btrfs: a btrfs volume holding 600 MiB moved between two btrfs pools
//!   (each its own disk file), against `btrfs send` of a read-only snapshot
//!   of it piped into `btrfs receive` on the other pool's filesystem, plus a
//!   sync of that filesystem.
//!
//! Every run starts with cold caches and the sides alternate which goes
//! first, after one untimed round of each: on a VM, memory the guest has
//! not touched for a while (or ever) is slow to fault in, and would
//! otherwise slow whichever side runs first. A move is timed from the request to the volume's placement
//! naming the new pool (what `ballast volume move` waits for): both passes,
//! the target's fsync and read-back check, the switch. The source deleting
//! its copy afterwards is not timed (cp's floor deletes nothing either).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::loopcopy::{drop_caches, image_of, run};
use super::{http, ms, stats, Daemon};

const MIB: u64 = 1 << 20;
/// Random data written into the volume that moves.
const DATA_MIB: u64 = 600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    Loop,
    Btrfs,
    Both,
}

pub fn move_bench(dir: &Path, n: usize, which: Which) -> Result<()> {
    let dir = dir.join("move");
    if which != Which::Btrfs {
        loop_moves(&dir.join("loop"), n)?;
    }
    if which != Which::Loop {
        btrfs_moves(&dir.join("btrfs"), n)?;
    }
    Ok(())
}

fn json(s: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(s)?)
}

/// Create `name` (1 GiB) in `pool`, write [`DATA_MIB`] of random data into
/// it, unmount it.
fn make_volume(d: &Daemon, name: &str, pool: &str, fs: Option<&str>) -> Result<()> {
    let fs = fs.map(|f| format!(r#","fs":"{f}""#)).unwrap_or_default();
    d.rest(
        "POST",
        "/v1/volumes",
        &format!(r#"{{"name":"{name}","size":"1G","pool":"{pool}"{fs}}}"#),
    )?;
    let v = json(&d.rest("POST", &format!("/v1/volumes/{name}/mount"), "{}")?)?;
    let mp = PathBuf::from(v["mountpoint"].as_str().context("mountpoint")?);
    run(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "conv=fsync", "status=none"])
        .arg(format!("count={DATA_MIB}"))
        .arg(format!("of={}", mp.join("data").display())))?;
    d.rest("POST", &format!("/v1/volumes/{name}/unmount"), "{}")?;
    Ok(())
}

fn pool_of(d: &Daemon, name: &str) -> Result<String> {
    let v = json(&d.rest("GET", &format!("/v1/volumes/{name}"), "")?)?;
    Ok(v["pool"].as_str().context("pool")?.to_string())
}

fn pool_path(d: &Daemon, pool: &str) -> Result<PathBuf> {
    let p = json(&d.rest("GET", &format!("/v1/pools/{pool}"), "")?)?;
    Ok(PathBuf::from(p["path"].as_str().context("pool path")?))
}

/// One timed move: until the placement names the new pool, and until the
/// first pass was over (the record's phase turned `cutting_over`).
struct MoveTime {
    total: Duration,
    first_pass: Duration,
}

/// Move `name` to `pool` and time it until its placement names `pool`;
/// then wait (untimed) until the source has dropped its copy and the
/// record, so the next run starts clean.
fn move_to(d: &Daemon, name: &str, pool: &str) -> Result<MoveTime> {
    let path = format!("/v1/volumes/{name}/move");
    let t = Instant::now();
    d.rest("POST", &path, &format!(r#"{{"pool":"{pool}"}}"#))?;
    let deadline = t + Duration::from_secs(600);
    let mut first_pass = None;
    let total = loop {
        if pool_of(d, name)? == pool {
            break t.elapsed();
        }
        let (status, body) = http(&d.socket, "GET", &path, "")?;
        if status == 200 {
            let m = json(&body)?;
            if m["phase"] == "failed" {
                bail!("the move of {name} to {pool} failed: {body}");
            }
            if m["phase"] != "copying" && first_pass.is_none() {
                first_pass = Some(t.elapsed());
            }
        }
        if Instant::now() > deadline {
            bail!("the move of {name} to {pool} did not end: {body}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    while http(&d.socket, "GET", &path, "")?.0 != 404 {
        if Instant::now() > deadline {
            bail!("the record of the move of {name} stayed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(MoveTime {
        total,
        first_pass: first_pass.unwrap_or(total),
    })
}

/// The figures of one benchmark: runs, p50 throughput of each side and
/// their ratio.
fn report(what: &str, floor_what: &str, mib: f64, ours: &[MoveTime], floor: &[Duration]) {
    let show = |v: &mut dyn Iterator<Item = Duration>| {
        v.map(|d| format!("{:.0}", ms(d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    println!(
        "  move runs (ms):  {}",
        show(&mut ours.iter().map(|m| m.total))
    );
    println!(
        "    first pass:    {}",
        show(&mut ours.iter().map(|m| m.first_pass))
    );
    println!("  floor runs (ms): {}", show(&mut floor.iter().copied()));
    let (o, f) = (
        stats(ours.iter().map(|m| m.total).collect()).p50,
        stats(floor.to_vec()).p50,
    );
    let p1 = stats(ours.iter().map(|m| m.first_pass).collect()).p50;
    let (to, tf) = (mib / o.as_secs_f64(), mib / f.as_secs_f64());
    println!(
        "{what:<44} p50 {:>7.0} ms   {to:>6.0} MiB/s   (first pass p50 {:.0} ms)",
        ms(o),
        ms(p1)
    );
    println!("{floor_what:<44} p50 {:>7.0} ms   {tf:>6.0} MiB/s", ms(f));
    println!(
        "{:<44} {:.2}   target >= 0.80: {}",
        "ratio move / floor",
        to / tf,
        if to / tf >= 0.8 { "met" } else { "MISSED" }
    );
}

fn loop_moves(dir: &Path, n: usize) -> Result<()> {
    println!(
        "== move: 1 GiB loop volume with {DATA_MIB} MiB random data, --to-pool between two loop pools, vs cp --sparse=always + fsync, cold caches (n={n})"
    );
    let root = dir.to_path_buf();
    let d = Daemon::start(&root, &["--watch-interval", "1h"])?;
    let p2 = root.join("p2");
    std::fs::create_dir_all(&p2)?;
    d.cli(&[
        "pool",
        "create",
        "p2",
        "--driver",
        "loop",
        "--path",
        p2.to_str().context("utf-8 path")?,
    ])?;
    let result = (|| -> Result<()> {
        make_volume(&d, "v", "default", Some("ext4"))?;
        let img = image_of(&d, &root, "v")?;
        #[allow(clippy::cast_precision_loss)]
        let data_mib = (std::fs::metadata(&img)?.blocks() * 512) as f64 / MIB as f64;
        println!("  image {}: {data_mib:.0} MiB allocated", img.display());
        let dirs = [
            ("default", pool_path(&d, "default")?),
            ("p2", pool_path(&d, "p2")?),
        ];
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        // Round 0 is the untimed warm-up.
        for i in 0..=n {
            for side in [i % 2, 1 - i % 2] {
                let (ours, floor) = if i == 0 {
                    (&mut Vec::new(), &mut Vec::new())
                } else {
                    (&mut ours, &mut floor)
                };
                let here = pool_of(&d, "v")?;
                let (to, to_dir) = dirs
                    .iter()
                    .find(|(p, _)| *p != here)
                    .context("the other pool")?;
                drop_caches()?;
                if side == 0 {
                    ours.push(move_to(&d, "v", to)?);
                } else {
                    let src = image_of(&d, &root, "v")?;
                    let dst = to_dir.join("cp-copy.img");
                    let t = Instant::now();
                    run(Command::new("cp")
                        .arg("--sparse=always")
                        .arg(&src)
                        .arg(&dst))?;
                    run(Command::new("sync").arg(&dst))?;
                    floor.push(t.elapsed());
                    std::fs::remove_file(&dst)?;
                }
            }
        }
        report(
            "move --to-pool (loop), REST",
            "cp --sparse=always + fsync",
            data_mib,
            &ours,
            &floor,
        );
        Ok(())
    })();
    let _ = d.rest("DELETE", "/v1/volumes/v?force=true", "");
    let _ = d.cli(&["pool", "rm", "p2"]);
    result
}

/// `btrfs send SNAP | btrfs receive DIR`, then a sync of DIR's filesystem.
fn send_receive(snap: &Path, dir: &Path) -> Result<()> {
    let mut send = Command::new("btrfs")
        .args(["send", "-q"])
        .arg(snap)
        .stdout(Stdio::piped())
        .spawn()
        .context("btrfs send")?;
    let out = send.stdout.take().context("send's stdout")?;
    let recv = Command::new("btrfs")
        .args(["receive", "-q"])
        .arg(dir)
        .stdin(Stdio::from(out))
        .status()
        .context("btrfs receive")?;
    let sent = send.wait()?;
    if !sent.success() || !recv.success() {
        bail!("btrfs send | btrfs receive: {sent}, {recv}");
    }
    run(Command::new("sync").arg("-f").arg(dir))?;
    Ok(())
}

fn btrfs_moves(dir: &Path, n: usize) -> Result<()> {
    println!(
        "== move: btrfs volume with {DATA_MIB} MiB random data, --to-pool between two btrfs pools, vs btrfs send | btrfs receive + sync, cold caches (n={n})"
    );
    let pools = ["bt1", "bt2"];
    // Pool mounts an interrupted run left must go before the scratch
    // directory is removed.
    for p in pools {
        let _ = Command::new("umount")
            .arg(dir.join(format!("state/pools/{p}/mnt")))
            .stderr(Stdio::null())
            .status();
    }
    let d = Daemon::start(dir, &["--watch-interval", "1h"])?;
    for p in pools {
        let disk = dir.join(format!("disks/{p}.img"));
        d.cli(&[
            "pool",
            "create",
            p,
            "--driver",
            "btrfs",
            "--disk-file",
            disk.to_str().context("utf-8 path")?,
            "--disk-size",
            "4G",
        ])?;
    }
    let result = (|| -> Result<()> {
        make_volume(&d, "b", "bt1", None)?;
        let id = json(&d.rest("GET", "/v1/volumes/b", "")?)?["id"]
            .as_str()
            .context("volume id")?
            .to_string();
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        // Round 0 is the untimed warm-up.
        for i in 0..=n {
            for side in [i % 2, 1 - i % 2] {
                let (ours, floor) = if i == 0 {
                    (&mut Vec::new(), &mut Vec::new())
                } else {
                    (&mut ours, &mut floor)
                };
                let here = pool_of(&d, "b")?;
                let to = *pools.iter().find(|p| **p != here).context("other pool")?;
                if side == 0 {
                    drop_caches()?;
                    ours.push(move_to(&d, "b", to)?);
                } else {
                    let (src_fs, dst_fs) = (pool_path(&d, &here)?, pool_path(&d, to)?);
                    // The snapshot is not timed: the floor is the stream.
                    let snap = src_fs.join("bench-floor");
                    run(Command::new("btrfs")
                        .args(["subvolume", "snapshot", "-r"])
                        .arg(src_fs.join("volumes").join(&id))
                        .arg(&snap))?;
                    let into = dst_fs.join("bench-floor-received");
                    std::fs::create_dir_all(&into)?;
                    drop_caches()?;
                    let t = Instant::now();
                    send_receive(&snap, &into)?;
                    floor.push(t.elapsed());
                    for sv in [into.join("bench-floor"), snap] {
                        run(Command::new("btrfs")
                            .args(["subvolume", "delete", "-c"])
                            .arg(&sv))?;
                    }
                    std::fs::remove_dir(&into)?;
                }
            }
        }
        #[allow(clippy::cast_precision_loss)]
        let mib = DATA_MIB as f64;
        report(
            "move --to-pool (btrfs), REST",
            "btrfs send | btrfs receive + sync",
            mib,
            &ours,
            &floor,
        );
        Ok(())
    })();
    let _ = d.rest("DELETE", "/v1/volumes/b?force=true", "");
    for p in pools {
        let _ = d.cli(&["pool", "rm", p]);
    }
    result
}
