//! Daemon configuration: defaults, then the TOML file, then `BALLAST_*`
//! environment variables, then flags (clap reads flag and env together, the
//! flag winning), so the precedence is flags > env > file > defaults.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ballast_core::model::{parse_size, DriverKind, FsType};
use clap::Args;
use serde::Deserialize;

pub const DEFAULT_STATE_DIR: &str = "/var/lib/ballast";
pub const DEFAULT_RUN_DIR: &str = "/run/ballast";
pub const DEFAULT_CONFIG: &str = "/etc/ballast/config.toml";
pub const DEFAULT_DOCKER_PLUGIN_DIR: &str = "/run/docker/plugins";
/// The TCP listener of the REST API and /metrics, on unless `--listen none`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7420";

/// `ballast serve` flags; each also reads its `BALLAST_*` variable.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// Where the store, token and pools live [default: /var/lib/ballast]
    #[arg(long, env = "BALLAST_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where sockets and mounts live [default: /run/ballast]
    #[arg(long, env = "BALLAST_RUN_DIR")]
    pub run_dir: Option<PathBuf>,
    /// TOML config file [default: /etc/ballast/config.toml if it exists]
    #[arg(long, env = "BALLAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Also serve the REST API and /metrics on this TCP address (token
    /// required, except reads from loopback); `none` switches it off
    /// [default: 127.0.0.1:7420]
    #[arg(long, env = "BALLAST_LISTEN")]
    pub listen: Option<String>,
    /// PEM certificate for TLS on --listen
    #[arg(long, env = "BALLAST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS on --listen
    #[arg(long, env = "BALLAST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Size of volumes created without one [default: 1G]
    #[arg(long, env = "BALLAST_DEFAULT_SIZE")]
    pub default_size: Option<String>,
    /// Filesystem of loop volumes created without one [default: ext4]
    #[arg(long, env = "BALLAST_DEFAULT_FS")]
    pub default_fs: Option<String>,
    /// Overcommit ratio of the default pool at its creation [default: 1.0]
    #[arg(long, env = "BALLAST_OVERCOMMIT_RATIO")]
    pub overcommit_ratio: Option<f64>,
    /// Log format: text or json [default: text]
    #[arg(long, env = "BALLAST_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Driver of the default pool at its creation: loop or dir [default:
    /// loop where loop devices work, else dir]
    #[arg(long, env = "BALLAST_DEFAULT_DRIVER")]
    pub default_driver: Option<String>,
    /// Name of the Docker volume plugin (its socket is
    /// <docker-plugin-dir>/<name>.sock) [default: ballast]
    #[arg(long, env = "BALLAST_DOCKER_PLUGIN_NAME")]
    pub docker_plugin_name: Option<String>,
    /// Where dockerd looks for plugin sockets [default: /run/docker/plugins]
    #[arg(long, env = "BALLAST_DOCKER_PLUGIN_DIR")]
    pub docker_plugin_dir: Option<PathBuf>,
    /// Do not serve the Docker volume plugin
    #[arg(long, env = "BALLAST_NO_DOCKER")]
    pub no_docker: bool,
    /// CSI endpoint, unix:///PATH [default: unix://<run-dir>/csi.sock]
    #[arg(long, env = "BALLAST_CSI_ENDPOINT")]
    pub csi_endpoint: Option<String>,
    /// This node's ID for CSI [default: the hostname]
    #[arg(long, env = "BALLAST_NODE_ID")]
    pub node_id: Option<String>,
    /// CSI services to serve: all, controller or node [default: all]
    #[arg(long, env = "BALLAST_CSI_MODE")]
    pub csi_mode: Option<String>,
    /// How often the watchers (autogrow, pool remediation) look [default: 2s]
    #[arg(long, env = "BALLAST_WATCH_INTERVAL")]
    pub watch_interval: Option<String>,
    /// How long a client may take to send a request's head once it started
    /// it, on the API sockets and --listen [default: 10s]
    #[arg(long, env = "BALLAST_HEADER_TIMEOUT")]
    pub header_timeout: Option<String>,
    /// How long a connection may wait for its next request (keep-alive)
    /// before the daemon closes it [default: 60s]
    #[arg(long, env = "BALLAST_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// A label of this node, KEY=VALUE (repeat, or comma-separated in the
    /// variable): zone, rack, ... shown by `node ls` [default: none]
    #[arg(
        long = "node-label",
        value_name = "KEY=VALUE",
        env = "BALLAST_NODE_LABELS",
        value_delimiter = ','
    )]
    pub node_labels: Vec<String>,
    /// How long this node's record outlives its daemon (a node unheard of
    /// that long is unreachable) [default: 10s]
    #[arg(long, env = "BALLAST_NODE_TTL")]
    pub node_ttl: Option<String>,
    /// Where the records live: `embedded` (a file in the state dir, for one
    /// machine), or `etcd://HOST:PORT[,HOST:PORT...]` (`etcds://` for TLS)
    /// shared by every node of a cluster [default: embedded]
    #[arg(long, env = "BALLAST_STORE")]
    pub store: Option<String>,
    /// Prefix of every key in etcd, so several clusters can share one etcd
    /// [default: /ballast/]
    #[arg(long, env = "BALLAST_STORE_PREFIX")]
    pub store_prefix: Option<String>,
    /// etcd user (its password is read from --etcd-password-file)
    #[arg(long, env = "BALLAST_ETCD_USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password
    #[arg(long, env = "BALLAST_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
    /// PEM CA that signed etcd's certificate (etcds://)
    #[arg(long, env = "BALLAST_ETCD_CA")]
    pub etcd_ca: Option<PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key)
    #[arg(long, env = "BALLAST_ETCD_CERT", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// PEM client key for etcd (with --etcd-cert)
    #[arg(long, env = "BALLAST_ETCD_KEY", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// Accept volume moves (TLS; the certificate's fingerprint goes into
    /// this node's record) on this TCP address; `none` switches it off
    /// [default: the host of --listen, any port]
    #[arg(long, env = "BALLAST_TRANSFER_LISTEN")]
    pub transfer_listen: Option<String>,
}

/// Where the records live.
#[derive(Debug, Clone, PartialEq)]
pub enum StoreConfig {
    /// `<state-dir>/ballast.redb`.
    Embedded,
    Etcd(EtcdSettings),
}

/// How to reach etcd; turned into the etcd store's own config at start.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSettings {
    /// As given: `etcd://h1:2379,h2:2379`.
    pub url: String,
    /// None: the URL's path, else `/ballast/`.
    pub prefix: Option<String>,
    pub user: Option<(String, PathBuf)>,
    pub ca: Option<PathBuf>,
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// The config file's keys (all optional; unknown keys are errors).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    listen: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    default_size: Option<String>,
    default_fs: Option<String>,
    overcommit_ratio: Option<f64>,
    log_format: Option<String>,
    default_driver: Option<String>,
    docker_plugin_name: Option<String>,
    docker_plugin_dir: Option<PathBuf>,
    /// false switches the Docker plugin off.
    docker: Option<bool>,
    csi_endpoint: Option<String>,
    node_id: Option<String>,
    csi_mode: Option<String>,
    watch_interval: Option<String>,
    header_timeout: Option<String>,
    idle_timeout: Option<String>,
    node_labels: Option<std::collections::BTreeMap<String, String>>,
    node_ttl: Option<String>,
    store: Option<String>,
    store_prefix: Option<String>,
    etcd_user: Option<String>,
    etcd_password_file: Option<PathBuf>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    transfer_listen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub run_dir: PathBuf,
    /// The TCP address of the REST API and /metrics; None: `--listen none`.
    pub listen: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub default_size: u64,
    pub default_fs: FsType,
    pub overcommit_ratio: f64,
    pub log_format: LogFormat,
    /// None: loop where possible, else dir.
    pub default_driver: Option<DriverKind>,
    /// The Docker plugin's socket, or None when switched off.
    pub docker_socket: Option<PathBuf>,
    /// The CSI socket.
    pub csi_socket: PathBuf,
    pub node_id: String,
    pub csi_mode: ballast_server::csi::CsiMode,
    /// How often the watchers run.
    pub watch_interval: std::time::Duration,
    /// Header and keep-alive timeouts of the HTTP listeners.
    pub conn_timeouts: ballast_server::listen::ConnTimeouts,
    pub store: StoreConfig,
    pub node_labels: std::collections::BTreeMap<String, String>,
    pub node_ttl: std::time::Duration,
    /// Where move streams are accepted; None: `--transfer-listen none`.
    pub transfer_listen: Option<String>,
}

impl Config {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Config> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => read_file(Path::new(DEFAULT_CONFIG))?,
            None => FileConfig::default(),
        };
        let store = resolve_store(args, &file)?;
        let node_labels = resolve_labels(&args.node_labels, file.node_labels.clone())?;
        let node_ttl = match args.node_ttl.clone().or(file.node_ttl.clone()) {
            None => ballast_core::nodes::NODE_TTL,
            Some(t) => {
                let ttl = ballast_core::claims::parse_ttl(&t)
                    .map_err(|e| anyhow::anyhow!("node ttl: {e}"))?;
                if ttl < std::time::Duration::from_secs(1) {
                    anyhow::bail!("node ttl {t:?}: at least 1s (etcd leases count whole seconds)");
                }
                ttl
            }
        };
        let size_text = args
            .default_size
            .clone()
            .or(file.default_size)
            .unwrap_or_else(|| "1G".into());
        let fs_text = args
            .default_fs
            .clone()
            .or(file.default_fs)
            .unwrap_or_else(|| "ext4".into());
        let log_format = match args
            .log_format
            .clone()
            .or(file.log_format)
            .as_deref()
            .unwrap_or("text")
        {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => anyhow::bail!("log format {other:?}: use text or json"),
        };
        let tls = match (
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => anyhow::bail!("tls needs both a certificate and a key"),
        };
        let ratio = ballast_core::model::validate_overcommit_ratio(
            args.overcommit_ratio
                .or(file.overcommit_ratio)
                .unwrap_or(1.0),
        )?;
        let default_driver = match args
            .default_driver
            .clone()
            .or(file.default_driver)
            .as_deref()
        {
            None => None,
            Some("loop") => Some(DriverKind::Loop),
            Some("dir") => Some(DriverKind::Dir),
            Some(other) => anyhow::bail!("default driver {other:?}: use loop or dir"),
        };
        let docker_socket = if args.no_docker || file.docker == Some(false) {
            None
        } else {
            let name = args
                .docker_plugin_name
                .clone()
                .or(file.docker_plugin_name)
                .unwrap_or_else(|| "ballast".into());
            ballast_core::model::validate_name("docker plugin", &name)?;
            let dir = args
                .docker_plugin_dir
                .clone()
                .or(file.docker_plugin_dir)
                .unwrap_or_else(|| DEFAULT_DOCKER_PLUGIN_DIR.into());
            Some(dir.join(format!("{name}.sock")))
        };
        let run_dir = args
            .run_dir
            .clone()
            .or(file.run_dir)
            .unwrap_or_else(|| DEFAULT_RUN_DIR.into());
        let csi_socket = match args.csi_endpoint.clone().or(file.csi_endpoint) {
            None => run_dir.join("csi.sock"),
            Some(url) => match url.strip_prefix("unix://") {
                Some(path) if path.starts_with('/') => PathBuf::from(path),
                _ => anyhow::bail!("csi endpoint {url:?}: use unix:///absolute/path"),
            },
        };
        let node_id = match args.node_id.clone().or(file.node_id) {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .context("reading the hostname for --node-id")?
                .to_string_lossy()
                .into_owned(),
        };
        // A node id is part of store keys (attachment/<volume>/<node>) and
        // of the default pool's name on a shared store: a name's rules.
        ballast_core::model::validate_name("node", &node_id).map_err(|e| anyhow::anyhow!("{e}"))?;
        let csi_mode = args
            .csi_mode
            .clone()
            .or(file.csi_mode)
            .unwrap_or_else(|| "all".into())
            .parse()
            .map_err(|e: String| anyhow::anyhow!(e))?;
        let watch_interval = ballast_core::claims::parse_ttl(
            &args
                .watch_interval
                .clone()
                .or(file.watch_interval)
                .unwrap_or_else(|| "2s".into()),
        )
        .map_err(|e| anyhow::anyhow!("watch interval: {e}"))?;
        let duration = |what: &str, v: Option<String>, default: std::time::Duration| {
            v.map_or(Ok(default), |v| {
                ballast_core::claims::parse_ttl(&v).map_err(|e| anyhow::anyhow!("{what}: {e}"))
            })
        };
        let defaults = ballast_server::listen::ConnTimeouts::default();
        let conn_timeouts = ballast_server::listen::ConnTimeouts {
            header: duration(
                "header timeout",
                args.header_timeout.clone().or(file.header_timeout),
                defaults.header,
            )?,
            idle: duration(
                "idle timeout",
                args.idle_timeout.clone().or(file.idle_timeout),
                defaults.idle,
            )?,
        };
        let listen = match args
            .listen
            .clone()
            .or(file.listen)
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
        {
            "none" => None,
            addr => Some(addr.to_string()),
        };
        if tls.is_some() && listen.is_none() {
            anyhow::bail!("tls is configured but the tcp listener is off (--listen none)");
        }
        let transfer_listen = match args.transfer_listen.clone().or(file.transfer_listen) {
            Some(v) if v == "none" => None,
            Some(v) => {
                v.parse::<std::net::SocketAddr>()
                    .map_err(|e| anyhow::anyhow!("transfer listen address {v:?}: {e}"))?;
                Some(v)
            }
            None => {
                // The REST listener's host: the address other nodes reach.
                let host = listen
                    .as_deref()
                    .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
                    .map_or_else(|| "127.0.0.1".to_string(), |a| a.ip().to_string());
                let host = if host.contains(':') {
                    format!("[{host}]")
                } else {
                    host
                };
                Some(format!("{host}:0"))
            }
        };
        Ok(Config {
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            run_dir,
            listen,
            tls,
            default_size: parse_size(&size_text).context("default size")?,
            default_fs: fs_text.parse().context("default filesystem")?,
            overcommit_ratio: ratio,
            log_format,
            default_driver,
            docker_socket,
            csi_socket,
            node_id,
            csi_mode,
            watch_interval,
            conn_timeouts,
            store,
            node_labels,
            node_ttl,
            transfer_listen,
        })
    }

    pub fn api_socket(&self) -> PathBuf {
        self.run_dir.join("api.sock")
    }

    /// Where the daemon writes the address its TCP listener bound (useful
    /// with `--listen HOST:0`).
    pub fn listen_addr_file(&self) -> PathBuf {
        self.run_dir.join("listen.addr")
    }
}

/// `--node-label` pairs (they win) over the file's `node_labels` table; keys
/// and values follow the volume label rules.
fn resolve_labels(
    flags: &[String],
    file: Option<std::collections::BTreeMap<String, String>>,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut labels = file.unwrap_or_default();
    for pair in flags {
        let Some((k, v)) = pair.split_once('=') else {
            anyhow::bail!("node label {pair:?}: use KEY=VALUE");
        };
        labels.insert(k.to_string(), v.to_string());
    }
    for (k, v) in &labels {
        ballast_core::model::validate_label(k, v)
            .map_err(|e| anyhow::anyhow!("node label: {e}"))?;
    }
    Ok(labels)
}

fn resolve_store(args: &ServeArgs, file: &FileConfig) -> anyhow::Result<StoreConfig> {
    let url = args.store.clone().or(file.store.clone());
    let prefix = args.store_prefix.clone().or(file.store_prefix.clone());
    let user = args.etcd_user.clone().or(file.etcd_user.clone());
    let password_file = args
        .etcd_password_file
        .clone()
        .or(file.etcd_password_file.clone());
    let ca = args.etcd_ca.clone().or(file.etcd_ca.clone());
    let cert = args.etcd_cert.clone().or(file.etcd_cert.clone());
    let key = args.etcd_key.clone().or(file.etcd_key.clone());
    let url = match url.as_deref() {
        None | Some("embedded") => {
            // etcd options without etcd are a mistake worth naming.
            let stray = [
                ("store prefix", prefix.is_some()),
                ("etcd user", user.is_some() || password_file.is_some()),
                ("etcd tls", ca.is_some() || cert.is_some() || key.is_some()),
            ];
            if let Some((what, _)) = stray.iter().find(|(_, set)| *set) {
                anyhow::bail!(
                    "{what} is set but the store is embedded; use --store etcd://HOST:PORT"
                );
            }
            return Ok(StoreConfig::Embedded);
        }
        Some(u) => u.to_string(),
    };
    let tls_scheme = url.starts_with("etcds://");
    if !tls_scheme && !url.starts_with("etcd://") {
        anyhow::bail!(
            "store {url:?}: use embedded, etcd://HOST:PORT[,HOST:PORT...] or etcds://..."
        );
    }
    if !tls_scheme && (ca.is_some() || cert.is_some()) {
        anyhow::bail!("etcd tls options need an etcds:// store URL");
    }
    if let Some(prefix) = &prefix {
        if prefix.is_empty() || prefix.len() > 256 || prefix.chars().any(char::is_control) {
            anyhow::bail!("store prefix {prefix:?}: 1 to 256 characters, no control characters");
        }
    }
    let user = match (user, password_file) {
        (Some(u), Some(p)) => Some((u, p)),
        (None, None) => None,
        _ => anyhow::bail!("an etcd user needs --etcd-password-file, and the reverse"),
    };
    let client_cert = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => anyhow::bail!("an etcd client certificate needs its key, and the reverse"),
    };
    Ok(StoreConfig::Etcd(EtcdSettings {
        url,
        prefix,
        user,
        ca,
        client_cert,
    }))
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_flags_over_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "state_dir = \"/from/file\"\nrun_dir = \"/run/file\"\ndefault_size = \"2G\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            run_dir: Some("/run/flag".into()),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/from/file"));
        assert_eq!(c.run_dir, PathBuf::from("/run/flag"));
        assert_eq!(c.default_size, 2 << 30);
        assert_eq!(c.default_fs, FsType::Ext4);
    }

    #[test]
    fn unknown_key_and_bad_values_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "stat_dir = \"/x\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path.clone()),
            ..Default::default()
        };
        let err = format!("{:#}", Config::resolve(&args).unwrap_err());
        assert!(err.contains("stat_dir"), "{err}");
        std::fs::write(&path, "default_size = \"10Q\"\n").unwrap();
        assert!(Config::resolve(&args).is_err());
        std::fs::write(&path, "overcommit_ratio = -1.0\n").unwrap();
        assert!(Config::resolve(&args).is_err());
    }

    #[test]
    fn overcommit_ratios_out_of_range_are_refused_from_file_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        let mut args = ServeArgs {
            config: Some(path.clone()),
            node_id: Some("n".into()),
            ..Default::default()
        };
        for bad in ["1e308", "0.0", "-1.0", "100.5", "inf", "nan"] {
            std::fs::write(&path, format!("overcommit_ratio = {bad}\n")).unwrap();
            let err = format!("{:#}", Config::resolve(&args).unwrap_err());
            assert!(
                err.contains("overcommit ratio") && err.contains("at most 100"),
                "{bad}: {err}"
            );
        }
        std::fs::write(&path, "overcommit_ratio = 100.0\n").unwrap();
        assert_eq!(Config::resolve(&args).unwrap().overcommit_ratio, 100.0);
        // A flag beats the file, and is checked the same way.
        for bad in [1e308, f64::INFINITY, f64::NAN, 0.0, 101.0] {
            args.overcommit_ratio = Some(bad);
            let err = format!("{:#}", Config::resolve(&args).unwrap_err());
            assert!(err.contains("at most 100"), "{bad}: {err}");
        }
        args.overcommit_ratio = Some(2.5);
        assert_eq!(Config::resolve(&args).unwrap().overcommit_ratio, 2.5);
    }

    #[test]
    fn connection_timeouts_have_defaults_and_take_file_and_flag() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "header_timeout = \"3s\"\n").unwrap();
        let mut args = ServeArgs {
            config: Some(path.clone()),
            node_id: Some("n".into()),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.conn_timeouts.header, std::time::Duration::from_secs(3));
        assert_eq!(c.conn_timeouts.idle, std::time::Duration::from_secs(60));
        args.idle_timeout = Some("500ms".into());
        args.header_timeout = Some("2m".into());
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.conn_timeouts.header, std::time::Duration::from_secs(120));
        assert_eq!(c.conn_timeouts.idle, std::time::Duration::from_millis(500));
        args.idle_timeout = Some("0s".into());
        let err = format!("{:#}", Config::resolve(&args).unwrap_err());
        assert!(err.contains("idle timeout"), "{err}");
    }

    #[test]
    fn the_listener_is_on_by_default_and_none_switches_it_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "").unwrap();
        let mut args = ServeArgs {
            config: Some(path.clone()),
            node_id: Some("n".into()),
            ..Default::default()
        };
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.listen.as_deref(), Some(DEFAULT_LISTEN));
        args.listen = Some("none".into());
        assert_eq!(Config::resolve(&args).unwrap().listen, None);
        std::fs::write(&path, "listen = \"none\"\n").unwrap();
        args.listen = None;
        assert_eq!(Config::resolve(&args).unwrap().listen, None);
        args.listen = Some("127.0.0.1:0".into());
        let c = Config::resolve(&args).unwrap();
        assert_eq!(c.listen.as_deref(), Some("127.0.0.1:0"));
    }

    #[test]
    fn the_store_is_embedded_by_default_and_etcd_when_asked() {
        let resolve = |a: ServeArgs| {
            Config::resolve(&ServeArgs {
                node_id: Some("n".into()),
                ..a
            })
        };
        assert_eq!(
            resolve(ServeArgs::default()).unwrap().store,
            StoreConfig::Embedded
        );
        let c = resolve(ServeArgs {
            store: Some("etcd://127.0.0.1:2379,10.0.0.2:2379".into()),
            store_prefix: Some("/prod/".into()),
            ..Default::default()
        })
        .unwrap();
        match c.store {
            StoreConfig::Etcd(e) => {
                assert_eq!(e.url, "etcd://127.0.0.1:2379,10.0.0.2:2379");
                assert_eq!(e.prefix.as_deref(), Some("/prod/"));
                assert!(e.user.is_none() && e.ca.is_none());
            }
            other => panic!("{other:?}"),
        }
        for (args, msg) in [
            (
                ServeArgs {
                    store: Some("redis://x:1".into()),
                    ..Default::default()
                },
                "use embedded, etcd://",
            ),
            (
                ServeArgs {
                    store_prefix: Some("/p/".into()),
                    ..Default::default()
                },
                "store is embedded",
            ),
            (
                ServeArgs {
                    store: Some("etcd://h:2379".into()),
                    etcd_ca: Some("/ca.pem".into()),
                    ..Default::default()
                },
                "need an etcds://",
            ),
            (
                ServeArgs {
                    store: Some("etcd://h:2379".into()),
                    store_prefix: Some("".into()),
                    ..Default::default()
                },
                "1 to 256 characters",
            ),
        ] {
            let err = resolve(args).unwrap_err().to_string();
            assert!(err.contains(msg), "{err}");
        }
    }

    #[test]
    fn node_labels_and_ttl_are_checked() {
        let resolve = |a: ServeArgs| {
            Config::resolve(&ServeArgs {
                node_id: Some("n".into()),
                ..a
            })
        };
        let c = resolve(ServeArgs {
            node_labels: vec!["zone=a".into(), "rack=r1".into()],
            node_ttl: Some("3s".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.node_labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(c.node_ttl, std::time::Duration::from_secs(3));
        assert_eq!(
            resolve(ServeArgs::default()).unwrap().node_ttl,
            ballast_core::nodes::NODE_TTL
        );
        for (args, msg) in [
            (
                ServeArgs {
                    node_labels: vec!["zone".into()],
                    ..Default::default()
                },
                "KEY=VALUE",
            ),
            (
                ServeArgs {
                    node_labels: vec!["=a".into()],
                    ..Default::default()
                },
                "node label",
            ),
            (
                ServeArgs {
                    node_ttl: Some("500ms".into()),
                    ..Default::default()
                },
                "at least 1s",
            ),
            (
                ServeArgs {
                    node_ttl: Some("ten".into()),
                    ..Default::default()
                },
                "node ttl",
            ),
        ] {
            let err = resolve(args).unwrap_err().to_string();
            assert!(err.contains(msg), "{err}");
        }
    }
}
