//! Operation statistics (`ballast_core::stats`) recorded by the public
//! `VolumeService` operations: the service with the real loop and dir
//! drivers on a temporary directory, `FakeHost` and `MemStore`.

use std::path::PathBuf;
use std::sync::Arc;

use ballast_core::failpoint::Failpoints;
use ballast_core::host::Host;
use ballast_core::model::{ConsumerKind, ConsumerRef, CreateSource, DriverKind, FsType, Pool};
use ballast_core::stats::{Operation, UNKNOWN_DRIVER};
use ballast_core::store::MemStore;
use ballast_core::testing::FakeHost;
use ballast_core::{CreateVolume, ServiceConfig, ServiceParts, VolumeService, Wait};
use ballast_drivers::{DirDriver, LoopDriver};

const MIB: u64 = 1 << 20;

fn service(tmp: &tempfile::TempDir) -> VolumeService {
    let host: Arc<dyn Host> = Arc::new(FakeHost::new());
    let (svc, _) = VolumeService::open(ServiceParts {
        store: Arc::new(MemStore::new()),
        host: host.clone(),
        drivers: vec![
            Arc::new(LoopDriver::new(host.clone())),
            Arc::new(DirDriver::new(host)),
        ],
        config: ServiceConfig {
            mounts_dir: tmp.path().join("mounts"),
            pools_dir: tmp.path().join("pools"),
            default_size: 64 * MIB,
            default_fs: FsType::Ext4,
            node_id: "node-a".into(),
        },
        failpoints: Failpoints::none(),
    })
    .expect("open the service");
    for (name, driver) in [("default", DriverKind::Loop), ("d", DriverKind::Dir)] {
        let path: PathBuf = tmp.path().join("pools").join(name);
        svc.ensure_pool(Pool::new(name, driver, path, 1.0))
            .expect("pool");
    }
    svc
}

fn create(name: &str, pool: Option<&str>, size: u64) -> CreateVolume {
    CreateVolume {
        name: name.into(),
        size_bytes: Some(size),
        pool: pool.map(str::to_string),
        ..CreateVolume::default()
    }
}

#[test]
fn every_public_operation_is_timed_by_operation_and_driver() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(&tmp);
    let cli = ConsumerRef::new(ConsumerKind::Cli, "t");

    svc.create_volume(create("a", None, 16 * MIB)).unwrap();
    svc.create_volume(create("b", Some("d"), 16 * MIB)).unwrap();
    svc.mount("a", cli.clone()).unwrap();
    svc.resize("a", 32 * MIB).unwrap();
    svc.create_snapshot("a", "s", Wait::Block).unwrap();
    svc.unmount("a", &cli).unwrap();
    svc.create_volume(CreateVolume {
        source: Some(CreateSource::Snapshot("s".into())),
        ..create("c", None, 32 * MIB)
    })
    .unwrap();
    svc.delete_snapshot("s", Wait::Block).unwrap();
    svc.delete_volume("a", false).unwrap();

    let snap = svc.stats().snapshot();
    let count = |op, driver| snap.durations.get(&(op, driver)).map_or(0, |h| h.count);
    assert_eq!(count(Operation::Create, "loop"), 1, "{snap:?}");
    assert_eq!(count(Operation::Create, "dir"), 1, "{snap:?}");
    assert_eq!(count(Operation::Clone, "loop"), 1, "{snap:?}");
    for op in [
        Operation::Mount,
        Operation::Unmount,
        Operation::Resize,
        Operation::Snapshot,
        Operation::DeleteSnapshot,
        // The record is gone after a delete: the label is read before it.
        Operation::Delete,
    ] {
        assert_eq!(count(op, "loop"), 1, "{op:?}: {snap:?}");
    }
    assert!(snap.errors.is_empty(), "{snap:?}");
    let h = &snap.durations[&(Operation::Create, "loop")];
    assert_eq!(h.buckets.iter().sum::<u64>(), h.count);
    assert!(h.sum_seconds > 0.0);
}

#[test]
fn failures_are_counted_by_error_code() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(&tmp);
    // More than the backing filesystem holds: refused by admission.
    let err = svc
        .create_volume(create("huge", None, 1 << 60))
        .unwrap_err();
    assert_eq!(err.code(), "capacity");
    svc.delete_volume("missing", false).unwrap_err();
    svc.create_volume(create("x", Some("nope"), MIB))
        .unwrap_err();

    let snap = svc.stats().snapshot();
    assert_eq!(
        snap.errors.get(&(Operation::Create, "loop", "capacity")),
        Some(&1),
        "{snap:?}"
    );
    assert_eq!(
        snap.errors
            .get(&(Operation::Delete, UNKNOWN_DRIVER, "not_found")),
        Some(&1),
        "{snap:?}"
    );
    assert_eq!(
        snap.errors
            .get(&(Operation::Create, UNKNOWN_DRIVER, "not_found")),
        Some(&1),
        "{snap:?}"
    );
    // Failed calls are timed too.
    assert_eq!(snap.durations[&(Operation::Create, "loop")].count, 1);
}

#[test]
fn watcher_counters_are_kept_per_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = service(&tmp);
    svc.stats().record_remediation("default");
    svc.stats().record_autogrow("default");
    svc.stats().record_autogrow("default");
    let snap = svc.stats().snapshot();
    assert_eq!(snap.remediations["default"], 1);
    assert_eq!(snap.autogrows["default"], 2);
}
