//! Bad input, through the real CLI and raw REST on the API socket: every
//! refusal is a clear error that names the problem (CLI: exit 1 and one line
//! on stderr; REST: the documented status and `{"error":{"code","message"}}`),
//! and a refused call changes nothing: not the volume list, the store file,
//! the event log, the pool directory, the daemon's directories, nor the
//! host's loop devices and mounts.

mod common;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::Daemon;
use serde_json::{json, Value};

/// A daemon whose node heartbeat stays quiet while a test compares store
/// files: it registers before it answers, and with a TTL of an hour it
/// neither rewrites its record nor stands for controller again meanwhile.
fn quiet_daemon() -> Daemon {
    Daemon::start_with(&["--node-ttl", "1h"], &[])
}

/// Everything a refused call must leave as it was.
#[derive(Debug, PartialEq)]
struct Snapshot {
    /// `volume ls -o json`.
    volumes: Value,
    /// The default pool's directory.
    images: Vec<String>,
    /// `GET /v1/events`.
    events: Value,
    /// This daemon's loop devices and mounts on the host.
    leftovers: Vec<String>,
    /// Every path under the daemon's scratch directory (logs aside), with
    /// its type and, for files, its length.
    tree: Vec<String>,
    /// A hash of the store file's bytes.
    store: u64,
}

fn snapshot(d: &Daemon) -> Snapshot {
    let (status, events) = d.http("GET", "/v1/events?limit=1000", b"");
    assert_eq!(status, 200, "listing events: {events}");
    let store = std::fs::read(d.state.join("ballast.redb")).expect("reading the store");
    let mut h = DefaultHasher::new();
    store.hash(&mut h);
    Snapshot {
        volumes: d.json(&["volume", "ls"]),
        images: d.images(),
        events,
        leftovers: d.host_leftovers(),
        tree: tree(d.dir.path()),
        store: h.finish(),
    }
}

fn tree(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let path = e.path();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            if dir == root && rel.starts_with("daemon-") && rel.ends_with(".log") {
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let ft = meta.file_type();
            if ft.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else if ft.is_file() {
                out.push(format!("{rel} ({} bytes)", meta.len()));
            } else if ft.is_socket() {
                out.push(format!("{rel} (socket)"));
            } else {
                out.push(format!("{rel} (other)"));
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Run `f` and insist that it changed nothing.
fn unchanged<T>(d: &Daemon, what: &str, f: impl FnOnce() -> T) -> T {
    let before = snapshot(d);
    let r = f();
    let after = snapshot(d);
    assert_eq!(before, after, "{what} changed state");
    r
}

/// The CLI refuses `args`: exit 1, one line `ballast: ...` containing every
/// string of `names`, and nothing changed. Returns the line.
fn cli_refuses(d: &Daemon, args: &[&str], names: &[&str]) -> String {
    let err = unchanged(d, &format!("ballast {args:?}"), || d.fails(args));
    assert!(err.starts_with("ballast: "), "ballast {args:?}: {err:?}");
    for n in names {
        assert!(
            err.contains(n),
            "ballast {args:?}: the message should mention {n:?}: {err:?}"
        );
    }
    err
}

/// The error body every failed call returns; returns its message.
fn error_message(reply: &Value, code: &str) -> String {
    let obj = reply.as_object().expect("an error body is a JSON object");
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["error"], "{reply}");
    let err = reply["error"].as_object().expect("error is an object");
    let mut keys: Vec<_> = err.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["code", "message"], "{reply}");
    assert_eq!(reply["error"]["code"], code, "{reply}");
    let msg = reply["error"]["message"]
        .as_str()
        .expect("message is a string");
    assert!(!msg.is_empty(), "{reply}");
    msg.to_string()
}

/// A raw REST call is refused with `status` and `code`, its message naming
/// every string of `names`, and nothing changed. Returns the message.
fn api_refuses(
    d: &Daemon,
    method: &str,
    path: &str,
    body: &[u8],
    status: u16,
    code: &str,
    names: &[&str],
) -> String {
    let what = format!("{method} {path} {}", String::from_utf8_lossy(body));
    let (got, reply) = unchanged(d, &what, || d.http(method, path, body));
    assert_eq!(got, status, "{what}: {reply}");
    let msg = error_message(&reply, code);
    for n in names {
        assert!(
            msg.contains(n),
            "{what}: the message should mention {n:?}: {msg:?}"
        );
    }
    msg
}

fn body(v: Value) -> Vec<u8> {
    serde_json::to_vec(&v).unwrap()
}

/// A raw request with the caller's own head lines (no Content-Type unless
/// given); returns (status, JSON body).
fn raw_request(d: &Daemon, head: &str, payload: &[u8]) -> (u16, Value) {
    let mut s = UnixStream::connect(d.socket()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before reading the payload.
    let _ = s.write_all(payload);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text.split_once("\r\n\r\n").expect("an http reply");
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).expect("a json body"))
}

fn long_name(n: usize) -> String {
    "n".repeat(n)
}

/// Names the rule `[A-Za-z0-9][A-Za-z0-9_.-]{0,127}` refuses, each with
/// what the refusal must say.
fn bad_names() -> Vec<(String, &'static str)> {
    vec![
        ("../x".into(), "must start with a letter or digit"),
        ("a/b".into(), "contains '/'"),
        ("x/../../y".into(), "contains '/'"),
        ("".into(), "must not be empty"),
        (long_name(129), "longer than 128"),
        ("-x".into(), "must start with a letter or digit"),
        ("--force".into(), "must start with a letter or digit"),
        (".hidden".into(), "must start with a letter or digit"),
        ("..".into(), "must start with a letter or digit"),
        ("a\tb".into(), "contains '\\t'"),
        ("a\nb".into(), "contains '\\n'"),
        ("a\rb".into(), "contains '\\r'"),
        ("a\u{1}b".into(), "contains '\\u{1}'"),
        ("a\u{1b}[2Jb".into(), "contains '\\u{1b}'"),
        ("a\u{7f}b".into(), "contains '\\u{7f}'"),
        ("a b".into(), "contains ' '"),
        ("a:b".into(), "contains ':'"),
        ("é".into(), "must start with a letter or digit"),
    ]
}

#[test]
fn bad_names_are_refused_by_the_cli_and_change_nothing() {
    let d = quiet_daemon();
    d.ok(&[
        "volume", "create", "keep", "--size", "16M", "--label", "a=b",
    ]);
    // The boundary: 128 characters is a valid name.
    let ok = long_name(128);
    d.ok(&["volume", "create", "--size", "16M", &ok]);
    assert_eq!(d.json(&["volume", "inspect", &ok])["name"], ok.as_str());

    for (name, reason) in bad_names() {
        // After `--` so clap passes a leading '-' on to the daemon.
        cli_refuses(
            &d,
            &["volume", "create", "--size", "16M", "--", &name],
            &["invalid argument", "volume name", reason],
        );
        for verb in ["mount", "unmount", "rm"] {
            cli_refuses(
                &d,
                &["volume", verb, "--", &name],
                &["invalid argument", "volume name", reason],
            );
        }
        cli_refuses(
            &d,
            &["volume", "resize", "--size", "32M", "--", &name],
            &["invalid argument", "volume name", reason],
        );
        // A read may refuse the name or simply not find it.
        let err = cli_refuses(&d, &["volume", "inspect", "--", &name], &[]);
        assert!(
            err.contains(reason) || (err.contains("not found") && !name.is_empty()),
            "inspect {name:?}: {err:?}"
        );
    }
    // Without `--` a leading '-' is an unknown option: still one clear line.
    cli_refuses(
        &d,
        &["volume", "create", "-x"],
        &["unexpected argument '-x'"],
    );
    cli_refuses(
        &d,
        &["volume", "rm", "--bogus", "keep"],
        &["unexpected argument '--bogus'"],
    );
    d.ok(&["volume", "rm", "keep"]);
}

#[test]
fn bad_names_are_refused_by_rest_and_change_nothing() {
    let d = quiet_daemon();
    d.ok(&["volume", "create", "keep", "--size", "16M"]);
    let mut names = bad_names();
    // NUL cannot be passed in argv; JSON carries it.
    names.push(("a\u{0}b".into(), "contains '\\0'"));
    for (name, reason) in names {
        let msg = api_refuses(
            &d,
            "POST",
            "/v1/volumes",
            &body(json!({"name": name, "size": "16M"})),
            400,
            "invalid_argument",
            &["volume name", reason],
        );
        assert!(
            !msg.contains('\n') && !msg.contains('\u{0}'),
            "control characters are escaped in messages: {msg:?}"
        );
    }
    // A bad pool name is refused the same way.
    api_refuses(
        &d,
        "POST",
        "/v1/volumes",
        &body(json!({"name": "v", "size": "16M", "pool": "../default"})),
        400,
        "invalid_argument",
        &["pool name"],
    );
}

#[test]
fn names_in_the_url_path_never_reach_anything_else() {
    let d = quiet_daemon();
    d.ok(&["volume", "create", "keep", "--size", "16M"]);
    // Encoded separators and dot segments: the router decodes them into a
    // name, which is then refused or not found; nothing outside is touched.
    let encoded = [
        "..%2Fx",
        "..%2F..%2F..%2Fetc",
        "a%2Fb",
        "%2E%2E",
        "..",
        "%2e",
        "a%00b",
        "a%0Ab",
        "keep%2F..%2Fkeep",
        "%2Fkeep",
    ];
    for n in encoded {
        let path = format!("/v1/volumes/{n}");
        let (status, reply) = unchanged(&d, &format!("GET {path}"), || d.http("GET", &path, b""));
        assert!(
            status == 400 || status == 404,
            "GET {path}: {status} {reply}"
        );
        error_message(
            &reply,
            if status == 400 {
                "invalid_argument"
            } else {
                "not_found"
            },
        );
        // Writes validate the name: 400, or 404 when the router sees no
        // such endpoint.
        let writes = [
            ("DELETE", path.clone(), Vec::new()),
            ("DELETE", format!("{path}?force=true"), Vec::new()),
            ("POST", format!("{path}/mount"), body(json!({}))),
            ("POST", format!("{path}/unmount"), body(json!({}))),
            (
                "POST",
                format!("{path}/resize"),
                body(json!({"size": "1G"})),
            ),
        ];
        for (method, p, b) in writes {
            let (status, reply) =
                unchanged(&d, &format!("{method} {p}"), || d.http(method, &p, &b));
            assert!(
                status == 400 || status == 404,
                "{method} {p}: {status} {reply}"
            );
            error_message(
                &reply,
                if status == 400 {
                    "invalid_argument"
                } else {
                    "not_found"
                },
            );
        }
    }
    // Unencoded dot segments are not normalised into another endpoint.
    for p in [
        "/v1/volumes/../volumes/keep",
        "/v1/volumes/keep/../../version",
        "/v1/volumes/keep/mount/..",
    ] {
        let (status, reply) = unchanged(&d, &format!("GET {p}"), || d.http("GET", p, b""));
        assert_eq!(status, 404, "GET {p}: {reply}");
        error_message(&reply, "not_found");
        let (status, reply) = unchanged(&d, &format!("POST {p}"), || {
            d.http("POST", p, &body(json!({})))
        });
        assert!(status == 404 || status == 405, "POST {p}: {status} {reply}");
    }
    // The one volume is still there, unmounted.
    let v = d.json(&["volume", "inspect", "keep"]);
    assert_eq!(v["state"], "available");
}

#[test]
fn bad_sizes_are_refused_and_change_nothing() {
    let d = quiet_daemon();
    d.ok(&["volume", "create", "keep", "--size", "16M"]);
    let cases: &[(&str, &str)] = &[
        ("0", "must be greater than zero"),
        ("0M", "must be greater than zero"),
        ("-1", "must start with a number"),
        ("10Q", "unknown unit"),
        ("1e3", "unknown unit"),
        ("1.5G", "unknown unit"),
        ("", "must start with a number"),
        ("M", "must start with a number"),
        (" 16M", "must start with a number"),
        ("16M ", "unknown unit"),
        ("+16M", "must start with a number"),
        ("99999999999P", "too large"),
        ("18446744073709551616", "too large"),
    ];
    for (size, reason) in cases {
        let quoted = format!("size {size:?}");
        // `--size=VALUE` so that "-1" reaches the daemon as a value.
        let flag = format!("--size={size}");
        cli_refuses(
            &d,
            &["volume", "create", "v", &flag],
            &["invalid argument", &quoted, reason],
        );
        cli_refuses(
            &d,
            &["volume", "resize", "keep", &flag],
            &["invalid argument", &quoted, reason],
        );
        api_refuses(
            &d,
            "POST",
            "/v1/volumes",
            &body(json!({"name": "v", "size": size})),
            400,
            "invalid_argument",
            &[&quoted, reason],
        );
        api_refuses(
            &d,
            "POST",
            "/v1/volumes/keep/resize",
            &body(json!({"size": size})),
            400,
            "invalid_argument",
            &[&quoted, reason],
        );
    }
    // A size that is not a string is a malformed body, named by field.
    for bad in [json!(-1), json!(1000), json!(["1G"]), json!({"G": 1})] {
        api_refuses(
            &d,
            "POST",
            "/v1/volumes",
            &body(json!({"name": "v", "size": bad})),
            400,
            "invalid_argument",
            &["size"],
        );
    }
    // Shrinking is refused, naming both sizes.
    cli_refuses(
        &d,
        &["volume", "resize", "keep", "--size", "8M"],
        &["shrinking is not supported", "16777216"],
    );
    assert_eq!(
        d.json(&["volume", "inspect", "keep"])["size_bytes"],
        16 << 20
    );
}

#[test]
fn sizes_bigger_than_the_pool_are_refused_and_change_nothing() {
    if !common::require_root_loop("sizes_bigger_than_the_pool_are_refused_and_change_nothing") {
        return;
    }
    let d = quiet_daemon();
    d.ok(&["volume", "create", "keep", "--size", "16M"]);
    let pool = d.json(&["pool", "inspect", "default"]);
    assert_eq!(pool["driver"], "loop", "{pool}");
    let available = pool["available_bytes"].as_u64().unwrap();
    // Just over what is available (for a resize, on top of the volume's own
    // 16 MiB), in whole MiB, and something absurd.
    let over = format!("{}M", (available >> 20) + 2);
    let grow_over = format!("{}M", (available >> 20) + 16 + 2);
    let cases = [
        (over.as_str(), grow_over.as_str()),
        ("1P", "1P"),
        ("8192P", "8192P"),
    ];
    for (size, grow) in cases {
        cli_refuses(
            &d,
            &["volume", "create", "big", "--size", size],
            &["pool \"default\" cannot hold", "available"],
        );
        cli_refuses(
            &d,
            &["volume", "resize", "keep", "--size", grow],
            &["pool \"default\" cannot hold", "available"],
        );
        api_refuses(
            &d,
            "POST",
            "/v1/volumes",
            &body(json!({"name": "big", "size": size})),
            507,
            "capacity",
            &["default", "available"],
        );
        api_refuses(
            &d,
            "POST",
            "/v1/volumes/keep/resize",
            &body(json!({"size": grow})),
            507,
            "capacity",
            &["default", "available"],
        );
    }
    // A positive control: growing within what is available works.
    d.ok(&["volume", "resize", "keep", "--size", "32M"]);
    d.assert_no_leftovers();
}

#[test]
fn unknown_options_fields_and_bad_labels_are_refused() {
    let d = quiet_daemon();
    d.ok(&["volume", "create", "keep", "--size", "16M"]);
    // CLI: unknown options, labels without '=', bad label keys, bad fs.
    cli_refuses(
        &d,
        &["volume", "create", "v", "--bogus"],
        &["unexpected argument '--bogus'"],
    );
    cli_refuses(
        &d,
        &["volume", "create", "v", "--size", "16M", "--sise", "1G"],
        &["unexpected argument '--sise'"],
    );
    cli_refuses(&d, &["volume", "frobnicate", "v"], &["frobnicate"]);
    cli_refuses(&d, &["-o", "yaml", "volume", "ls"], &["yaml"]);
    cli_refuses(
        &d,
        &["volume", "create", "v", "--label", "foo"],
        &["label \"foo\"", "KEY=VALUE"],
    );
    cli_refuses(
        &d,
        &[
            "volume", "create", "v", "--label", "a=b", "--label", "novalue",
        ],
        &["label \"novalue\"", "KEY=VALUE"],
    );
    cli_refuses(
        &d,
        &["volume", "create", "v", "--label", "=b"],
        &["label key \"\""],
    );
    cli_refuses(
        &d,
        &["volume", "create", "v", "--label", "a\tb=c"],
        &["label key \"a\\tb\""],
    );
    cli_refuses(
        &d,
        &["volume", "create", "v", "--label", "a=b\u{1}"],
        &["label \"a\" value"],
    );
    cli_refuses(
        &d,
        &["volume", "create", "v", "--fs", "btrfs"],
        &["filesystem \"btrfs\""],
    );
    cli_refuses(
        &d,
        &["volume", "create", "v", "--pool", "nope"],
        &["pool \"nope\" not found"],
    );

    // REST: unknown fields are named, in every body.
    let fields: &[(&str, &str, Value)] = &[
        ("POST", "/v1/volumes", json!({"name": "v", "sise": "1G"})),
        (
            "POST",
            "/v1/volumes",
            json!({"name": "v", "labels": {}, "extra_field": 1}),
        ),
        ("POST", "/v1/volumes/keep/mount", json!({"idd": "x"})),
        ("POST", "/v1/volumes/keep/unmount", json!({"consumer": "x"})),
        (
            "POST",
            "/v1/volumes/keep/resize",
            json!({"size": "32M", "online": true}),
        ),
    ];
    for (method, path, b) in fields {
        let field = b
            .as_object()
            .unwrap()
            .keys()
            .find(|k| !["name", "labels", "size"].contains(&k.as_str()))
            .unwrap()
            .clone();
        api_refuses(
            &d,
            method,
            path,
            &body(b.clone()),
            400,
            "invalid_argument",
            &[&format!("unknown field `{field}`")],
        );
    }
    // Labels: not a map, bad keys, bad values.
    for (labels, names) in [
        (json!(["a=b"]), &["labels"][..]),
        (json!({"": "b"}), &["label key \"\""][..]),
        (json!({"a=b": "c"}), &["label key \"a=b\""][..]),
        (json!({"a": "b\nc"}), &["label \"a\" value"][..]),
        (json!({"a": 1}), &["labels"][..]),
    ] {
        api_refuses(
            &d,
            "POST",
            "/v1/volumes",
            &body(json!({"name": "v", "size": "16M", "labels": labels})),
            400,
            "invalid_argument",
            names,
        );
    }
    api_refuses(
        &d,
        "POST",
        "/v1/volumes",
        &body(json!({"name": "v", "size": "16M", "fs": "btrfs"})),
        400,
        "invalid_argument",
        &["filesystem \"btrfs\""],
    );
    api_refuses(
        &d,
        "POST",
        "/v1/volumes",
        &body(json!({"name": "v", "size": "16M", "pool": "nope"})),
        404,
        "not_found",
        &["pool \"nope\""],
    );
    // Unknown or malformed query parameters on DELETE, named.
    api_refuses(
        &d,
        "DELETE",
        "/v1/volumes/keep?forse=true",
        b"",
        400,
        "invalid_argument",
        &["unknown field `forse`"],
    );
    api_refuses(
        &d,
        "DELETE",
        "/v1/volumes/keep?force=true&recursive=1",
        b"",
        400,
        "invalid_argument",
        &["unknown field `recursive`"],
    );
    api_refuses(
        &d,
        "DELETE",
        "/v1/volumes/keep?force=maybe",
        b"",
        400,
        "invalid_argument",
        &["force"],
    );
    api_refuses(
        &d,
        "GET",
        "/v1/events?limit=many",
        b"",
        400,
        "invalid_argument",
        &["limit"],
    );
    // The volume survived all of it.
    assert_eq!(
        d.json(&["volume", "inspect", "keep"])["size_bytes"],
        16 << 20
    );
}

#[test]
fn malformed_and_oversized_bodies_are_refused() {
    let d = quiet_daemon();
    d.ok(&["volume", "create", "keep", "--size", "16M"]);
    let malformed: &[&[u8]] = &[
        b"{\"name\":",
        b"{\"name\": \"v\", \"size\": \"16M\"",
        b"not json",
        b"",
        b"[]",
        b"null",
        b"\"v\"",
        b"{\"name\": \"v\"} trailing",
        b"{\"name\": \"v\", \"name\": \"w\"}",
        b"\xff\xfe{}",
        b"{}",
    ];
    for b in malformed {
        api_refuses(&d, "POST", "/v1/volumes", b, 400, "invalid_argument", &[]);
        api_refuses(
            &d,
            "POST",
            "/v1/volumes/keep/resize",
            b,
            400,
            "invalid_argument",
            &[],
        );
    }
    // A body without a JSON content type is refused the same way.
    let payload = body(json!({"name": "v", "size": "16M"}));
    let head = format!(
        "POST /v1/volumes HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        payload.len()
    );
    let (status, reply) = unchanged(&d, "POST text/plain", || raw_request(&d, &head, &payload));
    assert_eq!(status, 400, "{reply}");
    let msg = error_message(&reply, "invalid_argument");
    assert!(msg.contains("Content-Type"), "{msg}");

    // 2 MiB: over the 1 MiB limit, whether valid JSON or not.
    let big_label = "x".repeat(2 << 20);
    let big_json = body(json!({"name": "v", "size": "16M", "labels": {"k": big_label}}));
    assert!(big_json.len() >= 2 << 20);
    let big_garbage = vec![b'a'; 2 << 20];
    for b in [&big_json, &big_garbage] {
        api_refuses(&d, "POST", "/v1/volumes", b, 413, "payload_too_large", &[]);
        api_refuses(
            &d,
            "POST",
            "/v1/volumes/keep/mount",
            b,
            413,
            "payload_too_large",
            &[],
        );
    }
    // Just under the limit is not refused for its size (a positive control).
    let fits = body(json!({"name": "fits", "size": "16M", "labels": {"k": "y".repeat(4000)}}));
    let (status, reply) = d.http("POST", "/v1/volumes", &fits);
    assert_eq!(status, 200, "{reply}");
    d.ok(&["volume", "rm", "fits"]);
}

#[test]
fn creating_an_existing_name() {
    let d = quiet_daemon();
    let first = d.json(&[
        "volume", "create", "data", "--size", "16M", "--label", "app=db",
    ]);
    let id = first["id"].as_str().unwrap().to_string();
    // The same parameters (or fewer): success, the same volume.
    for args in [
        &[
            "volume", "create", "data", "--size", "16M", "--label", "app=db",
        ][..],
        &["volume", "create", "data", "--size", "16M"][..],
        &["volume", "create", "data", "--size", "16384K"][..],
        &["volume", "create", "data"][..],
    ] {
        let again = unchanged(&d, &format!("{args:?}"), || d.json(args));
        assert_eq!(again["id"], id.as_str(), "{args:?}: {again}");
        assert_eq!(again, first, "{args:?}");
    }
    let (status, again) = unchanged(&d, "POST same", || {
        d.http(
            "POST",
            "/v1/volumes",
            &body(json!({"name": "data", "size": "16M", "labels": {"app": "db"}})),
        )
    });
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], id.as_str());
    // Other parameters: a conflict naming what differs.
    cli_refuses(
        &d,
        &["volume", "create", "data", "--size", "32M"],
        &["\"data\" already exists", "size is 16777216 bytes"],
    );
    cli_refuses(
        &d,
        &[
            "volume", "create", "data", "--size", "16M", "--label", "app=web",
        ],
        &["\"data\" already exists", "labels differ"],
    );
    let other_fs = if first["fs"] == "xfs" { "ext4" } else { "xfs" };
    cli_refuses(
        &d,
        &["volume", "create", "data", "--fs", other_fs],
        &["\"data\" already exists", "filesystem is"],
    );
    api_refuses(
        &d,
        "POST",
        "/v1/volumes",
        &body(json!({"name": "data", "size": "1G"})),
        409,
        "already_exists",
        &["data", "size is 16777216 bytes"],
    );
    api_refuses(
        &d,
        "POST",
        "/v1/volumes",
        &body(json!({"name": "data", "labels": {"app": "db", "tier": "1"}})),
        409,
        "already_exists",
        &["labels differ"],
    );
    let v = d.json(&["volume", "inspect", "data"]);
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["labels"], json!({"app": "db"}));
}

#[test]
fn removing_a_mounted_volume_needs_force() {
    if !common::require_root_loop("removing_a_mounted_volume_needs_force") {
        return;
    }
    let d = quiet_daemon();
    d.ok(&["volume", "create", "busy", "--size", "16M"]);
    let mp = d.ok(&["volume", "mount", "busy"]).trim().to_string();
    std::fs::write(Path::new(&mp).join("keep-me"), b"data").unwrap();
    assert!(!d.host_leftovers().is_empty(), "mounted volume not on host");
    cli_refuses(
        &d,
        &["volume", "rm", "busy"],
        &["\"busy\" is in use", "--force"],
    );
    api_refuses(
        &d,
        "DELETE",
        "/v1/volumes/busy",
        b"",
        409,
        "in_use",
        &["busy"],
    );
    api_refuses(
        &d,
        "DELETE",
        "/v1/volumes/busy?force=false",
        b"",
        409,
        "in_use",
        &["busy"],
    );
    assert_eq!(
        std::fs::read(Path::new(&mp).join("keep-me")).unwrap(),
        b"data"
    );
    assert_eq!(d.json(&["volume", "inspect", "busy"])["state"], "mounted");
    // With --force it goes, mount and all.
    d.ok(&["volume", "rm", "--force", "busy"]);
    assert_eq!(d.json(&["volume", "ls"]), json!([]));
    assert_eq!(d.images(), Vec::<String>::new());
    d.assert_no_leftovers();
}

#[test]
fn every_operation_on_a_missing_volume_is_not_found() {
    let d = quiet_daemon();
    d.ok(&["volume", "create", "other", "--size", "16M"]);
    let not_found = ["volume \"ghost\" not found"];
    for args in [
        &["volume", "inspect", "ghost"][..],
        &["volume", "rm", "ghost"][..],
        &["volume", "rm", "--force", "ghost"][..],
        &["volume", "mount", "ghost"][..],
        &["volume", "mount", "ghost", "--id", "c1"][..],
        &["volume", "unmount", "ghost"][..],
        &["volume", "resize", "ghost", "--size", "1G"][..],
    ] {
        cli_refuses(&d, args, &not_found);
    }
    cli_refuses(
        &d,
        &["pool", "inspect", "ghost"],
        &["pool \"ghost\" not found"],
    );
    for (method, path, b) in [
        ("GET", "/v1/volumes/ghost", Vec::new()),
        ("DELETE", "/v1/volumes/ghost", Vec::new()),
        ("DELETE", "/v1/volumes/ghost?force=true", Vec::new()),
        ("POST", "/v1/volumes/ghost/mount", body(json!({}))),
        ("POST", "/v1/volumes/ghost/mount", body(json!({"id": "c1"}))),
        ("POST", "/v1/volumes/ghost/unmount", body(json!({}))),
        (
            "POST",
            "/v1/volumes/ghost/resize",
            body(json!({"size": "1G"})),
        ),
    ] {
        api_refuses(&d, method, path, &b, 404, "not_found", &not_found);
    }
    api_refuses(
        &d,
        "GET",
        "/v1/pools/ghost",
        b"",
        404,
        "not_found",
        &["pool \"ghost\" not found"],
    );
    // The mounts directory holds no mountpoint for the ghost.
    assert!(!d.run.join("mounts").join("ghost").exists());
}

/// The "nothing changed" check is only worth something if it sees changes:
/// each part of the snapshot notices the calls that should change it.
#[test]
fn the_snapshot_sees_every_kind_of_change() {
    let d = quiet_daemon();
    let before = snapshot(&d);
    d.ok(&["volume", "create", "seen", "--size", "16M"]);
    let after = snapshot(&d);
    assert_ne!(before.volumes, after.volumes);
    assert_ne!(before.events, after.events);
    assert_ne!(before.tree, after.tree);
    assert_ne!(before.store, after.store);
    // The pool holds images (loop) or directories (dir) named by volume id.
    assert_ne!(before.images, after.images);
    let refused = std::panic::catch_unwind(|| {
        unchanged(&d, "a create", || {
            d.ok(&["volume", "create", "seen2", "--size", "16M"])
        })
    });
    assert!(refused.is_err(), "unchanged() missed a create");
    if common::require_root_loop("the_snapshot_sees_every_kind_of_change") {
        let before = snapshot(&d);
        d.ok(&["volume", "mount", "seen"]);
        let after = snapshot(&d);
        assert_ne!(before.leftovers, after.leftovers);
        d.ok(&["volume", "rm", "--force", "seen"]);
        d.assert_no_leftovers();
    }
}

// ----- pools: where they may live, and their overcommit ratio ---------------

/// A pool (or a btrfs disk file) in /proc, /sys or /dev is refused, named as
/// given and after symlinks are resolved, before anything is made there.
#[test]
fn pools_in_kernel_filesystems_are_refused_and_change_nothing() {
    let d = quiet_daemon();
    let root = d.dir.path().canonicalize().unwrap();
    // A symlink that leads into /proc: only resolving it shows where.
    let link = root.join("innocent");
    std::os::unix::fs::symlink("/proc/self", &link).unwrap();
    let through_link = link.join("fdinfo");
    let through_link = through_link.to_str().unwrap();
    let shm = format!("/dev/shm/ballast-pool-{}", std::process::id());
    let shm_file = format!("{shm}.img");
    for driver in ["dir", "loop"] {
        for (path, names) in [
            ("/proc/self", &["/proc", "kernel filesystem"][..]),
            ("/proc", &["/proc"][..]),
            ("/sys/fs/ballast", &["/sys"][..]),
            ("/dev", &["/dev"][..]),
            (shm.as_str(), &["/dev", "not storage"][..]),
            (
                through_link,
                &["resolves to /proc/", "kernel filesystem"][..],
            ),
        ] {
            cli_refuses(
                &d,
                &["pool", "create", "p", "--driver", driver, "--path", path],
                names,
            );
            api_refuses(
                &d,
                "POST",
                "/v1/pools",
                &body(json!({"name": "p", "driver": driver, "path": path})),
                400,
                "invalid_argument",
                names,
            );
        }
    }
    cli_refuses(
        &d,
        &[
            "pool",
            "create",
            "p",
            "--driver",
            "btrfs",
            "--disk-file",
            &shm_file,
            "--disk-size",
            "1G",
        ],
        &["disk file", "/dev"],
    );
    cli_refuses(
        &d,
        &[
            "pool",
            "create",
            "p",
            "--driver",
            "btrfs",
            "--path",
            "/proc/self",
        ],
        &["/proc"],
    );
    api_refuses(
        &d,
        "POST",
        "/v1/pools",
        &body(json!({"name": "p", "driver": "btrfs", "disk_file": shm_file, "disk_size": "1G"})),
        400,
        "invalid_argument",
        &["disk file", "/dev"],
    );
    // Nothing was made there either (outside the daemon's own directories).
    assert!(!Path::new(&shm).exists(), "{shm} was created");
    assert!(!Path::new(&shm_file).exists(), "{shm_file} was created");
    let pools = d.json(&["pool", "ls"]);
    assert_eq!(pools.as_array().unwrap().len(), 1, "{pools}");
    // A positive control: a plain directory is a pool.
    let fine = root.join("fine");
    d.ok(&[
        "pool",
        "create",
        "p",
        "--driver",
        "dir",
        "--path",
        fine.to_str().unwrap(),
    ]);
    d.ok(&["pool", "rm", "p"]);
}

/// An overcommit ratio must be a finite number, 0 < r <= 100: 1e308 made a
/// pool whose available bytes were u64::MAX.
#[test]
fn overcommit_ratios_out_of_range_are_refused_and_change_nothing() {
    let d = quiet_daemon();
    for bad in ["1e308", "0", "-1", "100.5", "101", "inf", "NaN", "-0"] {
        cli_refuses(
            &d,
            &[
                "pool",
                "create",
                "p",
                "--driver",
                "dir",
                &format!("--overcommit={bad}"),
            ],
            &["overcommit ratio", "at most 100"],
        );
    }
    for bad in [
        json!(1e308),
        json!(0),
        json!(-1.5),
        json!(100.01),
        json!(1000),
    ] {
        api_refuses(
            &d,
            "POST",
            "/v1/pools",
            &body(json!({"name": "p", "driver": "loop", "overcommit_ratio": bad})),
            400,
            "invalid_argument",
            &["overcommit ratio", "at most 100"],
        );
    }
    // The bounds themselves are fine, and the pool offers what it says.
    let dir = d.dir.path().canonicalize().unwrap().join("p100");
    let p = d.json(&[
        "pool",
        "create",
        "p",
        "--path",
        dir.to_str().unwrap(),
        "--overcommit",
        "100",
    ]);
    let capacity = p["capacity_bytes"].as_u64().unwrap();
    let available = p["available_bytes"].as_u64().unwrap();
    assert!(available <= capacity.saturating_mul(100), "{p}");
    assert!(available < u64::MAX, "{p}");
    d.ok(&["pool", "rm", "p"]);
}

/// `serve` with a bad ratio (flag, environment or config file) exits 1 with
/// a message naming it, before it makes any directory.
#[test]
fn serve_refuses_an_out_of_range_overcommit_ratio_and_makes_nothing() {
    let scratch = tempfile::Builder::new()
        .prefix("ballast-test-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let config = scratch.path().join("config.toml");
    std::fs::write(&config, "overcommit_ratio = 1e308\n").unwrap();
    let config = config.to_str().unwrap().to_string();
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 4] = [
        (&["--overcommit-ratio", "1e308"], &[]),
        (&["--overcommit-ratio=-2"], &[]),
        (&[], &[("BALLAST_OVERCOMMIT_RATIO", "inf")]),
        (&["--config", &config], &[]),
    ];
    for (args, env) in cases {
        let state = scratch.path().join("state");
        let run = scratch.path().join("run");
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.arg("serve")
            .arg("--state-dir")
            .arg(&state)
            .arg("--run-dir")
            .arg(&run)
            .args(["--listen", "none", "--no-docker"])
            .args(args)
            .env_remove("BALLAST_OVERCOMMIT_RATIO")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve {args:?} {env:?} kept running with a bad ratio");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "serve {args:?} {env:?}: {stderr}"
        );
        assert!(
            stderr.contains("overcommit ratio") && stderr.contains("at most 100"),
            "serve {args:?} {env:?}: {stderr}"
        );
        assert!(!state.exists(), "serve {args:?} {env:?} made its state dir");
        assert!(!run.exists(), "serve {args:?} {env:?} made its run dir");
    }
}

/// Placement fields of a create (node, selector, spread) are checked like
/// every name and label: a bad one is refused by name and changes nothing,
/// and a node or selector nothing matches says why.
#[test]
fn bad_placements_are_refused_and_change_nothing() {
    let d = quiet_daemon();
    for (b, names) in [
        (json!({"name": "v", "node": "../x"}), &["node"][..]),
        (json!({"name": "v", "node": ""}), &["node"][..]),
        (json!({"name": "v", "node": "a\u{1}b"}), &["node"][..]),
        (
            json!({"name": "v", "selector": {"zone=a": "b"}}),
            &["label"][..],
        ),
        (
            json!({"name": "v", "selector": {"zone": "a\nb"}}),
            &["label"][..],
        ),
        (json!({"name": "v", "spread": "zo=ne"}), &["label"][..]),
        (json!({"name": "v", "selector": "zone=a"}), &[][..]),
    ] {
        api_refuses(
            &d,
            "POST",
            "/v1/volumes",
            &body(b),
            400,
            "invalid_argument",
            names,
        );
    }
    let msg = api_refuses(
        &d,
        "POST",
        "/v1/volumes",
        &body(json!({"name": "v", "node": "no-such-node"})),
        404,
        "not_found",
        &["no-such-node"],
    );
    assert!(msg.contains("node"), "{msg}");
    let msg = api_refuses(
        &d,
        "POST",
        "/v1/volumes",
        &body(json!({"name": "v", "selector": {"zone": "nowhere"}})),
        409,
        "unplaceable",
        &["selector"],
    );
    assert!(msg.contains("no node can take"), "{msg}");
    cli_refuses(
        &d,
        &["volume", "create", "v", "--selector", "zone"],
        &["KEY=VALUE"],
    );
}
