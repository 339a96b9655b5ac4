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
//! Layout: table `kv` (`&str` → `&[u8]`) holds the data; table `meta`
//! (`&str` → `u64`) holds `schema_version`. The meta table's name and types
//! never change from one schema version to the next, so every ballast can
//! tell what version a file is before touching it.

mod overlay;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use ballast_core::store::{check_compares, Compare, Store, StoreError, Txn, Write};
use redb::{Builder, Database, DatabaseError, ReadableTable, TableDefinition, TableError};

use crate::overlay::ReadOnlyOverlay;

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: u64 = 1;

/// The data: every key the core stores.
const DATA: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// Facts about the file itself. Name and types fixed for all schema versions.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const SCHEMA_KEY: &str = "schema_version";

/// The [`Store`] on a redb file. Shared between threads; redb serialises
/// write transactions and lets reads run alongside them.
pub struct RedbStore {
    db: Database,
    path: PathBuf,
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

impl Store for RedbStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(DATA).map_err(|e| self.err(e))?;
        let value = table.get(key).map_err(|e| self.err(e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let read = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = read.open_table(DATA).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in table.range(prefix..).map_err(|e| self.err(e))? {
            let (key, value) = entry.map_err(|e| self.err(e))?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_owned(), value.value().to_vec()));
        }
        Ok(out)
    }

    fn commit(&self, txn: Txn) -> Result<(), StoreError> {
        let Txn { compares, writes } = txn;
        let write = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut table = write.open_table(DATA).map_err(|e| self.err(e))?;
            let mut current: HashMap<&str, Option<Vec<u8>>> = HashMap::new();
            for compare in &compares {
                let (Compare::Absent(key) | Compare::Equals(key, _)) = compare;
                if !current.contains_key(key.as_str()) {
                    let value = table.get(key.as_str()).map_err(|e| self.err(e))?;
                    current.insert(key, value.map(|v| v.value().to_vec()));
                }
            }
            let checked = check_compares(&compares, |k| current.get(k).cloned().flatten());
            if checked.is_err() || writes.is_empty() {
                // Nothing to write: end the transaction without a commit (and
                // its fsync).
                drop(table);
                write.abort().map_err(|e| self.err(e))?;
                return checked;
            }
            for w in writes {
                match w {
                    Write::Put(key, value) => {
                        table
                            .insert(key.as_str(), value.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    Write::Delete(key) => {
                        table.remove(key.as_str()).map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        // Durability::Immediate (redb's default): fsync'd before returning.
        write.commit().map_err(|e| self.err(e))
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
    check_schema(&db, path)?;
    tracing::debug!(path = %path.display(), "opened store");
    Ok(RedbStore {
        db,
        path: path.to_owned(),
    })
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
        Ok(result) => result,
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
fn check_schema(db: &Database, path: &Path) -> Result<(), StoreError> {
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
    match version.map(|v| v.value()) {
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
        // Only version 1 exists, so there is nothing to migrate from.
        Some(_) => {}
    }
    match read.open_table(DATA) {
        Ok(_) => Ok(()),
        Err(TableError::TableDoesNotExist(_)) => Err(corrupt(
            path,
            "the data table is missing though a schema version is recorded",
        )),
        Err(e) => Err(err(e.into())),
    }
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
        write.open_table(DATA).map_err(|e| err(e.into()))?;
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
