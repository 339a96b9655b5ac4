//! `ballast serve`: open the store, reconcile, make the default pool, and
//! serve the front-ends until SIGINT/SIGTERM.

use std::io::{IsTerminal, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use ballast_core::failpoint::Failpoints;
use ballast_core::model::{DriverKind, Pool};
use ballast_core::store::Store;
use ballast_core::{Host, ServiceConfig, ServiceParts, VolumeService};
use ballast_drivers::{BtrfsDriver, DirDriver, LoopDriver};
use ballast_host::LinuxHost;
use ballast_server::listen;
use ballast_server::rest::{self, ApiState};
use ballast_store::RedbStore;

use crate::config::{Config, LogFormat, ServeArgs, StoreConfig};

/// How long a stopping daemon waits for blocking work before it leaves it:
/// a worker stuck in the kernel (a pool on a hung filesystem) must not keep
/// the process, and its sockets, alive.
/// Healthy work (a copy, an mkfs) gets this long to finish; what is cut off
/// is reconciled from its intent at the next start. Below the 10 s a stop
/// may take.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(7);

/// `api_socket`: the global `--socket` (or `BALLAST_SOCKET`), which the
/// daemon serves instead of `<run-dir>/api.sock`.
pub fn serve(args: &ServeArgs, api_socket: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::resolve(args)?;
    init_tracing(config.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let dirs = Dirs::take(&config)?;
    let result = rt.block_on(run(config, api_socket, &dirs));
    // Dropping the runtime would wait for every blocking task, forever if
    // one is stuck; after the grace period they die with the process.
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    // Held until no work of ours runs any more, so a next daemon never
    // overlaps with this one's last steps.
    drop(dirs);
    result
}

/// The state and run directories, made, checked and locked (an exclusive
/// flock on each) before the store is opened or anything reconciled.
struct Dirs {
    state: PathBuf,
    run: PathBuf,
    _locks: Vec<nix::fcntl::Flock<std::fs::File>>,
}

impl Dirs {
    fn take(config: &Config) -> anyhow::Result<Dirs> {
        let state = make_dir(&config.state_dir, 0o700)?;
        check_state_dir(&state)?;
        let run = make_dir(&config.run_dir, 0o755)?;
        let mut locks = vec![lock_dir(&state, "state dir")?];
        if run != state {
            locks.push(lock_dir(&run, "run dir")?);
        }
        Ok(Dirs {
            state,
            run,
            _locks: locks,
        })
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only for a person at a terminal, not into journald or files.
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Make `path` and its missing parents with `mode`. A directory that was
/// already there keeps its mode: `--run-dir /tmp` must not change /tmp.
/// Returns the canonical path (loop devices report canonical backing paths;
/// ours must compare equal).
fn make_dir(path: &Path, mode: u32) -> anyhow::Result<PathBuf> {
    let mut missing = Vec::new();
    let mut at = path;
    while !at.exists() {
        missing.push(at.to_path_buf());
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    for dir in missing.iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("setting the mode of {}", dir.display()))?,
            // Made by someone else meanwhile: theirs, mode and all.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

/// The state dir holds the token and the store: refuse one that anybody
/// may write into, warn about one that others may read.
fn check_state_dir(path: &Path) -> anyhow::Result<()> {
    let mode = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o002 != 0 {
        anyhow::bail!(
            "state dir {} is world-writable (mode {:o}); refusing to keep the store and token there (chmod 700 it)",
            path.display(),
            mode & 0o7777
        );
    }
    if mode & 0o077 != 0 {
        tracing::warn!(dir = %path.display(), mode = format!("{:o}", mode & 0o7777), "the state dir is readable by others; chmod 700 is advised");
    }
    Ok(())
}

/// An exclusive lock on a directory (flock on the directory itself, so
/// nothing is written into it), held for the daemon's life. Two daemons on
/// one run or state dir would reconcile, unmount and detach each other's
/// volumes: the second one stops here, before touching anything.
fn lock_dir(path: &Path, what: &str) -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    let dir = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    nix::fcntl::Flock::lock(dir, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(
        |(_, errno)| match errno {
            nix::errno::Errno::EWOULDBLOCK => anyhow::anyhow!(
                "{what} {} is in use by another ballast daemon; this one touches nothing and exits",
                path.display()
            ),
            e => anyhow::anyhow!("locking {what} {}: {}", path.display(), e.desc()),
        },
    )
}

/// Files this start made in shared places (sockets, listen.addr), removed
/// when the daemon stops and when a start fails half way, so a failed start
/// leaves nothing behind.
#[derive(Default)]
struct MadeFiles(Vec<PathBuf>);

impl MadeFiles {
    fn add(&mut self, path: &Path) {
        self.0.push(path.to_path_buf());
    }
}

impl Drop for MadeFiles {
    fn drop(&mut self) {
        for path in self.0.iter().rev() {
            if let Err(e) = std::fs::remove_file(path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove");
                }
            }
        }
    }
}

/// Read the API token, making one on first start.
fn load_token(state_dir: &Path) -> anyhow::Result<String> {
    let path = state_dir.join("token");
    if let Ok(md) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::MetadataExt;
        if !md.file_type().is_file() || md.uid() != nix::unistd::geteuid().as_raw() {
            anyhow::bail!(
                "{} is not a regular file owned by this user; refusing to use it as the API token",
                path.display()
            );
        }
        if md.mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", md.mode() & 0o7777), "the API token was readable by others; set its mode to 600 (consider replacing it)");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
        }
    }
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .context("reading /dev/urandom")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = state_dir.join("token.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    writeln!(f, "{token}").and_then(|()| f.sync_all())?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(token)
}

/// The etcd store's config from the daemon's: the URL, then the prefix,
/// the user (password from its file) and TLS files.
#[cfg(feature = "etcd")]
fn etcd_config(s: &crate::config::EtcdSettings) -> anyhow::Result<ballast_etcd::EtcdConfig> {
    use ballast_etcd::{EtcdConfig, EtcdTls};
    let mut c = EtcdConfig::parse_url(&s.url).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(p) = &s.prefix {
        c.prefix.clone_from(p);
    }
    if let Some((user, file)) = &s.user {
        let password = std::fs::read_to_string(file)
            .with_context(|| format!("reading the etcd password from {}", file.display()))?;
        c.user = Some((
            user.clone(),
            password.trim_end_matches(['\n', '\r']).to_string(),
        ));
    }
    if let Some(ca) = &s.ca {
        let (cert, key) = s.client_cert.clone().unzip();
        c.tls = Some(EtcdTls {
            ca: ca.clone(),
            cert,
            key,
        });
    }
    Ok(c)
}

/// Open the store. redb asserts on some damaged files; the store turns that
/// panic into an error naming the file, so the default hook's report of it
/// (a second message and maybe a backtrace) is silenced on this thread while
/// the store opens. Other threads' panics are reported as usual.
fn open_store_quietly(path: &Path) -> Result<RedbStore, ballast_core::store::StoreError> {
    type Hook = dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync;
    let opener = std::thread::current().id();
    let previous: Arc<Hook> = Arc::from(std::panic::take_hook());
    let others = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != opener {
            others(info);
        }
    }));
    let result = RedbStore::open(path);
    drop(std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| previous(info)));
    result
}

async fn run(config: Config, api_socket: Option<PathBuf>, dirs: &Dirs) -> anyhow::Result<()> {
    // Watch the stop signals before anything answers: a SIGTERM that comes
    // as soon as the sockets serve must still get a clean exit.
    let mut stop = ShutdownSignal::watch()?;
    let (state_dir, run_dir) = (dirs.state.clone(), dirs.run.clone());
    let mut made = MadeFiles::default();
    let store: Arc<dyn Store> = match &config.store {
        StoreConfig::Embedded => Arc::new(
            open_store_quietly(&state_dir.join("ballast.redb")).context("opening the store")?,
        ),
        #[cfg(feature = "etcd")]
        StoreConfig::Etcd(settings) => {
            use ballast_etcd::EtcdStore;
            let etcd = etcd_config(settings)?;
            tracing::info!(url = %settings.url, prefix = %etcd.prefix, node = %config.node_id, "store: etcd");
            let store = tokio::task::spawn_blocking(move || EtcdStore::connect(&etcd))
                .await?
                .with_context(|| format!("connecting to the store at {}", settings.url))?;
            Arc::new(store)
        }
        #[cfg(not(feature = "etcd"))]
        StoreConfig::Etcd(settings) => anyhow::bail!(
            "store {}: this ballast was built without etcd; build it with `cargo build --release -p ballast --features etcd` (needs protoc: apt-get install protobuf-compiler)",
            settings.url
        ),
    };
    let host: Arc<dyn Host> = Arc::new(LinuxHost::new());
    #[allow(unused_mut)]
    let mut drivers: Vec<Arc<dyn ballast_core::Driver>> = vec![
        Arc::new(LoopDriver::new(host.clone())),
        Arc::new(DirDriver::new(host.clone())),
        Arc::new(BtrfsDriver::new(host.clone())),
    ];
    #[cfg(feature = "rbd")]
    drivers.push(Arc::new(ballast_drivers::RbdDriver::new(
        host.clone(),
        state_dir.join("rbd-maps"),
    )));
    let parts = ServiceParts {
        store,
        host: host.clone(),
        drivers,
        config: ServiceConfig {
            mounts_dir: run_dir.join("mounts"),
            pools_dir: state_dir.join("pools"),
            default_size: config.default_size,
            default_fs: config.default_fs,
            node_id: config.node_id.clone(),
        },
        failpoints: Failpoints::from_env(),
    };
    let opening = tokio::task::spawn_blocking(move || VolumeService::open(parts));
    let (service, report) = tokio::select! {
        opened = opening => opened?.context("reconciling state with the host")?,
        // A reconcile stuck on the host must not make the daemon unkillable.
        () = stop.wait() => anyhow::bail!("stopped while reconciling"),
    };
    tracing::info!(
        rebooted = report.rebooted,
        rolled_back = ?report.rolled_back,
        rolled_forward = ?report.rolled_forward,
        failed = ?report.failed,
        lost_mounts = ?report.lost_mounts,
        orphan_loops = report.orphan_loops_detached.len(),
        orphan_mounts = report.orphan_mounts_removed.len(),
        held_elsewhere = report.held_elsewhere.len(),
        "reconciled"
    );
    let service = Arc::new(service);
    // Other daemons on a shared store (etcd) write records this one serves.
    service.follow_store().context("starting the store watch")?;
    // Daemons starting together on a new store race for the name
    // `default`: the loser's write conflicts, it re-reads, and its default
    // pool is then `default-<node>`.
    // A controller-only daemon (`--csi-mode controller`, the Kubernetes
    // controller pods) holds no volumes: it makes no pool, so placement
    // never picks it.
    let mut attempts = 0;
    let holds_volumes = config.csi_mode != ballast_server::csi::CsiMode::Controller;
    if !holds_volumes {
        tracing::info!("controller only: no default pool here; volumes are placed on other nodes");
    }
    loop {
        if !holds_volumes {
            break;
        }
        let default_pool = service.default_pool_name();
        if service.get_pool(&default_pool).is_ok() {
            break;
        }
        let driver = if let Some(d) = config.default_driver {
            d
        } else if host.loop_available() {
            DriverKind::Loop
        } else {
            tracing::warn!("loop devices are not available here (not root, or no /dev/loop-control): the default pool uses the dir driver, whose sizes are not enforced");
            DriverKind::Dir
        };
        let pool = Pool::new(
            &default_pool,
            driver,
            make_dir(&state_dir.join("pools").join(&default_pool), 0o700)?,
            config.overcommit_ratio,
        );
        let svc = service.clone();
        attempts += 1;
        match tokio::task::spawn_blocking(move || svc.ensure_pool(pool)).await? {
            Ok(_) => break,
            Err(ballast_core::Error::Conflict { .. }) if attempts < 3 => {
                tracing::info!(pool = %default_pool, "another node took the pool name; choosing again");
                let _ = std::fs::remove_dir(state_dir.join("pools").join(&default_pool));
            }
            Err(e) => return Err(anyhow::Error::new(e).context("creating the default pool")),
        }
    }
    let token = load_token(&state_dir)?;
    let state = ApiState::new(service.clone(), token);
    let router = rest::router(state);
    let api_sock = api_socket.unwrap_or_else(|| config.api_socket());
    let unix = listen::bind_unix(&api_sock, 0o600).await?;
    made.add(&api_sock);
    let mut tasks = Vec::new();
    let addr_file = config.listen_addr_file();
    let _ = std::fs::remove_file(&addr_file);
    let mut address = None;
    if let Some(addr) = &config.listen {
        let tcp = listen::bind_tcp(addr).await?;
        let tls = match &config.tls {
            Some((cert, key)) => Some(listen::tls_acceptor(cert, key)?),
            None => None,
        };
        let bound = tcp.local_addr()?;
        tracing::info!(addr = %bound, tls = tls.is_some(), "serving the REST API on tcp (and /metrics)");
        // Tools and tests find a `--listen HOST:0` port here.
        std::fs::write(&addr_file, format!("{bound}\n"))
            .with_context(|| format!("writing {}", addr_file.display()))?;
        made.add(&addr_file);
        address = Some(bound.to_string());
        tasks.push(tokio::spawn(listen::serve_tcp(
            tcp,
            router.clone(),
            tls,
            config.conn_timeouts,
        )));
    }
    // The node's record: who it is, where it answers, what its pools hold.
    // The instance file names this process to its successor (this state
    // directory is ours alone: its lock is held).
    let instance_file = state_dir.join("node.instance");
    let previous_instance = std::fs::read_to_string(&instance_file)
        .ok()
        .map(|s| s.trim().to_string());
    let instance = uuid::Uuid::new_v4().simple().to_string();
    std::fs::write(&instance_file, format!("{instance}\n"))
        .with_context(|| format!("writing {}", instance_file.display()))?;
    // Moves to this node arrive here; the record names the endpoint.
    let transfer = match &config.transfer_listen {
        Some(addr) => {
            let rx: Arc<dyn ballast_core::moves::MoveReceiver> = service.clone();
            let t = ballast_transfer::Transfer::listen(addr, Arc::downgrade(&rx))
                .with_context(|| format!("listening for moves on {addr}"))?;
            service.set_move_transport(t.clone());
            Some(ballast_core::moves::MoveTransport::endpoint(&*t))
        }
        None => None,
    };
    let beat = service.clone();
    let info = ballast_core::nodes::NodeInfo {
        transfer,
        instance,
        previous_instance,
        version: env!("CARGO_PKG_VERSION").to_string(),
        address,
        labels: config.node_labels.clone(),
    };
    let ttl = config.node_ttl;
    tokio::task::spawn_blocking(move || {
        beat.start_heartbeat(info, ttl, ttl.max(std::time::Duration::from_secs(10)))
    })
    .await?
    .context("registering this node")?;
    // Places creates while this node is the controller; does the work other
    // nodes ask of this one.
    service.start_agent().context("starting the node agent")?;
    // Backups this node runs (its volumes'), and their schedules.
    let engine = ballast_backup::Engine::new().context("starting the backup engine")?;
    service.set_backup_engine(Arc::new(engine));
    service
        .start_backups()
        .context("starting the backup runner")?;
    // Fences of this node to clean up after, fences to lift, and mapping
    // helpers that stopped answering.
    service
        .start_fencing()
        .context("starting the fencing loop")?;
    if let Some(sock) = &config.docker_socket {
        let plugin = listen::bind_unix(sock, 0o600).await?;
        // A stale plugin socket stalls `docker volume ls` until it times out.
        made.add(sock);
        let router = ballast_server::docker::router(ballast_server::docker::PluginState {
            service: service.clone(),
        });
        tracing::info!(socket = %sock.display(), "serving the Docker volume plugin");
        tasks.push(tokio::spawn(listen::serve_unix(
            plugin,
            router,
            config.conn_timeouts,
        )));
    }
    {
        let csi = listen::bind_unix(&config.csi_socket, 0o600).await?;
        made.add(&config.csi_socket);
        let plugin = ballast_server::csi::CsiPlugin {
            service: service.clone(),
            node_id: config.node_id.clone(),
        };
        tracing::info!(socket = %config.csi_socket.display(), node_id = %config.node_id, mode = ?config.csi_mode, "serving CSI");
        let mode = config.csi_mode;
        tasks.push(tokio::spawn(async move {
            if let Err(e) = ballast_server::csi::serve(plugin, mode, csi).await {
                tracing::error!(error = %e, "the CSI server stopped");
            }
        }));
    }
    // Served last: an answer on the API socket means listen.addr is written
    // and the plugin and CSI sockets are bound (clients and tests connect to
    // them as soon as the API answers).
    tasks.push(tokio::spawn(listen::serve_unix(
        unix,
        router.clone(),
        config.conn_timeouts,
    )));
    tracing::info!(socket = %api_sock.display(), state_dir = %state_dir.display(), volumes = service.volume_count(), "ballast is serving");
    tasks.push(tokio::spawn(watchers(
        service.clone(),
        config.watch_interval,
    )));
    stop.wait().await;
    tracing::info!("shutting down");
    for t in tasks {
        t.abort();
    }
    let in_flight = service.operations_in_flight();
    let stuck = ballast_host::abandoned_calls();
    if !in_flight.is_empty() || stuck > 0 {
        tracing::warn!(
            locks = ?in_flight,
            stuck_host_calls = stuck,
            "leaving operations that are still in flight (their intents are reconciled at the next start)"
        );
    }
    drop(made);
    Ok(())
}

/// The watchers: every interval, one pass of each self-remediation in the
/// core, off the async workers. A pass that is still running when the next
/// is due delays it rather than overlapping.
async fn watchers(service: Arc<VolumeService>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let svc = service.clone();
        let pass = tokio::task::spawn_blocking(move || {
            svc.autogrow_tick();
            svc.remediate_pools();
        })
        .await;
        if let Err(e) = pass {
            tracing::error!(error = %e, "a watcher pass panicked");
        }
    }
}

/// SIGTERM and SIGINT, registered up front.
struct ShutdownSignal {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    fn watch() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("watching SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("watching SIGINT")?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
