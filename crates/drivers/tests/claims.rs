//! Unit tests of claims (`ballast_core::claims`) without root: the service
//! with the real loop driver on a temporary directory, `FakeHost` and
//! `MemStore`, as in `service.rs`. Ordinal allocation, reuse of volumes,
//! expiry, holders, rollback of a failed acquire and restarts.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ballast_core::claims::{AcquireClaim, Claim};
use ballast_core::error::Error;
use ballast_core::failpoint::Failpoints;
use ballast_core::host::Host;
use ballast_core::model::{DriverKind, FsType, Pool};
use ballast_core::store::{MemStore, Store};
use ballast_core::testing::FakeHost;
use ballast_core::{ServiceConfig, ServiceParts, VolumeService};
use ballast_drivers::{DirDriver, LoopDriver};
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

struct Env {
    tmp: TempDir,
    store: Arc<MemStore>,
    host: Arc<FakeHost>,
}

impl Env {
    fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().expect("tempdir"),
            store: Arc::new(MemStore::new()),
            host: Arc::new(FakeHost::new()),
        }
    }

    fn open(&self) -> VolumeService {
        let host: Arc<dyn Host> = self.host.clone();
        let (svc, _) = VolumeService::open(ServiceParts {
            store: self.store.clone(),
            host: host.clone(),
            drivers: vec![
                Arc::new(LoopDriver::new(host.clone())),
                Arc::new(DirDriver::new(host)),
            ],
            config: ServiceConfig {
                mounts_dir: self.tmp.path().join("mounts"),
                pools_dir: self.tmp.path().join("pools"),
                default_size: 64 * MIB,
                default_fs: FsType::Ext4,
                node_id: "node-a".into(),
            },
            failpoints: Failpoints::none(),
        })
        .expect("open the service");
        svc
    }

    fn start(&self) -> VolumeService {
        let svc = self.open();
        svc.ensure_pool(Pool::new("default", DriverKind::Loop, self.pool_dir(), 1.0))
            .expect("default pool");
        svc
    }

    fn pool_dir(&self) -> PathBuf {
        self.tmp.path().join("pools").join("default")
    }

    /// Every key and value in the store.
    fn dump(&self) -> Vec<(String, Vec<u8>)> {
        self.store.scan("").unwrap()
    }
}

fn req(group: &str, volumes: &[&str], holder: &str) -> AcquireClaim {
    AcquireClaim {
        group: group.into(),
        volumes: volumes.iter().map(|v| v.to_string()).collect(),
        holder: holder.into(),
        ..AcquireClaim::default()
    }
}

fn ordinals(svc: &VolumeService, group: &str) -> Vec<u64> {
    svc.list_claims(Some(group))
        .unwrap()
        .into_iter()
        .map(|c| c.claim.ordinal)
        .collect()
}

#[test]
fn lowest_free_ordinal_and_volumes_made_once_then_reused() {
    let env = Env::new();
    let svc = env.start();
    let mut r = req("es", &["config", "data"], "node-a");
    r.size_bytes = Some(32 * MIB);
    let c = svc.acquire_claim(r.clone()).unwrap();
    assert_eq!(c.ordinal, 1);
    assert_eq!(c.volumes, ["es-1-config", "es-1-data"]);
    assert_eq!(c.holder, "node-a");
    assert_eq!(c.expires_at, None);
    let data = svc.get_volume("es-1-data").unwrap();
    assert_eq!(data.size_bytes, 32 * MIB);
    assert_eq!(data.labels["ballast.claim.group"], "es");
    assert_eq!(data.labels["ballast.claim.ordinal"], "1");

    for want in 2..=4 {
        assert_eq!(svc.acquire_claim(r.clone()).unwrap().ordinal, want);
    }
    svc.release_claim("es", 2, "node-a").unwrap();
    assert_eq!(ordinals(&svc, "es"), [1, 3, 4]);

    // Ordinal 2 again: the same volumes (same IDs), although this acquire
    // asks for another size; the size applies only to volumes it creates.
    let before = svc.get_volume("es-2-data").unwrap();
    let mut other_size = req("es", &["config", "data"], "node-b");
    other_size.size_bytes = Some(128 * MIB);
    let again = svc.acquire_claim(other_size.clone()).unwrap();
    assert_eq!(again.ordinal, 2);
    assert_eq!(svc.get_volume("es-2-data").unwrap(), before);
    // A new ordinal with that request gets volumes of the new size.
    assert_eq!(svc.acquire_claim(other_size).unwrap().ordinal, 5);
    assert_eq!(svc.get_volume("es-5-data").unwrap().size_bytes, 128 * MIB);

    // Groups are independent; a group whose name extends another's is not
    // mistaken for it.
    assert_eq!(
        svc.acquire_claim(req("es-2", &["data"], "x"))
            .unwrap()
            .ordinal,
        1
    );
    assert_eq!(ordinals(&svc, "es"), [1, 2, 3, 4, 5]);
    assert_eq!(ordinals(&svc, "es-2"), [1]);
    assert_eq!(svc.list_claims(None).unwrap().len(), 6);
    // Releasing leaves the volumes.
    svc.release_claim("es", 5, "node-b").unwrap();
    assert!(svc.get_volume("es-5-data").is_ok());
}

#[test]
fn concurrent_acquires_never_share_an_ordinal() {
    let env = Env::new();
    let svc = Arc::new(env.start());
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let svc = svc.clone();
            std::thread::spawn(move || {
                svc.acquire_claim(req("kafka", &["data"], &format!("broker-{i}")))
                    .unwrap()
            })
        })
        .collect();
    let got: Vec<Claim> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let set: BTreeSet<u64> = got.iter().map(|c| c.ordinal).collect();
    assert_eq!(set, (1..=32).collect::<BTreeSet<u64>>());
    for c in &got {
        let stored = svc.list_claims(Some("kafka")).unwrap();
        let s = stored
            .iter()
            .find(|s| s.claim.ordinal == c.ordinal)
            .unwrap();
        assert_eq!(s.claim.holder, c.holder);
        assert!(svc.get_volume(&format!("kafka-{}-data", c.ordinal)).is_ok());
    }

    // Acquires and releases interleaved: the live ordinals stay unique.
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let svc = svc.clone();
            std::thread::spawn(move || {
                let holder = format!("churn-{i}");
                for _ in 0..25 {
                    let c = svc.acquire_claim(req("kafka", &["data"], &holder)).unwrap();
                    assert!(
                        c.ordinal <= 40,
                        "ordinal {} with at most 40 held",
                        c.ordinal
                    );
                    svc.release_claim("kafka", c.ordinal, &holder).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(ordinals(&svc, "kafka"), (1..=32).collect::<Vec<_>>());
}

#[test]
fn an_expired_claim_goes_to_the_next_acquire_and_renew_extends() {
    let env = Env::new();
    let svc = env.start();
    let mut short = req("es", &["data"], "node-a");
    short.ttl = Some(Duration::from_millis(1));
    let c = svc.acquire_claim(short).unwrap();
    assert_eq!(c.ordinal, 1);
    let exp = c.expires_at.expect("a ttl sets an expiry");
    assert!(exp > c.acquired_at);
    std::thread::sleep(Duration::from_millis(20));
    let listed = svc.list_claims(Some("es")).unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].expired, "listed as expired");

    let taken = svc.acquire_claim(req("es", &["data"], "node-b")).unwrap();
    assert_eq!(taken.ordinal, 1, "the expired ordinal is reused");
    assert_eq!(taken.holder, "node-b");
    // The old holder lost it: renew and release name the new holder.
    let err = svc.renew_claim("es", 1, "node-a", None).unwrap_err();
    assert!(
        matches!(err, Error::Busy { .. }) && err.to_string().contains("node-b"),
        "{err}"
    );

    // A long TTL holds the ordinal; renew pushes the expiry.
    let mut long = req("es", &["data"], "node-c");
    long.ttl = Some(Duration::from_secs(3600));
    let c2 = svc.acquire_claim(long).unwrap();
    assert_eq!(c2.ordinal, 2);
    std::thread::sleep(Duration::from_millis(5));
    let renewed = svc.renew_claim("es", 2, "node-c", None).unwrap();
    assert!(renewed.expires_at.unwrap() > c2.expires_at.unwrap());
    assert_eq!(
        svc.acquire_claim(req("es", &["data"], "node-d"))
            .unwrap()
            .ordinal,
        3
    );

    // Renew with a new TTL; a lapsed claim nobody took yet can be renewed.
    let renewed = svc
        .renew_claim("es", 2, "node-c", Some(Duration::from_millis(1)))
        .unwrap();
    assert_eq!(renewed.ttl_ms, Some(1));
    std::thread::sleep(Duration::from_millis(20));
    assert!(svc.list_claims(Some("es")).unwrap()[1].expired);
    let revived = svc
        .renew_claim("es", 2, "node-c", Some(Duration::from_secs(60)))
        .unwrap();
    assert!(!svc.list_claims(Some("es")).unwrap()[1].expired);
    assert_eq!(revived.acquired_at, c2.acquired_at);
    assert_eq!(
        svc.acquire_claim(req("es", &["data"], "node-e"))
            .unwrap()
            .ordinal,
        4
    );

    // Renewing a claim without a TTL changes nothing.
    let plain = svc.acquire_claim(req("plain", &["d"], "p")).unwrap();
    let before = env.dump();
    assert_eq!(svc.renew_claim("plain", 1, "p", None).unwrap(), plain);
    assert_eq!(env.dump(), before);
}

#[test]
fn holders_and_missing_claims_are_errors_that_change_nothing() {
    let env = Env::new();
    let svc = env.start();
    svc.acquire_claim(req("es", &["config", "data"], "node-a"))
        .unwrap();
    let before = env.dump();
    let vols = svc.list_volumes();

    for err in [
        svc.renew_claim("es", 1, "node-b", None).unwrap_err(),
        svc.release_claim("es", 1, "node-b").unwrap_err(),
    ] {
        assert!(matches!(err, Error::Busy { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("\"node-a\"") && msg.contains("\"node-b\""),
            "{msg}"
        );
    }
    for err in [
        svc.renew_claim("es", 2, "node-a", None).unwrap_err(),
        svc.release_claim("es", 2, "node-a").unwrap_err(),
        svc.release_claim("other", 1, "node-a").unwrap_err(),
    ] {
        assert!(matches!(err, Error::NotFound { .. }), "{err:?}");
    }

    let bad = |r: AcquireClaim| svc.acquire_claim(r).unwrap_err();
    let mut no_pool = req("es", &["data"], "x");
    no_pool.pool = Some("nosuch".into());
    let mut zero_ttl = req("es", &["data"], "x");
    zero_ttl.ttl = Some(Duration::ZERO);
    let mut huge = req("es", &["data"], "x");
    huge.size_bytes = Some(1 << 60);
    for (what, err) in [
        ("bad group", bad(req("-es", &["data"], "x"))),
        ("slash", bad(req("es/x", &["data"], "x"))),
        ("long group", bad(req(&"g".repeat(120), &["data"], "x"))),
        ("no volumes", bad(req("es", &[], "x"))),
        ("duplicates", bad(req("es", &["data", "data"], "x"))),
        ("dash", bad(req("es", &["my-data"], "x"))),
        ("empty holder", bad(req("es", &["data"], ""))),
        ("zero ttl", bad(zero_ttl)),
    ] {
        assert!(matches!(err, Error::InvalidArgument(_)), "{what}: {err:?}");
    }
    assert!(matches!(bad(no_pool), Error::NotFound { .. }));
    // Admission refuses the volume after the ordinal was taken: the claim is
    // given back.
    assert!(matches!(bad(huge), Error::Capacity { .. }));
    for err in [
        svc.renew_claim("es", 0, "node-a", None).unwrap_err(),
        svc.release_claim("e s", 1, "node-a").unwrap_err(),
        svc.renew_claim("es", 1, "node-a", Some(Duration::ZERO))
            .unwrap_err(),
    ] {
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    }
    assert_eq!(env.dump(), before, "the store is unchanged");
    assert_eq!(svc.list_volumes(), vols);
}

#[test]
fn a_failed_acquire_removes_the_volumes_it_made_and_its_claim() {
    let env = Env::new();
    let svc = env.start();
    svc.acquire_claim(req("es", &["data"], "a")).unwrap();
    let pool = svc.get_pool("default").unwrap();
    let avail = svc.pool_capacity(&pool).unwrap().available_bytes;
    // One volume of this size fits, two do not.
    let size = (avail / 2 + 64 * MIB) / 4096 * 4096;
    let before = env.dump();
    let images = std::fs::read_dir(env.pool_dir()).unwrap().count();
    let mut r = req("es", &["config", "data"], "b");
    r.size_bytes = Some(size);
    let err = svc.acquire_claim(r).unwrap_err();
    assert!(matches!(err, Error::Capacity { .. }), "{err:?}");
    assert_eq!(ordinals(&svc, "es"), [1]);
    assert!(svc.get_volume("es-2-config").is_err());
    assert_eq!(std::fs::read_dir(env.pool_dir()).unwrap().count(), images);
    // The store differs only in the event log (the create and delete of
    // the first volume).
    let no_events = |d: Vec<(String, Vec<u8>)>| {
        d.into_iter()
            .filter(|(k, _)| !k.starts_with("event/"))
            .collect::<Vec<_>>()
    };
    assert_eq!(no_events(env.dump()), no_events(before));
    assert_eq!(
        svc.acquire_claim(req("es", &["config", "data"], "c"))
            .unwrap()
            .ordinal,
        2
    );
}

#[test]
fn claims_survive_a_restart() {
    let env = Env::new();
    let svc = env.start();
    for h in ["a", "b", "c"] {
        svc.acquire_claim(req("es", &["data"], h)).unwrap();
    }
    svc.release_claim("es", 2, "b").unwrap();
    let listed = svc.list_claims(None).unwrap();
    drop(svc);
    let svc = env.open();
    assert_eq!(svc.list_claims(None).unwrap(), listed);
    assert_eq!(
        svc.acquire_claim(req("es", &["data"], "d"))
            .unwrap()
            .ordinal,
        2
    );
    svc.release_claim("es", 3, "c").unwrap();
    assert_eq!(ordinals(&svc, "es"), [1, 2]);
}

/// A claim whose acquire is still making volumes (`acquiring` set, as a
/// crash or a slow create leaves it) is held even past its expiry: no other
/// acquire takes it over, its holder cannot renew or release it yet, and
/// the next start takes the acquire back (its labelled volumes and record)
/// while other claims stay.
#[test]
fn a_claim_mid_acquire_is_held_and_taken_back_at_start() {
    use ballast_core::claims::{claim_key, LABEL_GROUP, LABEL_ORDINAL};
    use ballast_core::store::Txn;
    use ballast_core::CreateVolume;

    let env = Env::new();
    let svc = env.start();
    let now = chrono::Utc::now();
    let pending = Claim {
        group: "es".into(),
        ordinal: 1,
        holder: "node-a".into(),
        volumes: vec!["es-1-data".into(), "es-1-logs".into()],
        acquired_at: now,
        expires_at: Some(now - chrono::TimeDelta::seconds(10)),
        ttl_ms: Some(1000),
        acquiring: Some(vec!["es-1-data".into(), "es-1-logs".into()]),
    };
    env.store
        .commit(Txn::new().put(claim_key("es", 1), serde_json::to_vec(&pending).unwrap()))
        .unwrap();
    // The acquire had made one of its two volumes.
    svc.create_volume(CreateVolume {
        name: "es-1-data".into(),
        labels: [
            (LABEL_GROUP.to_string(), "es".to_string()),
            (LABEL_ORDINAL.to_string(), "1".to_string()),
        ]
        .into(),
        ..CreateVolume::default()
    })
    .unwrap();
    // A volume of the name list that predates the acquire (no labels of
    // the claim) is not the acquire's to take back.
    svc.create_volume(CreateVolume {
        name: "es-1-logs".into(),
        ..CreateVolume::default()
    })
    .unwrap();

    let listed = svc.list_claims(Some("es")).unwrap();
    assert!(!listed[0].expired, "mid-acquire is held, expiry or not");
    let next = svc.acquire_claim(req("es", &["data"], "node-b")).unwrap();
    assert_eq!(next.ordinal, 2, "the pending ordinal is not taken over");
    for err in [
        svc.renew_claim("es", 1, "node-a", None).unwrap_err(),
        svc.release_claim("es", 1, "node-a").unwrap_err(),
    ] {
        assert!(
            matches!(err, Error::Busy { .. }) && err.to_string().contains("still making"),
            "{err}"
        );
    }

    drop(svc);
    let svc = env.open();
    assert_eq!(ordinals(&svc, "es"), [2]);
    let names: BTreeSet<String> = svc.list_volumes().into_iter().map(|v| v.name).collect();
    assert_eq!(
        names,
        BTreeSet::from(["es-1-logs".to_string(), "es-2-data".to_string()])
    );
}
