//! Volume autogrow and the event stream, end to end: a real daemon whose
//! watcher grows a mounted volume online while a writer fills it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_root_loop, require_tool, Daemon};

/// Whether this process may grow a mounted ext4 (CAP_SYS_RESOURCE).
fn has_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    eff & (1 << 24) != 0
}

fn size_of(d: &Daemon, name: &str) -> u64 {
    d.json(&["volume", "inspect", name])["size_bytes"]
        .as_u64()
        .unwrap()
}

/// Append `chunk` bytes with fsync until the filesystem says ENOSPC or
/// `limit` bytes are written; after each chunk, `between` runs. Returns the
/// bytes written and the error that stopped it, if any.
fn fill(
    path: &Path,
    chunk: usize,
    limit: u64,
    mut between: impl FnMut(u64),
) -> (u64, Option<std::io::Error>) {
    let mut f = std::fs::File::create(path).unwrap();
    let data = vec![0x5au8; chunk];
    let mut written = 0u64;
    while written < limit {
        if let Err(e) = f.write_all(&data).and_then(|()| f.sync_all()) {
            return (written, Some(e));
        }
        written += chunk as u64;
        between(written);
    }
    (written, None)
}

#[test]
fn xfs_volume_grows_online_until_its_max_then_enospc() {
    if !require_root_loop("autogrow xfs") || !require_tool("autogrow xfs", "mkfs.xfs") {
        return;
    }
    let d = Daemon::start_with(&["--watch-interval", "100ms"], &[]);
    d.ok(&[
        "volume",
        "create",
        "grow",
        "--fs",
        "xfs",
        "--size",
        "320M",
        "--autogrow",
        "70%:+50%:max=720M",
    ]);
    let mp = PathBuf::from(d.ok(&["volume", "mount", "grow"]).trim());
    let mut sizes = vec![size_of(&d, "grow")];
    // Pause after each chunk until the watcher has had its chance: the
    // writer waits for the size to move once use is past the threshold, so
    // the test checks behaviour, not speed.
    let (written, err) = fill(&mp.join("f"), 16 << 20, 2 << 30, |_| {
        let st = nix::sys::statvfs::statvfs(&mp).unwrap();
        let total = st.blocks() * st.fragment_size();
        let free = st.blocks_free() * st.fragment_size();
        let used_pct = (total - free) * 100 / total;
        let size = size_of(&d, "grow");
        if used_pct >= 70 && size < 720 << 20 {
            let deadline = Instant::now() + Duration::from_secs(30);
            while size_of(&d, "grow") == size && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let now = size_of(&d, "grow");
        if sizes.last() != Some(&now) {
            sizes.push(now);
        }
    });
    let err = err.expect("the writer never hit the max");
    assert_eq!(err.raw_os_error(), Some(libc::ENOSPC), "{err}");
    let final_size = size_of(&d, "grow");
    assert_eq!(final_size, 720 << 20, "sizes seen: {sizes:?}");
    assert!(sizes.len() >= 3, "grew in steps: {sizes:?}");
    assert!(written > 500 << 20, "only {written} bytes fit");
    let text = d.ok(&["events", "--limit", "200"]);
    assert!(text.contains("autogrow at"), "{text}");
    assert!(text.contains("reached its max"), "{text}");
    d.ok(&["volume", "rm", "grow", "--force"]);
    d.assert_no_leftovers();
}

#[test]
fn ext4_autogrow_grows_or_says_why_not() {
    if !require_root_loop("autogrow ext4") {
        return;
    }
    let d = Daemon::start_with(&["--watch-interval", "100ms"], &[]);
    d.ok(&[
        "volume",
        "create",
        "e",
        "--size",
        "64M",
        "--autogrow",
        "80%:+50%:max=256M",
    ]);
    let mp = PathBuf::from(d.ok(&["volume", "mount", "e"]).trim());
    if has_cap_sys_resource() {
        let (_, err) = fill(&mp.join("f"), 8 << 20, 1 << 30, |_| {
            std::thread::sleep(Duration::from_millis(300));
        });
        assert_eq!(err.unwrap().raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(size_of(&d, "e"), 256 << 20);
    } else {
        // This host cannot grow a mounted ext4: the watcher must say so once
        // and leave the size alone rather than inflate it.
        let _ = fill(&mp.join("f"), 8 << 20, 1 << 30, |_| {});
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = d.ok(&["events", "--limit", "200"]);
            if text.contains("CAP_SYS_RESOURCE") {
                break;
            }
            assert!(Instant::now() < deadline, "no warning event: {text}");
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(size_of(&d, "e"), 64 << 20);
    }
    d.ok(&["volume", "rm", "e", "--force"]);
    d.assert_no_leftovers();
}

#[test]
fn bad_autogrow_specs_change_nothing() {
    if !require_root_loop("autogrow bad input") {
        return;
    }
    let d = Daemon::start();
    for spec in [
        "80%",
        "0%:+1G:max=2G",
        "100%:+1G:max=2G",
        "80%:1G:max=2G",
        "80%:+0:max=2G",
        "80%:+1G",
        "80%:+1G:max=1Q",
        "x",
    ] {
        let err = d.fails(&["volume", "create", "a", "--size", "64M", "--autogrow", spec]);
        assert!(err.contains("autogrow"), "{spec}: {err}");
    }
    let err = d.fails(&[
        "volume",
        "create",
        "a",
        "--size",
        "64M",
        "--autogrow",
        "80%:+10%:max=32M",
    ]);
    assert!(err.contains("below"), "{err}");
    assert!(d.images().is_empty());
    assert_eq!(d.json(&["volume", "ls"]).as_array().unwrap().len(), 0);
}

#[test]
fn events_follow_streams_new_events() {
    let d = Daemon::start_with(&["--default-driver", "dir"], &[]);
    d.ok(&["volume", "create", "before"]);
    let mut child = Command::new(common::BIN)
        .arg("--socket")
        .arg(d.socket())
        .args(["-o", "json", "events", "--follow", "--limit", "5"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let next = |what: &str| -> serde_json::Value {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no event line for {what}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"))
    };
    // The backlog first: the earlier create.
    let first = next("the backlog");
    assert_eq!(first["kind"], "create");
    assert_eq!(first["volume"], "before");
    // Then live events, in order.
    d.ok(&["volume", "create", "after"]);
    let live = next("a live create");
    assert_eq!(live["kind"], "create");
    assert_eq!(live["volume"], "after");
    assert!(live["seq"].as_u64() > first["seq"].as_u64());
    d.ok(&["volume", "rm", "after"]);
    let gone = next("a live delete");
    assert_eq!(gone["kind"], "delete");
    let _ = child.kill();
    let _ = child.wait();
}
