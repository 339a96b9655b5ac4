//! `dashboard`: the web dashboard's first render at many volumes, in
//! headless Chromium driven over the DevTools protocol (the driver of the
//! end-to-end test, crates/ballast/tests/common/chromium.rs).
//!
//! Each run navigates a tab from about:blank to the dashboard and waits for
//! the table to hold every volume. The figure is the page's own: the time
//! from navigation start until the table is painted, which app.js writes into
//! the table (`data-paint-ms`); the wall time seen from outside, which adds
//! the protocol's round trips and polling, is printed next to it.
//! Target (issue 6): first render with 1,000 volumes ≤ 1 s on loopback.

#[path = "../../ballast/tests/common/chromium.rs"]
mod chromium;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::Daemon;

pub fn dashboard(dir: &Path, volumes: usize, runs: usize) -> Result<()> {
    println!("== dashboard: first render of / with {volumes} volumes in headless Chromium ({runs} page loads)");
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(chromium::CHROMIUM).is_file()));
    if !found {
        bail!("{} not found: apt-get install chromium", chromium::CHROMIUM);
    }
    let d = Daemon::start(dir, &["--overcommit-ratio", "100"])?;
    let addr = std::fs::read_to_string(d.run.join("listen.addr"))
        .context("reading listen.addr")?
        .trim()
        .to_string();
    let t = Instant::now();
    for i in 0..volumes {
        d.rest(
            "POST",
            "/v1/volumes",
            &format!(r#"{{"name":"dash{i:05}","size":"64M"}}"#),
        )?;
    }
    eprintln!("  created {volumes} in {:.1} s", t.elapsed().as_secs_f64());
    let listing = d.rest("GET", "/v1/volumes", "")?;
    println!(
        "GET /v1/volumes: {:.0} KiB of JSON",
        listing.len() as f64 / 1024.0
    );

    let profile = dir.join("chromium-profile");
    std::fs::create_dir_all(&profile)?;
    let mut b = chromium::Browser::launch(&profile).context("starting chromium")?;
    let page = b.new_page(1400, 900)?;
    let url = format!("http://{addr}/");
    // [render, build, paint] in ms since navigation start, once the table
    // holds every volume and has been painted.
    let probe = format!(
        "(t => t && Number(t.dataset.rows) === {volumes} && t.dataset.paintMs \
         ? [t.dataset.renderMs, t.dataset.buildMs, t.dataset.paintMs].map(Number) : null)\
         (document.getElementById('volume-table'))"
    );
    println!(
        "{:<5} {:>10} {:>10} {:>10} {:>10}",
        "run", "paint ms", "rows ms", "build ms", "wall ms"
    );
    let mut paints = Vec::with_capacity(runs);
    for run in 1..=runs {
        b.navigate(&page, "about:blank")?;
        b.wait_for(&page, "location.href", Duration::from_secs(10), |v| {
            v == "about:blank"
        })?;
        let t = Instant::now();
        b.navigate(&page, &url)?;
        let (v, ok) = b.wait_for(&page, &probe, Duration::from_secs(30), |v| !v.is_null())?;
        let wall = t.elapsed();
        if !ok {
            bail!(
                "the table never held {volumes} rows; page errors: {:?}",
                b.page_errors()
            );
        }
        let at = |i: usize| v.get(i).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let (rows, build, paint) = (at(0), at(1), at(2));
        println!(
            "{run:<5} {paint:>10.1} {rows:>10.1} {build:>10.1} {:>10.1}",
            super::ms(wall)
        );
        paints.push(paint);
    }
    paints.sort_by(f64::total_cmp);
    let median = paints.get(paints.len() / 2).copied().unwrap_or(f64::NAN);
    let max = paints.last().copied().unwrap_or(f64::NAN);
    println!(
        "first render (navigation start -> {volumes} rows painted): median {median:.0} ms, max {max:.0} ms (target <= 1000 ms: {})",
        if max <= 1000.0 { "met" } else { "missed" }
    );
    let errors = b.page_errors();
    if !errors.is_empty() {
        bail!("the page reported errors: {errors:?}");
    }
    Ok(())
}
