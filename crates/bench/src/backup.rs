//! `ballast-bench backup`: backups of a loop volume to a local RADOS
//! Gateway (a throwaway 1-OSD Ceph cluster with its S3 gateway on loopback,
//! the tests' harness).
//!
//! - full backup of a 1 GiB volume holding `data-mib` MiB of random data,
//!   through REST, cold caches: its throughput (bytes sent / time) against
//!   a plain upload of the same bytes (the image's non-zero 1 MiB chunks)
//!   with the same client library (`object_store`, 16 puts in flight, no
//!   hashing, no existence checks); target: at least 0.7;
//! - incremental backup after `changed-mib` MiB changed: its time (target:
//!   at most 2 s) and the bytes it sent.
//!
//! Each repetition writes new data, so each full backup sends it all.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use object_store::ObjectStore;

use super::Daemon;
use crate::harness::ceph::Ceph;

const MIB: u64 = 1 << 20;
const CHUNK: usize = 1 << 20;
const PARALLEL: usize = 16;

pub struct Opts {
    pub data_mib: u64,
    pub changed_mib: u64,
    pub reps: usize,
}

fn drop_caches() -> Result<()> {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")?;
    Ok(())
}

fn json(s: &str) -> Result<serde_json::Value> {
    serde_json::from_str(s).with_context(|| format!("not json: {s}"))
}

/// Back `vol` up through REST and follow the run; (seconds, bytes sent).
fn backup(d: &Daemon, vol: &str) -> Result<(Duration, u64)> {
    let t = Instant::now();
    let run = json(&d.rest("POST", &format!("/v1/volumes/{vol}/backups"), "{}")?)?;
    let id = run["id"].as_str().context("no run id")?.to_string();
    loop {
        let r = json(&d.rest("GET", &format!("/v1/backup-runs/{id}"), "")?)?;
        match r["phase"].as_str() {
            Some("done") => {
                return Ok((
                    t.elapsed(),
                    r["progress"]["uploaded_bytes"].as_u64().unwrap_or(0),
                ))
            }
            Some("failed") => bail!("backup failed: {}", r["failed"]["message"]),
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Write `mib` MiB of random data at `at_mib` of the file `f` in `dir`.
fn write_random(dir: &Path, at_mib: u64, mib: u64, seed: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("f"))?;
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut buf = vec![0u8; CHUNK];
    for i in 0..mib {
        rng.fill(&mut buf);
        f.write_all_at(&buf, (at_mib + i) * MIB)?;
    }
    f.sync_all()?;
    Ok(())
}

/// The image's non-zero chunks, uploaded as objects: the same bytes a full
/// backup sends, without what makes it a backup. (seconds, bytes).
fn plain_upload(store: &Arc<dyn ObjectStore>, image: &Path, rep: usize) -> Result<(Duration, u64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let f = std::fs::File::open(image)?;
    let size = f.metadata()?.len();
    let t = Instant::now();
    let sent = rt.block_on(async {
        let chunks = (0..size.div_ceil(CHUNK as u64)).filter_map(|i| {
            let mut buf = vec![0u8; CHUNK];
            let n = f.read_at(&mut buf, i * CHUNK as u64).ok()?;
            buf.truncate(n);
            (!buf.iter().all(|b| *b == 0)).then_some((i, buf))
        });
        let uploads = futures::stream::iter(chunks)
            .map(|(i, buf)| {
                let store = Arc::clone(store);
                async move {
                    let n = buf.len() as u64;
                    let path = object_store::path::Path::from(format!("plain/{rep}/{i}"));
                    store
                        .put(&path, object_store::PutPayload::from(buf))
                        .await
                        .map(|_| n)
                }
            })
            .buffer_unordered(PARALLEL);
        futures::pin_mut!(uploads);
        let mut sent = 0;
        while let Some(n) = uploads.next().await {
            sent += n?;
        }
        Ok::<u64, object_store::Error>(sent)
    })?;
    Ok((t.elapsed(), sent))
}

fn remove_prefix(store: &Arc<dyn ObjectStore>, prefix: &str) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut list = store.list(Some(&object_store::path::Path::from(prefix)));
        while let Some(m) = list.next().await {
            store.delete(&m?.location).await?;
        }
        Ok::<(), object_store::Error>(())
    })?;
    Ok(())
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64().max(1e-9)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(dir: &Path, o: &Opts) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    println!("starting a 1-OSD Ceph cluster and its RADOS Gateway...");
    let mut ceph = Ceph::start();
    let rgw = ceph.start_rgw();
    ceph.create_bucket("bench");
    let d = Daemon::start(dir, &[])?;
    let key = dir.join("s3.secret");
    std::fs::write(&key, &rgw.secret_key)?;
    d.cli(&[
        "backup",
        "target",
        "add",
        "s3",
        "--s3",
        &rgw.url,
        "--bucket",
        "bench",
        "--access-key",
        &rgw.access_key,
        "--secret-key-file",
        key.to_str().unwrap(),
    ])?;
    let store: Arc<dyn ObjectStore> = Arc::new(
        object_store::aws::AmazonS3Builder::new()
            .with_endpoint(&rgw.url)
            .with_bucket_name("bench")
            .with_region("us-east-1")
            .with_access_key_id(&rgw.access_key)
            .with_secret_access_key(&rgw.secret_key)
            .with_virtual_hosted_style_request(false)
            .with_client_options(object_store::ClientOptions::new().with_allow_http(true))
            .build()?,
    );
    d.cli(&["volume", "create", "v", "--size", "1G"])?;
    let vol = json(&d.cli(&["-o", "json", "volume", "inspect", "v"])?)?;
    let image: PathBuf = dir
        .join("state/pools/default")
        .join(format!("{}.img", vol["id"].as_str().context("no id")?));
    let (mut full, mut plain, mut incr) = (Vec::new(), Vec::new(), Vec::new());
    for rep in 0..o.reps {
        let mp = PathBuf::from(d.cli(&["volume", "mount", "v"])?.trim());
        write_random(&mp, 0, o.data_mib, 1000 + rep as u64)?;
        d.cli(&["volume", "unmount", "v"])?;
        drop_caches()?;
        let (pt, pb) = plain_upload(&store, &image, rep)?;
        drop_caches()?;
        let (bt, bb) = backup(&d, "v")?;
        println!(
            "rep {rep}: plain upload {} MiB in {:.2}s ({:.0} MiB/s); full backup sent {} MiB in {:.2}s ({:.0} MiB/s)",
            pb / MIB, pt.as_secs_f64(), mib_s(pb, pt), bb / MIB, bt.as_secs_f64(), mib_s(bb, bt)
        );
        plain.push(mib_s(pb, pt));
        full.push(mib_s(bb, bt));
        let mp = PathBuf::from(d.cli(&["volume", "mount", "v"])?.trim());
        write_random(&mp, o.data_mib / 3, o.changed_mib, 2000 + rep as u64)?;
        d.cli(&["volume", "unmount", "v"])?;
        let (it, ib) = backup(&d, "v")?;
        println!(
            "rep {rep}: incremental backup after {} MiB changed: {:.2}s, sent {:.1} MiB",
            o.changed_mib,
            it.as_secs_f64(),
            ib as f64 / MIB as f64
        );
        incr.push(it.as_secs_f64());
        // The one-OSD cluster holds 4 GiB: free what this rep stored.
        for b in json(&d.cli(&["-o", "json", "backup", "ls", "v"])?)?
            .as_array()
            .context("backup ls")?
        {
            d.cli(&["backup", "rm", b["id"].as_str().context("no id")?])?;
        }
        remove_prefix(&store, &format!("plain/{rep}"))?;
    }
    let (f, p) = (median(full), median(plain));
    println!(
        "full backup: {f:.0} MiB/s; plain upload: {p:.0} MiB/s; ratio {:.2} (target >= 0.70)",
        f / p
    );
    println!(
        "incremental backup of {} MiB changed in 1 GiB: {:.2}s median (target <= 2 s)",
        o.changed_mib,
        median(incr)
    );
    drop(d);
    drop(ceph);
    Ok(())
}
