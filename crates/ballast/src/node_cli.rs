//! `ballast node`: the nodes sharing this daemon's store, each one REST call.

use clap::Subcommand;

use ballast_core::model::format_size;
use ballast_core::nodes::{ClusterStatus, NodeState, NodeView, Offer};

use crate::cli::{print_json, print_one, print_table, seg, Output};
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List the nodes: ready (alive) or unreachable (its lease lapsed)
    Ls,
    /// Show one node: its record, pools and volumes
    Inspect { id: String },
    /// Place no new volumes on the node; what lives there stays and works
    Cordon { id: String },
    /// Place new volumes on the node again
    Uncordon { id: String },
    /// Cordon the node and list the volumes that still live there
    Drain { id: String },
}

fn state(n: &NodeView) -> &'static str {
    match n.state {
        NodeState::Ready => "ready",
        NodeState::Unreachable => "unreachable",
    }
}

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Name the controller and count the nodes by state
    Status,
}

pub fn cluster(c: &Client, output: Output, cmd: &ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status => {
            let s: ClusterStatus = c.get("/v1/cluster")?;
            print_one(output, &s, || {
                match &s.controller {
                    Some(ctl) => println!(
                        "controller: {} (since {})",
                        ctl.node,
                        ctl.since.to_rfc3339()
                    ),
                    None => println!("controller: none (an election is due)"),
                }
                println!("this node:  {}", s.this_node);
                println!(
                    "nodes:      {} ready, {} unreachable, {} cordoned",
                    s.ready, s.unreachable, s.cordoned
                );
            })
        }
    }
}

/// `ballast offers`: where a volume of this shape could go now.
#[derive(Debug, clap::Args)]
pub struct OffersArgs {
    /// The volume's size, e.g. 10G
    #[arg(long)]
    size: String,
    /// Only pools whose volumes have this filesystem: ext4 or xfs
    #[arg(long)]
    fs: Option<String>,
    /// Only pools with raw block volumes
    #[arg(long)]
    block: bool,
    /// Node labels that must all match: zone=a,rack=r1
    #[arg(long)]
    selector: Option<String>,
}

pub fn offers(c: &Client, output: Output, a: &OffersArgs) -> anyhow::Result<()> {
    let mut path = format!("/v1/offers?size={}", seg("size", &a.size)?);
    if let Some(fs) = &a.fs {
        path.push_str(&format!("&fs={}", seg("fs", fs)?));
    }
    if a.block {
        path.push_str("&block=true");
    }
    if let Some(sel) = a.selector.as_deref().filter(|s| !s.is_empty()) {
        path.push_str(&format!("&selector={}", seg("selector", sel)?));
    }
    let offers: Vec<Offer> = c.get(&path)?;
    match output {
        Output::Json => print_json(&offers),
        Output::Table => {
            let rows = offers
                .iter()
                .map(|o| {
                    let labels = o
                        .labels
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    vec![
                        o.node.clone(),
                        o.pool.clone(),
                        o.driver.to_string(),
                        format_size(o.available_bytes),
                        if labels.is_empty() {
                            "-".into()
                        } else {
                            labels
                        },
                    ]
                })
                .collect();
            print_table(&["NODE", "POOL", "DRIVER", "AVAILABLE", "LABELS"], rows);
            Ok(())
        }
    }
}

fn cordon(c: &Client, id: &str, on: bool) -> anyhow::Result<NodeView> {
    let verb = if on { "cordon" } else { "uncordon" };
    c.post(
        &format!("/v1/nodes/{}/{verb}", seg("node", id)?),
        serde_json::json!({}),
    )
}

fn labels(n: &NodeView) -> String {
    let Some(r) = &n.record else {
        return "-".into();
    };
    if r.labels.is_empty() {
        return "-".into();
    }
    r.labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn run(c: &Client, output: Output, cmd: &NodeCmd) -> anyhow::Result<()> {
    match cmd {
        NodeCmd::Ls => {
            let nodes: Vec<NodeView> = c.get("/v1/nodes")?;
            match output {
                Output::Json => print_json(&nodes),
                Output::Table => {
                    let rows = nodes
                        .iter()
                        .map(|n| {
                            vec![
                                n.id.clone(),
                                state(n).to_string(),
                                n.record
                                    .as_ref()
                                    .and_then(|r| r.address.clone())
                                    .unwrap_or_else(|| "-".into()),
                                labels(n),
                                n.pools.len().to_string(),
                                n.volumes.to_string(),
                            ]
                        })
                        .collect();
                    print_table(
                        &["NODE", "STATE", "ADDRESS", "LABELS", "POOLS", "VOLUMES"],
                        rows,
                    );
                    Ok(())
                }
            }
        }
        NodeCmd::Cordon { id } | NodeCmd::Uncordon { id } => {
            let n = cordon(c, id, matches!(cmd, NodeCmd::Cordon { .. }))?;
            print_one(output, &n, || {
                let what = if n.cordoned { "cordoned" } else { "uncordoned" };
                println!("{} {what}", n.id);
            })
        }
        // A cordon, then a read: the daemon holds no drain logic.
        NodeCmd::Drain { id } => {
            let n = cordon(c, id, true)?;
            let vols: Vec<ballast_server::api::VolumeView> = c.get("/v1/volumes")?;
            let left: Vec<String> = vols
                .into_iter()
                .filter(|v| v.node.as_deref() == Some(n.id.as_str()))
                .map(|v| v.name)
                .collect();
            match output {
                Output::Json => print_json(&serde_json::json!({ "node": n, "volumes": left })),
                Output::Table => {
                    println!("{} cordoned: no new volumes are placed on it", n.id);
                    if left.is_empty() {
                        println!("no volumes live there");
                    } else {
                        println!("still there ({}): {}", left.len(), left.join(", "));
                    }
                    Ok(())
                }
            }
        }
        NodeCmd::Inspect { id } => {
            let n: NodeView = c.get(&format!("/v1/nodes/{}", seg("node", id)?))?;
            print_one(output, &n, || {
                println!("node:     {}", n.id);
                println!("state:    {}", state(&n));
                println!("cordoned: {}", n.cordoned);
                if let Some(r) = &n.record {
                    println!("version:  {}", r.version);
                    println!("boot:     {}", r.boot_id);
                    println!("address:  {}", r.address.as_deref().unwrap_or("-"));
                    println!("labels:   {}", labels(&n));
                    println!("since:    {}", r.started_at.to_rfc3339());
                    for p in &r.pools {
                        println!(
                            "pool:     {} ({}), {} of {} bytes available",
                            p.name, p.driver, p.capacity.available_bytes, p.capacity.capacity_bytes
                        );
                    }
                } else {
                    println!("pools:    {}", n.pools.join(", "));
                }
                println!("volumes:  {}", n.volumes);
            })
        }
    }
}
