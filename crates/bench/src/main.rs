//! `ballast-bench`: the figures issue 2 asks for, printed with their ratios
//! against the named baselines. Runs the release `ballast` binary next to
//! this one against a scratch state directory; needs root and loop devices.
//!
//! - `lifecycle`: create 1 GiB ext4 → mount → write 4 KiB + fsync → unmount
//!   → rm, through the REST API, through the CLI, and as a plain shell
//!   script (truncate, losetup, mkfs.ext4, mount, umount, losetup -d, rm).
//! - `scale`: `volume ls` latency and daemon RSS at N volumes.
//! - `fio`: 4 KiB random and 1 MiB sequential writes on a loop volume
//!   against the same on the backing filesystem, each file laid out before
//!   timing; plus, for information, 4 KiB random writes into a fresh file
//!   on the fresh (sparse) volume.
//! - `metrics`: time and size of one `/metrics` scrape at N volumes, some
//!   mounted (see `metrics.rs`).
//! - `claims`: acquire/release pairs on one claim group through REST, p99
//!   per operation.
//! - `btrfs`: snapshot and clone latency with 0.9 and 2.4 GiB written, and
//!   btrfs volume create + mount (see `btrfs.rs`).
//! - `dashboard`: the web dashboard's first render at N volumes in headless
//!   Chromium (see `dashboard.rs`).
//! - `cluster`: the store on etcd against redb (see `cluster.rs`).
//! - `placement`: creates placed across three nodes (see `placement.rs`).
//! - `rbd`: rbd volumes on an existing Ceph cluster: create, mount, and a
//!   sequential write against `rbd bench` (see `rbd.rs`).
//! - `backup`: full and incremental backups of a loop volume to a local
//!   RADOS Gateway against a plain upload of the same bytes (see
//!   `backup.rs`).
//! - `move`: a loop and a btrfs volume moved between two pools of one
//!   daemon against `cp --sparse=always` + fsync and `btrfs send | btrfs
//!   receive` + sync (see `moves.rs`).
//! - `rbd-failover`: an rbd volume following its writer from a hung node
//!   (SIGSTOP) to another, fence and unfence timed (see `rbd_failover.rs`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod backup;
mod btrfs;
mod cluster;
mod dashboard;
mod harness;
mod loopcopy;
mod metrics;
mod moves;
mod placement;
mod rbd;
mod rbd_failover;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks for ballast")]
struct Args {
    /// Scratch directory (on the filesystem to measure)
    #[arg(long, default_value = "/var/tmp/ballast-bench")]
    dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lifecycle latency: REST, CLI and shell script
    Lifecycle {
        #[arg(long, default_value_t = 30)]
        n: usize,
    },
    /// `volume ls` latency and daemon RSS at many volumes
    Scale {
        #[arg(long, default_value_t = 10_000)]
        volumes: usize,
    },
    /// Docker plugin: `docker volume ls`, `docker run`, plugin call latency
    Docker {
        #[arg(long, default_value_t = 1000)]
        volumes: usize,
    },
    /// CSI: ListVolumes paging at many volumes, NodePublish latency
    Csi {
        #[arg(long, default_value_t = 10_000)]
        volumes: usize,
    },
    /// fio on a loop volume against the backing filesystem
    Fio {
        #[arg(long, default_value_t = 15)]
        seconds: u32,
        /// Timed runs per side and workload (alternating which side goes
        /// first); the medians are compared
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// Claims: acquire/release pairs on one group through REST
    Claims {
        #[arg(long, default_value_t = 1000)]
        n: usize,
        /// Other claims held in the group meanwhile
        #[arg(long, default_value_t = 0)]
        held: usize,
    },
    /// btrfs: snapshot and clone latency by data written, create + mount
    Btrfs {
        #[arg(long, default_value_t = 20)]
        n: usize,
    },
    /// /metrics: scrape time and size at many volumes, some mounted
    Metrics {
        #[arg(long, default_value_t = 10_000)]
        volumes: usize,
        #[arg(long, default_value_t = 100)]
        mounted: usize,
    },
    /// Web dashboard: first render at many volumes in headless Chromium
    Dashboard {
        #[arg(long, default_value_t = 1000)]
        volumes: usize,
        /// Page loads to time
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// Loop volume copies: reflink clone on xfs, sparse copy vs cp
    Loopcopy {
        #[arg(long, default_value_t = 5)]
        n: usize,
    },
    /// Moves between two pools (loop, btrfs) against cp and btrfs
    /// send/receive
    Move {
        /// Timed runs per side (alternating which side goes first); the
        /// medians are compared
        #[arg(long, default_value_t = 5)]
        n: usize,
        /// Only the loop or only the btrfs figures
        #[arg(long, value_enum, default_value_t = moves::Which::Both)]
        only: moves::Which,
    },
    /// The store on etcd against redb: lifecycle, `volume ls` and start at
    /// many volumes, CAS contention on one record
    Cluster {
        #[arg(long, default_value_t = 20)]
        n: usize,
        #[arg(long, default_value_t = 10_000)]
        volumes: usize,
        #[arg(long, default_value_t = 32)]
        clients: usize,
    },
    /// Controller failover: kill -9 the controller's daemon, time until
    /// another names itself
    Failover {
        #[arg(long, default_value_t = 10)]
        kills: usize,
        #[arg(long, default_value = "1s")]
        ttl: String,
    },
    /// Placement across three nodes: a create placed on another node vs
    /// on the asking one; `volume ls` at many volumes over the three
    Placement {
        #[arg(long, default_value_t = 30)]
        n: usize,
        #[arg(long, default_value_t = 30_000)]
        volumes: usize,
    },
    /// rbd pool on an existing Ceph cluster: create and mount latency,
    /// sequential write through the mapping against `rbd bench`
    Rbd {
        /// The cluster's ceph.conf; its [client] section names the admin
        /// keyring
        #[arg(long, value_name = "PATH")]
        ceph_conf: PathBuf,
        /// The RADOS pool holding the images
        #[arg(long, value_name = "NAME", default_value = "rbd")]
        ceph_pool: String,
        /// Volumes to create and mount
        #[arg(long, default_value_t = 20)]
        volumes: usize,
        /// MiB to write sequentially (a multiple of 4)
        #[arg(long, value_name = "M", default_value_t = 256)]
        write_mib: u64,
        /// Sequential write runs per side (alternating which side goes
        /// first); the medians are compared
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// Full and incremental backups of a 1 GiB loop volume to a local
    /// RADOS Gateway (started for the run), against a plain upload
    Backup {
        /// MiB of random data in the volume (at most 900: what its ext4
        /// holds)
        #[arg(long, default_value_t = 900)]
        data_mib: u64,
        /// MiB changed before the incremental backup
        #[arg(long, default_value_t = 10)]
        changed_mib: u64,
        #[arg(long, default_value_t = 3)]
        reps: usize,
    },
    /// rbd failover between two nodes on one etcd: SIGSTOP the holder's
    /// daemon, time until the other has the volume mounted and written;
    /// SIGCONT, time until the old holder is unfenced
    RbdFailover {
        /// The cluster's ceph.conf; its [client] section names the admin
        /// keyring
        #[arg(long, value_name = "PATH")]
        ceph_conf: PathBuf,
        /// The RADOS pool holding the image
        #[arg(long, value_name = "NAME", default_value = "rbd")]
        ceph_pool: String,
        /// Failovers (the roles swap each time)
        #[arg(long, default_value_t = 5)]
        kills: usize,
        /// The nodes' `--node-ttl`
        #[arg(long, default_value = "2s")]
        ttl: String,
    },
    /// Everything, with the issue's defaults
    All,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !nix_is_root() {
        bail!("ballast-bench needs root (loop devices and mounts)");
    }
    match args.cmd {
        Cmd::Lifecycle { n } => lifecycle(&args.dir, n),
        Cmd::Scale { volumes } => scale(&args.dir, volumes),
        Cmd::Fio { seconds, reps } => fio(&args.dir, seconds, reps),
        Cmd::Docker { volumes } => docker(&args.dir, volumes),
        Cmd::Csi { volumes } => csi_bench(&args.dir, volumes),
        Cmd::Metrics { volumes, mounted } => metrics::metrics(&args.dir, volumes, mounted),
        Cmd::Claims { n, held } => claims_bench(&args.dir, n, held),
        Cmd::Btrfs { n } => btrfs::btrfs_bench(&args.dir, n),
        Cmd::Dashboard { volumes, runs } => dashboard::dashboard(&args.dir, volumes, runs),
        Cmd::Loopcopy { n } => loopcopy::loopcopy(&args.dir, n),
        Cmd::Move { n, only } => moves::move_bench(&args.dir, n.max(1), only),
        Cmd::Cluster {
            n,
            volumes,
            clients,
        } => cluster::cluster_bench(&args.dir, n, volumes, clients),
        Cmd::Failover { kills, ttl } => cluster::failover_bench(&args.dir, kills, &ttl),
        Cmd::Placement { n, volumes } => placement::placement_bench(&args.dir, n, volumes),
        Cmd::Rbd {
            ceph_conf,
            ceph_pool,
            volumes,
            write_mib,
            reps,
        } => rbd::rbd_bench(
            &args.dir,
            &rbd::Opts {
                ceph_conf: &ceph_conf,
                ceph_pool: &ceph_pool,
                volumes,
                write_mib,
                reps: reps.max(1),
            },
        ),
        Cmd::Backup {
            data_mib,
            changed_mib,
            reps,
        } => backup::run(
            &args.dir,
            &backup::Opts {
                data_mib: data_mib.min(900),
                changed_mib,
                reps: reps.max(1),
            },
        ),
        Cmd::RbdFailover {
            ceph_conf,
            ceph_pool,
            kills,
            ttl,
        } => rbd_failover::rbd_failover_bench(
            &args.dir,
            &rbd_failover::Opts {
                ceph_conf: &ceph_conf,
                ceph_pool: &ceph_pool,
                kills,
                ttl: &ttl,
            },
        ),
        Cmd::All => {
            lifecycle(&args.dir, 30)?;
            scale(&args.dir, 10_000)?;
            docker(&args.dir, 1000)?;
            csi_bench(&args.dir, 10_000)?;
            metrics::metrics(&args.dir, 10_000, 100)?;
            claims_bench(&args.dir, 1000, 0)?;
            dashboard::dashboard(&args.dir, 1000, 5)?;
            fio(&args.dir, 15, 3)
        }
    }
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn ballast_bin() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("ballast");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p ballast`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A daemon on a scratch state directory, stopped on drop.
struct Daemon {
    child: Child,
    socket: PathBuf,
    run: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, extra: &[&str]) -> Result<Daemon> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        Self::restart(dir, extra)
    }

    /// Start on the state a daemon before left in `dir`.
    fn restart(dir: &Path, extra: &[&str]) -> Result<Daemon> {
        let run = dir.join("run");
        let socket = run.join("api.sock");
        let child = Command::new(ballast_bin()?)
            .args(["serve", "--state-dir"])
            .arg(dir.join("state"))
            .arg("--run-dir")
            .arg(&run)
            .args(extra)
            // Not the default 127.0.0.1:7420: a port of its own.
            .args(
                (!extra.contains(&"--listen"))
                    .then_some(["--listen", "127.0.0.1:0"])
                    .into_iter()
                    .flatten(),
            )
            .args((!extra.contains(&"--docker-plugin-name")).then_some("--no-docker"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("daemon.log"))?)
            .spawn()?;
        let d = Daemon { child, socket, run };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(http(&d.socket, "GET", "/v1/version", ""), Ok((200, _))) {
            if Instant::now() > deadline {
                bail!(
                    "daemon did not start; see {}",
                    dir.join("daemon.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    fn rss_kib(&self) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(ballast_bin()?)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "ballast {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    fn rest(&self, method: &str, path: &str, body: &str) -> Result<String> {
        let (status, body) = http(&self.socket, method, path, body)?;
        if !(200..300).contains(&status) {
            bail!("{method} {path}: {status} {body}");
        }
        Ok(body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request on a unix socket: (status, body).
fn http(socket: &Path, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: l\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, rest) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = if head.to_ascii_lowercase().contains("chunked") {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn write_4k_fsync(dir: &Path) -> Result<()> {
    let mut f = std::fs::File::create(dir.join("f"))?;
    f.write_all(&[7u8; 4096])?;
    f.sync_all()?;
    Ok(())
}

struct Stats {
    p50: Duration,
    p99: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i]
    };
    Stats {
        p50: at(0.5),
        p99: at(0.99),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

const SHELL_LIFECYCLE: &str = r#"set -e
img="$1/img"; mnt="$1/mnt"
truncate -s 1G "$img"
dev=$(losetup -f --show --direct-io=on "$img")
mkfs.ext4 -q -E lazy_itable_init=1,lazy_journal_init=1,nodiscard "$dev"
mkdir -p "$mnt"
mount "$dev" "$mnt"
dd if=/dev/zero of="$mnt/f" bs=4k count=1 conv=fsync status=none
umount "$mnt"
losetup -d "$dev"
rm "$img"
"#;

/// One lifecycle through REST: create 1 GiB ext4, mount, write 4 KiB +
/// fsync, unmount, rm; how long it took.
fn rest_round(d: &Daemon, name: &str) -> Result<Duration> {
    let t = Instant::now();
    d.rest(
        "POST",
        "/v1/volumes",
        &format!(r#"{{"name":"{name}","size":"1G","fs":"ext4"}}"#),
    )?;
    let reply = d.rest("POST", &format!("/v1/volumes/{name}/mount"), "{}")?;
    let v: serde_json::Value = serde_json::from_str(&reply)?;
    let mp = PathBuf::from(v["mountpoint"].as_str().context("mountpoint")?);
    write_4k_fsync(&mp)?;
    d.rest("POST", &format!("/v1/volumes/{name}/unmount"), "{}")?;
    d.rest("DELETE", &format!("/v1/volumes/{name}"), "")?;
    Ok(t.elapsed())
}

fn lifecycle(dir: &Path, n: usize) -> Result<()> {
    println!(
        "== lifecycle: create 1G ext4 -> mount -> write 4 KiB + fsync -> unmount -> rm (n={n})"
    );
    let d = Daemon::start(dir, &[])?;
    let mut rest = Vec::new();
    let mut cli = Vec::new();
    let mut shell = Vec::new();
    let shell_dir = dir.join("shell");
    std::fs::create_dir_all(&shell_dir)?;
    // Interleave the three so drift in the machine hits them alike.
    for i in 0..n {
        rest.push(rest_round(&d, &format!("r{i}"))?);

        let name = format!("c{i}");
        let t = Instant::now();
        d.cli(&["volume", "create", &name, "--size", "1G", "--fs", "ext4"])?;
        let mp = PathBuf::from(d.cli(&["volume", "mount", &name])?.trim());
        write_4k_fsync(&mp)?;
        d.cli(&["volume", "unmount", &name])?;
        d.cli(&["volume", "rm", &name])?;
        cli.push(t.elapsed());

        let t = Instant::now();
        let st = Command::new("bash")
            .args(["-c", SHELL_LIFECYCLE, "lifecycle"])
            .arg(&shell_dir)
            .status()?;
        if !st.success() {
            bail!("shell lifecycle failed");
        }
        shell.push(t.elapsed());
    }
    let (r, c, s) = (stats(rest), stats(cli), stats(shell));
    println!(
        "{:<8} {:>10} {:>10} {:>14}",
        "path", "p50 ms", "p99 ms", "p50 vs shell"
    );
    for (label, st) in [("rest", &r), ("cli", &c), ("shell", &s)] {
        println!(
            "{:<8} {:>10.1} {:>10.1} {:>13.2}x",
            label,
            ms(st.p50),
            ms(st.p99),
            ms(st.p50) / ms(s.p50)
        );
    }
    println!(
        "targets: rest p50 <= 1.00x shell ({:.2}x), cli p50 <= 1.25x shell ({:.2}x)",
        ms(r.p50) / ms(s.p50),
        ms(c.p50) / ms(s.p50)
    );
    Ok(())
}

fn scale(dir: &Path, volumes: usize) -> Result<()> {
    println!("== scale: {volumes} volumes of 64 MiB (overcommitted: sparse images)");
    let d = Daemon::start(dir, &["--overcommit-ratio", "100"])?;
    let rss_empty = d.rss_kib();
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
    let mut rest = Vec::new();
    let mut cli = Vec::new();
    let mut count = 0;
    for _ in 0..20 {
        let t = Instant::now();
        let body = d.rest("GET", "/v1/volumes", "")?;
        rest.push(t.elapsed());
        count = serde_json::from_str::<serde_json::Value>(&body)?
            .as_array()
            .map_or(0, Vec::len);
        let t = Instant::now();
        d.cli(&["-o", "json", "volume", "ls"])?;
        cli.push(t.elapsed());
    }
    if count != volumes {
        bail!("listed {count} volumes, expected {volumes}");
    }
    let (r, c) = (stats(rest), stats(cli));
    let rss = d.rss_kib();
    println!(
        "create: {volumes} volumes in {create_s:.1} s ({:.2} ms each)",
        create_s * 1000.0 / volumes as f64
    );
    println!(
        "volume ls (REST): p50 {:.1} ms, p99 {:.1} ms (target <= 50 ms)",
        ms(r.p50),
        ms(r.p99)
    );
    println!(
        "volume ls (CLI, -o json): p50 {:.1} ms, p99 {:.1} ms",
        ms(c.p50),
        ms(c.p99)
    );
    println!(
        "daemon RSS: {:.1} MiB at {volumes} volumes ({:.1} MiB empty; target <= 150 MiB)",
        rss as f64 / 1024.0,
        rss_empty as f64 / 1024.0
    );
    Ok(())
}

/// fio's arguments common to the layout pass and the timed runs.
fn fio_command(target: &Path, rw: &str, bs: &str) -> Command {
    let mut cmd = Command::new("fio");
    cmd.args([
        "--name=b",
        &format!("--filename={}", target.display()),
        &format!("--rw={rw}"),
        &format!("--bs={bs}"),
        "--size=1G",
        "--direct=1",
        "--ioengine=libaio",
        "--iodepth=32",
        "--end_fsync=1",
        "--output-format=json",
    ]);
    cmd
}

fn fio_output(mut cmd: Command) -> Result<serde_json::Value> {
    let out = cmd.output().context("running fio (apt-get install fio)")?;
    if !out.status.success() {
        bail!("fio: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Write all of `target` once, untimed. fio's own layout of a new file is
/// only fallocate (unwritten extents), so without this the timed run would
/// measure first writes: unwritten-extent conversion on the backing side,
/// and on the volume side that plus block allocation in the sparse image.
fn fio_layout(target: &Path) -> Result<()> {
    fio_output(fio_command(target, "write", "1M")).map(drop)
}

/// One timed fio run on `target`: (bytes/s, IOPS). Leaves the file.
fn fio_run(target: &Path, rw: &str, bs: &str, seconds: u32) -> Result<(f64, f64)> {
    let mut cmd = fio_command(target, rw, bs);
    cmd.args(["--time_based", &format!("--runtime={seconds}")]);
    let v = fio_output(cmd)?;
    let w = &v["jobs"][0]["write"];
    let bw = w["bw_bytes"].as_f64().unwrap_or(0.0);
    let iops = w["iops"].as_f64().unwrap_or(0.0);
    Ok((bw, iops))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn mib(bytes_per_s: f64) -> f64 {
    bytes_per_s / 1048576.0
}

fn fio(dir: &Path, seconds: u32, reps: usize) -> Result<()> {
    let reps = reps.max(1);
    println!(
        "== fio: loop volume vs backing filesystem ({seconds} s each, direct I/O, iodepth 32)"
    );
    let d = Daemon::start(dir, &[])?;
    d.cli(&["volume", "create", "fio", "--size", "2G"])?;
    let mp = PathBuf::from(d.cli(&["volume", "mount", "fio"])?.trim());
    let backing = dir.join("backing");
    std::fs::create_dir_all(&backing)?;
    let backing_file = backing.join("f");
    let volume_file = mp.join("f");

    // First writes, while the volume's image is still all holes: every block
    // the volume writes is allocated in the backing filesystem too. Shown for
    // information: this is the price of sparse images, paid once per block.
    let (bw_b, _) = fio_run(&backing_file, "randwrite", "4k", seconds)?;
    std::fs::remove_file(&backing_file)?;
    let (bw_v, _) = fio_run(&volume_file, "randwrite", "4k", seconds)?;
    std::fs::remove_file(&volume_file)?;
    println!(
        "{:<24} backing {:>9.1} MiB/s | volume {:>9.1} MiB/s | ratio {:.2} (first writes into a fresh volume, not the target)",
        "4 KiB random, fresh file",
        mib(bw_b),
        mib(bw_v),
        bw_v / bw_b
    );

    // The target: the same fio on a laid-out file on each side, alternating
    // which side runs first, medians of `reps` runs.
    println!("laid out before timing, median of {reps} runs per side:");
    for (label, rw, bs) in [
        ("4 KiB random write", "randwrite", "4k"),
        ("1 MiB sequential write", "write", "1M"),
    ] {
        let mut runs_b = Vec::new();
        let mut runs_v = Vec::new();
        for rep in 0..reps {
            for volume_side in [rep % 2 == 1, rep % 2 == 0] {
                let target = if volume_side {
                    &volume_file
                } else {
                    &backing_file
                };
                fio_layout(target)?;
                let run = fio_run(target, rw, bs, seconds)?;
                std::fs::remove_file(target)?;
                if volume_side {
                    runs_v.push(run);
                } else {
                    runs_b.push(run);
                }
            }
        }
        let range = |runs: &[(f64, f64)]| {
            let bws: Vec<f64> = runs.iter().map(|r| mib(r.0)).collect();
            let lo = bws.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = bws.iter().copied().fold(0.0, f64::max);
            format!("{lo:.0}-{hi:.0}")
        };
        let bw_b = median(runs_b.iter().map(|r| r.0).collect());
        let bw_v = median(runs_v.iter().map(|r| r.0).collect());
        println!(
            "{label:<24} backing {:>9.1} MiB/s {:>9.0} IOPS ({:>9}) | volume {:>9.1} MiB/s {:>9.0} IOPS ({:>9}) | ratio {:.2} (target >= 0.90)",
            mib(bw_b),
            median(runs_b.iter().map(|r| r.1).collect()),
            range(&runs_b),
            mib(bw_v),
            median(runs_v.iter().map(|r| r.1).collect()),
            range(&runs_v),
            bw_v / bw_b
        );
    }
    d.cli(&["volume", "unmount", "fio"])?;
    d.cli(&["volume", "rm", "fio"])?;
    Ok(())
}

const BENCH_IMAGE: &str = "ballast-test-busybox:latest";

/// Make the busybox test image from Debian's busybox-static, once.
fn ensure_image(dir: &Path) -> Result<()> {
    let have = Command::new("docker")
        .args(["image", "inspect", BENCH_IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if have.success() {
        return Ok(());
    }
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .context("/bin/busybox (apt-get install busybox-static)")?;
    for tool in ["sh", "true", "cat", "ls", "sleep", "dd", "sync"] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(tool));
    }
    let tar = dir.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()?;
    if !st.success() {
        bail!("tar failed");
    }
    let st = Command::new("docker")
        .arg("import")
        .arg(&tar)
        .arg(BENCH_IMAGE)
        .stdout(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("docker import failed");
    }
    Ok(())
}

fn time_cmd(args: &[&str]) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        bail!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(t.elapsed())
}

fn docker(dir: &Path, volumes: usize) -> Result<()> {
    println!("== docker plugin: {volumes} ballast volumes vs {volumes} local volumes");
    std::fs::create_dir_all(dir)?;
    ensure_image(dir)?;
    let pid = std::process::id();
    let plugin = "ballastbench".to_string();
    let d = Daemon::start(&dir.join("daemon"), &["--docker-plugin-name", &plugin])?;
    let plugin_sock = PathBuf::from(format!("/run/docker/plugins/{plugin}.sock"));
    for i in 0..volumes {
        d.rest(
            "POST",
            "/v1/volumes",
            &format!(r#"{{"name":"dbv{pid}-{i:04}","size":"16M"}}"#),
        )?;
    }
    let t = Instant::now();
    for i in 0..volumes {
        time_cmd(&["docker", "volume", "create", &format!("lbv{pid}-{i:04}")])?;
    }
    eprintln!(
        "  made {volumes} local volumes in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let filter = format!("driver={plugin}");
    let (mut ours, mut local) = (Vec::new(), Vec::new());
    for _ in 0..10 {
        ours.push(time_cmd(&["docker", "volume", "ls", "-q", "-f", &filter])?);
        local.push(time_cmd(&[
            "docker",
            "volume",
            "ls",
            "-q",
            "-f",
            "driver=local",
        ])?);
    }
    let (o, l) = (stats(ours), stats(local));
    println!(
        "docker volume ls -f driver=X: ballast p50 {:.1} ms, local p50 {:.1} ms, ratio {:.2} (target <= 1.2)",
        ms(o.p50),
        ms(l.p50),
        ms(o.p50) / ms(l.p50)
    );
    let (mut ours, mut local) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        ours.push(time_cmd(&[
            "docker",
            "run",
            "--rm",
            "-v",
            &format!("dbv{pid}-0000:/data"),
            BENCH_IMAGE,
            "sh",
            "-c",
            "exit 0",
        ])?);
        local.push(time_cmd(&[
            "docker",
            "run",
            "--rm",
            "-v",
            &format!("lbv{pid}-0000:/data"),
            BENCH_IMAGE,
            "sh",
            "-c",
            "exit 0",
        ])?);
    }
    let (o, l) = (stats(ours), stats(local));
    println!(
        "docker run --rm -v vol:/data img true: ballast p50 {:.1} ms, local p50 {:.1} ms, ratio {:.2} (target <= 1.1)",
        ms(o.p50),
        ms(l.p50),
        ms(o.p50) / ms(l.p50)
    );
    for (endpoint, body) in [
        (
            "/VolumeDriver.Get",
            &format!(r#"{{"Name":"dbv{pid}-0500"}}"#),
        ),
        (
            "/VolumeDriver.Path",
            &format!(r#"{{"Name":"dbv{pid}-0500"}}"#),
        ),
        ("/VolumeDriver.List", &"{}".to_string()),
    ] {
        let mut v = Vec::new();
        for _ in 0..300 {
            let t = Instant::now();
            let (status, _) = http(&plugin_sock, "POST", endpoint, body)?;
            if status != 200 {
                bail!("{endpoint}: {status}");
            }
            v.push(t.elapsed());
        }
        let s = stats(v);
        println!(
            "plugin {endpoint}: p50 {:.2} ms, p99 {:.2} ms (target p99 <= 2 ms)",
            ms(s.p50),
            ms(s.p99)
        );
    }
    for i in 0..volumes {
        let _ = Command::new("docker")
            .args(["volume", "rm", &format!("lbv{pid}-{i:04}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        d.rest("DELETE", &format!("/v1/volumes/dbv{pid}-{i:04}"), "")?;
    }
    Ok(())
}

async fn csi_channel(socket: PathBuf) -> Result<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await?;
    Ok(channel)
}

fn csi_bench(dir: &Path, volumes: usize) -> Result<()> {
    use ballast_csi_proto::v1 as csi;
    println!("== csi: ListVolumes over {volumes} volumes in pages of 500; NodePublish of a staged volume");
    let d = Daemon::start(dir, &["--overcommit-ratio", "100"])?;
    for i in 0..volumes {
        d.rest(
            "POST",
            "/v1/volumes",
            &format!(r#"{{"name":"c{i:05}","size":"16M"}}"#),
        )?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let ch = csi_channel(d.run.join("csi.sock")).await?;
        let mut ctl = csi::controller_client::ControllerClient::new(ch.clone());
        let mut node = csi::node_client::NodeClient::new(ch);
        let mut totals = Vec::new();
        for _ in 0..10 {
            let t = Instant::now();
            let mut token = String::new();
            let mut seen = 0;
            loop {
                let r = ctl
                    .list_volumes(csi::ListVolumesRequest {
                        max_entries: 500,
                        starting_token: token.clone(),
                    })
                    .await?
                    .into_inner();
                seen += r.entries.len();
                if r.next_token.is_empty() {
                    break;
                }
                token = r.next_token;
            }
            totals.push(t.elapsed());
            if seen != volumes {
                bail!("listed {seen} of {volumes} volumes");
            }
        }
        let s = stats(totals);
        println!(
            "ListVolumes, all {volumes} in pages of 500: p50 {:.1} ms, p99 {:.1} ms total (target <= 100 ms)",
            ms(s.p50),
            ms(s.p99)
        );
        let cap = csi::VolumeCapability {
            access_mode: Some(csi::volume_capability::AccessMode {
                mode: csi::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(csi::volume_capability::AccessType::Mount(
                csi::volume_capability::MountVolume::default(),
            )),
        };
        let base = dir.join("csi-paths");
        std::fs::create_dir_all(&base)?;
        let staging = base.join("staging");
        std::fs::create_dir_all(&staging)?;
        node.node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: "c00000".into(),
            staging_target_path: staging.display().to_string(),
            volume_capability: Some(cap.clone()),
            ..Default::default()
        })
        .await?;
        let mut publish = Vec::new();
        for i in 0..100 {
            let target = base.join(format!("t{i}"));
            let t = Instant::now();
            node.node_publish_volume(csi::NodePublishVolumeRequest {
                volume_id: "c00000".into(),
                staging_target_path: staging.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(cap.clone()),
                ..Default::default()
            })
            .await?;
            publish.push(t.elapsed());
        }
        for i in 0..100 {
            node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
                volume_id: "c00000".into(),
                target_path: base.join(format!("t{i}")).display().to_string(),
            })
            .await?;
        }
        node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: "c00000".into(),
            staging_target_path: staging.display().to_string(),
        })
        .await?;
        let s = stats(publish);
        println!(
            "NodePublish of a staged volume: p50 {:.2} ms, p99 {:.2} ms (target p50 <= 2 ms)",
            ms(s.p50),
            ms(s.p99)
        );
        Ok::<_, anyhow::Error>(())
    })
}

/// Claims: `n` acquire/release pairs on one group through the REST API,
/// each call on its own connection as a client would make it. `held`
/// other claims stay held meanwhile, so each acquire reads past them.
fn claims_bench(dir: &Path, n: usize, held: usize) -> Result<()> {
    println!(
        "== claims: {n} acquire/release pairs on one group through REST ({held} other claims held)"
    );
    let d = Daemon::start(dir, &[])?;
    let acquire = |holder: &str| -> Result<u64> {
        let body = d.rest(
            "POST",
            "/v1/claims/bench/acquire",
            &format!(r#"{{"volumes":["data"],"size":"16M","holder":"{holder}"}}"#),
        )?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        v["ordinal"].as_u64().context("the reply has no ordinal")
    };
    let release = |ordinal: u64, holder: &str| -> Result<()> {
        d.rest(
            "POST",
            &format!("/v1/claims/bench/{ordinal}/release"),
            &format!(r#"{{"holder":"{holder}"}}"#),
        )?;
        Ok(())
    };
    for i in 0..held {
        acquire(&format!("held-{i}"))?;
    }
    // The first acquire of the free ordinal creates its volume; the pairs
    // measured reuse it.
    let t = Instant::now();
    let first = acquire("bench")?;
    let create = t.elapsed();
    release(first, "bench")?;
    let mut acq = Vec::with_capacity(n);
    let mut rel = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let ordinal = acquire("bench")?;
        acq.push(t.elapsed());
        if ordinal != first {
            bail!("acquire got ordinal {ordinal}, expected the free {first}");
        }
        let t = Instant::now();
        release(ordinal, "bench")?;
        rel.push(t.elapsed());
    }
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    let (amax, rmax) = (max(&acq), max(&rel));
    let (a, r) = (stats(acq), stats(rel));
    println!("first acquire (creates the volume): {:.2} ms", ms(create));
    println!(
        "{:<8} {:>8} {:>8} {:>8}",
        "op", "p50 ms", "p99 ms", "max ms"
    );
    for (label, st, mx) in [("acquire", &a, amax), ("release", &r, rmax)] {
        println!(
            "{:<8} {:>8.2} {:>8.2} {:>8.2}",
            label,
            ms(st.p50),
            ms(st.p99),
            ms(mx)
        );
    }
    println!(
        "target: p99 <= 5 ms each (acquire {:.2} ms, release {:.2} ms)",
        ms(a.p99),
        ms(r.p99)
    );
    Ok(())
}
