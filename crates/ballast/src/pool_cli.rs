//! `ballast pool create` and `ballast pool rm`: flags to one REST call.

use anyhow::Context;
use ballast_core::model::format_size;
use ballast_server::api::{CreatePoolBody, PoolView};
use clap::Args;

use crate::cli::{print_json, print_one, Output};
use crate::client::Client;

/// `ballast pool create` flags.
#[derive(Debug, Clone, Args)]
#[command(group = clap::ArgGroup::new("storage").args(["disks", "disk_file", "path"]))]
pub struct CreatePoolArgs {
    pub name: String,
    /// loop, dir, btrfs or rbd
    #[arg(long, default_value = "loop")]
    pub driver: String,
    /// btrfs: a block device to make the filesystem on (repeatable)
    #[arg(long = "disk", value_name = "DEVICE")]
    pub disks: Vec<String>,
    /// btrfs: an image file to make and use as the first disk, on a loop
    /// device; disk files the pool adds go in its directory
    #[arg(long, value_name = "PATH", requires = "disk_size")]
    pub disk_file: Option<String>,
    /// Size of --disk-file, e.g. 1G
    #[arg(long, value_name = "SIZE", requires = "disk_file")]
    pub disk_size: Option<String>,
    /// loop, dir: the pool's directory; btrfs: adopt this mounted btrfs
    #[arg(long, value_name = "DIR")]
    pub path: Option<String>,
    /// Used space above which the pool adds capacity (or warns) [default: 80%]
    #[arg(long, value_name = "PERCENT")]
    pub high_watermark: Option<String>,
    /// btrfs: size of each disk file the pool adds (needs --disk-file and --max-size)
    #[arg(long, value_name = "SIZE")]
    pub grow_step: Option<String>,
    /// btrfs: the pool never grows past this
    #[arg(long, value_name = "SIZE")]
    pub max_size: Option<String>,
    /// btrfs: a block device the pool may add when it fills (repeatable;
    /// used in order, before disk files)
    #[arg(long = "spare-disk", value_name = "DEVICE")]
    pub spare_disks: Vec<String>,
    /// Provisioned bytes may reach this multiple of the pool's capacity (of
    /// its max size, for a pool that can grow) [default: 1.0]
    #[arg(long, value_name = "RATIO")]
    pub overcommit: Option<f64>,
    /// rbd: the cluster's ceph.conf (the same path on every node)
    #[arg(long, value_name = "PATH", requires = "ceph_pool")]
    pub ceph_conf: Option<String>,
    /// rbd: the RADOS pool holding the images
    #[arg(long, value_name = "POOL", requires = "ceph_conf")]
    pub ceph_pool: Option<String>,
    /// rbd: the cephx id, without "client." [default: admin]
    #[arg(long, value_name = "ID")]
    pub ceph_user: Option<String>,
    /// rbd: the keyring holding that id's key [default: ceph.conf's]
    #[arg(long, value_name = "PATH")]
    pub keyring: Option<String>,
    /// rbd: the filesystem of volumes that ask for none (ext4 or xfs)
    #[arg(long, value_name = "FS")]
    pub fs: Option<String>,
}

pub fn create(c: &Client, output: Output, a: &CreatePoolArgs) -> anyhow::Result<()> {
    // JSON has no infinity or NaN (they would go as null, the default):
    // refuse here what the daemon would refuse.
    if let Some(r) = a.overcommit {
        ballast_core::model::validate_overcommit_ratio(r)?;
    }
    let body = CreatePoolBody {
        name: a.name.clone(),
        driver: Some(a.driver.clone()),
        disks: a.disks.clone(),
        disk_file: a.disk_file.clone(),
        disk_size: a.disk_size.clone(),
        path: a.path.clone(),
        high_watermark: a.high_watermark.clone(),
        grow_step: a.grow_step.clone(),
        max_size: a.max_size.clone(),
        spare_disks: a.spare_disks.clone(),
        overcommit_ratio: a.overcommit,
        ceph_conf: a.ceph_conf.clone(),
        ceph_pool: a.ceph_pool.clone(),
        ceph_user: a.ceph_user.clone(),
        keyring: a.keyring.clone(),
        fs: a.fs.clone(),
    };
    let p: PoolView = c.post(
        "/v1/pools",
        serde_json::to_value(&body).context("encoding the request")?,
    )?;
    print_one(output, &p, || println!("{}", p.name))
}

pub fn delete(c: &Client, output: Output, name: &str, seg: &str) -> anyhow::Result<()> {
    c.call::<serde_json::Value>(hyper::Method::DELETE, &format!("/v1/pools/{seg}"), None)?;
    match output {
        Output::Json => print_json(&serde_json::json!({ "deleted": name })),
        Output::Table => {
            println!("{name}");
            Ok(())
        }
    }
}

/// The growth settings and disks of `pool inspect`.
pub fn print_growth(p: &PoolView) {
    let g = &p.growth;
    println!("watermark:     {}%", g.high_watermark);
    if let Some(s) = g.grow_step {
        println!("grow step:     {}", format_size(s));
    }
    if let Some(m) = g.max_size {
        println!("max size:      {}", format_size(m));
    }
    if let Some(d) = &g.disk_dir {
        println!("disk dir:      {}", d.display());
    }
    if p.adopted {
        println!("adopted:       true");
    }
    for d in &p.disks {
        println!(
            "disk:          {} ({}, {})",
            d.path.display(),
            match d.kind {
                ballast_core::model::DiskKind::File => "file",
                ballast_core::model::DiskKind::Device => "device",
            },
            format_size(d.size_bytes)
        );
    }
    for s in &g.spare_disks {
        println!("spare disk:    {}", s.display());
    }
}
