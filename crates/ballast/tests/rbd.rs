//! rbd pools on a real Ceph cluster (1 mon, 1 mgr, 1 OSD on loopback,
//! tests/common/ceph.rs): images, snapshots, clones, growth and deletion,
//! the rbd-fuse mapping surviving a kill -9 of ballast, and bad input.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::ceph::{require_ceph, Ceph};
use common::{mount_targets, Daemon};

fn prerequisites(test: &str) -> bool {
    common::require_root_loop(test) && require_ceph(test)
}

/// A Ceph with pool `rbd` and a daemon with an rbd pool `ceph` on it.
fn setup() -> (Ceph, Daemon) {
    let ceph = Ceph::start();
    ceph.create_pool("rbd");
    let d = Daemon::start();
    let conf = ceph.conf();
    d.ok(&[
        "pool",
        "create",
        "ceph",
        "--driver",
        "rbd",
        "--ceph-conf",
        conf.to_str().unwrap(),
        "--ceph-pool",
        "rbd",
    ]);
    (ceph, d)
}

fn images(ceph: &Ceph) -> Vec<String> {
    let out = ceph.rbd(&["ls", "rbd"]);
    assert!(out.status.success(), "rbd ls: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn image_size(ceph: &Ceph, image: &str) -> u64 {
    let out = ceph.rbd(&["info", "--format", "json", &format!("rbd/{image}")]);
    assert!(out.status.success(), "rbd info: {out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["size"].as_u64().unwrap()
}

fn rbd_fuse_pids() -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            if c.starts_with(b"rbd-fuse\0") {
                out.push(pid);
            }
        }
    }
    out
}

/// rbd-fuse helpers serving maps under `state`.
fn helpers_under(state: &Path) -> Vec<u32> {
    let needle = state.join("rbd-maps");
    rbd_fuse_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle.to_str().unwrap()))
                .unwrap_or(false)
        })
        .collect()
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mount_targets()
        .into_iter()
        .filter(|t| t.starts_with(dir))
        .collect()
}

fn vol_id(d: &Daemon, name: &str) -> String {
    d.json(&["volume", "inspect", name])["id"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn rbd_volumes_snapshot_clone_grow_and_delete_on_a_real_cluster() {
    if !prerequisites("rbd_volumes_snapshot_clone_grow_and_delete_on_a_real_cluster") {
        return;
    }
    let (ceph, d) = setup();
    let pool = d.json(&["pool", "inspect", "ceph"]);
    assert_eq!(pool["driver"], "rbd");
    assert!(
        pool.get("node").is_none(),
        "a shared pool is no node's: {pool}"
    );
    assert_eq!(pool["ceph"]["pool"], "rbd");

    d.ok(&["volume", "create", "v1", "--pool", "ceph", "--size", "64M"]);
    let id = vol_id(&d, "v1");
    assert_eq!(
        images(&ceph),
        vec![id.clone()],
        "the volume is an RBD image"
    );
    assert_eq!(image_size(&ceph, &id), 64 << 20);
    let info = ceph.rbd(&["info", &format!("rbd/{id}")]);
    let info = String::from_utf8_lossy(&info.stdout).to_string();
    for f in ["layering", "exclusive-lock", "object-map"] {
        assert!(info.contains(f), "image features lack {f}: {info}");
    }

    let mp = PathBuf::from(d.ok(&["volume", "mount", "v1"]).trim());
    std::fs::write(mp.join("data"), b"written through rbd-fuse").unwrap();
    assert_eq!(
        helpers_under(&d.state).len(),
        1,
        "one rbd-fuse helper maps the volume"
    );
    let watchers = ceph.rbd(&["status", &format!("rbd/{id}")]);
    assert!(
        String::from_utf8_lossy(&watchers.stdout).contains("watcher="),
        "the mapped image has a watcher: {watchers:?}"
    );

    d.ok(&["volume", "snapshot", "v1", "s1"]);
    let snaps = ceph.rbd(&["snap", "ls", &format!("rbd/{id}")]);
    assert!(snaps.status.success());
    assert!(
        String::from_utf8_lossy(&snaps.stdout).lines().count() >= 2,
        "an RBD snapshot exists: {snaps:?}"
    );
    d.ok(&["volume", "create", "c1", "--from-snapshot", "s1"]);
    let cid = vol_id(&d, "c1");
    assert!(images(&ceph).contains(&cid));
    let parent = ceph.rbd(&["info", &format!("rbd/{cid}")]);
    assert!(
        !String::from_utf8_lossy(&parent.stdout).contains("parent:"),
        "the clone is flattened: {parent:?}"
    );
    let cmp = PathBuf::from(d.ok(&["volume", "mount", "c1"]).trim());
    assert_eq!(
        std::fs::read(cmp.join("data")).unwrap(),
        b"written through rbd-fuse",
        "the clone holds the snapshot's data"
    );
    d.ok(&["volume", "unmount", "c1"]);
    // A clone of the mounted volume itself (through a temporary snapshot,
    // gone afterwards).
    d.ok(&["volume", "create", "c2", "--from-volume", "v1"]);
    let c2mp = PathBuf::from(d.ok(&["volume", "mount", "c2"]).trim());
    assert_eq!(
        std::fs::read(c2mp.join("data")).unwrap(),
        b"written through rbd-fuse"
    );
    d.ok(&["volume", "unmount", "c2"]);
    d.ok(&["volume", "rm", "c2"]);
    let snaps = ceph.rbd(&["snap", "ls", &format!("rbd/{id}")]);
    assert!(
        !String::from_utf8_lossy(&snaps.stdout).contains("ballast-clone-"),
        "the clone's temporary snapshot is gone: {snaps:?}"
    );

    // Grow: the image grows at once; ext4 here grows at the next mount.
    d.ok(&["volume", "resize", "v1", "--size", "128M"]);
    assert_eq!(image_size(&ceph, &id), 128 << 20);
    d.ok(&["volume", "unmount", "v1"]);
    let mp = PathBuf::from(d.ok(&["volume", "mount", "v1"]).trim());
    let st = nix::sys::statvfs::statvfs(&mp).unwrap();
    let bytes = st.blocks() * st.fragment_size();
    assert!(
        bytes > 100 << 20,
        "the filesystem grew to the image: {bytes}"
    );
    assert_eq!(
        std::fs::read(mp.join("data")).unwrap(),
        b"written through rbd-fuse"
    );
    d.ok(&["volume", "unmount", "v1"]);
    assert!(
        helpers_under(&d.state).is_empty(),
        "unmount ends the helper"
    );
    assert!(mounts_under(&d.state).is_empty(), "no FUSE mount is left");

    d.ok(&["volume", "rm", "c1"]);
    d.ok(&["snapshot", "rm", "s1"]);
    d.ok(&["volume", "rm", "v1"]);
    assert!(images(&ceph).is_empty(), "deleting removes the images");
    d.assert_no_leftovers();
}

#[test]
fn kill_9_of_ballast_leaves_rbd_io_running_and_the_restart_adopts_every_mapping() {
    if !prerequisites(
        "kill_9_of_ballast_leaves_rbd_io_running_and_the_restart_adopts_every_mapping",
    ) {
        return;
    }
    let (_ceph, mut d) = setup();
    let mut mps = Vec::new();
    for i in 0..10 {
        let name = format!("k{i}");
        d.ok(&["volume", "create", &name, "--pool", "ceph", "--size", "32M"]);
        mps.push(PathBuf::from(d.ok(&["volume", "mount", &name]).trim()));
    }
    let before = helpers_under(&d.state);
    assert_eq!(before.len(), 10);
    d.kill9();
    // I/O goes on with ballast gone: the mapping is the helper's and the
    // kernel's.
    for (i, mp) in mps.iter().enumerate() {
        let f = mp.join("after-kill");
        std::fs::write(&f, format!("volume {i}")).unwrap();
        let file = std::fs::File::open(&f).unwrap();
        file.sync_all().unwrap();
    }
    d.restart();
    let after = helpers_under(&d.state);
    assert_eq!(
        sorted(after),
        sorted(before),
        "the restart adopted the running helpers instead of mapping again"
    );
    for (i, mp) in mps.iter().enumerate() {
        let v = d.json(&["volume", "inspect", &format!("k{i}")]);
        assert_eq!(v["state"], "mounted", "k{i} is still mounted: {v}");
        assert_eq!(
            v["mountpoint"].as_str().map(PathBuf::from).as_ref(),
            Some(mp)
        );
        assert_eq!(
            std::fs::read_to_string(mp.join("after-kill")).unwrap(),
            format!("volume {i}")
        );
    }
    for i in 0..10 {
        d.ok(&["volume", "unmount", &format!("k{i}")]);
        d.ok(&["volume", "rm", &format!("k{i}")]);
    }
    assert!(helpers_under(&d.state).is_empty());
    d.assert_no_leftovers();
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort();
    v
}

#[test]
fn bad_ceph_settings_fail_clearly_and_quickly_and_make_no_pool() {
    if !prerequisites("bad_ceph_settings_fail_clearly_and_quickly_and_make_no_pool") {
        return;
    }
    let ceph = Ceph::start();
    ceph.create_pool("rbd");
    let d = Daemon::start();
    let scratch = d.dir.path().to_path_buf();
    let conf = ceph.conf();
    let conf = conf.to_str().unwrap();

    let create = |extra: &[&str]| {
        let mut args = vec!["pool", "create", "bad", "--driver", "rbd"];
        args.extend_from_slice(extra);
        let t = Instant::now();
        let err = d.fails(&args);
        (err, t.elapsed())
    };
    // A ceph.conf that is not there.
    let (err, _) = create(&[
        "--ceph-conf",
        "/nonexistent/ceph.conf",
        "--ceph-pool",
        "rbd",
    ]);
    assert!(err.contains("/nonexistent/ceph.conf"), "{err}");

    // Monitors nobody answers at: clear, and within the 5 s the issue allows
    // (plus the CLI's own start).
    let dead = scratch.join("dead.conf");
    let text = std::fs::read_to_string(conf).unwrap();
    let mon = ceph.mon_addr();
    let unreachable = text.replace(&format!("{}:{}", mon.ip(), mon.port()), "127.0.0.1:1");
    assert_ne!(unreachable, text, "the conf names the monitor as {mon}");
    std::fs::write(&dead, unreachable).unwrap();
    let (err, took) = create(&["--ceph-conf", dead.to_str().unwrap(), "--ceph-pool", "rbd"]);
    assert!(err.contains("no monitor answered"), "{err}");
    assert!(
        took < Duration::from_secs(8),
        "unreachable monitors took {took:?}"
    );

    // A keyring with a key the monitors do not know.
    let bad_key = scratch.join("bad.keyring");
    std::fs::write(
        &bad_key,
        "[client.admin]\n\tkey = AQBG4RVr6759GBAAJT6ydZbOmQP4FkPbecfIqA==\n",
    )
    .unwrap();
    let (err, _) = create(&[
        "--ceph-conf",
        conf,
        "--ceph-pool",
        "rbd",
        "--keyring",
        bad_key.to_str().unwrap(),
    ]);
    assert!(
        err.contains("refused the key") || err.contains("keyring"),
        "{err}"
    );

    // A pool the cluster does not have.
    let (err, _) = create(&["--ceph-conf", conf, "--ceph-pool", "nosuchpool"]);
    assert!(
        err.contains("nosuchpool") && err.contains("does not exist"),
        "{err}"
    );

    // Flags of other drivers, and ceph flags on other drivers.
    let (err, _) = create(&[
        "--ceph-conf",
        conf,
        "--ceph-pool",
        "rbd",
        "--path",
        "/tmp/x",
    ]);
    assert!(err.contains("--path"), "{err}");
    let err = d.fails(&[
        "pool",
        "create",
        "bad",
        "--driver",
        "loop",
        "--ceph-conf",
        conf,
        "--ceph-pool",
        "rbd",
    ]);
    assert!(err.contains("rbd pools only"), "{err}");

    let pools = d.json(&["pool", "ls"]);
    assert!(
        !pools.to_string().contains("\"bad\""),
        "no failed create left a pool record: {pools}"
    );
}

#[test]
fn an_image_deleted_behind_ballasts_back_fails_the_mount_and_leaves_no_mapping() {
    if !prerequisites("an_image_deleted_behind_ballasts_back_fails_the_mount_and_leaves_no_mapping")
    {
        return;
    }
    let (ceph, d) = setup();
    d.ok(&[
        "volume", "create", "gone", "--pool", "ceph", "--size", "32M",
    ]);
    let id = vol_id(&d, "gone");
    let rm = ceph.rbd(&["rm", &format!("rbd/{id}")]);
    assert!(rm.status.success(), "{rm:?}");
    let err = d.fails(&["volume", "mount", "gone"]);
    assert!(err.contains(&id) || err.contains("gone"), "{err}");
    assert!(helpers_under(&d.state).is_empty(), "no helper is left");
    assert!(mounts_under(&d.state).is_empty(), "no mount is left");
    assert!(
        common::loop_devices()
            .iter()
            .all(|(_, f)| !f.starts_with(&d.state)),
        "no loop device is left"
    );
    let v = d.json(&["volume", "inspect", "gone"]);
    assert_eq!(v["state"], "available", "{v}");
    // Deleting the record of a gone image works.
    d.ok(&["volume", "rm", "gone"]);
}

/// The CSI path on an rbd pool, as csi-sanity drives it: a topology-free
/// volume (any node may stage it), stage and publish with data kept across
/// a second stage, a snapshot and a volume from it, an expansion, and
/// deletes that leave no image behind.
#[test]
fn csi_lifecycle_on_an_rbd_pool() {
    use ballast_csi_proto::v1 as csi;
    use csi::controller_client::ControllerClient;
    use csi::node_client::NodeClient;
    use csi::volume_capability::access_mode::Mode;
    use csi::volume_capability::{AccessMode, AccessType, MountVolume};
    if !prerequisites("csi_lifecycle_on_an_rbd_pool") {
        return;
    }
    let (ceph, d) = setup();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cap = |mode: Mode| csi::VolumeCapability {
        access_mode: Some(AccessMode { mode: mode as i32 }),
        access_type: Some(AccessType::Mount(MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
    };
    let params: std::collections::HashMap<String, String> =
        [("pool".to_string(), "ceph".to_string())].into();
    let co = d.dir.path().join("co");
    let (staging, target) = (co.join("staging"), co.join("target"));
    std::fs::create_dir_all(&staging).unwrap();
    rt.block_on(async {
        let ch = common::csi_channel(&d.run.join("csi.sock")).await;
        let (mut ctl, mut node) = (ControllerClient::new(ch.clone()), NodeClient::new(ch));
        let v = ctl
            .create_volume(csi::CreateVolumeRequest {
                name: "pvc-rbd".into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 64 << 20,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![cap(Mode::SingleNodeWriter)],
                parameters: params.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert!(
            v.accessible_topology.is_empty(),
            "shared: no topology: {v:?}"
        );
        let id = v.volume_id.clone();
        // No block volumes here, so no capacity for them.
        let block = csi::VolumeCapability {
            access_mode: Some(AccessMode {
                mode: Mode::SingleNodeWriter as i32,
            }),
            access_type: Some(AccessType::Block(Default::default())),
        };
        for (caps, some) in [
            (vec![cap(Mode::SingleNodeWriter)], true),
            (vec![block], false),
        ] {
            let available = ctl
                .get_capacity(csi::GetCapacityRequest {
                    volume_capabilities: caps,
                    parameters: params.clone(),
                    accessible_topology: None,
                })
                .await
                .unwrap()
                .into_inner()
                .available_capacity;
            assert_eq!(available > 0, some, "{available}");
        }
        let err = ctl
            .controller_publish_volume(csi::ControllerPublishVolumeRequest {
                volume_id: id.clone(),
                node_id: "nowhere".into(),
                volume_capability: Some(cap(Mode::SingleNodeWriter)),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound, "{err}");
        let stage = |path: &Path| csi::NodeStageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: path.display().to_string(),
            volume_capability: Some(cap(Mode::SingleNodeWriter)),
            ..Default::default()
        };
        let publish = |st: &Path, t: &Path| csi::NodePublishVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: st.display().to_string(),
            target_path: t.display().to_string(),
            volume_capability: Some(cap(Mode::SingleNodeWriter)),
            ..Default::default()
        };
        node.node_stage_volume(stage(&staging)).await.unwrap();
        // Repeated: the same answer, no second mapping.
        node.node_stage_volume(stage(&staging)).await.unwrap();
        assert_eq!(helpers_under(&d.state).len(), 1);
        node.node_publish_volume(publish(&staging, &target))
            .await
            .unwrap();
        {
            use std::io::Write;
            let mut f = std::fs::File::create(target.join("hello")).unwrap();
            f.write_all(b"persistent").unwrap();
            f.sync_all().unwrap();
        }
        let snap = ctl
            .create_snapshot(csi::CreateSnapshotRequest {
                source_volume_id: id.clone(),
                name: "snap-rbd".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert!(snap.ready_to_use);
        node.node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: id.clone(),
            target_path: target.display().to_string(),
        })
        .await
        .unwrap();
        node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: id.clone(),
            staging_target_path: staging.display().to_string(),
        })
        .await
        .unwrap();
        assert!(helpers_under(&d.state).is_empty(), "unstage unmaps");

        let grown = ctl
            .controller_expand_volume(csi::ControllerExpandVolumeRequest {
                volume_id: id.clone(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 128 << 20,
                    limit_bytes: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(grown.capacity_bytes, 128 << 20);

        let from_snap = ctl
            .create_volume(csi::CreateVolumeRequest {
                name: "pvc-rbd-restore".into(),
                capacity_range: Some(csi::CapacityRange {
                    required_bytes: 64 << 20,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![cap(Mode::SingleNodeWriter)],
                parameters: params.clone(),
                volume_content_source: Some(csi::VolumeContentSource {
                    r#type: Some(csi::volume_content_source::Type::Snapshot(
                        csi::volume_content_source::SnapshotSource {
                            snapshot_id: snap.snapshot_id.clone(),
                        },
                    )),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        let rid = from_snap.volume_id.clone();
        let st2 = co.join("staging-2");
        std::fs::create_dir_all(&st2).unwrap();
        node.node_stage_volume(csi::NodeStageVolumeRequest {
            volume_id: rid.clone(),
            ..stage(&st2)
        })
        .await
        .unwrap();
        assert_eq!(std::fs::read(st2.join("hello")).unwrap(), b"persistent");
        node.node_unstage_volume(csi::NodeUnstageVolumeRequest {
            volume_id: rid.clone(),
            staging_target_path: st2.display().to_string(),
        })
        .await
        .unwrap();

        for vid in [rid, id.clone()] {
            if vid == id {
                ctl.delete_snapshot(csi::DeleteSnapshotRequest {
                    snapshot_id: snap.snapshot_id.clone(),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            ctl.delete_volume(csi::DeleteVolumeRequest {
                volume_id: vid.clone(),
                ..Default::default()
            })
            .await
            .unwrap();
            // Repeated: still fine.
            ctl.delete_volume(csi::DeleteVolumeRequest {
                volume_id: vid,
                ..Default::default()
            })
            .await
            .unwrap();
        }
    });
    assert!(images(&ceph).is_empty(), "{:?}", images(&ceph));
    d.assert_no_leftovers();
}

#[test]
fn a_monitor_restart_during_an_attach_delays_it_and_nothing_more() {
    if !prerequisites("a_monitor_restart_during_an_attach_delays_it_and_nothing_more") {
        return;
    }
    let (mut ceph, d) = setup();
    d.ok(&["volume", "create", "m", "--pool", "ceph", "--size", "32M"]);
    ceph.stop_mon();
    let d = std::sync::Arc::new(d);
    let attach = {
        let d = d.clone();
        std::thread::spawn(move || d.cli(&["volume", "mount", "m"]))
    };
    std::thread::sleep(Duration::from_secs(2));
    ceph.start_mon();
    let out = attach.join().unwrap();
    assert!(
        out.status.success(),
        "the mount waits out a monitor restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mp = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    std::fs::write(mp.join("f"), b"x").unwrap();
    d.ok(&["volume", "unmount", "m"]);
    d.ok(&["volume", "rm", "m"]);
    assert!(helpers_under(&d.state).is_empty());
}

/// A map that dies half-way (kill -9 at each step of a stage) leaves no
/// helper, mount or loop device once the restart reconciled it, and the
/// volume mounts normally afterwards.
#[test]
fn kill_9_at_each_stage_step_of_an_rbd_volume_leaks_no_mapping() {
    if !prerequisites("kill_9_at_each_stage_step_of_an_rbd_volume_leaks_no_mapping") {
        return;
    }
    let (_ceph, mut d) = setup();
    d.ok(&["volume", "create", "c", "--pool", "ceph", "--size", "32M"]);
    for fp in [
        "stage.after_intent",
        "stage.after_attach",
        "stage.after_format",
        "stage.after_mount",
    ] {
        d.crash_at(fp, &["volume", "mount", "c"]);
        let v = d.json(&["volume", "inspect", "c"]);
        if v["state"] == "mounted" {
            // Rolled forward: a whole mapping, adopted.
            assert_eq!(helpers_under(&d.state).len(), 1, "{fp}: {v}");
            d.ok(&["volume", "unmount", "c"]);
        }
        assert!(helpers_under(&d.state).is_empty(), "{fp}: a helper leaked");
        assert!(mounts_under(&d.state).is_empty(), "{fp}: a mount leaked");
        assert!(
            common::loop_devices()
                .iter()
                .all(|(_, f)| !f.starts_with(&d.state)),
            "{fp}: a loop device leaked"
        );
        let mp = PathBuf::from(d.ok(&["volume", "mount", "c"]).trim());
        std::fs::write(mp.join(fp), b"ok").unwrap();
        d.ok(&["volume", "unmount", "c"]);
    }
    d.ok(&["volume", "rm", "c"]);
    d.assert_no_leftovers();
}

/// A mapping helper that stops answering (SIGSTOP: every request on its
/// FUSE mount then waits) is found by the watchdog, killed and lazily
/// unmounted, with a warning event; nothing in ballast waits on it, the
/// volume unmounts and maps again.
#[test]
fn a_hung_rbd_fuse_helper_is_killed_by_the_watchdog_and_the_volume_maps_again() {
    if !prerequisites("a_hung_rbd_fuse_helper_is_killed_by_the_watchdog_and_the_volume_maps_again")
    {
        return;
    }
    let (_ceph, d) = setup();
    d.ok(&["volume", "create", "h", "--pool", "ceph", "--size", "32M"]);
    d.ok(&["volume", "mount", "h"]);
    let helper = match helpers_under(&d.state).as_slice() {
        [p] => *p,
        other => panic!("one helper expected: {other:?}"),
    };
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::path::Path::new(&format!("/proc/{helper}")).exists() {
        // A stopped process that was SIGKILLed is a zombie until reaped.
        let stat = std::fs::read_to_string(format!("/proc/{helper}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hung helper was never killed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let events = d.ok(&["events", "--limit", "200"]);
    assert!(events.contains("stopped answering"), "{events}");
    d.ok(&["volume", "unmount", "h"]);
    assert!(helpers_under(&d.state).is_empty());
    assert!(
        mounts_under(&d.state.join("rbd-maps")).is_empty(),
        "the FUSE mount is gone"
    );
    let mp = PathBuf::from(d.ok(&["volume", "mount", "h"]).trim());
    std::fs::write(mp.join("again"), b"ok").unwrap();
    d.ok(&["volume", "unmount", "h"]);
    d.ok(&["volume", "rm", "h"]);
    d.assert_no_leftovers();
}
