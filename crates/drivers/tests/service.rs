//! Unit tests of `VolumeService` without root.
//!
//! The real loop and dir drivers keep their images and directories in a
//! temporary directory (images are real sparse files); `FakeHost` models loop
//! devices and mounts, and `MemStore` holds the records. Crashes are
//! simulated by writing the store and host state an interrupted operation
//! leaves behind (failpoints would SIGKILL the test process), then opening a
//! new service on the same store and host, as a restarted daemon would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballast_core::error::Error;
use ballast_core::failpoint::Failpoints;
use ballast_core::host::{Host, MountOptions};
use ballast_core::model::{
    Attachment, ConsumerKind, ConsumerRef, DriverKind, FsType, Pool, Volume, VolumeState,
};
use ballast_core::service::{Intent, IntentOp};
use ballast_core::store::{MemStore, Store, Txn};
use ballast_core::testing::FakeHost;
use ballast_core::{CreateVolume, ReconcileReport, ServiceConfig, ServiceParts, VolumeService};
use ballast_drivers::{dir, loopback, DirDriver, LoopDriver};
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// One host and one store that services are opened on, in a temporary
/// directory holding the pools and the mounts directory.
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

    fn root(&self) -> &Path {
        self.tmp.path()
    }

    fn mounts_dir(&self) -> PathBuf {
        self.root().join("mounts")
    }

    fn pool_dir(&self, pool: &str) -> PathBuf {
        self.root().join("pools").join(pool)
    }

    fn pool(&self, name: &str, driver: DriverKind) -> Pool {
        Pool::new(name, driver, self.pool_dir(name), 1.0)
    }

    /// Open a service on this store and host, as a daemon start does.
    fn open(&self) -> (VolumeService, ReconcileReport) {
        self.open_with(Failpoints::none())
    }

    fn open_with(&self, failpoints: Failpoints) -> (VolumeService, ReconcileReport) {
        let host: Arc<dyn Host> = self.host.clone();
        VolumeService::open(ServiceParts {
            store: self.store.clone(),
            host: host.clone(),
            drivers: vec![
                Arc::new(LoopDriver::new(host.clone())),
                Arc::new(DirDriver::new(host)),
            ],
            config: ServiceConfig {
                mounts_dir: self.mounts_dir(),
                pools_dir: self.root().join("pools"),
                default_size: 64 * MIB,
                default_fs: FsType::Ext4,
                node_id: "node-a".into(),
            },
            failpoints,
        })
        .expect("open the service")
    }

    /// The first start: open on an empty store and make the default loop pool.
    fn start(&self) -> VolumeService {
        let (svc, report) = self.open();
        assert_eq!(report, ReconcileReport::default());
        svc.ensure_pool(self.pool("default", DriverKind::Loop))
            .expect("default pool");
        svc
    }

    /// The loop image of a volume.
    fn image(&self, vol: &Volume) -> PathBuf {
        let pool = self.pool(&vol.pool, DriverKind::Loop);
        loopback::image_path(&pool, vol)
    }

    fn image_len(&self, vol: &Volume) -> u64 {
        std::fs::metadata(self.image(vol))
            .expect("image exists")
            .len()
    }

    /// How many times the host was asked to do `op`.
    fn calls(&self, op: &str) -> usize {
        let prefix = format!("{op} ");
        self.host
            .calls()
            .iter()
            .filter(|c| c.starts_with(&prefix))
            .count()
    }

    /// How many times a filesystem was grown, online or offline.
    fn fs_grows(&self) -> usize {
        self.calls("grow_fs") + self.calls("grow_fs_offline")
    }

    /// The volume as the store holds it for node-a: its record with the
    /// staging and consumers of node-a's attachment.
    fn stored(&self, name: &str) -> Option<Volume> {
        let mut vol: Volume = self
            .store
            .get(&format!("vol/{name}"))
            .unwrap()
            .map(|b| serde_json::from_slice(&b).expect("volume record parses"))?;
        assert!(
            vol.staging.is_none() && vol.consumers.is_empty(),
            "the volume record holds no node's staging: {vol:?}"
        );
        if let Some(b) = self
            .store
            .get(&format!("attachment/{name}/node-a"))
            .unwrap()
        {
            let a: Attachment = serde_json::from_slice(&b).expect("attachment parses");
            assert_eq!(a.volume_id, vol.id);
            assert_eq!(a.node, "node-a");
            assert!(
                a.staging.is_some() || !a.consumers.is_empty(),
                "an empty attachment is deleted, not kept: {a:?}"
            );
            vol.staging = a.staging;
            vol.consumers = a.consumers;
        }
        Some(vol)
    }

    fn store_keys(&self, prefix: &str) -> Vec<String> {
        self.store
            .scan(prefix)
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// No unfinished operation, in the store or as the service sees it.
    fn assert_no_intents(&self, svc: &VolumeService) {
        assert_eq!(self.store_keys("intent/"), Vec::<String>::new());
        assert!(svc.intents().unwrap().is_empty());
    }

    /// The service's in-memory records are exactly the store's.
    fn assert_store_agrees(&self, svc: &VolumeService) {
        let listed = svc.list_volumes();
        let keys = self.store_keys("vol/");
        assert_eq!(keys.len(), listed.len(), "store has {keys:?}");
        for v in listed {
            assert_eq!(
                self.stored(&v.name).as_ref(),
                Some(&v),
                "record of {}",
                v.name
            );
        }
    }

    /// Write what an operation journals before its first side effect: the
    /// record as it left it and the intent, under the service's keys.
    fn crash_with(&self, record: &Volume, op: IntentOp, before: &Volume) {
        let intent = Intent {
            op,
            before: before.clone(),
            started: record.created_at,
            owner: "node-a".into(),
        };
        let mut bare = record.clone();
        bare.staging = None;
        bare.consumers.clear();
        let attachment_key = format!("attachment/{}/node-a", record.name);
        let mut txn = Txn::new()
            .put(
                format!("vol/{}", record.name),
                serde_json::to_vec(&bare).unwrap(),
            )
            .put(
                format!("intent/{}", record.name),
                serde_json::to_vec(&intent).unwrap(),
            );
        txn = if record.staging.is_some() || !record.consumers.is_empty() {
            let a = Attachment {
                volume_id: record.id.clone(),
                node: "node-a".into(),
                boot_id: self.host.boot_id().unwrap_or_default(),
                staging: record.staging.clone(),
                consumers: record.consumers.clone(),
            };
            txn.put(attachment_key, serde_json::to_vec(&a).unwrap())
        } else {
            txn.delete(attachment_key)
        };
        self.store.commit(txn).unwrap();
    }

    /// Attach a loop device to `image` on the fake host.
    fn attach(&self, image: &Path) -> PathBuf {
        self.host.loop_attach(image).unwrap().path
    }

    /// Mount `device` at `target` on the fake host, making the directory.
    fn mount_at(&self, device: &Path, target: &Path) {
        std::fs::create_dir_all(target).unwrap();
        self.host
            .mount(device, target, FsType::Ext4, MountOptions::default())
            .unwrap();
    }

    fn loop_devices(&self) -> Vec<(PathBuf, PathBuf)> {
        self.host
            .loop_devices()
            .unwrap()
            .into_iter()
            .map(|l| (l.device, l.backing_file))
            .collect()
    }

    fn mount_targets(&self) -> Vec<PathBuf> {
        self.host
            .mounts()
            .unwrap()
            .into_iter()
            .map(|m| m.target)
            .collect()
    }

    /// Files and directories in a pool's directory.
    fn pool_entries(&self, pool: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.pool_dir(pool))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

fn req(name: &str, size: u64) -> CreateVolume {
    CreateVolume {
        name: name.to_string(),
        size_bytes: Some(size),
        ..CreateVolume::default()
    }
}

fn cli(id: &str) -> ConsumerRef {
    ConsumerRef::new(ConsumerKind::Cli, id)
}

fn docker(id: &str) -> ConsumerRef {
    ConsumerRef::new(ConsumerKind::Docker, id)
}

fn consumer_count(vol: &Volume, c: &ConsumerRef) -> Option<u32> {
    vol.consumers.get(&c.key()).map(|c| c.count)
}

fn report(f: impl FnOnce(&mut ReconcileReport)) -> ReconcileReport {
    let mut r = ReconcileReport::default();
    f(&mut r);
    r
}

// ----- 1. lifecycle ------------------------------------------------------

#[test]
fn lifecycle_create_mount_unmount_remount_delete() {
    let env = Env::new();
    let svc = env.start();

    let vol = svc.create_volume(req("data", 64 * MIB)).unwrap();
    assert_eq!(vol.state, VolumeState::Available);
    assert_eq!(vol.fs, Some(FsType::Ext4));
    assert_eq!(vol.driver, DriverKind::Loop);
    assert!(!vol.formatted);
    assert!(vol.staging.is_none());
    let image = env.image(&vol);
    assert_eq!(env.image_len(&vol), 64 * MIB);
    assert_eq!(env.host.loop_count(), 0);
    env.assert_no_intents(&svc);
    env.assert_store_agrees(&svc);

    let mounted = svc.mount("data", cli("c1")).unwrap();
    let mountpoint = svc.mountpoint_for("data");
    assert_eq!(mountpoint, env.mounts_dir().join("data"));
    assert_eq!(env.host.loop_count(), 1);
    assert_eq!(env.host.mount_count(), 1);
    assert_eq!(mounted.state, VolumeState::Mounted);
    assert!(mounted.formatted);
    assert_eq!(env.calls("mkfs"), 1);
    assert!(env.host.is_formatted(&image));
    let staging = mounted.staging.clone().expect("staged");
    assert_eq!(staging.mountpoint, mountpoint);
    let (device, backing) = env.loop_devices().remove(0);
    assert_eq!(backing, image);
    assert_eq!(staging.device.as_deref(), Some(device.as_path()));
    let m = env.host.mounts().unwrap().remove(0);
    assert_eq!(m.target, mountpoint);
    assert_eq!(m.source, device.display().to_string());
    assert!(mountpoint.is_dir());
    assert_eq!(consumer_count(&mounted, &cli("c1")), Some(1));
    assert_eq!(svc.get_volume("data").unwrap(), mounted);
    env.assert_no_intents(&svc);
    env.assert_store_agrees(&svc);

    let released = svc.unmount("data", &cli("c1")).unwrap();
    assert_eq!(env.host.loop_count(), 0);
    assert_eq!(env.host.mount_count(), 0);
    assert_eq!(released.state, VolumeState::Available);
    assert!(released.staging.is_none());
    assert!(released.consumers.is_empty());
    assert!(released.formatted, "formatted survives an unmount");
    assert!(!mountpoint.exists(), "mountpoint directory removed");
    env.assert_no_intents(&svc);
    env.assert_store_agrees(&svc);

    let again = svc.mount("data", cli("c1")).unwrap();
    assert_eq!(again.state, VolumeState::Mounted);
    assert_eq!(
        env.calls("mkfs"),
        1,
        "a formatted volume is not formatted again"
    );
    assert_eq!(env.host.mount_count(), 1);
    svc.unmount("data", &cli("c1")).unwrap();
    assert_eq!(env.host.loop_count(), 0);
    assert_eq!(env.host.mount_count(), 0);

    svc.delete_volume("data", false).unwrap();
    assert!(!image.exists(), "image removed");
    assert!(matches!(
        svc.get_volume("data"),
        Err(Error::NotFound { .. })
    ));
    assert!(env.stored("data").is_none());
    assert!(svc.list_volumes().is_empty());
    assert!(env.pool_entries("default").is_empty());
    env.assert_no_intents(&svc);

    // Operations on a deleted volume say so.
    assert!(matches!(
        svc.mount("data", cli("c1")),
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        svc.delete_volume("data", false),
        Err(Error::NotFound { .. })
    ));
}

// ----- 2. idempotent create ----------------------------------------------

#[test]
fn create_is_idempotent_and_refuses_different_parameters() {
    let env = Env::new();
    let svc = env.start();
    svc.ensure_pool(env.pool("other", DriverKind::Loop))
        .unwrap();
    let labels: BTreeMap<String, String> = [("app".to_string(), "db".to_string())].into();
    let full = CreateVolume {
        name: "v".into(),
        size_bytes: Some(64 * MIB),
        fs: Some(FsType::Ext4),
        pool: Some("default".into()),
        labels: labels.clone(),
        block: false,
        source: None,
        autogrow: None,
    };
    let first = svc.create_volume(full.clone()).unwrap();
    assert_eq!(first.labels, labels);

    let same = svc.create_volume(full.clone()).unwrap();
    assert_eq!(same.id, first.id);
    assert_eq!(same, first);

    // Unspecified parameters match anything.
    let bare = svc
        .create_volume(CreateVolume {
            name: "v".into(),
            ..CreateVolume::default()
        })
        .unwrap();
    assert_eq!(bare.id, first.id);
    // A size that rounds up to the same 4 KiB multiple is the same size.
    let rounded = svc.create_volume(req("v", 64 * MIB - 100)).unwrap();
    assert_eq!(rounded.id, first.id);

    let differing = [
        CreateVolume {
            size_bytes: Some(128 * MIB),
            ..full.clone()
        },
        CreateVolume {
            fs: Some(FsType::Xfs),
            ..full.clone()
        },
        CreateVolume {
            pool: Some("other".into()),
            ..full.clone()
        },
        CreateVolume {
            labels: [("app".to_string(), "web".to_string())].into(),
            ..full.clone()
        },
        // A size that does not fit in u64 once rounded is simply different.
        CreateVolume {
            size_bytes: Some(u64::MAX),
            ..full.clone()
        },
    ];
    for r in differing {
        let err = svc.create_volume(r.clone()).unwrap_err();
        assert!(
            matches!(err, Error::AlreadyExists { ref name, .. } if name == "v"),
            "{r:?}: {err}"
        );
    }

    assert_eq!(svc.get_volume("v").unwrap(), first);
    assert_eq!(svc.volume_count(), 1);
    assert_eq!(
        env.pool_entries("default"),
        vec![format!("{}.img", first.id)]
    );
    assert!(env.pool_entries("other").is_empty());
    env.assert_no_intents(&svc);
    env.assert_store_agrees(&svc);
}

// ----- 3. consumers ------------------------------------------------------

#[test]
fn docker_consumers_are_counted_per_id() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    let a = docker("ctr-a");

    svc.mount("v", a.clone()).unwrap();
    let twice = svc.mount("v", a.clone()).unwrap();
    assert_eq!(consumer_count(&twice, &a), Some(2));
    assert_eq!(twice.consumers.len(), 1);
    assert_eq!(env.host.mount_count(), 1);
    assert_eq!(env.calls("loop_attach"), 1);

    let once = svc.unmount("v", &a).unwrap();
    assert_eq!(once.state, VolumeState::Mounted);
    assert_eq!(consumer_count(&once, &a), Some(1));
    assert_eq!(env.host.mount_count(), 1);
    assert_eq!(env.host.loop_count(), 1);
    assert_eq!(env.calls("unmount"), 0);
    env.assert_store_agrees(&svc);

    let gone = svc.unmount("v", &a).unwrap();
    assert_eq!(gone.state, VolumeState::Available);
    assert!(gone.consumers.is_empty());
    assert_eq!(env.host.mount_count(), 0);
    assert_eq!(env.host.loop_count(), 0);
    env.assert_no_intents(&svc);
    env.assert_store_agrees(&svc);
}

#[test]
fn anonymous_docker_and_cli_consumers_are_set_like() {
    for consumer in [docker(""), cli("c1"), cli("")] {
        let env = Env::new();
        let svc = env.start();
        svc.create_volume(req("v", 64 * MIB)).unwrap();
        svc.mount("v", consumer.clone()).unwrap();
        let twice = svc.mount("v", consumer.clone()).unwrap();
        assert_eq!(consumer_count(&twice, &consumer), Some(1), "{consumer:?}");
        let released = svc.unmount("v", &consumer).unwrap();
        assert_eq!(released.state, VolumeState::Available, "{consumer:?}");
        assert!(released.consumers.is_empty());
        assert_eq!(env.host.mount_count(), 0);
        assert_eq!(env.host.loop_count(), 0);
        env.assert_no_intents(&svc);
    }
}

#[test]
fn unmount_of_an_unknown_consumer_changes_nothing() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();

    // Not mounted at all.
    let before = svc.get_volume("v").unwrap();
    assert_eq!(svc.unmount("v", &cli("nobody")).unwrap(), before);
    assert!(env.host.calls().is_empty());

    // Mounted for someone else.
    svc.mount("v", docker("a")).unwrap();
    let before = svc.get_volume("v").unwrap();
    let calls = env.host.calls().len();
    for stranger in [docker("b"), docker(""), cli("a"), cli("")] {
        assert_eq!(svc.unmount("v", &stranger).unwrap(), before, "{stranger:?}");
    }
    assert_eq!(svc.get_volume("v").unwrap(), before);
    assert_eq!(env.stored("v").as_ref(), Some(&before));
    assert_eq!(env.host.calls().len(), calls, "no host calls");
    assert_eq!(env.host.mount_count(), 1);
    env.assert_no_intents(&svc);
}

#[test]
fn different_consumers_share_one_staging() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    let first = svc.mount("v", docker("a")).unwrap();
    let second = svc.mount("v", docker("b")).unwrap();
    let third = svc.mount("v", cli("me")).unwrap();
    assert_eq!(env.calls("loop_attach"), 1);
    assert_eq!(env.calls("mount"), 1);
    assert_eq!(env.host.loop_count(), 1);
    assert_eq!(env.host.mount_count(), 1);
    assert_eq!(first.staging, second.staging);
    assert_eq!(second.staging, third.staging);
    assert_eq!(third.consumers.len(), 3);

    svc.unmount("v", &docker("a")).unwrap();
    svc.unmount("v", &cli("me")).unwrap();
    let last = svc.get_volume("v").unwrap();
    assert_eq!(last.state, VolumeState::Mounted);
    assert_eq!(env.host.mount_count(), 1);
    let done = svc.unmount("v", &docker("b")).unwrap();
    assert_eq!(done.state, VolumeState::Available);
    assert_eq!(env.calls("unmount"), 1, "one unmount, by the last consumer");
    assert_eq!(env.host.mount_count(), 0);
    assert_eq!(env.host.loop_count(), 0);
    env.assert_no_intents(&svc);
}

/// A publish whose target is already a mount (a retry after a crash, or
/// after a bind whose flags could not be set nor the bind undone) applies
/// the flags to it rather than stacking a second bind.
#[test]
fn a_publish_onto_an_existing_bind_sets_its_flags() {
    use ballast_core::model::{MountFlags, PublishTarget};
    use ballast_core::Wait;

    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    let staged = svc.mount("v", cli("me")).unwrap();
    let target = env.root().join("target");
    std::fs::create_dir(&target).unwrap();
    env.host
        .bind_mount(
            &staged.staging.unwrap().mountpoint,
            &target,
            MountOptions::default(),
        )
        .unwrap();
    let flags = MountFlags::parse(&["noexec"]).unwrap().0;
    let t = PublishTarget {
        path: target.clone(),
        read_only: false,
        flags,
    };
    let consumer = ConsumerRef::new(ConsumerKind::Csi, target.display().to_string());
    let v = svc
        .publish("v", consumer, Some(t.clone()), Wait::Block)
        .unwrap();
    assert_eq!(env.calls("bind_mount"), 1, "no second bind");
    assert_eq!(env.calls("set_bind_flags"), 1);
    assert_eq!(env.host.bind_options(&target).unwrap().flags, flags);
    assert!(v.consumers.values().any(|c| c.flags == flags));
    env.assert_no_intents(&svc);

    // Something else mounted at a target: refused, and left as it was.
    let foreign = env.root().join("foreign");
    std::fs::create_dir(&foreign).unwrap();
    env.host
        .bind_mount(Path::new("/elsewhere"), &foreign, MountOptions::default())
        .unwrap();
    let before = svc.get_volume("v").unwrap();
    let consumer = ConsumerRef::new(ConsumerKind::Csi, foreign.display().to_string());
    let t = PublishTarget {
        path: foreign.clone(),
        ..t
    };
    let err = svc
        .publish("v", consumer, Some(t), Wait::Block)
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(
        env.host.bind_options(&foreign),
        Some(MountOptions::default())
    );
    assert_eq!(env.calls("unmount"), 0, "nothing unmounted");
    assert_eq!(svc.get_volume("v").unwrap(), before);
    env.assert_no_intents(&svc);
}

// ----- 4. delete of a mounted volume -------------------------------------

#[test]
fn delete_of_a_mounted_volume_needs_force() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    svc.mount("v", docker("a")).unwrap();
    let mounted = svc.mount("v", docker("b")).unwrap();
    let image = env.image(&mounted);
    let calls = env.host.calls().len();

    let err = svc.delete_volume("v", false).unwrap_err();
    assert!(matches!(err, Error::InUse { consumers: 2, .. }), "{err}");
    assert_eq!(svc.get_volume("v").unwrap(), mounted);
    assert_eq!(env.stored("v").as_ref(), Some(&mounted));
    assert_eq!(env.host.calls().len(), calls, "no host calls");
    assert_eq!(env.host.mount_count(), 1);
    assert!(image.exists());
    env.assert_no_intents(&svc);

    svc.delete_volume("v", true).unwrap();
    assert_eq!(env.host.mount_count(), 0);
    assert_eq!(env.host.loop_count(), 0);
    assert!(!image.exists());
    assert!(!svc.mountpoint_for("v").exists());
    assert!(env.stored("v").is_none());
    assert!(svc.list_volumes().is_empty());
    env.assert_no_intents(&svc);
}

// ----- 5. capacity -------------------------------------------------------

#[test]
fn create_beyond_capacity_is_refused_and_leaves_nothing() {
    // FakeHost reports 50 GiB available on every filesystem.
    let env = Env::new();
    let svc = env.start();

    let err = svc.create_volume(req("big", 64 * GIB)).unwrap_err();
    match err {
        Error::Capacity {
            ref pool,
            requested,
            available,
        } => {
            assert_eq!(pool, "default");
            assert_eq!(requested, 64 * GIB);
            assert!((50 * GIB..51 * GIB).contains(&available), "{available}");
        }
        ref other => panic!("expected capacity, got {other}"),
    }
    assert!(env.stored("big").is_none());
    assert!(env.store_keys("vol/").is_empty());
    assert!(env.pool_entries("default").is_empty(), "no image left");
    env.assert_no_intents(&svc);

    // Overcommit lets the pool promise more than it holds.
    svc.set_overcommit("default", 2.0).unwrap();
    assert_eq!(svc.get_pool("default").unwrap().overcommit_ratio, 2.0);
    let big = svc.create_volume(req("big", 64 * GIB)).unwrap();
    assert_eq!(env.image_len(&big), 64 * GIB);

    // Provisioned sizes count, not the (sparse) bytes used.
    let cap = svc
        .pool_capacity(&svc.get_pool("default").unwrap())
        .unwrap();
    assert_eq!(cap.provisioned_bytes, 64 * GIB);
    assert!(matches!(
        svc.create_volume(req("more", 40 * GIB)),
        Err(Error::Capacity { .. })
    ));
    svc.create_volume(req("more", 30 * GIB)).unwrap();

    // Growing is admitted the same way, and a refusal changes nothing.
    let before = svc.get_volume("more").unwrap();
    assert!(matches!(
        svc.resize("more", 40 * GIB),
        Err(Error::Capacity { .. })
    ));
    assert_eq!(svc.get_volume("more").unwrap(), before);
    assert_eq!(env.image_len(&before), 30 * GIB);

    // Back at 1.0 the pool is full.
    svc.set_overcommit("default", 1.0).unwrap();
    assert!(matches!(
        svc.create_volume(req("small", 64 * MIB)),
        Err(Error::Capacity { .. })
    ));
    assert!(env.stored("small").is_none());
    assert_eq!(env.pool_entries("default").len(), 2);
    env.assert_no_intents(&svc);
    env.assert_store_agrees(&svc);

    // The ratio is persisted.
    drop(svc);
    let (svc, _) = env.open();
    assert_eq!(svc.get_pool("default").unwrap().overcommit_ratio, 1.0);
    assert!(matches!(
        svc.set_overcommit("default", 0.0),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        svc.set_overcommit("default", f64::NAN),
        Err(Error::InvalidArgument(_))
    ));
}

// ----- 6. validation -----------------------------------------------------

#[test]
fn bad_names_are_refused_and_leave_nothing() {
    let env = Env::new();
    let svc = env.start();
    let long = "a".repeat(129);
    let bad = [
        "../x",
        "a/b",
        "",
        long.as_str(),
        "-x",
        "a\0b",
        "a\tb",
        "..",
        ".",
    ];
    for name in bad {
        let err = svc.create_volume(req(name, 64 * MIB)).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{name:?}: {err}");
        for err in [
            svc.mount(name, cli("c")).unwrap_err(),
            svc.unmount(name, &cli("c")).unwrap_err(),
            svc.resize(name, 128 * MIB).unwrap_err(),
            svc.delete_volume(name, true).unwrap_err(),
        ] {
            assert!(matches!(err, Error::InvalidArgument(_)), "{name:?}: {err}");
        }
    }
    // 128 characters is the limit, not beyond it.
    svc.create_volume(req(&"a".repeat(128), 64 * MIB)).unwrap();
    assert_eq!(env.store_keys("vol/").len(), 1);
    assert_eq!(env.pool_entries("default").len(), 1);
    assert!(!env.root().join("x").exists());
    env.assert_no_intents(&svc);

    // Bad consumer IDs and labels too.
    svc.create_volume(req("ok", 64 * MIB)).unwrap();
    assert!(matches!(
        svc.mount("ok", cli("a\nb")),
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        svc.mount("ok", docker(&"x".repeat(257))),
        Err(Error::InvalidArgument(_))
    ));
    assert_eq!(svc.get_volume("ok").unwrap().state, VolumeState::Available);
    let labelled = CreateVolume {
        labels: [("".to_string(), "v".to_string())].into(),
        ..req("labelled", 64 * MIB)
    };
    assert!(matches!(
        svc.create_volume(labelled),
        Err(Error::InvalidArgument(_))
    ));
    assert!(env.stored("labelled").is_none());
    assert_eq!(env.host.calls().len(), 0);
}

#[test]
fn xfs_below_its_minimum_is_refused() {
    let env = Env::new();
    let svc = env.start();
    let small = CreateVolume {
        fs: Some(FsType::Xfs),
        ..req("x", 200 * MIB)
    };
    let err = svc.create_volume(small).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("300MiB") && msg.contains(&(300 * MIB).to_string()),
        "{msg}"
    );
    assert!(env.stored("x").is_none());
    assert!(env.pool_entries("default").is_empty());
    env.assert_no_intents(&svc);

    let ok = CreateVolume {
        fs: Some(FsType::Xfs),
        ..req("x", 300 * MIB)
    };
    assert_eq!(svc.create_volume(ok).unwrap().fs, Some(FsType::Xfs));
    // ext4's minimum is lower but exists.
    assert!(matches!(
        svc.create_volume(req("tiny", 4096)),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn fs_for_a_dir_pool_is_refused() {
    let env = Env::new();
    let svc = env.start();
    svc.ensure_pool(env.pool("files", DriverKind::Dir)).unwrap();
    let with_fs = CreateVolume {
        fs: Some(FsType::Ext4),
        pool: Some("files".into()),
        ..req("d", 64 * MIB)
    };
    let err = svc.create_volume(with_fs).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("dir"), "{err}");
    assert!(env.stored("d").is_none());
    assert!(env.pool_entries("files").is_empty());
    env.assert_no_intents(&svc);

    // A pool that does not exist is not found.
    let nowhere = CreateVolume {
        pool: Some("nowhere".into()),
        ..req("d", 64 * MIB)
    };
    assert!(matches!(
        svc.create_volume(nowhere),
        Err(Error::NotFound { .. })
    ));
}

// ----- 7. host failures during mount -------------------------------------

#[test]
fn a_failed_stage_is_undone() {
    for op in ["loop_attach", "mkfs", "mount"] {
        let env = Env::new();
        let svc = env.start();
        let before = svc.create_volume(req("v", 64 * MIB)).unwrap();
        env.host.fail_next(op);

        let err = svc.mount("v", cli("c1")).unwrap_err();
        assert!(matches!(err, Error::Driver(_)), "{op}: {err}");
        assert!(err.to_string().contains("injected"), "{op}: {err}");
        assert_eq!(env.host.loop_count(), 0, "{op}: loop device left");
        assert_eq!(env.host.mount_count(), 0, "{op}: mount left");
        assert_eq!(svc.get_volume("v").unwrap(), before, "{op}");
        assert_eq!(env.stored("v").as_ref(), Some(&before), "{op}");
        assert!(!svc.mountpoint_for("v").exists(), "{op}: mountpoint left");
        env.assert_no_intents(&svc);

        // The failure was transient: the next mount works.
        let ok = svc.mount("v", cli("c1")).unwrap();
        assert!(ok.formatted);
        svc.unmount("v", &cli("c1")).unwrap();
        assert_eq!(env.host.loop_count(), 0);
    }
}

#[test]
fn a_failed_stage_of_a_formatted_volume_keeps_it_formatted() {
    for op in ["loop_attach", "mount"] {
        let env = Env::new();
        let svc = env.start();
        svc.create_volume(req("v", 64 * MIB)).unwrap();
        svc.mount("v", cli("c1")).unwrap();
        let before = svc.unmount("v", &cli("c1")).unwrap();
        assert!(before.formatted);
        env.host.fail_next(op);

        assert!(svc.mount("v", docker("d")).is_err(), "{op}");
        let after = svc.get_volume("v").unwrap();
        assert_eq!(after, before, "{op}");
        assert!(after.formatted);
        assert!(after.consumers.is_empty());
        assert_eq!(env.host.loop_count(), 0);
        assert_eq!(env.host.mount_count(), 0);
        assert!(!svc.mountpoint_for("v").exists());
        env.assert_no_intents(&svc);

        svc.mount("v", docker("d")).unwrap();
        assert_eq!(env.calls("mkfs"), 1, "{op}: not formatted twice");
    }
}

#[test]
fn a_failed_fs_grow_on_mount_is_undone_and_stays_pending() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    svc.mount("v", cli("c1")).unwrap();
    svc.unmount("v", &cli("c1")).unwrap();
    let before = svc.resize("v", 128 * MIB).unwrap();
    assert!(before.fs_grow_pending);

    // Both the online and the offline grow refresh the loop device first.
    env.host.fail_next("loop_refresh_capacity");
    assert!(svc.mount("v", cli("c1")).is_err());
    assert_eq!(svc.get_volume("v").unwrap(), before);
    assert_eq!(env.host.loop_count(), 0);
    assert_eq!(env.host.mount_count(), 0);
    assert!(!svc.mountpoint_for("v").exists());
    env.assert_no_intents(&svc);

    let ok = svc.mount("v", cli("c1")).unwrap();
    assert!(!ok.fs_grow_pending);
    assert_eq!(env.calls("loop_refresh_capacity"), 2);
    assert_eq!(env.fs_grows(), 1);
}

// ----- 8. busy unmount ---------------------------------------------------

#[test]
fn unmount_of_a_busy_filesystem_keeps_the_consumer() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    let mounted = svc.mount("v", docker("a")).unwrap();
    let mountpoint = svc.mountpoint_for("v");
    env.host.set_busy(&mountpoint, true);

    let err = svc.unmount("v", &docker("a")).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    let after = svc.get_volume("v").unwrap();
    assert_eq!(after, mounted);
    assert_eq!(after.state, VolumeState::Mounted);
    assert_eq!(consumer_count(&after, &docker("a")), Some(1));
    assert_eq!(env.stored("v").as_ref(), Some(&mounted));
    assert_eq!(env.host.mount_count(), 1);
    assert_eq!(env.host.loop_count(), 1);
    assert!(mountpoint.is_dir());
    env.assert_no_intents(&svc);

    // A forced delete meets the same busy filesystem and changes nothing.
    let err = svc.delete_volume("v", true).unwrap_err();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    assert_eq!(svc.get_volume("v").unwrap(), mounted);
    assert_eq!(env.stored("v").as_ref(), Some(&mounted));
    assert!(env.image(&mounted).exists());
    env.assert_no_intents(&svc);

    env.host.set_busy(&mountpoint, false);
    let done = svc.unmount("v", &docker("a")).unwrap();
    assert_eq!(done.state, VolumeState::Available);
    assert!(done.consumers.is_empty());
    assert_eq!(env.host.mount_count(), 0);
    assert_eq!(env.host.loop_count(), 0);
    env.assert_no_intents(&svc);
}

// ----- 9. resize ---------------------------------------------------------

#[test]
fn resize_online_offline_and_refusals() {
    let env = Env::new();
    let svc = env.start();
    let vol = svc.create_volume(req("v", 64 * MIB)).unwrap();
    let mounted = svc.mount("v", cli("c1")).unwrap();
    let device = mounted.staging.as_ref().unwrap().device.clone().unwrap();

    // Online grow.
    let grown = svc.resize("v", 128 * MIB).unwrap();
    assert_eq!(grown.size_bytes, 128 * MIB);
    assert_eq!(grown.state, VolumeState::Mounted);
    assert!(!grown.fs_grow_pending);
    assert_eq!(grown.staging, mounted.staging);
    assert_eq!(env.image_len(&vol), 128 * MIB);
    assert_eq!(env.fs_grows(), 1);
    assert_eq!(
        env.host.calls().last().unwrap(),
        &format!("grow_fs {}", device.display())
    );
    assert!(env
        .host
        .calls()
        .contains(&format!("loop_refresh_capacity {}", device.display())));
    assert_eq!(env.stored("v").as_ref(), Some(&grown));
    env.assert_no_intents(&svc);

    // Shrinking is refused; the same size is a no-op.
    let err = svc.resize("v", 64 * MIB).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(svc.get_volume("v").unwrap(), grown);
    let calls = env.host.calls().len();
    assert_eq!(svc.resize("v", 128 * MIB).unwrap(), grown);
    // Sizes round up to 4 KiB, so this is the same size too.
    assert_eq!(svc.resize("v", 128 * MIB - 1).unwrap(), grown);
    assert_eq!(env.host.calls().len(), calls);
    assert_eq!(env.image_len(&vol), 128 * MIB);
    env.assert_no_intents(&svc);

    // Offline grow: the filesystem grows on the next mount.
    svc.unmount("v", &cli("c1")).unwrap();
    let offline = svc.resize("v", 256 * MIB + 1).unwrap();
    assert_eq!(offline.size_bytes, 256 * MIB + 4096);
    assert_eq!(offline.state, VolumeState::Available);
    assert!(offline.fs_grow_pending);
    assert_eq!(env.image_len(&vol), 256 * MIB + 4096);
    assert_eq!(env.fs_grows(), 1);
    assert_eq!(env.stored("v").as_ref(), Some(&offline));

    let remounted = svc.mount("v", cli("c1")).unwrap();
    assert_eq!(env.fs_grows(), 2);
    assert!(!remounted.fs_grow_pending);
    assert_eq!(env.calls("mkfs"), 1);
    assert_eq!(env.stored("v").as_ref(), Some(&remounted));
    env.assert_no_intents(&svc);

    // Resize of a missing volume.
    assert!(matches!(
        svc.resize("missing", GIB),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn resize_of_a_never_formatted_volume_needs_no_fs_grow() {
    let env = Env::new();
    let svc = env.start();
    let vol = svc.create_volume(req("v", 64 * MIB)).unwrap();
    let grown = svc.resize("v", 96 * MIB).unwrap();
    assert!(!grown.fs_grow_pending, "mkfs will use the whole image");
    assert_eq!(env.image_len(&vol), 96 * MIB);
    let mounted = svc.mount("v", cli("c1")).unwrap();
    assert!(mounted.formatted);
    assert_eq!(env.calls("mkfs"), 1);
    assert_eq!(env.fs_grows(), 0);
}

#[test]
fn resize_without_online_grow_defers_the_fs_to_the_next_mount() {
    let env = Env::new();
    let svc = env.start();
    let vol = svc.create_volume(req("v", 64 * MIB)).unwrap();
    svc.mount("v", cli("c1")).unwrap();
    env.host.set_no_online_grow(true);

    let grown = svc.resize("v", 128 * MIB).unwrap();
    assert_eq!(grown.size_bytes, 128 * MIB);
    assert_eq!(grown.state, VolumeState::Mounted);
    assert!(grown.fs_grow_pending);
    assert_eq!(env.image_len(&vol), 128 * MIB);
    assert_eq!(env.fs_grows(), 0);
    env.assert_no_intents(&svc);

    // The pending grow survives the unmount and happens at the next mount.
    assert!(svc.unmount("v", &cli("c1")).unwrap().fs_grow_pending);
    let remounted = svc.mount("v", cli("c1")).unwrap();
    assert!(!remounted.fs_grow_pending);
    assert_eq!(env.fs_grows(), 1);
    assert_eq!(env.stored("v").as_ref(), Some(&remounted));
}

#[test]
fn a_failed_online_fs_grow_keeps_the_old_size() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    let mounted = svc.mount("v", cli("c1")).unwrap();
    env.host.fail_next("loop_refresh_capacity");
    assert!(svc.resize("v", 128 * MIB).is_err());
    assert_eq!(svc.get_volume("v").unwrap(), mounted);
    assert_eq!(env.stored("v").as_ref(), Some(&mounted));
    env.assert_no_intents(&svc);
    // Trying again finishes the job.
    assert_eq!(svc.resize("v", 128 * MIB).unwrap().size_bytes, 128 * MIB);
}

// ----- 10. reconciliation of interrupted operations ----------------------

#[test]
fn reconcile_rolls_back_an_interrupted_create() {
    for image_made in [false, true] {
        let env = Env::new();
        let svc = env.start();
        let made = svc.create_volume(req("v", 64 * MIB)).unwrap();
        let image = env.image(&made);
        drop(svc);
        if !image_made {
            std::fs::remove_file(&image).unwrap();
        }
        let mut creating = made.clone();
        creating.state = VolumeState::Creating;
        env.crash_with(&creating, IntentOp::Create, &creating);

        let (svc, rep) = env.open();
        assert_eq!(rep, report(|r| r.rolled_back = vec!["create v".into()]));
        assert!(matches!(svc.get_volume("v"), Err(Error::NotFound { .. })));
        assert!(env.stored("v").is_none());
        assert!(!image.exists());
        env.assert_no_intents(&svc);
        assert!(svc
            .recent_events(10)
            .iter()
            .any(|e| e.message.contains("interrupted create of v undone")));

        // The name is free again.
        assert_ne!(svc.create_volume(req("v", 64 * MIB)).unwrap().id, made.id);
    }
}

#[test]
fn reconcile_rolls_back_an_interrupted_stage() {
    for mounted in [false, true] {
        let env = Env::new();
        let svc = env.start();
        let vol = svc.create_volume(req("v", 64 * MIB)).unwrap();
        let mountpoint = svc.mountpoint_for("v");
        drop(svc);
        env.crash_with(
            &vol,
            IntentOp::Stage {
                consumer: docker("a"),
                target: None,
            },
            &vol,
        );
        let dev = env.attach(&env.image(&vol));
        env.host.mkfs(&dev, FsType::Ext4).unwrap();
        if mounted {
            env.mount_at(&dev, &mountpoint);
        }

        let (svc, rep) = env.open();
        assert_eq!(rep, report(|r| r.rolled_back = vec!["stage v".into()]));
        assert_eq!(env.host.loop_count(), 0, "mounted={mounted}");
        assert_eq!(env.host.mount_count(), 0);
        assert!(!mountpoint.exists());
        assert_eq!(svc.get_volume("v").unwrap(), vol);
        assert_eq!(env.stored("v").as_ref(), Some(&vol));
        env.assert_no_intents(&svc);

        // The caller retries and it works.
        let ok = svc.mount("v", docker("a")).unwrap();
        assert_eq!(ok.state, VolumeState::Mounted);
    }
}

#[test]
fn reconcile_finishes_an_interrupted_unstage() {
    for unmounted_already in [false, true] {
        let env = Env::new();
        let svc = env.start();
        svc.create_volume(req("v", 64 * MIB)).unwrap();
        let mounted = svc.mount("v", cli("c1")).unwrap();
        let mountpoint = svc.mountpoint_for("v");
        drop(svc);
        env.crash_with(
            &mounted,
            IntentOp::Unstage {
                consumer: cli("c1"),
            },
            &mounted,
        );
        if unmounted_already {
            // Crashed after the unmount, before the detach.
            env.host.unmount(&mountpoint).unwrap();
            env.attach(&env.image(&mounted));
        }

        let (svc, rep) = env.open();
        assert_eq!(rep, report(|r| r.rolled_forward = vec!["unstage v".into()]));
        let vol = svc.get_volume("v").unwrap();
        assert_eq!(vol.state, VolumeState::Available);
        assert!(vol.staging.is_none());
        assert!(vol.consumers.is_empty());
        assert!(vol.formatted);
        assert_eq!(env.host.loop_count(), 0);
        assert_eq!(env.host.mount_count(), 0);
        assert!(!mountpoint.exists());
        env.assert_no_intents(&svc);
        env.assert_store_agrees(&svc);
    }
}

#[test]
fn reconcile_finishes_an_interrupted_resize() {
    for mounted in [true, false] {
        let env = Env::new();
        let svc = env.start();
        svc.create_volume(req("v", 64 * MIB)).unwrap();
        svc.mount("v", cli("c1")).unwrap();
        if !mounted {
            svc.unmount("v", &cli("c1")).unwrap();
        }
        let before = svc.get_volume("v").unwrap();
        drop(svc);
        let mut growing = before.clone();
        growing.state = VolumeState::Resizing;
        growing.size_bytes = 128 * MIB;
        env.crash_with(
            &growing,
            IntentOp::Resize {
                from: 64 * MIB,
                to: 128 * MIB,
            },
            &before,
        );
        let grow_calls = env.fs_grows();

        let (svc, rep) = env.open();
        assert_eq!(rep, report(|r| r.rolled_forward = vec!["resize v".into()]));
        let vol = svc.get_volume("v").unwrap();
        assert_eq!(vol.size_bytes, 128 * MIB);
        assert_eq!(env.image_len(&vol), 128 * MIB);
        env.assert_no_intents(&svc);
        env.assert_store_agrees(&svc);
        if mounted {
            assert_eq!(vol.state, VolumeState::Mounted);
            assert_eq!(vol.staging, before.staging);
            assert_eq!(vol.consumers, before.consumers);
            assert!(!vol.fs_grow_pending);
            assert_eq!(env.fs_grows(), grow_calls + 1);
            assert_eq!(env.host.mount_count(), 1);
        } else {
            assert_eq!(vol.state, VolumeState::Available);
            assert!(vol.fs_grow_pending);
            assert_eq!(env.fs_grows(), grow_calls);
            svc.mount("v", cli("c1")).unwrap();
            assert_eq!(env.fs_grows(), grow_calls + 1);
        }
    }
}

#[test]
fn reconcile_finishes_an_interrupted_delete() {
    for mounted in [true, false] {
        let env = Env::new();
        let svc = env.start();
        svc.create_volume(req("v", 64 * MIB)).unwrap();
        if mounted {
            svc.mount("v", cli("c1")).unwrap();
        }
        let before = svc.get_volume("v").unwrap();
        let image = env.image(&before);
        drop(svc);
        let mut deleting = before.clone();
        deleting.state = VolumeState::Deleting;
        env.crash_with(&deleting, IntentOp::Delete, &before);

        let (svc, rep) = env.open();
        assert_eq!(rep, report(|r| r.rolled_forward = vec!["delete v".into()]));
        assert!(matches!(svc.get_volume("v"), Err(Error::NotFound { .. })));
        assert!(env.stored("v").is_none());
        assert!(!image.exists());
        assert_eq!(env.host.loop_count(), 0);
        assert_eq!(env.host.mount_count(), 0);
        assert!(!svc.mountpoint_for("v").exists());
        env.assert_no_intents(&svc);
    }
}

#[test]
fn reconcile_keeps_an_intent_it_cannot_finish() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    let before = svc.mount("v", cli("c1")).unwrap();
    let mountpoint = svc.mountpoint_for("v");
    drop(svc);
    let mut deleting = before.clone();
    deleting.state = VolumeState::Deleting;
    env.crash_with(&deleting, IntentOp::Delete, &before);
    env.host.set_busy(&mountpoint, true);

    let (svc, rep) = env.open();
    assert_eq!(rep.failed.len(), 1, "{rep:?}");
    assert!(rep.failed[0].starts_with("delete v"), "{rep:?}");
    assert!(rep.rolled_forward.is_empty());
    assert_eq!(svc.intents().unwrap().len(), 1);
    let vol = svc.get_volume("v").unwrap();
    assert_eq!(vol.state, VolumeState::Deleting);
    assert!(env.image(&vol).exists());
    // Nothing else may touch it until it is reconciled.
    assert!(matches!(svc.mount("v", cli("c2")), Err(Error::Busy { .. })));
    assert!(matches!(svc.resize("v", GIB), Err(Error::Busy { .. })));
    assert!(matches!(
        svc.delete_volume("v", true),
        Err(Error::Busy { .. })
    ));
    drop(svc);

    env.host.set_busy(&mountpoint, false);
    let (svc, rep) = env.open();
    assert_eq!(rep, report(|r| r.rolled_forward = vec!["delete v".into()]));
    assert!(svc.list_volumes().is_empty());
    env.assert_no_intents(&svc);
}

#[test]
fn reconcile_marks_a_vanished_mount_unstaged() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    svc.mount("v", docker("a")).unwrap();
    let mountpoint = svc.mountpoint_for("v");
    drop(svc);
    // Someone unmounts it behind ballast's back.
    env.host.unmount(&mountpoint).unwrap();

    let (svc, rep) = env.open();
    assert_eq!(rep, report(|r| r.lost_mounts = vec!["v".into()]));
    let vol = svc.get_volume("v").unwrap();
    assert_eq!(vol.state, VolumeState::Available);
    assert!(vol.staging.is_none());
    env.assert_store_agrees(&svc);

    // The consumer's unmount finds nothing to unmount; a mount stages again.
    let released = svc.unmount("v", &docker("a")).unwrap();
    assert!(released.consumers.is_empty());
    svc.mount("v", docker("b")).unwrap();
    assert_eq!(env.host.mount_count(), 1);
}

// ----- 11. reboot --------------------------------------------------------

#[test]
fn after_a_reboot_nothing_is_mounted() {
    let env = Env::new();
    let svc = env.start();
    for name in ["a", "b", "c"] {
        svc.create_volume(req(name, 64 * MIB)).unwrap();
    }
    svc.mount("a", cli("c1")).unwrap();
    svc.mount("b", docker("x")).unwrap();
    svc.mount("b", docker("x")).unwrap();
    svc.mount("b", docker("y")).unwrap();
    let c = svc.get_volume("c").unwrap();
    drop(svc);

    env.host.reboot("boot-2");
    let (svc, rep) = env.open();
    assert_eq!(rep, report(|r| r.rebooted = true));
    for name in ["a", "b"] {
        let vol = svc.get_volume(name).unwrap();
        assert_eq!(vol.state, VolumeState::Available, "{name}");
        assert!(vol.consumers.is_empty(), "{name}");
        assert!(vol.staging.is_none(), "{name}");
        assert!(vol.formatted, "{name}");
    }
    assert_eq!(svc.get_volume("c").unwrap(), c);
    assert!(!svc.mountpoint_for("a").exists());
    env.assert_store_agrees(&svc);
    drop(svc);

    // The new boot is recorded: the next start is not a reboot.
    let (svc, rep) = env.open();
    assert_eq!(rep, ReconcileReport::default());
    svc.mount("a", cli("c1")).unwrap();
    assert_eq!(
        env.calls("mkfs"),
        2,
        "formatted volumes are not formatted again"
    );
    assert_eq!(env.host.mount_count(), 1);
}

#[test]
fn an_interrupted_resize_of_a_mounted_volume_across_a_reboot() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    let before = svc.mount("v", cli("c1")).unwrap();
    drop(svc);
    let mut growing = before.clone();
    growing.state = VolumeState::Resizing;
    growing.size_bytes = 128 * MIB;
    env.crash_with(
        &growing,
        IntentOp::Resize {
            from: 64 * MIB,
            to: 128 * MIB,
        },
        &before,
    );
    env.host.reboot("boot-2");
    let grow_calls = env.fs_grows();

    let (svc, rep) = env.open();
    assert_eq!(
        rep,
        report(|r| {
            r.rebooted = true;
            r.rolled_forward = vec!["resize v".into()];
        })
    );
    let vol = svc.get_volume("v").unwrap();
    assert_eq!(vol.size_bytes, 128 * MIB);
    assert_eq!(env.image_len(&vol), 128 * MIB);
    assert_eq!(vol.state, VolumeState::Available);
    assert!(vol.staging.is_none());
    assert!(vol.consumers.is_empty(), "consumers survived the reboot");
    // The device the intent saw is gone: the filesystem grows on next mount.
    assert_eq!(env.fs_grows(), grow_calls);
    assert!(vol.fs_grow_pending);
    env.assert_no_intents(&svc);
    env.assert_store_agrees(&svc);
    svc.mount("v", cli("c2")).unwrap();
    assert_eq!(env.fs_grows(), grow_calls + 1);
}

// ----- 12. orphans -------------------------------------------------------

#[test]
fn orphan_loops_and_mounts_are_removed_at_open() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("staged", 64 * MIB)).unwrap();
    let staged = svc.mount("staged", cli("c1")).unwrap();
    let idle = svc.create_volume(req("idle", 64 * MIB)).unwrap();
    drop(svc);
    let staged_dev = staged.staging.as_ref().unwrap().device.clone().unwrap();
    let staged_mp = staged.staging.as_ref().unwrap().mountpoint.clone();

    // Loop devices: one on an idle volume's image, one on a stray image in
    // the pool, one on a file outside every pool.
    let idle_dev = env.attach(&env.image(&idle));
    let stray_dev = env.attach(&env.pool_dir("default").join("stray.img"));
    let outside = env.root().join("elsewhere").join("outside.img");
    let outside_dev = env.attach(&outside);
    // A sibling directory whose name starts like the pool's is not the pool.
    let sibling = env.root().join("pools").join("default2").join("x.img");
    let sibling_dev = env.attach(&sibling);
    // Mounts under the mounts directory that no volume owns.
    let ghost = env.mounts_dir().join("ghost");
    std::fs::create_dir_all(&ghost).unwrap();
    env.host
        .bind_mount(Path::new("/somewhere"), &ghost, MountOptions::default())
        .unwrap();
    let ghost2 = env.mounts_dir().join("ghost2");
    let ghost2_dev = env.attach(&env.pool_dir("default").join("stray2.img"));
    env.mount_at(&ghost2_dev, &ghost2);
    // A mount outside the mounts directory is not ours.
    let foreign = env.root().join("foreign");
    env.host
        .bind_mount(Path::new("/somewhere"), &foreign, MountOptions::default())
        .unwrap();
    // An empty mountpoint directory left by an interrupted stage.
    let leftover = env.mounts_dir().join("leftover");
    std::fs::create_dir_all(&leftover).unwrap();

    let (svc, rep) = env.open();
    let mut removed = rep.orphan_mounts_removed.clone();
    removed.sort();
    assert_eq!(removed, vec![ghost.clone(), ghost2.clone()], "{rep:?}");
    let mut detached = rep.orphan_loops_detached.clone();
    detached.sort();
    let mut expected = vec![idle_dev, stray_dev];
    expected.sort();
    assert_eq!(detached, expected, "{rep:?}");
    assert!(rep.rolled_back.is_empty() && rep.rolled_forward.is_empty());
    assert!(rep.failed.is_empty() && rep.lost_mounts.is_empty());

    let mut loops: Vec<PathBuf> = env.loop_devices().into_iter().map(|(d, _)| d).collect();
    loops.sort();
    let mut kept = vec![staged_dev, outside_dev, sibling_dev];
    kept.sort();
    assert_eq!(loops, kept);
    let mut targets = env.mount_targets();
    targets.sort();
    let mut kept = vec![staged_mp.clone(), foreign];
    kept.sort();
    assert_eq!(targets, kept);
    assert!(!ghost.exists() && !ghost2.exists() && !leftover.exists());
    assert!(staged_mp.is_dir());
    assert_eq!(svc.get_volume("staged").unwrap(), staged);
    assert_eq!(
        svc.get_volume("idle").unwrap().state,
        VolumeState::Available
    );
}

#[test]
fn a_busy_orphan_mount_does_not_stop_the_start() {
    let env = Env::new();
    let svc = env.start();
    svc.create_volume(req("v", 64 * MIB)).unwrap();
    drop(svc);
    let ghost = env.mounts_dir().join("ghost");
    std::fs::create_dir_all(&ghost).unwrap();
    env.host
        .bind_mount(Path::new("/somewhere"), &ghost, MountOptions::default())
        .unwrap();
    env.host.set_busy(&ghost, true);

    // A container may still use it; the daemon must start anyway.
    let (svc, rep) = env.open();
    assert!(rep.orphan_mounts_removed.is_empty(), "{rep:?}");
    assert_eq!(rep.failed.len(), 1, "{rep:?}");
    assert!(rep.failed[0].contains("ghost"), "{rep:?}");
    assert_eq!(env.mount_targets(), vec![ghost.clone()]);
    svc.mount("v", cli("c1")).unwrap();
}

// ----- 13. concurrency ---------------------------------------------------

#[test]
fn concurrent_operations_leave_a_clean_host() {
    const THREADS: usize = 16;
    const ROUNDS: usize = 4;
    let env = Env::new();
    let svc = env.start();
    let shared = svc.create_volume(req("shared", 64 * MIB)).unwrap();

    std::thread::scope(|s| {
        for t in 0..THREADS {
            let svc = &svc;
            s.spawn(move || {
                let name = format!("own-{t}");
                for _ in 0..ROUNDS {
                    let vol = svc.create_volume(req(&name, 64 * MIB)).unwrap();
                    let m = svc.mount(&name, cli("me")).unwrap();
                    assert_eq!(m.id, vol.id);
                    assert_eq!(m.state, VolumeState::Mounted);
                    let u = svc.unmount(&name, &cli("me")).unwrap();
                    assert_eq!(u.state, VolumeState::Available);
                    svc.delete_volume(&name, false).unwrap();
                }
            });
        }
        for t in 0..THREADS {
            let svc = &svc;
            s.spawn(move || {
                let me = docker(&format!("ctr-{t}"));
                for _ in 0..ROUNDS * 3 {
                    let m = svc.mount("shared", me.clone()).unwrap();
                    assert_eq!(m.state, VolumeState::Mounted);
                    assert_eq!(consumer_count(&m, &me), Some(1));
                    let u = svc.unmount("shared", &me).unwrap();
                    assert!(!u.consumers.contains_key(&me.key()));
                }
            });
        }
    });

    assert_eq!(env.host.loop_count(), 0, "{:?}", env.loop_devices());
    assert_eq!(env.host.mount_count(), 0, "{:?}", env.mount_targets());
    env.assert_no_intents(&svc);
    let vol = svc.get_volume("shared").unwrap();
    assert_eq!(vol.state, VolumeState::Available);
    assert!(vol.consumers.is_empty());
    assert!(vol.staging.is_none());
    assert_eq!(svc.volume_count(), 1);
    env.assert_store_agrees(&svc);
    assert_eq!(
        env.pool_entries("default"),
        vec![format!("{}.img", shared.id)]
    );
    // Every own volume was formatted once per life, the shared one once.
    assert_eq!(env.calls("mkfs"), THREADS * ROUNDS + 1);
    assert_eq!(std::fs::read_dir(env.mounts_dir()).unwrap().count(), 0);
}

// ----- 14. dir driver ----------------------------------------------------

#[test]
fn dir_volumes_are_served_in_place() {
    let env = Env::new();
    let svc = env.start();
    let pool = svc.ensure_pool(env.pool("files", DriverKind::Dir)).unwrap();
    // Sizes of dir volumes are advisory: far beyond the backing filesystem.
    let vol = svc
        .create_volume(CreateVolume {
            pool: Some("files".into()),
            ..req("d", 1 << 40)
        })
        .unwrap();
    assert_eq!(vol.driver, DriverKind::Dir);
    assert_eq!(vol.fs, None);
    let data = dir::volume_dir(&pool, &vol);
    assert_eq!(data, env.pool_dir("files").join(&vol.id));
    assert!(data.is_dir());

    let mounted = svc.mount("d", cli("c1")).unwrap();
    let staging = mounted.staging.clone().unwrap();
    assert_eq!(staging.mountpoint, data);
    assert_eq!(staging.device, None);
    assert_eq!(mounted.state, VolumeState::Mounted);
    assert_eq!(env.host.mount_count(), 0);
    assert_eq!(env.host.loop_count(), 0);
    assert!(!svc.mountpoint_for("d").exists(), "no mountpoint left");
    std::fs::write(data.join("hello"), b"world").unwrap();

    let released = svc.unmount("d", &cli("c1")).unwrap();
    assert_eq!(released.state, VolumeState::Available);
    assert!(released.staging.is_none());
    assert!(data.is_dir(), "unmount keeps the data directory");
    let again = svc.mount("d", docker("x")).unwrap();
    assert_eq!(again.mountpoint(), Some(data.as_path()));
    assert_eq!(std::fs::read(data.join("hello")).unwrap(), b"world");

    // Resizing only changes the record.
    let grown = svc.resize("d", 2 << 40).unwrap();
    assert_eq!(grown.size_bytes, 2 << 40);
    assert!(!grown.fs_grow_pending);
    assert_eq!(env.fs_grows(), 0);
    assert_eq!(env.calls("mkfs"), 0);
    drop(svc);

    // A restart finds it still served.
    let (svc, rep) = env.open();
    assert_eq!(rep, ReconcileReport::default());
    assert_eq!(svc.get_volume("d").unwrap().state, VolumeState::Mounted);
    assert!(data.join("hello").exists());

    svc.unmount("d", &docker("x")).unwrap();
    svc.delete_volume("d", false).unwrap();
    assert!(!data.exists());
    assert!(env.stored("d").is_none());
    assert!(env.pool_entries("files").is_empty());
    assert!(!svc.mountpoint_for("d").exists());
    env.assert_no_intents(&svc);
}

#[test]
fn an_empty_dir_volume_survives_unmount() {
    let env = Env::new();
    let svc = env.start();
    let pool = svc.ensure_pool(env.pool("files", DriverKind::Dir)).unwrap();
    let vol = svc
        .create_volume(CreateVolume {
            pool: Some("files".into()),
            ..req("empty", GIB)
        })
        .unwrap();
    let data = dir::volume_dir(&pool, &vol);
    for _ in 0..2 {
        svc.mount("empty", cli("c1")).unwrap();
        svc.unmount("empty", &cli("c1")).unwrap();
        assert!(data.is_dir(), "unmount removed the volume's directory");
    }
    svc.delete_volume("empty", false).unwrap();
    assert!(!data.exists());
}

#[test]
fn dir_volume_force_delete_while_mounted() {
    let env = Env::new();
    let svc = env.start();
    svc.ensure_pool(env.pool("files", DriverKind::Dir)).unwrap();
    let vol = svc
        .create_volume(CreateVolume {
            pool: Some("files".into()),
            ..req("d", GIB)
        })
        .unwrap();
    let data = svc
        .mount("d", cli("c1"))
        .unwrap()
        .staging
        .unwrap()
        .mountpoint;
    std::fs::create_dir(data.join("sub")).unwrap();
    std::fs::write(data.join("sub").join("f"), b"x").unwrap();
    assert!(matches!(
        svc.delete_volume("d", false),
        Err(Error::InUse { .. })
    ));
    svc.delete_volume("d", true).unwrap();
    assert!(!data.exists());
    assert!(matches!(
        svc.get_volume(&vol.name),
        Err(Error::NotFound { .. })
    ));
    env.assert_no_intents(&svc);
}

/// The autogrow pass decides from the in-memory copy without the volume's
/// lock; a mount made between its read and its write must survive (the old
/// pass wrote its stale copy back with its warning and erased it).
#[test]
fn autogrow_never_writes_back_a_stale_copy() {
    use ballast_core::model::{Autogrow, GrowStep};
    let env = Env::new();
    let svc_slot: Arc<std::sync::OnceLock<Arc<VolumeService>>> = Arc::default();
    let hook_slot = svc_slot.clone();
    let hook: ballast_core::failpoint::Hook = Arc::new(move |_| {
        if let Some(svc) = hook_slot.get() {
            svc.mount("grow", cli("late"))
                .expect("mount during the pass");
        }
    });
    let (svc, _) = env.open_with(Failpoints::with_hook("autogrow.decided", hook));
    let svc = Arc::new(svc);
    svc.ensure_pool(env.pool("default", DriverKind::Loop))
        .unwrap();
    svc_slot.set(svc.clone()).ok().unwrap();
    let mut r = req("grow", 64 * MIB);
    r.autogrow = Some(Autogrow {
        threshold_pct: 80,
        step: GrowStep::Bytes(64 * MIB),
        max_bytes: 512 * MIB,
    });
    svc.create_volume(r).unwrap();
    let vol = svc.mount("grow", cli("first")).unwrap();
    let mountpoint = vol.mountpoint().unwrap().to_path_buf();
    env.host.set_fs_stats(
        &mountpoint,
        ballast_core::host::FsStats {
            total_bytes: 64 * MIB,
            free_bytes: 2 * MIB,
            avail_bytes: 2 * MIB,
            total_inodes: 0,
            free_inodes: 0,
        },
    );
    // Warning branch: the filesystem cannot grow while mounted.
    env.host.set_no_online_grow(true);
    assert!(svc.autogrow_tick().is_empty());
    let after = svc.get_volume("grow").unwrap();
    assert!(
        after.consumers.contains_key(&cli("late").key()),
        "the mount made during the pass was erased: {:?}",
        after.consumers.keys()
    );
    assert!(after.consumers.contains_key(&cli("first").key()));
    // What the store holds says the same (a restart would read it).
    drop(svc_slot);
    let stored = env.stored("grow").expect("record");
    assert!(stored.consumers.contains_key(&cli("late").key()));
}
