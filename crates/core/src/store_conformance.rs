//! The one conformance suite every [`Store`] passes: MemStore (here), the
//! redb store (`ballast-store`) and a real etcd (`ballast-etcd`) run these
//! same functions. Each panics on the first behaviour that differs from
//! the trait's contract. Keys are under `prefix`, so one store can run
//! several cases.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::store::{Store, StoreError, Txn, WatchEvent};

/// A put conditioned on a key's revision applies once; the stale one is a
/// Conflict naming the key and writes nothing.
pub fn cas_on_revision(store: &dyn Store, prefix: &str) {
    let key = format!("{prefix}cas");
    let r1 = store
        .txn(
            Txn::new()
                .require_revision(&key, 0)
                .put(&key, b"one".to_vec()),
        )
        .expect("create when absent");
    let kv = store.get_kv(&key).unwrap().expect("created");
    assert_eq!(kv.mod_revision, r1);
    assert_eq!(kv.create_revision, r1);
    let r2 = store
        .txn(
            Txn::new()
                .require_revision(&key, r1)
                .put(&key, b"two".to_vec()),
        )
        .expect("swap at the revision read");
    assert!(r2 > r1);
    match store.txn(
        Txn::new()
            .require_revision(&key, r1)
            .put(&key, b"three".to_vec()),
    ) {
        Err(StoreError::Conflict { key: k }) => assert_eq!(k, key),
        other => panic!("a stale swap must conflict: {other:?}"),
    }
    match store.txn(Txn::new().require_absent(&key).put(&key, b"four".to_vec())) {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("absent on a present key must conflict: {other:?}"),
    }
    let kv = store.get_kv(&key).unwrap().unwrap();
    assert_eq!(kv.value, b"two");
    assert_eq!(kv.mod_revision, r2);
    assert_eq!(
        kv.create_revision, r1,
        "an update keeps the create revision"
    );
    store
        .txn(Txn::new().require_revision(&key, r2).delete(&key))
        .unwrap();
    assert!(store.get_kv(&key).unwrap().is_none());
}

/// `threads` writers each add 1 to one counter `per_thread` times by
/// compare-and-swap on its revision: no increment is lost. Returns the
/// conflicts seen (each one a retry).
pub fn concurrent_cas_counter(
    store: Arc<dyn Store>,
    prefix: &str,
    threads: usize,
    per_thread: usize,
) -> u64 {
    let key = format!("{prefix}counter");
    store.commit(Txn::new().put(&key, b"0".to_vec())).unwrap();
    let conflicts = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (store, key, conflicts) = (store.clone(), key.clone(), conflicts.clone());
            std::thread::spawn(move || {
                for _ in 0..per_thread {
                    loop {
                        let kv = store.get_kv(&key).unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                        let next = (n + 1).to_string().into_bytes();
                        match store.txn(
                            Txn::new()
                                .require_revision(&key, kv.mod_revision)
                                .put(&key, next),
                        ) {
                            Ok(_) => break,
                            Err(StoreError::Conflict { .. }) => {
                                conflicts.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let n: usize = String::from_utf8(store.get(&key).unwrap().unwrap())
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(n, threads * per_thread, "increments were lost");
    conflicts.load(Ordering::Relaxed)
}

/// A range read is at one revision: it names the store's revision then, and
/// no key in it is newer.
pub fn range_is_consistent(store: &dyn Store, prefix: &str) {
    let mut last = 0;
    for i in 0..5 {
        last = store
            .txn(Txn::new().put(format!("{prefix}r/{i}"), vec![i]))
            .unwrap();
    }
    let range = store.range(&format!("{prefix}r/")).unwrap();
    assert_eq!(range.kvs.len(), 5);
    assert!(range.revision >= last);
    let keys: Vec<_> = range.kvs.iter().map(|kv| kv.key.clone()).collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted, "in key order");
    assert!(range.kvs.iter().all(|kv| kv.mod_revision <= range.revision));
    // The prefix bounds it.
    store
        .commit(Txn::new().put(format!("{prefix}r0"), vec![0]))
        .unwrap();
    assert_eq!(store.range(&format!("{prefix}r/")).unwrap().kvs.len(), 5);
}

/// Collect watch events until `n` have come (or the deadline passes).
fn collect(watch: &mut dyn crate::store::Watch, n: usize) -> Vec<WatchEvent> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        if let Some(batch) = watch.recv_timeout(Duration::from_millis(500)).unwrap() {
            got.extend(batch);
        }
    }
    got
}

/// A watch from a revision delivers every later change under its prefix,
/// in revision order, none twice, none missing, also when the store
/// compacts its history meanwhile (`compact` compacts up to a revision).
/// A watch from a compacted revision says so.
pub fn watch_without_gaps(store: &dyn Store, prefix: &str, compact: &dyn Fn(u64)) {
    let wp = format!("{prefix}w/");
    let start = store.range(&wp).unwrap().revision;
    let mut watch = store.watch(&wp, start).unwrap();
    let mut expected = Vec::new();
    let mut present = std::collections::HashSet::new();
    for i in 0..40u8 {
        let key = format!("{wp}{}", i % 7);
        let rev = if i % 5 == 4 {
            store.txn(Txn::new().delete(&key)).unwrap()
        } else {
            store.txn(Txn::new().put(&key, vec![i])).unwrap()
        };
        // A delete of an absent key changes nothing and is no event.
        let is_put = i % 5 != 4;
        if is_put {
            present.insert(key.clone());
            expected.push((key, rev, true));
        } else if present.remove(&key) {
            expected.push((key, rev, false));
        }
        // Outside the prefix: never reported.
        store
            .commit(Txn::new().put(format!("{prefix}other"), vec![i]))
            .unwrap();
        if i == 20 {
            compact(rev);
        }
    }
    let got = collect(watch.as_mut(), expected.len());
    let got: Vec<(String, u64, bool)> = got
        .iter()
        .map(|e| {
            (
                e.key().to_string(),
                e.revision(),
                matches!(e, WatchEvent::Put(_)),
            )
        })
        .collect();
    assert_eq!(
        got, expected,
        "the watch missed, repeated or reordered changes"
    );
    // Nothing more is pending.
    assert!(watch
        .recv_timeout(Duration::from_millis(200))
        .unwrap()
        .is_none());
    match store.watch(&wp, start) {
        Err(StoreError::Compacted {
            compact_revision, ..
        }) => assert!(compact_revision > start),
        Ok(_) => panic!("a watch from a compacted revision must say so"),
        Err(e) => panic!("{e}"),
    }
}

/// A key put under a lease goes when the lease lapses (its deletion is a
/// watch event); renewing keeps it; a revoked lease takes its keys at once
/// and refuses renewal.
pub fn leases_expire(store: &dyn Store, prefix: &str) {
    let lp = format!("{prefix}l/");
    let ttl = Duration::from_secs(1);
    let lease = store.lease_grant(ttl).unwrap();
    let start = store
        .txn(Txn::new().put_with_lease(format!("{lp}a"), b"x".to_vec(), lease))
        .unwrap();
    assert_eq!(
        store.get_kv(&format!("{lp}a")).unwrap().unwrap().lease,
        Some(lease)
    );
    let mut watch = store.watch(&lp, start).unwrap();
    // Renewed for longer than its TTL: still there.
    for _ in 0..4 {
        std::thread::sleep(ttl / 2);
        store.lease_keepalive(lease).unwrap();
    }
    assert!(
        store.get(&format!("{lp}a")).unwrap().is_some(),
        "a renewed lease lapsed"
    );
    // Left alone: gone (etcd checks leases about every 500 ms, so allow
    // several TTLs).
    let deadline = Instant::now() + Duration::from_secs(15);
    while store.get(&format!("{lp}a")).unwrap().is_some() {
        assert!(Instant::now() < deadline, "the key outlived its lease");
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = collect(watch.as_mut(), 1);
    assert!(
        matches!(events.first(), Some(WatchEvent::Delete { key, .. }) if key == &format!("{lp}a")),
        "{events:?}"
    );
    assert!(matches!(
        store.lease_keepalive(lease),
        Err(StoreError::LeaseExpired(_))
    ));
    // Revoke.
    let lease = store.lease_grant(Duration::from_secs(30)).unwrap();
    store
        .commit(Txn::new().put_with_lease(format!("{lp}b"), b"y".to_vec(), lease))
        .unwrap();
    store.lease_revoke(lease).unwrap();
    assert!(store.get(&format!("{lp}b")).unwrap().is_none());
    store.lease_revoke(lease).expect("revoking twice is fine");
}

/// Every case, on one store, for stores that need no setup of their own.
pub fn run_all(store: Arc<dyn Store>, prefix: &str, compact: &dyn Fn(u64)) -> u64 {
    cas_on_revision(store.as_ref(), prefix);
    range_is_consistent(store.as_ref(), prefix);
    watch_without_gaps(store.as_ref(), prefix, compact);
    leases_expire(store.as_ref(), prefix);
    concurrent_cas_counter(store, prefix, 16, 25)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    #[test]
    fn memstore_conforms() {
        let store = Arc::new(MemStore::new());
        let s = store.clone();
        let conflicts = run_all(store, "t/", &move |rev| s.compact(rev));
        println!("memstore: {conflicts} conflicts");
    }
}
