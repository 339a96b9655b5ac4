//! The `ballast` binary's library: the CLI verbs (a client of the REST API)
//! and `ballast serve`, which wires the core, store, host, drivers and
//! front-ends together.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;

use std::process::ExitCode;

use clap::Parser;

/// Entry point: exit 0 on success, 1 with a one-line message on error
/// (a mistyped command line included).
pub fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        // --help, --version, and a bare `ballast volume`: clap prints the
        // help text itself.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            eprintln!("ballast: {}", usage_error_line(&e));
            return ExitCode::FAILURE;
        }
    };
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("ballast: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// clap's multi-line usage error (message, tip, usage) as one line.
fn usage_error_line(e: &clap::Error) -> String {
    e.render()
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .map(|l| {
            let l = l.strip_prefix("error: ").unwrap_or(l);
            match l.strip_prefix("Usage: ") {
                Some(u) => format!("usage: {u}"),
                None => l.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}
