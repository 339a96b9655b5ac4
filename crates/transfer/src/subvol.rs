//! btrfs moves: each pass is a read-only snapshot of the volume sent with
//! `btrfs send` (against the previous pass's snapshot after the first) and
//! fed to `btrfs receive` on the target. The stream's BLAKE3 is compared on
//! both ends, and `btrfs receive` checks the stream's own CRCs.
//!
//! Both tools run from argument vectors in their own process group; a
//! watchdog kills one that makes no progress for [`TOOL_IDLE`] (or on
//! cancel), so a stuck tool fails the pass instead of hanging it.

use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use ballast_core::moves::{MoveHello, MoveReceiver, PassStats};
use ballast_core::progress::Progress;
use ballast_core::DriverError;
use wait_timeout::ChildExt;

use crate::proto::{self, ProtoError};

/// A tool that moves no bytes for this long is killed.
const TOOL_IDLE: Duration = Duration::from_secs(60);
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);
const BLOCK: usize = 1 << 20;

fn btrfs() -> Command {
    let mut c = Command::new("btrfs");
    c.env("LC_ALL", "C").process_group(0);
    c
}

fn tool_error(what: &str, e: impl std::fmt::Display) -> DriverError {
    DriverError::Unavailable(format!("{what}: {e}"))
}

/// Run a short btrfs command to its end, with a deadline.
fn run(args: &[&std::ffi::OsStr], what: &str) -> Result<(), DriverError> {
    let mut child = btrfs()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| tool_error(what, e))?;
    let stderr = drain(child.stderr.take());
    match child.wait_timeout(SNAPSHOT_TIMEOUT) {
        Ok(Some(st)) if st.success() => Ok(()),
        Ok(Some(st)) => Err(tool_error(
            what,
            format!("{st}: {}", stderr.join().unwrap_or_default()),
        )),
        Ok(None) => {
            kill(&mut child);
            Err(DriverError::Timeout(format!(
                "{what}: no answer in {}s",
                SNAPSHOT_TIMEOUT.as_secs()
            )))
        }
        Err(e) => Err(tool_error(what, e)),
    }
}

fn drain<R: Read + Send + 'static>(r: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut r) = r {
            let _ = r.read_to_string(&mut s);
        }
        s.trim().to_string()
    })
}

fn kill(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = child.wait();
}

/// Kills the tool's group once it has moved no bytes for [`TOOL_IDLE`]
/// (`activity`: milliseconds after `started` of the last bytes); ends
/// when `done` is set.
fn watchdog(pid: u32, activity: Arc<AtomicU64>, done: Arc<AtomicBool>, started: Instant) {
    std::thread::spawn(move || {
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            let now = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let idle = now.saturating_sub(activity.load(Ordering::Relaxed));
            if Duration::from_millis(idle) > TOOL_IDLE {
                if let Ok(pid) = i32::try_from(pid) {
                    tracing::warn!(
                        pid,
                        "a btrfs tool moved no bytes for {}s; killing it",
                        TOOL_IDLE.as_secs()
                    );
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return;
            }
        }
    });
}

/// Let a pipe to or from a btrfs tool hold [`BLOCK`]: with the default 64
/// KiB every read of the stream (and every frame) is that small, and the
/// tool and this process take turns for each. Advisory: a pipe left at its
/// size still works.
fn widen_pipe(pipe: &impl std::os::fd::AsRawFd) {
    let size = i32::try_from(BLOCK).unwrap_or(i32::MAX);
    let _ = nix::fcntl::fcntl(pipe.as_raw_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(size));
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

fn next_name(work: &Path) -> u32 {
    std::fs::read_dir(work)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
        + 1
}

/// One pass of the sender: snapshot, send (incremental after the first).
pub fn send_pass<S: Read + Write>(
    tls: &mut S,
    path: &Path,
    work: &Path,
    last: &mut Option<PathBuf>,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<PassStats, ProtoError> {
    let name = next_name(work).to_string();
    let snap = work.join(&name);
    run(
        &[
            "subvolume".as_ref(),
            "snapshot".as_ref(),
            "-r".as_ref(),
            path.as_os_str(),
            snap.as_os_str(),
        ],
        "btrfs subvolume snapshot",
    )?;
    let mut cmd = btrfs();
    cmd.arg("send").arg("-q");
    if let Some(p) = last.as_ref() {
        cmd.arg("-p").arg(p);
    }
    cmd.arg(&snap)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| tool_error("btrfs send", e))?;
    let stderr = drain(child.stderr.take());
    let mut out = child.stdout.take().expect("piped");
    widen_pipe(&out);
    let parent = last
        .as_ref()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned());
    proto::send_json(
        tls,
        proto::SEND_BEGIN,
        &proto::SendBegin {
            name: name.clone(),
            parent,
        },
    )?;
    let activity = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    watchdog(
        child.id(),
        Arc::clone(&activity),
        Arc::clone(&done),
        started,
    );
    // The size of a send stream is known only at its end.
    progress.restart(0);
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; BLOCK];
    let mut stats = PassStats::default();
    let result = (|| -> Result<(), ProtoError> {
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err(ProtoError::Local(DriverError::Busy(
                    "the move was cancelled".into(),
                )));
            }
            let n = out.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            activity.store(millis(started), Ordering::Relaxed);
            hasher.update(&buf[..n]);
            proto::write_frame(tls, proto::STREAM, &[&buf[..n]])?;
            stats.sent_bytes += n as u64;
            progress.advance(n as u64);
        }
    })();
    done.store(true, Ordering::Relaxed);
    if let Err(e) = result {
        kill(&mut child);
        return Err(e);
    }
    let status = child
        .wait_timeout(SNAPSHOT_TIMEOUT)
        .map_err(|e| tool_error("btrfs send", e))?;
    match status {
        Some(st) if st.success() => {}
        Some(st) => {
            return Err(tool_error(
                "btrfs send",
                format!("{st}: {}", stderr.join().unwrap_or_default()),
            )
            .into())
        }
        None => {
            kill(&mut child);
            return Err(DriverError::Timeout("btrfs send did not exit".into()).into());
        }
    }
    progress.set_total(stats.sent_bytes);
    stats.scanned_bytes = stats.sent_bytes;
    proto::send_json(
        tls,
        proto::PASS_END,
        &proto::SendEnd {
            digest: hasher.finalize().to_hex().to_string(),
            bytes: stats.sent_bytes,
        },
    )?;
    let _: proto::Done = proto::expect_json(tls, proto::PASS_DONE)?;
    *last = Some(snap);
    Ok(stats)
}

/// A running `btrfs receive` and what it was fed.
struct Receiving {
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    stderr: Option<std::thread::JoinHandle<String>>,
    hasher: blake3::Hasher,
    bytes: u64,
    activity: Arc<AtomicU64>,
    done: Arc<AtomicBool>,
    started: Instant,
}

impl Drop for Receiving {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if self.stdin.is_some() {
            drop(self.stdin.take());
            kill(&mut self.child);
        }
    }
}

/// The target's side of a btrfs move, until the sender closes.
pub fn receive<S: Read + Write>(
    tls: &mut S,
    work: &Path,
    hello: &MoveHello,
    receiver: &Weak<dyn MoveReceiver>,
) -> Result<(), ProtoError> {
    proto::send_json(tls, proto::READY, &proto::Ready { hashes: None })?;
    let mut buf = Vec::new();
    let mut current: Option<Receiving> = None;
    let mut passes = 0u32;
    loop {
        let kind = match proto::read_frame(tls, &mut buf) {
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match kind {
            proto::SEND_BEGIN => {
                let b: proto::SendBegin = proto::parse(&buf)?;
                let valid = |n: &str| n.parse::<u32>().is_ok();
                if !valid(&b.name) || b.parent.as_deref().is_some_and(|p| !valid(p)) {
                    return proto::send_error(tls, "failed", "bad snapshot name");
                }
                let mut child = match btrfs()
                    .arg("receive")
                    .arg("-e")
                    .arg(work)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                {
                    Ok(c) => c,
                    Err(e) => {
                        return proto::send_error(tls, "failed", &format!("btrfs receive: {e}"))
                    }
                };
                let stderr = Some(drain(child.stderr.take()));
                let stdin = child.stdin.take();
                if let Some(p) = &stdin {
                    widen_pipe(p);
                }
                let activity = Arc::new(AtomicU64::new(0));
                let done = Arc::new(AtomicBool::new(false));
                let started = Instant::now();
                watchdog(
                    child.id(),
                    Arc::clone(&activity),
                    Arc::clone(&done),
                    started,
                );
                current = Some(Receiving {
                    child,
                    stdin,
                    stderr,
                    hasher: blake3::Hasher::new(),
                    bytes: 0,
                    activity,
                    done,
                    started,
                });
            }
            proto::STREAM => {
                let Some(r) = current.as_mut() else {
                    return Err(proto::unexpected(kind));
                };
                r.hasher.update(&buf);
                r.bytes += buf.len() as u64;
                r.activity.store(millis(r.started), Ordering::Relaxed);
                let w = r.stdin.as_mut().map(|s| s.write_all(&buf));
                if let Some(Err(e)) = w {
                    let msg = format!("btrfs receive stopped reading: {e}");
                    return proto::send_error(tls, "failed", &msg);
                }
            }
            proto::PASS_END => {
                let end: proto::SendEnd = proto::parse(&buf)?;
                let Some(mut r) = current.take() else {
                    return Err(proto::unexpected(kind));
                };
                drop(r.stdin.take());
                let status = r.child.wait_timeout(TOOL_IDLE);
                r.done.store(true, Ordering::Relaxed);
                let stderr = r
                    .stderr
                    .take()
                    .and_then(|h| h.join().ok())
                    .unwrap_or_default();
                let digest = r.hasher.finalize().to_hex().to_string();
                match status {
                    Ok(Some(st)) if st.success() => {}
                    Ok(Some(st)) => {
                        return proto::send_error(
                            tls,
                            "failed",
                            &format!("btrfs receive: {st}: {stderr}"),
                        )
                    }
                    _ => {
                        kill(&mut r.child);
                        return proto::send_error(tls, "failed", "btrfs receive did not finish");
                    }
                }
                if digest != end.digest || r.bytes != end.bytes {
                    return proto::send_error(
                        tls,
                        "corrupt",
                        &format!("the send stream arrived as {} bytes with digest {digest}; the source sent {} bytes with {}", r.bytes, end.bytes, end.digest),
                    );
                }
                passes += 1;
                proto::send_json(tls, proto::PASS_DONE, &proto::Done { bytes: r.bytes })?;
            }
            proto::VERIFY => {
                if passes == 0 {
                    proto::send_error(tls, "failed", "nothing was received")?;
                } else {
                    proto::send_json(tls, proto::VERIFIED, &proto::Done::default())?;
                }
            }
            proto::INSTALL => crate::install(tls, hello, receiver)?,
            other => return Err(proto::unexpected(other)),
        }
    }
}
