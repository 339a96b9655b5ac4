//! Claims end to end: the real daemon, real loop devices and mounts, the
//! real CLI (and raw REST for the API's error shape). Ordinals from 1,
//! parallel acquires, reuse of a released ordinal's data, TTL expiry and
//! renewal, restarts, and bad input that changes nothing.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{require_root_loop, Daemon};
use serde_json::{json, Value};

fn acquire(d: &Daemon, args: &[&str]) -> Value {
    let mut all = vec!["claim", "acquire"];
    all.extend_from_slice(args);
    d.json(&all)
}

fn claims(d: &Daemon, group: Option<&str>) -> Vec<Value> {
    let mut args = vec!["claim", "ls"];
    args.extend(group);
    d.json(&args).as_array().expect("a list").clone()
}

fn ordinal(v: &Value) -> u64 {
    v["ordinal"].as_u64().expect("an ordinal")
}

/// The listed claim of `ordinal`, if any.
fn listed(list: &[Value], ordinal: u64) -> Option<&Value> {
    list.iter().find(|c| c["ordinal"] == ordinal)
}

fn volume_names(d: &Daemon) -> BTreeSet<String> {
    d.json(&["volume", "ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn ordinals_from_one_parallel_acquires_release_reuses_data_and_restart_keeps_claims() {
    if !require_root_loop("claims") {
        return;
    }
    let mut d = Daemon::start();

    let first = acquire(&d, &["es", "--volumes", "config,data", "--size", "32M"]);
    let keys: BTreeSet<&str> = first
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["group", "ordinal", "volumes", "holder", "expires_at"]),
        "{first}"
    );
    assert_eq!(first["group"], "es");
    assert_eq!(ordinal(&first), 1);
    assert_eq!(first["volumes"], json!(["es-1-config", "es-1-data"]));
    assert_eq!(first["expires_at"], Value::Null);
    let holder = first["holder"].as_str().unwrap().to_string();
    assert!(!holder.is_empty());
    assert_eq!(
        volume_names(&d),
        BTreeSet::from(["es-1-config".to_string(), "es-1-data".to_string()])
    );
    assert_eq!(
        d.json(&["volume", "inspect", "es-1-data"])["size_bytes"],
        32 << 20
    );

    // 23 CLI processes at once: ordinals 2..=24, each exactly once.
    let got: Vec<u64> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..23)
            .map(|_| {
                s.spawn(|| {
                    ordinal(&acquire(
                        &d,
                        &["es", "--volumes", "config,data", "--size", "32M"],
                    ))
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (2..=24).collect::<Vec<u64>>(), "{got:?}");
    let list = claims(&d, Some("es"));
    assert_eq!(
        list.iter().map(ordinal).collect::<Vec<_>>(),
        (1..=24).collect::<Vec<_>>()
    );
    assert!(list.iter().all(|c| c["expired"] == false));
    assert_eq!(volume_names(&d).len(), 48);

    // Data left in es-7-data goes to the next holder of ordinal 7.
    let mp = PathBuf::from(d.ok(&["volume", "mount", "es-7-data"]).trim());
    std::fs::write(mp.join("node-id"), b"seven").unwrap();
    d.ok(&["volume", "unmount", "es-7-data"]);
    let released = d.json(&["claim", "release", "es", "7"]);
    assert_eq!(ordinal(&released), 7);
    assert!(listed(&claims(&d, Some("es")), 7).is_none());
    assert_eq!(volume_names(&d).len(), 48, "release keeps the volumes");
    let again = acquire(&d, &["es", "--volumes", "config,data"]);
    assert_eq!(ordinal(&again), 7);
    assert_eq!(again["volumes"], json!(["es-7-config", "es-7-data"]));
    let mp = PathBuf::from(d.ok(&["volume", "mount", "es-7-data"]).trim());
    assert_eq!(std::fs::read(mp.join("node-id")).unwrap(), b"seven");
    d.ok(&["volume", "unmount", "es-7-data"]);
    assert_eq!(volume_names(&d).len(), 48);

    // A re-acquire with another size reuses the volumes as they are.
    d.ok(&["claim", "release", "es", "3"]);
    let three = acquire(&d, &["es", "--volumes", "config,data", "--size", "64M"]);
    assert_eq!(ordinal(&three), 3);
    assert_eq!(
        d.json(&["volume", "inspect", "es-3-data"])["size_bytes"],
        32 << 20
    );

    // Claims are in the store: a restart keeps them.
    let before = claims(&d, None);
    d.restart();
    assert_eq!(claims(&d, None), before);
    assert_eq!(
        ordinal(&acquire(&d, &["es", "--volumes", "config,data"])),
        25
    );

    // Without a terminal the table is plain text.
    let table = d.ok(&["claim", "ls", "es"]);
    assert!(table.starts_with("GROUP"), "{table}");
    assert!(
        !table.contains('\u{1b}') && !table.contains('\r'),
        "{table:?}"
    );
    assert_eq!(table.lines().count(), 26);
    d.assert_no_leftovers();
}

#[test]
fn an_unrenewed_ttl_claim_is_handed_out_again_and_renew_extends() {
    if !require_root_loop("claim ttl") {
        return;
    }
    let d = Daemon::start();
    let a = acquire(
        &d,
        &["db", "--volumes", "data", "--ttl", "2s", "--holder", "a"],
    );
    let b = acquire(
        &d,
        &["db", "--volumes", "data", "--ttl", "2s", "--holder", "b"],
    );
    let c = acquire(
        &d,
        &["db", "--volumes", "data", "--ttl", "2s", "--holder", "c"],
    );
    assert_eq!([ordinal(&a), ordinal(&b), ordinal(&c)], [1, 2, 3]);
    assert!(a["expires_at"].is_string(), "{a}");

    // Keep renewing b until c, acquired after b with the same TTL and never
    // renewed, has expired: b's first window is over by then.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_expiry = b["expires_at"].as_str().unwrap().to_string();
    let list = loop {
        let r = d.json(&["claim", "renew", "db", "2", "--holder", "b"]);
        let exp = r["expires_at"].as_str().unwrap().to_string();
        let (old, new) = (
            chrono::DateTime::parse_from_rfc3339(&last_expiry).unwrap(),
            chrono::DateTime::parse_from_rfc3339(&exp).unwrap(),
        );
        assert!(new >= old, "renew moved the expiry back: {old} -> {new}");
        last_expiry = exp;
        let list = claims(&d, Some("db"));
        if listed(&list, 3).unwrap()["expired"] == true {
            break list;
        }
        assert!(Instant::now() < deadline, "claim 3 never expired: {list:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(listed(&list, 1).unwrap()["expired"], true, "{list:?}");
    assert_eq!(listed(&list, 2).unwrap()["expired"], false, "{list:?}");
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    assert!(parse(&last_expiry) > parse(b["expires_at"].as_str().unwrap()));

    // Expired ordinals go to the next acquires, lowest first; the renewed
    // one does not.
    let next: Vec<u64> = ["d", "e", "f"]
        .iter()
        .map(|h| ordinal(&acquire(&d, &["db", "--volumes", "data", "--holder", h])))
        .collect();
    assert_eq!(next, [1, 3, 4]);
    let list = claims(&d, Some("db"));
    assert_eq!(listed(&list, 1).unwrap()["holder"], "d");
    assert_eq!(listed(&list, 1).unwrap()["expires_at"], Value::Null);
    // a lost its claim: renewing names the new holder.
    let err = d.fails(&["claim", "renew", "db", "1", "--holder", "a"]);
    assert!(err.contains("\"d\""), "{err}");
    assert_eq!(
        volume_names(&d),
        BTreeSet::from(["db-1-data", "db-2-data", "db-3-data", "db-4-data"].map(String::from))
    );
}

/// What a refused claim call must leave as it was.
fn state(d: &Daemon) -> (Value, Value, Vec<String>) {
    (
        d.json(&["claim", "ls"]),
        d.json(&["volume", "ls"]),
        d.images(),
    )
}

fn cli_refuses(d: &Daemon, args: &[&str], names: &[&str]) {
    let before = state(d);
    let err = d.fails(args);
    assert_eq!(state(d), before, "ballast {args:?} changed state");
    assert!(err.starts_with("ballast: "), "{err}");
    for n in names {
        assert!(
            err.contains(n),
            "ballast {args:?}: {err:?} should mention {n:?}"
        );
    }
}

fn api_refuses(d: &Daemon, method: &str, path: &str, body: Value, status: u16, code: &str) {
    let before = state(d);
    let (got, reply) = d.http(method, path, &serde_json::to_vec(&body).unwrap());
    assert_eq!(state(d), before, "{method} {path} changed state");
    assert_eq!(got, status, "{method} {path}: {reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    assert!(reply["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
}

#[test]
fn bad_claim_input_is_refused_clearly_and_changes_nothing() {
    if !require_root_loop("claim bad input") {
        return;
    }
    let d = Daemon::start();
    acquire(&d, &["es", "--volumes", "data", "--holder", "node-a"]);
    let long = "g".repeat(120);

    // Group names that break the volume naming rules.
    for (group, says) in [
        ("-es", "must start with a letter or digit"),
        (".es", "must start with a letter or digit"),
        ("e s", "contains ' '"),
        ("es:1", "contains ':'"),
        ("es/x", "contains '/'"),
        ("", "must not be empty"),
        (long.as_str(), "128"),
    ] {
        cli_refuses(
            &d,
            &["claim", "acquire", "--volumes", "data", "--", group],
            &["claim group", says],
        );
    }
    // --volumes empty, duplicated, or not a name part.
    for (vols, says) in [
        ("", "at least one volume"),
        (" ", "at least one volume"),
        ("data,data", "more than once"),
        ("config,data,config", "more than once"),
        ("my-data", "must not contain '-'"),
        ("data,", "must not be empty"),
        ("a/b", "contains '/'"),
    ] {
        cli_refuses(
            &d,
            &["claim", "acquire", "es", "--volumes", vols],
            &["volume", says],
        );
    }
    // TTLs: zero, negative, unparsable.
    for (ttl, says) in [
        ("--ttl=0", "greater than zero"),
        ("--ttl=0s", "greater than zero"),
        ("--ttl=-1s", "positive number"),
        ("--ttl=-5", "positive number"),
        ("--ttl=2", "needs a unit"),
        ("--ttl=1.5s", "unknown unit"),
        ("--ttl=soon", "positive number"),
        ("--ttl=2 s", "unknown unit"),
        ("--ttl=100000h", "365 days"),
    ] {
        cli_refuses(
            &d,
            &["claim", "acquire", "es", "--volumes", "data", ttl],
            &["ttl", says],
        );
    }
    cli_refuses(
        &d,
        &["claim", "renew", "es", "1", "--holder", "node-a", "--ttl=0"],
        &["ttl", "greater than zero"],
    );
    // Renew and release of a claim not held, or held by someone else.
    for verb in ["renew", "release"] {
        cli_refuses(
            &d,
            &["claim", verb, "es", "2"],
            &["claim", "es/2", "not found"],
        );
        cli_refuses(
            &d,
            &["claim", verb, "nosuch", "1"],
            &["claim", "nosuch/1", "not found"],
        );
        cli_refuses(
            &d,
            &["claim", verb, "es", "1", "--holder", "node-b"],
            &["es/1", "held by \"node-a\"", "node-b"],
        );
        // The default holder (this host) is not node-a either.
        cli_refuses(&d, &["claim", verb, "es", "1"], &["held by \"node-a\""]);
    }
    cli_refuses(
        &d,
        &[
            "claim",
            "acquire",
            "es",
            "--volumes",
            "data",
            "--holder",
            "",
        ],
        &["holder", "must not be empty"],
    );
    cli_refuses(
        &d,
        &[
            "claim",
            "acquire",
            "es",
            "--volumes",
            "data",
            "--pool",
            "nosuch",
        ],
        &["pool", "nosuch", "not found"],
    );
    cli_refuses(
        &d,
        &["claim", "acquire", "es", "--volumes", "data", "--size", "0"],
        &["size", "greater than zero"],
    );
    cli_refuses(&d, &["claim", "ls", "e s"], &["claim group"]);

    // The same through REST, with its error shape.
    let ok = json!({"volumes": ["data"], "holder": "h"});
    api_refuses(
        &d,
        "POST",
        "/v1/claims/-es/acquire",
        ok.clone(),
        400,
        "invalid_argument",
    );
    for bad in [
        json!({"volumes": [], "holder": "h"}),
        json!({"volumes": ["data", "data"], "holder": "h"}),
        json!({"volumes": ["data"], "holder": "h", "ttl": "0"}),
        json!({"volumes": ["data"], "holder": "h", "ttl": "-1s"}),
        json!({"volumes": ["data"], "holder": "h", "ttl": "later"}),
        json!({"volumes": ["data"]}),
        json!({"volumes": ["data"], "holder": "h", "colour": "red"}),
    ] {
        api_refuses(
            &d,
            "POST",
            "/v1/claims/es/acquire",
            bad,
            400,
            "invalid_argument",
        );
    }
    let node_b = json!({"holder": "node-b"});
    api_refuses(
        &d,
        "POST",
        "/v1/claims/es/1/renew",
        node_b.clone(),
        409,
        "busy",
    );
    api_refuses(
        &d,
        "POST",
        "/v1/claims/es/1/release",
        node_b.clone(),
        409,
        "busy",
    );
    api_refuses(
        &d,
        "POST",
        "/v1/claims/es/9/release",
        node_b.clone(),
        404,
        "not_found",
    );
    for path in [
        "/v1/claims/es/0/renew",
        "/v1/claims/es/x/release",
        "/v1/claims/es/-1/renew",
    ] {
        api_refuses(&d, "POST", path, node_b.clone(), 400, "invalid_argument");
    }
    let (status, reply) = d.http("GET", "/v1/claims?group=e%20s", b"");
    assert_eq!(
        (status, &reply["error"]["code"]),
        (400, &json!("invalid_argument"))
    );
    let (status, reply) = d.http("GET", "/v1/claims?colour=red", b"");
    assert_eq!(
        (status, &reply["error"]["code"]),
        (400, &json!("invalid_argument"))
    );

    // Still exactly the one claim and volume from the start.
    let list = claims(&d, None);
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["holder"], "node-a");
    assert_eq!(volume_names(&d), BTreeSet::from(["es-1-data".to_string()]));
    d.ok(&["claim", "release", "es", "1", "--holder", "node-a"]);
    assert!(claims(&d, None).is_empty());
}

/// A crash in the middle of an acquire (`claim.*` failpoints): the caller
/// never heard of the claim, so the next start takes it back: the volumes
/// it made are gone, volumes that existed before stay with their data, the
/// ordinal is free, and nothing is left on the host.
#[test]
fn a_crash_mid_acquire_is_taken_back_at_start() {
    if !require_root_loop("claims crash") {
        return;
    }
    let failpoints: Vec<&str> = ballast_core::failpoint::ALL
        .iter()
        .copied()
        .filter(|f| f.starts_with("claim."))
        .collect();
    assert_eq!(failpoints, ["claim.after_record", "claim.after_volumes"]);
    for fp in failpoints {
        let mut d = Daemon::start();
        // Ordinal 1 once held and released: its data volume exists, its
        // config volume does not (made by the acquire that crashes).
        acquire(&d, &["db", "--volumes", "data", "--size", "32M"]);
        let mp = PathBuf::from(d.ok(&["volume", "mount", "db-1-data"]).trim());
        std::fs::write(mp.join("kept"), b"one").unwrap();
        d.ok(&["volume", "unmount", "db-1-data"]);
        d.ok(&["claim", "release", "db", "1"]);
        let images_before = d.images();

        d.crash_at(
            fp,
            &["claim", "acquire", "db", "--volumes", "data,config,logs"],
        );

        assert_eq!(claims(&d, Some("db")), Vec::<Value>::new(), "{fp}");
        assert_eq!(
            volume_names(&d),
            BTreeSet::from(["db-1-data".to_string()]),
            "{fp}: only the volume from before stays"
        );
        assert_eq!(d.images(), images_before, "{fp}: image files");
        // The ordinal is free again and its data is still there.
        let again = acquire(&d, &["db", "--volumes", "data,config"]);
        assert_eq!(ordinal(&again), 1, "{fp}");
        let mp = PathBuf::from(d.ok(&["volume", "mount", "db-1-data"]).trim());
        assert_eq!(std::fs::read(mp.join("kept")).unwrap(), b"one", "{fp}");
        d.ok(&["volume", "unmount", "db-1-data"]);
        d.assert_no_leftovers();
    }
}
