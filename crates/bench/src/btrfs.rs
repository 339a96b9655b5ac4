//! `ballast-bench btrfs`: the btrfs targets of issue 5.
//!
//! - snapshot and clone latency of a volume holding 0.9 GiB and 2.4 GiB,
//!   through REST (the daemon's own time plus one HTTP round trip on the
//!   unix socket, an upper bound of the time inside the daemon) and through
//!   the CLI;
//! - btrfs volume create + mount, through REST and the CLI.
//!
//! The pool is one sparse 8 GiB disk file in the scratch directory, deleted
//! (unmounted, detached, removed) at the end.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{ms, stats, Daemon};

const GIB: u64 = 1 << 30;

/// Fill `dir/data` with `bytes` of incompressible data, fsynced.
fn fill(dir: &Path, bytes: u64) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("data"))?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for b in chunk.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = usize::try_from(left.min(1 << 20)).unwrap_or(1 << 20);
        f.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

fn line(what: &str, v: Vec<Duration>, target_ms: f64) {
    let s = stats(v);
    println!(
        "{what:<44} p50 {:>7.2} ms   p99 {:>7.2} ms   target <= {target_ms} ms: {}",
        ms(s.p50),
        ms(s.p99),
        if ms(s.p50) <= target_ms {
            "met"
        } else {
            "MISSED"
        }
    );
}

pub fn btrfs_bench(dir: &Path, n: usize) -> Result<()> {
    println!("== btrfs: snapshot and clone by data written; create + mount (n={n})");
    let dir = dir.join("btrfs");
    // A pool mount left by an interrupted run must go before the scratch
    // directory is removed.
    let _ = std::process::Command::new("umount")
        .arg(dir.join("state/pools/bench/mnt"))
        .status();
    let d = Daemon::start(&dir, &["--watch-interval", "1h"])?;
    let disk = dir.join("disks/bench.img");
    d.cli(&[
        "pool",
        "create",
        "bench",
        "--driver",
        "btrfs",
        "--disk-file",
        disk.to_str().context("utf-8 path")?,
        "--disk-size",
        "8G",
        "--overcommit",
        "100",
    ])?;
    let result = run(&d, n);
    // Clean up whatever happened.
    for kind in ["snapshot", "volume"] {
        if let Ok(out) = d.cli(&["-o", "json", kind, "ls"]) {
            let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            for item in list.as_array().into_iter().flatten() {
                let name = item["name"].as_str().unwrap_or_default();
                let _ = match kind {
                    "snapshot" => d.cli(&["snapshot", "rm", name]),
                    _ => d.cli(&["volume", "rm", "--force", name]),
                };
            }
        }
    }
    d.cli(&["pool", "rm", "bench"])?;
    result
}

fn run(d: &Daemon, n: usize) -> Result<()> {
    for (label, bytes) in [("0.9 GiB", 9 * GIB / 10), ("2.4 GiB", 24 * GIB / 10)] {
        let src = format!("src{}", bytes >> 20);
        d.rest(
            "POST",
            "/v1/volumes",
            &format!(r#"{{"name":"{src}","size":"3G","pool":"bench"}}"#),
        )?;
        let reply = d.rest("POST", &format!("/v1/volumes/{src}/mount"), "{}")?;
        let v: serde_json::Value = serde_json::from_str(&reply)?;
        let mp = Path::new(v["mountpoint"].as_str().context("mountpoint")?).to_path_buf();
        let t = Instant::now();
        fill(&mp, bytes)?;
        println!("  {label} written in {:.1} s", t.elapsed().as_secs_f64());
        let (mut snap, mut clone, mut snap_cli, mut clone_cli) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let s = format!("{src}-s{i}");
            let c = format!("{src}-c{i}");
            let t = Instant::now();
            d.rest(
                "POST",
                &format!("/v1/volumes/{src}/snapshots"),
                &format!(r#"{{"name":"{s}"}}"#),
            )?;
            snap.push(t.elapsed());
            let t = Instant::now();
            d.rest(
                "POST",
                "/v1/volumes",
                &format!(r#"{{"name":"{c}","from_snapshot":"{s}"}}"#),
            )?;
            clone.push(t.elapsed());
            let (s2, c2) = (format!("{s}x"), format!("{c}x"));
            let t = Instant::now();
            d.cli(&["volume", "snapshot", &src, &s2])?;
            snap_cli.push(t.elapsed());
            let t = Instant::now();
            d.cli(&["volume", "create", &c2, "--from-snapshot", &s2])?;
            clone_cli.push(t.elapsed());
            for v in [&c, &c2] {
                d.rest("DELETE", &format!("/v1/volumes/{v}"), "")?;
            }
            for s in [&s, &s2] {
                d.rest("DELETE", &format!("/v1/snapshots/{s}"), "")?;
            }
        }
        line(&format!("snapshot, {label} written, REST"), snap, 50.0);
        line(
            &format!("clone from snapshot, {label} written, REST"),
            clone,
            50.0,
        );
        line(&format!("snapshot, {label} written, CLI"), snap_cli, 200.0);
        line(
            &format!("clone from snapshot, {label} written, CLI"),
            clone_cli,
            200.0,
        );
        d.rest("DELETE", &format!("/v1/volumes/{src}?force=true"), "")?;
    }
    let (mut rest, mut cli) = (Vec::new(), Vec::new());
    for i in 0..n.max(50) {
        let name = format!("v{i}");
        let t = Instant::now();
        d.rest(
            "POST",
            "/v1/volumes",
            &format!(r#"{{"name":"{name}","size":"1G","pool":"bench"}}"#),
        )?;
        d.rest("POST", &format!("/v1/volumes/{name}/mount"), "{}")?;
        rest.push(t.elapsed());
        let name = format!("w{i}");
        let t = Instant::now();
        d.cli(&["volume", "create", &name, "--size", "1G", "--pool", "bench"])?;
        d.cli(&["volume", "mount", &name])?;
        cli.push(t.elapsed());
    }
    line("btrfs volume create + mount, REST", rest, 10.0);
    line("btrfs volume create + mount, CLI", cli, 10.0);
    Ok(())
}
