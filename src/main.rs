//! fsfreeze-hook: runs fsfreeze-hook.d scripts for qemu-ga's filesystem freeze.

mod agent;
mod app;
mod check;
mod cli;
mod config;
mod enable;
mod event;
mod freeze;
mod hold;
mod hookfile;
mod hooks;
mod journal;
mod json;
mod list;
mod log;
#[cfg(test)]
mod man;
mod mounts;
mod output;
mod process;
mod report;
mod runner;
mod standalone;
mod status;
// The one OS layer: the only module where unsafe code (libc calls) is allowed.
#[allow(unsafe_code)]
mod sys;
mod trust;
mod units;
mod watchdog;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // First, before any child exists: signal mask, descriptors, umask.
    sys::prepare_process();
    let argv0 = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_default();
    let cli = cli::Cli::parse();
    app::run(cli, &argv0)
}
