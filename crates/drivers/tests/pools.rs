//! Unit tests of pools and their self-remediation without root: the real
//! btrfs, loop and dir drivers on a temporary directory, `FakeHost` for
//! loop devices, mounts, btrfs filesystems and statvfs, `MemStore` for the
//! records. A crash is simulated by storing what an interrupted add leaves
//! and opening a new service on the same store and host.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballast_core::error::Error;
use ballast_core::events::EventKind;
use ballast_core::failpoint::Failpoints;
use ballast_core::host::{FsStats, Host};
use ballast_core::model::{DiskKind, DriverKind, FsType, Pool, PoolDisk};
use ballast_core::pools::CreatePool;
use ballast_core::remediation::Remediation;
use ballast_core::store::{MemStore, Store, Txn};
use ballast_core::testing::FakeHost;
use ballast_core::{CreateVolume, ServiceConfig, ServiceParts, VolumeService};
use ballast_drivers::{BtrfsDriver, DirDriver, LoopDriver};
use tempfile::TempDir;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

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

    fn open(&self) -> VolumeService {
        let host: Arc<dyn Host> = self.host.clone();
        let (svc, _) = VolumeService::open(ServiceParts {
            store: self.store.clone(),
            host: host.clone(),
            drivers: vec![
                Arc::new(LoopDriver::new(host.clone())),
                Arc::new(DirDriver::new(host.clone())),
                Arc::new(BtrfsDriver::new(host)),
            ],
            config: ServiceConfig {
                mounts_dir: self.root().join("mounts"),
                pools_dir: self.root().join("pools"),
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
        svc.ensure_pool(Pool::new(
            "default",
            DriverKind::Loop,
            self.root().join("pools/default"),
            1.0,
        ))
        .expect("default pool");
        svc
    }

    fn disk_file(&self, name: &str) -> PathBuf {
        self.root().join("disks").join(name)
    }

    /// A growing btrfs pool on one 1 GiB disk file: watermark 60%, step 1
    /// GiB, max 3 GiB.
    fn growing_pool(&self, svc: &VolumeService) -> Pool {
        svc.create_pool(CreatePool {
            name: "p".into(),
            driver: Some(DriverKind::Btrfs),
            disk_file: Some((self.disk_file("p.img"), GIB)),
            high_watermark: Some(60),
            grow_step: Some(GIB),
            max_size: Some(3 * GIB),
            ..CreatePool::default()
        })
        .expect("pool")
    }

    /// Make statvfs of `path` say `pct` percent used of `total`.
    fn fill(&self, path: &Path, total: u64, pct: u64) {
        let avail = total / 100 * (100 - pct);
        self.host.set_fs_stats(
            path,
            FsStats {
                total_bytes: total,
                free_bytes: avail,
                avail_bytes: avail,
                total_inodes: 0,
                free_inodes: 0,
            },
        );
    }
}

fn events(svc: &VolumeService, kind: EventKind, pool: &str) -> Vec<String> {
    svc.recent_events(1000)
        .into_iter()
        .filter(|e| e.kind == kind && e.pool.as_deref() == Some(pool))
        .map(|e| e.message)
        .collect()
}

fn invalid(r: Result<Pool, Error>, want: &str) {
    match r {
        Err(Error::InvalidArgument(e)) => {
            assert!(e.to_string().contains(want), "{e} lacks {want:?}")
        }
        other => panic!("expected invalid argument {want:?}, got {other:?}"),
    }
}

#[test]
fn a_btrfs_pool_on_a_disk_file_is_made_mounted_and_recorded() {
    let env = Env::new();
    let svc = env.start();
    let pool = env.growing_pool(&svc);
    assert_eq!(pool.path, env.root().join("pools/p/mnt"));
    assert_eq!(pool.disks.len(), 1);
    assert_eq!(
        pool.growth.disk_dir.as_deref(),
        Some(env.root().join("disks").as_path())
    );
    assert_eq!(
        std::fs::metadata(env.disk_file("p.img")).unwrap().len(),
        GIB
    );
    assert_eq!(env.host.btrfs_filesystems().len(), 1);
    assert!(env
        .host
        .mounts()
        .unwrap()
        .iter()
        .any(|m| m.target == pool.path && m.fstype == "btrfs"));
    // The same request again is the same pool.
    assert_eq!(env.growing_pool(&svc), pool);
    // A pool that can grow offers its max size.
    env.fill(&pool.path, GIB, 10);
    let cap = svc.pool_capacity(&pool).unwrap();
    assert_eq!(cap.available_bytes, 3 * GIB);
}

#[test]
fn btrfs_volumes_are_subvolumes_with_a_qgroup_limit() {
    let env = Env::new();
    let svc = env.start();
    let pool = env.growing_pool(&svc);
    let vol = svc
        .create_volume(CreateVolume {
            name: "v".into(),
            size_bytes: Some(512 * MIB),
            pool: Some("p".into()),
            ..CreateVolume::default()
        })
        .unwrap();
    assert_eq!(vol.driver, DriverKind::Btrfs);
    assert_eq!(vol.fs, None);
    let sub = pool.path.join("volumes").join(&vol.id);
    assert_eq!(env.host.qgroup_limit(&sub), Some(512 * MIB));
    svc.resize("v", GIB).unwrap();
    assert_eq!(env.host.qgroup_limit(&sub), Some(GIB));
    let mounted = svc
        .mount(
            "v",
            ballast_core::model::ConsumerRef::new(ballast_core::model::ConsumerKind::Cli, ""),
        )
        .unwrap();
    assert_eq!(mounted.mountpoint(), Some(sub.as_path()));
    std::fs::write(sub.join("f"), vec![7u8; 4096]).unwrap();
    let usage = svc.volume_usage(&mounted).unwrap();
    assert_eq!((usage.used_bytes, usage.total_bytes), (4096, GIB));
    assert_eq!(svc.volume_condition(&mounted), None);
    // Snapshot and clone are snapshots of the subvolume.
    let snap = svc
        .create_snapshot("v", "s", ballast_core::Wait::Block)
        .unwrap();
    let clone = svc
        .create_volume(CreateVolume {
            name: "c".into(),
            source: Some(ballast_core::model::CreateSource::Snapshot("s".into())),
            ..CreateVolume::default()
        })
        .unwrap();
    let csub = pool.path.join("volumes").join(&clone.id);
    assert_eq!(std::fs::read(csub.join("f")).unwrap(), vec![7u8; 4096]);
    assert_eq!(env.host.qgroup_limit(&csub), Some(GIB));
    assert!(pool.path.join("snapshots").join(&snap.id).is_dir());
    assert!(matches!(
        svc.create_volume(CreateVolume {
            name: "x".into(),
            fs: Some(FsType::Xfs),
            pool: Some("p".into()),
            ..CreateVolume::default()
        }),
        Err(Error::InvalidArgument(_))
    ));
    svc.delete_volume("v", true).unwrap();
    assert!(!sub.exists());
    // A pool with volumes or snapshots cannot go.
    assert!(matches!(svc.delete_pool("p"), Err(Error::Busy { .. })));
}

#[test]
fn the_watcher_adds_a_disk_file_then_stops_at_the_max_size() {
    let env = Env::new();
    let svc = env.start();
    let pool = env.growing_pool(&svc);
    env.fill(&pool.path, GIB, 59);
    assert_eq!(svc.remediate_pools(), vec![]);
    env.fill(&pool.path, GIB, 65);
    let done = svc.remediate_pools();
    let added = PoolDisk {
        path: env.disk_file("p-1.img"),
        kind: DiskKind::File,
        size_bytes: GIB,
    };
    assert_eq!(
        done,
        vec![Remediation::Added {
            pool: "p".into(),
            disk: added.clone()
        }]
    );
    let p = svc.get_pool("p").unwrap();
    assert_eq!(p.disks.len(), 2);
    assert_eq!(p.disks[1], added);
    assert_eq!(p.adding, None);
    assert_eq!(env.host.btrfs_filesystems()[0].len(), 2);
    assert_eq!(events(&svc, EventKind::Remediation, "p").len(), 1);
    assert_eq!(svc.stats().snapshot().remediations["p"], 1);
    // Still above: one more, then the max size; reported once.
    let _ = svc.remediate_pools();
    assert_eq!(svc.get_pool("p").unwrap().disks.len(), 3);
    for _ in 0..5 {
        assert_eq!(
            svc.remediate_pools(),
            vec![Remediation::AtMax { pool: "p".into() }]
        );
    }
    assert_eq!(events(&svc, EventKind::Critical, "p").len(), 1);
    // Below the watermark and back up: reported again.
    env.fill(&pool.path, GIB, 10);
    assert_eq!(svc.remediate_pools(), vec![]);
    env.fill(&pool.path, GIB, 90);
    let _ = svc.remediate_pools();
    assert_eq!(events(&svc, EventKind::Critical, "p").len(), 2);
}

#[test]
fn a_loop_pool_warns_once_per_crossing() {
    let env = Env::new();
    let svc = env.start();
    let dir = env.root().join("lp");
    svc.create_pool(CreatePool {
        name: "lp".into(),
        driver: Some(DriverKind::Loop),
        path: Some(dir.clone()),
        high_watermark: Some(70),
        ..CreatePool::default()
    })
    .unwrap();
    env.fill(&dir, 100 * GIB, 75);
    for _ in 0..3 {
        let r = svc.remediate_pools();
        assert!(
            r.contains(&Remediation::CannotGrow { pool: "lp".into() }),
            "{r:?}"
        );
    }
    assert_eq!(events(&svc, EventKind::Warning, "lp").len(), 1);
    env.fill(&dir, 100 * GIB, 50);
    let _ = svc.remediate_pools();
    env.fill(&dir, 100 * GIB, 80);
    let _ = svc.remediate_pools();
    assert_eq!(events(&svc, EventKind::Warning, "lp").len(), 2);
}

#[test]
fn a_failed_add_is_undone_and_retried_later() {
    let env = Env::new();
    let svc = env.start();
    let pool = env.growing_pool(&svc);
    env.fill(&pool.path, GIB, 90);
    env.host.fail_next("btrfs_device_add");
    let r = svc.remediate_pools();
    assert!(matches!(&r[..], [Remediation::Failed { .. }]), "{r:?}");
    let p = svc.get_pool("p").unwrap();
    assert_eq!((p.disks.len(), p.adding.clone()), (1, None));
    assert!(!env.disk_file("p-1.img").exists(), "the disk file is gone");
    // Not retried at once.
    assert_eq!(svc.remediate_pools(), vec![]);
    assert_eq!(events(&svc, EventKind::Warning, "p").len(), 1);
}

/// What a crash between the add's steps leaves: the record's `adding`, and
/// perhaps the file and the device in the filesystem.
fn interrupted_add(joined: bool) {
    let env = Env::new();
    let svc = env.start();
    let pool = env.growing_pool(&svc);
    let disk = PoolDisk {
        path: env.disk_file("p-1.img"),
        kind: DiskKind::File,
        size_bytes: GIB,
    };
    let f = std::fs::File::create(&disk.path).unwrap();
    f.set_len(GIB).unwrap();
    if joined {
        let dev = env.host.loop_attach(&disk.path).unwrap();
        env.host.btrfs_device_add(&dev.path, &pool.path).unwrap();
    }
    let mut record = svc.get_pool("p").unwrap();
    record.adding = Some(disk.clone());
    env.store
        .commit(Txn::new().put("pool/p", serde_json::to_vec(&record).unwrap()))
        .unwrap();
    drop(svc);

    let svc = env.open();
    let p = svc.get_pool("p").unwrap();
    assert_eq!(p.adding, None);
    let fs = &env.host.btrfs_filesystems()[0];
    if joined {
        assert_eq!(p.disks.len(), 2);
        assert_eq!(p.disks[1], disk);
        assert_eq!(fs.len(), 2);
        assert!(disk.path.exists());
    } else {
        assert_eq!(p.disks.len(), 1);
        assert_eq!(fs.len(), 1);
        assert!(!disk.path.exists(), "a disk that never joined is removed");
    }
    assert_eq!(events(&svc, EventKind::Reconcile, "p").len(), 1);
    let _ = pool;
}

#[test]
fn an_interrupted_add_that_joined_is_recorded_at_start() {
    interrupted_add(true);
}

#[test]
fn an_interrupted_add_that_did_not_join_is_discarded_at_start() {
    interrupted_add(false);
}

#[test]
fn an_interrupted_pool_create_is_undone_at_start() {
    let env = Env::new();
    let svc = env.start();
    let mut pool = Pool::new("p", DriverKind::Btrfs, env.root().join("pools/p/mnt"), 1.0);
    pool.state = ballast_core::model::PoolState::Creating;
    pool.disks.push(PoolDisk {
        path: env.disk_file("p.img"),
        kind: DiskKind::File,
        size_bytes: GIB,
    });
    std::fs::create_dir_all(env.root().join("disks")).unwrap();
    std::fs::File::create(env.disk_file("p.img"))
        .unwrap()
        .set_len(GIB)
        .unwrap();
    env.store
        .commit(Txn::new().put("pool/p", serde_json::to_vec(&pool).unwrap()))
        .unwrap();
    drop(svc);
    let svc = env.open();
    assert!(matches!(svc.get_pool("p"), Err(Error::NotFound { .. })));
    assert!(env.store.get("pool/p").unwrap().is_none());
    assert!(!env.disk_file("p.img").exists());
}

#[test]
fn bad_pools_are_refused_and_change_nothing() {
    let env = Env::new();
    let svc = env.start();
    env.growing_pool(&svc);
    let small = PathBuf::from("/dev/fake-small");
    env.host.add_block_device(&small, 64 * MIB);
    let big = PathBuf::from("/dev/fake-big");
    env.host.add_block_device(&big, GIB);
    let btrfs = |f: &dyn Fn(&mut CreatePool)| {
        let mut r = CreatePool {
            name: "x".into(),
            driver: Some(DriverKind::Btrfs),
            disk_file: Some((env.disk_file("x.img"), GIB)),
            ..CreatePool::default()
        };
        f(&mut r);
        svc.create_pool(r)
    };
    invalid(
        btrfs(&|r| {
            r.disk_file = None;
            r.disks = vec![small.clone()];
        }),
        "too small for btrfs",
    );
    invalid(
        btrfs(&|r| r.disk_file = Some((env.disk_file("x.img"), 64 * MIB))),
        "too small",
    );
    invalid(
        btrfs(&|r| r.disk_file = Some((env.disk_file("p.img"), GIB))),
        "exists",
    );
    invalid(
        btrfs(&|r| r.disk_file = Some((env.root().join("pools/p/mnt/x.img"), GIB))),
        "inside pool \"p\"",
    );
    invalid(btrfs(&|r| r.high_watermark = Some(0)), "between 1% and 99%");
    invalid(
        btrfs(&|r| r.high_watermark = Some(100)),
        "between 1% and 99%",
    );
    invalid(
        btrfs(&|r| r.max_size = Some(GIB / 2)),
        "below the pool's current size",
    );
    invalid(btrfs(&|r| r.grow_step = Some(0)), "greater than zero");
    invalid(
        btrfs(&|r| {
            r.disk_file = None;
            r.disks = vec![big.clone(), big.clone()];
        }),
        "given twice",
    );
    invalid(
        btrfs(&|r| r.spare_disks = vec![env.disk_file("p.img")]),
        "not a block device",
    );
    // The disk of another pool.
    svc.create_pool(CreatePool {
        name: "b".into(),
        driver: Some(DriverKind::Btrfs),
        disks: vec![big.clone()],
        ..CreatePool::default()
    })
    .unwrap();
    invalid(
        btrfs(&|r| {
            r.disk_file = None;
            r.disks = vec![big.clone()];
        }),
        "already in pool \"b\"",
    );
    assert_eq!(
        svc.list_pools()
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["b", "default", "p"]
    );
    assert!(!env.disk_file("x.img").exists());
    assert!(!env.root().join("pools/x").exists());
}

/// A btrfs snapshot or clone is charged its live exclusive bytes (never
/// more than its size), an original its size; admission and the capacity
/// figures use the charge, recomputed each time.
#[test]
fn cow_copies_are_charged_their_exclusive_bytes() {
    let env = Env::new();
    let svc = env.start();
    let pool = env.growing_pool(&svc);
    env.fill(&pool.path, GIB, 10);
    let create = |name: &str, size: u64| {
        svc.create_volume(CreateVolume {
            name: name.into(),
            size_bytes: Some(size),
            pool: Some("p".into()),
            ..CreateVolume::default()
        })
    };
    let v = create("v", 2 * GIB).unwrap();
    assert!(!v.cow);
    // 2 GiB more would not fit in the max size of 3 GiB...
    assert!(matches!(
        create("big", 2 * GIB),
        Err(Error::Capacity { .. })
    ));
    // ...but a snapshot of the 2 GiB volume holds one node of its own.
    let snap = svc
        .create_snapshot("v", "s", ballast_core::Wait::Block)
        .unwrap();
    assert!(snap.cow);
    let clone = svc
        .create_volume(CreateVolume {
            name: "c".into(),
            source: Some(ballast_core::model::CreateSource::Snapshot("s".into())),
            ..CreateVolume::default()
        })
        .unwrap();
    assert!(clone.cow);
    let cap = svc.pool_capacity(&pool).unwrap();
    assert_eq!(cap.provisioned_bytes, 6 * GIB);
    assert_eq!(cap.exclusive_bytes, 2 * GIB + 2 * (16 << 10));
    assert_eq!(cap.available_bytes, GIB - 2 * (16 << 10));
    // Writes make the clone's bytes its own: the next admission sees them.
    let csub = pool.path.join("volumes").join(&clone.id);
    env.host.set_exclusive(&csub, 900 * MIB);
    let cap = svc.pool_capacity(&pool).unwrap();
    assert_eq!(cap.exclusive_bytes, 2 * GIB + 900 * MIB + (16 << 10));
    assert!(matches!(
        create("w", 200 * MIB),
        Err(Error::Capacity { .. })
    ));
    create("w", 100 * MIB).unwrap();
    // A figure past the size (an uncommitted reserve) is capped at it, and
    // growing a clone's limit charges nothing until it is written.
    env.host.set_exclusive(&csub, 5 * GIB);
    assert_eq!(
        svc.pool_capacity(&pool).unwrap().exclusive_bytes,
        2 * GIB + 2 * GIB + 100 * MIB + (16 << 10)
    );
    svc.resize("c", 3 * GIB).unwrap();
    // A snapshot whose figure cannot be read is charged its full size.
    let ssub = pool.path.join("snapshots").join(&snap.id);
    std::fs::remove_dir_all(&ssub).unwrap();
    svc.delete_volume("v", true).unwrap();
    let cap = svc.pool_capacity(&pool).unwrap();
    assert_eq!(cap.provisioned_bytes, 2 * GIB + 3 * GIB + 100 * MIB);
    assert_eq!(cap.exclusive_bytes, 2 * GIB + 3 * GIB + 100 * MIB);
}

/// The overcommit ratio is checked wherever a pool is made or changed, and
/// a stored ratio out of range cannot make the available bytes overflow.
#[test]
fn overcommit_ratios_are_bounded() {
    let env = Env::new();
    let svc = env.start();
    for bad in [1e308, 0.0, -1.0, 100.5, f64::INFINITY, f64::NAN] {
        invalid(
            svc.create_pool(CreatePool {
                name: "x".into(),
                overcommit_ratio: Some(bad),
                ..CreatePool::default()
            }),
            "at most 100",
        );
        invalid(svc.set_overcommit("default", bad), "at most 100");
        invalid(
            svc.ensure_pool(Pool::new("y", DriverKind::Loop, env.root().join("y"), bad)),
            "at most 100",
        );
    }
    assert!(!env.root().join("y").exists());
    assert!(!env.root().join("pools/x").exists());
    // A record written before the check: the ratio counts as 100 at most.
    let mut old = svc.get_pool("default").unwrap();
    old.overcommit_ratio = 1e308;
    env.fill(&old.path, GIB, 0);
    let cap = svc.pool_capacity(&old).unwrap();
    assert!(cap.available_bytes <= cap.capacity_bytes * 100, "{cap:?}");
}

/// A pool path or disk file in a kernel filesystem is refused before
/// anything is made.
#[test]
fn pools_in_kernel_filesystems_are_refused() {
    let env = Env::new();
    let svc = env.start();
    let link = env.root().join("link");
    std::os::unix::fs::symlink("/sys", &link).unwrap();
    for (driver, path, want) in [
        (DriverKind::Dir, PathBuf::from("/proc/self"), "under /proc"),
        (DriverKind::Loop, PathBuf::from("/sys/x"), "under /sys"),
        (DriverKind::Loop, PathBuf::from("/dev/shm/x"), "under /dev"),
        (
            DriverKind::Dir,
            link.join("kernel"),
            "resolves to /sys/kernel",
        ),
        (DriverKind::Btrfs, PathBuf::from("/proc"), "under /proc"),
    ] {
        invalid(
            svc.create_pool(CreatePool {
                name: "x".into(),
                driver: Some(driver),
                path: Some(path),
                ..CreatePool::default()
            }),
            want,
        );
    }
    invalid(
        svc.create_pool(CreatePool {
            name: "x".into(),
            driver: Some(DriverKind::Btrfs),
            disk_file: Some(("/dev/shm/ballast-unit.img".into(), GIB)),
            ..CreatePool::default()
        }),
        "disk file /dev/shm/ballast-unit.img: is under /dev",
    );
    invalid(
        svc.ensure_pool(Pool::new("y", DriverKind::Dir, "/proc/self/y".into(), 1.0)),
        "under /proc",
    );
    assert!(!Path::new("/dev/shm/x").exists());
    assert_eq!(svc.list_pools().len(), 1);
}
