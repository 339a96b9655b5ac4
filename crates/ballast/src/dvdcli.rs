//! dvdcli compatibility: what Apache Mesos' `docker/volume` isolator runs.
//!
//! Invoked as `dvdcli` (a symlink to this binary) or `ballast dvdcli`, it
//! speaks the Docker volume plugin protocol to the named plugin, whichever
//! it is, found by Docker's discovery rules: `/run/docker/plugins/<n>.sock`
//! or `<n>/<n>.sock`, then `<n>.spec` or `<n>.json` in /etc/docker/plugins
//! and /usr/lib/docker/plugins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Parser, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

use crate::client::{Client, Endpoint};

#[derive(Debug, Parser)]
#[command(
    name = "dvdcli",
    version,
    about = "A Docker Volume Driver CLI (ballast's dvdcli)"
)]
pub struct Dvdcli {
    #[command(subcommand)]
    pub command: DvdCommand,
}

#[derive(Debug, Subcommand)]
pub enum DvdCommand {
    /// Create a volume
    Create(VolumeArgs),
    /// Remove a volume
    Remove(VolumeArgs),
    /// Mount a volume (creating it if missing) and print its path
    Mount(VolumeArgs),
    /// Unmount a volume
    Unmount(VolumeArgs),
    /// Print the path of a mounted volume
    Path(VolumeArgs),
    /// Print a volume as the plugin describes it
    Get(VolumeArgs),
    /// List the plugin's volumes
    List(DriverArgs),
    /// Print the version
    Version,
}

#[derive(Debug, Args)]
pub struct DriverArgs {
    /// The volume plugin's name
    #[arg(long, default_value = "rexray")]
    pub volumedriver: String,
}

#[derive(Debug, Args)]
pub struct VolumeArgs {
    /// The volume plugin's name
    #[arg(long, default_value = "rexray")]
    pub volumedriver: String,
    /// The volume's name
    #[arg(long)]
    pub volumename: String,
    /// Create options KEY=VALUE; repeatable or comma-separated
    #[arg(long)]
    pub volumeopts: Vec<String>,
    /// Require the volume to exist already (no implicit create)
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub explicitcreate: bool,
}

const PLUGIN_MEDIA_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// The directories Docker searches for plugin sockets and spec files.
#[derive(Debug, Clone)]
pub struct Discovery {
    pub socket_dir: PathBuf,
    pub spec_dirs: Vec<PathBuf>,
}

impl Default for Discovery {
    fn default() -> Self {
        Self {
            socket_dir: "/run/docker/plugins".into(),
            spec_dirs: vec![
                "/etc/docker/plugins".into(),
                "/usr/lib/docker/plugins".into(),
            ],
        }
    }
}

impl Discovery {
    /// Find plugin `name` the way dockerd does.
    pub fn find(&self, name: &str) -> anyhow::Result<Endpoint> {
        ballast_core::model::validate_name("volume driver", name)?;
        for sock in [
            self.socket_dir.join(format!("{name}.sock")),
            self.socket_dir.join(name).join(format!("{name}.sock")),
        ] {
            if sock.exists() {
                return Ok(Endpoint::Unix(sock));
            }
        }
        for dir in &self.spec_dirs {
            let spec = dir.join(format!("{name}.spec"));
            if let Ok(text) = std::fs::read_to_string(&spec) {
                return parse_addr(text.trim()).with_context(|| spec.display().to_string());
            }
            let json_path = dir.join(format!("{name}.json"));
            if let Ok(text) = std::fs::read_to_string(&json_path) {
                let v: Value =
                    serde_json::from_str(&text).with_context(|| json_path.display().to_string())?;
                let addr = v["Addr"]
                    .as_str()
                    .ok_or_else(|| anyhow!("{}: no Addr", json_path.display()))?;
                return parse_addr(addr).with_context(|| json_path.display().to_string());
            }
        }
        bail!(
            "volume driver {name:?} not found (no socket in {} and no spec file)",
            self.socket_dir.display()
        )
    }
}

fn parse_addr(addr: &str) -> anyhow::Result<Endpoint> {
    if let Some(path) = addr.strip_prefix("unix://") {
        return Ok(Endpoint::Unix(path.into()));
    }
    if let Some(rest) = addr.strip_prefix("tcp://") {
        return Endpoint::parse_host(&format!("http://{rest}"));
    }
    if let Some(rest) = addr.strip_prefix("http://") {
        return Endpoint::parse_host(&format!("http://{rest}"));
    }
    if addr.starts_with('/') {
        return Ok(Endpoint::Unix(addr.into()));
    }
    bail!("plugin address {addr:?}: use unix:///path or tcp://host:port")
}

/// Parse `--volumeopts`: each is KEY=VALUE or a comma-separated list of them.
pub fn parse_opts(opts: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for group in opts {
        for kv in group.split(',').filter(|s| !s.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow!("volume option {kv:?}: must be KEY=VALUE"))?;
            if k.is_empty() {
                bail!("volume option {kv:?}: empty key");
            }
            out.insert(k.to_string(), v.to_string());
        }
    }
    Ok(out)
}

/// A volume plugin reached over its socket.
struct Plugin {
    name: String,
    client: Client,
}

impl Plugin {
    fn connect(discovery: &Discovery, name: &str) -> anyhow::Result<Plugin> {
        let endpoint = discovery.find(name)?;
        let plugin = Plugin {
            name: name.to_string(),
            client: Client::new(endpoint, None, None)?,
        };
        let act = plugin.call("/Plugin.Activate", json!({}))?;
        let implements = act["Implements"].as_array().cloned().unwrap_or_default();
        if !implements.iter().any(|v| v == "VolumeDriver") {
            bail!("plugin {name:?} does not implement VolumeDriver");
        }
        Ok(plugin)
    }

    fn call(&self, endpoint: &str, body: Value) -> anyhow::Result<Value> {
        let (status, bytes) = self
            .client
            .raw(
                Method::POST,
                endpoint,
                body.to_string().into_bytes(),
                PLUGIN_MEDIA_TYPE,
            )
            .with_context(|| format!("volume driver {:?}", self.name))?;
        let v: Value = serde_json::from_slice(&bytes).map_err(|_| {
            anyhow!(
                "volume driver {:?}: {endpoint}: {status}: {}",
                self.name,
                String::from_utf8_lossy(&bytes).trim()
            )
        })?;
        if let Some(err) = v["Err"].as_str().filter(|e| !e.is_empty()) {
            bail!("{err}");
        }
        if !status.is_success() {
            bail!("volume driver {:?}: {endpoint}: {status}", self.name);
        }
        Ok(v)
    }
}

pub fn run(cli: Dvdcli) -> anyhow::Result<()> {
    run_with(cli, &Discovery::default())
}

pub fn run_with(cli: Dvdcli, discovery: &Discovery) -> anyhow::Result<()> {
    let v = match &cli.command {
        DvdCommand::Version => {
            println!("dvdcli (ballast) {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        DvdCommand::List(a) => {
            let p = Plugin::connect(discovery, &a.volumedriver)?;
            let r = p.call("/VolumeDriver.List", json!({}))?;
            for v in r["Volumes"].as_array().into_iter().flatten() {
                println!("{}", v["Name"].as_str().unwrap_or_default());
            }
            return Ok(());
        }
        DvdCommand::Create(v)
        | DvdCommand::Remove(v)
        | DvdCommand::Mount(v)
        | DvdCommand::Unmount(v)
        | DvdCommand::Path(v)
        | DvdCommand::Get(v) => v,
    };
    let opts = parse_opts(&v.volumeopts)?;
    let p = Plugin::connect(discovery, &v.volumedriver)?;
    let name = json!(v.volumename);
    let exists = || p.call("/VolumeDriver.Get", json!({"Name": name})).is_ok();
    match &cli.command {
        DvdCommand::Create(_) => {
            p.call("/VolumeDriver.Create", json!({"Name": name, "Opts": opts}))?;
            println!("{}", v.volumename);
        }
        DvdCommand::Remove(_) => {
            p.call("/VolumeDriver.Remove", json!({"Name": name}))?;
        }
        DvdCommand::Mount(_) => {
            if !exists() {
                if v.explicitcreate {
                    bail!(
                        "volume {:?} does not exist (--explicitcreate)",
                        v.volumename
                    );
                }
                p.call("/VolumeDriver.Create", json!({"Name": name, "Opts": opts}))?;
            }
            let r = p.call("/VolumeDriver.Mount", json!({"Name": name}))?;
            println!("{}", r["Mountpoint"].as_str().unwrap_or_default());
        }
        DvdCommand::Unmount(_) => {
            p.call("/VolumeDriver.Unmount", json!({"Name": name}))?;
        }
        DvdCommand::Path(_) => {
            let r = p.call("/VolumeDriver.Path", json!({"Name": name}))?;
            let path = r["Mountpoint"].as_str().unwrap_or_default();
            if !path.is_empty() {
                println!("{path}");
            }
        }
        DvdCommand::Get(_) => {
            let r = p.call("/VolumeDriver.Get", json!({"Name": name}))?;
            println!("{}", serde_json::to_string_pretty(&r["Volume"])?);
        }
        DvdCommand::List(_) | DvdCommand::Version => {}
    }
    Ok(())
}

/// Whether this process was started as `dvdcli` (through a symlink).
pub fn invoked_as_dvdcli(argv0: &Path) -> bool {
    argv0.file_name().is_some_and(|n| n == "dvdcli")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opts_repeatable_and_comma_separated() {
        let o = parse_opts(&["size=5,fs=xfs".into(), "pool=p".into()]).unwrap();
        assert_eq!(o["size"], "5");
        assert_eq!(o["fs"], "xfs");
        assert_eq!(o["pool"], "p");
        assert!(parse_opts(&["size".into()]).is_err());
        assert!(parse_opts(&["=1".into()]).is_err());
    }

    #[test]
    fn discovery_order() {
        let dir = tempfile::tempdir().unwrap();
        let socks = dir.path().join("socks");
        let etc = dir.path().join("etc");
        std::fs::create_dir_all(socks.join("b")).unwrap();
        std::fs::create_dir_all(&etc).unwrap();
        let d = Discovery {
            socket_dir: socks.clone(),
            spec_dirs: vec![etc.clone()],
        };
        assert!(d.find("a").is_err());
        std::fs::write(etc.join("a.spec"), "unix:///x/a.sock\n").unwrap();
        assert!(matches!(d.find("a").unwrap(), Endpoint::Unix(p) if p == Path::new("/x/a.sock")));
        std::fs::write(
            etc.join("c.json"),
            r#"{"Name":"c","Addr":"tcp://127.0.0.1:9"}"#,
        )
        .unwrap();
        assert!(matches!(
            d.find("c").unwrap(),
            Endpoint::Tcp { port: 9, .. }
        ));
        std::fs::write(socks.join("b").join("b.sock"), "").unwrap();
        assert!(matches!(d.find("b").unwrap(), Endpoint::Unix(p) if p == socks.join("b/b.sock")));
        std::fs::write(socks.join("a.sock"), "").unwrap();
        assert!(matches!(d.find("a").unwrap(), Endpoint::Unix(p) if p == socks.join("a.sock")));
        assert!(d.find("../x").is_err());
    }
}
