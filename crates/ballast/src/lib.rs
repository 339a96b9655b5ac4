//! The `ballast` binary's library: the CLI verbs (a client of the REST API)
//! and `ballast serve`, which wires the core, store, host, drivers and
//! front-ends together.

pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;

use std::process::ExitCode;

use clap::Parser;

/// Entry point: exit 0 on success, 1 with a one-line message on error.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("ballast: {msg}");
            ExitCode::FAILURE
        }
    }
}
