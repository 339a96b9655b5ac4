//! `metrics`: the cost of one `/metrics` scrape at many volumes, some of
//! them mounted (those cost a statvfs and a read of /sys/block/<dev>/stat
//! each), over the daemon's TCP listener as Prometheus scrapes it.
//! Target (issue 6): ≤ 100 ms and ≤ 5 MB at 10,000 volumes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{ms, stats, Daemon};

pub fn metrics(dir: &Path, volumes: usize, mounted: usize) -> Result<()> {
    println!(
        "== metrics: a /metrics scrape at {volumes} volumes of 64 MiB, {mounted} of them mounted"
    );
    let d = Daemon::start(dir, &["--overcommit-ratio", "100"])?;
    let addr: SocketAddr = std::fs::read_to_string(d.run.join("listen.addr"))
        .context("reading listen.addr")?
        .trim()
        .parse()?;
    let t = Instant::now();
    for i in 0..volumes {
        d.rest(
            "POST",
            "/v1/volumes",
            &format!(r#"{{"name":"m{i:05}","size":"64M"}}"#),
        )?;
        if (i + 1) % 2000 == 0 {
            eprintln!("  created {}/{volumes}", i + 1);
        }
    }
    eprintln!("  created {volumes} in {:.1} s", t.elapsed().as_secs_f64());
    for i in 0..mounted.min(volumes) {
        d.rest("POST", &format!("/v1/volumes/m{i:05}/mount"), "{}")?;
    }
    // Every scrape after the pool measure's one-second cache has expired,
    // as with any real scrape interval: the worst case.
    let mut times = Vec::new();
    let mut size = 0;
    let mut body = String::new();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(1100));
        let t = Instant::now();
        body = scrape(addr)?;
        times.push(t.elapsed());
        size = body.len();
    }
    // And back to back (the pool measure cached).
    let mut warm = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        scrape(addr)?;
        warm.push(t.elapsed());
    }
    let series = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .count();
    let used = body
        .lines()
        .filter(|l| l.starts_with("ballast_volume_used_bytes{"))
        .count();
    if used != mounted.min(volumes) {
        bail!("{used} volumes report used bytes, expected {mounted}");
    }
    for i in 0..mounted.min(volumes) {
        d.rest("POST", &format!("/v1/volumes/m{i:05}/unmount"), "{}")?;
    }
    let (cold, warm) = (stats(times), stats(warm));
    println!(
        "scrape (pool measure expired): p50 {:.1} ms, p99 {:.1} ms (target <= 100 ms)",
        ms(cold.p50),
        ms(cold.p99)
    );
    println!(
        "scrape (back to back):         p50 {:.1} ms, p99 {:.1} ms",
        ms(warm.p50),
        ms(warm.p99)
    );
    #[allow(clippy::cast_precision_loss)] // sizes far below 2^53
    let mb = size as f64 / 1e6;
    println!("size: {size} bytes ({mb:.2} MB, {series} samples; target <= 5 MB)");
    Ok(())
}

/// GET /metrics over TCP from loopback (no token needed for reads).
fn scrape(addr: SocketAddr) -> Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no http reply")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET /metrics: {head}");
    }
    if !body.ends_with("# EOF\n") {
        bail!("GET /metrics: the reply is cut short");
    }
    Ok(body.to_string())
}
