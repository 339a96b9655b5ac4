//! `ballast backup ...`: flags to REST calls, and a progress bar while a
//! backup or restore runs.

use std::path::PathBuf;

use anyhow::Context;
use ballast_core::backups::{
    BackupInfo, BackupPhase, BackupRecord, BackupSchedule, BackupTarget, GcStats, TargetLocation,
};
use ballast_core::model::format_size;
use ballast_server::api::VolumeView;
use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::json;

use crate::cli::{print_json, print_one, print_table, seg, Output};
use crate::client::Client;
use crate::progress::with_progress;

#[derive(Debug, Subcommand)]
pub enum BackupCmd {
    /// Where backups go
    #[command(subcommand)]
    Target(TargetCmd),
    /// Back a volume up now (with --every: on a schedule)
    Create(CreateArgs),
    /// List the backups the targets hold, of one volume or all
    #[command(alias = "list")]
    Ls {
        volume: Option<String>,
        #[arg(long)]
        target: Option<String>,
    },
    /// Show one backup
    Inspect {
        id: String,
        #[arg(long)]
        target: Option<String>,
    },
    /// Delete a backup (chunks no other backup uses go too)
    #[command(alias = "remove")]
    Rm {
        id: String,
        #[arg(long)]
        target: Option<String>,
    },
    /// Make a new volume from a backup
    Restore {
        id: String,
        /// The new volume
        #[arg(long)]
        to: String,
        /// Node to place it on [default: the controller picks]
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        target: Option<String>,
    },
    /// List the backup schedules
    Schedules,
    /// Stop a volume's scheduled backups (its backups stay)
    Unschedule { volume: String },
}

#[derive(Debug, Subcommand)]
pub enum TargetCmd {
    /// Add an S3 bucket or a directory as a target (it is reached first)
    Add(TargetArgs),
    #[command(alias = "list")]
    Ls,
    /// Forget a target (its backups stay on it)
    #[command(alias = "remove")]
    Rm { name: String },
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("location").args(["s3", "path"]).required(true))]
pub struct TargetArgs {
    pub name: String,
    /// The S3 endpoint, e.g. http://127.0.0.1:7480
    #[arg(long, value_name = "URL", requires = "bucket")]
    pub s3: Option<String>,
    #[arg(long, requires = "s3")]
    pub bucket: Option<String>,
    #[arg(long, requires = "s3")]
    pub region: Option<String>,
    #[arg(long, requires_all = ["s3", "secret_key_file"])]
    pub access_key: Option<String>,
    /// A file holding the secret key (not given on the command line, where
    /// `ps` shows it)
    #[arg(long, value_name = "PATH", requires = "access_key")]
    pub secret_key_file: Option<PathBuf>,
    /// A directory (an NFS mount, a local disk)
    #[arg(long, value_name = "DIR")]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub volume: String,
    #[arg(long)]
    pub target: Option<String>,
    /// Fail a run that takes longer, e.g. 30m [default: 6h; with --every:
    /// the interval]
    #[arg(long, value_name = "INTERVAL")]
    pub deadline: Option<String>,
    /// Back up on this schedule, e.g. 1h (the first run starts now)
    #[arg(long, value_name = "INTERVAL", requires = "keep")]
    pub every: Option<String>,
    /// With --every: keep this many of the volume's scheduled backups
    #[arg(long, requires = "every")]
    pub keep: Option<u32>,
    /// Start the backup and print it; do not follow it
    #[arg(long)]
    pub detach: bool,
}

pub fn run(c: &Client, output: Output, cmd: &BackupCmd) -> anyhow::Result<()> {
    match cmd {
        BackupCmd::Target(t) => target(c, output, t),
        BackupCmd::Create(a) => create(c, output, a),
        BackupCmd::Ls { volume, target } => {
            let mut q = Vec::new();
            if let Some(v) = volume {
                q.push(format!("volume={}", seg("volume", v)?));
            }
            if let Some(t) = target {
                q.push(format!("target={}", seg("backup target", t)?));
            }
            let path = match q.is_empty() {
                true => "/v1/backups".to_string(),
                false => format!("/v1/backups?{}", q.join("&")),
            };
            let list: Vec<BackupInfo> = c.get(&path)?;
            match output {
                Output::Json => print_json(&list),
                Output::Table => {
                    print_table(
                        &["ID", "VOLUME", "TARGET", "SIZE", "SENT", "CREATED"],
                        list.iter()
                            .map(|b| {
                                vec![
                                    b.meta.id.clone(),
                                    b.meta.volume.clone(),
                                    b.target.clone(),
                                    format_size(b.data_bytes),
                                    format_size(b.uploaded_bytes),
                                    b.meta.created_at.to_rfc3339(),
                                ]
                            })
                            .collect(),
                    );
                    Ok(())
                }
            }
        }
        BackupCmd::Inspect { id, target } => {
            let b: BackupInfo = c.get(&with_target(
                format!("/v1/backups/{}", seg("backup", id)?),
                target.as_deref(),
            )?)?;
            print_one(output, &b, || print_backup(&b))
        }
        BackupCmd::Rm { id, target } => {
            let g: GcStats = c.call(
                Method::DELETE,
                &with_target(
                    format!("/v1/backups/{}", seg("backup", id)?),
                    target.as_deref(),
                )?,
                None,
            )?;
            print_one(output, &g, || {
                println!(
                    "{id} (chunks freed: {}, {})",
                    g.chunks_deleted,
                    format_size(g.bytes_deleted)
                )
            })
        }
        BackupCmd::Restore {
            id,
            to,
            node,
            pool,
            target,
        } => {
            let path = format!("/v1/backups/{}/restore", seg("backup", id)?);
            let v: VolumeView = with_progress(
                c,
                &format!("restoring {id} into {to}"),
                Some(("restore", to)),
                || {
                    c.post(
                        &path,
                        json!({ "to": to, "node": node, "pool": pool, "target": target }),
                    )
                },
            )?;
            print_one(output, &v, || println!("{} {}", v.name, v.size))
        }
        BackupCmd::Schedules => {
            let list: Vec<BackupSchedule> = c.get("/v1/backup-schedules")?;
            match output {
                Output::Json => print_json(&list),
                Output::Table => {
                    print_table(
                        &["VOLUME", "TARGET", "EVERY", "KEEP", "LAST RUN"],
                        list.iter()
                            .map(|s| {
                                vec![
                                    s.volume.clone(),
                                    s.target.clone(),
                                    format!("{}s", s.every_secs),
                                    s.keep.to_string(),
                                    s.last_run.map_or("-".into(), |t| t.to_rfc3339()),
                                ]
                            })
                            .collect(),
                    );
                    Ok(())
                }
            }
        }
        BackupCmd::Unschedule { volume } => {
            c.call::<serde_json::Value>(
                Method::DELETE,
                &format!("/v1/volumes/{}/backup-schedule", seg("volume", volume)?),
                None,
            )?;
            print_one(output, &json!({ "unscheduled": volume }), || {
                println!("{volume}")
            })
        }
    }
}

fn with_target(path: String, target: Option<&str>) -> anyhow::Result<String> {
    Ok(match target {
        Some(t) => format!("{path}?target={}", seg("backup target", t)?),
        None => path,
    })
}

fn print_backup(b: &BackupInfo) {
    println!("id:          {}", b.meta.id);
    println!("volume:      {} ({})", b.meta.volume, b.meta.driver);
    println!("target:      {}", b.target);
    println!("size:        {}", format_size(b.meta.size_bytes));
    println!("data:        {}", format_size(b.data_bytes));
    println!("chunks:      {} of {}", b.chunks, format_size(b.chunk_size));
    println!("sent:        {}", format_size(b.uploaded_bytes));
    println!("created:     {}", b.meta.created_at.to_rfc3339());
    println!("finished:    {}", b.finished_at.to_rfc3339());
}

fn target(c: &Client, output: Output, cmd: &TargetCmd) -> anyhow::Result<()> {
    match cmd {
        TargetCmd::Add(a) => {
            let secret = match &a.secret_key_file {
                Some(p) => Some(
                    std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            let t: BackupTarget = c.post(
                "/v1/backup-targets",
                json!({
                    "name": a.name,
                    "s3_url": a.s3,
                    "bucket": a.bucket,
                    "region": a.region,
                    "access_key": a.access_key,
                    "secret_key": secret,
                    "path": a.path,
                }),
            )?;
            print_one(output, &t, || println!("{}", t.name))
        }
        TargetCmd::Ls => {
            let list: Vec<BackupTarget> = c.get("/v1/backup-targets")?;
            match output {
                Output::Json => print_json(&list),
                Output::Table => {
                    print_table(
                        &["NAME", "KIND", "WHERE"],
                        list.iter()
                            .map(|t| match &t.location {
                                TargetLocation::S3 { url, bucket, .. } => {
                                    vec![t.name.clone(), "s3".into(), format!("{url} {bucket}")]
                                }
                                TargetLocation::Path { dir } => {
                                    vec![t.name.clone(), "path".into(), dir.display().to_string()]
                                }
                            })
                            .collect(),
                    );
                    Ok(())
                }
            }
        }
        TargetCmd::Rm { name } => {
            c.call::<serde_json::Value>(
                Method::DELETE,
                &format!("/v1/backup-targets/{}", seg("backup target", name)?),
                None,
            )?;
            print_one(output, &json!({ "removed": name }), || println!("{name}"))
        }
    }
}

fn create(c: &Client, output: Output, a: &CreateArgs) -> anyhow::Result<()> {
    let vol = seg("volume", &a.volume)?;
    if let (Some(every), Some(keep)) = (&a.every, a.keep) {
        let s: BackupSchedule = c.call(
            Method::PUT,
            &format!("/v1/volumes/{vol}/backup-schedule"),
            Some(
                json!({ "target": a.target, "every": every, "keep": keep, "deadline": a.deadline }),
            ),
        )?;
        return print_one(output, &s, || {
            println!(
                "{} backed up every {}s to {}, keeping {}",
                s.volume, s.every_secs, s.target, s.keep
            )
        });
    }
    let rec: BackupRecord = c.post(
        &format!("/v1/volumes/{vol}/backups"),
        json!({ "target": a.target, "deadline": a.deadline }),
    )?;
    if a.detach {
        return print_one(output, &rec, || println!("{} {:?}", rec.id, rec.phase));
    }
    let path = format!("/v1/backup-runs/{}", seg("backup", &rec.id)?);
    let end = with_progress(
        c,
        &format!("backing up {} to {}", rec.volume, rec.target),
        Some(("backup", &rec.volume)),
        || loop {
            let r: BackupRecord = c.get(&path)?;
            // A run whose node is down is never started: give up a little
            // after its deadline (a live node fails it by then).
            if r.in_flight() && chrono::Utc::now() > r.deadline + chrono::Duration::seconds(10) {
                anyhow::bail!(
                    "backup run {} did not finish by its deadline ({}); node {} that runs it may be down (see `GET /v1/backup-runs/{}`)",
                    r.id,
                    r.deadline.to_rfc3339(),
                    r.node,
                    r.id
                );
            }
            match r.phase {
                BackupPhase::Done => return Ok(r),
                BackupPhase::Failed => anyhow::bail!(
                    "{}",
                    r.failed
                        .map(|f| f.message)
                        .unwrap_or_else(|| "the backup failed".into())
                ),
                _ => std::thread::sleep(std::time::Duration::from_millis(200)),
            }
        },
    )?;
    print_one(output, &end, || {
        println!(
            "{} ({} of data, {} sent)",
            end.id,
            format_size(end.progress.total_bytes),
            format_size(end.progress.uploaded_bytes)
        )
    })
}
