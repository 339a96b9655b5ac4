//! Ballast's embedded transactional store: the core's [`Store`] trait on one
//! redb file (`<state-dir>/ballast.redb`).
//!
//! This crate owns the store file: creating it, checking on open that it is a
//! ballast store of a schema this build understands, running transactions,
//! and turning redb's errors into [`StoreError`]. It knows nothing of what the
//! keys mean.
//!
//! It must never rewrite, repair or "fix" a file it does not recognise. An
//! empty file, a file that is not a redb database, a damaged one, one without
//! a schema version or with a newer one is reported and left byte for byte as
//! it was: such a file is only ever opened read-only (see [`overlay`]) until it
//! has passed those checks. A valid store left behind by a crash is recovered
//! by redb when opened for writing; that is crash recovery, not repair.
//!
//! Layout: table `kv` (`&str` → `&[u8]`) holds the data; table `rev`
//! (`&str` → `(u64, u64, u64)`) each key's create revision, mod revision and
//! lease (0: none); table `meta` (`&str` → `u64`) holds `schema_version` and
//! `revision` (the store's last). The meta table's name and types never
//! change from one schema version to the next, so every ballast can tell
//! what version a file is before touching it.
//!
//! Schema 1 (until revisions came) had no `rev` table: opening one migrates
//! it in one write transaction (every key gets revision 1). Watches and
//! leases live in this process (one daemon owns the file: it holds a
//! flock): a watch's history is the last [`WATCH_HISTORY`] changes since
//! the open, and leases do not survive a restart, so the keys put under a
//! lease are deleted when the file is opened.

mod overlay;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ballast_core::store::{
    apply_writes, check_compares, KeyValue, LeaseId, Leases, Range, Store, StoreError, Txn, Watch,
    WatchEvent, WatchHub, Write,
};
use redb::{Builder, Database, DatabaseError, ReadableTable, TableDefinition, TableError};

use crate::overlay::ReadOnlyOverlay;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u64 = 2;

/// How many changes a watch can catch up on.
pub const WATCH_HISTORY: usize = 10_000;

/// The data: every key the core stores.
const DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Each key's (create revision, mod revision, lease or 0).
const REVS: TableDefinition<&str, (u64, u64, u64)> = TableDefinition::new("rev");
const REVISION_KEY: &str = "revision";
/// Facts about the file itself. Name and types fixed for all schema versions.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema_version";

/// The [`Store`] on a redb file. Shared between threads; redb serialises
/// write transactions and lets reads run alongside them.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
    /// Held across a commit and its watch publication, so watchers see
    /// transactions in revision order.
    writer: Mutex<Leases>,
    hub: Arc<WatchHub>,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Open the store at `path`, creating it if no file is there.
    ///
    /// # Errors
    ///
    /// A file that exists but is not a ballast store of a schema this build
    /// understands is an error ([`StoreError::Corrupt`],
    /// [`StoreError::NewerSchema`]) and is left untouched. A store already
    /// open elsewhere (it is locked) is [`StoreError::Io`].
    pub fn open(path: &Path) -> Result<RedbStore, StoreError> {
        match fs::metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => create(path)?,
            Err(e) => return Err(io_error(path, "cannot stat", &e)),
        }
        open_existing(path)
    }

    /// The store file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        redb_error(&self.path, e.into())
    }
}

impl RedbStore {
    fn read_kv(
        &self,
        revs: &impl ReadableTable<&'static str, (u64, u64, u64)>,
        key: &str,
        value: &[u8],
    ) -> Result<KeyValue, StoreError> {
        let (create_revision, mod_revision, lease) = revs
            .get(key)
            .map_err(|e| self.err(e))?
            .map(|v| v.value())
            .ok_or_else(|| corrupt(&self.path, &format!("key {key} has no revision")))?;
        Ok(KeyValue {
            key: key.to_owned(),
            value: value.to_vec(),
            create_revision,
            mod_revision,
            lease: (lease != 0).then_some(lease),
        })
    }

    /// Commit `writes` at the next revision, under the writer lock; the
    /// caller has checked the compares in the same write transaction.
    fn write(&self, txn: Txn, leases: &Leases) -> Result<(u64, Vec<WatchEvent>), StoreError> {
        let Txn { compares, writes } = txn;
        let write = self.db.begin_write().map_err(|e| self.err(e))?;
        let outcome = (|| {
            let mut data = write.open_table(DATA).map_err(|e| self.err(e))?;
            let mut revs = write.open_table(REVS).map_err(|e| self.err(e))?;
            let mut meta = write.open_table(META).map_err(|e| self.err(e))?;
            let revision = meta
                .get(REVISION_KEY)
                .map_err(|e| self.err(e))?
                .map_or(0, |v| v.value());
            let mut current: HashMap<String, Option<(Vec<u8>, u64)>> = HashMap::new();
            for c in &compares {
                let key = c.key();
                if !current.contains_key(key) {
                    let value = data
                        .get(key)
                        .map_err(|e| self.err(e))?
                        .map(|v| v.value().to_vec());
                    let rev = revs.get(key).map_err(|e| self.err(e))?.map(|v| v.value().1);
                    current.insert(key.to_owned(), value.map(|v| (v, rev.unwrap_or(0))));
                }
            }
            check_compares(&compares, |k| current.get(k).cloned().flatten())?;
            if writes.is_empty() {
                return Ok(None);
            }
            for w in &writes {
                if let Write::PutWithLease(_, _, lease) = w {
                    if !leases.is_live(*lease) {
                        return Err(StoreError::LeaseExpired(*lease));
                    }
                }
            }
            let rev = revision + 1;
            // Existing create revisions, so apply_writes keeps them.
            let mut touched: BTreeMap<String, KeyValue> = BTreeMap::new();
            for w in &writes {
                let key = match w {
                    Write::Put(k, _) | Write::PutWithLease(k, _, _) | Write::Delete(k) => k,
                };
                if touched.contains_key(key) {
                    continue;
                }
                if let Some((create, modr, lease)) = revs
                    .get(key.as_str())
                    .map_err(|e| self.err(e))?
                    .map(|v| v.value())
                {
                    touched.insert(
                        key.clone(),
                        KeyValue {
                            key: key.clone(),
                            value: Vec::new(),
                            create_revision: create,
                            mod_revision: modr,
                            lease: (lease != 0).then_some(lease),
                        },
                    );
                }
            }
            let mut after = touched.clone();
            let events = apply_writes(&mut after, writes, rev);
            for e in &events {
                match e {
                    WatchEvent::Put(kv) => {
                        data.insert(kv.key.as_str(), kv.value.as_slice())
                            .map_err(|e| self.err(e))?;
                        revs.insert(
                            kv.key.as_str(),
                            (kv.create_revision, kv.mod_revision, kv.lease.unwrap_or(0)),
                        )
                        .map_err(|e| self.err(e))?;
                    }
                    WatchEvent::Delete { key, .. } => {
                        data.remove(key.as_str()).map_err(|e| self.err(e))?;
                        revs.remove(key.as_str()).map_err(|e| self.err(e))?;
                    }
                }
            }
            if events.is_empty() {
                return Ok(None);
            }
            meta.insert(REVISION_KEY, rev).map_err(|e| self.err(e))?;
            Ok(Some((rev, events)))
        })();
        match outcome {
            Ok(Some((rev, events))) => {
                // Durability::Immediate (redb's default): fsync'd before returning.
                write.commit().map_err(|e| self.err(e))?;
                Ok((rev, events))
            }
            Ok(None) => {
                // Nothing to write: end the transaction without a commit (and
                // its fsync).
                write.abort().map_err(|e| self.err(e))?;
                Ok((self.revision()?, Vec::new()))
            }
            Err(e) => {
                write.abort().map_err(|e| self.err(e))?;
                Err(e)
            }
        }
    }

    fn revision(&self) -> Result<u64, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = read.open_table(META).map_err(|e| self.err(e))?;
        Ok(meta
            .get(REVISION_KEY)
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value()))
    }

    /// Delete the keys of lapsed leases (leases lapse lazily: at the next
    /// call after their deadline).
    fn expire(&self, leases: &mut Leases) -> Result<(), StoreError> {
        for lease in leases.take_expired() {
            self.delete_lease_keys(leases, lease)?;
        }
        Ok(())
    }

    fn delete_lease_keys(&self, leases: &Leases, lease: LeaseId) -> Result<(), StoreError> {
        let keys = self.keys_with_lease(|l| l == lease)?;
        if keys.is_empty() {
            return Ok(());
        }
        let txn = keys.into_iter().fold(Txn::new(), |t, k| t.delete(k));
        let (_, events) = self.write(txn, leases)?;
        self.hub.publish(events);
        Ok(())
    }

    fn keys_with_lease(&self, pick: impl Fn(u64) -> bool) -> Result<Vec<String>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let revs = read.open_table(REVS).map_err(|e| self.err(e))?;
        let mut keys = Vec::new();
        for entry in revs.iter().map_err(|e| self.err(e))? {
            let (k, v) = entry.map_err(|e| self.err(e))?;
            let lease = v.value().2;
            if lease != 0 && pick(lease) {
                keys.push(k.value().to_owned());
            }
        }
        Ok(keys)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Leases>, StoreError> {
        let mut leases = self
            .writer
            .lock()
            .map_err(|_| StoreError::Io("store writer lock poisoned".into()))?;
        self.expire(&mut leases)?;
        Ok(leases)
    }
}

impl Store for RedbStore {
    fn get_kv(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        drop(self.lock()?);
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let data = read.open_table(DATA).map_err(|e| self.err(e))?;
        let revs = read.open_table(REVS).map_err(|e| self.err(e))?;
        let Some(value) = data.get(key).map_err(|e| self.err(e))? else {
            return Ok(None);
        };
        self.read_kv(&revs, key, value.value()).map(Some)
    }

    fn range(&self, prefix: &str) -> Result<Range, StoreError> {
        drop(self.lock()?);
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let data = read.open_table(DATA).map_err(|e| self.err(e))?;
        let revs = read.open_table(REVS).map_err(|e| self.err(e))?;
        let meta = read.open_table(META).map_err(|e| self.err(e))?;
        let revision = meta
            .get(REVISION_KEY)
            .map_err(|e| self.err(e))?
            .map_or(0, |v| v.value());
        let mut kvs = Vec::new();
        for entry in data.range(prefix..).map_err(|e| self.err(e))? {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            kvs.push(self.read_kv(&revs, key, value.value())?);
        }
        Ok(Range { kvs, revision })
    }

    fn txn(&self, txn: Txn) -> Result<u64, StoreError> {
        let leases = self.lock()?;
        let (rev, events) = self.write(txn, &leases)?;
        self.hub.publish(events);
        Ok(rev)
    }

    fn watch(&self, prefix: &str, after: u64) -> Result<Box<dyn Watch>, StoreError> {
        // Under the writer lock: no commit slips between the check and the watch.
        let _leases = self.lock()?;
        self.hub.watch(prefix, after)
    }

    fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let mut leases = self.lock()?;
        // IDs must not meet a key left under an older lease of this file.
        let mut id = leases.grant(ttl);
        while !self.keys_with_lease(|l| l == id)?.is_empty() {
            leases.revoke(id);
            id = leases.grant(ttl);
        }
        Ok(id)
    }

    fn lease_keepalive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.lock()?.keepalive(lease)
    }

    fn lease_revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut leases = self.lock()?;
        if leases.revoke(lease) {
            self.delete_lease_keys(&leases, lease)?;
        }
        Ok(())
    }
}

/// Open a file that exists: check it without writing, then open it for real.
fn open_existing(path: &Path) -> Result<RedbStore, StoreError> {
    let meta = fs::metadata(path).map_err(|e| io_error(path, "cannot stat", &e))?;
    if !meta.is_file() {
        return Err(corrupt(path, "not a regular file"));
    }
    if meta.len() == 0 {
        return Err(corrupt(
            path,
            "file is empty (0 bytes), not a ballast store; remove it to start afresh",
        ));
    }
    peek(path)?;
    // The file is a ballast store of a schema we understand: open it for
    // writing. This is where redb recovers a store left by a crash.
    let db = Builder::new().open(path).map_err(|e| open_error(path, e))?;
    // Checked again on the real handle, in case another process replaced the
    // file between the two opens.
    if check_schema(&db, path)? < SCHEMA_VERSION {
        migrate_v1(&db, path)?;
    }
    let mut store = RedbStore {
        db,
        path: path.to_owned(),
        writer: Mutex::new(Leases::default()),
        hub: WatchHub::new(0, WATCH_HISTORY),
    };
    let revision = store.revision()?;
    store.hub = WatchHub::new(revision, WATCH_HISTORY);
    // Leases end with the process that granted them.
    let leased = store.keys_with_lease(|_| true)?;
    if !leased.is_empty() {
        tracing::info!(
            keys = leased.len(),
            "deleting keys of leases from before this start"
        );
        let txn = leased.into_iter().fold(Txn::new(), |t, k| t.delete(k));
        let leases = Leases::default();
        let (_, events) = store.write(txn, &leases)?;
        store.hub.publish(events);
    }
    tracing::debug!(path = %path.display(), revision, "opened store");
    Ok(store)
}

/// Open `path` read-only, with redb's writes kept in memory, and check the
/// schema. redb asserts on some damaged files (a truncated one, for one);
/// with nothing written anywhere, such a panic is safe to turn into an error.
fn peek(path: &Path) -> Result<(), StoreError> {
    let file = File::open(path).map_err(|e| io_error(path, "cannot open", &e))?;
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        let backend = ReadOnlyOverlay::new(file).map_err(|e| open_error(path, e))?;
        let db = Builder::new()
            .create_with_backend(backend)
            .map_err(|e| open_error(path, e))?;
        check_schema(&db, path)
    }));
    match outcome {
        Ok(result) => result.map(drop),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            // Assertion messages span lines; an error detail is one line.
            let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
            Err(corrupt(
                path,
                &format!("damaged or truncated redb file (redb failed reading it: {message})"),
            ))
        }
    }
}

/// Is this a ballast store whose schema this build understands?
/// Returns the file's schema version.
fn check_schema(db: &Database, path: &Path) -> Result<u64, StoreError> {
    let err = |e: redb::Error| redb_error(path, e);
    let read = db.begin_read().map_err(|e| err(e.into()))?;
    let meta = match read.open_table(META) {
        Ok(table) => table,
        Err(TableError::TableDoesNotExist(_)) => {
            return Err(corrupt(
                path,
                "a redb database without a meta table, not a ballast store",
            ))
        }
        Err(e) => return Err(err(e.into())),
    };
    let version = meta.get(SCHEMA_KEY).map_err(|e| err(e.into()))?;
    let version = version.map(|v| v.value());
    match version {
        None => {
            return Err(corrupt(
                path,
                "no schema version in the meta table, not a ballast store",
            ))
        }
        Some(found) if found > SCHEMA_VERSION => {
            return Err(StoreError::NewerSchema {
                path: path.display().to_string(),
                found,
                supported: SCHEMA_VERSION,
            })
        }
        Some(0) => return Err(corrupt(path, "schema version 0 is not a ballast schema")),
        Some(_) => {}
    }
    let version = version.unwrap_or(SCHEMA_VERSION);
    if version >= 2 {
        match read.open_table(REVS) {
            Ok(_) => {}
            Err(TableError::TableDoesNotExist(_)) => {
                return Err(corrupt(
                    path,
                    "the revision table is missing though schema version 2 is recorded",
                ))
            }
            Err(e) => return Err(err(e.into())),
        }
    }
    match read.open_table(DATA) {
        Ok(_) => Ok(version),
        Err(TableError::TableDoesNotExist(_)) => Err(corrupt(
            path,
            "the data table is missing though a schema version is recorded",
        )),
        Err(e) => Err(err(e.into())),
    }
}

/// Schema 1 → 2: every key gets revision 1 (create and mod), no lease; the
/// store's revision becomes 1. One write transaction: a crash leaves schema
/// 1, and the next open migrates again.
fn migrate_v1(db: &Database, path: &Path) -> Result<(), StoreError> {
    let err = |e: redb::Error| redb_error(path, e);
    let write = db.begin_write().map_err(|e| err(e.into()))?;
    let mut keys = 0u64;
    {
        let data = write.open_table(DATA).map_err(|e| err(e.into()))?;
        let mut revs = write.open_table(REVS).map_err(|e| err(e.into()))?;
        for entry in data.iter().map_err(|e| err(e.into()))? {
            let (k, _) = entry.map_err(|e| err(e.into()))?;
            revs.insert(k.value(), (1, 1, 0))
                .map_err(|e| err(e.into()))?;
            keys += 1;
        }
        let mut meta = write.open_table(META).map_err(|e| err(e.into()))?;
        meta.insert(REVISION_KEY, 1).map_err(|e| err(e.into()))?;
        meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
            .map_err(|e| err(e.into()))?;
    }
    write.commit().map_err(|e| err(e.into()))?;
    tracing::info!(path = %path.display(), keys, "migrated the store from schema 1 to 2");
    Ok(())
}

/// Create a new store at `path`. It is built under a temporary name beside
/// `path` and linked into place only once complete, so a crash never leaves
/// a half-made file at `path` (which a later open would refuse as damaged).
/// If another process creates `path` first, its store is kept.
fn create(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| StoreError::Io(format!("{}: not a file path", path.display())))?;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = dir.join(format!(
        ".{}.new-{}-{nanos}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = init_file(&tmp).and_then(|()| {
        match fs::hard_link(&tmp, path) {
            Ok(()) => {
                tracing::info!(path = %path.display(), schema_version = SCHEMA_VERSION, "created store");
                Ok(())
            }
            // Someone else created it meanwhile: theirs is opened.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(io_error(path, "cannot link new store into place", &e)),
        }
    });
    if let Err(e) = fs::remove_file(&tmp) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %tmp.display(), error = %e, "cannot remove temporary store file");
        }
    }
    result?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "cannot sync directory", &e))
}

/// Write an empty store of the current schema to the new file `tmp`.
fn init_file(tmp: &Path) -> Result<(), StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| io_error(tmp, "cannot create", &e))?;
    let err = |e: redb::Error| redb_error(tmp, e);
    let db = Builder::new()
        .create_file(file)
        .map_err(|e| err(e.into()))?;
    let write = db.begin_write().map_err(|e| err(e.into()))?;
    {
        let mut meta = write.open_table(META).map_err(|e| err(e.into()))?;
        meta.insert(SCHEMA_KEY, SCHEMA_VERSION)
            .map_err(|e| err(e.into()))?;
        meta.insert(REVISION_KEY, 0).map_err(|e| err(e.into()))?;
        write.open_table(DATA).map_err(|e| err(e.into()))?;
        write.open_table(REVS).map_err(|e| err(e.into()))?;
    }
    write.commit().map_err(|e| err(e.into()))?;
    // A clean close, then make sure the close's header write is on disk too.
    drop(db);
    File::open(tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error(tmp, "cannot sync", &e))
}

fn corrupt(path: &Path, detail: &str) -> StoreError {
    StoreError::Corrupt {
        path: path.display().to_string(),
        detail: detail.to_owned(),
    }
}

fn io_error(path: &Path, what: &str, e: &io::Error) -> StoreError {
    StoreError::Io(format!("{}: {what}: {e}", path.display()))
}

/// An error from opening a file that exists. While opening, some I/O errors
/// mean the file's contents are wrong rather than the disk.
fn open_error(path: &Path, e: DatabaseError) -> StoreError {
    match e {
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == io::ErrorKind::InvalidData =>
        {
            corrupt(
                path,
                "not a redb database (no redb magic number at the start)",
            )
        }
        DatabaseError::Storage(redb::StorageError::Io(io))
            if io.kind() == io::ErrorKind::UnexpectedEof =>
        {
            corrupt(
                path,
                &format!("damaged or truncated redb file (reading it ran past the end: {io})"),
            )
        }
        e => redb_error(path, e.into()),
    }
}

/// The one mapping of redb's errors to the store's.
fn redb_error(path: &Path, e: redb::Error) -> StoreError {
    let p = path.display();
    match e {
        redb::Error::Corrupted(msg) => {
            corrupt(path, &format!("redb reports corruption: {}", tidy(&msg)))
        }
        redb::Error::UpgradeRequired(format) => corrupt(
            path,
            &format!("redb file format {format} is too old for this redb, not a ballast store"),
        ),
        redb::Error::TableDoesNotExist(table) => {
            corrupt(path, &format!("table {table} is missing"))
        }
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }) => corrupt(
            path,
            &format!(
                "not the table layout ballast writes: {}",
                tidy(&e.to_string())
            ),
        ),
        redb::Error::DatabaseAlreadyOpen => StoreError::Io(format!(
            "{p}: already open (locked by another process or store handle)"
        )),
        redb::Error::Io(io) => StoreError::Io(format!("{p}: {io}")),
        redb::Error::PreviousIo => StoreError::Io(format!(
            "{p}: an earlier i/o error left the store unusable; it must be reopened"
        )),
        redb::Error::ValueTooLarge(len) => StoreError::Io(format!(
            "{p}: value of {len} bytes is larger than redb stores"
        )),
        redb::Error::LockPoisoned(at) => {
            StoreError::Io(format!("{p}: redb internal lock poisoned at {at}"))
        }
        // redb's error enum is non-exhaustive; the rest cannot arise from
        // the operations above, but keep their text if one does.
        other => StoreError::Io(format!("{p}: {}", tidy(&other.to_string()))),
    }
}

/// redb's messages start with a capital and may end with a period.
fn tidy(msg: &str) -> String {
    let msg = msg.trim().trim_end_matches('.');
    let mut chars = msg.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
