//! Ballast's [`Store`] on a real etcd (v3 API), so that several ballast
//! daemons share one state.
//!
//! This crate owns the mapping from the core's store vocabulary to etcd's:
//! keys live under [`EtcdConfig::prefix`] and are returned without it;
//! etcd's revisions are the store's revisions; a transaction is one etcd
//! `Txn` whose compares are the core's; leases are etcd leases; a watch is
//! an etcd watch that survives a broken connection by reopening from the
//! first revision it has not delivered. It knows nothing of what the keys
//! mean and never writes outside its prefix.
//!
//! The core is synchronous (it calls the store from blocking threads), so
//! [`EtcdStore`] owns a small tokio runtime and waits for each call with a
//! deadline ([`EtcdConfig::timeout`]): past it the call is
//! [`StoreError::Unavailable`]. A stopped or unreachable etcd therefore never
//! hangs a caller. A transaction that timed out may still be applied by etcd
//! later (the request may already be on its way); callers compare on
//! revisions, so a retry of it conflicts rather than applying twice.
//!
//! Differences from the in-process stores, all within the trait's contract:
//! - etcd refuses two writes to one key in a transaction; only the last
//!   write to each key is sent (the outcome is the same);
//! - etcd keeps the history at the compaction revision itself, so
//!   `compact(r)` still lets a watch start after `r - 1`;
//! - a lease's TTL is whole seconds and at least etcd's minimum (1.5 times
//!   its election timeout);
//! - a transaction holds at most etcd's `--max-txn-ops` (128) operations.

mod config;
mod watch;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use ballast_core::store::{
    check_compares, Compare, KeyValue, LeaseId, Range, Store, StoreError, Txn, Watch, Write,
};
use etcd_client::{
    Client, CompareOp, ConnectOptions, GetOptions, KvClient, PutOptions, TxnOp, TxnOpResponse,
};
use tokio::runtime::{Handle, Runtime};

pub use config::{ConfigError, EtcdConfig, EtcdTls, DEFAULT_PORT, DEFAULT_PREFIX, DEFAULT_TIMEOUT};

/// How long past its deadline a caller waits for the runtime to report
/// the timeout itself; only a starved runtime needs it.
const GRACE: Duration = Duration::from_millis(250);

/// HTTP/2 ping interval on open streams, so a watch on a frozen or cut-off
/// etcd breaks (and reopens) instead of waiting for ever. Above etcd's
/// `--grpc-keepalive-min-time` (5 s): pinging more often gets the connection
/// closed as abusive.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// A range answer may be this large; tonic's default (4 MiB) would fail a
/// large cluster's state read.
const MAX_RESPONSE: usize = 256 << 20;

/// The runtime the store's calls and watches run on. Shut down without
/// waiting, so dropping the store from async code does not panic.
struct RuntimeGuard(Option<Runtime>);

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// One endpoint's client. Each endpoint has its own, and calls stick to
/// one until it fails: etcd-client's balanced channel keeps sending calls
/// to a dead member (tonic's balancer counts it ready), so half of all calls
/// failed while one member of three was down.
struct Conn {
    client: Client,
    kv: KvClient,
}

tokio::task_local! {
    /// The endpoint one attempt of a call uses, and whether it failed before
    /// its request left (then another endpoint may take it).
    static ATTEMPT: Arc<Attempt>;
}

struct Attempt {
    conn: usize,
    unsent: AtomicBool,
}

/// What a call running on the runtime needs.
pub(crate) struct Shared {
    conns: Vec<Conn>,
    /// The endpoint calls go to, until one fails there.
    active: AtomicUsize,
    prefix: String,
    timeout: Duration,
    /// The endpoints, for messages ("127.0.0.1:2379,10.0.0.2:2379").
    at: String,
}

/// The core's [`Store`] on an etcd cluster. Cheap to share between threads;
/// calls run concurrently.
pub struct EtcdStore {
    shared: Arc<Shared>,
    handle: Handle,
    runtime: Arc<RuntimeGuard>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("at", &self.shared.at)
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStore {
    /// Connect to the cluster and check that it answers.
    ///
    /// # Errors
    ///
    /// [`StoreError::Unavailable`] if no endpoint answers within the
    /// deadline (retryable); [`StoreError::Io`] for a config that cannot
    /// work (no endpoints, unreadable TLS files, refused credentials).
    pub fn connect(config: &EtcdConfig) -> Result<EtcdStore, StoreError> {
        if config.endpoints.is_empty() {
            return Err(StoreError::Io("etcd: no endpoints configured".into()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("ballast-etcd")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("etcd: cannot start its runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let runtime = Arc::new(RuntimeGuard(Some(runtime)));

        let scheme = if config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let endpoints: Vec<String> = config
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        let at = endpoints
            .iter()
            .map(|e| e.split_once("://").map_or(e.as_str(), |(_, hp)| hp))
            .collect::<Vec<_>>()
            .join(",");

        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            .with_keep_alive(KEEPALIVE_INTERVAL, config.timeout)
            // etcd counts pings on a connection without streams as abuse.
            .with_keep_alive_while_idle(false)
            // A member cut off from the quorum ends our watch ("no leader")
            // instead of keeping it open and silent.
            .with_require_leader(true)
            .with_tcp_keepalive(KEEPALIVE_INTERVAL);
        if let Some((user, password)) = &config.user {
            // etcd's simple tokens die with the etcd process; refresh them
            // rather than failing every call after an etcd restart.
            options = options
                .with_user(user, password)
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls)?);
        }

        let timeout = config.timeout;
        let late = format!("etcd at {at} did not answer within {timeout:?}");
        let at2 = at.clone();
        // Clients connect lazily: one per endpoint costs nothing until used
        // (with credentials, each fetches its token now; an endpoint that
        // cannot is left out while another can).
        let conns = deadline_call(&handle, timeout, late, async move {
            let mut conns = Vec::new();
            let mut first_error = None;
            for e in &endpoints {
                match Client::connect([e.as_str()], Some(options.clone())).await {
                    Ok(client) => {
                        let kv = client.kv_client().max_decoding_message_size(MAX_RESPONSE);
                        conns.push(Conn { client, kv });
                    }
                    Err(err) => {
                        first_error.get_or_insert(map_error(&at2, "connecting", err));
                    }
                }
            }
            match (conns.is_empty(), first_error) {
                (true, Some(e)) => Err(e),
                _ => Ok(conns),
            }
        })?;
        let store = EtcdStore {
            shared: Arc::new(Shared {
                conns,
                active: AtomicUsize::new(0),
                prefix: config.prefix.clone(),
                timeout,
                at,
            }),
            handle,
            runtime,
        };
        // The client connects lazily; one read proves etcd is there.
        store.range_revision()?;
        Ok(store)
    }

    /// Compact etcd's history before `revision`: watches can no longer
    /// start at or before `revision - 1`. This is etcd-wide, not only under
    /// the prefix. Compacting at an already compacted revision is fine.
    pub fn compact(&self, revision: u64) -> Result<(), StoreError> {
        let s = self.shared.clone();
        self.call("a compaction", true, move || {
            let s = s.clone();
            async move {
                let mut kv = s.kv();
                match kv.compact(to_etcd_rev(revision), None).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_compacted(&e) => Ok(()),
                    Err(e) => Err(s.error("compacting", e)),
                }
            }
        })
    }

    /// The store's current revision.
    pub fn revision(&self) -> Result<u64, StoreError> {
        self.range_revision()
    }

    fn range_revision(&self) -> Result<u64, StoreError> {
        let s = self.shared.clone();
        self.call("a read", true, move || {
            let s = s.clone();
            async move {
                let mut kv = s.kv();
                let resp = kv
                    .get(
                        s.full(""),
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await
                    .map_err(|e| s.error("reading", e))?;
                Ok(header_rev(resp.header()))
            }
        })
    }

    /// Run the call `make` builds on the runtime and wait for it at most
    /// the deadline. It goes to the active endpoint; one that fails before
    /// the request left (refused, no leader) is set aside and the next
    /// endpoint takes the call. A `retry_late` call (a read) that got no
    /// answer in half the deadline is tried on the next endpoint too; a
    /// write that got none may have landed, so it is not sent again.
    fn call<T, F, Fut>(&self, what: &str, retry_late: bool, make: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let s = self.shared.clone();
        let late = self.shared.late(what);
        let late2 = late.clone();
        deadline_call(&self.handle, self.shared.timeout, late, async move {
            let n = s.conns.len();
            let per_try = if retry_late && n > 1 {
                s.timeout / 2
            } else {
                s.timeout
            };
            let start = s.active.load(Ordering::Relaxed);
            let mut last = None;
            for k in 0..n {
                let i = (start + k) % n;
                let attempt = Arc::new(Attempt {
                    conn: i,
                    unsent: AtomicBool::new(false),
                });
                let r = tokio::time::timeout(per_try, ATTEMPT.scope(attempt.clone(), make())).await;
                match r {
                    Ok(Err(StoreError::Unavailable(m))) => {
                        s.demote(i);
                        if !attempt.unsent.load(Ordering::Relaxed) {
                            return Err(StoreError::Unavailable(m));
                        }
                        last = Some(m);
                    }
                    Ok(r) => return r,
                    Err(_) => {
                        s.demote(i);
                        if !retry_late {
                            return Err(StoreError::Unavailable(late2));
                        }
                        last = Some(late2.clone());
                    }
                }
            }
            Err(StoreError::Unavailable(last.unwrap_or(late2)))
        })
    }
}

/// Run `fut` on `handle` and block this thread until it ends or `timeout`
/// passes ([`StoreError::Unavailable`] with `late` then). Works from any
/// thread, also one inside another runtime (it blocks that thread, as every
/// store call does).
pub(crate) fn deadline_call<T, F>(
    handle: &Handle,
    timeout: Duration,
    late: String,
    fut: F,
) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    let (tx, rx) = sync_channel(1);
    let on_time = late.clone();
    handle.spawn(async move {
        // Dropping the future at the deadline cancels its gRPC request.
        let result = tokio::time::timeout(timeout, fut)
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable(on_time)));
        // The caller may have stopped waiting; then nobody needs it.
        let _ = tx.send(result);
    });
    match rx.recv_timeout(timeout + GRACE) {
        Ok(result) => result,
        Err(RecvTimeoutError::Timeout) => Err(StoreError::Unavailable(late)),
        Err(RecvTimeoutError::Disconnected) => Err(StoreError::Unavailable(
            "etcd client runtime shut down".into(),
        )),
    }
}

fn tls_options(tls: &EtcdTls) -> Result<etcd_client::TlsOptions, StoreError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| StoreError::Io(format!("etcd tls: {}: {e}", path.display())))
    };
    let mut options = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(&tls.ca)?));
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            options = options.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => {
            return Err(StoreError::Io(
                "etcd tls: a client certificate needs its key, and a key its certificate".into(),
            ))
        }
    }
    Ok(options)
}

impl Shared {
    /// The endpoint of this attempt (outside a call: the active one).
    fn conn(&self) -> &Conn {
        let i = ATTEMPT
            .try_with(|a| a.conn)
            .unwrap_or_else(|_| self.active_index());
        &self.conns[i % self.conns.len()]
    }

    pub(crate) fn active_index(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    pub(crate) fn kv(&self) -> KvClient {
        self.conn().kv.clone()
    }

    pub(crate) fn client(&self) -> &Client {
        &self.conn().client
    }

    /// Endpoint `i` failed: the next one becomes active (unless another
    /// call moved on already).
    pub(crate) fn demote(&self, i: usize) {
        let n = self.conns.len();
        if n > 1
            && self
                .active
                .compare_exchange(i, (i + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(at = %self.at, endpoint = i, "etcd endpoint failed; using the next one");
        }
    }

    fn late(&self, what: &str) -> String {
        format!(
            "etcd at {} did not answer {what} within {:?}",
            self.at, self.timeout
        )
    }

    fn error(&self, what: &str, e: etcd_client::Error) -> StoreError {
        if is_unsent(&e) {
            let _ = ATTEMPT.try_with(|a| a.unsent.store(true, Ordering::Relaxed));
        }
        map_error(&self.at, what, e)
    }

    /// The etcd key of a store key.
    fn full(&self, key: &str) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(self.prefix.as_bytes());
        k.extend_from_slice(key.as_bytes());
        k
    }

    /// The store key of an etcd key under the prefix.
    fn strip(&self, key: &[u8]) -> Result<String, StoreError> {
        let rest = key
            .strip_prefix(self.prefix.as_bytes())
            .ok_or_else(|| self.corrupt(format!("etcd returned key {key:?} outside the prefix")))?;
        String::from_utf8(rest.to_vec())
            .map_err(|_| self.corrupt(format!("key {key:?} is not UTF-8")))
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: format!("etcd at {} under {:?}", self.at, self.prefix),
            detail,
        }
    }

    fn to_kv(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        Ok(KeyValue {
            key: self.strip(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: from_etcd_rev(kv.create_revision()),
            mod_revision: from_etcd_rev(kv.mod_revision()),
            lease: (kv.lease() > 0).then(|| from_etcd_rev(kv.lease())),
        })
    }

    async fn txn(self: Arc<Self>, txn: Txn) -> Result<u64, StoreError> {
        let writes = last_write_per_key(txn.writes);
        let leases: Vec<LeaseId> = writes
            .iter()
            .filter_map(|w| match w {
                Write::PutWithLease(_, _, l) => Some(*l),
                _ => None,
            })
            .collect();
        let mut compares = Vec::with_capacity(txn.compares.len());
        let mut reread = Vec::new();
        let mut seen = HashSet::new();
        for c in &txn.compares {
            let key = self.full(c.key());
            compares.push(match c {
                Compare::Absent(_) => {
                    etcd_client::Compare::version(key.clone(), CompareOp::Equal, 0)
                }
                Compare::Equals(_, v) => {
                    etcd_client::Compare::value(key.clone(), CompareOp::Equal, v.clone())
                }
                Compare::ModRevision(_, r) => etcd_client::Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    to_etcd_rev(*r),
                ),
            });
            // On failure etcd reads the compared keys in the same revision,
            // so the Conflict can name the first compare that failed.
            if seen.insert(key.clone()) {
                reread.push(TxnOp::get(key, None));
            }
        }
        let mut ops = Vec::with_capacity(writes.len());
        for w in writes {
            ops.push(match w {
                Write::Put(k, v) => TxnOp::put(self.full(&k), v, None),
                Write::PutWithLease(k, v, l) => TxnOp::put(
                    self.full(&k),
                    v,
                    Some(PutOptions::new().with_lease(to_etcd_lease(l)?)),
                ),
                Write::Delete(k) => TxnOp::delete(self.full(&k), None),
            });
        }
        let request = etcd_client::Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else(reread);
        let mut kv = self.kv();
        let resp = match kv.txn(request).await {
            Ok(resp) => resp,
            Err(e) if is_lease_not_found(&e) => return Err(self.dead_lease(&leases).await),
            Err(e) => return Err(self.error("a transaction", e)),
        };
        if resp.succeeded() {
            return Ok(header_rev(resp.header()));
        }
        let mut now: HashMap<String, (Vec<u8>, u64)> = HashMap::new();
        for op in resp.op_responses() {
            if let TxnOpResponse::Get(get) = op {
                for kv in get.kvs() {
                    let kv = self.to_kv(kv)?;
                    now.insert(kv.key, (kv.value, kv.mod_revision));
                }
            }
        }
        check_compares(&txn.compares, |k| now.get(k).cloned())?;
        // etcd said a compare failed, so one did; name the first.
        Err(StoreError::Conflict {
            key: txn
                .compares
                .first()
                .map(|c| c.key().to_string())
                .unwrap_or_default(),
        })
    }

    /// Which of a failed transaction's leases is gone: etcd only says "a
    /// lease was not found".
    async fn dead_lease(&self, leases: &[LeaseId]) -> StoreError {
        let first = leases.first().copied().unwrap_or(0);
        if leases.len() > 1 {
            let mut client = self.client().lease_client();
            for &lease in leases {
                let Ok(id) = to_etcd_lease(lease) else {
                    return StoreError::LeaseExpired(lease);
                };
                if let Ok(ttl) = client.time_to_live(id, None).await {
                    if ttl.ttl() <= 0 {
                        return StoreError::LeaseExpired(lease);
                    }
                }
            }
        }
        StoreError::LeaseExpired(first)
    }

    async fn lease_keepalive(self: Arc<Self>, lease: LeaseId) -> Result<(), StoreError> {
        let id = to_etcd_lease(lease)?;
        let mut client = self.client().lease_client();
        match client.keep_alive(id).await {
            Ok(_) => Ok(()),
            Err(e) if is_lease_not_found(&e) => Err(StoreError::LeaseExpired(lease)),
            // etcd-client reports a TTL of 0 (lease unknown) this way, but
            // also a closed request stream; ask etcd which it was.
            Err(etcd_client::Error::LeaseKeepAliveError(why)) => {
                match client.time_to_live(id, None).await {
                    Ok(ttl) if ttl.ttl() <= 0 => Err(StoreError::LeaseExpired(lease)),
                    Ok(_) => Err(StoreError::Unavailable(format!(
                        "etcd at {}: lease keepalive failed: {why}",
                        self.at
                    ))),
                    Err(e) if is_lease_not_found(&e) => Err(StoreError::LeaseExpired(lease)),
                    Err(e) => Err(self.error("a lease keepalive", e)),
                }
            }
            Err(e) => Err(self.error("a lease keepalive", e)),
        }
    }
}

impl Store for EtcdStore {
    fn get_kv(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let s = self.shared.clone();
        let key = s.full(key);
        self.call("a read", true, move || {
            let s = s.clone();
            let key = key.clone();
            async move {
                let mut kv = s.kv();
                let resp = kv.get(key, None).await.map_err(|e| s.error("reading", e))?;
                resp.kvs().first().map(|kv| s.to_kv(kv)).transpose()
            }
        })
    }

    fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let s = self.shared.clone();
        let key = s.full(prefix);
        self.call("a range read", true, move || {
            let s = s.clone();
            let key = key.clone();
            async move {
                let mut kv = s.kv();
                // etcd returns a range in key order, at the header's revision.
                let resp = kv
                    .get(key, Some(GetOptions::new().with_prefix()))
                    .await
                    .map_err(|e| s.error("reading a range", e))?;
                Ok(Range {
                    kvs: resp
                        .kvs()
                        .iter()
                        .map(|kv| s.to_kv(kv))
                        .collect::<Result<_, _>>()?,
                    revision: header_rev(resp.header()),
                })
            }
        })
    }

    fn txn(&self, txn: Txn) -> Result<u64, StoreError> {
        let s = self.shared.clone();
        self.call("a transaction", false, move || s.clone().txn(txn.clone()))
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Box<dyn Watch>, StoreError> {
        let s = self.shared.clone();
        let key = s.full(prefix);
        let opened = self.call("a watch", true, {
            let (s, key) = (s.clone(), key.clone());
            move || watch::open(s.clone(), key.clone(), after)
        })?;
        Ok(Box::new(watch::EtcdWatch::start(
            &self.handle,
            self.runtime.clone(),
            s,
            key,
            opened,
            after,
        )))
    }

    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let s = self.shared.clone();
        let secs = ttl_seconds(ttl);
        self.call("a lease grant", false, move || {
            let s = s.clone();
            async move {
                let mut client = s.client().lease_client();
                let resp = client
                    .grant(secs, None)
                    .await
                    .map_err(|e| s.error("granting a lease", e))?;
                if !resp.error().is_empty() {
                    return Err(StoreError::Io(format!(
                        "etcd at {}: lease grant refused: {}",
                        s.at,
                        resp.error()
                    )));
                }
                u64::try_from(resp.id())
                    .map_err(|_| StoreError::Io(format!("etcd at {}: negative lease id", s.at)))
            }
        })
    }

    fn lease_keepalive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let s = self.shared.clone();
        self.call("a lease keepalive", true, move || {
            s.clone().lease_keepalive(lease)
        })
    }

    fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let s = self.shared.clone();
        self.call("a lease revoke", true, move || {
            let s = s.clone();
            async move {
                let Ok(id) = to_etcd_lease(lease) else {
                    // No etcd lease has such an ID: it is unknown, so revoked.
                    return Ok(());
                };
                let mut client = s.client().lease_client();
                match client.revoke(id).await {
                    Ok(_) => Ok(()),
                    Err(e) if is_lease_not_found(&e) => Ok(()),
                    Err(e) => Err(s.error("revoking a lease", e)),
                }
            }
        })
    }
}

/// Only the last write to each key, in their order: etcd refuses a txn that
/// writes one key twice, and the last write decides the outcome anyway.
fn last_write_per_key(writes: Vec<Write>) -> Vec<Write> {
    let mut seen = HashSet::new();
    let mut kept: Vec<Write> = writes
        .into_iter()
        .rev()
        .filter(|w| {
            let key = match w {
                Write::Put(k, _) | Write::PutWithLease(k, _, _) | Write::Delete(k) => k,
            };
            seen.insert(key.clone())
        })
        .collect();
    kept.reverse();
    kept
}

/// etcd's TTL: whole seconds, rounded up, at least 1.
fn ttl_seconds(ttl: Duration) -> i64 {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

/// etcd's revisions are never negative; a negative one (which etcd never
/// sends) reads as 0, "absent".
fn from_etcd_rev(r: i64) -> u64 {
    u64::try_from(r).unwrap_or(0)
}

/// A revision beyond i64 exists in no etcd, so comparing with i64::MAX fails
/// as comparing with it would.
fn to_etcd_rev(r: u64) -> i64 {
    i64::try_from(r).unwrap_or(i64::MAX)
}

/// etcd lease IDs are positive i64s; a larger one was never granted.
fn to_etcd_lease(lease: LeaseId) -> Result<i64, StoreError> {
    i64::try_from(lease).map_err(|_| StoreError::LeaseExpired(lease))
}

fn header_rev(header: Option<&etcd_client::ResponseHeader>) -> u64 {
    header.map_or(0, |h| from_etcd_rev(h.revision()))
}

fn status(e: &etcd_client::Error) -> Option<&tonic::Status> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s),
        _ => None,
    }
}

/// etcd's `ErrGRPCLeaseNotFound`.
fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    status(e).is_some_and(|s| {
        s.code() == tonic::Code::NotFound && s.message().contains("lease not found")
    })
}

/// etcd's `ErrGRPCCompacted` ("mvcc: required revision has been compacted").
pub(crate) fn is_compacted(e: &etcd_client::Error) -> bool {
    status(e)
        .is_some_and(|s| s.code() == tonic::Code::OutOfRange && s.message().contains("compacted"))
}

/// The store error of a failed etcd call: whatever a retry may cure is
/// [`StoreError::Unavailable`]; the rest (refused credentials, invalid
/// requests) is [`StoreError::Io`].
/// Whether a call failed before etcd could have applied it: no connection,
/// or a member without a leader (which refuses before proposing).
fn is_unsent(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            let m = s.message();
            s.code() == tonic::Code::Unavailable
                && (m.contains("connect") || m.contains("no leader") || m.contains("refused"))
        }
        _ => false,
    }
}

pub(crate) fn map_error(at: &str, what: &str, e: etcd_client::Error) -> StoreError {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let msg = format!("etcd at {at}: {what}: {} ({:?})", s.message(), s.code());
            match s.code() {
                // Unknown is how tonic reports a connection that broke
                // mid-call; etcd itself always sends a specific code.
                Code::Unavailable
                | Code::DeadlineExceeded
                | Code::Cancelled
                | Code::Aborted
                | Code::ResourceExhausted
                | Code::Unknown => StoreError::Unavailable(msg),
                Code::Ok
                | Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::Internal
                | Code::DataLoss
                | Code::Unauthenticated => StoreError::Io(msg),
            }
        }
        etcd_client::Error::TransportError(e) => {
            StoreError::Unavailable(format!("etcd at {at}: {what}: {e}"))
        }
        etcd_client::Error::IoError(e) => {
            StoreError::Unavailable(format!("etcd at {at}: {what}: {e}"))
        }
        e @ (etcd_client::Error::WatchError(_) | etcd_client::Error::LeaseKeepAliveError(_)) => {
            StoreError::Unavailable(format!("etcd at {at}: {what}: {e}"))
        }
        e => StoreError::Io(format!("etcd at {at}: {what}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_rounds_up_to_whole_seconds() {
        assert_eq!(ttl_seconds(Duration::ZERO), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_secs(1)), 1);
        assert_eq!(ttl_seconds(Duration::from_millis(1001)), 2);
        assert_eq!(ttl_seconds(Duration::from_secs(30)), 30);
    }

    #[test]
    fn only_the_last_write_to_a_key_is_kept() {
        let writes = vec![
            Write::Put("a".into(), b"1".to_vec()),
            Write::Put("b".into(), b"1".to_vec()),
            Write::Delete("a".into()),
            Write::PutWithLease("c".into(), b"1".to_vec(), 7),
            Write::Put("b".into(), b"2".to_vec()),
        ];
        assert_eq!(
            last_write_per_key(writes),
            vec![
                Write::Delete("a".into()),
                Write::PutWithLease("c".into(), b"1".to_vec(), 7),
                Write::Put("b".into(), b"2".to_vec()),
            ]
        );
    }
}
