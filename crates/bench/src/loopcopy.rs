//! `ballast-bench loopcopy`: the loop-volume copy targets of issue 5.
//!
//! - a clone (`from_volume`) of a 1 GiB ext4 volume holding ~900 MiB, with
//!   the state directory on an xfs filesystem made with `reflink=1` (a 4 GiB
//!   image file in the scratch directory, attached to a loop device and
//!   mounted for the run): p50 through REST against 100 ms, and whether the
//!   clone's image shares its extents with the source (`filefrag -v`);
//! - on the scratch directory's own filesystem (no reflink: the sparse copy
//!   path), the throughput of a clone against `cp --sparse=always` of the
//!   same image file into the same directory, both with cold caches and
//!   both including an fsync of the copy; target: clone >= 80% of cp.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{ms, stats, Daemon};

const MIB: u64 = 1 << 20;

pub(super) fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An xfs filesystem with reflink on a loop-attached image file, unmounted
/// and detached on drop.
struct XfsMount {
    mnt: PathBuf,
    dev: String,
}

impl XfsMount {
    fn new(dir: &Path) -> Result<XfsMount> {
        std::fs::create_dir_all(dir)?;
        let img = dir.join("xfs.img");
        let mnt = dir.join("mnt");
        // Leftovers of an interrupted run.
        let _ = Command::new("umount")
            .arg(&mnt)
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::fs::remove_file(&img);
        std::fs::create_dir_all(&mnt)?;
        std::fs::File::create(&img)?.set_len(4 << 30)?;
        run(Command::new("mkfs.xfs")
            .args(["-q", "-f", "-m", "reflink=1"])
            .arg(&img))?;
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&img))?
            .trim()
            .to_string();
        let x = XfsMount { mnt, dev };
        run(Command::new("mount").arg(&x.dev).arg(&x.mnt))?;
        let _ = std::fs::remove_file(&img); // the loop device holds it
        Ok(x)
    }
}

impl Drop for XfsMount {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

pub(super) fn drop_caches() -> Result<()> {
    run(&mut Command::new("sync"))?;
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    Ok(())
}

/// The image file `<id>.img` of volume `name`, somewhere under `root`.
pub(super) fn image_of(d: &Daemon, root: &Path, name: &str) -> Result<PathBuf> {
    let v: serde_json::Value =
        serde_json::from_str(&d.rest("GET", &format!("/v1/volumes/{name}"), "")?)?;
    let file = format!("{}.img", v["id"].as_str().context("volume id")?);
    fn find(dir: &Path, file: &str) -> Option<PathBuf> {
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            let ft = e.file_type().ok()?;
            if ft.is_dir() {
                if let Some(f) = find(&p, file) {
                    return Some(f);
                }
            } else if ft.is_file() && e.file_name().to_string_lossy() == file {
                return Some(p);
            }
        }
        None
    }
    find(root, &file).with_context(|| format!("{file} under {}", root.display()))
}

/// Create a 1 GiB ext4 volume `name`, write `mib` MiB of random data into
/// it, unmount it.
fn make_source(d: &Daemon, name: &str, mib: u64) -> Result<()> {
    d.rest(
        "POST",
        "/v1/volumes",
        &format!(r#"{{"name":"{name}","size":"1G","fs":"ext4"}}"#),
    )?;
    let reply = d.rest("POST", &format!("/v1/volumes/{name}/mount"), "{}")?;
    let v: serde_json::Value = serde_json::from_str(&reply)?;
    let mp = PathBuf::from(v["mountpoint"].as_str().context("mountpoint")?);
    let t = Instant::now();
    run(Command::new("dd")
        .args(["if=/dev/urandom", "bs=1M", "conv=fsync", "status=none"])
        .arg(format!("count={mib}"))
        .arg(format!("of={}", mp.join("data").display())))?;
    println!(
        "  {mib} MiB written into {name} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    d.rest("POST", &format!("/v1/volumes/{name}/unmount"), "{}")?;
    Ok(())
}

fn clone(d: &Daemon, src: &str, name: &str) -> Result<Duration> {
    let t = Instant::now();
    d.rest(
        "POST",
        "/v1/volumes",
        &format!(r#"{{"name":"{name}","from_volume":"{src}"}}"#),
    )?;
    Ok(t.elapsed())
}

pub fn loopcopy(dir: &Path, n: usize) -> Result<()> {
    let dir = dir.join("loopcopy");
    reflink_clone(&dir.join("xfs"), n)?;
    sparse_vs_cp(&dir.join("ext4"), n)
}

fn reflink_clone(dir: &Path, n: usize) -> Result<()> {
    println!("== loopcopy: clone of a 1 GiB volume (900 MiB written) on xfs with reflink (n={n})");
    let xfs = XfsMount::new(dir)?;
    let root = xfs.mnt.join("bench");
    let d = Daemon::start(&root, &["--watch-interval", "1h"])?;
    make_source(&d, "v", 900)?;
    let src_img = image_of(&d, &root, "v")?;
    let mut times = Vec::new();
    let mut shared = true;
    for i in 0..n {
        let c = format!("c{i}");
        times.push(clone(&d, "v", &c)?);
        if i == 0 {
            let img = image_of(&d, &root, &c)?;
            let out = run(Command::new("filefrag").arg("-v").arg(&img))?;
            let extents = out.lines().filter(|l| l.contains("..")).count();
            let sh = out.lines().filter(|l| l.contains("shared")).count();
            println!(
                "  clone image {}: {extents} extents, {sh} shared (source {})",
                img.display(),
                src_img.display()
            );
            shared = sh > 0;
        }
        d.rest("DELETE", &format!("/v1/volumes/{c}"), "")?;
    }
    d.rest("DELETE", "/v1/volumes/v?force=true", "")?;
    drop(d);
    let s = stats(times);
    println!(
        "{:<44} p50 {:>7.2} ms   p99 {:>7.2} ms   target <= 100 ms: {}   extents shared: {}",
        "clone (from_volume) on xfs reflink, REST",
        ms(s.p50),
        ms(s.p99),
        if ms(s.p50) <= 100.0 { "met" } else { "MISSED" },
        if shared { "yes" } else { "NO" }
    );
    drop(xfs);
    Ok(())
}

fn sparse_vs_cp(dir: &Path, n: usize) -> Result<()> {
    println!(
        "== loopcopy: sparse copy (clone) vs cp --sparse=always, cold caches, with fsync (n={n})"
    );
    let root = dir.to_path_buf();
    let d = Daemon::start(&root, &["--watch-interval", "1h"])?;
    let result = (|| -> Result<()> {
        make_source(&d, "v", 900)?;
        let src = image_of(&d, &root, "v")?;
        let data_bytes = std::fs::metadata(&src)?.blocks() * 512;
        #[allow(clippy::cast_precision_loss)]
        let data_mib = data_bytes as f64 / MIB as f64;
        println!(
            "  source image {}: {data_mib:.0} MiB allocated",
            src.display()
        );
        let cp_dst = src.with_file_name("cp-copy.img");
        let (mut ours, mut cp) = (Vec::new(), Vec::new());
        for i in 0..n {
            // Alternate which side goes first.
            for side in [i % 2, 1 - i % 2] {
                drop_caches()?;
                if side == 0 {
                    let c = format!("c{i}");
                    ours.push(clone(&d, "v", &c)?);
                    d.rest("DELETE", &format!("/v1/volumes/{c}"), "")?;
                } else {
                    let t = Instant::now();
                    run(Command::new("cp")
                        .arg("--sparse=always")
                        .arg(&src)
                        .arg(&cp_dst))?;
                    run(Command::new("sync").arg(&cp_dst))?;
                    cp.push(t.elapsed());
                    std::fs::remove_file(&cp_dst)?;
                }
            }
        }
        let show = |v: &[Duration]| {
            v.iter()
                .map(|d| format!("{:.0}", ms(*d)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!("  clone runs (ms): {}", show(&ours));
        println!("  cp runs (ms):    {}", show(&cp));
        let (o, c) = (stats(ours).p50, stats(cp).p50);
        let (to, tc) = (data_mib / o.as_secs_f64(), data_mib / c.as_secs_f64());
        println!(
            "{:<44} p50 {:>7.0} ms   {to:>6.0} MiB/s",
            "clone (sparse copy), REST",
            ms(o)
        );
        println!(
            "{:<44} p50 {:>7.0} ms   {tc:>6.0} MiB/s",
            "cp --sparse=always + fsync",
            ms(c)
        );
        println!(
            "{:<44} {:.2}   target >= 0.80: {}",
            "ratio clone / cp",
            to / tc,
            if to / tc >= 0.8 { "met" } else { "MISSED" }
        );
        Ok(())
    })();
    let _ = d.rest("DELETE", "/v1/volumes/v?force=true", "");
    result
}
