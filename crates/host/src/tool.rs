//! Running external tools (mkfs, resize2fs, xfs_growfs).
//!
//! A tool runs from an argument vector, never through a shell, with stdin
//! closed, stdout and stderr captured, and a deadline: on timeout its whole
//! process group is killed. This module knows nothing about what the tools do.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use ballast_core::host::HostError;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use wait_timeout::ChildExt;

/// Run `program` with `args`; `op` names the operation in errors and logs.
///
/// Output past a non-zero exit is reported as [`HostError::Failed`] with the
/// exit status and trimmed stderr; a deadline overrun kills the tool's process
/// group and gives [`HostError::TimedOut`].
pub(crate) fn run_tool_as<S: AsRef<OsStr>>(
    op: &str,
    program: &str,
    args: &[S],
    timeout: Duration,
) -> Result<Output, HostError> {
    run_tool_codes(op, program, args, timeout, &[])
}

/// Like [`run_tool_as`], also accepting the exit codes in `ok_codes` (e2fsck
/// exits 1 after fixing something, which is success for us).
pub(crate) fn run_tool_codes<S: AsRef<OsStr>>(
    op: &str,
    program: &str,
    args: &[S],
    timeout: Duration,
    ok_codes: &[i32],
) -> Result<Output, HostError> {
    tracing::debug!(op, program, "running tool");
    let mut cmd = Command::new(program);
    cmd.args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group, so a timeout kills helpers the tool started too.
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| spawn_error(op, program, &e))?;

    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);

    let status = match wait_deadline(&mut child, timeout) {
        Ok(Some(status)) => status,
        Ok(None) => {
            kill_group(&mut child);
            tracing::warn!(op, secs = timeout.as_secs(), "tool timed out; killed");
            // The readers are left to finish on their own: a grandchild that
            // left the group could hold the pipes open forever.
            return Err(HostError::TimedOut {
                op: op.to_string(),
                secs: timeout.as_secs(),
            });
        }
        Err(e) => {
            kill_group(&mut child);
            return Err(HostError::failed(op, format!("waiting for {program}: {e}")));
        }
    };

    let output = Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    };
    if !(output.status.success() || output.status.code().is_some_and(|c| ok_codes.contains(&c))) {
        return Err(HostError::failed(
            op,
            failure_detail(output.status, &output.stderr),
        ));
    }
    Ok(output)
}

/// Run `program` with `args` under `timeout`; errors name the command line.
///
/// See [`run_tool_as`] for the rules. Exposed so the runner itself can be tested.
pub fn run_tool<S: AsRef<OsStr>>(
    program: &str,
    args: &[S],
    timeout: Duration,
) -> Result<Output, HostError> {
    let mut op = program.to_string();
    for arg in args {
        op.push(' ');
        op.push_str(&arg.as_ref().to_string_lossy());
    }
    run_tool_as(&op, program, args, timeout)
}

fn wait_deadline(child: &mut Child, timeout: Duration) -> io::Result<Option<ExitStatus>> {
    loop {
        match child.wait_timeout(timeout) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn kill_group(child: &mut Child) {
    match i32::try_from(child.id()) {
        Ok(pid) => {
            if let Err(e) = killpg(Pid::from_raw(pid), Signal::SIGKILL) {
                tracing::debug!(pid, error = %e, "killpg failed; killing the child alone");
                let _ = child.kill();
            }
        }
        Err(_) => {
            let _ = child.kill();
        }
    }
    // Reap it; SIGKILL cannot be ignored, so this returns promptly.
    let _ = child.wait();
}

fn drain<R: Read + Send + 'static>(mut pipe: R) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

fn join(handle: Option<JoinHandle<Vec<u8>>>) -> Vec<u8> {
    handle.and_then(|h| h.join().ok()).unwrap_or_default()
}

fn spawn_error(op: &str, program: &str, e: &io::Error) -> HostError {
    if e.kind() == io::ErrorKind::NotFound {
        let detail = match package_of(program) {
            Some(pkg) => format!("{program} not found; install {pkg}"),
            None => format!("{program} not found"),
        };
        return HostError::failed(op, detail);
    }
    HostError::failed(op, format!("cannot run {program}: {e}"))
}

/// The distribution package that ships `program`, for the not-found hint.
fn package_of(program: &str) -> Option<&'static str> {
    let name = program.rsplit('/').next().unwrap_or(program);
    match name {
        "mkfs.ext4" | "resize2fs" | "e2fsck" | "tune2fs" => Some("e2fsprogs"),
        "mkfs.xfs" | "xfs_growfs" | "xfs_repair" => Some("xfsprogs"),
        "mkfs.btrfs" | "btrfs" => Some("btrfs-progs"),
        _ => None,
    }
}

fn failure_detail(status: ExitStatus, stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        status.to_string()
    } else {
        format!("{status}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    #[test]
    fn captures_stdout() {
        let out = run_tool("echo", &["hello", "world"], LONG).unwrap();
        assert_eq!(out.stdout, b"hello world\n");
        assert!(out.status.success());
    }

    #[test]
    fn nonzero_exit_reports_stderr_and_status() {
        let err = run_tool("sh", &["-c", "echo '  bad thing  ' >&2; exit 3"], LONG).unwrap_err();
        match err {
            HostError::Failed { op, detail } => {
                assert!(op.starts_with("sh -c"), "{op}");
                assert!(detail.contains("exit status: 3"), "{detail}");
                assert!(detail.ends_with("bad thing"), "{detail}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn missing_tool_names_package() {
        let err = run_tool_as(
            "mkfs.xfs /dev/loop9",
            "/nonexistent/mkfs.xfs",
            &["/dev/loop9"],
            LONG,
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("not found; install xfsprogs"), "{msg}");
        assert!(msg.starts_with("mkfs.xfs /dev/loop9:"), "{msg}");
    }

    #[test]
    fn large_output_does_not_deadlock() {
        // More than a pipe buffer on both streams at once.
        let script = "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2";
        let out = run_tool("sh", &["-c", script], LONG).unwrap();
        assert_eq!(out.stdout.len(), 300_000);
        assert_eq!(out.stderr.len(), 300_000);
    }

    #[test]
    fn timeout_kills_the_group() {
        let start = std::time::Instant::now();
        // The shell forks sleep; both must die or the test would wait 5 s.
        let err = run_tool("sh", &["-c", "sleep 5; true"], Duration::from_secs(1)).unwrap_err();
        assert!(
            matches!(err, HostError::TimedOut { secs: 1, .. }),
            "{err:?}"
        );
        assert!(start.elapsed() < Duration::from_secs(4));
    }
}
