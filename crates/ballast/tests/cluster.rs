//! Two real daemons (`ballast serve`) with their own node ids, run and state
//! directories, on one host, sharing one real etcd: what a cluster of two
//! machines is, as far as the store and the records go. Each works in its
//! own pools in parallel; each sees the other's volumes; a kill -9 of one at
//! a failpoint and its restart settle its own work and nothing of the
//! other's.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::etcd::{require_etcd, Etcd};
use common::{mount_targets, require_root_loop, volume_listing as listing, Daemon};

fn node(etcd: &Etcd, id: &str, prefix: &str) -> Daemon {
    Daemon::start_with(
        &[
            "--store",
            &etcd.url(),
            "--store-prefix",
            prefix,
            "--node-id",
            id,
            "--watch-interval",
            "1h",
        ],
        &[],
    )
}

fn eventually(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mountpoint(d: &Daemon, vol: &str) -> PathBuf {
    PathBuf::from(
        d.json(&["volume", "inspect", vol])["mountpoint"]
            .as_str()
            .unwrap_or_else(|| panic!("{vol} is not mounted"))
            .to_string(),
    )
}

/// One node's work loop: create, mount, write, snapshot, unmount, drop the
/// snapshot, delete; returns how many rounds it finished.
fn churn(d: &Daemon, me: &str, stop: &AtomicBool) -> usize {
    let mut rounds = 0;
    while !stop.load(Ordering::Relaxed) {
        let v = format!("{me}-churn-{rounds}");
        let here = format!("node-{me}");
        d.ok(&["volume", "create", &v, "--size", "16M", "--node", &here]);
        let mp = PathBuf::from(d.ok(&["volume", "mount", &v, "--id", "w"]).trim());
        std::fs::write(mp.join("data"), format!("{v} was here")).unwrap();
        d.ok(&["volume", "snapshot", &v, &format!("{v}-snap")]);
        d.ok(&["volume", "unmount", &v, "--id", "w"]);
        d.ok(&["snapshot", "rm", &format!("{v}-snap")]);
        d.ok(&["volume", "rm", &v]);
        rounds += 1;
    }
    rounds
}

#[test]
fn two_daemons_on_one_etcd_work_side_by_side_and_never_touch_each_other() {
    if !require_root_loop("cluster") || !require_etcd("cluster") {
        return;
    }
    let etcd = Etcd::start();
    let a = Arc::new(node(&etcd, "node-a", "/cluster-test/"));
    let b = Arc::new(node(&etcd, "node-b", "/cluster-test/"));

    // A volume on each node that stays mounted throughout, with data.
    for (d, me) in [(&a, "a"), (&b, "b")] {
        let here = format!("node-{me}");
        d.ok(&[
            "volume",
            "create",
            &format!("{me}-keep"),
            "--size",
            "32M",
            "--node",
            &here,
        ]);
        let mp = PathBuf::from(
            d.ok(&["volume", "mount", &format!("{me}-keep"), "--id", "app"])
                .trim(),
        );
        std::fs::write(mp.join("kept"), me).unwrap();
    }
    let keep_a = mountpoint(&a, "a-keep");
    let keep_b = mountpoint(&b, "b-keep");

    // Both work in parallel; both listings show both nodes' volumes.
    let secs: u64 = std::env::var("BALLAST_CLUSTER_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = [(a.clone(), "a"), (b.clone(), "b")]
        .into_iter()
        .map(|(d, me)| {
            let stop = stop.clone();
            std::thread::spawn(move || churn(&d, me, &stop))
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut checks = 0;
    while Instant::now() < until {
        for d in [&a, &b] {
            let seen = listing(d);
            assert_eq!(
                seen.get("a-keep"),
                Some(&("node-a".to_string(), "mounted".to_string())),
                "{seen:?}"
            );
            eventually("b-keep listed on both", || {
                listing(d).get("b-keep") == Some(&("node-b".to_string(), "mounted".to_string()))
            });
            for (name, (node, _)) in &seen {
                let want = if name.starts_with("a-") {
                    "node-a"
                } else {
                    "node-b"
                };
                assert_eq!(node, want, "{name} is listed on the wrong node");
            }
        }
        checks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, Ordering::Relaxed);
    let rounds: Vec<usize> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    eprintln!("cluster: {secs} s, rounds per node {rounds:?}, {checks} listing checks");
    assert!(rounds.iter().all(|&r| r > 0), "{rounds:?}");

    // Another node's volume is refused here, naming its node.
    let err = b.fails(&["volume", "mount", "a-keep", "--id", "x"]);
    assert!(err.contains("node-a"), "{err}");

    // kill -9 of one node at failpoints of each kind of operation: it
    // settles its own work at restart, and the other never notices.
    let mut a = Arc::try_unwrap(a).ok().expect("workers are done");
    let mut b = Arc::try_unwrap(b).ok().expect("workers are done");
    crash_and_settle(&mut a, &b, "a", &keep_b);
    crash_and_settle(&mut b, &a, "b", &keep_a);

    // Clean up through each node; nothing stays on the host or in the store.
    for (d, me) in [(&a, "a"), (&b, "b")] {
        d.ok(&["volume", "unmount", &format!("{me}-keep"), "--id", "app"]);
        d.ok(&["volume", "rm", &format!("{me}-keep")]);
    }
    eventually("both listings empty", || {
        listing(&a).is_empty() && listing(&b).is_empty()
    });
    a.assert_no_leftovers();
    b.assert_no_leftovers();
}

/// kill -9 `crashed` at every failpoint of the volume operations (create,
/// stage, unstage, resize, delete, snapshot); after each restart its own
/// work is settled (undone or finished, as on one node) and `other` noticed
/// nothing.
fn crash_and_settle(crashed: &mut Daemon, other: &Daemon, me: &str, other_keep: &PathBuf) {
    let other_id = if me == "a" { "b" } else { "a" };
    let here = format!("node-{me}");
    let v = format!("{me}-crash");
    let snap = format!("{v}-snap");
    let mut crashes = 0;
    for &fp in ballast_core::failpoint::ALL {
        let (op, _) = fp.split_once('.').unwrap();
        // What must exist before the command, the command, and what the
        // restart must have made of it.
        let (setup, cmd, want): (&[&str], Vec<&str>, Option<&str>) = match op {
            "create" => (
                &[],
                vec!["volume", "create", &v, "--size", "16M", "--node", &here],
                None,
            ),
            "stage" => (
                &["create"],
                vec!["volume", "mount", &v, "--id", "c"],
                Some("available"),
            ),
            "unstage" => (
                &["create", "mount"],
                vec!["volume", "unmount", &v, "--id", "c"],
                Some("available"),
            ),
            "resize" => (
                &["create"],
                vec!["volume", "resize", &v, "--size", "32M"],
                Some("available"),
            ),
            "delete" => (
                &["create", "mount"],
                vec!["volume", "rm", &v, "--force"],
                None,
            ),
            "snapshot" => (
                &["create", "mount"],
                vec!["volume", "snapshot", &v, &snap],
                Some("mounted"),
            ),
            _ => continue,
        };
        for step in setup {
            match *step {
                "create" => crashed.ok(&["volume", "create", &v, "--size", "16M", "--node", &here]),
                _ => crashed.ok(&["volume", "mount", &v, "--id", "c"]),
            };
        }
        crashed.crash_at(fp, &cmd);
        crashes += 1;
        let seen = listing(crashed);
        assert_eq!(
            seen.get(&v).map(|(_, state)| state.as_str()),
            want,
            "{fp}: {seen:?}"
        );
        if op == "resize" {
            let size = &crashed.json(&["volume", "inspect", &v])["size_bytes"];
            assert_eq!(size, 32 << 20, "{fp}: an interrupted resize is finished");
        }
        if op == "snapshot" {
            let snaps = crashed.json(&["snapshot", "ls"]);
            assert_eq!(snaps.as_array().map(Vec::len), Some(0), "{fp}: {snaps}");
        }
        // The other node's view agrees, and its own volume never moved.
        eventually("the other node sees the settled state", || {
            listing(other).get(&v).map(|(_, s)| s.as_str()) == want
        });
        assert!(
            mount_targets().contains(other_keep),
            "{fp}: {other_keep:?} lost"
        );
        let seen = other.json(&["volume", "inspect", &format!("{other_id}-keep")]);
        assert_eq!(seen["state"], "mounted", "{fp}: {seen}");
        assert_eq!(
            std::fs::read_to_string(other_keep.join("kept")).unwrap(),
            other_id
        );
        let mine = crashed.json(&["volume", "inspect", &format!("{me}-keep")]);
        assert_eq!(mine["state"], "mounted", "{fp}: {mine}");
        // Back to nothing for the next failpoint.
        if want.is_some() {
            crashed.ok(&["volume", "rm", &v, "--force"]);
        }
    }
    eprintln!("cluster: node {me} crashed at {crashes} failpoints");
    assert!(crashes >= 15, "{crashes}");
}

#[test]
fn a_daemon_whose_etcd_stops_serves_reads_refuses_writes_and_resumes_by_itself() {
    if !require_root_loop("etcd stopped") || !require_etcd("etcd stopped") {
        return;
    }
    let mut etcd = Etcd::start();
    let mut d = node(&etcd, "solo", "/stopped-test/");
    d.ok(&["volume", "create", "before", "--size", "16M"]);
    let mp = PathBuf::from(d.ok(&["volume", "mount", "before", "--id", "app"]).trim());
    std::fs::write(mp.join("f"), b"x").unwrap();
    let images_before = d.images();

    // A hung etcd (it takes connections and never answers): reads from the
    // cache, writes fail at their deadline instead of hanging.
    etcd.pause();
    assert_eq!(d.json(&["volume", "inspect", "before"])["state"], "mounted");
    let started = Instant::now();
    let (status, body) = d.http("POST", "/v1/volumes", br#"{"name":"hung","size":"16M"}"#);
    eprintln!(
        "create with etcd hung: {status} after {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    let (status, body) = d.http("POST", "/v1/volumes/before/unmount", br#"{"id":"app"}"#);
    assert_eq!(status, 503, "{body}");
    assert!(mount_targets().contains(&mp), "a refused unmount unmounted");
    assert_eq!(d.images(), images_before, "a refused create left an image");
    etcd.resume();
    eventually("writes work again after the hang", || {
        d.cli(&["volume", "create", "hung", "--size", "16M"])
            .status
            .success()
    });
    d.ok(&["volume", "rm", "hung"]);

    etcd.kill();
    // Reads come from the cache.
    let (status, vols) = d.http("GET", "/v1/volumes", b"");
    assert_eq!(status, 200, "{vols}");
    assert_eq!(vols.as_array().map(Vec::len), Some(1), "{vols}");
    assert_eq!(d.json(&["volume", "inspect", "before"])["state"], "mounted");
    // Writes fail as unavailable (a retry may work), and change nothing.
    let started = Instant::now();
    let (status, body) = d.http("POST", "/v1/volumes", br#"{"name":"during","size":"16M"}"#);
    eprintln!(
        "create with etcd down: {status} after {:?}",
        started.elapsed()
    );
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let (status, body) = d.http("POST", "/v1/volumes/before/unmount", br#"{"id":"app"}"#);
    assert_eq!(status, 503, "{body}");
    assert!(mount_targets().contains(&mp), "a refused unmount unmounted");
    assert_eq!(d.images(), images_before, "a refused create left an image");
    let err = d.fails(&["volume", "create", "during2", "--size", "16M"]);
    assert!(
        err.contains("retry") || err.contains("unavailable"),
        "{err}"
    );

    // Back: the same daemon, not restarted, works again by itself.
    etcd.restart();
    eventually("writes work again", || {
        d.cli(&["volume", "create", "after", "--size", "16M"])
            .status
            .success()
    });
    let seen = listing(&d);
    assert_eq!(
        seen.keys().map(String::as_str).collect::<Vec<_>>(),
        ["after", "before"],
        "{seen:?}"
    );
    d.ok(&["volume", "unmount", "before", "--id", "app"]);
    d.ok(&["volume", "rm", "before"]);
    d.ok(&["volume", "rm", "after"]);
    d.stop();
    d.restart();
    assert!(listing(&d).is_empty());
    d.assert_no_leftovers();
}

/// (id, state, zone label) of every node, as `node ls` on `d` shows them.
fn nodes(d: &Daemon) -> Vec<(String, String, String)> {
    d.json(&["node", "ls"])
        .as_array()
        .expect("a list")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap().to_string(),
                n["state"].as_str().unwrap().to_string(),
                n["record"]["labels"]["zone"]
                    .as_str()
                    .unwrap_or("-")
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn nodes_are_listed_ready_and_a_killed_one_turns_unreachable_until_it_returns() {
    if !require_root_loop("nodes") || !require_etcd("nodes") {
        return;
    }
    let etcd = Etcd::start();
    let with = |id: &str, zone: &str| {
        Daemon::start_with(
            &[
                "--store",
                &etcd.url(),
                "--store-prefix",
                "/nodes-test/",
                "--node-id",
                id,
                "--node-label",
                &format!("zone={zone}"),
                "--node-ttl",
                "2s",
            ],
            &[],
        )
    };
    let a = with("node-a", "z1");
    let mut b = with("node-b", "z2");
    b.ok(&[
        "volume", "create", "on-b", "--size", "16M", "--node", "node-b",
    ]);
    let ready = |d: &Daemon| {
        nodes(d)
            == [
                ("node-a".into(), "ready".into(), "z1".into()),
                ("node-b".into(), "ready".into(), "z2".into()),
            ]
    };
    eventually("both nodes ready on both", || ready(&a) && ready(&b));
    let seen = a.json(&["node", "inspect", "node-b"]);
    assert_eq!(seen["volumes"], 1, "{seen}");
    assert_eq!(
        seen["record"]["pools"][0]["name"], "default-node-b",
        "{seen}"
    );
    assert!(seen["record"]["address"].as_str().is_some(), "{seen}");
    // Another node's pool shows the capacity that node measured.
    let pool = a.json(&["pool", "inspect", "default-node-b"]);
    assert!(pool["capacity_bytes"].as_u64().unwrap() > 0, "{pool}");
    assert_eq!(pool["node"], "node-b", "{pool}");

    // Offers: both nodes' loop pools for a 16M volume, one per zone.
    let offered = |d: &Daemon, extra: &[&str]| -> Vec<String> {
        let mut args = vec!["offers", "--size", "16M"];
        args.extend_from_slice(extra);
        let mut v: Vec<String> = d
            .json(&args)
            .as_array()
            .unwrap()
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["node"].as_str().unwrap(),
                    o["pool"].as_str().unwrap()
                )
            })
            .collect();
        v.sort();
        v
    };
    eventually("both nodes' pools are offered", || {
        offered(&b, &[]) == ["node-a/default", "node-b/default-node-b"]
    });
    assert_eq!(
        offered(&a, &["--selector", "zone=z2"]),
        ["node-b/default-node-b"]
    );
    assert!(offered(&a, &["--selector", "zone=nowhere"]).is_empty());
    assert!(a
        .fails(&["offers", "--size", "16M", "--selector", "zone"])
        .contains("KEY=VALUE"));

    // Cordon from another node: no new volumes there, the rest stays.
    let drained = a.json(&["node", "drain", "node-b"]);
    assert_eq!(drained["volumes"], serde_json::json!(["on-b"]), "{drained}");
    assert_eq!(drained["node"]["cordoned"], true, "{drained}");
    eventually("node-b sees itself cordoned", || {
        b.json(&["node", "inspect", "node-b"])["cordoned"] == true
    });
    let err = b.fails(&[
        "volume", "create", "refused", "--size", "16M", "--node", "node-b",
    ]);
    assert!(err.contains("cordoned"), "{err}");
    // Without a node named, the controller places it on the other one.
    let placed = b.json(&["volume", "create", "placed", "--size", "16M"]);
    assert_eq!(placed["node"], "node-a", "{placed}");
    b.ok(&["volume", "rm", "placed"]);
    assert_eq!(
        offered(&a, &[]),
        ["node-a/default"],
        "a cordoned node offers nothing"
    );
    assert!(!listing(&b).contains_key("refused"));
    a.ok(&["node", "uncordon", "node-b"]);
    eventually("node-b takes volumes again", || {
        b.cli(&[
            "volume", "create", "taken", "--size", "16M", "--node", "node-b",
        ])
        .status
        .success()
    });
    b.ok(&["volume", "rm", "taken"]);

    // One controller, named alike by both; it moves when its node dies.
    let controller = |d: &Daemon| d.json(&["cluster", "status"])["controller"]["node"].clone();
    eventually("one controller named by both", || {
        controller(&a).is_string() && controller(&a) == controller(&b)
    });
    if controller(&a) == "node-b" {
        // node-a takes over when node-b dies; node-b comes back as a
        // plain node (the key is taken), and dies again below.
        b.kill9();
        eventually("node-a took over", || controller(&a) == "node-a");
        b.restart();
        eventually("node-b back", || ready(&a));
    }

    b.kill9();
    eventually(
        "node-b unreachable on node-a after its lease lapsed",
        || nodes(&a).contains(&("node-b".into(), "unreachable".into(), "-".into())),
    );
    let gone = a.json(&["node", "inspect", "node-b"]);
    assert_eq!(gone["volumes"], 1, "what still lives there: {gone}");
    assert!(a
        .fails(&["node", "inspect", "node-c"])
        .contains("not found"));
    assert_eq!(controller(&a), "node-a", "the controller stays where it is");
    b.restart();
    eventually("node-b ready again", || ready(&a));
    assert_eq!(controller(&b), "node-a");
    b.ok(&["volume", "rm", "on-b"]);
}

#[test]
fn claims_acquired_from_two_nodes_get_each_ordinal_exactly_once() {
    if !require_root_loop("cluster claims") || !require_etcd("cluster claims") {
        return;
    }
    let etcd = Etcd::start();
    let a = Arc::new(node(&etcd, "node-a", "/claims-test/"));
    let b = Arc::new(node(&etcd, "node-b", "/claims-test/"));
    let per_client = 3;
    let clients: Vec<_> = [(a.clone(), "a"), (b.clone(), "b")]
        .into_iter()
        .flat_map(|(d, me)| (0..2).map(move |t| (d.clone(), format!("{me}-{t}"))))
        .map(|(d, holder)| {
            std::thread::spawn(move || {
                (0..per_client)
                    .map(|_| {
                        let c = d.json(&[
                            "claim",
                            "acquire",
                            "es",
                            "--volumes",
                            "data",
                            "--size",
                            "16M",
                            "--holder",
                            &holder,
                        ]);
                        c["ordinal"].as_u64().unwrap_or_else(|| panic!("{c}"))
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut ordinals: Vec<u64> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    ordinals.sort_unstable();
    let want: Vec<u64> = (1..=4 * per_client).collect();
    assert_eq!(ordinals, want, "each ordinal exactly once, lowest first");
    let ls = |d: &Daemon| -> Vec<(u64, String)> {
        d.json(&["claim", "ls", "es"])
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let c = if c.get("claim").is_some() {
                    &c["claim"]
                } else {
                    c
                };
                (
                    c["ordinal"].as_u64().unwrap(),
                    c["holder"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    eventually("both nodes list the same claims", || ls(&a) == ls(&b));
    assert_eq!(ls(&a).len(), want.len());
    // Each claim's volume was made on the node that acquired it.
    for (ordinal, holder) in ls(&a) {
        let v = a.json(&["volume", "inspect", &format!("es-{ordinal}-data")]);
        let node = format!("node-{}", &holder[..1]);
        assert_eq!(v["node"], node.as_str(), "{v}");
    }
    // An ordinal released on one node and taken on the other: its volume
    // stays where it lives, and the acquire says so.
    let (ordinal, holder) = ls(&a)[0].clone();
    let (owner, other, owner_id) = if holder.starts_with('a') {
        (&a, &b, "node-a")
    } else {
        (&b, &a, "node-b")
    };
    owner.ok(&[
        "claim",
        "release",
        "es",
        &ordinal.to_string(),
        "--holder",
        &holder,
    ]);
    eventually("the other node sees the release", || {
        ls(other).iter().all(|(o, _)| *o != ordinal)
    });
    let taken = other.json(&[
        "claim",
        "acquire",
        "es",
        "--volumes",
        "data",
        "--size",
        "16M",
        "--holder",
        "mover",
    ]);
    assert_eq!(taken["ordinal"], ordinal, "{taken}");
    let vol = format!("es-{ordinal}-data");
    assert_eq!(taken["elsewhere"][&vol], owner_id, "{taken}");
    let out = other.cli(&[
        "claim",
        "renew",
        "es",
        &ordinal.to_string(),
        "--holder",
        "mover",
    ]);
    assert!(out.status.success());
    let note = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(note.contains(&vol) && note.contains(owner_id), "{note}");
    let err = other.fails(&["volume", "mount", &vol, "--id", "x"]);
    assert!(err.contains(owner_id), "{err}");
}
