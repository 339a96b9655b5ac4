//! `ballast claim`: acquire, renew, release and list claims, each one REST
//! call. The holder defaults to this host's name (`--holder` or
//! `BALLAST_HOLDER` override it), so a later `renew` or `release` from the
//! same host needs no flag.

use clap::{Args, Subcommand};
use serde_json::json;

use ballast_server::api::{ClaimStatusView, ClaimView};

use crate::cli::{print_json, print_table, seg, Output};
use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum ClaimCmd {
    /// Take the group's lowest free ordinal N and its volumes GROUP-N-VOLUME
    /// (created on first use, reused with their data afterwards)
    Acquire {
        group: String,
        /// The claim's volumes, comma-separated: config,data
        #[arg(long, required = true)]
        volumes: String,
        /// Size of volumes this acquire creates, e.g. 10G [default: the daemon's]
        #[arg(long)]
        size: Option<String>,
        /// Pool of volumes this acquire creates [default: default]
        #[arg(long)]
        pool: Option<String>,
        /// Let the claim lapse unless renewed within this: 500ms, 2s, 5m, 1h
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        holder: Holder,
    },
    /// Extend a claim by its TTL (or a new --ttl)
    Renew {
        group: String,
        ordinal: u64,
        /// A new TTL: 500ms, 2s, 5m, 1h
        #[arg(long)]
        ttl: Option<String>,
        #[command(flatten)]
        holder: Holder,
    },
    /// Give a claim back; its volumes keep their data for the next holder
    Release {
        group: String,
        ordinal: u64,
        #[command(flatten)]
        holder: Holder,
    },
    /// List claims, of one group or all
    #[command(alias = "list")]
    Ls { group: Option<String> },
}

#[derive(Debug, Args)]
pub struct Holder {
    /// Who holds the claim [default: this host's name]
    #[arg(long = "holder", env = "BALLAST_HOLDER")]
    id: Option<String>,
}

impl Holder {
    fn get(&self) -> anyhow::Result<String> {
        match &self.id {
            Some(h) => Ok(h.clone()),
            None => {
                let host = nix::unistd::gethostname().map_err(|e| {
                    anyhow::anyhow!("cannot read the host name ({e}); use --holder")
                })?;
                Ok(host.to_string_lossy().into_owned())
            }
        }
    }
}

pub fn run(c: &Client, output: Output, cmd: &ClaimCmd) -> anyhow::Result<()> {
    match cmd {
        ClaimCmd::Acquire {
            group,
            volumes,
            size,
            pool,
            ttl,
            holder,
        } => {
            // An empty --volumes is an empty list, refused by the daemon
            // with its own message.
            let volumes: Vec<&str> = if volumes.trim().is_empty() {
                Vec::new()
            } else {
                volumes.split(',').collect()
            };
            let claim: ClaimView = c.post(
                &format!("/v1/claims/{}/acquire", seg("claim group", group)?),
                json!({"volumes": volumes, "size": size, "pool": pool, "ttl": ttl,
                    "holder": holder.get()?}),
            )?;
            print_claim(output, &claim)
        }
        ClaimCmd::Renew {
            group,
            ordinal,
            ttl,
            holder,
        } => {
            let claim: ClaimView = c.post(
                &format!("/v1/claims/{}/{ordinal}/renew", seg("claim group", group)?),
                json!({"holder": holder.get()?, "ttl": ttl}),
            )?;
            print_claim(output, &claim)
        }
        ClaimCmd::Release {
            group,
            ordinal,
            holder,
        } => {
            let claim: ClaimView = c.post(
                &format!(
                    "/v1/claims/{}/{ordinal}/release",
                    seg("claim group", group)?
                ),
                json!({"holder": holder.get()?}),
            )?;
            match output {
                Output::Json => print_json(&claim),
                Output::Table => {
                    println!("released {}/{}", claim.group, claim.ordinal);
                    Ok(())
                }
            }
        }
        ClaimCmd::Ls { group } => {
            let path = match group {
                Some(g) => format!("/v1/claims?group={}", seg("claim group", g)?),
                None => "/v1/claims".to_string(),
            };
            let claims: Vec<ClaimStatusView> = c.get(&path)?;
            match output {
                Output::Json => print_json(&claims),
                Output::Table => {
                    let rows = claims
                        .iter()
                        .map(|s| {
                            let mut row = row(&s.claim);
                            let state = if s.expired { "expired" } else { "held" };
                            row.insert(3, state.to_string());
                            row
                        })
                        .collect();
                    print_table(
                        &["GROUP", "ORDINAL", "HOLDER", "STATE", "EXPIRES", "VOLUMES"],
                        rows,
                    );
                    Ok(())
                }
            }
        }
    }
}

fn row(c: &ClaimView) -> Vec<String> {
    vec![
        c.group.clone(),
        c.ordinal.to_string(),
        c.holder.clone(),
        c.expires_at.map_or("-".into(), |e| e.to_rfc3339()),
        c.volumes.join(","),
    ]
}

fn print_claim(output: Output, c: &ClaimView) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(c),
        Output::Table => {
            print_table(
                &["GROUP", "ORDINAL", "HOLDER", "EXPIRES", "VOLUMES"],
                vec![row(c)],
            );
            for (vol, node) in &c.elsewhere {
                eprintln!("note: {vol} lives on node {node}; mount it there");
            }
            Ok(())
        }
    }
}
