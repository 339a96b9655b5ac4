//! The transactional key-value interface the core keeps its state in.
//!
//! Shaped after etcd's transactions: a set of compares, then a set of writes,
//! applied atomically or not at all. The embedded implementation is in
//! `ballast-store`; [`MemStore`] here serves unit tests. The core never
//! assumes anything beyond this trait, so an etcd store can follow.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// A failed store operation.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A compare in the transaction did not hold; nothing was written.
    #[error("store: compare failed on key {key}")]
    Conflict { key: String },
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

/// What a key must hold for a transaction to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key must be absent.
    Absent(String),
    /// The key must hold exactly these bytes.
    Equals(String, Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    Put(String, Vec<u8>),
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
}

/// A transactional key-value store with compare-and-swap.
pub trait Store: Send + Sync {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// All keys starting with `prefix`, in key order.
    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Apply `txn` durably if every compare holds, else [`StoreError::Conflict`].
    fn commit(&self, txn: Txn) -> Result<(), StoreError>;
}

/// Check a transaction's compares against a map; shared by in-memory stores.
pub fn check_compares(
    compares: &[Compare],
    get: impl Fn(&str) -> Option<Vec<u8>>,
) -> Result<(), StoreError> {
    for c in compares {
        let (key, ok) = match c {
            Compare::Absent(k) => (k, get(k).is_none()),
            Compare::Equals(k, v) => (k, get(k).as_deref() == Some(v.as_slice())),
        };
        if !ok {
            return Err(StoreError::Conflict { key: key.clone() });
        }
    }
    Ok(())
}

/// An in-memory store for unit tests of logic.
#[derive(Default)]
pub struct MemStore {
    map: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.lock().expect("poisoned").get(key).cloned())
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let map = self.map.lock().expect("poisoned");
        Ok(map
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn commit(&self, txn: Txn) -> Result<(), StoreError> {
        let mut map = self.map.lock().expect("poisoned");
        check_compares(&txn.compares, |k| map.get(k).cloned())?;
        for w in txn.writes {
            match w {
                Write::Put(k, v) => {
                    map.insert(k, v);
                }
                Write::Delete(k) => {
                    map.remove(&k);
                }
            }
        }
        Ok(())
    }
}
