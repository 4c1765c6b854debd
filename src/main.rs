//! fsfreeze-hook: runs fsfreeze-hook.d scripts for qemu-ga's filesystem
//! freeze. This file only prepares the process, reads the command line and
//! settings, hands the command to its audience's module and prints how it
//! ended: `phase` (what qemu-ga calls), `standalone` (freezing without
//! qemu-ga), `hold` (what hooks call), `admin` (administrators' commands),
//! all over `sys`, the one OS layer.

/// `println!`, `print!` and `eprintln!` that never panic: a reader that went
/// away (`| head`), a terminal that answers EIO (a job in the background
/// under `stty tostop`, an orphaned process group) costs the line, never
/// the run. Defined before the modules, which use them.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod admin;
mod cli;
mod config;
mod exit;
mod filesystems;
mod hold;
mod log;
#[cfg(test)]
mod man;
#[cfg(test)]
mod manual;
mod phase;
mod standalone;
// The one OS layer: the only module where unsafe code (libc calls) is allowed.
#[allow(unsafe_code)]
mod sys;
mod text;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::cli::{Cli, Command};
use crate::config::Settings;
use crate::exit::Exit;
use crate::log::Log;
use crate::sys::Waiter;

fn main() -> ExitCode {
    // First, before any child exists: signal mask, descriptors, umask.
    sys::prepare_process();
    let argv0 = std::env::args_os()
        .next()
        .map(PathBuf::from)
        .unwrap_or_default();
    let argv0 = admin::agent::invoked_as(&argv0);
    let cli = <Cli as clap::FromArgMatches>::from_arg_matches(&cli::command().get_matches())
        .unwrap_or_else(|e| e.exit());
    let snapshot = matches!(cli.command, Command::Snapshot { .. });
    let exit = run(cli, &argv0);
    // A snapshot refused before COMMAND ran says so with its own status,
    // never one COMMAND could have returned.
    let exit = if snapshot { exit.for_snapshot() } else { exit };
    if let Some(line) = exit.line() {
        // One line, whatever a name in it holds: qemu-ga passes it on.
        errln!("fsfreeze-hook: {}", text::escape_line(line.as_bytes()));
    }
    ExitCode::from(exit.code())
}

/// The command's word for its log lines, for the commands whose refusal
/// must reach a log (qemu-ga 7.2 throws the hook's stderr away).
fn logged_as(command: &Command) -> Option<&'static str> {
    Some(match command {
        Command::Freeze { .. } => "freeze",
        Command::Thaw { .. } => "thaw",
        Command::Snapshot { .. } => "snapshot",
        Command::Rehearse { .. } => "rehearse",
        Command::Hold { .. } => "hold",
        Command::Release { .. } => "release",
        _ => return None,
    })
}

fn run(cli: Cli, argv0: &Path) -> Exit {
    // What sets the installation up and judges it reads no run's settings:
    // a config that is broken or not trusted stops neither `disable` (a
    // package's removal runs it) nor `check`, which reports it.
    if let Some(exit) = installation(&cli.command) {
        return exit;
    }
    let mut config_problem = None;
    let settings = match phase::setup::settings(argv0, &cli.global.overrides()) {
        Ok(s) => s,
        // A thaw never waits on the config: the freeze's settings, as it
        // kept them, else the defaults; said in its log.
        Err(exit) if matches!(cli.command, Command::Thaw { .. }) => {
            let why = format!("config unusable now: {}", exit.line().unwrap_or_default());
            let (s, said) = phase::setup::thaw_settings(argv0, &cli.global.overrides(), &why);
            config_problem = Some(said);
            phase::setup::absolute(s)
        }
        // What is held and what would run are shown whatever the config:
        // its problem first, then what holds without it.
        Err(exit) if matches!(cli.command, Command::List { .. } | Command::Status { .. }) => {
            let line = exit.line().unwrap_or_default().to_string();
            config_problem = Some(line);
            phase::setup::absolute(Settings::load_without_config(
                argv0,
                &cli.global.overrides(),
            ))
        }
        Err(exit) => {
            // Not the log the config names: it may be bad or not trusted;
            // `--log-file`'s, else the default for this path.
            if let Some(what) = logged_as(&cli.command) {
                let log_file = match cli.global.overrides().log_file {
                    Some(flag) => std::path::absolute(&flag).unwrap_or(flag),
                    None => config::default_log_file(argv0),
                };
                phase::setup::log_refusal(&log_file, what, &exit);
            }
            return exit;
        }
    };
    // Where hooks' tools look (hold, release): the state dir and log given
    // to hooks; then the places judged for every command that writes there.
    let hooks_tool = matches!(cli.command, Command::Hold { .. } | Command::Release { .. });
    let settings = if hooks_tool {
        settings.as_seen_by_hooks()
    } else {
        settings
    };
    let writes_state = matches!(
        cli.command,
        Command::Freeze { .. }
            | Command::Thaw { .. }
            | Command::Snapshot { .. }
            | Command::Rehearse { .. }
            | Command::Hold { .. }
            | Command::Release { .. }
    );
    let log_file = settings.log_file.clone();
    let settings = match phase::setup::judge_places(settings, writes_state) {
        Ok(s) => s,
        Err(exit) => {
            if let Some(what) = logged_as(&cli.command) {
                phase::setup::log_refusal(&log_file, what, &exit);
            }
            return exit;
        }
    };
    if matches!(
        cli.command,
        Command::Freeze { .. }
            | Command::Thaw { .. }
            | Command::Snapshot { .. }
            | Command::Rehearse { .. }
    ) {
        // What a hook leaves behind by a double fork is adopted by the
        // runner, which ends it with the hook when that hook is ended.
        sys::become_subreaper();
    }
    let waiter = match Waiter::new() {
        Ok(e) => e,
        Err(e) => return Exit::Setup(format!("cannot set up signal handling: {e}")),
    };
    // A thaw may run while the log's filesystem is frozen, and status
    // writes nothing: neither opens the log up front.
    let open_log = |s: &Settings| Log::open_of(s, !sys::is_root());
    match cli.command {
        Command::Freeze {
            fs: false,
            max_frozen,
            ..
        } => {
            let mut settings = settings;
            if let Some(flag) = max_frozen {
                settings.max_frozen = flag.0;
            }
            phase::freeze::freeze(&settings, &open_log(&settings), &waiter)
        }
        Command::Freeze {
            fs: true,
            mountpoints,
            auto_thaw,
            ..
        } => standalone::freeze_fs(
            &settings,
            &open_log(&settings),
            &waiter,
            &mountpoints,
            auto_thaw.0,
        ),
        Command::Thaw { fs, all } => {
            phase::thaw::thaw(&settings, &waiter, fs, all, config_problem.as_deref())
        }
        Command::Snapshot {
            mountpoints,
            max_frozen,
            command_freezes,
            command,
        } => standalone::snapshot(
            &settings,
            &open_log(&settings),
            &waiter,
            standalone::Chosen {
                mountpoints: &mountpoints,
                by_command: command_freezes,
            },
            max_frozen.0,
            &command,
        ),
        Command::Rehearse { hold } => {
            phase::rehearse::rehearse(&settings, &open_log(&settings), &waiter, hold)
        }
        Command::Hold {
            name,
            max_hold,
            ready,
            ready_timeout,
            release_input,
            command,
        } => {
            let args = hold::HoldArgs {
                name,
                max_hold: max_hold.0,
                ready,
                ready_timeout: ready_timeout.0,
                release_input,
                command,
            };
            hold::hold(&settings, &open_log(&settings), args)
        }
        Command::Release { name } => hold::release(&settings, &open_log(&settings), &name),
        Command::Status { json } | Command::List { json } => {
            if let Some(line) = &config_problem {
                let said = format!(
                    "problem: {line}; shown without it. Fix: `fsfreeze-hook check` names each line to fix"
                );
                // JSON stays one document on stdout.
                match json {
                    true => errln!("{said}"),
                    false => outln!("{said}"),
                }
            }
            let seen = settings.as_seen_by_hooks();
            let exit = match cli.command {
                Command::Status { .. } => admin::status::status(&seen, json),
                _ => admin::list::list(&seen, json),
            };
            match (exit, &config_problem) {
                (Exit::Ok, Some(_)) => Exit::Problems,
                (exit, _) => exit,
            }
        }
        // Dispatched before the settings were read.
        other => installation(&other).unwrap_or(Exit::Ok),
    }
}

/// The commands that set the installation up and judge it, which read no
/// run's settings; `None` for the others.
fn installation(command: &Command) -> Option<Exit> {
    Some(match command {
        Command::Check { root, json } => admin::check::check(root, *json),
        Command::Enable { root, dry_run } => admin::enable::enable(root, *dry_run),
        Command::Disable { root, dry_run } => admin::enable::disable(root, *dry_run),
        Command::Refresh {
            root,
            agent_installed,
        } => admin::enable::refresh(root, *agent_installed),
        Command::Completions { shell } => completions(*shell),
        Command::Example { name } => admin::example::example(name.as_deref()),
        _ => return None,
    })
}

fn completions(shell: clap_complete::Shell) -> Exit {
    let mut cmd = cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "fsfreeze-hook", &mut script);
    // A reader that stops early (`| head`) is no error of ours.
    match std::io::Write::write_all(&mut std::io::stdout(), &script) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Exit::Failed(format!("cannot write the completions: {e}"))
        }
        _ => Exit::Ok,
    }
}
