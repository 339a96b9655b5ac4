//! The transactional key-value interface the core keeps its state in.
//!
//! Shaped after etcd's v3 API, so that one trait fits the embedded store
//! (`ballast-store`, one redb file), a real etcd (`ballast-etcd`) and
//! [`MemStore`] for unit tests:
//! - every key carries the store-wide revision of its creation and of its
//!   last change; a transaction is a set of compares (usually on a key's
//!   revision) and a set of writes, applied atomically or not at all, and
//!   produces one new revision;
//! - a range read is consistent at one revision;
//! - a watch delivers every change after a revision, in order, without gaps
//!   (or says the revision was compacted, and the caller reads afresh);
//! - a lease keeps keys alive while its holder renews it; when it lapses the
//!   keys go, and their deletion is an ordinary watch event.
//!
//! The core calls the store from blocking threads; every method returns
//! within the store's deadline ([`StoreError::Unavailable`] past it).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A failed store operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A compare in the transaction did not hold; nothing was written.
    #[error("store: compare failed on key {key}")]
    Conflict { key: String },
    /// The store could not be reached, or did not answer within its
    /// deadline. Nothing is known to be written; a retry may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A watch asked for changes older than the store still keeps; read
    /// afresh and watch from that read's revision.
    #[error("store: revision {requested} is compacted (oldest kept: {compact_revision})")]
    Compacted {
        requested: u64,
        compact_revision: u64,
    },
    /// The lease is gone (expired or revoked); its keys are deleted.
    #[error("store: lease {0:x} expired or revoked")]
    LeaseExpired(LeaseId),
    /// The store file is damaged or unreadable; it is left as it is.
    #[error("store {path}: {detail}")]
    Corrupt { path: String, detail: String },
    /// The file was written by a newer ballast; it is left as it is.
    #[error(
        "store {path}: schema version {found} is newer than this ballast understands ({supported})"
    )]
    NewerSchema {
        path: String,
        found: u64,
        supported: u64,
    },
    #[error("store: {0}")]
    Io(String),
}

impl StoreError {
    /// Whether the same call may succeed later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// A lease's ID (etcd's is an i64; ours are never negative).
pub type LeaseId = u64;

/// A key with its value and revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision of the transaction that created the key.
    pub create_revision: u64,
    /// The revision of the transaction that last wrote the key.
    pub mod_revision: u64,
    /// The lease the key lives under, if any.
    pub lease: Option<LeaseId>,
}

/// What a key must hold for a transaction to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key must be absent.
    Absent(String),
    /// The key must hold exactly these bytes.
    Equals(String, Vec<u8>),
    /// The key's last change must be at this revision (0: absent). The
    /// compare-and-swap every record update uses.
    ModRevision(String, u64),
}

impl Compare {
    pub fn key(&self) -> &str {
        match self {
            Compare::Absent(k) | Compare::Equals(k, _) | Compare::ModRevision(k, _) => k,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String, Vec<u8>),
    /// A put whose key is deleted when the lease lapses.
    PutWithLease(String, Vec<u8>, LeaseId),
    Delete(String),
}

/// Compares and writes applied atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub writes: Vec<Write>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.writes.push(Write::Put(key.into(), value));
        self
    }
    pub fn put_with_lease(
        mut self,
        key: impl Into<String>,
        value: Vec<u8>,
        lease: LeaseId,
    ) -> Self {
        self.writes
            .push(Write::PutWithLease(key.into(), value, lease));
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.writes.push(Write::Delete(key.into()));
        self
    }
    pub fn require_absent(mut self, key: impl Into<String>) -> Self {
        self.compares.push(Compare::Absent(key.into()));
        self
    }
    pub fn require_equals(mut self, key: impl Into<String>, value: Vec<u8>) -> Self {
        self.compares.push(Compare::Equals(key.into(), value));
        self
    }
    /// The key's last change is at `revision` (0: it is absent).
    pub fn require_revision(mut self, key: impl Into<String>, revision: u64) -> Self {
        self.compares
            .push(Compare::ModRevision(key.into(), revision));
        self
    }
}

/// Keys under a prefix, read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Range {
    pub kvs: Vec<KeyValue>,
    /// The store's revision the read saw.
    pub revision: u64,
}

/// One change a watch reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put(KeyValue),
    Delete { key: String, mod_revision: u64 },
}

impl WatchEvent {
    pub fn key(&self) -> &str {
        match self {
            WatchEvent::Put(kv) => &kv.key,
            WatchEvent::Delete { key, .. } => key,
        }
    }
    pub fn revision(&self) -> u64 {
        match self {
            WatchEvent::Put(kv) => kv.mod_revision,
            WatchEvent::Delete { mod_revision, .. } => *mod_revision,
        }
    }
}

/// A stream of changes under a prefix. Dropping it ends the watch.
pub trait Watch: Send {
    /// The next batch of changes (one transaction's, or several), waiting at
    /// most `timeout`; `Ok(None)` if none came. A watch that fell behind
    /// what the store keeps returns [`StoreError::Compacted`]; one whose
    /// store is unreachable returns [`StoreError::Unavailable`] and may be
    /// polled again (it resumes from its last revision, without gaps).
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<WatchEvent>>, StoreError>;
}

/// A transactional key-value store with revisions, watches and leases.
pub trait Store: Send + Sync {
    fn get_kv(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;
    /// Every key starting with `prefix`, in key order, at one revision.
    fn range(&self, prefix: &str) -> Result<Range, StoreError>;
    /// Apply `txn` durably if every compare holds ([`StoreError::Conflict`]
    /// naming the first that failed, else). Returns the revision it made
    /// (the current one if it wrote nothing).
    fn txn(&self, txn: Txn) -> Result<u64, StoreError>;
    /// Changes under `prefix` with a revision above `after`.
    fn watch(&self, prefix: &str, after: u64) -> Result<Box<dyn Watch>, StoreError>;
    /// A lease that lapses `ttl` after its last renewal.
    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError>;
    /// Renew a lease ([`StoreError::LeaseExpired`] if it is gone).
    fn lease_keepalive(&self, lease: LeaseId) -> Result<(), StoreError>;
    /// End a lease now, deleting its keys. An unknown lease is not an error.
    fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError>;

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get_kv(key)?.map(|kv| kv.value))
    }
    /// All keys starting with `prefix`, in key order.
    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .range(prefix)?
            .kvs
            .into_iter()
            .map(|kv| (kv.key, kv.value))
            .collect())
    }
    /// [`Store::txn`] without its revision.
    fn commit(&self, txn: Txn) -> Result<(), StoreError> {
        self.txn(txn).map(drop)
    }
}

/// Check a transaction's compares; `get` gives a key's value and mod
/// revision. Shared by the in-process stores.
pub fn check_compares(
    compares: &[Compare],
    get: impl Fn(&str) -> Option<(Vec<u8>, u64)>,
) -> Result<(), StoreError> {
    for c in compares {
        let now = get(c.key());
        let ok = match c {
            Compare::Absent(_) => now.is_none(),
            Compare::Equals(_, v) => now.as_ref().map(|(b, _)| b) == Some(v),
            Compare::ModRevision(_, rev) => now.map_or(0, |(_, r)| r) == *rev,
        };
        if !ok {
            return Err(StoreError::Conflict {
                key: c.key().to_string(),
            });
        }
    }
    Ok(())
}

/// What an in-process store needs to serve watches: the recent changes, a
/// compaction point and a way to wake the watchers. Shared by [`MemStore`]
/// and the redb store (one process owns a redb file, so its watches are
/// in-process too).
pub struct WatchHub {
    state: Mutex<HubState>,
    changed: Condvar,
    keep: usize,
}

struct HubState {
    /// The last `keep` changes, in revision order.
    log: VecDeque<WatchEvent>,
    /// Changes at or below this revision are no longer in the log.
    trimmed: u64,
    /// A new watch must start after this revision. A compaction moves it
    /// but leaves the log to the watches already open, which, like etcd's,
    /// have been promised those changes.
    compacted: u64,
}

impl WatchHub {
    /// A hub whose history starts after `revision`, keeping `keep` changes.
    pub fn new(revision: u64, keep: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(HubState {
                log: VecDeque::new(),
                trimmed: revision,
                compacted: revision,
            }),
            changed: Condvar::new(),
            keep: keep.max(1),
        })
    }

    /// Record one committed transaction's changes (in revision order).
    pub fn publish(&self, events: Vec<WatchEvent>) {
        if events.is_empty() {
            return;
        }
        let mut s = self.state.lock().expect("watch hub poisoned");
        for e in events {
            s.log.push_back(e);
        }
        while s.log.len() > self.keep {
            if let Some(old) = s.log.pop_front() {
                s.trimmed = s.trimmed.max(old.revision());
                s.compacted = s.compacted.max(s.trimmed);
            }
        }
        drop(s);
        self.changed.notify_all();
    }

    /// Refuse new watches at or below `revision` (as etcd's compaction
    /// does); open watches still get what they have not read.
    pub fn compact(&self, revision: u64) {
        let mut s = self.state.lock().expect("watch hub poisoned");
        s.compacted = s.compacted.max(revision);
    }

    /// A watch of `prefix` after revision `after`.
    pub fn watch(self: &Arc<Self>, prefix: &str, after: u64) -> Result<Box<dyn Watch>, StoreError> {
        let compacted = self.state.lock().expect("watch hub poisoned").compacted;
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compact_revision: compacted,
            });
        }
        Ok(Box::new(HubWatch {
            hub: self.clone(),
            prefix: prefix.to_string(),
            after,
        }))
    }
}

struct HubWatch {
    hub: Arc<WatchHub>,
    prefix: String,
    after: u64,
}

impl Watch for HubWatch {
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Vec<WatchEvent>>, StoreError> {
        let deadline = Instant::now() + timeout;
        let mut s = self.hub.state.lock().expect("watch hub poisoned");
        loop {
            if self.after < s.trimmed {
                return Err(StoreError::Compacted {
                    requested: self.after,
                    compact_revision: s.trimmed,
                });
            }
            let newer: Vec<WatchEvent> = s
                .log
                .iter()
                .filter(|e| e.revision() > self.after)
                .cloned()
                .collect();
            if let Some(last) = newer.last() {
                self.after = last.revision();
                let mine: Vec<WatchEvent> = newer
                    .into_iter()
                    .filter(|e| e.key().starts_with(&self.prefix))
                    .collect();
                if !mine.is_empty() {
                    return Ok(Some(mine));
                }
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            s = self
                .hub
                .changed
                .wait_timeout(s, deadline - now)
                .expect("watch hub poisoned")
                .0;
        }
    }
}

/// Leases of an in-process store: their TTLs and deadlines, by ID.
#[derive(Debug, Default)]
pub struct Leases {
    next: LeaseId,
    live: HashMap<LeaseId, (Duration, Instant)>,
}

impl Leases {
    pub fn grant(&mut self, ttl: Duration) -> LeaseId {
        self.next += 1;
        self.live.insert(self.next, (ttl, Instant::now() + ttl));
        self.next
    }
    pub fn keepalive(&mut self, id: LeaseId) -> Result<(), StoreError> {
        match self.live.get_mut(&id) {
            Some((ttl, deadline)) if *deadline > Instant::now() => {
                *deadline = Instant::now() + *ttl;
                Ok(())
            }
            _ => Err(StoreError::LeaseExpired(id)),
        }
    }
    pub fn is_live(&self, id: LeaseId) -> bool {
        self.live.get(&id).is_some_and(|(_, d)| *d > Instant::now())
    }
    /// Remove and return every lease past its deadline.
    pub fn take_expired(&mut self) -> Vec<LeaseId> {
        let now = Instant::now();
        let gone: Vec<LeaseId> = self
            .live
            .iter()
            .filter(|(_, (_, d))| *d <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.live.remove(id);
        }
        gone
    }
    pub fn revoke(&mut self, id: LeaseId) -> bool {
        self.live.remove(&id).is_some()
    }
}

/// An in-memory store for unit tests of logic (and the conformance suite's
/// reference).
pub struct MemStore {
    inner: Mutex<MemInner>,
    hub: Arc<WatchHub>,
}

#[derive(Default)]
struct MemInner {
    map: BTreeMap<String, KeyValue>,
    revision: u64,
    leases: Leases,
}

impl Default for MemStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemStore {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(MemInner::default()),
            hub: WatchHub::new(0, 10_000),
        }
    }

    /// Forget watch history at or below `revision`.
    pub fn compact(&self, revision: u64) {
        self.hub.compact(revision);
    }

    /// Delete the keys of lapsed leases, as one revision each. Called
    /// before every operation, so expiry is seen by the next caller.
    fn expire(&self, inner: &mut MemInner) {
        for lease in inner.leases.take_expired() {
            self.drop_lease_keys(inner, lease);
        }
    }

    fn drop_lease_keys(&self, inner: &mut MemInner, lease: LeaseId) {
        let keys: Vec<String> = inner
            .map
            .values()
            .filter(|kv| kv.lease == Some(lease))
            .map(|kv| kv.key.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        inner.revision += 1;
        let rev = inner.revision;
        let mut events = Vec::new();
        for k in keys {
            inner.map.remove(&k);
            events.push(WatchEvent::Delete {
                key: k,
                mod_revision: rev,
            });
        }
        self.hub.publish(events);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemInner> {
        let mut inner = self.inner.lock().expect("poisoned");
        self.expire(&mut inner);
        inner
    }
}

impl Store for MemStore {
    fn get_kv(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        Ok(self.lock().map.get(key).cloned())
    }

    fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        let inner = self.lock();
        Ok(Range {
            kvs: inner
                .map
                .range(prefix.to_string()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v.clone())
                .collect(),
            revision: inner.revision,
        })
    }

    fn txn(&self, txn: Txn) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        check_compares(&txn.compares, |k| {
            inner
                .map
                .get(k)
                .map(|kv| (kv.value.clone(), kv.mod_revision))
        })?;
        if txn.writes.is_empty() {
            return Ok(inner.revision);
        }
        for w in &txn.writes {
            if let Write::PutWithLease(_, _, lease) = w {
                if !inner.leases.is_live(*lease) {
                    return Err(StoreError::LeaseExpired(*lease));
                }
            }
        }
        inner.revision += 1;
        let rev = inner.revision;
        let events = apply_writes(&mut inner.map, txn.writes, rev);
        self.hub.publish(events);
        Ok(rev)
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Box<dyn Watch>, StoreError> {
        // Under the lock, so no commit slips between the check and the watch.
        let _inner = self.lock();
        self.hub.watch(prefix, after)
    }

    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        Ok(self.lock().leases.grant(ttl))
    }

    fn lease_keepalive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.lock().leases.keepalive(lease)
    }

    fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if inner.leases.revoke(lease) {
            self.drop_lease_keys(&mut inner, lease);
        }
        Ok(())
    }
}

/// Apply writes to an ordered map at revision `rev`; the watch events they
/// make. Shared by the in-process stores.
pub fn apply_writes(
    map: &mut BTreeMap<String, KeyValue>,
    writes: Vec<Write>,
    rev: u64,
) -> Vec<WatchEvent> {
    let mut events = Vec::with_capacity(writes.len());
    for w in writes {
        let (key, value, lease) = match w {
            Write::Put(k, v) => (k, v, None),
            Write::PutWithLease(k, v, l) => (k, v, Some(l)),
            Write::Delete(k) => {
                if map.remove(&k).is_some() {
                    events.push(WatchEvent::Delete {
                        key: k,
                        mod_revision: rev,
                    });
                }
                continue;
            }
        };
        let create_revision = map.get(&key).map_or(rev, |kv| kv.create_revision);
        let kv = KeyValue {
            key: key.clone(),
            value,
            create_revision,
            mod_revision: rev,
            lease,
        };
        map.insert(key, kv.clone());
        events.push(WatchEvent::Put(kv));
    }
    events
}
