//! dvdcli compatibility end to end: `ballast dvdcli` (and the binary run
//! through a symlink named `dvdcli`) against ballast's own Docker plugin
//! socket, found the way dockerd finds plugins, as Mesos' docker/volume
//! isolator runs it. No dockerd is involved.

mod common;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::{require_root_loop, Daemon, BIN};
use nix::fcntl::{Flock, FlockArg};
use serde_json::Value;

const PLUGIN_DIR: &str = "/run/docker/plugins";
const SPEC_DIR: &str = "/etc/docker/plugins";

/// Claim a plugin name: `bt-<test>` unless another process holds it, else
/// `bt-<test>-<pid>`. dockerd caches every plugin it happens to see (a
/// socket in /run/docker/plugins, a spec file) and retries a dead one on
/// every probe, so names are reused across runs instead of made anew.
fn claim_plugin_name(test: &str) -> (String, Flock<std::fs::File>) {
    for name in [
        format!("bt-{test}"),
        format!("bt-{test}-{}", std::process::id()),
    ] {
        let file = std::fs::File::create(format!("/var/tmp/ballast-test-plugin-{name}.lock"))
            .expect("plugin name lock file");
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            // A daemon orphaned by a killed run may still serve the name.
            Ok(_)
                if UnixStream::connect(Path::new(PLUGIN_DIR).join(format!("{name}.sock")))
                    .is_ok() =>
            {
                continue
            }
            Ok(lock) => return (name, lock),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
            Err((_, e)) => panic!("locking plugin name {name}: {e}"),
        }
    }
    panic!("plugin name for {test}: both names are taken");
}

/// A daemon serving the plugin under a claimed name. Fields drop in order:
/// the daemon stops (removing its socket) before the name is released.
struct Plugin {
    name: String,
    socket: PathBuf,
    d: Daemon,
    _private_dir: Option<tempfile::TempDir>,
    _name: Flock<std::fs::File>,
}

impl Plugin {
    /// Serve in /run/docker/plugins, where discovery looks first.
    fn start(test: &str) -> Plugin {
        Self::start_in(test, None)
    }

    /// Serve in a directory of its own, out of discovery's (and dockerd's)
    /// sight.
    fn start_private(test: &str) -> Plugin {
        let dir = tempfile::Builder::new()
            .prefix("ballast-test-plugins-")
            .tempdir_in("/var/tmp")
            .unwrap();
        Self::start_in(test, Some(dir))
    }

    fn start_in(test: &str, private: Option<tempfile::TempDir>) -> Plugin {
        let (name, lock) = claim_plugin_name(test);
        let dir = private
            .as_ref()
            .map_or_else(|| PathBuf::from(PLUGIN_DIR), |d| d.path().to_path_buf());
        let dir_arg = dir.to_str().unwrap().to_string();
        let d = Daemon::start_with(
            &[
                "--docker-plugin-name",
                &name,
                "--docker-plugin-dir",
                &dir_arg,
            ],
            &[],
        );
        Plugin {
            socket: dir.join(format!("{name}.sock")),
            name,
            d,
            _private_dir: private,
            _name: lock,
        }
    }

    fn driver_arg(&self) -> String {
        format!("--volumedriver={}", self.name)
    }
}

/// Run `ballast dvdcli ARGS` (or `program ARGS` when given).
fn dvdcli_with(program: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = match program {
        Some(p) => Command::new(p),
        None => {
            let mut c = Command::new(BIN);
            c.arg("dvdcli");
            c
        }
    };
    cmd.args(args)
        .env_remove("BALLAST_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run dvdcli")
}

fn dvdcli(args: &[&str]) -> Output {
    dvdcli_with(None, args)
}

fn ok(args: &[&str], out: Output) -> String {
    assert!(
        out.status.success(),
        "dvdcli {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Exit 1, nothing on stdout, one line on stderr; returns the line.
fn fails(args: &[&str], out: Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "dvdcli {args:?} should fail: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "stdout on failure: {out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one-line error: {err:?}");
    err
}

/// The filesystem type mounted at `target`, from /proc/self/mountinfo.
fn fstype_at(target: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let target = target.to_str().unwrap();
    text.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        (left.split(' ').nth(4)? == target).then(|| right.split(' ').next().unwrap().to_string())
    })
}

fn volume(p: &Plugin, name: &str) -> Value {
    p.d.json(&["volume", "inspect", name])
}

#[test]
fn mount_path_get_list_unmount() {
    if !require_root_loop("dvdcli_mount_path_get_list_unmount") {
        return;
    }
    let p = Plugin::start("dvd-mount");
    let drv = p.driver_arg();
    let run = |args: &[&str]| ok(args, dvdcli(args));

    let args = ["mount", &drv, "--volumename=m1", "--volumeopts=size=32M"];
    let printed = run(&args);
    let mp = PathBuf::from(printed.trim_end());
    assert_eq!(
        printed,
        format!("{}\n", mp.display()),
        "one line: {printed:?}"
    );
    assert!(mp.is_absolute(), "{printed:?}");
    assert_eq!(
        fstype_at(&mp).as_deref(),
        Some("ext4"),
        "{mp:?} is not an ext4 mount"
    );
    let v = volume(&p, "m1");
    assert_eq!(v["size_bytes"], 32 << 20);
    assert_eq!(v["state"], "mounted");
    std::fs::write(mp.join("hello"), b"from dvdcli").unwrap();

    // Mesos mounts once per container and unmounts once, after the last.
    assert_eq!(run(&args), printed, "a second mount gives the same path");
    assert_eq!(run(&["path", &drv, "--volumename=m1"]), printed);
    let got: Value = serde_json::from_str(&run(&["get", &drv, "--volumename=m1"])).unwrap();
    assert_eq!(got["Name"], "m1", "{got}");
    assert_eq!(got["Mountpoint"], mp.to_str().unwrap());
    let list = run(&["list", &drv]);
    assert!(list.lines().any(|l| l == "m1"), "{list:?}");

    run(&["unmount", &drv, "--volumename=m1"]);
    assert_eq!(fstype_at(&mp), None, "still mounted after unmount");
    let v = volume(&p, "m1");
    assert_eq!(v["state"], "available", "{v}");
    assert!(v["consumers"].as_array().unwrap().is_empty(), "{v}");
    p.d.assert_no_leftovers();
    assert_eq!(run(&["path", &drv, "--volumename=m1"]), "");

    // The data stays; --explicitcreate is satisfied by an existing volume.
    let again = run(&["mount", &drv, "--volumename=m1", "--explicitcreate"]);
    let mp = PathBuf::from(again.trim_end());
    assert_eq!(std::fs::read(mp.join("hello")).unwrap(), b"from dvdcli");
    run(&["unmount", &drv, "--volumename=m1"]);
    p.d.assert_no_leftovers();
}

#[test]
fn create_remove_and_errors() {
    if !require_root_loop("dvdcli_create_remove_and_errors") {
        return;
    }
    let p = Plugin::start("dvd-create");
    let drv = p.driver_arg();
    let run = |args: &[&str]| ok(args, dvdcli(args));
    let fail = |args: &[&str]| fails(args, dvdcli(args));

    let out = run(&[
        "create",
        &drv,
        "--volumename=c1",
        "--volumeopts",
        "size=48M,fs=ext4",
    ]);
    assert_eq!(out, "c1\n");
    let v = volume(&p, "c1");
    assert_eq!(v["size_bytes"], 48 << 20);
    assert_eq!(v["fs"], "ext4");
    assert_eq!(v["state"], "available");
    // Repeated --volumeopts work too, and the same create again is a no-op.
    run(&[
        "create",
        &drv,
        "--volumename=c1",
        "--volumeopts=size=48M",
        "--volumeopts=fs=ext4",
    ]);
    let e = fail(&["create", &drv, "--volumename=c1", "--volumeopts=size=96M"]);
    assert!(e.contains("already exists"), "{e}");
    run(&["remove", &drv, "--volumename=c1"]);
    assert!(p.d.json(&["volume", "ls"]).as_array().unwrap().is_empty());
    assert!(p.d.images().is_empty());

    let e = fail(&["remove", &drv, "--volumename=c1"]);
    assert!(e.starts_with("ballast: ") && e.contains("not found"), "{e}");
    let e = fail(&["mount", &drv, "--volumename=nope", "--explicitcreate"]);
    assert!(e.contains("nope") && e.contains("does not exist"), "{e}");
    let e = fail(&[
        "mount",
        &drv,
        "--volumename=opt",
        "--volumeopts=colour=blue",
    ]);
    assert!(e.contains("colour"), "{e}");
    let e = fail(&["mount", &drv, "--volumename=opt", "--volumeopts=size=lots"]);
    assert!(e.contains("size"), "{e}");
    let e = fail(&["create", &drv, "--volumename=opt", "--volumeopts=size"]);
    assert!(e.contains("KEY=VALUE"), "{e}");
    let e = fail(&["create", &drv, "--volumename=a/b"]);
    assert!(e.contains("name"), "{e}");
    let e = fail(&["path", &drv, "--volumename=nope"]);
    assert!(e.contains("not found"), "{e}");
    let e = fail(&["list", "--volumedriver=bt-no-such-plugin"]);
    assert!(e.contains("not found"), "{e}");
    let e = fail(&["list", "--volumedriver=../x"]);
    assert!(e.contains("name"), "{e}");
    fail(&["mount", &drv]);
    // Nothing was made by the failures.
    assert!(p.d.json(&["volume", "ls"]).as_array().unwrap().is_empty());
    assert!(p.d.images().is_empty());
    p.d.assert_no_leftovers();
}

#[test]
fn a_symlink_named_dvdcli_behaves_the_same() {
    if !require_root_loop("dvdcli_a_symlink_named_dvdcli") {
        return;
    }
    let p = Plugin::start("dvd-link");
    let dir = tempfile::tempdir().unwrap();
    let link = dir.path().join("dvdcli");
    std::os::unix::fs::symlink(BIN, &link).unwrap();
    let drv = p.driver_arg();
    let run = |args: &[&str]| ok(args, dvdcli_with(Some(&link), args));

    let version = run(&["version"]);
    assert!(version.starts_with("dvdcli"), "{version:?}");
    let printed = run(&["mount", &drv, "--volumename=l1", "--volumeopts=size=32M"]);
    let mp = PathBuf::from(printed.trim_end());
    assert_eq!(fstype_at(&mp).as_deref(), Some("ext4"));
    assert_eq!(run(&["path", &drv, "--volumename=l1"]), printed);
    // The same as `ballast dvdcli`.
    assert_eq!(ok(&[], dvdcli(&["path", &drv, "--volumename=l1"])), printed);
    assert!(run(&["list", &drv]).lines().any(|l| l == "l1"));
    run(&["unmount", &drv, "--volumename=l1"]);
    assert_eq!(fstype_at(&mp), None);
    assert_eq!(volume(&p, "l1")["size_bytes"], 32 << 20);
    let args = ["remove", &drv, "--volumename=l1"];
    run(&args);
    let args = ["remove", drv.as_str(), "--volumename=l1"];
    let e = fails(&args, dvdcli_with(Some(&link), &args));
    assert!(e.starts_with("dvdcli: ") && e.contains("not found"), "{e}");
    // A usage error is one line and exit 1 as well.
    let args = ["mount", "--bogus-flag"];
    fails(&args, dvdcli_with(Some(&link), &args));
    p.d.assert_no_leftovers();
}

/// Removes a spec file at the end, even when the test fails, and the spec
/// directory too if the test made it and nothing else is in it.
struct SpecFile {
    path: PathBuf,
    made_dir: bool,
}

impl SpecFile {
    fn new(name: &str) -> SpecFile {
        let made_dir = !Path::new(SPEC_DIR).exists();
        std::fs::create_dir_all(SPEC_DIR).unwrap();
        SpecFile {
            path: Path::new(SPEC_DIR).join(format!("{name}.spec")),
            made_dir,
        }
    }
}

impl Drop for SpecFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        if self.made_dir {
            let _ = std::fs::remove_dir(SPEC_DIR);
        }
    }
}

#[test]
fn finds_a_plugin_through_a_spec_file() {
    if !require_root_loop("dvdcli_finds_a_plugin_through_a_spec_file") {
        return;
    }
    // The daemon's socket is out of the discovery directories: only the
    // spec file leads to it.
    let p = Plugin::start_private("dvd-spec-sock");
    let (spec_name, _spec_lock) = claim_plugin_name("dvd-spec");
    assert!(!Path::new(PLUGIN_DIR)
        .join(format!("{spec_name}.sock"))
        .exists());
    let spec = SpecFile::new(&spec_name);
    std::fs::write(&spec.path, format!("unix://{}\n", p.socket.display())).unwrap();
    let drv = format!("--volumedriver={spec_name}");
    let run = |args: &[&str]| ok(args, dvdcli(args));

    let printed = run(&["mount", &drv, "--volumename=s1", "--volumeopts=size=32M"]);
    let mp = PathBuf::from(printed.trim_end());
    assert_eq!(fstype_at(&mp).as_deref(), Some("ext4"));
    assert_eq!(volume(&p, "s1")["state"], "mounted");
    run(&["unmount", &drv, "--volumename=s1"]);
    assert_eq!(volume(&p, "s1")["state"], "available");
    run(&["remove", &drv, "--volumename=s1"]);
    assert!(p.d.images().is_empty());

    // A spec file naming a socket nobody serves: a one-line error.
    std::fs::write(&spec.path, "unix:///nonexistent/ballast-test.sock\n").unwrap();
    let args = ["list", drv.as_str()];
    let e = fails(&args, dvdcli(&args));
    assert!(e.contains(&spec_name), "{e}");
    p.d.assert_no_leftovers();
}
