//! The `ballast` binary's library: the CLI verbs (a client of the REST API)
//! and `ballast serve`, which wires the core, store, host, drivers and
//! front-ends together.

pub mod backup_cli;
pub mod claims;
pub mod cli;
pub mod client;
pub mod config;
pub mod daemon;
pub mod dvdcli;
pub mod node_cli;
pub mod pool_cli;
mod progress;

use std::process::ExitCode;

use clap::Parser;

/// Entry point: exit 0 on success, 1 with a one-line message on error
/// (a mistyped command line included).
pub fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let result = if dvdcli::invoked_as_dvdcli(std::path::Path::new(&argv0)) {
        match parse::<dvdcli::Dvdcli>() {
            Ok(c) => dvdcli::run(c),
            Err(code) => return code,
        }
    } else {
        match parse::<cli::Cli>() {
            Ok(c) => cli::run(c),
            Err(code) => return code,
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("{}: {msg}", program_name(&argv0));
            ExitCode::FAILURE
        }
    }
}

fn program_name(argv0: &std::ffi::OsStr) -> String {
    std::path::Path::new(argv0)
        .file_name()
        .map_or_else(|| "ballast".into(), |n| n.to_string_lossy().into_owned())
}

/// Parse the command line; usage errors become one line and exit code 1.
fn parse<T: Parser>() -> Result<T, ExitCode> {
    match T::try_parse() {
        Ok(cli) => Ok(cli),
        // --help, --version, and a bare `ballast volume`: clap prints the
        // help text itself.
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            let argv0 = std::env::args_os().next().unwrap_or_default();
            eprintln!("{}: {}", program_name(&argv0), usage_error_line(&e));
            Err(ExitCode::FAILURE)
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
