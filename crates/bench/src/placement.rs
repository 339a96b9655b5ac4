//! Placement across nodes (issue 12's targets), on three daemons sharing one
//! local etcd, each with its own node id, state and run directories:
//! - a create placed on another node, through REST on a node that is not
//!   the controller, against the same create placed on that node itself
//!   (target: p50 at most 1.5x): the remote one goes through the
//!   controller's placement and the other node's agent;
//! - `volume ls` on every node at N volumes spread over the three (target:
//!   at most 50 ms).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cluster::Etcd;
use crate::{ms, stats, Daemon};

const IDS: [&str; 3] = ["node-a", "node-b", "node-c"];

fn controller_of(d: &Daemon) -> Result<Option<String>> {
    let v: serde_json::Value = serde_json::from_str(&d.rest("GET", "/v1/cluster", "")?)?;
    Ok(v["controller"]["node"].as_str().map(String::from))
}

fn create_on(d: &Daemon, name: &str, node: &str) -> Result<Duration> {
    let t = Instant::now();
    let reply = d.rest(
        "POST",
        "/v1/volumes",
        &format!(r#"{{"name":"{name}","size":"64M","node":"{node}"}}"#),
    )?;
    let took = t.elapsed();
    let v: serde_json::Value = serde_json::from_str(&reply)?;
    if v["node"].as_str() != Some(node) {
        bail!("{name} was placed on {:?}, not {node}", v["node"]);
    }
    Ok(took)
}

pub fn placement_bench(dir: &Path, n: usize, volumes: usize) -> Result<()> {
    let etcd = Etcd::start(&dir.join("etcd"))?;
    let url = etcd.url();
    let args = |id: &'static str| -> Vec<String> {
        [
            "--store",
            url.as_str(),
            "--store-prefix",
            "/bench-placement/",
            "--node-id",
            id,
            "--overcommit-ratio",
            "100",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let mut nodes = Vec::new();
    for id in IDS {
        let a = args(id);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        nodes.push(Daemon::start(&dir.join(id), &a)?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let controller = loop {
        if let Some(c) = controller_of(&nodes[0])? {
            break c;
        }
        if Instant::now() > deadline {
            bail!("no controller elected");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    // Ask a node that is not the controller, for itself and for the third.
    let asker = IDS
        .iter()
        .position(|id| *id != controller)
        .context("a non-controller")?;
    let other = IDS
        .iter()
        .position(|id| *id != controller && *id != IDS[asker])
        .context("a third node")?;
    println!(
        "== placement: create 64M through REST on {} (controller {controller}), on itself vs on {} (n={n})",
        IDS[asker], IDS[other]
    );
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    for i in 0..n {
        local.push(create_on(&nodes[asker], &format!("l{i}"), IDS[asker])?);
        remote.push(create_on(&nodes[asker], &format!("r{i}"), IDS[other])?);
    }
    let (l, r) = (stats(local), stats(remote));
    println!("{:<14} {:>10} {:>10}", "placed on", "p50 ms", "p99 ms");
    println!(
        "{:<14} {:>10.1} {:>10.1}",
        "the same node",
        ms(l.p50),
        ms(l.p99)
    );
    println!(
        "{:<14} {:>10.1} {:>10.1}",
        "another node",
        ms(r.p50),
        ms(r.p99)
    );
    println!(
        "another / same node at p50: {:.2}x (target <= 1.5x)",
        ms(r.p50) / ms(l.p50)
    );

    println!("== placement: volume ls at {volumes} volumes over three nodes");
    let t = Instant::now();
    let have = 2 * n;
    for i in have..volumes {
        let (d, id) = (&nodes[i % 3], IDS[i % 3]);
        d.rest(
            "POST",
            "/v1/volumes",
            &format!(r#"{{"name":"s{i:05}","size":"64M","node":"{id}"}}"#),
        )?;
        if (i + 1) % 3000 == 0 {
            eprintln!("  created {}/{volumes}", i + 1);
        }
    }
    println!(
        "created {} in {:.1} s",
        volumes.saturating_sub(have),
        t.elapsed().as_secs_f64()
    );
    for (d, id) in nodes.iter().zip(IDS) {
        // Each node lists every node's volumes, once its watch caught up.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut ls = Vec::new();
        while ls.len() < 20 {
            let t = Instant::now();
            let body = d.rest("GET", "/v1/volumes", "")?;
            let took = t.elapsed();
            let count = serde_json::from_str::<serde_json::Value>(&body)?
                .as_array()
                .map_or(0, Vec::len);
            if count == volumes.max(have) {
                ls.push(took);
            } else if Instant::now() > deadline {
                bail!("{id} lists {count} volumes, expected {volumes}");
            }
        }
        let s = stats(ls);
        println!(
            "volume ls on {id}: p50 {:.1} ms, p99 {:.1} ms (target <= 50 ms)",
            ms(s.p50),
            ms(s.p99)
        );
    }
    Ok(())
}
