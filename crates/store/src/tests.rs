//! Tests of the redb store: the trait's semantics, and that files the store
//! does not recognise are refused and left exactly as they were.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn new_store() -> (tempfile::TempDir, PathBuf, RedbStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    let store = RedbStore::open(&path).unwrap();
    (dir, path, store)
}

fn put(store: &RedbStore, key: &str, value: &[u8]) {
    store.commit(Txn::new().put(key, value.to_vec())).unwrap();
}

/// Deterministic noise, so a failure reproduces.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[0]
        })
        .collect()
}

/// Open `path`, expect [`StoreError::Corrupt`] naming it, and check the file
/// was not changed. Returns the detail.
fn assert_refused_untouched(path: &Path) -> String {
    let before = fs::read(path).unwrap();
    let err = RedbStore::open(path).unwrap_err();
    assert_eq!(
        fs::read(path).unwrap(),
        before,
        "file changed by a failed open"
    );
    match err {
        StoreError::Corrupt { path: p, detail } => {
            assert_eq!(p, path.display().to_string());
            assert!(!detail.is_empty());
            assert!(
                !detail.ends_with('.'),
                "detail ends with a period: {detail}"
            );
            detail
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Write a store with a little data and close it; return its bytes.
fn closed_store_with_data(path: &Path) -> Vec<u8> {
    let store = RedbStore::open(path).unwrap();
    for i in 0..50 {
        put(&store, &format!("vol/{i:03}"), &[7; 300]);
    }
    drop(store);
    fs::read(path).unwrap()
}

#[test]
fn store_is_send_and_sync() {
    fn check<T: Send + Sync + 'static>() {}
    check::<RedbStore>();
    let _: Arc<dyn Store> = Arc::new(new_store().2);
}

#[test]
fn roundtrip() {
    let (_dir, _path, store) = new_store();
    assert_eq!(store.get("vol/a").unwrap(), None);
    put(&store, "vol/a", b"one");
    assert_eq!(store.get("vol/a").unwrap().as_deref(), Some(&b"one"[..]));
    put(&store, "vol/a", b"");
    assert_eq!(store.get("vol/a").unwrap().as_deref(), Some(&b""[..]));
    store.commit(Txn::new().delete("vol/a")).unwrap();
    assert_eq!(store.get("vol/a").unwrap(), None);
    // Deleting an absent key is not an error.
    store.commit(Txn::new().delete("vol/a")).unwrap();
}

#[test]
fn scan_is_ordered_and_bounded_by_the_prefix() {
    let (_dir, _path, store) = new_store();
    for key in [
        "vol/b", "volx", "vol/a/1", "vo", "vol", "vom", "vol/a", "snap/x", "vol/é", "vol0",
    ] {
        put(&store, key, key.as_bytes());
    }
    let keys = |prefix: &str| -> Vec<String> {
        let rows = store.scan(prefix).unwrap();
        for (k, v) in &rows {
            assert_eq!(k.as_bytes(), v.as_slice());
        }
        rows.into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(keys("vol/"), ["vol/a", "vol/a/1", "vol/b", "vol/é"]);
    assert_eq!(keys("vol/a"), ["vol/a", "vol/a/1"]);
    assert_eq!(
        keys("vol"),
        ["vol", "vol/a", "vol/a/1", "vol/b", "vol/é", "vol0", "volx"]
    );
    assert_eq!(
        keys(""),
        ["snap/x", "vo", "vol", "vol/a", "vol/a/1", "vol/b", "vol/é", "vol0", "volx", "vom"]
    );
    assert!(keys("vol/c").is_empty());
    assert!(keys("zzz").is_empty());
}

#[test]
fn failed_compare_writes_nothing() {
    let (_dir, _path, store) = new_store();
    put(&store, "a", b"1");
    let txn = Txn::new()
        .require_equals("a", b"1".to_vec())
        .require_equals("a", b"2".to_vec())
        .put("a", b"3".to_vec())
        .put("b", b"x".to_vec())
        .delete("a");
    match store.commit(txn) {
        Err(StoreError::Conflict { key }) => assert_eq!(key, "a"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    match store.commit(Txn::new().require_absent("a").put("c", b"x".to_vec())) {
        Err(StoreError::Conflict { key }) => assert_eq!(key, "a"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    match store.commit(Txn::new().require_equals("nope", vec![]).put("c", vec![])) {
        Err(StoreError::Conflict { key }) => assert_eq!(key, "nope"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.scan("").unwrap(), [("a".to_owned(), b"1".to_vec())]);
    // And compares that hold let the writes through.
    store
        .commit(
            Txn::new()
                .require_equals("a", b"1".to_vec())
                .require_absent("b")
                .put("b", b"2".to_vec()),
        )
        .unwrap();
    assert_eq!(store.get("b").unwrap(), Some(b"2".to_vec()));
    // A compare-only transaction reports the outcome and writes nothing.
    store.commit(Txn::new().require_absent("zz")).unwrap();
}

#[test]
fn writes_in_one_txn_apply_in_order_and_together() {
    let (_dir, _path, store) = new_store();
    put(&store, "gone", b"x");
    store
        .commit(
            Txn::new()
                .put("k", b"first".to_vec())
                .put("k", b"second".to_vec())
                .put("n", b"new".to_vec())
                .delete("gone")
                .put("tmp", vec![])
                .delete("tmp"),
        )
        .unwrap();
    assert_eq!(
        store.scan("").unwrap(),
        [
            ("k".to_owned(), b"second".to_vec()),
            ("n".to_owned(), b"new".to_vec())
        ]
    );
}

#[test]
fn readers_never_see_half_a_transaction() {
    let (_dir, _path, store) = new_store();
    let store = Arc::new(store);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                let rows = store.scan("pair/").unwrap();
                if let [(_, a), (_, b)] = rows.as_slice() {
                    assert_eq!(a, b, "saw one half of a transaction");
                    seen += 1;
                } else {
                    assert!(rows.is_empty(), "saw one key without the other");
                }
            }
            seen
        })
    };
    for i in 0u32..50 {
        let v = i.to_le_bytes().to_vec();
        store
            .commit(Txn::new().put("pair/1", v.clone()).put("pair/2", v))
            .unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 0);
}

#[test]
fn reopen_keeps_data_and_schema_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.path(), path);
    put(&store, "vol/a", b"kept");
    drop(store);
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.get("vol/a").unwrap(), Some(b"kept".to_vec()));
    drop(store);
    // Nothing but the store is left in the directory.
    let names: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ballast.redb"]);
    let db = Database::open(&path).unwrap();
    let read = db.begin_read().unwrap();
    let meta = read.open_table(META).unwrap();
    assert_eq!(
        meta.get(SCHEMA_KEY).unwrap().unwrap().value(),
        SCHEMA_VERSION
    );
}

#[test]
fn a_store_left_by_a_crash_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    let crashed = dir.path().join("crashed.redb");
    let store = RedbStore::open(&path).unwrap();
    for i in 0..20 {
        put(&store, &format!("vol/{i:02}"), b"committed");
    }
    // The file as a crash would leave it: open, recovery flag set.
    fs::copy(&path, &crashed).unwrap();
    drop(store);
    let store = RedbStore::open(&crashed).unwrap();
    assert_eq!(store.scan("vol/").unwrap().len(), 20);
    put(&store, "after", b"crash");
}

#[test]
fn a_second_open_of_the_same_file_is_refused() {
    let (_dir, path, _store) = new_store();
    match RedbStore::open(&path) {
        Err(StoreError::Io(msg)) => assert!(msg.contains("already open"), "{msg}"),
        other => panic!("expected Io, got {other:?}"),
    }
}

#[test]
fn newer_schema_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    closed_store_with_data(&path);
    {
        let db = Database::open(&path).unwrap();
        let write = db.begin_write().unwrap();
        write
            .open_table(META)
            .unwrap()
            .insert(SCHEMA_KEY, SCHEMA_VERSION + 1)
            .unwrap();
        write.commit().unwrap();
    }
    let before = fs::read(&path).unwrap();
    match RedbStore::open(&path) {
        Err(StoreError::NewerSchema {
            path: p,
            found,
            supported,
        }) => {
            assert_eq!(p, path.display().to_string());
            assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        other => panic!("expected NewerSchema, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn newer_schema_left_by_a_crash_is_not_recovered() {
    // A newer ballast crashed with the store open: redb would repair the
    // file on a writable open. This ballast must not.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    let crashed = dir.path().join("crashed.redb");
    closed_store_with_data(&path);
    let db = Database::open(&path).unwrap();
    let write = db.begin_write().unwrap();
    write
        .open_table(META)
        .unwrap()
        .insert(SCHEMA_KEY, 7)
        .unwrap();
    write.commit().unwrap();
    fs::copy(&path, &crashed).unwrap();
    drop(db);
    let before = fs::read(&crashed).unwrap();
    assert!(matches!(
        RedbStore::open(&crashed),
        Err(StoreError::NewerSchema { found: 7, .. })
    ));
    assert_eq!(fs::read(&crashed).unwrap(), before);
}

#[test]
fn garbage_files_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    for (i, bytes) in [
        noise(64 * 1024, 0x9E37_79B9_7F4A_7C15),
        noise(3, 42),
        b"not a database\n".to_vec(),
        vec![0; 1 << 20],
    ]
    .into_iter()
    .enumerate()
    {
        fs::write(&path, &bytes).unwrap();
        let detail = assert_refused_untouched(&path);
        assert!(detail.contains("not a redb database"), "case {i}: {detail}");
    }
}

#[test]
fn damaged_stores_are_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.redb");
    let bytes = closed_store_with_data(&good);
    let path = dir.path().join("ballast.redb");
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("truncated to half", bytes[..bytes.len() / 2].to_vec()),
        ("truncated to the header", bytes[..512].to_vec()),
        ("only the magic number", bytes[..9].to_vec()),
    ];
    let mut header_noise = bytes.clone();
    header_noise[9..512].copy_from_slice(&noise(503, 7));
    cases.push(("header after the magic number is noise", header_noise));
    let mut body_zeroed = bytes.clone();
    let len = body_zeroed.len();
    body_zeroed[4096..len].fill(0);
    cases.push(("everything after the first page zeroed", body_zeroed));
    for (what, case) in cases {
        fs::write(&path, &case).unwrap();
        let before = fs::read(&path).unwrap();
        match RedbStore::open(&path) {
            Err(StoreError::Corrupt { detail, .. }) => eprintln!("{what}: {detail}"),
            other => panic!("{what}: expected Corrupt, got {other:?}"),
        }
        assert_eq!(fs::read(&path).unwrap(), before, "{what}: file changed");
    }
}

#[test]
fn an_empty_file_is_refused_not_initialised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    fs::write(&path, b"").unwrap();
    let detail = assert_refused_untouched(&path);
    assert!(detail.contains("empty"), "{detail}");
}

#[test]
fn a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    match RedbStore::open(dir.path()) {
        Err(StoreError::Corrupt { detail, .. }) => assert!(detail.contains("regular file")),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_redb_file_that_is_not_ours_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    {
        let db = Database::create(&path).unwrap();
        let write = db.begin_write().unwrap();
        write
            .open_table(TableDefinition::<&str, &str>::new("other"))
            .unwrap()
            .insert("k", "v")
            .unwrap();
        write.commit().unwrap();
    }
    let detail = assert_refused_untouched(&path);
    assert!(detail.contains("not a ballast store"), "{detail}");

    // A meta table of another type: refused with the layout named.
    fs::remove_file(&path).unwrap();
    {
        let db = Database::create(&path).unwrap();
        let write = db.begin_write().unwrap();
        write
            .open_table(TableDefinition::<&str, &str>::new("meta"))
            .unwrap()
            .insert(SCHEMA_KEY, "1")
            .unwrap();
        write.commit().unwrap();
    }
    let detail = assert_refused_untouched(&path);
    assert!(detail.contains("table layout"), "{detail}");

    // Our meta table but no schema version.
    fs::remove_file(&path).unwrap();
    {
        let db = Database::create(&path).unwrap();
        let write = db.begin_write().unwrap();
        write.open_table(META).unwrap();
        write.commit().unwrap();
    }
    let detail = assert_refused_untouched(&path);
    assert!(detail.contains("no schema version"), "{detail}");
}

#[test]
fn concurrent_cas_increments_add_up() {
    const THREADS: u64 = 8;
    const EACH: u64 = 25;
    let (_dir, _path, store) = new_store();
    let store = Arc::new(store);
    let conflicts: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                let store = &store;
                s.spawn(move || {
                    let mut conflicts = 0;
                    let mut done = 0;
                    while done < EACH {
                        let current = store.get("counter").unwrap();
                        let n = current.as_deref().map_or(0, |b| {
                            u64::from_le_bytes(b.try_into().expect("8-byte counter"))
                        });
                        let txn = match current {
                            Some(bytes) => Txn::new().require_equals("counter", bytes),
                            None => Txn::new().require_absent("counter"),
                        }
                        .put("counter", (n + 1).to_le_bytes().to_vec());
                        match store.commit(txn) {
                            Ok(()) => done += 1,
                            Err(StoreError::Conflict { .. }) => conflicts += 1,
                            Err(e) => panic!("{e}"),
                        }
                    }
                    conflicts
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let total = u64::from_le_bytes(store.get("counter").unwrap().unwrap().try_into().unwrap());
    eprintln!("{total} increments, {conflicts} conflicts retried");
    assert_eq!(total, THREADS * EACH);
}

/// Not an assertion: prints what one durable commit costs on /var/tmp's
/// disk. Run with `cargo test -p ballast-store commit_latency -- --nocapture`.
#[test]
fn commit_latency() {
    let base = Path::new("/var/tmp");
    let dir = if base.is_dir() {
        tempfile::tempdir_in(base).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let path = dir.path().join("ballast.redb");
    let store = RedbStore::open(&path).unwrap();
    let value = vec![0x5A; 512];
    let mut times: Vec<Duration> = (0..200)
        .map(|i| {
            let started = Instant::now();
            store
                .commit(
                    Txn::new()
                        .require_absent(format!("vol/{i:04}"))
                        .put(format!("vol/{i:04}"), value.clone()),
                )
                .unwrap();
            started.elapsed()
        })
        .collect();
    times.sort();
    let mean = times.iter().sum::<Duration>() / 200;
    eprintln!(
        "commit latency on {}: mean {mean:?}, p50 {:?}, p99 {:?}, max {:?}",
        dir.path().display(),
        times[100],
        times[198],
        times[199]
    );
}

#[test]
fn redb_conforms_to_the_store_contract() {
    let (_dir, _path, store) = new_store();
    let store = Arc::new(store);
    let s = store.clone();
    let conflicts =
        ballast_core::store_conformance::run_all(store, "t/", &move |rev| s.hub.compact(rev));
    println!("redb: {conflicts} conflicts");
}

#[test]
fn revisions_survive_a_reopen_and_keep_rising() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    let store = RedbStore::open(&path).unwrap();
    let r1 = store.txn(Txn::new().put("vol/a", b"1".to_vec())).unwrap();
    drop(store);
    let store = RedbStore::open(&path).unwrap();
    let kv = store.get_kv("vol/a").unwrap().unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision), (r1, r1));
    let r2 = store.txn(Txn::new().put("vol/b", b"2".to_vec())).unwrap();
    assert!(r2 > r1, "a revision was reused after reopening");
}

#[test]
fn keys_of_leases_from_a_previous_run_are_deleted_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    let store = RedbStore::open(&path).unwrap();
    let lease = store.lease_grant(Duration::from_secs(600)).unwrap();
    store
        .commit(
            Txn::new()
                .put_with_lease("node/a", b"alive".to_vec(), lease)
                .put("vol/x", b"kept".to_vec()),
        )
        .unwrap();
    drop(store);
    let store = RedbStore::open(&path).unwrap();
    assert_eq!(store.get("node/a").unwrap(), None);
    assert_eq!(store.get("vol/x").unwrap().as_deref(), Some(&b"kept"[..]));
}

/// A file as ballast wrote it before revisions (schema 1: `kv` and `meta`
/// only) opens, and every record is there with revision 1.
#[test]
fn a_schema_1_file_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ballast.redb");
    {
        let db = Builder::new().create(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut meta = w.open_table(META).unwrap();
            meta.insert(SCHEMA_KEY, 1u64).unwrap();
            let mut data = w.open_table(DATA).unwrap();
            data.insert("vol/a", &b"{\"old\":1}"[..]).unwrap();
            data.insert("pool/default", &b"{}"[..]).unwrap();
        }
        w.commit().unwrap();
    }
    let store = RedbStore::open(&path).unwrap();
    let range = store.range("").unwrap();
    assert_eq!(range.kvs.len(), 2);
    assert!(range
        .kvs
        .iter()
        .all(|kv| kv.mod_revision == 1 && kv.create_revision == 1));
    assert_eq!(range.revision, 1);
    let r = store
        .txn(
            Txn::new()
                .require_revision("vol/a", 1)
                .put("vol/a", b"{}".to_vec()),
        )
        .expect("CAS on the migrated revision");
    assert_eq!(r, 2);
    drop(store);
    // The file now says schema 2 and reopens without migrating again.
    let db = Builder::new().open(&path).unwrap();
    assert_eq!(check_schema(&db, &path).unwrap(), SCHEMA_VERSION);
}
