//! `ballast node`: the nodes sharing this daemon's store, each one REST call.

use clap::Subcommand;

use ballast_core::nodes::{NodeState, NodeView};

use crate::cli::{print_json, print_one, print_table, seg, Output};
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List the nodes: ready (alive) or unreachable (its lease lapsed)
    Ls,
    /// Show one node: its record, pools and volumes
    Inspect { id: String },
}

fn state(n: &NodeView) -> &'static str {
    match n.state {
        NodeState::Ready => "ready",
        NodeState::Unreachable => "unreachable",
    }
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
        NodeCmd::Inspect { id } => {
            let n: NodeView = c.get(&format!("/v1/nodes/{}", seg("node", id)?))?;
            print_one(output, &n, || {
                println!("node:     {}", n.id);
                println!("state:    {}", state(&n));
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
