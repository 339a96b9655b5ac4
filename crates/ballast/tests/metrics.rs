//! `/metrics` end to end: the families a real daemon exports on its TCP
//! listener, live usage and I/O of a mounted volume, `--listen none`, and a
//! real Prometheus server (Debian's `prometheus`) scraping the daemon and
//! answering PromQL with ballast's values.

mod common;
#[path = "common/exposition.rs"]
mod exposition;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use exposition::Exposition;

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Every family the issue asks for, with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("ballast_build_info", "gauge"),
    ("ballast_pool_capacity_bytes", "gauge"),
    ("ballast_pool_used_bytes", "gauge"),
    ("ballast_pool_provisioned_bytes", "gauge"),
    ("ballast_pool_exclusive_bytes", "gauge"),
    ("ballast_pool_available_bytes", "gauge"),
    ("ballast_volumes", "gauge"),
    ("ballast_volume_size_bytes", "gauge"),
    ("ballast_volume_used_bytes", "gauge"),
    ("ballast_volume_read_bytes", "counter"),
    ("ballast_volume_written_bytes", "counter"),
    ("ballast_volume_reads", "counter"),
    ("ballast_volume_writes", "counter"),
    ("ballast_operation_duration_seconds", "histogram"),
    ("ballast_operation_errors", "counter"),
    ("ballast_pool_remediations", "counter"),
    ("ballast_volume_autogrows", "counter"),
    ("ballast_claims", "gauge"),
];

fn scrape(d: &Daemon) -> Exposition {
    let (status, content_type, body) = d.tcp_get("/metrics");
    let text = String::from_utf8(body).expect("utf-8");
    assert_eq!(status, 200, "{text}");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
    Exposition::parse(&text)
}

#[test]
fn metrics_carry_every_family_on_the_tcp_listener() {
    let d = Daemon::start();
    d.ok(&["volume", "create", "m1", "--size", "16M"]);
    // Failures are counted under their code (and the driver "unknown" when
    // there is no such volume).
    d.fails(&["volume", "rm", "nope"]);

    let m = scrape(&d);
    for (name, kind) in FAMILIES {
        assert_eq!(
            m.types.get(*name).map(String::as_str),
            Some(*kind),
            "family {name}: {:?}",
            m.types
        );
    }
    for sample in &m.samples {
        assert!(
            m.family_of(&sample.name).is_some(),
            "{} has no family",
            sample.name
        );
    }
    assert_eq!(m.value("ballast_build_info", &[("version", VERSION)]), 1.0);
    assert_eq!(
        m.value(
            "ballast_volume_size_bytes",
            &[("volume", "m1"), ("pool", "default")]
        ),
        16.0 * 1024.0 * 1024.0
    );
    assert_eq!(
        m.value(
            "ballast_volumes",
            &[("pool", "default"), ("state", "available")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "ballast_volumes",
            &[("pool", "default"), ("state", "mounted")]
        ),
        0.0
    );
    assert_eq!(
        m.value("ballast_pool_provisioned_bytes", &[("pool", "default")]),
        16.0 * 1024.0 * 1024.0
    );
    // One volume of its own: charged its full size.
    assert_eq!(
        m.value("ballast_pool_exclusive_bytes", &[("pool", "default")]),
        16.0 * 1024.0 * 1024.0
    );
    assert!(m.value("ballast_pool_capacity_bytes", &[("pool", "default")]) > 0.0);
    let driver =
        m.find("ballast_pool_capacity_bytes", &[("pool", "default")])[0].labels["driver"].clone();
    let create = [("operation", "create"), ("driver", driver.as_str())];
    assert_eq!(
        m.value("ballast_operation_duration_seconds_count", &create),
        1.0
    );
    assert_eq!(
        m.value(
            "ballast_operation_duration_seconds_bucket",
            &[create[0], create[1], ("le", "+Inf")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "ballast_operation_errors_total",
            &[
                ("operation", "delete"),
                ("driver", "unknown"),
                ("code", "not_found")
            ]
        ),
        1.0
    );
    // The watchers' counters exist from the start, per pool.
    m.value("ballast_pool_remediations_total", &[("pool", "default")]);
    m.value("ballast_volume_autogrows_total", &[("pool", "default")]);
    // Nothing live for an unmounted volume.
    assert!(m
        .find("ballast_volume_used_bytes", &[("volume", "m1")])
        .is_empty());
    assert!(m
        .find("ballast_volume_written_bytes_total", &[("volume", "m1")])
        .is_empty());

    // The same on the unix socket; only GET.
    let (status, body) = d.try_http("GET", "/metrics", b"").unwrap();
    assert_eq!(status, 200);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("ballast_build_info"));
    let (status, _) = d.try_http("POST", "/metrics", b"").unwrap();
    assert_eq!(status, 405);
    // A deleted volume's series go with it.
    d.ok(&["volume", "rm", "m1"]);
    let m = scrape(&d);
    assert!(m
        .find("ballast_volume_size_bytes", &[("volume", "m1")])
        .is_empty());
    assert_eq!(
        m.value(
            "ballast_operation_duration_seconds_count",
            &[("operation", "delete"), ("driver", driver.as_str())]
        ),
        1.0
    );
}

#[test]
fn a_mounted_volume_reports_its_use_and_io() {
    if !require_root_loop("a_mounted_volume_reports_its_use_and_io") {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "io", "--size", "64M", "--fs", "ext4"]);
    let mp = PathBuf::from(d.ok(&["volume", "mount", "io"]).trim());
    write_file(&mp.join("data"), 8 << 20).unwrap();
    let mut data = Vec::new();
    std::io::Read::read_to_end(
        &mut std::fs::File::open(mp.join("data")).unwrap(),
        &mut data,
    )
    .unwrap();

    let m = scrape(&d);
    let vol = [("pool", "default"), ("volume", "io")];
    let used = m.value("ballast_volume_used_bytes", &vol);
    assert!(used >= 8.0 * 1024.0 * 1024.0, "used {used}");
    let written = m.value("ballast_volume_written_bytes_total", &vol);
    assert!(written >= 8.0 * 1024.0 * 1024.0, "written {written}");
    assert!(m.value("ballast_volume_writes_total", &vol) > 0.0);
    // Direct I/O on the loop device and a fresh mount: reads reach it
    // (at least the superblock and metadata at mount).
    assert!(m.value("ballast_volume_reads_total", &vol) > 0.0);
    assert!(m.value("ballast_volume_read_bytes_total", &vol) > 0.0);
    assert_eq!(
        m.value(
            "ballast_volumes",
            &[("pool", "default"), ("state", "mounted")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "ballast_operation_duration_seconds_count",
            &[("operation", "mount"), ("driver", "loop")]
        ),
        1.0
    );

    d.ok(&["volume", "unmount", "io"]);
    let m = scrape(&d);
    assert!(m.find("ballast_volume_used_bytes", &vol).is_empty());
    assert!(m.find("ballast_volume_reads_total", &vol).is_empty());
    assert_eq!(m.value("ballast_volume_size_bytes", &vol), 64.0 * 1048576.0);
    d.ok(&["volume", "rm", "io"]);
    d.assert_no_leftovers();
}

#[test]
fn listen_none_switches_the_tcp_listener_off() {
    let d = Daemon::start_with(&["--listen", "none"], &[]);
    d.ok(&["volume", "ls"]);
    assert!(
        !d.run.join("listen.addr").exists(),
        "listen.addr written with --listen none"
    );
    assert!(
        !d.log().contains("serving the REST API on tcp"),
        "{}",
        d.log()
    );
}

#[test]
fn the_bound_address_is_written_to_the_run_dir_and_removed_at_stop() {
    let mut d = Daemon::start();
    let addr = d.listen_addr();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    assert!(d.log().contains(&format!("addr={addr}")), "{}", d.log());
    d.stop();
    assert!(!d.run.join("listen.addr").exists());
}

// ----- a real Prometheus -------------------------------------------------

/// A Prometheus server in a scratch directory, killed on drop.
struct Prometheus {
    child: Child,
    addr: std::net::SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prom.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: ballast\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // A free port: bind, read it, let it go.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        Prometheus { child, addr, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// An instant PromQL query: the result vector, or None while Prometheus
    /// is not up yet.
    fn query(&mut self, promql: &str) -> Option<Vec<serde_json::Value>> {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("prometheus exited ({status}):\n{}", self.log());
        }
        std::net::TcpStream::connect(self.addr).ok()?;
        let (status, _, body) = http_get(
            self.addr,
            &format!("/api/v1/query?query={}", percent_encode(promql)),
        );
        if status == 503 {
            // Still starting (TSDB not ready).
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{promql}: {status}: {e}: {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert_eq!(v["status"], "success", "{promql}: {v}");
        Some(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// Query until `ok` accepts the result; panics after 60 s.
    fn wait_for(
        &mut self,
        promql: &str,
        ok: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = None;
        loop {
            if let Some(r) = self.query(promql) {
                if ok(&r) {
                    return r;
                }
                last = Some(r);
            }
            assert!(
                Instant::now() < deadline,
                "{promql}: last result {last:?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant-vector sample.
fn sample_value(s: &serde_json::Value) -> f64 {
    s["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no value in {s}"))
}

#[test]
fn prometheus_scrapes_ballast_and_answers_promql() {
    if !require_tool(
        "prometheus_scrapes_ballast_and_answers_promql",
        "prometheus",
    ) {
        return;
    }
    let d = Daemon::start();
    d.ok(&["volume", "create", "x", "--size", "24M"]);
    let mut prom = Prometheus::start(d.listen_addr());

    let size = prom.wait_for(r#"ballast_volume_size_bytes{volume="x"}"#, |r| r.len() == 1);
    assert_eq!(sample_value(&size[0]), f64::from(24u32 << 20), "{size:?}");
    assert_eq!(size[0]["metric"]["pool"], "default", "{size:?}");
    assert_eq!(size[0]["metric"]["job"], "ballast", "{size:?}");

    let info = prom.wait_for("ballast_build_info", |r| r.len() == 1);
    assert_eq!(info[0]["metric"]["version"], VERSION, "{info:?}");
    assert_eq!(sample_value(&info[0]), 1.0);

    let creates = prom.wait_for(
        r#"sum(ballast_operation_duration_seconds_count{operation="create"})"#,
        |r| r.len() == 1,
    );
    assert!(sample_value(&creates[0]) >= 1.0, "{creates:?}");

    // A new volume shows up at the next scrape.
    d.ok(&["volume", "create", "y", "--size", "8M"]);
    prom.wait_for(r#"ballast_volume_size_bytes{volume="y"}"#, |r| r.len() == 1);
    let provisioned = prom.wait_for(r#"ballast_pool_provisioned_bytes{pool="default"}"#, |r| {
        r.len() == 1 && sample_value(&r[0]) == f64::from(32u32 << 20)
    });
    assert_eq!(provisioned.len(), 1);
    // Histogram quantiles, as the Grafana dashboard asks for them.
    prom.wait_for(
        r#"histogram_quantile(0.99, sum by (le, operation) (ballast_operation_duration_seconds_bucket))"#,
        |r| {
            r.iter()
                .any(|s| s["metric"]["operation"] == "create" && sample_value(s) > 0.0)
        },
    );
    // The scrape itself is healthy.
    let up = prom.wait_for(r#"up{job="ballast"}"#, |r| r.len() == 1);
    assert_eq!(sample_value(&up[0]), 1.0, "{}", prom.log());
}

#[test]
fn claims_are_counted_by_group() {
    let d = Daemon::start_with(&["--default-driver", "dir"], &[]);
    d.ok(&["claim", "acquire", "mg", "--volumes", "data"]);
    d.ok(&["claim", "acquire", "mg", "--volumes", "data"]);
    d.ok(&["claim", "acquire", "other", "--volumes", "data"]);
    let m = scrape(&d);
    assert_eq!(
        m.value("ballast_claims", &[("group", "mg"), ("state", "held")]),
        2.0
    );
    assert_eq!(
        m.value("ballast_claims", &[("group", "other"), ("state", "held")]),
        1.0
    );
    d.ok(&["claim", "release", "mg", "2"]);
    let m = scrape(&d);
    assert_eq!(
        m.value("ballast_claims", &[("group", "mg"), ("state", "held")]),
        1.0
    );
}
