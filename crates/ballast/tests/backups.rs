//! Backups to object storage and restores: a directory target and Ceph's
//! RADOS Gateway (real S3) on a throwaway Ceph cluster; loop, dir, btrfs
//! and rbd volumes; incremental uploads measured; restores on another test
//! host (network namespaces, a real etcd); bad credentials, a missing
//! bucket, a gateway killed mid-upload, missing chunks, and kill -9 at
//! every backup and restore failpoint.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::ceph::{require_ceph, Ceph};
use common::etcd::{require_etcd, EtcdCluster};
use common::netns::{require_netns, Net};
use common::{eventually, require_root_loop, require_tool, sha256, Daemon};

/// `mib` MiB of random data at `offset_mib` of file `name` (created if
/// need be, never truncated); synced.
fn write_random_at(dir: &Path, name: &str, offset_mib: u64, mib: usize, seed: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut rng = fastrand::Rng::with_seed(seed);
    for i in 0..mib as u64 {
        rng.fill(&mut buf);
        f.write_all_at(&buf, (offset_mib + i) << 20).unwrap();
    }
    f.sync_all().unwrap();
}

fn mount(d: &Daemon, vol: &str) -> PathBuf {
    PathBuf::from(d.ok(&["volume", "mount", vol]).trim())
}

/// The id of the newest backup of `vol`.
fn newest(d: &Daemon, vol: &str) -> serde_json::Value {
    let list = d.json(&["backup", "ls", vol]);
    list.as_array()
        .and_then(|l| l.last())
        .cloned()
        .unwrap_or_else(|| panic!("no backup of {vol}: {list}"))
}

fn id_of(b: &serde_json::Value) -> String {
    b["id"].as_str().unwrap().to_string()
}

/// Every file, directory and link under `root`: path, mode, link target,
/// size and (for files) sha256.
fn tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if md.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else {
                format!("{} {}", md.len(), sha256(&p))
            };
            out.push(format!(
                "{rel} {:o} {}:{} {what}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid()
            ));
        }
    }
    out.sort();
    out
}

/// Files under a directory target (chunks and manifests).
fn target_files(dir: &Path, sub: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join(sub)];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

fn path_target(d: &Daemon) -> PathBuf {
    let dir = d.dir.path().join("target");
    std::fs::create_dir_all(&dir).unwrap();
    d.ok(&[
        "backup",
        "target",
        "add",
        "t",
        "--path",
        dir.to_str().unwrap(),
    ]);
    dir
}

#[test]
fn a_directory_target_backs_up_and_restores_loop_dir_and_btrfs_volumes() {
    let test = "a_directory_target_backs_up_and_restores_loop_dir_and_btrfs_volumes";
    if !require_root_loop(test) || !require_tool(test, "mkfs.btrfs") {
        return;
    }
    let d = Daemon::start();
    let dir = path_target(&d);

    // loop, backed up while mounted and written to: the filesystem is
    // frozen for the snapshot, so the copy is consistent.
    d.ok(&["volume", "create", "lv", "--size", "256M"]);
    let mp = mount(&d, "lv");
    write_random_at(&mp, "f", 0, 32, 1);
    let sum = sha256(&mp.join("f"));
    let out = d.ok(&["backup", "create", "lv"]);
    assert!(out.contains("sent"), "{out}");
    let b = newest(&d, "lv");
    assert_eq!(b["volume"], "lv");
    assert_eq!(b["driver"], "loop");
    assert!(b["uploaded_bytes"].as_u64().unwrap() >= 32 << 20, "{b}");
    // Zeros are not stored: 256 MiB with 32 MiB of data.
    assert!(b["uploaded_bytes"].as_u64().unwrap() < 64 << 20, "{b}");
    let shown = d.ok(&["backup", "inspect", &id_of(&b)]);
    assert!(
        shown.contains(&id_of(&b)) && shown.contains("lv (loop)"),
        "{shown}"
    );
    d.ok(&["volume", "unmount", "lv"]);
    d.ok(&["backup", "restore", &id_of(&b), "--to", "lv-r"]);
    let v = d.json(&["volume", "inspect", "lv-r"]);
    assert_eq!(v["size_bytes"], 256u64 << 20);
    assert_eq!(v["fs"], "ext4");
    assert_eq!(sha256(&mount(&d, "lv-r").join("f")), sum);
    d.ok(&["volume", "unmount", "lv-r"]);
    // The backup's snapshot is gone.
    let snaps = d.json(&["snapshot", "ls"]);
    assert_eq!(snaps.as_array().unwrap().len(), 0, "{snaps}");

    // dir: a tree with modes, owners, links and a nested directory.
    let dpool = d.dir.path().join("dpool");
    std::fs::create_dir_all(&dpool).unwrap();
    d.ok(&[
        "pool",
        "create",
        "dp",
        "--driver",
        "dir",
        "--path",
        dpool.to_str().unwrap(),
    ]);
    d.ok(&["volume", "create", "dv", "--pool", "dp"]);
    let mp = mount(&d, "dv");
    std::fs::create_dir_all(mp.join("a/b")).unwrap();
    std::fs::write(mp.join("a/b/small"), b"hello").unwrap();
    write_random_at(&mp, "big", 0, 3, 2);
    std::os::unix::fs::symlink("a/b/small", mp.join("link")).unwrap();
    std::os::unix::fs::chown(mp.join("a/b/small"), Some(1234), Some(5678)).unwrap();
    std::fs::set_permissions(
        mp.join("big"),
        std::os::unix::fs::PermissionsExt::from_mode(0o640),
    )
    .unwrap();
    let before = tree(&mp);
    d.ok(&["backup", "create", "dv"]);
    let b = newest(&d, "dv");
    assert_eq!(b["driver"], "dir");
    // Into a pool of images it cannot go; nothing is made.
    let err = d.fails(&["backup", "restore", &id_of(&b), "--to", "dv-bad"]);
    assert!(err.contains("directory tree"), "{err}");
    assert!(!d.cli(&["volume", "inspect", "dv-bad"]).status.success());
    d.ok(&[
        "backup",
        "restore",
        &id_of(&b),
        "--to",
        "dv-r",
        "--pool",
        "dp",
    ]);
    assert_eq!(tree(&mount(&d, "dv-r")), before);

    // btrfs: the snapshot is a read-only subvolume; restored into another
    // subvolume of the pool.
    let disk = d.dir.path().join("bt.disk");
    d.ok(&[
        "pool",
        "create",
        "bt",
        "--driver",
        "btrfs",
        "--disk-file",
        disk.to_str().unwrap(),
        "--disk-size",
        "1G",
    ]);
    d.ok(&["volume", "create", "bv", "--pool", "bt", "--size", "256M"]);
    let mp = mount(&d, "bv");
    std::fs::create_dir_all(mp.join("x/y")).unwrap();
    write_random_at(&mp.join("x/y"), "data", 0, 8, 3);
    std::os::unix::fs::symlink("/nowhere", mp.join("dangling")).unwrap();
    let before = tree(&mp);
    d.ok(&["backup", "create", "bv"]);
    let b = newest(&d, "bv");
    assert_eq!(b["driver"], "btrfs");
    d.ok(&[
        "backup",
        "restore",
        &id_of(&b),
        "--to",
        "bv-r",
        "--pool",
        "bt",
    ]);
    assert_eq!(tree(&mount(&d, "bv-r")), before);

    // Deleting every backup leaves no chunk on the target.
    let all = d.json(&["backup", "ls"]);
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    assert!(!target_files(&dir, "chunks").is_empty());
    for b in all.as_array().unwrap() {
        d.ok(&["backup", "rm", &id_of(b)]);
    }
    assert_eq!(d.json(&["backup", "ls"]).as_array().unwrap().len(), 0);
    assert_eq!(target_files(&dir, "chunks"), Vec::<PathBuf>::new());
    assert_eq!(target_files(&dir, "manifests"), Vec::<PathBuf>::new());
    for v in ["dv", "dv-r", "bv", "bv-r"] {
        d.ok(&["volume", "unmount", v]);
    }
}

#[test]
fn bad_backup_requests_fail_clearly_and_change_nothing() {
    if !require_root_loop("bad_backup_requests_fail_clearly_and_change_nothing") {
        return;
    }
    let d = Daemon::start();
    // No target yet.
    d.ok(&["volume", "create", "v", "--size", "64M"]);
    let err = d.fails(&["backup", "create", "v"]);
    assert!(err.contains("no backup target"), "{err}");
    let err = d.fails(&["backup", "target", "add", "t", "--path", "relative/dir"]);
    assert!(err.contains("absolute"), "{err}");
    let err = d.fails(&["backup", "target", "add", "t", "--path", "/nonexistent/dir"]);
    assert!(err.contains("not a directory"), "{err}");
    let err = d.fails(&["backup", "target", "add", "bad/name", "--path", "/tmp"]);
    assert!(err.contains("invalid argument"), "{err}");
    let err = d.fails(&[
        "backup",
        "target",
        "add",
        "s",
        "--s3",
        "http://127.0.0.1:1",
        "--bucket",
        "NO_SUCH",
    ]);
    assert!(err.contains("bucket"), "{err}");
    let err = d.fails(&[
        "backup", "target", "add", "s", "--s3", "ftp://x", "--bucket", "abc",
    ]);
    assert!(err.contains("http"), "{err}");
    // Unknown fields are refused by name.
    let (code, body) = d.http(
        "POST",
        "/v1/backup-targets",
        br#"{"name":"t","path":"/tmp","bogus":1}"#,
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.to_string().contains("bogus"), "{body}");
    assert_eq!(
        d.json(&["backup", "target", "ls"])
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let dir = path_target(&d);
    // The same target again is fine; another under its name is not.
    d.ok(&[
        "backup",
        "target",
        "add",
        "t",
        "--path",
        dir.to_str().unwrap(),
    ]);
    let err = d.fails(&["backup", "target", "add", "t", "--path", "/tmp"]);
    assert!(err.contains("already exists"), "{err}");
    let err = d.fails(&["backup", "create", "nosuch"]);
    assert!(err.contains("not found"), "{err}");
    for bad in ["0s", "1x", "-1h", "1.5h"] {
        let err = d.fails(&["backup", "create", "v", &format!("--deadline={bad}")]);
        assert!(err.contains("invalid argument"), "{bad}: {err}");
        let err = d.fails(&[
            "backup",
            "create",
            "v",
            &format!("--every={bad}"),
            "--keep",
            "2",
        ]);
        assert!(err.contains("invalid argument"), "{bad}: {err}");
    }
    let err = d.fails(&["backup", "create", "v", "--every", "1h", "--keep", "0"]);
    assert!(err.contains("keep"), "{err}");
    let err = d.fails(&[
        "backup",
        "restore",
        "20260101T000000Z-00000000",
        "--to",
        "r",
    ]);
    assert!(err.contains("not found"), "{err}");
    let err = d.fails(&["backup", "inspect", "../x"]);
    assert!(err.contains("invalid argument"), "{err}");
    for bad in [
        vec!["--to", "bad/name"],
        vec!["--to", "ok", "--node", "x\ty"],
        vec!["--to", "ok", "--pool", ".."],
    ] {
        let mut args = vec!["backup", "restore", "20260101T000000Z-00000000"];
        args.extend(bad.iter().copied());
        let err = d.fails(&args);
        assert!(err.contains("invalid argument"), "{bad:?}: {err}");
    }
    let err = d.fails(&[
        "backup",
        "target",
        "add",
        "k",
        "--s3",
        "http://127.0.0.1:1",
        "--bucket",
        "abc",
        "--access-key",
        "a",
        "--secret-key-file",
        "/nonexistent/secret",
    ]);
    assert!(err.contains("/nonexistent/secret"), "{err}");
    // Nothing of the above made a run, a backup, a schedule or a volume.
    assert_eq!(d.json(&["backup", "ls"]).as_array().unwrap().len(), 0);
    assert_eq!(
        d.json(&["backup", "schedules"]).as_array().unwrap().len(),
        0
    );
    let (_, runs) = d.http("GET", "/v1/backup-runs", b"");
    assert_eq!(runs.as_array().unwrap().len(), 0, "{runs}");
    let vols = d.json(&["volume", "ls"]);
    assert_eq!(vols.as_array().unwrap().len(), 1, "{vols}");
    // A target a schedule uses stays.
    d.ok(&["backup", "create", "v", "--every", "1h", "--keep", "2"]);
    let err = d.fails(&["backup", "target", "rm", "t"]);
    assert!(err.contains("schedule"), "{err}");
}

#[test]
fn a_schedule_backs_up_again_and_keeps_only_the_newest() {
    if !require_root_loop("a_schedule_backs_up_again_and_keeps_only_the_newest") {
        return;
    }
    let d = Daemon::start();
    let dir = path_target(&d);
    d.ok(&["volume", "create", "v", "--size", "64M"]);
    let mp = mount(&d, "v");
    write_random_at(&mp, "f", 0, 4, 9);
    d.ok(&["backup", "create", "v", "--every", "2s", "--keep", "2"]);
    // Runs every 2 s; after a few, two are kept.
    let seen = eventually("four scheduled runs", Duration::from_secs(60), || {
        let log = d.log();
        let n = log.matches("expired by retention").count();
        (n >= 2).then_some(n).ok_or(n)
    });
    assert!(seen >= 2);
    let list = d.json(&["backup", "ls", "v"]);
    let n = list.as_array().unwrap().len();
    assert!((2..=3).contains(&n), "kept {n}: {list}");
    d.ok(&["backup", "unschedule", "v"]);
    // Again: nothing to stop, fine; an unknown volume is not.
    d.ok(&["backup", "unschedule", "v"]);
    let err = d.fails(&["backup", "unschedule", "nosuch"]);
    assert!(err.contains("not found"), "{err}");
    // The last run (if one was in flight) ends, then retention holds at 2.
    eventually("retention settles at 2", Duration::from_secs(30), || {
        let n = d.json(&["backup", "ls", "v"]).as_array().unwrap().len();
        (n == 2).then_some(()).ok_or(n)
    });
    // Unreferenced chunks were collected: only the kept backups' remain
    // (the data did not change, so they share them).
    let chunks = target_files(&dir, "chunks").len();
    assert!(chunks <= 8, "{chunks} chunks for 4 MiB of data");
    let events = d.ok(&["events", "--limit", "100"]);
    assert!(events.contains("backup"), "{events}");
    d.ok(&["volume", "unmount", "v"]);
}

#[test]
fn kill_9_at_every_backup_and_restore_failpoint_finishes_or_leaves_nothing() {
    if !require_root_loop("kill_9_at_every_backup_and_restore_failpoint_finishes_or_leaves_nothing")
    {
        return;
    }
    let mut d = Daemon::start();
    let dir = path_target(&d);
    d.ok(&["volume", "create", "v", "--size", "128M"]);
    let fps: Vec<&str> = ballast_core::failpoint::ALL
        .iter()
        .copied()
        .filter(|f| f.starts_with("backup."))
        .collect();
    assert_eq!(fps.len(), 4, "{fps:?}");
    // What each backup must hold: every run has new data to send.
    let mut sums = Vec::new();
    for (i, fp) in fps.iter().enumerate() {
        let mp = mount(&d, "v");
        write_random_at(&mp, "f", 2 * i as u64, 2, 100 + i as u64);
        sums.push(sha256(&mp.join("f")));
        d.ok(&["volume", "unmount", "v"]);
        d.crash_at(fp, &["backup", "create", "v"]);
        // The run was recorded before its first step: after the restart it
        // runs again and finishes, its snapshot gone.
        eventually(
            &format!("{fp}: the run finishes"),
            Duration::from_secs(60),
            || {
                let (_, runs) = d.http("GET", "/v1/backup-runs", b"");
                let done = runs
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|r| r["phase"] == "done")
                    .count();
                (done == i + 1).then_some(()).ok_or(runs)
            },
        );
        let snaps = d.json(&["snapshot", "ls"]);
        assert_eq!(snaps.as_array().unwrap().len(), 0, "{fp}: {snaps}");
        let list = d.json(&["backup", "ls", "v"]);
        assert_eq!(list.as_array().unwrap().len(), i + 1, "{fp}: {list}");
    }
    // Every backup restores to the same data.
    let b = newest(&d, "v");
    let images_before = d.images();
    d.crash_at(
        "restore.after_data",
        &["backup", "restore", &id_of(&b), "--to", "r"],
    );
    // The interrupted restore left no volume and no image.
    assert!(!d.cli(&["volume", "inspect", "r"]).status.success());
    assert_eq!(d.images(), images_before);
    let all = d.json(&["backup", "ls", "v"]);
    for (i, (b, sum)) in all.as_array().unwrap().iter().zip(&sums).enumerate() {
        let to = format!("r{i}");
        d.ok(&["backup", "restore", &id_of(b), "--to", &to]);
        assert_eq!(&sha256(&mount(&d, &to).join("f")), sum, "{}", fps[i]);
        d.ok(&["volume", "unmount", &to]);
    }

    // A backup whose chunks are gone fails to restore, before writing
    // anything, and names what is missing.
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.join("manifests").join(format!("{}.json", id_of(&b)))).unwrap(),
    )
    .unwrap();
    let hash = manifest["content"]["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|c| c.as_str())
        .unwrap()
        .to_string();
    let chunk = dir.join("chunks").join(&hash[..2]).join(&hash);
    std::fs::remove_file(&chunk).unwrap();
    let images_before = d.images();
    let err = d.fails(&["backup", "restore", &id_of(&b), "--to", "broken"]);
    assert!(err.contains("missing"), "{err}");
    assert!(
        err.contains(chunk.file_name().unwrap().to_str().unwrap())
            || err.contains("chunks are missing"),
        "{err}"
    );
    assert!(!d.cli(&["volume", "inspect", "broken"]).status.success());
    assert_eq!(d.images(), images_before);
    d.assert_no_leftovers();
}

// ----- S3: Ceph's RADOS Gateway ------------------------------------------

fn s3_prerequisites(test: &str) -> bool {
    require_root_loop(test)
        && require_ceph(test)
        && require_tool(test, "radosgw")
        && require_tool(test, "curl")
}

/// Add target `name` on the gateway's bucket, the secret key in a file.
fn s3_target(
    d: &Daemon,
    name: &str,
    url: &str,
    bucket: &str,
    access: &str,
    secret: &str,
) -> std::process::Output {
    let key = d.dir.path().join(format!("{name}.secret"));
    std::fs::write(&key, format!("{secret}\n")).unwrap();
    d.cli(&[
        "backup",
        "target",
        "add",
        name,
        "--s3",
        url,
        "--bucket",
        bucket,
        "--access-key",
        access,
        "--secret-key-file",
        key.to_str().unwrap(),
    ])
}

/// h3 starts first and so is the controller; h1 and h2 hold the volumes;
/// the Ceph cluster and its gateway are on c1.
const HOSTS: [&str; 3] = ["h3", "h1", "h2"];

#[test]
fn a_changed_gib_uploads_little_and_both_backups_restore_on_another_host() {
    let test = "a_changed_gib_uploads_little_and_both_backups_restore_on_another_host";
    if !s3_prerequisites(test) || !require_netns(test) || !require_etcd(test) {
        return;
    }
    let net = Net::new(&["e1", "c1", "h1", "h2", "h3"]);
    let etcd = EtcdCluster::start(&net, &["e1"]);
    let mut ceph = Ceph::start_in_netns(&net.netns_path("c1"), net.addr("c1"));
    let rgw = ceph.start_rgw();
    ceph.create_bucket("ballast");
    let nodes: Vec<Daemon> = HOSTS
        .iter()
        .map(|h| {
            Daemon::start_in_netns(
                &net.netns_path(h),
                &[
                    "--store",
                    &etcd.urls(),
                    "--store-prefix",
                    "/backups/",
                    "--node-id",
                    h,
                    "--node-ttl",
                    "3s",
                    "--listen",
                    &format!("{}:0", net.addr(h)),
                ],
                &[],
            )
        })
        .collect();
    let node = |h: &str| &nodes[HOSTS.iter().position(|x| *x == h).unwrap()];
    let out = s3_target(
        node("h1"),
        "s3",
        &rgw.url,
        "ballast",
        &rgw.access_key,
        &rgw.secret_key,
    );
    assert!(out.status.success(), "{out:?}");
    // The secret key is not shown, anywhere.
    let shown = node("h3").ok(&["-o", "json", "backup", "target", "ls"]);
    assert!(!shown.contains(&rgw.secret_key), "{shown}");

    let h1 = node("h1");
    h1.ok(&["volume", "create", "db", "--size", "1G", "--node", "h1"]);
    let mp = mount(h1, "db");
    write_random_at(&mp, "data", 0, 300, 11);
    h1.ok(&["volume", "unmount", "db"]);
    let id = h1.json(&["volume", "inspect", "db"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let image = h1.state.join("pools/default-h1").join(format!("{id}.img"));
    let first_sum = sha256(&image);
    // Asked on the controller; h1, the volume's node, runs it.
    let out = node("h3").ok(&["backup", "create", "db"]);
    assert!(out.contains("sent"), "{out}");
    let first = newest(h1, "db");
    assert_eq!(first["size_bytes"], 1u64 << 30);
    let full = first["uploaded_bytes"].as_u64().unwrap();
    assert!(full >= 300 << 20, "{first}");

    // 10 MiB changed in the middle of the file.
    let mp = mount(h1, "db");
    write_random_at(&mp, "data", 100, 10, 12);
    h1.ok(&["volume", "unmount", "db"]);
    let second_sum = sha256(&image);
    assert_ne!(first_sum, second_sum);
    h1.ok(&["backup", "create", "db"]);
    let second = newest(h1, "db");
    assert_ne!(second["id"], first["id"]);
    let sent = second["uploaded_bytes"].as_u64().unwrap();
    eprintln!(
        "REPORT backup: full upload {} MiB; after 10 MiB changed the second upload sent {:.1} MiB",
        full >> 20,
        sent as f64 / (1 << 20) as f64
    );
    assert!(sent >= 10 << 20, "the change was not sent: {second}");
    assert!(
        sent <= 16 << 20,
        "the second backup sent {sent} bytes: {second}"
    );

    // Both restore on h2, each equal to its snapshot, byte for byte.
    for (b, sum, to) in [(&first, &first_sum, "db-1"), (&second, &second_sum, "db-2")] {
        node("h3").ok(&["backup", "restore", &id_of(b), "--to", to, "--node", "h2"]);
        let v = node("h1").json(&["volume", "inspect", to]);
        assert_eq!(v["node"], "h2", "{v}");
        let rid = v["id"].as_str().unwrap();
        let restored = node("h2")
            .state
            .join("pools/default-h2")
            .join(format!("{rid}.img"));
        assert_eq!(&sha256(&restored), sum, "{to} differs from its backup");
    }
    for d in &nodes {
        d.assert_no_leftovers();
    }
    // A run on a node that is down never starts: the CLI gives up after
    // its deadline, clearly, instead of following it for ever.
    let mut nodes = nodes;
    nodes[1].kill9();
    let err = nodes[0].fails(&["backup", "create", "db", "--deadline", "3s"]);
    assert!(
        err.contains("did not finish by its deadline") && err.contains("h1"),
        "{err}"
    );
    drop(nodes);
    drop(ceph);
    drop(etcd);
}

#[test]
fn s3_faults_bad_credentials_missing_bucket_and_a_gateway_killed_mid_upload() {
    let test = "s3_faults_bad_credentials_missing_bucket_and_a_gateway_killed_mid_upload";
    if !s3_prerequisites(test) {
        return;
    }
    let mut ceph = Ceph::start();
    let rgw = ceph.start_rgw();
    ceph.create_bucket("ballast");
    let d = Daemon::start();
    let out = s3_target(
        &d,
        "s3",
        &rgw.url,
        "ballast",
        &rgw.access_key,
        "not-the-secret",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("denied") || err.contains("SignatureDoesNotMatch"),
        "{err}"
    );
    let out = s3_target(
        &d,
        "s3",
        &rgw.url,
        "no-such-bucket",
        &rgw.access_key,
        &rgw.secret_key,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bucket does not exist") || err.contains("NoSuchBucket"),
        "{err}"
    );
    assert_eq!(
        d.json(&["backup", "target", "ls"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let out = s3_target(
        &d,
        "s3",
        &rgw.url,
        "ballast",
        &rgw.access_key,
        &rgw.secret_key,
    );
    assert!(out.status.success(), "{out:?}");

    d.ok(&["volume", "create", "v", "--size", "1G"]);
    let mp = mount(&d, "v");
    write_random_at(&mp, "data", 0, 700, 21);
    let sum = sha256(&mp.join("data"));
    d.ok(&["volume", "unmount", "v"]);
    let started = d.json(&["backup", "create", "v", "--detach"]);
    let run = format!("/v1/backup-runs/{}", started["id"].as_str().unwrap());
    eventually("chunks are going up", Duration::from_secs(60), || {
        let (_, r) = d.http("GET", &run, b"");
        let going = r["phase"] == "running" && r["progress"]["uploaded_bytes"].as_u64() > Some(0);
        assert_ne!(
            r["phase"], "done",
            "the backup finished before the gateway could be killed"
        );
        going.then_some(()).ok_or(r)
    });
    ceph.stop_rgw();
    // The run fails, clearly, within its retries; no backup is listed.
    let failed = eventually("the run fails", Duration::from_secs(120), || {
        let (_, r) = d.http("GET", &run, b"");
        (r["phase"] == "failed").then_some(r.clone()).ok_or(r)
    });
    let why = failed["failed"]["message"].as_str().unwrap();
    assert!(why.contains("s3"), "{why}");
    let events = d.ok(&["events", "--limit", "50"]);
    assert!(events.contains("failed"), "{events}");
    assert_eq!(d.json(&["snapshot", "ls"]).as_array().unwrap().len(), 0);
    let rgw = ceph.start_rgw();
    assert_eq!(d.json(&["backup", "ls"]).as_array().unwrap().len(), 0);
    // The next run sends only what did not get there.
    d.ok(&["backup", "create", "v"]);
    let b = newest(&d, "v");
    let sent = b["uploaded_bytes"].as_u64().unwrap();
    assert!(sent < 700 << 20, "nothing was resumed: {b}");
    d.ok(&["backup", "restore", &id_of(&b), "--to", "r"]);
    assert_eq!(sha256(&mount(&d, "r").join("data")), sum);
    d.ok(&["volume", "unmount", "r"]);
    let _ = rgw;

    // A run that outlives its deadline fails with a timeout event and
    // lists nothing (700 MiB of new data cannot go up in a second).
    let mp = mount(&d, "v");
    write_random_at(&mp, "data", 0, 700, 22);
    d.ok(&["volume", "unmount", "v"]);
    let before = d.json(&["backup", "ls"]).as_array().unwrap().len();
    let err = d.fails(&["backup", "create", "v", "--deadline", "1s"]);
    assert!(err.contains("timed out after 1 s"), "{err}");
    let events = d.ok(&["events", "--limit", "20"]);
    assert!(events.contains("timed out"), "{events}");
    assert_eq!(d.json(&["backup", "ls"]).as_array().unwrap().len(), before);
    assert_eq!(d.json(&["snapshot", "ls"]).as_array().unwrap().len(), 0);

    // rbd: an image snapshot, read through librbd, restored into a new image.
    ceph.create_pool("rbd");
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
    d.ok(&["volume", "create", "rv", "--pool", "ceph", "--size", "128M"]);
    let mp = mount(&d, "rv");
    write_random_at(&mp, "data", 0, 16, 31);
    let rsum = sha256(&mp.join("data"));
    // Mounted: frozen for the snapshot.
    d.ok(&["backup", "create", "rv"]);
    d.ok(&["volume", "unmount", "rv"]);
    let b = newest(&d, "rv");
    assert_eq!(b["driver"], "rbd");
    d.ok(&[
        "backup",
        "restore",
        &id_of(&b),
        "--to",
        "rv-r",
        "--pool",
        "ceph",
    ]);
    assert_eq!(sha256(&mount(&d, "rv-r").join("data")), rsum);
    d.ok(&["volume", "unmount", "rv-r"]);
    d.assert_no_leftovers();
}
