//! What the CLI shows while a long call (a copy, a grow) runs: on a
//! terminal a progress bar drawn from the daemon's `/v1/operations` (a
//! spinner until the daemon knows the size, or for calls it does not
//! count), otherwise a quiet line now and then and one when done. All of it
//! goes to stderr, so stdout stays the command's output.

use std::io::IsTerminal;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ballast_core::model::format_size;
use ballast_core::progress::Operation;

use crate::client::Client;

/// How often the daemon is asked how far the operation has got.
const POLL: Duration = Duration::from_millis(100);
/// Off a terminal, at most one progress line this often.
const QUIET_EVERY: Duration = Duration::from_secs(5);

/// Run `call` while showing progress. `target` is the operation's kind
/// (`snapshot`, `copy`) and the name of the snapshot or volume being made,
/// as the daemon lists it; None draws a spinner only (a grow is not counted
/// in bytes).
pub(crate) fn with_progress<T>(
    client: &Client,
    what: &str,
    target: Option<(&str, &str)>,
    call: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let terminal = std::io::stderr().is_terminal();
    // Dropping the sender ends the watcher at once, not at its next poll:
    // a fast call (a btrfs snapshot) must not wait out a poll interval.
    let (done, finished) = mpsc::channel::<()>();
    let result = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| watch(client, what, target, terminal, finished));
        let result = call();
        drop(done);
        let _ = watcher.join();
        result
    });
    // An error is already the one line the caller prints.
    if result.is_ok() && !terminal {
        eprintln!("{what}: done in {:.1}s", start.elapsed().as_secs_f64());
    }
    result
}

/// Until `finished` disconnects, poll the daemon for the operation and
/// draw it.
fn watch(
    client: &Client,
    what: &str,
    target: Option<(&str, &str)>,
    terminal: bool,
    finished: mpsc::Receiver<()>,
) {
    let bar = terminal.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("{what}..."));
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let mut last_line = Instant::now();
    let mut sized = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = finished.recv_timeout(POLL) {
        let Some((kind, target)) = target else {
            continue;
        };
        // A failed poll only costs the bar an update; the call itself
        // reports what went wrong.
        let Ok(ops) = client.get::<Vec<Operation>>("/v1/operations") else {
            continue;
        };
        let Some(mut op) = ops
            .into_iter()
            .find(|o| o.kind == kind && o.target == target)
        else {
            continue;
        };
        if op.total_bytes == 0 {
            continue;
        }
        // A tree copy's files may grow after they were measured.
        op.done_bytes = op.done_bytes.min(op.total_bytes);
        match &bar {
            Some(bar) => {
                if !sized {
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                    bar.set_message(what.to_string());
                    bar.set_length(op.total_bytes);
                    sized = true;
                }
                bar.set_position(op.done_bytes);
            }
            None if last_line.elapsed() >= QUIET_EVERY => {
                eprintln!("{what}: {}", describe(&op));
                last_line = Instant::now();
            }
            None => {}
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

/// `25% (512MiB of 2GiB)`.
fn describe(op: &Operation) -> String {
    let pct = op.done_bytes.saturating_mul(100) / op.total_bytes.max(1);
    format!(
        "{pct}% ({} of {})",
        format_size(op.done_bytes),
        format_size(op.total_bytes)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_copy() {
        let op = Operation {
            kind: "snapshot".into(),
            target: "s".into(),
            source: "v".into(),
            started_at: chrono::Utc::now(),
            done_bytes: 512 << 20,
            total_bytes: 2 << 30,
        };
        assert_eq!(describe(&op), "25% (512MiB of 2GiB)");
    }
}
