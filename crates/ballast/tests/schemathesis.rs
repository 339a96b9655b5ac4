//! The OpenAPI document is true: schemathesis (PyPI), run against a live
//! daemon over TCP with the token, fuzzes every operation with every check
//! and finds nothing. Bounded: a fixed number of examples per operation and
//! a fixed seed.
//!
//! What the configuration below relaxes, and why:
//! - `not_a_server_error` takes 507: the daemon's documented answer to a
//!   volume its pool cannot hold. Any size the grammar allows can exceed a
//!   pool, so a fuzzer meets it.
//! - `positive_data_acceptance` takes 400 on the five operations whose
//!   rules reach beyond one field's grammar, to other fields or to state the
//!   document cannot see: ext4/xfs minimum sizes and no filesystem on dir or
//!   btrfs pools (create, acquire), one copy source and autogrow's max at
//!   least the size (create), no shrinking (resize), the combinations of a
//!   pool's driver, disks and paths (pool create), the default pool (pool
//!   delete). Every other operation must accept whatever the document allows.
//! - responses may take up to 60 s (attach and mkfs on a loaded host), the
//!   event stream is read for 1 s (it never ends by itself).
//!
//! `POST /v1/pools` takes host paths: `schemathesis_hooks.py` moves every
//! absolute path of such a body under this test's scratch directory before
//! it is sent, and the daemon refuses relative paths and `..` before it
//! touches anything, so the fuzzer never makes a pool outside the scratch
//! directory (checked at the end).

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;

/// The schemathesis release this test is written for (its 4.x CLI).
const SCHEMATHESIS: &str = "4.32.5";
/// Examples per operation and the seed; `BALLAST_SCHEMATHESIS_EXAMPLES`
/// and `BALLAST_SCHEMATHESIS_SEED` change them for a longer look by hand.
const EXAMPLES: &str = "20";
const SEED: &str = "1";

fn setting(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

const CONFIG: &str = r#"
request-timeout = 90
hooks = "@HOOKS@"

[checks]
max_response_time = 60

[checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "507"]

[[operations]]
include-path = "/v1/events/stream"
request-timeout = 1

[[operations]]
include-path = "/v1/volumes"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409", "507"]

[[operations]]
include-path = "/v1/volumes/{name}/resize"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409", "507"]

[[operations]]
include-path = "/v1/claims/{group}/acquire"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409", "507"]

[[operations]]
include-path = "/v1/offers"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]

[[operations]]
include-path = "/v1/pools"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "409"]

[[operations]]
include-path = "/v1/backup-targets"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409", "503"]

[[operations]]
include-path-regex = "^/v1/(volumes/\\{name\\}/backup|backup)"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409", "503"]

[[operations]]
include-path = "/v1/pools/{name}"
include-method = "DELETE"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "404", "409"]
"#;

/// Whether `python3 -m schemathesis.cli` is the pinned release; missing is
/// a failure under CI=true.
fn require_schemathesis(test: &str) -> bool {
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--version"])
        .stdin(Stdio::null())
        .output();
    let version = match &out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => String::new(),
    };
    if version.ends_with(SCHEMATHESIS) {
        return true;
    }
    let why = format!(
        "{test}: needs schemathesis {SCHEMATHESIS} (python3 -m pip install 'schemathesis=={SCHEMATHESIS}'); found {version:?}"
    );
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{why}; CI=true makes a missing prerequisite a failure");
    }
    eprintln!("SKIP {why}");
    false
}

/// The number in "N generated" of schemathesis' summary.
fn generated_cases(output: &str) -> Option<u64> {
    output.lines().find_map(|l| {
        let (n, _) = l.trim().split_once(" generated")?;
        n.trim().parse().ok()
    })
}

#[test]
fn schemathesis_finds_nothing_in_any_operation() {
    let test = "schemathesis_finds_nothing_in_any_operation";
    if !common::require_root_loop(test) || !require_schemathesis(test) {
        return;
    }
    let examples = setting("BALLAST_SCHEMATHESIS_EXAMPLES", EXAMPLES);
    let seed = setting("BALLAST_SCHEMATHESIS_SEED", SEED);
    let d = Daemon::start();
    let root = d.dir.path().canonicalize().unwrap();
    let fuzz_root = root.join("fuzz");
    std::fs::create_dir(&fuzz_root).unwrap();
    let hook_log = root.join("hooks.log");
    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis_hooks.py");
    let config = root.join("schemathesis.toml");
    std::fs::write(&config, CONFIG.replace("@HOOKS@", hooks.to_str().unwrap())).unwrap();
    let token = std::fs::read_to_string(d.state.join("token")).unwrap();
    let addr = d.listen_addr();
    let output = root.join("schemathesis.out");
    let mut child = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--no-color", "--config-file"])
        .arg(&config)
        .arg("run")
        .arg(format!("http://{addr}/openapi.json"))
        .args([
            "--header",
            &format!("Authorization: Bearer {}", token.trim()),
        ])
        .args(["--checks", "all"])
        .args(["--max-examples", &examples, "--seed", &seed])
        .args(["--generation-database", "none", "--workers", "1"])
        .env("BALLAST_FUZZ_ROOT", &fuzz_root)
        .env("BALLAST_FUZZ_LOG", &hook_log)
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::fs::File::create(root.join("schemathesis.err")).unwrap())
        .spawn()
        .expect("run schemathesis");
    // A bound on the whole run (about a minute here), so a hang fails.
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis did not finish:\n{}",
                std::fs::read_to_string(&output).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&output).unwrap();
    let err = std::fs::read_to_string(root.join("schemathesis.err")).unwrap_or_default();
    let cases = generated_cases(&text);
    println!(
        "schemathesis {SCHEMATHESIS}: {} cases, seed {seed}, {examples} examples per operation",
        cases.map_or("?".to_string(), |n| n.to_string())
    );
    assert!(
        status.success(),
        "schemathesis failed ({status}):\n{text}\n{err}\ndaemon log:\n{}",
        d.log()
    );
    let cases = cases.unwrap_or_else(|| panic!("no case count in:\n{text}"));
    assert!(cases > 0, "{text}");
    // Every operation was selected and tested.
    let selected = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Selected: "))
        .and_then(|v| v.split_once('/'))
        .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()));
    assert!(
        selected.as_ref().is_some_and(|(a, b)| a == b),
        "every operation is fuzzed ({selected:?}):\n{text}"
    );
    // The hook saw pool creations, and every pool is in this test's
    // directory.
    let mapped = std::fs::read_to_string(&hook_log).unwrap_or_default();
    assert!(
        mapped.lines().count() > 0,
        "the pool path hook never ran: {}",
        hook_log.display()
    );
    let (status, pools) = d.http("GET", "/v1/pools", b"");
    assert_eq!(status, 200, "{pools}");
    for p in pools.as_array().unwrap() {
        let path = p["path"].as_str().unwrap();
        assert!(
            Path::new(path).starts_with(&root),
            "pool {} is outside the test's directory: {path}",
            p["name"]
        );
    }
}
