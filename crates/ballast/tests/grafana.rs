//! The Grafana dashboard (deploy/grafana/ballast.json): every PromQL
//! expression in it names only series a live ballast exports, and it covers
//! capacity, provisioned vs used, I/O, latency quantiles, errors and
//! remediation.

mod common;
#[path = "common/exposition.rs"]
mod exposition;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use exposition::Exposition;
use serde_json::Value;

const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/grafana/ballast.json"
);

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("read the dashboard");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{DASHBOARD}: not JSON: {e}"))
}

/// Every panel, rows' nested panels included.
fn panels(v: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        out.push(p);
        out.extend(panels(p));
    }
    out
}

/// Every PromQL text in the dashboard: targets' `expr`, and the template
/// variables' queries.
fn expressions(d: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in panels(d) {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((format!("panel {title:?}"), e.to_string()));
            }
        }
    }
    for var in d["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] != "query" {
            continue;
        }
        let name = var["name"].as_str().unwrap_or("?");
        let q = match &var["query"] {
            Value::String(s) => s.clone(),
            v => v["query"].as_str().unwrap_or_default().to_string(),
        };
        out.push((format!("variable {name:?}"), q));
    }
    out
}

/// The metric names in a PromQL expression: identifiers starting with
/// `ballast_` outside label matchers and strings, whether followed by `{`,
/// `[` or standing alone. Grafana variables (`$pool`, `${x}`,
/// `$__rate_interval`) are skipped.
fn metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_braces = 0usize;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                i += 1;
                if b.get(i) == Some(&b'{') {
                    while i < b.len() && b[i] != b'}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                }
            }
            b'{' => {
                in_braces += 1;
                i += 1;
            }
            b'}' => {
                in_braces = in_braces.saturating_sub(1);
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' || c == b':' => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                if in_braces == 0 && word.starts_with("ballast_") {
                    out.push(word.to_string());
                }
            }
            c if c.is_ascii_digit() => {
                // Numbers and durations (0.99, 5m, 1e3).
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[test]
fn the_tokenizer_finds_metric_names_only() {
    assert_eq!(
        metric_names(
            r#"histogram_quantile(0.99, sum by (le) (rate(ballast_op_seconds_bucket{pool=~"$pool",x="ballast_not"}[$__rate_interval]))) / ballast_a_total + on (pool) ballast_b + ${ballast_var} + ballast_c[5m]"#
        ),
        [
            "ballast_op_seconds_bucket",
            "ballast_a_total",
            "ballast_b",
            "ballast_c"
        ]
    );
    assert_eq!(
        metric_names(r#"label_values(ballast_volume_size_bytes{pool=~"$pool"}, volume)"#),
        ["ballast_volume_size_bytes"]
    );
    assert!(metric_names("up{job='ballast_x'} * 2e3").is_empty());
}

#[test]
fn the_dashboard_is_well_formed() {
    let d = dashboard();
    assert_eq!(d["uid"], "ballast");
    assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(vars.contains(&"datasource"), "{vars:?}");
    let mut ids = BTreeSet::new();
    for p in panels(&d) {
        let id = p["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} twice");
        if p["type"] == "row" {
            continue;
        }
        let exprs: Vec<&str> = p["targets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["expr"].as_str())
            .collect();
        assert!(
            !exprs.is_empty() && exprs.iter().all(|e| !e.trim().is_empty()),
            "panel {} has no query",
            p["title"]
        );
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {}",
            p["title"]
        );
    }
}

#[test]
fn every_expression_names_a_metric_ballast_exports() {
    let d = dashboard();
    let exprs = expressions(&d);
    assert!(exprs.len() > 10, "{exprs:?}");

    // What a live daemon exports, not a list kept by hand.
    let daemon = Daemon::start();
    let (status, _, body) = daemon.tcp_get("/metrics");
    assert_eq!(status, 200);
    let live = Exposition::parse(&String::from_utf8(body).unwrap());
    let exported = live.series_names();

    let mut used: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (place, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no ballast metric in {expr:?}");
        for name in names {
            if !exported.contains(&name) {
                let hint = match live.family_of(&name) {
                    Some(f) => format!(
                        "family {f} is a {}; its series are {:?}",
                        live.types[f],
                        exported
                            .iter()
                            .filter(|s| live.family_of(s) == Some(f))
                            .collect::<Vec<_>>()
                    ),
                    None => "no such family".to_string(),
                };
                panic!("{place}: {name} in {expr:?} is not exported ({hint})");
            }
            used.entry(name).or_default().push(place.clone());
        }
    }

    // The dashboard shows what the issue asks for.
    for want in [
        "ballast_pool_capacity_bytes",
        "ballast_pool_provisioned_bytes",
        "ballast_pool_exclusive_bytes",
        "ballast_pool_used_bytes",
        "ballast_volumes",
        "ballast_volume_used_bytes",
        "ballast_volume_read_bytes_total",
        "ballast_volume_written_bytes_total",
        "ballast_volume_reads_total",
        "ballast_volume_writes_total",
        "ballast_operation_duration_seconds_bucket",
        "ballast_operation_errors_total",
        "ballast_pool_remediations_total",
        "ballast_volume_autogrows_total",
    ] {
        assert!(used.contains_key(want), "the dashboard does not use {want}");
    }
    assert!(
        exprs.iter().any(|(_, e)| e.contains("histogram_quantile(")
            && e.contains("ballast_operation_duration_seconds_bucket")),
        "no latency quantile"
    );
}
