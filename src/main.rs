//! fsfreeze-hook: runs fsfreeze-hook.d scripts for qemu-ga's filesystem freeze.

mod admin;
mod app;
mod cli;
mod config;
mod filesystems;
mod hold;
mod log;
#[cfg(test)]
mod man;
mod phase;
mod standalone;
// The one OS layer: the only module where unsafe code (libc calls) is allowed.
#[allow(unsafe_code)]
mod sys;
mod text;

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
