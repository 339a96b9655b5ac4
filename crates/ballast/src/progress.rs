//! What the CLI shows while a long call (a copy, a move, a grow) runs: on a
//! terminal a progress bar drawn from the daemon's `/v1/operations`, with
//! the daemon's rate and ETA (a spinner until the daemon knows the size, or
//! for calls it does not count), otherwise a quiet line now and then and one
//! when done. All of it goes to stderr, so stdout stays the command's
//! output.

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
/// (`snapshot`, `copy`, `move`) and the name of the snapshot or volume being made,
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
            // A btrfs send knows its size only at its end: bytes and rate
            // beside the spinner meanwhile.
            if let (Some(bar), true) = (&bar, op.done_bytes > 0) {
                bar.set_message(format!("{what}... {}", describe(&op)));
            }
            continue;
        }
        // A tree copy's files may grow after they were measured.
        op.done_bytes = op.done_bytes.min(op.total_bytes);
        match &bar {
            Some(bar) => {
                if !sized {
                    // The rate and ETA are the daemon's (in the message),
                    // not indicatif's own: the daemon sees every byte, and
                    // a move's second pass starts its count again.
                    bar.set_style(
                        indicatif::ProgressStyle::with_template(
                            "{prefix} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {msg}",
                        )
                        .expect("a valid template")
                        .progress_chars("=> "),
                    );
                    bar.set_prefix(what.to_string());
                    sized = true;
                }
                // Each poll: a move's final pass may count another total.
                bar.set_length(op.total_bytes);
                bar.set_position(op.done_bytes);
                bar.set_message(rate_and_eta(&op));
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

/// `25% (512MiB of 2GiB), 100MiB/s, eta 16 seconds`; without a total,
/// `512MiB, 100MiB/s`.
fn describe(op: &Operation) -> String {
    let mut s = match op
        .done_bytes
        .saturating_mul(100)
        .checked_div(op.total_bytes)
    {
        None => format_size(op.done_bytes),
        Some(pct) => format!(
            "{pct}% ({} of {})",
            format_size(op.done_bytes),
            format_size(op.total_bytes)
        ),
    };
    let rate = rate_and_eta(op);
    if !rate.is_empty() {
        s.push_str(", ");
        s.push_str(&rate);
    }
    s
}

/// `100MiB/s, eta 16 seconds`, as far as the daemon knows them.
fn rate_and_eta(op: &Operation) -> String {
    if op.rate_bytes_per_sec == 0 {
        return String::new();
    }
    let rate = format!("{}/s", format_size(op.rate_bytes_per_sec));
    match op.eta_seconds {
        Some(s) => format!(
            "{rate}, eta {}",
            indicatif::HumanDuration(Duration::from_secs(s))
        ),
        None => rate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_a_copy() {
        let mut op = Operation::new(
            "snapshot",
            "s",
            "v",
            chrono::Utc::now(),
            (512 << 20, 2 << 30),
            0,
        );
        assert_eq!(describe(&op), "25% (512MiB of 2GiB)");
        op = Operation::new(
            "move",
            "v",
            "a/p → b/q",
            chrono::Utc::now(),
            (512 << 20, 2 << 30),
            128 << 20,
        );
        assert_eq!(
            describe(&op),
            "25% (512MiB of 2GiB), 128MiB/s, eta 12 seconds"
        );
        op.total_bytes = 0;
        op.eta_seconds = None;
        assert_eq!(describe(&op), "512MiB, 128MiB/s");
    }
}
