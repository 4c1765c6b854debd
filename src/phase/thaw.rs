//! `thaw`: the thaw qemu-ga runs after its own, and the one that undoes a
//! standalone freeze. The guard goes first, then the filesystems the journal
//! records (no thaw leaves one frozen), the log is opened only then, the
//! hooks last.

use std::time::Instant;

use nix::sys::signal::Signal;

use crate::config::Settings;
use crate::exit::Exit;
use crate::filesystems::{self, Kernel};
use crate::log::Log;
use crate::phase::Phase;
use crate::phase::engine::runner::ThawCause;
use crate::phase::guard;
use crate::phase::records::journal::{self, Journal, Recorded};
use crate::phase::records::metrics;
use crate::phase::setup;
use crate::phase::unfreeze::{open_log_after_thaw, thaw_hooks, to_thaw};
use crate::sys::{self, Waiter};

/// qemu-ga thaws every filesystem before it runs its hook's thaw: when this
/// plain thaw is its, the filesystems a standalone freeze (a `snapshot`
/// whose COMMAND may still copy) recorded are thawed already. Said at once
/// for that snapshot, before this thaw waits for the lock it holds.
fn agent_thawed_what_is_recorded(settings: &Settings, log: &Log) {
    let parent = nix::unistd::getppid().as_raw();
    if sys::proc::comm(parent).as_deref() != Some("qemu-ga") {
        return;
    }
    let Recorded::Unthawed(held) = Journal::new(&settings.state_dir).read() else {
        return;
    };
    if held.filesystems.is_empty() {
        return;
    }
    let who = format!("qemu-ga's thaw (pid {parent}), which thaws every filesystem");
    if let Err(e) = journal::note_thawed_under(&settings.state_dir, &who) {
        log.warn(&format!("{e:#}"));
    }
}

/// `thaw` (qemu-ga's, hooks) and `thaw --fs [--all]`: the filesystems the
/// journal records (every frozen one with `--all`), then the thaw hooks.
/// Even a plain thaw thaws recorded filesystems: no thaw leaves one frozen.
///
/// `thaw --fs` is an administrator's, often an emergency's: FITHAW needs no
/// lock, so it thaws first and only then waits for the lock that the hooks
/// need (a stuck run may hold it up to `phase_timeout`). qemu-ga's plain
/// thaw takes the lock first, so that it never thaws under a `snapshot`
/// whose COMMAND is still copying.
pub fn thaw(settings: &Settings, waiter: &Waiter, fs: bool, all: bool, note: Option<&str>) -> Exit {
    // The log may be on a frozen filesystem: defer lines until the thaw.
    let mut log = Log::of(settings);
    let what = if all { "thaw --fs --all" } else { "thaw" };
    setup::header(settings, &log, what);
    if let Some(note) = note {
        log.warn(note);
    }
    let start = Instant::now();
    // The guard goes first (a guard that already acts is waited for), and
    // before the lock, which a guard that acts takes: no hook thaws twice.
    guard::stand_down(settings, &log);
    if !fs {
        agent_thawed_what_is_recorded(settings, &log);
    }
    let lock = (!fs).then(|| setup::lock(settings, &log, Phase::Thaw));
    let held = match Journal::new(&settings.state_dir).read() {
        Recorded::Unthawed(h) => Some(h),
        Recorded::Idle(by) if ThawCause::is_guards(&by) => {
            log.line("the guard had already thawed the guest; no hook runs a second time");
            None
        }
        _ => None,
    };
    let recorded = held
        .as_ref()
        .map_or_else(Vec::new, |h| h.filesystems.clone());
    let frozen = to_thaw(&Kernel, recorded, all, &log);
    let fs_failed = filesystems::thaw_all(&Kernel, &frozen, &log);
    // Recorded filesystems this `thaw --fs` itself thawed (a snapshot's,
    // perhaps, whose COMMAND still runs).
    let thawed_recorded = fs
        && held.as_ref().is_some_and(|h| {
            h.filesystems
                .iter()
                .any(|r| !fs_failed.iter().any(|(f, _)| f.mountpoint == r.mountpoint))
        });
    if thawed_recorded
        && let Err(e) = journal::note_thawed_under(
            &settings.state_dir,
            &format!(
                "`fsfreeze-hook thaw --fs{}` (pid {})",
                if all { " --all" } else { "" },
                std::process::id()
            ),
        )
    {
        log.warn(&format!("{e:#}"));
    }
    open_log_after_thaw(&mut log, settings);
    let lock = lock.unwrap_or_else(|| setup::lock(settings, &log, Phase::Thaw));
    let _lock = match lock {
        Ok(l) => l,
        Err(exit) if fs && !frozen.is_empty() => {
            // Thawed, but the hooks could not run: not a refusal. The
            // journal says so (one appended line), so that the next thaw
            // does not take them for thawed by someone else.
            if fs_failed.is_empty()
                && let Err(e) = Journal::new(&settings.state_dir).note_fs_thawed()
            {
                log.warn(&format!("{e:#}"));
            }
            let why = exit.line().unwrap_or("no lock").to_string();
            let line = format!(
                "{what}: {} of {} filesystem(s) thawed, but no thaw hook ran ({why}); run `fsfreeze-hook thaw` again for the hooks",
                frozen.len() - fs_failed.len(),
                frozen.len()
            );
            log.line(&line);
            return Exit::Failed(line);
        }
        Err(exit) => return exit,
    };
    let mut ran = Vec::new();
    let end = thaw_hooks(
        settings,
        &log,
        waiter,
        &fs_failed,
        ThawCause::Thaw,
        &mut ran,
    );
    metrics::record(settings, &log, "thaw", start, &end, &ran);
    if let Some((pid, _)) = held.and_then(|h| h.watchdog) {
        // Its watchdog exits once the journal holds no filesystem.
        sys::proc::signal_ours(pid, Signal::SIGUSR1);
    }
    setup::finish(&log, what, start, end)
}
