//! `snapshot -- COMMAND`: freeze hooks, FIFREEZE, COMMAND, FITHAW, thaw
//! hooks; COMMAND's status is the snapshot's, as with timeout(1).

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;

use super::{Chosen, Prepared, freeze_everything, prepare, thaw_frozen};
use crate::config::units::{format_duration, format_time_limit};
use crate::config::{Settings, TimeLimit};
use crate::exit::Exit;
use crate::log::Log;
use crate::phase::engine::process::{Context, Outcome, WaitEnd, Watch, spawn_command};
use crate::phase::engine::runner::{End, Runner, ThawCause};
use crate::phase::setup;
use crate::phase::unfreeze::thaw_hooks;
use crate::sys::{Group, Waiter};
use crate::text::program;

/// What the watchdog waits beyond `--max-frozen` before it acts on its own,
/// in case the runner is alive but stuck.
const WATCHDOG_MARGIN: Duration = Duration::from_secs(5);

/// How COMMAND's time while frozen ended.
enum CommandEnd<'a, 'b> {
    /// It exited: its status (128+N for a signal).
    Exited(u8),
    /// It could not be started: 127 (not found) or 126, and why.
    NotRun(u8, String),
    /// The frozen window expired; it still runs, to be ended after the thaw.
    TooLong(Watch<'a, 'b>),
    /// The runner got a stop signal; COMMAND still runs.
    Stopped(Signal, Watch<'a, 'b>),
}

/// `snapshot`.
pub fn snapshot(
    settings: &Settings,
    log: &Log,
    waiter: &Waiter,
    chosen: Chosen<'_>,
    max_frozen: TimeLimit,
    command: &[OsString],
) -> Exit {
    let start = Instant::now();
    let prepared = match prepare(settings, log, "snapshot", chosen) {
        Ok(p) => p,
        Err(exit) => return exit,
    };
    let mut runner = Runner::new(settings, log, waiter);
    let deadline = max_frozen.map(|d| d + WATCHDOG_MARGIN);
    let (dog, frozen) = match freeze_everything(settings, log, &mut runner, &prepared, deadline) {
        Ok(x) => x,
        Err(end) => {
            // Rolled back: nothing is frozen.
            crate::phase::records::metrics::record(
                settings,
                log,
                "snapshot",
                start,
                &end,
                &runner.records,
            );
            setup::log_end(log, "snapshot", start, &end);
            return Exit::FreezeFailed(match end.into_exit().line() {
                Some(line) => line.to_string(),
                None => "freeze failed".into(),
            });
        }
    };
    let frozen_at = Instant::now();
    // A thaw that says it thawed these filesystems says so after this (one
    // before is not said early: the FIFREEZE came after it; the thaw's
    // EINVAL still tells).
    // On the boot clock: a wall clock stepped back would make a stale note
    // look new.
    let frozen_ms = crate::sys::boot_ms();
    let ctx = Context {
        waiter,
        log,
        output_limit: settings.output_limit,
        state_dir: &settings.state_dir,
        config: settings.config_file.as_deref(),
        progress: None,
    };
    let mut signal_seen = None;
    let ended = run_command(
        command,
        &ctx,
        &mut signal_seen,
        max_frozen.map(|d| frozen_at + d),
        frozen_ms,
    );
    let (code, why, stopped) = describe(&ended, command, max_frozen);
    // Thaw first, in every case: the guarantee comes before the courtesy to
    // a COMMAND still running.
    let failed = thaw_frozen(&mut runner, &frozen, log);
    let torn = crate::filesystems::thawed_early(&failed);
    let exited = || {
        format!(
            "{} exited with status {code}{}",
            program(command),
            suspend_hint(&prepared)
        )
    };
    log.line(&format!(
        "{}; filesystems were frozen for {}",
        why.clone().unwrap_or_else(exited),
        format_duration(frozen_at.elapsed())
    ));
    if let CommandEnd::TooLong(mut watch) | CommandEnd::Stopped(_, mut watch) = ended {
        watch.end_group(settings.kill_grace);
    }
    let mut ran = std::mem::take(&mut runner.records);
    let hooks = thaw_hooks(settings, log, waiter, &failed, ThawCause::Thaw, &mut ran);
    dog.done();
    // The log's result is the snapshot's: COMMAND's failure (or its cut)
    // counts as much as the hooks'; one stderr line says it all.
    let command_failed = (code != 0).then(|| why.unwrap_or_else(exited));
    let command_failed = match (command_failed, left_suspended(&prepared, log)) {
        (f, None) => f,
        (None, Some(s)) => Some(s),
        (Some(f), Some(s)) => Some(format!("{f}; {s}")),
    };
    let end = merge(hooks, command_failed, stopped);
    // After FITHAW: nothing is frozen any more.
    crate::phase::records::metrics::record(settings, log, "snapshot", start, &end, &ran);
    setup::log_end(log, "snapshot", start, &end);
    let exit = exit_of(end, code, stopped);
    match (torn, exit.line()) {
        // Its own status, whatever COMMAND's was: the copy may be torn.
        (true, Some(line)) => Exit::Torn(line.to_string()),
        _ => exit,
    }
}

/// For a COMMAND that failed while we held a freeze of a device-mapper
/// device: the likely cause, and the way out.
fn suspend_hint(prepared: &Prepared) -> String {
    if !prepared.fifreeze {
        return String::new();
    }
    match prepared
        .targets
        .iter()
        .find_map(|t| crate::filesystems::dm_name(t.dev))
    {
        Some(name) => format!(
            " ({name} is on device-mapper: a COMMAND that suspends it, as lvcreate -s does, freezes it itself and fails on a filesystem we froze where freezes do not nest; run snapshot with --command-freezes)"
        ),
        None => String::new(),
    }
}

/// A device-mapper device of ours COMMAND left suspended (a failed
/// lvcreate can): said in the log and in the one line, since every write
/// to it hangs until it is resumed.
fn left_suspended(prepared: &Prepared, log: &Log) -> Option<String> {
    let names: Vec<String> = prepared
        .targets
        .iter()
        .filter(|t| crate::filesystems::dm_suspended(t.dev))
        .map(|t| crate::filesystems::dm_name(t.dev).unwrap_or_default())
        .collect();
    if names.is_empty() {
        return None;
    }
    let line = format!(
        "device-mapper device {} left suspended by COMMAND: writes to it wait until dmsetup resume {}",
        names.join(", "),
        names.join(" ")
    );
    log.event(crate::log::event::Event::message(&line).level(crate::log::event::Level::Error));
    Some(line)
}

/// Starts COMMAND and waits for its end, the frozen window's or a stop
/// signal, whichever comes first.
fn run_command<'a, 'b>(
    command: &[OsString],
    ctx: &'b Context<'a>,
    signal_seen: &'b mut Option<Signal>,
    deadline: Option<Instant>,
    frozen_ms: u64,
) -> CommandEnd<'a, 'b> {
    let (stdin, stdout, stderr) = (std::io::stdin(), std::io::stdout(), std::io::stderr());
    // A COMMAND that may prompt stays in our session, where the terminal
    // can be lent to it; any other in a session of its own, as hooks are.
    let group = match crate::sys::in_terminal_foreground() {
        true => Group::InSession,
        false => Group::Session,
    };
    let pid = match spawn_command(
        command,
        stdin.as_fd(),
        stdout.as_fd(),
        stderr.as_fd(),
        group,
    ) {
        Ok(pid) => pid,
        Err(e) => {
            let code = if e == Errno::ENOENT { 127 } else { 126 };
            return CommandEnd::NotRun(
                code,
                format!("cannot run {}: {}", program(command), e.desc()),
            );
        }
    };
    // A COMMAND that prompts reads the terminal as a foreground job would.
    let _terminal = crate::sys::Foreground::lend(pid);
    let mut watch = Watch::new(pid, None, ctx, signal_seen);
    let mut said = false;
    loop {
        let look = Instant::now() + LOOK_EVERY;
        let wake = deadline.map_or(look, |d| d.min(look));
        return match watch.wait_until(Some(wake), true) {
            WaitEnd::Deadline if deadline.is_none_or(|d| Instant::now() < d) => {
                if !said {
                    said = say_if_thawed_under(ctx, frozen_ms, command);
                }
                continue;
            }
            WaitEnd::Ended(Outcome::Exited(c)) => CommandEnd::Exited(c as u8),
            WaitEnd::Ended(Outcome::Signaled(s)) => CommandEnd::Exited(128 + s as u8),
            WaitEnd::Ended(_) => CommandEnd::Exited(126),
            WaitEnd::Deadline => CommandEnd::TooLong(watch),
            WaitEnd::Stopped(sig) => CommandEnd::Stopped(sig, watch),
        };
    }
}

/// How often, while COMMAND runs, a snapshot looks whether a thaw of ours
/// said it thawed what the snapshot froze.
const LOOK_EVERY: Duration = Duration::from_millis(200);

/// A thaw of ours (`thaw --fs`, qemu-ga's thaw through this hook) thawed
/// the filesystems while COMMAND copies: said at once on stderr, where the
/// backup script that runs the snapshot reads, and in the log (held back
/// with the rest until the thaw). The exit status says it again at the end
/// (123). Whether it was said.
fn say_if_thawed_under(ctx: &Context<'_>, frozen_ms: u64, command: &[OsString]) -> bool {
    let Some(who) = crate::phase::records::journal::thawed_under_since(ctx.state_dir, frozen_ms)
    else {
        return false;
    };
    let line = format!(
        "the filesystems were thawed by {who} while {} still runs: what it copies may be torn",
        program(command)
    );
    errln!("fsfreeze-hook: error: {line}");
    ctx.log
        .event(crate::log::event::Event::message(&line).level(crate::log::event::Level::Error));
    true
}

/// COMMAND's status, why it was cut short (if it was) and the stop signal.
fn describe(
    ended: &CommandEnd<'_, '_>,
    command: &[OsString],
    max_frozen: TimeLimit,
) -> (u8, Option<String>, Option<Signal>) {
    match ended {
        CommandEnd::Exited(code) => (*code, None, None),
        CommandEnd::NotRun(code, why) => (*code, Some(why.clone()), None),
        CommandEnd::TooLong(_) => (
            124,
            Some(format!(
                "frozen window of {} expired; thawed, then ended {}",
                format_time_limit(max_frozen),
                program(command)
            )),
            None,
        ),
        CommandEnd::Stopped(sig, _) => (
            128 + *sig as u8,
            Some(format!(
                "got {}; thawed, then ended {}",
                sig.as_str(),
                program(command)
            )),
            Some(*sig),
        ),
    }
}

/// The snapshot's end: the thaw hooks' with COMMAND's failure in front.
fn merge(hooks: End, command_failed: Option<String>, stopped: Option<Signal>) -> End {
    match (hooks, command_failed, stopped) {
        (end, None, _) => end,
        (End::Interrupted(sig, line), Some(f), _) => End::Interrupted(sig, format!("{f}; {line}")),
        (End::Failed(line), Some(f), Some(sig)) => End::Interrupted(sig, format!("{f}; {line}")),
        (End::Failed(line), Some(f), None) => End::Failed(format!("{f}; {line}")),
        (End::Done | End::Nothing, Some(f), Some(sig)) => End::Interrupted(sig, f),
        (End::Done | End::Nothing, Some(f), None) => End::Failed(f),
    }
}

/// The exit status: COMMAND's (124 for the window, 128+N for a stop
/// signal), or 1 when COMMAND succeeded but the thaw hooks did not.
fn exit_of(end: End, code: u8, stopped: Option<Signal>) -> Exit {
    let line = match end {
        End::Done | End::Nothing => return Exit::Command(code, None),
        End::Failed(line) | End::Interrupted(_, line) => line,
    };
    match (code, stopped) {
        (0, _) => Exit::Failed(line),
        (_, Some(sig)) => Exit::Signal(sig, line),
        (124, None) => Exit::FrozenTooLong(line),
        (code, None) => Exit::Command(code, Some(line)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_status_is_commands_then_the_thaws() {
        let failed = || End::Failed("x".into());
        assert_eq!(exit_of(End::Done, 0, None), Exit::Command(0, None));
        assert_eq!(exit_of(failed(), 0, None).code(), 1);
        assert_eq!(
            exit_of(failed(), 7, None),
            Exit::Command(7, Some("x".into()))
        );
        assert_eq!(exit_of(failed(), 124, None).code(), 124);
        assert_eq!(exit_of(failed(), 127, None).code(), 127);
        let stopped = exit_of(
            End::Interrupted(Signal::SIGTERM, "x".into()),
            143,
            Some(Signal::SIGTERM),
        );
        assert_eq!(stopped.code(), 143);
        assert_eq!(
            merge(End::Done, Some("c".into()), Some(Signal::SIGINT)),
            End::Interrupted(Signal::SIGINT, "c".into())
        );
        assert_eq!(
            merge(failed(), Some("c".into()), None),
            End::Failed("c; x".into())
        );
    }
}
