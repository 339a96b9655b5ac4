//! The deploy/ files say what they must: the systemd unit starts ballast
//! before dockerd and hides no mounts from it; the spec file names a socket.

use std::path::Path;

fn repo(path: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `Key=value` lines of one section of a unit file.
fn section<'a>(unit: &'a str, name: &str) -> Vec<(&'a str, &'a str)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == format!("[{name}]");
            continue;
        }
        if inside && !line.starts_with('#') {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim(), v.trim()));
            }
        }
    }
    out
}

#[test]
fn systemd_unit_orders_before_docker_and_hides_no_mounts() {
    let unit = repo("deploy/systemd/ballast.service");
    let u = section(&unit, "Unit");
    assert!(
        u.iter()
            .any(|(k, v)| *k == "Before" && v.split_whitespace().any(|s| s == "docker.service")),
        "Before=docker.service missing"
    );
    let s = section(&unit, "Service");
    let exec = s
        .iter()
        .find(|(k, _)| *k == "ExecStart")
        .expect("ExecStart");
    assert!(exec.1.ends_with("ballast serve"), "{}", exec.1);
    for (k, v) in &s {
        match *k {
            "PrivateMounts" | "PrivateTmp" | "ProtectSystem" | "ProtectHome" => {
                assert!(
                    matches!(*v, "no" | "false" | "0"),
                    "{k}={v} hides mounts from dockerd"
                )
            }
            "MountFlags" => assert_eq!(*v, "shared", "MountFlags={v} hides mounts"),
            _ => {}
        }
    }
    let i = section(&unit, "Install");
    assert!(i
        .iter()
        .any(|(k, v)| *k == "WantedBy" && v.contains("multi-user.target")));
}

#[test]
fn spec_file_points_at_a_unix_socket() {
    let spec = repo("deploy/docker/ballast.spec");
    let url = spec.trim();
    assert!(url.starts_with("unix:///"), "{url}");
    assert!(url.ends_with(".sock"), "{url}");
}
