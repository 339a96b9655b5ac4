//! The web dashboard end to end: the daemon serves it at `/` on its TCP
//! listener and Debian's headless Chromium renders it. The page shows, within
//! 5 s, a volume created through the CLI (in the table its script builds, not
//! in the HTML served); it picks up a new volume and its event without a
//! reload; it keeps to its Content-Security-Policy. It is read-only: state
//! changes need the token, from loopback and from elsewhere, and off loopback
//! the page shows nothing until given the token. A full copy in flight
//! shows with its progress, and a move with a bar that moves, its rate and
//! its ETA. Screenshots are kept in target/test-artifacts/dashboard.png,
//! dashboard-copy.png and dashboard-move.png.

#[path = "common/chromium.rs"]
mod chromium;
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chromium::{Browser, Page};
use common::Daemon;
use serde_json::{json, Value};

/// The names in the volume table's rows, in order.
const TABLE_NAMES: &str =
    "Array.from(document.querySelectorAll('#volume-rows td[data-volume]'), td => td.dataset.volume)";
/// The subjects of the `create` events listed.
const CREATE_EVENTS: &str =
    "Array.from(document.querySelectorAll('#events li.event.create .subject'), e => e.textContent)";
/// The acceptance line: the page shows a volume within this.
const SHOWS_WITHIN: Duration = Duration::from_secs(5);

/// A reply: status, lower-cased header names with their values, body.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    fn error_code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)));
        v["error"]["code"].as_str().unwrap_or_default().to_string()
    }
}

/// One HTTP/1.1 request over TCP (no chunked replies on these paths).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let body = if method == "GET" {
        ""
    } else {
        r#"{"name":"intruder","size":"16M"}"#
    };
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head.push_str(body);
    s.write_all(head.as_bytes()).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no http reply"));
    let head = String::from_utf8_lossy(&resp[..split]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: resp[split + 4..].to_vec(),
    }
}

/// Where test artefacts go: target/test-artifacts.
fn artifacts_dir() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A local address that is not loopback, if this host has one.
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    // Connecting a UDP socket sends nothing; it only picks a source address.
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn has(name: &str) -> impl Fn(&Value) -> bool + '_ {
    move |v| strings(v).iter().any(|s| s == name)
}

/// The page served and its assets: the security headers on each, and no
/// volume data in the HTML.
fn check_assets(addr: SocketAddr) -> String {
    let page = request(addr, "GET", "/", &[]);
    assert_eq!(page.status, 200, "GET / from loopback needs no token");
    assert!(page.header("content-type").starts_with("text/html"));
    for (path, ty) in [
        ("/", "text/html"),
        ("/dashboard/app.js", "text/javascript"),
        ("/dashboard/style.css", "text/css"),
        ("/dashboard/icon.svg", "image/svg+xml"),
    ] {
        let r = request(addr, "GET", path, &[]);
        assert_eq!(r.status, 200, "GET {path}");
        assert!(r.header("content-type").starts_with(ty), "{path}");
        let csp = r.header("content-security-policy");
        assert!(csp.contains("default-src 'self'"), "{path}: csp {csp:?}");
        assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"));
        assert_eq!(r.header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(r.header("x-frame-options"), "DENY", "{path}");
    }
    String::from_utf8(page.body).unwrap()
}

#[test]
fn chromium_shows_a_volume_made_with_the_cli_and_follows_changes_live() {
    if !common::require_tool("dashboard", chromium::CHROMIUM) {
        return;
    }
    let d = Daemon::start();
    let addr = d.listen_addr();
    let raw = check_assets(addr);

    d.ok(&["volume", "create", "orders-db", "--size", "64M"]);
    d.ok(&["volume", "create", "web-assets", "--size", "32M"]);
    d.ok(&[
        "claim",
        "acquire",
        "kafka",
        "--volumes",
        "data",
        "--size",
        "16M",
        "--holder",
        "broker-a",
    ]);
    // A mounted volume with I/O, for the consumers column and the I/O chart.
    let can_mount =
        nix::unistd::geteuid().is_root() && std::path::Path::new("/dev/loop-control").exists();
    let mounted = can_mount.then(|| PathBuf::from(d.ok(&["volume", "mount", "orders-db"]).trim()));
    // The table is the script's work: the HTML served has no rows.
    assert!(
        !raw.contains("data-volume=") && !raw.contains("orders-db"),
        "index.html itself lists volumes"
    );

    let profile = tempfile::tempdir().unwrap();
    let mut b = Browser::launch(profile.path()).expect("start chromium");
    let page = b.new_page(1400, 900).expect("a tab");
    let t = Instant::now();
    b.navigate(&page, &format!("http://{addr}/")).unwrap();
    let (names, shown) = b
        .wait_for(&page, TABLE_NAMES, SHOWS_WITHIN, has("orders-db"))
        .unwrap();
    assert!(
        shown,
        "the dashboard did not show orders-db within {SHOWS_WITHIN:?}: table {names}; page errors {:?}",
        b.page_errors()
    );
    eprintln!(
        "the table showed orders-db {:?} after navigating",
        t.elapsed()
    );
    assert_eq!(
        strings(&names),
        ["kafka-1-data", "orders-db", "web-assets"],
        "sorted by name"
    );
    let cell = b
        .eval(
            &page,
            r#"document.querySelector('td[data-volume="orders-db"]').textContent"#,
        )
        .unwrap();
    assert_eq!(cell, "orders-db");

    // Live, without a reload: a new volume shows up in the table and its
    // event in the list (through the event stream).
    b.eval(&page, "window.notReloaded = true").unwrap();
    d.ok(&["volume", "create", "late-arrival", "--size", "16M"]);
    let (names, shown) = b
        .wait_for(&page, TABLE_NAMES, SHOWS_WITHIN, has("late-arrival"))
        .unwrap();
    assert!(shown, "late-arrival not shown: {names}");
    let (events, shown) = b
        .wait_for(&page, CREATE_EVENTS, SHOWS_WITHIN, has("late-arrival"))
        .unwrap();
    assert!(shown, "no create event for late-arrival: {events}");
    assert_eq!(b.eval(&page, "window.notReloaded").unwrap(), json!(true));
    assert_eq!(
        b.eval(&page, "document.getElementById('events-mode').textContent")
            .unwrap(),
        "live",
        "events come from /v1/events/stream"
    );

    // Pools, claims.
    let pools = b
        .eval(
            &page,
            "Array.from(document.querySelectorAll('#pools .pool'), p => p.dataset.pool)",
        )
        .unwrap();
    assert_eq!(strings(&pools), ["default"]);
    let (claims, shown) = b
        .wait_for(
            &page,
            "Array.from(document.querySelectorAll('#claims td'), td => td.textContent)",
            SHOWS_WITHIN,
            has("broker-a"),
        )
        .unwrap();
    assert!(shown, "the claim is not listed: {claims}");
    assert!(has("kafka-1-data")(&claims), "{claims}");

    // Filter and sort.
    b.eval(
        &page,
        "{ const f = document.getElementById('filter'); f.value = 'ORDERS'; \
         f.dispatchEvent(new Event('input')); }",
    )
    .unwrap();
    let (names, ok) = b
        .wait_for(&page, TABLE_NAMES, SHOWS_WITHIN, |v| {
            strings(v) == ["orders-db"]
        })
        .unwrap();
    assert!(ok, "the filter left {names}");
    b.eval(
        &page,
        "{ const f = document.getElementById('filter'); f.value = ''; \
         f.dispatchEvent(new Event('input')); \
         document.querySelector('th[data-sort=\"name\"]').click(); }",
    )
    .unwrap();
    let (names, ok) = b
        .wait_for(&page, TABLE_NAMES, SHOWS_WITHIN, |v| strings(v).len() == 4)
        .unwrap();
    assert!(ok, "{names}");
    assert_eq!(
        strings(&names),
        ["web-assets", "orders-db", "late-arrival", "kafka-1-data"],
        "a second click on Name sorts descending"
    );
    b.eval(
        &page,
        "document.querySelector('th[data-sort=\"name\"]').click()",
    )
    .unwrap();

    // Some I/O on the mounted volume, and time for the charts to draw lines
    // (two samples or more), then the screenshot.
    if let Some(mp) = &mounted {
        common::write_file(&mp.join("blob"), 24 << 20).unwrap();
    }
    let (lines, ok) = b
        .wait_for(
            &page,
            "document.querySelectorAll('#cap-chart polyline, #io-chart polyline').length",
            Duration::from_secs(15),
            |v| v.as_u64() >= Some(if mounted.is_some() { 4 } else { 3 }),
        )
        .unwrap();
    assert!(ok, "the charts drew {lines} lines");
    let png = b.screenshot(&page).unwrap();
    let path = artifacts_dir().join("dashboard.png");
    std::fs::write(&path, &png).unwrap();
    eprintln!("screenshot: {}", path.display());
    let written = std::fs::read(&path).unwrap();
    assert_eq!(&written[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    assert!(
        written.len() > 20_000,
        "a {}-byte screenshot is too small to show the page",
        written.len()
    );

    // The page kept to its policy: no exception, no CSP violation, no
    // failed request.
    let errors = b.page_errors();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
    drop(b);
    if mounted.is_some() {
        d.ok(&["volume", "unmount", "orders-db"]);
    }
}

#[test]
fn state_changes_need_the_token_and_off_loopback_the_page_asks_for_it() {
    let d = Daemon::start();
    let addr = d.listen_addr();
    let token = std::fs::read_to_string(d.state.join("token"))
        .unwrap()
        .trim()
        .to_string();
    let bearer = format!("Bearer {token}");
    d.ok(&["volume", "create", "keep", "--size", "16M"]);

    // From loopback: reads are open, changes need the token, and the
    // dashboard's own paths take nothing but GET.
    assert_eq!(request(addr, "GET", "/", &[]).status, 200);
    for (method, path) in [
        ("POST", "/v1/volumes"),
        ("DELETE", "/v1/volumes/keep"),
        ("POST", "/v1/volumes/keep/mount"),
        ("POST", "/v1/claims/kafka/acquire"),
    ] {
        let r = request(addr, method, path, &[]);
        assert_eq!(r.status, 401, "{method} {path} without the token");
        assert_eq!(r.error_code(), "unauthorized");
    }
    for method in ["POST", "PUT", "DELETE"] {
        let r = request(addr, method, "/", &[("Authorization", &bearer)]);
        assert_eq!(r.status, 405, "{method} /");
        assert_eq!(r.error_code(), "method_not_allowed");
    }
    assert_eq!(names(&d), ["keep"], "a refused call changed something");

    let Some(ip) = non_loopback_ip() else {
        eprintln!("SKIP the non-loopback half: this host has no non-loopback address");
        return;
    };
    drop(d);
    let listen = SocketAddr::new(ip, 0).to_string();
    let d = Daemon::start_with(&["--listen", &listen], &[]);
    let addr = d.listen_addr();
    assert_eq!(addr.ip(), ip);
    let token = std::fs::read_to_string(d.state.join("token"))
        .unwrap()
        .trim()
        .to_string();
    let bearer = format!("Bearer {token}");
    d.ok(&["volume", "create", "remote-seen", "--size", "16M"]);
    // The page's assets carry no data: served to anyone. The API is not.
    check_assets(addr);
    for (method, path) in [
        ("GET", "/v1/volumes"),
        ("GET", "/metrics"),
        ("POST", "/v1/volumes"),
        ("DELETE", "/v1/volumes/remote-seen"),
        ("POST", "/v1/volumes/remote-seen/resize"),
        ("POST", "/v1/claims/kafka/acquire"),
    ] {
        let r = request(addr, method, path, &[]);
        assert_eq!(r.status, 401, "{method} {path} from {ip} without the token");
        assert_eq!(r.error_code(), "unauthorized");
    }
    let r = request(addr, "GET", "/v1/volumes", &[("Authorization", &bearer)]);
    assert_eq!(r.status, 200);
    assert_eq!(names(&d), ["remote-seen"]);

    if !common::require_tool("dashboard (off loopback)", chromium::CHROMIUM) {
        return;
    }
    let profile = tempfile::tempdir().unwrap();
    let mut b = Browser::launch(profile.path()).expect("start chromium");
    let page = b.new_page(1400, 900).unwrap();
    b.navigate(&page, &format!("http://{addr}/")).unwrap();
    let (banner, shown) = b
        .wait_for(
            &page,
            "(b => b && !b.hidden ? b.textContent : null)(document.getElementById('banner'))",
            SHOWS_WITHIN,
            |v| v.as_str().is_some_and(|s| s.contains("token")),
        )
        .unwrap();
    assert!(shown, "no banner asking for the token: {banner}");
    assert_eq!(
        strings(&b.eval(&page, TABLE_NAMES).unwrap()),
        Vec::<String>::new(),
        "without the token the page shows no volume"
    );
    type_token(&mut b, &page, &token);
    let (names, shown) = b
        .wait_for(&page, TABLE_NAMES, SHOWS_WITHIN, has("remote-seen"))
        .unwrap();
    assert!(shown, "with the token the table shows {names}");
    assert_eq!(
        b.eval(&page, "sessionStorage.getItem('ballast.token')")
            .unwrap(),
        json!(token),
        "the token is kept for the tab"
    );
    // The table fills as its own fetch lands; the banner goes when the
    // whole poll has (and a poll begun before the token may show it once
    // more): wait for it.
    let (_, gone) = b
        .wait_for(
            &page,
            "document.getElementById('banner').hidden",
            SHOWS_WITHIN,
            |v| v == &json!(true),
        )
        .unwrap();
    assert!(gone, "the banner goes once the token works");
    // The refused fetches before the token are logged as failed loads;
    // nothing else may have gone wrong.
    let errors: Vec<String> = b
        .page_errors()
        .into_iter()
        .filter(|e| !e.contains("status of 401"))
        .collect();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
}

fn type_token(b: &mut Browser, page: &Page, token: &str) {
    let expr = format!(
        "{{ document.getElementById('token-input').value = {}; \
         document.getElementById('token-save').click(); }}",
        json!(token)
    );
    b.eval(page, &expr).unwrap();
}

fn names(d: &Daemon) -> Vec<String> {
    let v = d.json(&["volume", "ls"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

/// A full copy in flight shows in its own panel, with a progress bar that
/// knows the copy's size, and the panel goes away when the copy is done.
#[test]
fn chromium_shows_a_copy_in_flight_with_its_progress() {
    if !common::require_tool("dashboard copies", chromium::CHROMIUM)
        || !common::require_root_loop("dashboard copies")
    {
        return;
    }
    let d = Daemon::start();
    let addr = d.listen_addr();
    d.ok(&["volume", "create", "bulk", "--size", "3G"]);
    let mp = PathBuf::from(d.ok(&["volume", "mount", "bulk"]).trim());
    common::write_file(&mp.join("data"), 1 << 30).unwrap();

    let profile = tempfile::tempdir().unwrap();
    let mut b = Browser::launch(profile.path()).expect("start chromium");
    let page = b.new_page(1400, 900).expect("a tab");
    b.navigate(&page, &format!("http://{addr}/")).unwrap();
    let (_, shown) = b
        .wait_for(&page, TABLE_NAMES, SHOWS_WITHIN, has("bulk"))
        .unwrap();
    assert!(shown, "the page did not load");
    assert_eq!(
        b.eval(&page, "document.getElementById('operations-panel').hidden")
            .unwrap(),
        json!(true),
        "no copy, no panel"
    );

    let command = std::process::Command::new(common::BIN)
        .arg("--socket")
        .arg(d.socket())
        .args(["volume", "snapshot", "bulk", "bulk-snap"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run the CLI");
    // One read of the panel, waiting for the copy with its size known
    // (until then its bar is indeterminate).
    let (bar, shown) = b
        .wait_for(
            &page,
            "(() => { const li = document.querySelector('#operations li.op'); \
             const p = li && li.querySelector('progress'); \
             return p && p.max > 1 ? [li.dataset.op, p.max, p.value, \
             li.querySelector('.subject').textContent] : null; })()",
            Duration::from_secs(60),
            |v| v.is_array(),
        )
        .unwrap();
    assert!(shown, "the copy never showed with its size: {bar}");
    assert_eq!(bar[0], "snapshot:bulk-snap", "{bar}");
    assert_eq!(bar[3], "snapshot bulk-snap of bulk", "{bar}");
    // The bar's max is the copy's total: at least the data written. (Its
    // value may be anywhere up to that.)
    let max = bar[1].as_f64().unwrap_or_default();
    assert!(max >= f64::from(1u32 << 30), "{bar}");
    assert!(bar[2].as_f64().unwrap_or(-1.0) <= max, "{bar}");
    let path = artifacts_dir().join("dashboard-copy.png");
    std::fs::write(&path, b.screenshot(&page).unwrap()).unwrap();
    eprintln!("screenshot: {}", path.display());

    let status = command.wait_with_output().unwrap().status;
    assert!(status.success(), "the snapshot failed");
    let (_, gone) = b
        .wait_for(
            &page,
            "document.getElementById('operations-panel').hidden",
            Duration::from_secs(10),
            |v| v == &json!(true),
        )
        .unwrap();
    assert!(gone, "the panel stayed after the copy");
    let errors = b.page_errors();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
    drop(b);
    d.ok(&["snapshot", "rm", "bulk-snap"]);
    d.ok(&["volume", "rm", "bulk", "--force"]);
    d.assert_no_leftovers();
}

/// Every render of the operations list, as `[max, value, subject, rate]`
/// of the bar of `move:mv` (once it knows its size), kept in the page: the
/// list is redrawn every 0.5 s, and a read from here could fall between
/// two redraws or after the move.
const RECORD_MOVE: &str = "window.moveRenders = []; \
    new MutationObserver(() => { \
      const li = document.querySelector('#operations li.op[data-op=\"move:mv\"]'); \
      const p = li && li.querySelector('progress'); \
      if (p && p.max > 1) window.moveRenders.push([p.max, p.value, \
        li.querySelector('.subject').textContent, li.querySelector('.rate').textContent]); \
    }).observe(document.getElementById('operations'), { childList: true }); true";

/// A move of a 1 GiB loop volume holding 800 MiB between two loop pools
/// shows in the operations panel, labelled with both ends, with a bar whose
/// value grows from one redraw to the next and the daemon's rate and ETA
/// beside it; the panel goes when the move is done.
#[test]
fn chromium_shows_a_move_in_flight_with_a_moving_bar_rate_and_eta() {
    let test = "dashboard move";
    if !common::require_tool(test, chromium::CHROMIUM) || !common::require_root_loop(test) {
        return;
    }
    let d = Daemon::start();
    let addr = d.listen_addr();
    d.add_loop_pool("p2");
    d.ok(&["volume", "create", "mv", "--size", "1G"]);
    let node = d.json(&["volume", "inspect", "mv"])["node"]
        .as_str()
        .expect("the volume's node")
        .to_string();
    let mp = PathBuf::from(d.ok(&["volume", "mount", "mv"]).trim());
    write_random(&mp.join("data"), 800);
    d.ok(&["volume", "unmount", "mv"]);

    let profile = tempfile::tempdir().unwrap();
    let mut b = Browser::launch(profile.path()).expect("start chromium");
    let page = b.new_page(1400, 900).expect("a tab");
    b.navigate(&page, &format!("http://{addr}/")).unwrap();
    let (_, shown) = b
        .wait_for(&page, TABLE_NAMES, SHOWS_WITHIN, has("mv"))
        .unwrap();
    assert!(shown, "the page did not load");
    assert_eq!(
        b.eval(&page, "document.getElementById('operations-h').textContent")
            .unwrap(),
        "Operations in flight"
    );
    assert_eq!(b.eval(&page, RECORD_MOVE).unwrap(), json!(true));

    // From the disk, not the page cache: the move's first pass is what
    // the bar follows, and it should not be over in one redraw.
    std::process::Command::new("sync").status().unwrap();
    std::fs::write("/proc/sys/vm/drop_caches", "3").unwrap();
    let command = std::process::Command::new(common::BIN)
        .arg("--socket")
        .arg(d.socket())
        .args(["volume", "move", "mv", "--to-pool", "p2"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run the CLI");
    // A read while the move runs: its row is there, with a sized bar.
    let (row, shown) = b
        .wait_for(
            &page,
            "(() => { const li = document.querySelector('#operations li.op[data-op=\"move:mv\"]'); \
             const p = li && li.querySelector('progress'); \
             return p && p.max > 1 ? [p.max, p.value] : null; })()",
            Duration::from_secs(60),
            |v| v.is_array(),
        )
        .unwrap();
    assert!(shown, "the move never showed with its size: {row}");
    let path = artifacts_dir().join("dashboard-move.png");
    std::fs::write(&path, b.screenshot(&page).unwrap()).unwrap();
    eprintln!("screenshot: {}", path.display());
    let out = command.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("moved to"), "{said}");
    assert_eq!(d.json(&["volume", "inspect", "mv"])["pool"], "p2");

    let renders = b.eval(&page, "window.moveRenders").unwrap();
    let renders = renders.as_array().expect("a list of renders").clone();
    eprintln!("move renders: {renders:?}");
    assert!(!renders.is_empty(), "no render of the move's bar");
    let subject = format!("move mv {node}/default → {node}/p2");
    for r in &renders {
        assert_eq!(r[2], json!(subject), "{r}");
        // The bar's max is the image's size (the pass scans all of it).
        assert!(r[0].as_f64() >= Some(f64::from(800u32 << 20)), "{r}");
    }
    // The bar moves: some redraw shows more done than the one before, in
    // the same pass (a move's final pass counts from 0 again).
    let grows = renders.windows(2).any(|w| {
        w[0][0] == w[1][0] && w[1][1].as_f64().unwrap_or(0.0) > w[0][1].as_f64().unwrap_or(0.0)
    });
    assert!(grows, "the bar never grew between two redraws: {renders:?}");
    // The daemon's rate and ETA beside it: `412 MiB/s · 2 s left`.
    let rated = renders.iter().any(|r| {
        r[3].as_str().is_some_and(|s| {
            let (rate, eta) = s.split_once(" · ").unwrap_or_default();
            rate.ends_with("iB/s") && eta.ends_with(" s left")
        })
    });
    assert!(rated, "no rate and ETA shown: {renders:?}");

    let (_, gone) = b
        .wait_for(
            &page,
            "document.getElementById('operations-panel').hidden",
            Duration::from_secs(10),
            |v| v == &json!(true),
        )
        .unwrap();
    assert!(gone, "the panel stayed after the move");
    let errors = b.page_errors();
    assert!(errors.is_empty(), "page errors: {errors:#?}");
    drop(b);
    d.ok(&["volume", "rm", "mv", "--force"]);
    d.ok(&["pool", "rm", "p2"]);
    d.assert_no_leftovers();
}

/// `mib` MiB of random data (incompressible, no zero chunks to skip),
/// synced.
fn write_random(path: &std::path::Path, mib: usize) {
    let mut f = std::fs::File::create(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut rng = fastrand::Rng::with_seed(mib as u64);
    for _ in 0..mib {
        rng.fill(&mut buf);
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
}
