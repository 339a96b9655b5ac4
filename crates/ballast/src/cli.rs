//! The `ballast` command line: clap definitions and the verbs, each one REST
//! call (or two) and its output as a table or JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use ballast_core::events::Event;
use ballast_core::model::{format_size, parse_label, validate_name};
use ballast_core::moves::MovePhase;
use ballast_server::api::{MountReply, MoveView, PoolView, SnapshotView, VersionReply, VolumeView};
use clap::{Parser, Subcommand, ValueEnum};
use hyper::Method;
use serde_json::json;

use crate::client::{Client, Endpoint};
use crate::config::ServeArgs;
use crate::progress::with_progress;

/// Where the CLI finds the daemon by default.
const DEFAULT_SOCKET: &str = "/run/ballast/api.sock";

#[derive(Debug, Parser)]
#[command(name = "ballast", version, about = "Persistent volumes for containers")]
pub struct Cli {
    /// The daemon's API socket [default: /run/ballast/api.sock; for
    /// `serve`, <run-dir>/api.sock]
    #[arg(long, global = true, env = "BALLAST_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Talk to a daemon over TCP instead: http://HOST:PORT or https://HOST:PORT
    #[arg(long, global = true, env = "BALLAST_HOST")]
    pub host: Option<String>,
    /// Bearer token for --host (see <state-dir>/token)
    #[arg(long, global = true, env = "BALLAST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate to trust for https://
    #[arg(long, global = true, env = "BALLAST_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Output format
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon
    Serve(Box<ServeArgs>),
    /// Manage volumes
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Inspect pools
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Manage snapshots
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Backups to S3 or a directory, and restores from them
    #[command(subcommand)]
    Backup(crate::backup_cli::BackupCmd),
    /// The nodes sharing this daemon's store
    #[command(subcommand)]
    Node(crate::node_cli::NodeCmd),
    /// Where a volume of this shape could go now, most room first
    Offers(crate::node_cli::OffersArgs),
    /// The cluster: its elected controller and its nodes
    #[command(subcommand)]
    Cluster(crate::node_cli::ClusterCmd),
    /// Claim the lowest free ordinal of a group and its volumes
    #[command(subcommand)]
    Claim(crate::claims::ClaimCmd),
    /// Print recent events; --follow streams new ones as they happen
    Events {
        /// Keep streaming new events
        #[arg(long, short = 'f')]
        follow: bool,
        /// How many recent events to show first
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Print client and daemon versions
    Version,
    /// Print the REST API's OpenAPI document
    #[command(hide = true)]
    Openapi,
    /// dvdcli's commands, for Mesos' docker/volume isolator (also: invoke
    /// this binary as `dvdcli`)
    Dvdcli {
        #[command(subcommand)]
        command: crate::dvdcli::DvdCommand,
    },
}

// Parsed once per process: the size of the create variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum VolumeCmd {
    /// Create a volume (the same request again is a no-op)
    Create {
        name: String,
        /// Size, e.g. 64M or 10G (binary units) [default: the daemon's, 1G]
        #[arg(long)]
        size: Option<String>,
        /// Filesystem: ext4 or xfs
        #[arg(long)]
        fs: Option<String>,
        /// Pool (it decides the node) [default: the chosen node's default pool]
        #[arg(long)]
        pool: Option<String>,
        /// Node to place it on [default: the controller picks a ready node
        /// with room]
        #[arg(long)]
        node: Option<String>,
        /// Only on nodes with these labels: KEY=VALUE[,KEY=VALUE...]
        #[arg(long)]
        selector: Option<String>,
        /// Spread over the values of this node label (e.g. zone)
        #[arg(long)]
        spread: Option<String>,
        /// Label KEY=VALUE (repeatable)
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Copy the new volume from a snapshot
        #[arg(long, conflicts_with = "from_volume")]
        from_snapshot: Option<String>,
        /// Copy the new volume from another volume (a clone)
        #[arg(long)]
        from_volume: Option<String>,
        /// Grow online before it fills: THRESHOLD%:+STEP:max=SIZE, e.g.
        /// 90%:+20%:max=10G
        #[arg(long)]
        autogrow: Option<String>,
    },
    /// Take a snapshot of a volume
    Snapshot { volume: String, snapshot: String },
    /// List volumes
    #[command(alias = "list")]
    Ls,
    /// Show one volume
    Inspect { name: String },
    /// Delete a volume
    #[command(alias = "remove")]
    Rm {
        name: String,
        /// Unmount it first if it is in use
        #[arg(long)]
        force: bool,
    },
    /// Mount a volume on this host and print its mountpoint
    Mount {
        name: String,
        /// Consumer ID; each ID needs its own unmount
        #[arg(long)]
        id: Option<String>,
        /// Shared (rbd) volumes: take the volume over from the live node
        /// holding it; that node is fenced off it first
        #[arg(long)]
        preempt: bool,
    },
    /// Release a mount; the last one unmounts the volume
    Unmount {
        name: String,
        #[arg(long)]
        id: Option<String>,
    },
    /// Grow a volume (online if mounted)
    Resize {
        name: String,
        #[arg(long)]
        size: String,
    },
    /// Move a loop or btrfs volume to another node (or pool), with a
    /// progress bar; its data is copied while in use, and the final pass
    /// needs it unmounted
    Move {
        name: String,
        /// Target node
        #[arg(long, required_unless_present_any = ["to_pool", "cancel"])]
        to: Option<String>,
        /// Target pool [default: the target node's default pool]
        #[arg(long, conflicts_with = "to_pool")]
        pool: Option<String>,
        /// Move to this pool on the volume's own node
        #[arg(long, conflicts_with = "to")]
        to_pool: Option<String>,
        /// Wait for the volume's consumers to go before the final pass
        /// (instead of failing)
        #[arg(long)]
        wait_idle: bool,
        /// Stop the volume's move in flight (it is rolled back)
        #[arg(long, conflicts_with_all = ["to", "pool", "to_pool", "wait_idle"])]
        cancel: bool,
        /// Start the move and print it; do not follow it
        #[arg(long)]
        detach: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCmd {
    /// List snapshots, of one volume or all
    #[command(alias = "list")]
    Ls { volume: Option<String> },
    /// Show one snapshot
    Inspect { name: String },
    /// Delete a snapshot
    #[command(alias = "remove")]
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PoolCmd {
    /// List pools
    #[command(alias = "list")]
    Ls,
    /// Show one pool
    Inspect { name: String },
    /// Make a pool: btrfs on disks or a disk file that grows by itself, or
    /// loop / dir on a directory
    Create(Box<crate::pool_cli::CreatePoolArgs>),
    /// Delete an empty pool
    #[command(alias = "remove")]
    Rm { name: String },
}

/// Volume names go into URL paths; anything but the allowed characters is
/// refused by the daemon anyway, but must not change the path here. An empty
/// name would drop the segment and address another endpoint, so it is
/// refused here with the daemon's message.
pub(crate) fn seg(kind: &str, name: &str) -> anyhow::Result<String> {
    if name.is_empty() {
        validate_name(kind, name).map_err(|e| anyhow::anyhow!("invalid argument: {e}"))?;
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out == "." || out == ".." {
        out = out.replace('.', "%2E");
    }
    Ok(out)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    if let Command::Dvdcli { command } = cli.command {
        return crate::dvdcli::run(crate::dvdcli::Dvdcli { command });
    }
    let output = cli.output;
    let client = || -> anyhow::Result<Client> {
        let endpoint = match &cli.host {
            Some(h) => Endpoint::parse_host(h)?,
            None => Endpoint::Unix(
                cli.socket
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            ),
        };
        Client::new(endpoint, cli.token.clone(), cli.ca_cert.clone())
    };
    match &cli.command {
        Command::Serve(args) => crate::daemon::serve(args, cli.socket.clone()),
        Command::Dvdcli { .. } => unreachable!("handled above"),
        Command::Openapi => {
            print!("{}", ballast_server::rest::openapi_json());
            Ok(())
        }
        Command::Version => {
            let client_version = env!("CARGO_PKG_VERSION");
            let server = client()?.get::<VersionReply>("/v1/version");
            match output {
                Output::Json => println!(
                    "{}",
                    json!({"client": client_version, "server": server.as_ref().ok().map(|s| &s.version)})
                ),
                Output::Table => {
                    println!("client: {client_version}");
                    match &server {
                        Ok(s) => println!("server: {} (api {})", s.version, s.api),
                        Err(e) => println!("server: unreachable ({e:#})"),
                    }
                }
            }
            Ok(())
        }
        Command::Volume(cmd) => volume(&client()?, output, cmd),
        Command::Pool(cmd) => pool(&client()?, output, cmd),
        Command::Events { follow, limit } => events(&client()?, output, *follow, *limit),
        Command::Snapshot(cmd) => snapshot(&client()?, output, cmd),
        Command::Claim(cmd) => crate::claims::run(&client()?, output, cmd),
        Command::Backup(cmd) => crate::backup_cli::run(&client()?, output, cmd),
        Command::Node(cmd) => crate::node_cli::run(&client()?, output, cmd),
        Command::Offers(a) => crate::node_cli::offers(&client()?, output, a),
        Command::Cluster(cmd) => crate::node_cli::cluster(&client()?, output, cmd),
    }
}

fn volume(c: &Client, output: Output, cmd: &VolumeCmd) -> anyhow::Result<()> {
    match cmd {
        VolumeCmd::Create {
            name,
            size,
            fs,
            pool,
            node,
            selector,
            spread,
            labels,
            from_snapshot,
            from_volume,
            autogrow,
        } => {
            let mut map = BTreeMap::new();
            for l in labels {
                let (k, v) = parse_label(l)?;
                map.insert(k, v);
            }
            let selector = ballast_core::nodes::parse_selector(selector.as_deref().unwrap_or(""))?;
            let body = json!({"name": name, "size": size, "fs": fs, "pool": pool, "labels": map,
                "from_snapshot": from_snapshot, "from_volume": from_volume,
                "autogrow": autogrow, "node": node, "selector": selector, "spread": spread});
            let v: VolumeView = match from_snapshot.as_ref().or(from_volume.as_ref()) {
                Some(src) => with_progress(
                    c,
                    &format!("copying {src} into {name}"),
                    Some(("copy", name)),
                    || c.post("/v1/volumes", body),
                )?,
                None => c.post("/v1/volumes", body)?,
            };
            print_one(output, &v, || println!("{}", v.name))
        }
        VolumeCmd::Ls => {
            let vols: Vec<VolumeView> = c.get("/v1/volumes")?;
            match output {
                Output::Json => print_json(&vols),
                Output::Table => {
                    let rows = vols
                        .iter()
                        .map(|v| {
                            vec![
                                v.name.clone(),
                                v.size.clone(),
                                v.pool.clone(),
                                v.node.clone().unwrap_or_else(|| "-".into()),
                                v.fs.map_or("-".into(), |f| f.to_string()),
                                v.state.as_str().to_string(),
                                v.mountpoint.clone().unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect();
                    print_table(
                        &["NAME", "SIZE", "POOL", "NODE", "FS", "STATE", "MOUNTPOINT"],
                        rows,
                    );
                    Ok(())
                }
            }
        }
        VolumeCmd::Inspect { name } => {
            let v: VolumeView = c.get(&format!("/v1/volumes/{}", seg("volume", name)?))?;
            print_one(output, &v, || print_volume(&v))
        }
        VolumeCmd::Rm { name, force } => {
            let path = format!("/v1/volumes/{}?force={force}", seg("volume", name)?);
            c.call::<serde_json::Value>(Method::DELETE, &path, None)?;
            match output {
                Output::Json => print_json(&json!({"deleted": name})),
                Output::Table => {
                    println!("{name}");
                    Ok(())
                }
            }
        }
        VolumeCmd::Mount { name, id, preempt } => {
            let r: MountReply = c.post(
                &format!("/v1/volumes/{}/mount", seg("volume", name)?),
                json!({ "id": id, "preempt": preempt }),
            )?;
            print_one(output, &r, || println!("{}", r.mountpoint))
        }
        VolumeCmd::Unmount { name, id } => {
            let v: VolumeView = c.post(
                &format!("/v1/volumes/{}/unmount", seg("volume", name)?),
                json!({ "id": id }),
            )?;
            print_one(output, &v, || println!("{}", v.name))
        }
        VolumeCmd::Snapshot { volume, snapshot } => {
            let path = format!("/v1/volumes/{}/snapshots", seg("volume", volume)?);
            let s: SnapshotView = with_progress(
                c,
                &format!("snapshotting {volume}"),
                Some(("snapshot", snapshot)),
                || c.post(&path, json!({ "name": snapshot })),
            )?;
            print_one(output, &s, || println!("{}", s.name))
        }
        VolumeCmd::Move {
            name,
            to,
            pool,
            to_pool,
            wait_idle,
            cancel,
            detach,
        } => {
            let path = format!("/v1/volumes/{}/move", seg("volume", name)?);
            let m: MoveView = if *cancel {
                c.call(Method::DELETE, &path, None)?
            } else {
                c.post(
                    &path,
                    json!({ "to": to, "pool": pool.clone().or(to_pool.clone()), "wait_idle": wait_idle }),
                )?
            };
            if *detach {
                return print_one(output, &m, || {
                    println!("{} {} {:?}", m.volume, m.id, m.phase)
                });
            }
            let what = match cancel {
                true => format!("cancelling the move of {name}"),
                false => format!("moving {name} to {} ({})", m.to_node, m.to_pool),
            };
            let end = with_progress(c, &what, Some(("move", name)), || follow_move(c, &path, &m))?;
            print_one(output, &end, || match end.phase {
                MovePhase::Failed => println!(
                    "{} stays on {} ({})",
                    end.volume,
                    end.from_node,
                    end.error.as_deref().unwrap_or("cancelled")
                ),
                _ => println!("{} moved to {} {}", end.volume, end.to_node, end.to_pool),
            })
        }
        VolumeCmd::Resize { name, size } => {
            let path = format!("/v1/volumes/{}/resize", seg("volume", name)?);
            let v: VolumeView =
                with_progress(c, &format!("growing {name} to {size}"), None, || {
                    c.post(&path, json!({ "size": size }))
                })?;
            print_one(output, &v, || println!("{} {}", v.name, v.size))
        }
    }
}

/// Poll a move until it is over: committed (or already cleaned up, 404),
/// or failed (an error, unless it was a cancel the caller asked for).
fn follow_move(c: &Client, path: &str, started: &MoveView) -> anyhow::Result<MoveView> {
    let mut last = started.clone();
    loop {
        match c.get::<MoveView>(path) {
            Ok(m) if m.id != started.id => {
                anyhow::bail!("the move was replaced by another (id {})", m.id)
            }
            Ok(m) => match m.phase {
                MovePhase::Committed => return Ok(m),
                MovePhase::Failed if m.cancel => return Ok(m),
                MovePhase::Failed => anyhow::bail!(
                    "the move of {} failed and was rolled back: {}",
                    m.volume,
                    m.error.as_deref().unwrap_or("no reason given")
                ),
                _ => last = m,
            },
            Err(e) => match e.downcast_ref::<crate::client::ApiFailure>() {
                // The source deletes a committed move's record.
                Some(f) if f.status == hyper::StatusCode::NOT_FOUND => {
                    last.phase = MovePhase::Committed;
                    return Ok(last);
                }
                _ => return Err(e),
            },
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn snapshot(c: &Client, output: Output, cmd: &SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Ls { volume } => {
            let path = match volume {
                Some(v) => format!("/v1/snapshots?volume={}", seg("volume", v)?),
                None => "/v1/snapshots".to_string(),
            };
            let snaps: Vec<SnapshotView> = c.get(&path)?;
            match output {
                Output::Json => print_json(&snaps),
                Output::Table => {
                    let rows = snaps
                        .iter()
                        .map(|s| {
                            vec![
                                s.name.clone(),
                                s.source_volume.clone(),
                                s.size.clone(),
                                s.pool.clone(),
                                if s.ready { "ready" } else { "copying" }.to_string(),
                                s.created_at.to_rfc3339(),
                            ]
                        })
                        .collect();
                    print_table(
                        &["NAME", "VOLUME", "SIZE", "POOL", "STATE", "CREATED"],
                        rows,
                    );
                    Ok(())
                }
            }
        }
        SnapshotCmd::Inspect { name } => {
            let s: SnapshotView = c.get(&format!("/v1/snapshots/{}", seg("snapshot", name)?))?;
            print_one(output, &s, || {
                println!("name:     {}", s.name);
                println!("volume:   {}", s.source_volume);
                println!("size:     {} ({} bytes)", s.size, s.size_bytes);
                println!("pool:     {}", s.pool);
                println!("ready:    {}", s.ready);
                println!("created:  {}", s.created_at.to_rfc3339());
            })
        }
        SnapshotCmd::Rm { name } => {
            c.call::<serde_json::Value>(
                Method::DELETE,
                &format!("/v1/snapshots/{}", seg("snapshot", name)?),
                None,
            )?;
            match output {
                Output::Json => print_json(&json!({"deleted": name})),
                Output::Table => {
                    println!("{name}");
                    Ok(())
                }
            }
        }
    }
}

fn print_event(output: Output, e: &Event) {
    match output {
        Output::Json => println!("{}", serde_json::to_string(e).unwrap_or_default()),
        Output::Table => println!(
            "{} {:<10} {:<12} {:<24} {}",
            e.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            e.pool.as_deref().unwrap_or("-"),
            e.volume.as_deref().unwrap_or("-"),
            e.message
        ),
    }
}

fn events(c: &Client, output: Output, follow: bool, limit: usize) -> anyhow::Result<()> {
    if !follow {
        let evs: Vec<Event> = c.get(&format!("/v1/events?limit={limit}"))?;
        for e in &evs {
            print_event(output, e);
        }
        return Ok(());
    }
    // Server-Sent Events: `data:` lines carry one event each as JSON.
    c.stream_lines(&format!("/v1/events/stream?limit={limit}"), |line| {
        if let Some(data) = line.strip_prefix("data:") {
            match serde_json::from_str::<Event>(data.trim_start()) {
                Ok(e) => print_event(output, &e),
                Err(_) => eprintln!("ballast: {}", data.trim()),
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        true
    })
}

fn pool(c: &Client, output: Output, cmd: &PoolCmd) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::Ls => {
            let pools: Vec<PoolView> = c.get("/v1/pools")?;
            match output {
                Output::Json => print_json(&pools),
                Output::Table => {
                    let rows = pools
                        .iter()
                        .map(|p| {
                            vec![
                                p.name.clone(),
                                p.driver.to_string(),
                                p.volumes.to_string(),
                                format_size(p.capacity.capacity_bytes),
                                format_size(p.capacity.provisioned_bytes),
                                format_size(p.capacity.used_bytes),
                                format_size(p.capacity.available_bytes),
                                p.path.clone(),
                            ]
                        })
                        .collect();
                    print_table(
                        &[
                            "NAME",
                            "DRIVER",
                            "VOLUMES",
                            "CAPACITY",
                            "PROVISIONED",
                            "USED",
                            "AVAILABLE",
                            "PATH",
                        ],
                        rows,
                    );
                    Ok(())
                }
            }
        }
        PoolCmd::Inspect { name } => {
            let p: PoolView = c.get(&format!("/v1/pools/{}", seg("pool", name)?))?;
            print_one(output, &p, || {
                println!("name:          {}", p.name);
                println!("driver:        {}", p.driver);
                println!("path:          {}", p.path);
                println!("volumes:       {}", p.volumes);
                println!("capacity:      {}", format_size(p.capacity.capacity_bytes));
                println!(
                    "provisioned:   {}",
                    format_size(p.capacity.provisioned_bytes)
                );
                println!("exclusive:     {}", format_size(p.capacity.exclusive_bytes));
                println!("used:          {}", format_size(p.capacity.used_bytes));
                println!("available:     {}", format_size(p.capacity.available_bytes));
                println!("overcommit:    {}", p.overcommit_ratio);
                crate::pool_cli::print_growth(&p);
            })
        }
        PoolCmd::Create(args) => crate::pool_cli::create(c, output, args),
        PoolCmd::Rm { name } => crate::pool_cli::delete(c, output, name, &seg("pool", name)?),
    }
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).context("formatting json")?
    );
    Ok(())
}

pub(crate) fn print_one<T: serde::Serialize>(
    output: Output,
    v: &T,
    table: impl FnOnce(),
) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(v),
        Output::Table => {
            table();
            Ok(())
        }
    }
}

fn print_volume(v: &VolumeView) {
    println!("name:        {}", v.name);
    println!("id:          {}", v.id);
    println!("pool:        {} ({})", v.pool, v.driver);
    println!("size:        {} ({} bytes)", v.size, v.size_bytes);
    println!(
        "fs:          {}",
        v.fs.map_or("-".to_string(), |f| f.to_string())
    );
    println!("state:       {}", v.state.as_str());
    println!("created:     {}", v.created_at.to_rfc3339());
    if let Some(m) = &v.mountpoint {
        println!("mountpoint:  {m}");
    }
    if let Some(d) = &v.device {
        println!("device:      {d}");
    }
    if let Some(u) = &v.usage {
        println!(
            "used:        {} of {}",
            format_size(u.used_bytes),
            format_size(u.total_bytes)
        );
    }
    for (k, val) in &v.labels {
        println!("label:       {k}={val}");
    }
    for c in &v.consumers {
        println!(
            "consumer:    {}:{} (x{}) since {}",
            c.kind.as_str(),
            c.id,
            c.count,
            c.since.to_rfc3339()
        );
    }
}

pub(crate) fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}   "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(headers.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}
