//! `ballast-bench rbd`: volumes of an rbd pool on an existing Ceph cluster,
//! one daemon on the embedded store.
//!
//! - create of N 64 MiB volumes through REST (target: p50 at most 50 ms);
//! - mount of each through REST, first with the mkfs of a fresh image, then
//!   again after all were unmounted: the remount is the attach + mount
//!   figure (rbd-fuse start, loop attach, mount; target: p50 at most 1 s);
//! - one writer through the mapping: `write-mib` MiB in 4 MiB O_DIRECT
//!   writes into a file on a mounted volume, then fsync, against `rbd bench`
//!   writing the same sequentially to an image of its own, with one thread
//!   (the fair comparison for one sequential writer; target: at least 0.8)
//!   and with its default 16; fresh images on both sides, `reps` runs
//!   each, medians compared.
//!
//! Every volume, the pool and the bench's images are removed at the end,
//! and the host is checked for rbd-fuse helpers, mounts and loop devices
//! left under the scratch directory. A run that was interrupted is cleaned
//! up by the next: its daemon, restarted on its state, removes its volumes.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{ms, stats, Daemon};

const MIB: usize = 1 << 20;
/// The block of the sequential writes, on both sides.
const BLOCK: usize = 4 * MIB;
/// The daemon's name for the bench's pool.
const POOL: &str = "ceph";

pub struct Opts<'a> {
    pub ceph_conf: &'a Path,
    pub ceph_pool: &'a str,
    pub volumes: usize,
    pub write_mib: u64,
    pub reps: usize,
}

pub fn rbd_bench(dir: &Path, o: &Opts) -> Result<()> {
    if o.volumes == 0 {
        bail!("--volumes must be at least 1");
    }
    if o.write_mib == 0 || !o.write_mib.is_multiple_of(4) {
        bail!("--write-mib must be a positive multiple of 4 (the writes are 4 MiB)");
    }
    let conf = std::fs::canonicalize(o.ceph_conf)
        .with_context(|| format!("--ceph-conf {}", o.ceph_conf.display()))?;
    let conf = conf.to_str().context("utf-8 path")?.to_string();
    println!(
        "== rbd: {} volumes of 64M in ceph pool {} ({conf}); {} MiB sequential write",
        o.volumes, o.ceph_pool, o.write_mib
    );
    let dir = dir.join("rbd");
    // An interrupted run left its volumes' images in the cluster: its
    // daemon, started again on its state, removes them.
    if dir.join("state").exists() {
        if let Ok(old) = Daemon::restart(&dir, &[]) {
            remove_all(&old);
        }
    }
    // And what is still left must go before the scratch directory is
    // removed (through a live rbd-fuse mount that would delete the image).
    let swept = Leftovers::find(&dir).sweep();
    if !swept.is_empty() {
        eprintln!("  removed leftovers of an earlier run: {swept}");
    }
    let d = Daemon::start(&dir, &[])?;
    let t = Instant::now();
    d.cli(&[
        "pool",
        "create",
        POOL,
        "--driver",
        "rbd",
        "--ceph-conf",
        &conf,
        "--ceph-pool",
        o.ceph_pool,
    ])?;
    println!(
        "pool create (connect, check the ceph pool): {:.0} ms",
        ms(t.elapsed())
    );
    let ceph = Ceph {
        conf: &conf,
        pool: o.ceph_pool,
    };
    let mut ids = Vec::new();
    let result = run(&d, &ceph, o, &mut ids);
    // Clean up whatever happened.
    remove_all(&d);
    drop(d);
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
    match ceph.images() {
        Ok(images) => {
            let ours: Vec<&String> = images
                .iter()
                .filter(|i| ids.contains(i) || i.starts_with(&bench_image_prefix()))
                .collect();
            if !ours.is_empty() {
                println!(
                    "WARNING: images left in ceph pool {}: {ours:?}",
                    o.ceph_pool
                );
            }
        }
        Err(e) => println!("WARNING: could not list ceph pool {}: {e:#}", o.ceph_pool),
    }
    result
}

/// Unmount and remove every volume of the bench's pool, then the pool.
fn remove_all(d: &Daemon) {
    if let Ok(out) = d.cli(&["-o", "json", "volume", "ls"]) {
        let list: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        for v in list.as_array().into_iter().flatten() {
            if v["pool"].as_str() == Some(POOL) {
                let name = v["name"].as_str().unwrap_or_default();
                let _ = d.cli(&["volume", "unmount", name]);
                if let Err(e) = d.cli(&["volume", "rm", "--force", name]) {
                    eprintln!("WARNING: volume {name} not removed: {e:#}");
                }
            }
        }
    }
    if d.rest("GET", &format!("/v1/pools/{POOL}"), "").is_ok() {
        if let Err(e) = d.cli(&["pool", "rm", POOL]) {
            eprintln!("WARNING: pool {POOL} not removed: {e:#}");
        }
    }
}

fn run(d: &Daemon, ceph: &Ceph, o: &Opts, ids: &mut Vec<String>) -> Result<()> {
    let names: Vec<String> = (0..o.volumes).map(|i| format!("rbd{i:03}")).collect();
    let mut create = Vec::new();
    for name in &names {
        let t = Instant::now();
        let reply = d.rest(
            "POST",
            "/v1/volumes",
            &format!(r#"{{"name":"{name}","size":"64M","pool":"{POOL}"}}"#),
        )?;
        create.push(t.elapsed());
        ids.push(id_of(&reply)?);
    }
    let create = stats(create);
    line("create 64M (REST)", &create);

    let first = mount_all(d, &names)?;
    line("first mount, with mkfs (REST)", &first);
    let unmount = unmount_all(d, &names)?;
    line("unmount (REST)", &unmount);
    let remount = mount_all(d, &names)?;
    line("attach+mount: remount (REST)", &remount);
    unmount_all(d, &names)?;
    let mut rm = Vec::new();
    for name in &names {
        let t = Instant::now();
        d.rest("DELETE", &format!("/v1/volumes/{name}"), "")?;
        rm.push(t.elapsed());
    }
    let rm = stats(rm);
    line("rm of an unmounted volume (REST)", &rm);

    // Sequential write, fresh image on each side each time: `reps` rounds,
    // alternating whether the mapping or the one-thread baseline goes
    // first; medians compared (one run is a fraction of a second).
    let size_mib = o.write_mib + 128;
    let (mut mapped, mut base1, mut base16) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..o.reps {
        let mapping_first = rep % 2 == 1;
        if mapping_first {
            mapped.push(mapped_write(d, o, size_mib, rep, ids)?);
        }
        base1.push(ceph.bench(1, o.write_mib, size_mib, rep)?);
        if !mapping_first {
            mapped.push(mapped_write(d, o, size_mib, rep, ids)?);
        }
        base16.push(ceph.bench(16, o.write_mib, size_mib, rep)?);
    }
    let (mapped, base1, base16) = (Figure::of(mapped), Figure::of(base1), Figure::of(base16));

    println!(
        "== rbd summary (ceph pool {}, {} volumes, {} MiB written)",
        ceph.pool, o.volumes, o.write_mib
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "{:<40} {:>9} {:>9}",
        "operation (one at a time, REST)", "p50 ms", "p99 ms"
    );
    for (label, s, target) in [
        ("create 64M", &create, Some(50.0)),
        ("first mount (rbd-fuse, loop, mkfs)", &first, None),
        ("attach+mount (remount)", &remount, Some(1000.0)),
        ("unmount (umount, loop, rbd-fuse)", &unmount, None),
        ("rm", &rm, None),
    ] {
        let target = target.map_or(String::new(), |t| {
            format!("   target p50 <= {t:.0} ms: {}", verdict(ms(s.p50) <= t))
        });
        println!("{label:<40} {:>9.1} {:>9.1}{target}", ms(s.p50), ms(s.p99));
    }
    println!(
        "sequential write of {} MiB in 4 MiB writes, median of {} runs (range):",
        o.write_mib, o.reps
    );
    println!(
        "  {:<44} {mapped}",
        "mapping: O_DIRECT + fsync, file on ext4"
    );
    let ratio1 = mapped.median / base1.median;
    println!(
        "  {:<44} {base1}   mapping / this {ratio1:.2}   target >= 0.80: {} (the fair comparison: one writer, one 4 MiB write in flight)",
        "rbd bench --io-threads 1",
        verdict(ratio1 >= 0.8)
    );
    println!(
        "  {:<44} {base16}   mapping / this {:.2}   (for information: 16 writes in flight against one)",
        "rbd bench --io-threads 16",
        mapped.median / base16.median
    );
    Ok(())
}

/// One fresh volume of `size_mib`, mounted, `write_mib` written through
/// it, unmounted and removed: MiB/s.
fn mapped_write(
    d: &Daemon,
    o: &Opts,
    size_mib: u64,
    rep: usize,
    ids: &mut Vec<String>,
) -> Result<f64> {
    let name = format!("rbdseq{rep}");
    let reply = d.rest(
        "POST",
        "/v1/volumes",
        &format!(r#"{{"name":"{name}","size":"{size_mib}M","pool":"{POOL}"}}"#),
    )?;
    ids.push(id_of(&reply)?);
    let reply = d.rest("POST", &format!("/v1/volumes/{name}/mount"), "{}")?;
    let mp = mountpoint_of(&reply)?;
    let (mib_s, secs) = direct_write(&mp.join("seq"), o.write_mib)?;
    println!(
        "mapping, run {}: {} MiB in 4 MiB O_DIRECT writes + fsync in {secs:.3} s: {mib_s:.1} MiB/s",
        rep + 1,
        o.write_mib
    );
    d.rest("POST", &format!("/v1/volumes/{name}/unmount"), "{}")?;
    d.rest("DELETE", &format!("/v1/volumes/{name}"), "")?;
    Ok(mib_s)
}

/// MiB/s over runs.
struct Figure {
    median: f64,
    lo: f64,
    hi: f64,
}

impl Figure {
    fn of(v: Vec<f64>) -> Figure {
        Figure {
            lo: v.iter().copied().fold(f64::INFINITY, f64::min),
            hi: v.iter().copied().fold(0.0, f64::max),
            median: super::median(v),
        }
    }
}

impl std::fmt::Display for Figure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7.1} MiB/s {:>12}",
            self.median,
            format!("({:.0}-{:.0})", self.lo, self.hi)
        )
    }
}

fn line(what: &str, s: &super::Stats) {
    println!(
        "{what:<40} p50 {:>8.1} ms   p99 {:>8.1} ms",
        ms(s.p50),
        ms(s.p99)
    );
}

fn id_of(reply: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(reply)?;
    Ok(v["id"].as_str().context("the reply has no id")?.to_string())
}

fn mountpoint_of(reply: &str) -> Result<PathBuf> {
    let v: serde_json::Value = serde_json::from_str(reply)?;
    Ok(PathBuf::from(
        v["mountpoint"]
            .as_str()
            .context("the reply has no mountpoint")?,
    ))
}

fn mount_all(d: &Daemon, names: &[String]) -> Result<super::Stats> {
    let mut v = Vec::new();
    for name in names {
        let t = Instant::now();
        let reply = d.rest("POST", &format!("/v1/volumes/{name}/mount"), "{}")?;
        v.push(t.elapsed());
        mountpoint_of(&reply)?;
    }
    Ok(stats(v))
}

fn unmount_all(d: &Daemon, names: &[String]) -> Result<super::Stats> {
    let mut v = Vec::new();
    for name in names {
        let t = Instant::now();
        d.rest("POST", &format!("/v1/volumes/{name}/unmount"), "{}")?;
        v.push(t.elapsed());
    }
    Ok(stats(v))
}

/// Write `mib` MiB of incompressible data into a new file at `path` in
/// 4 MiB O_DIRECT writes, then fsync; MiB/s from the first write to the
/// fsync's return, and the seconds that took.
fn direct_write(path: &Path, mib: u64) -> Result<(f64, f64)> {
    // O_DIRECT wants an aligned buffer: a 4 KiB-aligned slice of a larger one.
    let mut raw = vec![0u8; BLOCK + 4096];
    let off = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[off..off + BLOCK];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .with_context(|| format!("open {} with O_DIRECT", path.display()))?;
    let blocks = mib * MIB as u64 / BLOCK as u64;
    let t = Instant::now();
    for _ in 0..blocks {
        f.write_all(buf)?;
    }
    f.sync_all()?;
    let secs = t.elapsed().as_secs_f64();
    Ok(((blocks * (BLOCK / MIB) as u64) as f64 / secs, secs))
}

fn bench_image_prefix() -> String {
    format!("ballast-bench-{}-", std::process::id())
}

/// The cluster, through the `rbd` tool.
pub(crate) struct Ceph<'a> {
    pub(crate) conf: &'a str,
    pub(crate) pool: &'a str,
}

impl Ceph<'_> {
    pub(crate) fn rbd(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("rbd")
            .args(["-c", self.conf])
            .args(args)
            .output()
            .context("running rbd (Debian ceph-common)")?;
        if !out.status.success() {
            bail!(
                "rbd {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    pub(crate) fn images(&self) -> Result<Vec<String>> {
        Ok(self
            .rbd(&["ls", self.pool])?
            .lines()
            .map(String::from)
            .collect())
    }

    /// `rbd bench` writing `mib` MiB sequentially in 4 MiB writes with
    /// `threads` in flight, to a fresh image of `size_mib` made for it:
    /// MiB/s.
    fn bench(&self, threads: u32, mib: u64, size_mib: u64, rep: usize) -> Result<f64> {
        let image = format!("{}/{}t{threads}-{rep}", self.pool, bench_image_prefix());
        self.rbd(&["create", "--size", &format!("{size_mib}M"), &image])?;
        let out = self.rbd(&[
            "bench",
            "--io-type",
            "write",
            "--io-size",
            "4M",
            "--io-threads",
            &threads.to_string(),
            "--io-total",
            &format!("{mib}M"),
            "--io-pattern",
            "seq",
            &image,
        ]);
        let removed = self.rbd(&["rm", "--no-progress", &image]);
        let out = out?;
        removed?;
        let last = out
            .lines()
            .find(|l| l.trim_start().starts_with("elapsed:"))
            .with_context(|| format!("rbd bench printed no elapsed: line:\n{out}"))?
            .trim();
        println!("rbd bench --io-threads {threads}, run {}: {last}", rep + 1);
        // ops/sec is worked out from the exact elapsed time (printed in
        // whole seconds); each op is one 4 MiB write.
        let mut words = last.split_whitespace();
        let ops_s: f64 = words
            .by_ref()
            .skip_while(|w| *w != "ops/sec:")
            .nth(1)
            .context("no ops/sec: in the line")?
            .parse()?;
        Ok(ops_s * (BLOCK / MIB) as f64)
    }
}

/// rbd-fuse helpers, mounts and loop devices under the scratch directory.
#[derive(Default)]
pub(crate) struct Leftovers {
    pub(crate) helpers: Vec<u32>,
    /// Deepest first.
    mounts: Vec<String>,
    loops: Vec<String>,
}

impl Leftovers {
    pub(crate) fn find(dir: &Path) -> Leftovers {
        let under = |p: &str| Path::new(p).starts_with(dir);
        let mut l = Leftovers::default();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let argv: Vec<String> = cmdline
                .split(|&b| b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if argv.first().is_some_and(|a| a.ends_with("rbd-fuse"))
                && argv.iter().any(|a| under(a))
            {
                l.helpers.push(pid);
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        l.mounts = mounts
            .lines()
            .filter_map(|m| m.split_whitespace().nth(1))
            .filter(|t| under(t))
            .map(String::from)
            .collect();
        l.mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for e in std::fs::read_dir("/sys/block")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("loop") {
                continue;
            }
            let backing =
                std::fs::read_to_string(e.path().join("loop/backing_file")).unwrap_or_default();
            if under(backing.trim()) {
                l.loops.push(format!("/dev/{name}"));
            }
        }
        l
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.helpers.is_empty() && self.mounts.is_empty() && self.loops.is_empty()
    }

    /// Unmount (lazily), detach, kill; what there was.
    pub(crate) fn sweep(self) -> Self {
        for m in &self.mounts {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        for l in &self.loops {
            let _ = Command::new("losetup").args(["-d", l]).status();
        }
        for pid in &self.helpers {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        self
    }
}

impl std::fmt::Display for Leftovers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if !self.helpers.is_empty() {
            parts.push(format!("rbd-fuse pids {:?}", self.helpers));
        }
        if !self.mounts.is_empty() {
            parts.push(format!("mounts {:?}", self.mounts));
        }
        if !self.loops.is_empty() {
            parts.push(format!("loop devices {:?}", self.loops));
        }
        write!(f, "{}", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leftovers_print_what_there_is() {
        let l = Leftovers {
            helpers: vec![7],
            mounts: vec!["/a/b".into()],
            loops: Vec::new(),
        };
        assert_eq!(l.to_string(), r#"rbd-fuse pids [7], mounts ["/a/b"]"#);
        assert!(Leftovers::default().is_empty());
    }
}
