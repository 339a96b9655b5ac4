//! A deadline for syscalls that can wait on the kernel forever.
//!
//! A stat or statvfs on a filesystem whose server stopped answering (FUSE,
//! NFS) sleeps until that server comes back. Such a call runs here on a thread
//! of its own; when the deadline passes the caller gets
//! [`HostError::TimedOut`] and goes on (releasing its volume lock), and the
//! thread is abandoned: it ends whenever the kernel lets go, or with the
//! process. Only calls without side effects belong here: a mount that
//! completes after its caller gave up would be a mount nobody records.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

use ballast_core::host::HostError;

/// How long a read-only host call may wait on the kernel.
pub const HOST_CALL_DEADLINE: Duration = Duration::from_secs(10);

/// Threads still stuck in a call whose caller gave up.
static ABANDONED: AtomicUsize = AtomicUsize::new(0);

/// The calls (by `op`, which names the path) that are stuck now: the same
/// call again fails at once instead of leaving one more thread behind each
/// time a watcher asks.
static STUCK: Mutex<Option<HashSet<String>>> = Mutex::new(None);

fn stuck(op: &str) -> bool {
    STUCK
        .lock()
        .map(|s| s.as_ref().is_some_and(|s| s.contains(op)))
        .unwrap_or(false)
}

fn set_stuck(op: &str, on: bool) {
    if let Ok(mut s) = STUCK.lock() {
        let set = s.get_or_insert_with(HashSet::new);
        if on {
            set.insert(op.to_string());
        } else {
            set.remove(op);
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// Idle worker threads, each waiting for its next call. Starting a thread
/// per call cost a /metrics scrape (a statvfs per mounted volume) about
/// 30 ms at 100 mounted volumes; a worker stuck in the kernel simply never
/// comes back to this list, and a new one is started in its place.
static IDLE: Mutex<Vec<mpsc::Sender<Job>>> = Mutex::new(Vec::new());

fn run_on_worker(job: Job) -> std::io::Result<()> {
    let idle = IDLE.lock().ok().and_then(|mut idle| idle.pop());
    let job = match idle {
        Some(worker) => match worker.send(job) {
            Ok(()) => return Ok(()),
            // Its thread is gone (it cannot be, but then start another).
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let (tx, rx) = mpsc::channel::<Job>();
    tx.send(job)
        .map_err(|_| std::io::Error::other("worker channel closed"))?;
    std::thread::Builder::new()
        .name("ballast-host-call".into())
        .spawn(move || {
            while let Ok(job) = rx.recv() {
                // A panicking call drops its answer channel: the caller sees
                // the disconnect. The worker lives on.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                if let Ok(mut idle) = IDLE.lock() {
                    idle.push(tx.clone());
                }
            }
        })
        .map(drop)
}

/// How many abandoned calls are still stuck in the kernel.
pub fn abandoned_calls() -> usize {
    ABANDONED.load(Ordering::Relaxed)
}

/// Run `call` with [`HOST_CALL_DEADLINE`]; `op` names it in the error.
pub(crate) fn within<T, F>(op: &str, call: F) -> Result<T, HostError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, HostError> + Send + 'static,
{
    within_for(op, HOST_CALL_DEADLINE, call)
}

pub(crate) fn within_for<T, F>(op: &str, limit: Duration, call: F) -> Result<T, HostError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, HostError> + Send + 'static,
{
    let timed_out = || HostError::TimedOut {
        op: op.to_string(),
        secs: limit.as_secs(),
    };
    if stuck(op) {
        return Err(timed_out());
    }
    // A rendezvous: the worker's send succeeds only if the caller takes the
    // answer, so a call that ends just as the caller gives up still counts
    // itself back (and is unmarked as stuck).
    let (tx, rx) = mpsc::sync_channel(0);
    let name = op.to_string();
    let job: Job = Box::new(move || {
        let result = call();
        // The receiver is gone when the caller gave up: count it back.
        if tx.send(result).is_err() {
            set_stuck(&name, false);
            ABANDONED.fetch_sub(1, Ordering::Relaxed);
            tracing::info!(op = %name, "an abandoned host call came back");
        }
    });
    if let Err(e) = run_on_worker(job) {
        return Err(HostError::failed(op, format!("starting a thread: {e}")));
    }
    match rx.recv_timeout(limit) {
        Ok(result) => result,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // Counted before the receiver drops, so the thread's decrement
            // can never come first.
            ABANDONED.fetch_add(1, Ordering::Relaxed);
            set_stuck(op, true);
            drop(rx);
            tracing::error!(
                op,
                secs = limit.as_secs(),
                "a host call is stuck in the kernel; abandoned it"
            );
            Err(timed_out())
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(HostError::failed(op, "the call's thread panicked"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_in_time() {
        assert_eq!(within("quick", || Ok(7)).unwrap(), 7);
    }

    #[test]
    fn a_stuck_call_times_out_and_is_counted_until_it_ends() {
        let (release, wait) = mpsc::channel::<()>();
        let err = within_for("stuck", Duration::from_millis(50), move || {
            let _ = wait.recv();
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, HostError::TimedOut { .. }), "{err}");
        assert!(abandoned_calls() >= 1);
        // While it is stuck, the same call fails at once, with no new thread.
        let again = within_for("stuck", Duration::from_secs(3600), || Ok(()));
        assert!(matches!(again, Err(HostError::TimedOut { .. })));
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while abandoned_calls() != 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(abandoned_calls(), 0);
        assert!(within_for("stuck", Duration::from_secs(5), || Ok(())).is_ok());
    }
}
