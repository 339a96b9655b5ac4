//! The REST API's surface, through the real binary: the socket's mode, the
//! OpenAPI document (served, committed and complete), unknown endpoints, the
//! TCP listener's token rule, TLS, the daemon's configuration precedence, and
//! a store the daemon must refuse to start on.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, BIN};
use serde_json::{json, Value};

/// The committed document; `ballast openapi > openapi.json` at the repo root
/// regenerates it.
const COMMITTED_OPENAPI: &str = include_str!("../../../openapi.json");
/// The router's source: the routes it registers are read from it.
const REST_SOURCE: &str = include_str!("../../server/src/rest.rs");
/// The backup routes, merged into the router from their own module.
const BACKUP_ROUTES_SOURCE: &str = include_str!("../../server/src/backups.rs");

/// A reply: status, lower-cased header lines, body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "non-json body ({e}) with status {}: {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

fn parse_reply(resp: &[u8]) -> Option<Reply> {
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&resp[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    if !status_line.starts_with("HTTP/1.") {
        return None;
    }
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let mut body = resp[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body);
    }
    Some(Reply {
        status,
        headers,
        body,
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&b[..eol]).unwrap_or("0").trim();
        let n = usize::from_str_radix(size, 16).unwrap_or(0);
        if n == 0 || b.len() < eol + 2 + n {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[(eol + 4 + n).min(b.len())..];
    }
    out
}

fn request_bytes(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        head.push_str("Host: localhost\r\n");
    }
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Send one request on a connected stream and read the whole reply.
fn exchange(mut s: impl Read + Write, req: &[u8]) -> Vec<u8> {
    let _ = s.write_all(req);
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    resp
}

fn unix_request(d: &Daemon, method: &str, path: &str, body: &[u8]) -> Reply {
    let s = UnixStream::connect(d.socket()).expect("connect to the api socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let resp = exchange(s, &request_bytes(method, path, &[], body));
    parse_reply(&resp).expect("an http reply")
}

fn tcp_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let s = TcpStream::connect(addr).expect("connect to the tcp listener");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let resp = exchange(s, &request_bytes(method, path, headers, body));
    parse_reply(&resp).expect("an http reply")
}

/// Check the error body and return its message.
fn error_message(reply: &Reply, status: u16, code: &str) -> String {
    assert_eq!(
        reply.status,
        status,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "an error reply is JSON"
    );
    let v = reply.json();
    assert_eq!(v.as_object().map(|o| o.len()), Some(1), "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    let msg = v["error"]["message"]
        .as_str()
        .expect("a message")
        .to_string();
    assert!(!msg.is_empty());
    msg
}

/// The TCP address the daemon logged it bound (`--listen HOST:0`).
fn tcp_addr(d: &Daemon) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = d.log();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("serving the REST API on tcp"))
        {
            let addr = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .unwrap_or_else(|| panic!("no addr= in {line:?}"));
            return addr.parse().unwrap_or_else(|e| panic!("{addr:?}: {e}"));
        }
        assert!(
            Instant::now() < deadline,
            "the daemon never logged its tcp address:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_token(d: &Daemon) -> String {
    let path = d.state.join("token");
    let meta = std::fs::metadata(&path).expect("the token file");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o600,
        "{} must be 0600",
        path.display()
    );
    let token = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert_eq!(token.len(), 64, "a 256-bit hex token: {token:?}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token:?}");
    token
}

/// Run the CLI with exactly `args` and no `BALLAST_*` from this process;
/// `--socket` points nowhere, so only `--host` can reach a daemon.
fn remote_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--socket")
        .arg("/nonexistent/ballast-api.sock")
        .args(args)
        .stdin(Stdio::null());
    for (k, _) in std::env::vars() {
        if k.starts_with("BALLAST_") {
            cmd.env_remove(k);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ballast")
}

fn remote_ok(args: &[&str]) -> String {
    let out = remote_cli(args, &[]);
    assert!(
        out.status.success(),
        "ballast {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn remote_json(args: &[&str]) -> Value {
    let out = remote_ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ballast {args:?}: not json ({e}): {out}"))
}

/// The CLI fails: exit 1, one line on stderr; returns it.
fn remote_fails(args: &[&str]) -> String {
    let out = remote_cli(args, &[]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "ballast {args:?}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("ballast: "), "{err:?}");
    err
}

fn joined<'a>(base: &[&'a str], args: &[&'a str]) -> Vec<&'a str> {
    base.iter().chain(args).copied().collect()
}

fn names(list: &Value) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .expect("a list")
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// The first place two JSON values differ, as a JSON pointer.
fn first_difference(a: &Value, b: &Value, at: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for k in x.keys().chain(y.keys()) {
                let here = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                match (x.get(k), y.get(k)) {
                    (Some(p), Some(q)) => {
                        if let Some(d) = first_difference(p, q, &here) {
                            return Some(d);
                        }
                    }
                    _ => return Some(here),
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{at}/{i}"))),
        _ if a == b => None,
        _ => Some(if at.is_empty() { "/".into() } else { at.into() }),
    }
}

#[test]
fn the_api_socket_is_owner_only() {
    let d = Daemon::start();
    let meta = std::fs::symlink_metadata(d.socket()).expect("the api socket");
    assert!(meta.file_type().is_socket(), "{:?}", meta.file_type());
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o600,
        "the api socket must be 0600, is {:o}",
        meta.permissions().mode() & 0o7777
    );
    assert_eq!(meta.uid(), nix::unistd::geteuid().as_raw());
    // And it is the API: no token is needed on it, even to write.
    let r = unix_request(
        &d,
        "POST",
        "/v1/volumes",
        br#"{"name":"sock","size":"16M"}"#,
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    d.ok(&["volume", "rm", "sock"]);
}

#[test]
fn the_served_openapi_document_is_the_committed_one() {
    let regenerate = "regenerate it at the repo root with `cargo run -p ballast -- openapi > openapi.json` and commit it";
    let committed: Value = serde_json::from_str(COMMITTED_OPENAPI).unwrap_or_else(|e| {
        panic!("openapi.json at the repo root is not JSON ({e}); {regenerate}")
    });
    let d = Daemon::start();
    let r = unix_request(&d, "GET", "/openapi.json", b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let served = r.json();
    if let Some(at) = first_difference(&served, &committed, "") {
        panic!(
            "the served OpenAPI document differs from openapi.json at the repo root (first at {at}); {regenerate}"
        );
    }
    // `ballast openapi` prints the same document.
    let printed: Value = serde_json::from_str(&d.ok(&["openapi"])).unwrap();
    assert_eq!(first_difference(&printed, &served, ""), None);
    assert_eq!(served["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(served["openapi"].as_str().unwrap().starts_with("3."));
}

/// (path, methods) of every `.route(...)` in the router's sources.
fn router_routes() -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    assert!(
        REST_SOURCE.contains(".merge(crate::backups::routes())"),
        "the router no longer merges the backup routes: update this test"
    );
    let parts: Vec<&str> = [REST_SOURCE, BACKUP_ROUTES_SOURCE]
        .iter()
        .flat_map(|src| src.split(".route(").skip(1))
        .collect();
    for part in parts {
        let part = part.trim_start();
        let path = part
            .strip_prefix('"')
            .and_then(|p| p.split_once('"'))
            .map(|(p, _)| p.to_string())
            .unwrap_or_else(|| panic!("a route without a literal path: {part:.60}"));
        // The method routers follow, up to the next builder call.
        let end = [
            ".route(",
            ".fallback(",
            ".layer(",
            ".method_not_allowed_fallback(",
            // The end of a function that only builds routes.
            "\n}",
        ]
        .iter()
        .filter_map(|m| part.find(m))
        .min()
        .unwrap_or(part.len());
        let spec = &part[..end];
        let mut methods: Vec<String> = ["get", "post", "put", "delete", "patch"]
            .iter()
            .filter(|m| {
                // `get(` as a word, not the tail of `target(`.
                spec.match_indices(&format!("{m}(")).any(|(i, _)| {
                    let before = spec[..i].bytes().next_back();
                    !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
            })
            .map(|m| m.to_string())
            .collect();
        methods.sort();
        assert!(!methods.is_empty(), "route {path} without a method: {spec}");
        out.push((path, methods));
    }
    out
}

#[test]
fn every_route_is_in_the_document_and_every_documented_call_is_served() {
    let doc: Value = serde_json::from_str(COMMITTED_OPENAPI).unwrap();
    let paths = doc["paths"].as_object().expect("paths");
    let routes = router_routes();
    // The parse found the router (11 routes today); a broken parse fails here.
    assert!(routes.len() >= 10, "{routes:?}");
    assert!(routes.iter().any(|(p, _)| p == "/v1/volumes/{name}/resize"));
    for (path, methods) in &routes {
        let item = paths
            .get(path)
            .unwrap_or_else(|| panic!("route {path} is not in openapi.json"));
        let mut documented: Vec<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| ["get", "post", "put", "delete", "patch"].contains(&k.as_str()))
            .cloned()
            .collect();
        documented.sort();
        assert_eq!(&documented, methods, "methods of {path}");
    }
    for path in paths.keys() {
        assert!(
            routes.iter().any(|(p, _)| p == path),
            "{path} is documented but not routed"
        );
    }
    // Each documented call reaches its handler, not the fallbacks.
    let d = Daemon::start();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path.replace("{name}", "ghost");
            if concrete.ends_with("/stream") {
                // A stream never ends: read only until its head arrives.
                let mut s = std::os::unix::net::UnixStream::connect(d.socket()).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
                    .unwrap();
                s.write_all(&request_bytes("GET", &concrete, &[], b""))
                    .unwrap();
                let mut head = [0u8; 512];
                let n = s.read(&mut head).unwrap();
                let head = String::from_utf8_lossy(&head[..n]).to_ascii_lowercase();
                assert!(head.starts_with("http/1.1 200"), "{concrete}: {head}");
                assert!(head.contains("text/event-stream"), "{concrete}: {head}");
                continue;
            }
            let body: &[u8] = if method == "post" { b"{}" } else { b"" };
            let r = unix_request(&d, &method.to_uppercase(), &concrete, body);
            let text = String::from_utf8_lossy(&r.body).to_string();
            assert_ne!(r.status, 405, "{method} {concrete}: {text}");
            assert!(
                !text.contains("no such endpoint"),
                "{method} {concrete} is documented but not served: {text}"
            );
        }
    }
}

#[test]
fn unknown_endpoints_and_methods_get_json_errors() {
    let d = Daemon::start();
    for (method, path) in [
        // `/` is the dashboard (tests/dashboard.rs); its assets are fixed.
        ("GET", "/dashboard/nope.js"),
        ("GET", "/v1"),
        ("GET", "/v2/volumes"),
        ("GET", "/v1/volume"),
        ("GET", "/v1/volumes/x/explode"),
        ("POST", "/v1/volumes/x/explode"),
        ("DELETE", "/v1/pools/default/volumes"),
        ("GET", "/openapi.yaml"),
    ] {
        let r = unix_request(&d, method, path, b"");
        let msg = error_message(&r, 404, "not_found");
        assert_eq!(msg, "no such endpoint", "{method} {path}");
    }
    for (method, path, allowed) in [
        ("PUT", "/v1/volumes", &["GET", "POST"][..]),
        ("DELETE", "/v1/pools", &["GET", "POST"][..]),
        ("GET", "/v1/volumes/x/mount", &["POST"][..]),
        ("POST", "/v1/events", &["GET"][..]),
    ] {
        let r = unix_request(&d, method, path, b"");
        error_message(&r, 405, "method_not_allowed");
        let allow = r.header("allow").unwrap_or_default().to_string();
        for m in allowed {
            assert!(allow.contains(m), "{method} {path}: allow {allow:?}");
        }
    }
    // Nothing was created along the way.
    assert_eq!(d.json(&["volume", "ls"]), json!([]));
}

#[test]
fn tcp_reads_from_loopback_are_open_and_everything_else_needs_the_token() {
    let d = Daemon::start_with(&["--listen", "127.0.0.1:0"], &[]);
    let addr = tcp_addr(&d);
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let token = read_token(&d);
    let bearer = format!("Bearer {token}");

    // Reads from loopback need no token.
    for path in ["/v1/volumes", "/v1/pools", "/v1/version", "/v1/events"] {
        let r = tcp_request(addr, "GET", path, &[], b"");
        assert_eq!(
            r.status,
            200,
            "GET {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        r.json();
    }
    let port = addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "LocalHost".into(),
    ] {
        let r = tcp_request(addr, "GET", "/v1/volumes", &[("Host", &host)], b"");
        assert_eq!(r.status, 200, "Host: {host}");
    }
    // A page on another name rebound to 127.0.0.1 (DNS rebinding) sends its
    // own name as Host: it needs the token like any remote caller.
    for host in [
        "attacker.example",
        "attacker.example:7420",
        "127.0.0.1.nip.io",
        "localhost.evil",
    ] {
        let r = tcp_request(addr, "GET", "/v1/volumes", &[("Host", host)], b"");
        error_message(&r, 401, "unauthorized");
        let r = tcp_request(
            addr,
            "GET",
            "/v1/volumes",
            &[("Host", host), ("Authorization", &bearer)],
            b"",
        );
        assert_eq!(r.status, 200, "Host: {host} with the token");
    }
    // Writes without a token, or with a wrong one, are refused.
    let create = br#"{"name":"tcp","size":"16M"}"#;
    let mut wrong = token.clone();
    wrong.replace_range(63.., if token.ends_with('0') { "1" } else { "0" });
    let wrong_bearer = format!("Bearer {wrong}");
    let lower = format!("bearer {token}");
    let basic = format!("Basic {token}");
    let refused: [&[(&str, &str)]; 6] = [
        &[],
        &[("Authorization", &wrong_bearer)],
        &[("Authorization", &token)],
        &[("Authorization", &lower)],
        &[("Authorization", &basic)],
        &[("Authorization", "Bearer ")],
    ];
    for headers in refused {
        let r = tcp_request(addr, "POST", "/v1/volumes", headers, create);
        let msg = error_message(&r, 401, "unauthorized");
        assert!(msg.contains("token"), "{msg}");
        for (method, path) in [
            ("DELETE", "/v1/volumes/tcp"),
            ("POST", "/v1/volumes/tcp/mount"),
            ("POST", "/v1/volumes/tcp/resize"),
        ] {
            let r = tcp_request(addr, method, path, headers, b"{}");
            error_message(&r, 401, "unauthorized");
        }
    }
    assert_eq!(
        d.json(&["volume", "ls"]),
        json!([]),
        "a refused call created"
    );
    // With the token from <state-dir>/token it works.
    let auth = [("Authorization", bearer.as_str())];
    let r = tcp_request(addr, "POST", "/v1/volumes", &auth, create);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["name"], "tcp");
    let r = tcp_request(addr, "DELETE", "/v1/volumes/tcp", &auth, b"");
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));

    // The CLI over TCP, with -o json before and after the subcommand.
    let host = format!("http://127.0.0.1:{}", addr.port());
    let base = ["--host", host.as_str(), "--token", token.as_str()];
    let created = remote_ok(&joined(
        &base,
        &["volume", "create", "cli", "--size", "16M"],
    ));
    assert_eq!(created.trim(), "cli");
    for args in [
        ["-o", "json", "volume", "ls"],
        ["volume", "ls", "-o", "json"],
        ["volume", "-o", "json", "ls"],
    ] {
        let v = remote_json(&joined(&base, &args));
        assert_eq!(names(&v), ["cli"], "{args:?}");
    }
    let v = remote_json(&[
        "volume", "inspect", "cli", "--output", "json", "--host", &host,
    ]);
    assert_eq!(v["size_bytes"], 16 << 20);
    // The environment works as the flags do.
    let out = remote_cli(
        &["-o", "json", "volume", "create", "env", "--size", "16M"],
        &[("BALLAST_HOST", &host), ("BALLAST_TOKEN", &token)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Reads need no token from loopback; writes do.
    let v = remote_json(&["--host", &host, "-o", "json", "volume", "ls"]);
    assert_eq!(names(&v), ["cli", "env"]);
    let err = remote_fails(&["--host", &host, "volume", "create", "nope", "--size", "16M"]);
    assert!(err.contains("bearer token"), "{err}");
    let err = remote_fails(&["--host", &host, "--token", &wrong, "volume", "rm", "cli"]);
    assert!(err.contains("bearer token"), "{err}");
    assert_eq!(names(&d.json(&["volume", "ls"])), ["cli", "env"]);
    remote_ok(&joined(&base, &["volume", "rm", "cli"]));
    remote_ok(&joined(&base, &["volume", "rm", "env"]));
    assert_eq!(d.json(&["volume", "ls"]), json!([]));
}

/// A local address that is not loopback, if this host has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks a source address.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn tcp_reads_from_other_hosts_need_the_token_too() {
    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIP tcp_reads_from_other_hosts_need_the_token_too: no non-loopback address");
        return;
    };
    let listen = SocketAddr::new(ip, 0).to_string();
    let d = Daemon::start_with(&["--listen", &listen], &[]);
    let addr = tcp_addr(&d);
    assert_eq!(addr.ip(), ip);
    let token = read_token(&d);
    // The peer address is `ip`, not loopback: even a read needs the token.
    let r = tcp_request(addr, "GET", "/v1/volumes", &[], b"");
    error_message(&r, 401, "unauthorized");
    let bearer = format!("Bearer {token}");
    let r = tcp_request(
        addr,
        "GET",
        "/v1/volumes",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

struct Tls {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    /// Another self-signed certificate for the same names.
    other: PathBuf,
}

fn make_tls() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let ck = rcgen::generate_simple_self_signed(names.clone()).unwrap();
    let other = rcgen::generate_simple_self_signed(names).unwrap();
    let t = Tls {
        cert: dir.path().join("cert.pem"),
        key: dir.path().join("key.pem"),
        other: dir.path().join("other.pem"),
        _dir: dir,
    };
    std::fs::write(&t.cert, ck.cert.pem()).unwrap();
    std::fs::write(&t.key, ck.key_pair.serialize_pem()).unwrap();
    std::fs::write(&t.other, other.cert.pem()).unwrap();
    t
}

#[test]
fn tls_listener_serves_https_only() {
    let tls = make_tls();
    let cert = tls.cert.to_str().unwrap();
    let key = tls.key.to_str().unwrap();
    let d = Daemon::start_with(
        &[
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
        &[],
    );
    let addr = tcp_addr(&d);
    assert!(d.log().contains("tls=true"), "{}", d.log());
    let token = read_token(&d);
    let port = addr.port();
    let https = format!("https://localhost:{port}");
    let https_ip = format!("https://127.0.0.1:{port}");

    let ls = remote_ok(&[
        "--host",
        &https,
        "--ca-cert",
        cert,
        "--token",
        &token,
        "volume",
        "ls",
    ]);
    assert!(ls.starts_with("NAME"), "{ls}");
    let v = remote_json(&[
        "--host",
        &https,
        "--ca-cert",
        cert,
        "--token",
        &token,
        "-o",
        "json",
        "volume",
        "create",
        "secure",
        "--size",
        "16M",
    ]);
    assert_eq!(v["name"], "secure");
    let v = remote_json(&[
        "--host",
        &https_ip,
        "--ca-cert",
        cert,
        "--token",
        &token,
        "volume",
        "ls",
        "-o",
        "json",
    ]);
    assert_eq!(names(&v), ["secure"]);
    // Writes over TLS still need the token.
    let err = remote_fails(&[
        "--host",
        &https,
        "--ca-cert",
        cert,
        "volume",
        "rm",
        "secure",
    ]);
    assert!(err.contains("bearer token"), "{err}");
    // The certificate is verified: no CA, or another one, fails.
    let err = remote_fails(&["--host", &https, "--token", &token, "volume", "ls"]);
    assert!(err.contains("--ca-cert"), "{err}");
    let other = tls.other.to_str().unwrap();
    let err = remote_fails(&[
        "--host",
        &https,
        "--ca-cert",
        other,
        "--token",
        &token,
        "volume",
        "ls",
    ]);
    assert!(err.contains("tls"), "{err}");
    // Plain HTTP to the TLS port gets no HTTP reply.
    let http = format!("http://127.0.0.1:{port}");
    remote_fails(&["--host", &http, "--token", &token, "volume", "ls"]);
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let resp = exchange(s, &request_bytes("GET", "/v1/version", &[], b""));
    assert!(
        parse_reply(&resp).is_none(),
        "plain http was answered on the tls port: {:?}",
        String::from_utf8_lossy(&resp)
    );
    // The unix socket is unaffected.
    assert_eq!(names(&d.json(&["volume", "ls"])), ["secure"]);
    d.ok(&["volume", "rm", "secure"]);
}

#[test]
fn default_size_precedence_is_flag_then_env_then_file() {
    let cfg = tempfile::tempdir().unwrap();
    let file = cfg.path().join("config.toml");
    std::fs::write(&file, "default_size = \"32M\"\n").unwrap();
    let file = file.to_str().unwrap();
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&[&str], Env, u64); 3] = [
        (&["--config", file], &[], 32 << 20),
        (
            &["--config", file],
            &[("BALLAST_DEFAULT_SIZE", "48M")],
            48 << 20,
        ),
        (
            &["--config", file, "--default-size", "40M"],
            &[("BALLAST_DEFAULT_SIZE", "48M")],
            40 << 20,
        ),
    ];
    for (args, env, want) in cases {
        let d = Daemon::start_with(args, env);
        let v = d.json(&["volume", "create", "sized"]);
        assert_eq!(v["size_bytes"], want, "serve {args:?} with {env:?}: {v}");
        // An explicit size still wins over every default.
        let v = d.json(&["volume", "create", "explicit", "--size", "24M"]);
        assert_eq!(v["size_bytes"], 24 << 20);
    }
}

fn serve_to_exit(state: &Path, run: &Path, extra: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--state-dir")
        .arg(state)
        .arg("--run-dir")
        .arg(run)
        .args(extra)
        .env("RUST_LOG", "info")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ballast serve");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "ballast serve kept running on a bad store: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn serve_refuses_a_corrupt_store_and_leaves_it_alone() {
    // A real store, to damage by truncation.
    let real = {
        let mut d = Daemon::start();
        d.ok(&["volume", "create", "v", "--size", "16M"]);
        d.ok(&["volume", "rm", "v"]);
        d.stop();
        std::fs::read(d.state.join("ballast.redb")).unwrap()
    };
    assert!(real.len() > 8192);
    let garbage: Vec<u8> = (0..65536u32)
        .map(|i| i.wrapping_mul(2654435761).to_be_bytes()[1])
        .collect();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("garbage", garbage, "not a redb database"),
        (
            "text",
            b"not a database at all\n".to_vec(),
            "not a redb database",
        ),
        ("empty", Vec::new(), "empty"),
        (
            "truncated",
            real[..real.len() / 2].to_vec(),
            "damaged or truncated",
        ),
    ];
    for (what, bytes, reason) in cases {
        let scratch = tempfile::Builder::new()
            .prefix("ballast-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let state = scratch.path().join("state");
        let run = scratch.path().join("run");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        let store = state.join("ballast.redb");
        std::fs::write(&store, &bytes).unwrap();

        let out = serve_to_exit(&state, &run, &[]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: one line on stderr: {stderr:?}"
        );
        assert!(stderr.starts_with("ballast: "), "{what}: {stderr:?}");
        for part in ["store", store.to_str().unwrap(), reason] {
            assert!(
                stderr.contains(part),
                "{what}: should mention {part:?}: {stderr:?}"
            );
        }
        assert_eq!(
            std::fs::read(&store).unwrap(),
            bytes,
            "{what}: the store file changed"
        );
        assert_eq!(
            listing(&state),
            ["ballast.redb"],
            "{what}: the state dir changed"
        );
        assert!(!run.join("api.sock").exists(), "{what}: a socket was bound");
    }
}

/// Read from `s` until the peer closes (Ok) or the read times out (Err):
/// whatever the server sent before closing is returned.
fn read_until_closed(s: &mut TcpStream) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(got),
            Err(e) => {
                return Err(format!(
                    "still open ({e}) after {:?}",
                    String::from_utf8_lossy(&got)
                ))
            }
        }
    }
}

/// A reply with a Content-Length, read off a kept-alive connection
/// without waiting for it to close.
fn read_one_reply(s: &mut TcpStream) -> Reply {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(split) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..split]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("a content-length");
            if got.len() >= split + 4 + len {
                return parse_reply(&got[..split + 4 + len]).expect("an http reply");
            }
        }
        let n = s.read(&mut buf).expect("the reply");
        assert!(n > 0, "closed before the reply was complete");
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn half_sent_headers_are_closed_after_the_header_timeout() {
    // The idle timeout is long: only the header timeout can close these.
    let d = Daemon::start_with(&["--header-timeout", "1s", "--idle-timeout", "1h"], &[]);
    let addr = d.listen_addr();
    // A head that stops half-way.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /v1/version HTTP/1.1\r\nHost: localhost\r\nX-Half: ")
        .unwrap();
    let got = read_until_closed(&mut s).unwrap_or_else(|e| panic!("half-sent head: {e}"));
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"), "{got:?}");
    // A head sent a byte at a time never completes either: the timeout
    // counts from its first byte, not from the last.
    let mut s = TcpStream::connect(addr).unwrap();
    let head = b"GET /v1/version HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let mut closed = false;
    for i in 0..600 {
        let byte = head.get(i).copied().unwrap_or(b'a');
        if s.write_all(&[byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(closed, "a head trickling for 60 s was never cut off");
    // The daemon still serves.
    let r = tcp_request(addr, "GET", "/v1/version", &[], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn an_idle_keep_alive_connection_is_closed_and_a_stream_is_not() {
    let d = Daemon::start_with(&["--idle-timeout", "1s", "--header-timeout", "1h"], &[]);
    let addr = d.listen_addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // Two requests on one connection: it is kept alive between them.
    for _ in 0..2 {
        s.write_all(b"GET /v1/version HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let r = read_one_reply(&mut s);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["api"], "v1");
    }
    // Then nothing: the daemon closes it.
    let got = read_until_closed(&mut s).unwrap_or_else(|e| panic!("idle connection: {e}"));
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    // An event stream is a response in flight, not an idle connection: it
    // still delivers an event that happens well after the idle timeout.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /v1/events/stream HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the stream closed before its head");
        seen.extend_from_slice(&buf[..n]);
    }
    std::thread::sleep(Duration::from_secs(3));
    d.ok(&["volume", "create", "late", "--size", "16M"]);
    while !String::from_utf8_lossy(&seen).contains("late") {
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("stream: {e}: {}", String::from_utf8_lossy(&seen)));
        assert!(
            n > 0,
            "the stream was closed: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    d.ok(&["volume", "rm", "late"]);
}

#[test]
fn a_declared_body_over_the_limit_gets_413_before_it_is_sent() {
    let d = Daemon::start();
    let addr = d.listen_addr();
    let token = read_token(&d);
    for (path, auth) in [
        ("/v1/volumes", true),
        ("/v1/volumes/x/mount", true),
        ("/v1/volumes", false),
    ] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut head = format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n"
        );
        if auth {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        head.push_str("\r\n");
        // The head only: none of the body is ever sent.
        s.write_all(head.as_bytes()).unwrap();
        let got = read_until_closed(&mut s).unwrap_or_else(|e| panic!("POST {path}: {e}"));
        let r = parse_reply(&got).unwrap_or_else(|| panic!("{got:?}"));
        let msg = error_message(&r, 413, "payload_too_large");
        assert!(msg.contains("1048576"), "{msg}");
    }
    // On the unix socket too.
    let mut s = UnixStream::connect(d.socket()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"POST /v1/volumes HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    error_message(
        &parse_reply(&got).expect("a reply"),
        413,
        "payload_too_large",
    );
    assert_eq!(d.json(&["volume", "ls"]), json!([]));
}

#[test]
fn bodies_must_be_objects_and_parameters_follow_the_document() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "v", "--size", "16M"]);
    let before = d.json(&["volume", "inspect", "v"]);
    // A JSON array would deserialize into a struct by position.
    for (path, body) in [
        ("/v1/volumes/v/mount", &b"[]"[..]),
        ("/v1/volumes/v/mount", b"[\"id\"]"),
        ("/v1/volumes/v/unmount", b"[]"),
        ("/v1/volumes/v/resize", b"[\"64M\"]"),
        ("/v1/volumes", b"[\"w\"]"),
        ("/v1/volumes/v/mount", b"\"x\""),
        ("/v1/volumes/v/mount", b"null"),
    ] {
        let r = unix_request(&d, "POST", path, body);
        let msg = error_message(&r, 400, "invalid_argument");
        assert!(msg.contains("object"), "{path} {body:?}: {msg}");
    }
    assert_eq!(d.json(&["volume", "inspect", "v"]), before);
    // What the document's grammar forbids is a 400, before anything runs.
    for (method, path, body) in [
        ("GET", "/v1/events?limit=1001", &b""[..]),
        ("GET", "/v1/events?limit=-1", b""),
        ("GET", "/v1/events/stream?limit=5000", b""),
        ("GET", "/v1/snapshots?volume=a%2Fb", b""),
        ("DELETE", "/v1/volumes/v?force=maybe", b""),
        ("POST", "/v1/volumes/v/resize", br#"{"size":"064M"}"#),
        ("POST", "/v1/volumes/v/resize", br#"{"size":"16384P"}"#),
        ("POST", "/v1/volumes/v/mount", br#"{"id":"a\u0007b"}"#),
        (
            "POST",
            "/v1/volumes",
            br#"{"name":"w","labels":{"a=b":"c"}}"#,
        ),
        (
            "POST",
            "/v1/volumes",
            br#"{"name":"w","autogrow":"90%:+20%:max=010G"}"#,
        ),
        (
            "POST",
            "/v1/claims/g/acquire",
            br#"{"volumes":[],"holder":"h"}"#,
        ),
        (
            "POST",
            "/v1/claims/g/acquire",
            br#"{"volumes":["a"],"holder":"h","ttl":"05s"}"#,
        ),
        ("POST", "/v1/claims/g/0/renew", br#"{"holder":"h"}"#),
        (
            "POST",
            "/v1/pools",
            br#"{"name":"p","driver":"dir","path":"/tmp/../etc"}"#,
        ),
        (
            "POST",
            "/v1/pools",
            br#"{"name":"p","driver":"dir","overcommit_ratio":101}"#,
        ),
    ] {
        let r = unix_request(&d, method, path, body);
        error_message(&r, 400, "invalid_argument");
    }
    assert_eq!(d.json(&["volume", "inspect", "v"]), before);
    assert_eq!(names(&d.json(&["volume", "ls"])), ["v"]);
    assert_eq!(names(&d.json(&["pool", "ls"])), ["default"]);
    assert_eq!(d.json(&["claim", "ls"]), json!([]));
    d.ok(&["volume", "rm", "v"]);
}

/// What the document says of every operation: its path parameters, where
/// its query parameters go, its error replies, the bearer scheme.
#[test]
fn the_document_declares_parameters_errors_and_security() {
    let doc: Value = serde_json::from_str(COMMITTED_OPENAPI).unwrap();
    let scheme = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(scheme["type"], "http", "{scheme}");
    assert_eq!(scheme["scheme"], "bearer", "{scheme}");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let at = format!("{method} {path}");
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for seg in path.split('/') {
                if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    let p = params
                        .iter()
                        .find(|p| p["name"] == name)
                        .unwrap_or_else(|| panic!("{at}: {{{name}}} undeclared"));
                    assert_eq!(p["in"], "path", "{at}: {name}");
                    assert_eq!(p["required"], true, "{at}: {name}");
                    let schema = &p["schema"];
                    if name == "ordinal" {
                        assert_eq!(schema["minimum"], 1, "{at}");
                    } else {
                        assert!(schema["pattern"].is_string(), "{at}: {name}: {schema}");
                        assert_eq!(schema["minLength"], 1, "{at}: {name}");
                    }
                }
            }
            for p in &params {
                if ["force", "limit", "volume", "group"].contains(&p["name"].as_str().unwrap())
                    && !path.contains(&format!("{{{}}}", p["name"].as_str().unwrap()))
                {
                    assert_eq!(p["in"], "query", "{at}: {}", p["name"]);
                }
            }
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("401"), "{at}: no 401");
            if !params.is_empty() || op.get("requestBody").is_some() {
                assert!(responses.contains_key("400"), "{at}: no 400");
            }
            if op.get("requestBody").is_some() {
                assert!(responses.contains_key("413"), "{at}: no 413");
            }
            if path.contains('{') {
                assert!(responses.contains_key("404"), "{at}: no 404");
            }
            let security = op["security"].as_array().expect("security");
            assert!(
                security.iter().any(|s| s.get("bearer").is_some()),
                "{at}: {security:?}"
            );
            // Only reads are open (from loopback): `{}` marks the token optional.
            assert_eq!(
                security.iter().any(|s| s == &json!({})),
                method == "get",
                "{at}: {security:?}"
            );
        }
    }
    assert!(operations >= 24, "{operations}");
    let vol = &doc["components"]["schemas"]["CreateVolumeBody"]["properties"];
    assert_eq!(vol["name"]["maxLength"], 128);
    assert!(vol["size"]["pattern"].is_string());
    let acquire = &doc["components"]["schemas"]["AcquireClaimBody"]["properties"];
    assert_eq!(acquire["volumes"]["minItems"], 1);
    assert_eq!(acquire["volumes"]["uniqueItems"], true);
}

/// A transfer listener that cannot be had stops the start with one clear
/// line, and leaves no socket behind.
#[test]
fn serve_refuses_a_bad_transfer_listen_address() {
    for (addr, reason) in [
        ("nonsense:xx", "invalid socket address"),
        ("10.255.255.1:0", "listening for moves on 10.255.255.1:0"),
    ] {
        let scratch = tempfile::Builder::new()
            .prefix("ballast-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let state = scratch.path().join("state");
        let run = scratch.path().join("run");
        let out = serve_to_exit(
            &state,
            &run,
            &["--listen", "none", "--no-docker", "--transfer-listen", addr],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{addr}: {stderr}");
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("ballast: ") && last.contains(reason),
            "{addr}: {stderr}"
        );
        let sockets: Vec<_> = std::fs::read_dir(&run)
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(
            !sockets
                .iter()
                .any(|n| n.to_string_lossy().ends_with(".sock")),
            "{addr}: left {sockets:?}"
        );
    }
}
