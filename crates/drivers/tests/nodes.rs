//! Several nodes on one store, without root: each node is a `VolumeService`
//! with its own `FakeHost` (its own boot, loop devices and mounts) and its own
//! directories, and all of them share one `MemStore`, as daemons on several
//! machines share one etcd. What one node does must never be judged, undone
//! or overwritten by another.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ballast_core::error::Error;
use ballast_core::failpoint::Failpoints;
use ballast_core::host::Host;
use ballast_core::model::{ConsumerKind, ConsumerRef, DriverKind, FsType, Pool, Volume};
use ballast_core::service::{Intent, IntentOp};
use ballast_core::store::{MemStore, Store, StoreError, Txn};
use ballast_core::testing::FakeHost;
use ballast_core::{CreateVolume, ReconcileReport, ServiceConfig, ServiceParts, VolumeService};
use ballast_drivers::{DirDriver, LoopDriver};
use tempfile::TempDir;

const MIB: u64 = 1 << 20;

/// A machine: its host and its directories.
struct Node {
    id: &'static str,
    host: Arc<FakeHost>,
    dir: PathBuf,
}

struct Cluster {
    tmp: TempDir,
    store: Arc<MemStore>,
}

impl Cluster {
    fn new() -> Self {
        Self {
            tmp: tempfile::tempdir().unwrap(),
            store: Arc::new(MemStore::new()),
        }
    }

    fn node(&self, id: &'static str) -> Node {
        let host = Arc::new(FakeHost::new());
        host.set_boot_id(&format!("boot-of-{id}"));
        Node {
            id,
            host,
            dir: self.tmp.path().join(id),
        }
    }

    /// Open a service on `node`, as a daemon's start does before it serves:
    /// load and reconcile, nothing more.
    fn open(&self, node: &Node) -> (VolumeService, ReconcileReport) {
        let host: Arc<dyn Host> = node.host.clone();
        VolumeService::open(ServiceParts {
            store: self.store.clone(),
            host: host.clone(),
            drivers: vec![
                Arc::new(LoopDriver::new(host.clone())),
                Arc::new(DirDriver::new(host)),
            ],
            config: ServiceConfig {
                mounts_dir: node.dir.join("mounts"),
                pools_dir: node.dir.join("pools"),
                default_size: 64 * MIB,
                default_fs: FsType::Ext4,
                node_id: node.id.into(),
            },
            failpoints: Failpoints::none(),
        })
        .expect("open")
    }

    /// Start a daemon on `node`: open, make its default pool, follow the
    /// store.
    fn start(&self, node: &Node) -> Arc<VolumeService> {
        let (svc, _) = self.open(node);
        let svc = Arc::new(svc);
        let pool = svc.default_pool_name();
        svc.ensure_pool(Pool::new(
            &pool,
            DriverKind::Loop,
            node.dir.join("pools").join(&pool),
            1.0,
        ))
        .expect("default pool");
        svc.follow_store().unwrap();
        svc
    }
}

fn cli(id: &str) -> ConsumerRef {
    ConsumerRef::new(ConsumerKind::Cli, id)
}

fn create(svc: &VolumeService, name: &str) -> Volume {
    svc.create_volume(CreateVolume {
        name: name.into(),
        size_bytes: Some(32 * MIB),
        ..CreateVolume::default()
    })
    .unwrap()
}

/// Wait (bounded) until `svc` sees what `ok` asks for: other nodes' writes
/// arrive through the store's watch.
fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ok() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn each_node_has_its_default_pool_and_sees_the_others_volumes() {
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = c.start(&na);
    let b = c.start(&nb);
    assert_eq!(a.default_pool_name(), "default");
    assert_eq!(b.default_pool_name(), "default-node-b");
    assert_eq!(
        b.get_pool("default").unwrap().node.as_deref(),
        Some("node-a")
    );

    let va = create(&a, "va");
    assert_eq!(va.node.as_deref(), Some("node-a"));
    a.mount("va", cli("app")).unwrap();
    let vb = create(&b, "vb");
    assert_eq!(vb.pool, "default-node-b");
    assert_eq!(vb.node.as_deref(), Some("node-b"));

    // Each sees the other's volume, with its consumers on its node.
    eventually("b sees va mounted", || {
        b.get_volume("va")
            .is_ok_and(|v| v.consumers.contains_key(&cli("app").key()))
    });
    eventually("a sees vb", || a.get_volume("vb").is_ok());
    assert_eq!(b.list_volumes().len(), 2);

    // A node-side call for another node's volume names the node that has
    // it and changes nothing.
    for err in [
        b.mount("va", cli("x")).unwrap_err(),
        b.delete_volume("va", false).unwrap_err(),
        b.resize("va", 64 * MIB).unwrap_err(),
    ] {
        match err {
            Error::OtherNode { node, name, .. } => {
                assert_eq!((node.as_str(), name.as_str()), ("node-a", "va"))
            }
            e => panic!("expected OtherNode, got {e}"),
        }
    }
    // Names are cluster-wide: the same create again is the same volume
    // (idempotent, as on one node), never a second one on node-b, and one
    // for node-b's pool is refused.
    let again = create(&b, "va");
    assert_eq!(
        (again.id.as_str(), again.node.as_deref()),
        (va.id.as_str(), Some("node-a"))
    );
    let err = b
        .create_volume(CreateVolume {
            name: "va".into(),
            size_bytes: Some(32 * MIB),
            pool: Some("default-node-b".into()),
            ..CreateVolume::default()
        })
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert!(nb.host.loop_devices().unwrap().is_empty());
    assert_eq!(a.get_volume("va").unwrap(), b.get_volume("va").unwrap());
    // Deletes travel too.
    b.delete_volume("vb", false).unwrap();
    eventually("a sees vb gone", || a.get_volume("vb").is_err());
}

#[test]
fn a_node_with_another_boot_never_clears_a_mount_of_another_node() {
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = c.start(&na);
    create(&a, "data");
    let staged = a.mount("data", cli("app")).unwrap();
    assert!(staged.staging.is_some());

    // node-b starts (and restarts after a reboot of its own host): its
    // reconcile judges its own attachments only.
    let b = c.start(&nb);
    drop(b);
    nb.host.reboot("boot-of-node-b-2");
    let (b, report) = c.open(&nb);
    assert!(report.rebooted);
    assert!(report.lost_mounts.is_empty(), "{report:?}");
    // The store still has node-a's attachment, and node-b shows it.
    assert!(c.store.get("attachment/data/node-a").unwrap().is_some());
    let seen = b.get_volume("data").unwrap();
    assert_eq!(seen.staging, staged.staging);
    assert!(seen.consumers.contains_key(&cli("app").key()));
    // node-a's own reboot does clear it.
    drop(a);
    na.host.reboot("boot-of-node-a-2");
    let a = c.start(&na);
    let v = a.get_volume("data").unwrap();
    assert!(v.staging.is_none() && v.consumers.is_empty(), "{v:?}");
    assert!(c.store.get("attachment/data/node-a").unwrap().is_none());
}

#[test]
fn an_intent_is_finished_or_undone_only_by_its_owner() {
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = c.start(&na);
    let vol = create(&a, "half");
    drop(a);
    // What a crash of node-a in the middle of a delete leaves.
    let intent = Intent {
        op: IntentOp::Delete,
        before: vol.clone(),
        started: vol.created_at,
        owner: "node-a".into(),
    };
    c.store
        .commit(Txn::new().put("intent/half", serde_json::to_vec(&intent).unwrap()))
        .unwrap();

    let b = c.start(&nb);
    assert!(
        c.store.get("intent/half").unwrap().is_some(),
        "node-b took node-a's intent"
    );
    assert!(b.get_volume("half").is_ok());
    drop(b);
    // node-a finishes it when it comes back.
    let a = c.start(&na);
    assert!(c.store.get("intent/half").unwrap().is_none());
    assert!(a.get_volume("half").is_err());
}

#[test]
fn an_update_over_a_record_changed_elsewhere_conflicts_and_a_retry_works() {
    let c = Cluster::new();
    let na = c.node("node-a");
    let a = c.start(&na);
    create(&a, "v");
    // Someone else (an operator's tool, a controller) relabels the record
    // behind node-a's back.
    let mut changed: Volume =
        serde_json::from_slice(&c.store.get("vol/v").unwrap().unwrap()).unwrap();
    changed.labels.insert("team".into(), "db".into());
    c.store
        .commit(Txn::new().put("vol/v", serde_json::to_vec(&changed).unwrap()))
        .unwrap();

    // The stale copy is never written over it.
    let err = a.mount("v", cli("app")).unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    let stored: Volume = serde_json::from_slice(&c.store.get("vol/v").unwrap().unwrap()).unwrap();
    assert_eq!(stored.labels.get("team").map(String::as_str), Some("db"));
    assert!(
        na.host.mounts().unwrap().is_empty(),
        "the failed mount left a mount"
    );
    // The conflict re-read the record: a retry works on it and keeps it.
    let v = a.mount("v", cli("app")).unwrap();
    assert_eq!(v.labels.get("team").map(String::as_str), Some("db"));
    let stored: Volume = serde_json::from_slice(&c.store.get("vol/v").unwrap().unwrap()).unwrap();
    assert_eq!(stored.labels.get("team").map(String::as_str), Some("db"));
}

#[test]
fn events_of_every_node_are_kept_and_ordered_by_store_revision() {
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = c.start(&na);
    let b = c.start(&nb);
    for i in 0..3 {
        create(&a, &format!("a{i}"));
        create(&b, &format!("b{i}"));
    }
    let about = |svc: &VolumeService| -> Vec<(u64, String, String)> {
        svc.recent_events(100)
            .into_iter()
            .filter(|e| e.message.contains("created"))
            .map(|e| (e.seq, e.node, e.volume.unwrap_or_default()))
            .collect()
    };
    eventually("both nodes see all six creates", || {
        about(&a).len() == 6 && about(&b).len() == 6
    });
    let seen = about(&a);
    assert_eq!(seen, about(&b), "one order on every node");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
    for (_, node, vol) in &seen {
        assert_eq!(&vol[..1], if node == "node-a" { "a" } else { "b" });
    }
    // The store kept every event: no node overwrote another's.
    let stored = c.store.scan("event/").unwrap().len();
    assert_eq!(stored, a.recent_events(1000).len());
    // A restarted node goes on with its own counter and the same order.
    drop(b);
    let b = c.start(&nb);
    create(&b, "b3");
    let after = about(&b);
    assert_eq!(&after[..6], &seen[..]);
    assert_eq!(after.len(), 7);
    assert_eq!(c.store.scan("event/").unwrap().len(), stored + 1);
}

/// A store whose next transaction is applied but answered as if the store
/// had not answered in time: what a hung or cut-off etcd does to a write in
/// flight.
struct LateStore {
    inner: MemStore,
    lie: std::sync::atomic::AtomicBool,
}

impl Store for LateStore {
    fn get_kv(&self, key: &str) -> Result<Option<ballast_core::store::KeyValue>, StoreError> {
        self.inner.get_kv(key)
    }
    fn range(&self, prefix: &str) -> Result<ballast_core::store::Range, StoreError> {
        self.inner.range(prefix)
    }
    fn txn(&self, txn: Txn) -> Result<u64, StoreError> {
        let r = self.inner.txn(txn)?;
        if self.lie.swap(false, std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "etcd did not answer within 2s".into(),
            ));
        }
        Ok(r)
    }
    fn watch(
        &self,
        prefix: &str,
        after: u64,
    ) -> Result<Box<dyn ballast_core::store::Watch>, StoreError> {
        self.inner.watch(prefix, after)
    }
    fn lease_grant(&self, ttl: Duration) -> Result<ballast_core::store::LeaseId, StoreError> {
        self.inner.lease_grant(ttl)
    }
    fn lease_keepalive(&self, lease: ballast_core::store::LeaseId) -> Result<(), StoreError> {
        self.inner.lease_keepalive(lease)
    }
    fn lease_revoke(&self, lease: ballast_core::store::LeaseId) -> Result<(), StoreError> {
        self.inner.lease_revoke(lease)
    }
}

#[test]
fn a_write_that_timed_out_but_landed_is_settled_before_the_next_operation() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(LateStore {
        inner: MemStore::new(),
        lie: false.into(),
    });
    let host = Arc::new(FakeHost::new());
    let open = || {
        let h: Arc<dyn Host> = host.clone();
        let (svc, _) = VolumeService::open(ServiceParts {
            store: store.clone(),
            host: h.clone(),
            drivers: vec![Arc::new(LoopDriver::new(h))],
            config: ServiceConfig {
                mounts_dir: tmp.path().join("mounts"),
                pools_dir: tmp.path().join("pools"),
                default_size: 64 * MIB,
                default_fs: FsType::Ext4,
                node_id: "node-a".into(),
            },
            failpoints: Failpoints::none(),
        })
        .unwrap();
        svc
    };
    let svc = open();
    svc.ensure_pool(Pool::new(
        "default",
        DriverKind::Loop,
        tmp.path().join("pools/default"),
        1.0,
    ))
    .unwrap();
    // The create's intent lands, but the answer says unavailable.
    store.lie.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = create_err(&svc, "late");
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    assert!(
        store.get("intent/late").unwrap().is_some(),
        "the write landed"
    );
    // The next operation on the name settles it first (the create is
    // undone), then runs: one volume, no intent, no second image.
    let v = create(&svc, "late");
    assert!(store.get("intent/late").unwrap().is_none());
    assert_eq!(svc.get_volume("late").unwrap().id, v.id);
    let images: Vec<_> = std::fs::read_dir(tmp.path().join("pools/default"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".img"))
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    svc.mount("late", cli("app")).unwrap();

    // With the store watch running, a landed write is settled without any
    // further request: here an unmount whose intent landed.
    let svc = Arc::new(svc);
    svc.follow_store().unwrap();
    store.lie.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = svc.unmount("late", &cli("app")).unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)), "{err}");
    eventually("the unmount is finished by the watch", || {
        store.get("intent/late").unwrap().is_none()
            && svc.get_volume("late").is_ok_and(|v| v.staging.is_none())
    });
    assert!(host.mounts().unwrap().is_empty());
}

fn create_err(svc: &VolumeService, name: &str) -> Error {
    svc.create_volume(CreateVolume {
        name: name.into(),
        size_bytes: Some(32 * MIB),
        ..CreateVolume::default()
    })
    .unwrap_err()
}

/// What a single-node release left in its store: a pool and volumes without
/// a node, a volume's staging and consumers inline in its record, one boot
/// id for the whole store, events keyed by a counter.
fn single_node_store(c: &Cluster, na: &Node, mounted: bool) -> Volume {
    let a = c.start(na);
    create(&a, "old");
    let staged = if mounted {
        a.mount("old", cli("app")).unwrap()
    } else {
        a.get_volume("old").unwrap()
    };
    drop(a);
    let mut legacy = staged.clone();
    legacy.node = None;
    let mut pool: Pool =
        serde_json::from_slice(&c.store.get("pool/default").unwrap().unwrap()).unwrap();
    pool.node = None;
    let keys: Vec<String> = c
        .store
        .scan("")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("attachment/") || k.starts_with("nodeboot/"))
        .collect();
    let mut txn = Txn::new()
        .put("vol/old", serde_json::to_vec(&legacy).unwrap())
        .put("pool/default", serde_json::to_vec(&pool).unwrap())
        .put("meta/boot_id", b"boot-of-node-a".to_vec());
    for k in keys {
        txn = txn.delete(k);
    }
    c.store.commit(txn).unwrap();
    staged
}

#[test]
fn records_of_a_single_node_release_are_adopted_by_the_node_that_opens_them() {
    let c = Cluster::new();
    let na = c.node("node-a");
    let staged = single_node_store(&c, &na, true);
    let a = c.start(&na);
    // The record is this node's, its staging moved into this node's
    // attachment, and the mount is still known (same boot).
    let v = a.get_volume("old").unwrap();
    assert_eq!(v.node.as_deref(), Some("node-a"));
    assert_eq!(v.staging, staged.staging);
    assert!(v.consumers.contains_key(&cli("app").key()));
    let stored: Volume = serde_json::from_slice(&c.store.get("vol/old").unwrap().unwrap()).unwrap();
    assert!(
        stored.staging.is_none() && stored.consumers.is_empty(),
        "{stored:?}"
    );
    assert!(c.store.get("attachment/old/node-a").unwrap().is_some());
    let pool = a.get_pool("default").unwrap();
    assert_eq!(pool.node.as_deref(), Some("node-a"));
    assert!(c.store.get("meta/boot_id").unwrap().is_none());
    assert_eq!(
        c.store.get("nodeboot/node-a").unwrap().as_deref(),
        Some(&b"boot-of-node-a"[..])
    );
    a.unmount("old", &cli("app")).unwrap();
    a.delete_volume("old", false).unwrap();

    // After a reboot, the old store-wide boot id judges the inline staging.
    let c = Cluster::new();
    let na = c.node("node-a");
    single_node_store(&c, &na, true);
    na.host.reboot("boot-of-node-a-2");
    let a = c.start(&na);
    let v = a.get_volume("old").unwrap();
    assert!(v.staging.is_none() && v.consumers.is_empty(), "{v:?}");
    assert!(c.store.get("attachment/old/node-a").unwrap().is_none());
}

#[test]
fn a_watch_that_fell_behind_a_compaction_reloads_and_misses_nothing() {
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = c.start(&na);
    create(&a, "gone-later");
    create(&a, "stays");
    // node-b loads now, but its watch starts only after node-a changed
    // things and the store compacted what node-b would have needed.
    let (b, _) = c.open(&nb);
    assert!(b.get_volume("gone-later").is_ok());
    a.delete_volume("gone-later", false).unwrap();
    create(&a, "new");
    a.mount("stays", cli("app")).unwrap();
    let now = c.store.range("").unwrap().revision;
    c.store.compact(now);
    let b = Arc::new(b);
    b.follow_store().unwrap();
    eventually("node-b reloaded after the compaction", || {
        b.get_volume("new").is_ok()
            && b.get_volume("gone-later").is_err()
            && b.get_volume("stays")
                .is_ok_and(|v| v.consumers.contains_key(&cli("app").key()))
    });
    // And it follows live changes again from there.
    create(&a, "after");
    eventually("node-b sees later writes", || b.get_volume("after").is_ok());
}

#[test]
fn nodes_register_under_a_lease_and_a_dead_one_is_shown_unreachable() {
    use ballast_core::nodes::{NodeInfo, NodeState};
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = c.start(&na);
    let b = c.start(&nb);
    let ttl = Duration::from_millis(600);
    for (svc, zone) in [(&a, "z1"), (&b, "z2")] {
        svc.start_heartbeat(
            NodeInfo {
                version: "test".into(),
                labels: [("zone".to_string(), zone.to_string())].into(),
                ..NodeInfo::default()
            },
            ttl,
            Duration::from_millis(200),
        )
        .unwrap();
    }
    create(&b, "on-b");
    let states = |svc: &VolumeService| -> Vec<(String, NodeState)> {
        svc.list_nodes()
            .into_iter()
            .map(|n| (n.id, n.state))
            .collect()
    };
    let ready = vec![
        ("node-a".to_string(), NodeState::Ready),
        ("node-b".to_string(), NodeState::Ready),
    ];
    eventually("both nodes see both ready, and node-b's volume", || {
        states(&a) == ready && states(&b) == ready && a.get_volume("on-b").is_ok()
    });
    let seen = a.get_node("node-b").unwrap();
    let record = seen.record.expect("a live record");
    assert_eq!(record.labels.get("zone").map(String::as_str), Some("z2"));
    assert_eq!(record.boot_id, "boot-of-node-b");
    assert_eq!(record.pools.len(), 1);
    assert_eq!(record.pools[0].name, "default-node-b");
    assert!(record.pools[0].capacity.capacity_bytes > 0);
    assert_eq!(seen.volumes, 1);
    // node-b dies (no revoke): its lease lapses and node-a shows it
    // unreachable, with what still lives there.
    drop(b);
    eventually("node-b unreachable on node-a", || {
        a.get_node("node-b")
            .is_ok_and(|n| n.state == NodeState::Unreachable && n.record.is_none())
    });
    let gone = a.get_node("node-b").unwrap();
    assert_eq!(gone.pools, ["default-node-b"]);
    assert_eq!(gone.volumes, 1);
    assert!(matches!(a.get_node("node-c"), Err(Error::NotFound { .. })));
    // It comes back: ready again.
    let b = c.start(&nb);
    b.start_heartbeat(NodeInfo::default(), ttl, Duration::from_millis(200))
        .unwrap();
    eventually("node-b ready again", || {
        a.get_node("node-b")
            .is_ok_and(|n| n.state == NodeState::Ready)
    });
}

#[test]
fn a_cordoned_node_takes_no_new_volumes_and_keeps_what_it_has() {
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = c.start(&na);
    let b = c.start(&nb);
    create(&a, "kept");
    a.mount("kept", cli("app")).unwrap();
    // node-b cordons node-a; node-a sees it through the store.
    let view = b.set_cordon("node-a", true).unwrap();
    assert!(view.cordoned);
    eventually("node-a sees itself cordoned", || {
        a.get_node("node-a").is_ok_and(|n| n.cordoned)
    });
    let err = a
        .create_volume(CreateVolume {
            name: "new".into(),
            size_bytes: Some(32 * MIB),
            ..CreateVolume::default()
        })
        .unwrap_err();
    assert!(
        matches!(&err, Error::Busy { kind: "node", .. }) && err.to_string().contains("cordoned"),
        "{err}"
    );
    assert!(a.get_volume("new").is_err());
    // What lives there stays and works; the same create again is fine.
    assert_eq!(create(&a, "kept").name, "kept");
    a.unmount("kept", &cli("app")).unwrap();
    a.mount("kept", cli("app")).unwrap();
    // Other nodes still take volumes; uncordon and node-a does again.
    create(&b, "elsewhere");
    a.set_cordon("node-a", false).unwrap();
    assert!(!a.get_node("node-a").unwrap().cordoned);
    create(&a, "new");
    // A cordon survives the node's restart (it is not under its lease).
    // (node-b writes over what it has seen: the uncordon first.)
    eventually("node-b sees the uncordon", || {
        b.get_node("node-a").is_ok_and(|n| !n.cordoned)
    });
    b.set_cordon("node-a", true).unwrap();
    drop(a);
    let a = c.start(&na);
    assert!(a.get_node("node-a").unwrap().cordoned);
    assert!(matches!(
        a.set_cordon("no-such-node", true),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn offers_list_pools_on_ready_uncordoned_matching_nodes_that_can_back_the_shape() {
    use ballast_core::nodes::{parse_selector, NodeInfo, OfferQuery};
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = c.start(&na);
    let b = c.start(&nb);
    // A dir pool on node-b: no filesystem of its own, no block devices.
    b.ensure_pool(Pool::new(
        "b-dir",
        DriverKind::Dir,
        nb.dir.join("pools/b-dir"),
        1.0,
    ))
    .unwrap();
    for (svc, zone) in [(&a, "z1"), (&b, "z2")] {
        svc.start_heartbeat(
            NodeInfo {
                labels: [("zone".to_string(), zone.to_string())].into(),
                ..NodeInfo::default()
            },
            Duration::from_secs(5),
            Duration::from_millis(100),
        )
        .unwrap();
    }
    let q = |size: u64, fs: Option<FsType>, block: bool, sel: &str| OfferQuery {
        size_bytes: size,
        fs,
        block,
        selector: parse_selector(sel).unwrap(),
    };
    let places = |svc: &VolumeService, q: &OfferQuery| -> Vec<(String, String)> {
        let mut v: Vec<_> = svc
            .offers(q)
            .unwrap()
            .into_iter()
            .map(|o| (o.node, o.pool))
            .collect();
        v.sort();
        v
    };
    let all = vec![
        ("node-a".to_string(), "default".to_string()),
        ("node-b".to_string(), "b-dir".to_string()),
        ("node-b".to_string(), "default-node-b".to_string()),
    ];
    eventually("both nodes' pools offered on both", || {
        places(&a, &q(32 * MIB, None, false, "")) == all
            && places(&b, &q(32 * MIB, None, false, "")) == all
    });
    // A filesystem or a block device: loop pools only.
    let loops = vec![all[0].clone(), all[2].clone()];
    assert_eq!(
        places(&a, &q(512 * MIB, Some(FsType::Xfs), false, "")),
        loops
    );
    assert_eq!(places(&a, &q(32 * MIB, None, true, "")), loops);
    // The selector, a size no loop pool can back, a cordon.
    assert_eq!(
        places(&a, &q(32 * MIB, None, false, "zone=z1")),
        vec![all[0].clone()]
    );
    assert!(places(&a, &q(32 * MIB, None, false, "zone=z9")).is_empty());
    assert_eq!(
        places(&a, &q(1 << 60, None, false, "")),
        vec![all[1].clone()]
    );
    a.set_cordon("node-b", true).unwrap();
    assert_eq!(
        places(&a, &q(32 * MIB, None, false, "")),
        vec![all[0].clone()]
    );
    assert!(parse_selector("zone").is_err());
    assert!(parse_selector("zone=a,=b").is_err());
}

#[test]
fn one_controller_is_elected_and_another_node_takes_over_when_it_dies() {
    use ballast_core::nodes::NodeInfo;
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = c.start(&na);
    let b = c.start(&nb);
    let ttl = Duration::from_millis(600);
    for svc in [&a, &b] {
        svc.start_heartbeat(NodeInfo::default(), ttl, Duration::from_secs(5))
            .unwrap();
    }
    let controller = |svc: &VolumeService| svc.cluster_status().controller.map(|c| c.node);
    eventually("both agree on one controller and see both nodes", || {
        controller(&a).is_some()
            && controller(&a) == controller(&b)
            && a.cluster_status().ready == 2
    });
    let first = controller(&a).unwrap();
    assert_eq!(u8::from(a.is_controller()) + u8::from(b.is_controller()), 1);
    let status = a.cluster_status();
    assert_eq!((status.ready, status.unreachable), (2, 0));
    // The controller's node dies: the other takes over once its lease lapses.
    let (survivor, dead) = if first == "node-a" { (b, a) } else { (a, b) };
    drop(dead);
    eventually("the survivor is the controller", || {
        survivor.is_controller()
    });
    assert_ne!(controller(&survivor).unwrap(), first);
    eventually("the dead node is unreachable", || {
        survivor.cluster_status().unreachable == 1
    });
}

/// A daemon of a cluster: started, its pool's filesystem `room` bytes large
/// (FakeHost's statvfs), registered under a short lease and running its
/// agent (placement while it is the controller, work placed on it).
fn member(c: &Cluster, node: &Node, zone: &str, room: u64) -> Arc<VolumeService> {
    use ballast_core::host::FsStats;
    use ballast_core::nodes::NodeInfo;
    node.host.set_fs_stats(
        &node.dir.join("pools"),
        FsStats {
            total_bytes: room,
            free_bytes: room,
            avail_bytes: room,
            total_inodes: 1 << 20,
            free_inodes: 1 << 20,
        },
    );
    let svc = c.start(node);
    svc.start_heartbeat(
        NodeInfo {
            instance: format!("{}-{}", node.id, uuid_ish()),
            labels: [("zone".to_string(), zone.to_string())].into(),
            ..NodeInfo::default()
        },
        Duration::from_millis(900),
        Duration::from_millis(100),
    )
    .unwrap();
    svc.start_agent().unwrap();
    svc
}

fn uuid_ish() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn sized(name: &str, mib: u64) -> CreateVolume {
    CreateVolume {
        name: name.into(),
        size_bytes: Some(mib * MIB),
        ..CreateVolume::default()
    }
}

/// Wait until every member sees all of them ready and one controller;
/// returns the members that are not the controller.
fn settled(members: &[&Arc<VolumeService>]) -> Vec<Arc<VolumeService>> {
    eventually("all ready, one controller", || {
        members.iter().all(|m| {
            m.list_nodes().len() == members.len()
                && m.cluster_status().ready == members.len()
                && m.cluster_status().controller.is_some()
        })
    });
    members
        .iter()
        .filter(|m| !m.is_controller())
        .map(|m| Arc::clone(m))
        .collect()
}

#[test]
fn creates_from_any_node_are_placed_by_room_constraints_and_spread() {
    use ballast_core::desired::{ErrorClass, Placement};
    use ballast_core::nodes::parse_selector;
    use ballast_core::Wait;
    let c = Cluster::new();
    let (na, nb, nc) = (c.node("node-a"), c.node("node-b"), c.node("node-c"));
    let a = member(&c, &na, "z1", 1 << 30);
    let b = member(&c, &nb, "z2", 2 << 30);
    let cc = member(&c, &nc, "z2", 1536 * MIB);
    let others = settled(&[&a, &b, &cc]);
    let asker = &others[0];
    let place = |svc: &VolumeService, req: CreateVolume, p: Placement| {
        svc.create_volume_placed(req, p, Wait::Block)
    };
    // No constraint: the node with the most room, from a node that is not
    // the controller; every node lists it on that node.
    let v = place(asker, sized("roomy", 100), Placement::default()).unwrap();
    assert_eq!(v.node.as_deref(), Some("node-b"));
    for m in [&a, &b, &cc] {
        eventually("listed everywhere", || {
            m.get_volume("roomy")
                .is_ok_and(|v| v.node.as_deref() == Some("node-b"))
        });
    }
    // The same request again is the same volume.
    let again = place(&a, sized("roomy", 100), Placement::default()).unwrap();
    assert_eq!(again.id, v.id);
    // A node named; a selector.
    let on_c = place(asker, sized("on-c", 50), Placement::on("node-c")).unwrap();
    assert_eq!(on_c.node.as_deref(), Some("node-c"));
    let z1 = Placement {
        selector: parse_selector("zone=z1").unwrap(),
        ..Placement::default()
    };
    assert_eq!(
        place(asker, sized("in-z1", 50), z1)
            .unwrap()
            .node
            .as_deref(),
        Some("node-a")
    );
    // Errors that say why, and leave nothing.
    let err = place(asker, sized("x1", 50), Placement::on("node-q")).unwrap_err();
    assert!(matches!(err, Error::NotFound { kind: "node", .. }), "{err}");
    let nowhere = Placement {
        selector: parse_selector("zone=z9").unwrap(),
        ..Placement::default()
    };
    let err = place(asker, sized("x2", 50), nowhere).unwrap_err();
    assert!(
        err.to_string().contains("does not match the selector"),
        "{err}"
    );
    let err = place(asker, sized("x3", 1500), Placement::on("node-a")).unwrap_err();
    assert_eq!(ErrorClass::from(&err), ErrorClass::Capacity, "{err}");
    let err = place(asker, sized("x4", 3000), Placement::default()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no node can take") && text.contains("\"default\" cannot hold"),
        "{text}"
    );
    b.set_cordon("node-c", true).unwrap();
    eventually("cordon seen", || {
        asker.get_node("node-c").is_ok_and(|n| n.cordoned)
    });
    let err = place(asker, sized("x5", 50), Placement::on("node-c")).unwrap_err();
    assert!(err.to_string().contains("cordoned"), "{err}");
    for m in [&a, &b, &cc] {
        for x in ["x1", "x2", "x3", "x4", "x5"] {
            assert!(m.get_volume(x).is_err(), "{x} exists");
        }
    }
    b.set_cordon("node-c", false).unwrap();
    eventually("uncordon seen", || {
        [&a, &b, &cc]
            .iter()
            .all(|m| m.get_node("node-c").is_ok_and(|n| !n.cordoned))
    });
    // Spread over zones: z1 has one volume, z2 two; of four more spread,
    // the first goes to z1, then ties go by room (node-b, z2): 2 and 2.
    // Without the spread all four would go to node-b, the roomiest.
    let spread = Placement {
        spread: Some("zone".into()),
        ..Placement::default()
    };
    let mut zones = std::collections::BTreeMap::new();
    for i in 0..4 {
        let v = place(asker, sized(&format!("s{i}"), 10), spread.clone()).unwrap();
        let zone = if v.node.as_deref() == Some("node-a") {
            "z1"
        } else {
            "z2"
        };
        *zones.entry(zone).or_insert(0) += 1;
    }
    assert_eq!(zones.get("z1"), Some(&2), "{zones:?}");
    assert_eq!(zones.get("z2"), Some(&2), "{zones:?}");
    // Work on another node's volume from here: grown and deleted by its
    // agent.
    let grown = asker
        .resize_anywhere("on-c", 80 * MIB, Wait::Block)
        .unwrap();
    assert_eq!(grown.size_bytes, 80 * MIB);
    asker
        .delete_volume_anywhere("on-c", false, Wait::Block)
        .unwrap();
    for m in [&a, &b, &cc] {
        eventually("deleted everywhere", || m.get_volume("on-c").is_err());
    }
    assert!(cc.list_volumes().iter().all(|v| v.name != "on-c"));
}

#[test]
fn concurrent_creates_never_overfill_a_node() {
    use ballast_core::desired::Placement;
    use ballast_core::Wait;
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = member(&c, &na, "z1", 1 << 30);
    let b = member(&c, &nb, "z1", 1 << 30);
    let others = settled(&[&a, &b]);
    // 30 creates of 100 MiB, half from each node, at once: 10 fit in each
    // node's GiB, the rest are refused for want of room.
    let made: Vec<Result<Volume, Error>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..30)
            .map(|i| {
                let svc = if i % 2 == 0 { &a } else { &b };
                s.spawn(move || {
                    svc.create_volume_placed(
                        sized(&format!("c{i}"), 100),
                        Placement::default(),
                        Wait::Block,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut per_node = std::collections::BTreeMap::new();
    for r in &made {
        match r {
            Ok(v) => *per_node.entry(v.node.clone().unwrap()).or_insert(0) += 1,
            Err(e) => assert!(
                e.to_string().contains("cannot hold"),
                "refused for another reason than room: {e}"
            ),
        }
    }
    assert_eq!(
        per_node.values().sum::<usize>(),
        20,
        "{per_node:?} {made:?}"
    );
    for n in ["node-a", "node-b"] {
        assert_eq!(per_node.get(n), Some(&10), "{per_node:?}");
    }
    // Each pool's own accounting agrees: nothing beyond what it can hold.
    for svc in [&a, &b] {
        let pool = svc.get_pool(&svc.default_pool_name()).unwrap();
        let cap = svc.pool_capacity(&pool).unwrap();
        assert!(cap.provisioned_bytes <= cap.capacity_bytes, "{cap:?}");
    }
    assert!(!others.is_empty());
}

#[test]
fn work_for_a_node_that_is_down_waits_and_is_done_when_it_returns() {
    use ballast_core::Wait;
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = member(&c, &na, "z1", 1 << 30);
    let b = member(&c, &nb, "z1", 1 << 30);
    settled(&[&a, &b]);
    let v = b
        .create_volume_placed(
            sized("lives-on-b", 32),
            ballast_core::desired::Placement::on("node-b"),
            Wait::Block,
        )
        .unwrap();
    assert_eq!(v.node.as_deref(), Some("node-b"));
    eventually("a sees it", || a.get_volume("lives-on-b").is_ok());
    // node-b goes (its lease lapses); a delete from node-a is recorded and
    // answered at once as waiting.
    drop(b);
    eventually("node-b unreachable", || a.cluster_status().ready == 1);
    let err = a
        .delete_volume_anywhere("lives-on-b", false, Wait::Block)
        .unwrap_err();
    assert!(
        matches!(&err, Error::Unavailable(m) if m.contains("when it returns")),
        "{err}"
    );
    assert!(a.get_volume("lives-on-b").is_ok());
    // It returns and converges: the volume is gone, on both.
    let b = member(&c, &nb, "z1", 1 << 30);
    eventually("deleted on return", || {
        b.get_volume("lives-on-b").is_err() && a.get_volume("lives-on-b").is_err()
    });
    assert_eq!(nb.host.loop_count(), 0);
}

#[test]
fn a_create_placed_on_a_node_that_died_is_placed_again() {
    use ballast_core::desired::{want_key, Placement, Want, WantOp};
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = member(&c, &na, "z1", 1 << 30);
    let b = member(&c, &nb, "z1", 1 << 30);
    settled(&[&a, &b]);
    // A placement on node-x, which died before it started the work.
    let want = Want {
        id: "w1".into(),
        requester: "node-x".into(),
        requested_at: chrono::Utc::now(),
        op: WantOp::Create {
            req: Box::new(CreateVolume {
                pool: Some("default-node-x".into()),
                ..sized("stranded", 32)
            }),
            placement: Placement::default(),
            reserved_bytes: 32 * MIB,
        },
        node: Some("node-x".into()),
        failed: None,
    };
    c.store
        .commit(Txn::new().put(want_key("stranded"), serde_json::to_vec(&want).unwrap()))
        .unwrap();
    eventually("placed again and made on a live node", || {
        a.get_volume("stranded").is_ok_and(|v| {
            matches!(v.node.as_deref(), Some("node-a" | "node-b"))
                && v.state == ballast_core::model::VolumeState::Available
        })
    });
    eventually("the want is gone", || {
        c.store.get_kv(&want_key("stranded")).unwrap().is_none()
    });
}

#[test]
fn a_node_id_kept_alive_by_another_daemon_is_refused() {
    use ballast_core::nodes::NodeInfo;
    let c = Cluster::new();
    let na = c.node("node-a");
    let first = c.start(&na);
    let info = |instance: &str, previous: Option<&str>| NodeInfo {
        instance: instance.into(),
        previous_instance: previous.map(str::to_string),
        ..NodeInfo::default()
    };
    let ttl = Duration::from_millis(600);
    first
        .start_heartbeat(info("one", None), ttl, Duration::from_millis(100))
        .unwrap();
    // A second daemon with the same id (another state directory) waits out
    // one TTL, sees the record still kept alive, and refuses.
    let second = Arc::new(c.open(&c.node("node-a")).0);
    let err = second
        .start_heartbeat(info("two", None), ttl, Duration::from_millis(100))
        .unwrap_err();
    assert!(err.to_string().contains("live daemon"), "{err}");
    // The successor of the first daemon (its state directory names "one")
    // takes over at once.
    let successor = Arc::new(c.open(&na).0);
    successor
        .start_heartbeat(info("three", Some("one")), ttl, Duration::from_millis(100))
        .unwrap();
}

#[test]
fn many_creates_asked_through_the_controller_all_answer_with_their_volume() {
    use ballast_core::desired::Placement;
    use ballast_core::Wait;
    let c = Cluster::new();
    let (na, nb, nc) = (c.node("node-a"), c.node("node-b"), c.node("node-c"));
    let a = member(&c, &na, "z1", 1 << 40);
    let b = member(&c, &nb, "z1", 1 << 40);
    let cc = member(&c, &nc, "z1", 1 << 40);
    let others = settled(&[&a, &b, &cc]);
    std::thread::scope(|s| {
        for (k, svc) in others.iter().enumerate() {
            s.spawn(move || {
                let me = svc.node_id().to_string();
                for i in 0..150 {
                    let name = format!("m{k}-{i}");
                    let v = svc
                        .create_volume_placed(sized(&name, 16), Placement::on(&me), Wait::Block)
                        .unwrap_or_else(|e| panic!("{name}: {e}"));
                    assert_eq!(v.node.as_deref(), Some(me.as_str()));
                }
            });
        }
    });
}

#[test]
fn a_snapshot_is_deleted_only_on_its_pools_node() {
    use ballast_core::Wait;
    let c = Cluster::new();
    let (na, nb) = (c.node("node-a"), c.node("node-b"));
    let a = c.start(&na);
    let b = c.start(&nb);
    create(&a, "src");
    a.create_snapshot("src", "snap", Wait::Block).unwrap();
    eventually("node-b sees the snapshot made", || {
        b.get_snapshot("snap").is_ok_and(|s| s.ready)
    });
    let err = b.delete_snapshot("snap", Wait::Block).unwrap_err();
    assert!(
        matches!(&err, Error::OtherNode { node, .. } if node == "node-a"),
        "{err}"
    );
    assert!(b.get_snapshot("snap").is_ok());
    assert!(a.get_snapshot("snap").is_ok());
    a.delete_snapshot("snap", Wait::Block).unwrap();
    eventually("gone on node-b too", || b.get_snapshot("snap").is_err());
}
