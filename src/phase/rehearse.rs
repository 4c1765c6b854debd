//! `rehearse`: a freeze and a thaw of the hooks by hand, with a pause where
//! the snapshot would be, a live view of slow hooks and a table at the end.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::Settings;
use crate::config::units::format_duration;
use crate::exit::Exit;
use crate::log::Log;
use crate::phase::Phase;
use crate::phase::engine::execute::Processes;
use crate::phase::engine::runner::{End, Runner};
use crate::phase::presync;
use crate::phase::records::history::pause_advice;
use crate::phase::records::journal::Recorded;
use crate::phase::report;
use crate::phase::setup;
use crate::sys::{self, Waiter};
use crate::text::{escape, escape_path};

/// `rehearse [--hold DUR]`.
pub fn rehearse(settings: &Settings, log: &Log, waiter: &Waiter, pause: Duration) -> Exit {
    setup::header(settings, log, "rehearse");
    outln!(
        "Rehearsal of {}: freeze then thaw of the hooks; no filesystem is frozen.",
        escape_path(&settings.hooks_dir)
    );
    if let Some(note) = &settings.fallback_note {
        outln!("{note}");
    } else {
        outln!(
            "log in {}, state in {}",
            escape_path(&settings.log_file),
            escape_path(&settings.state_dir)
        );
    }
    let _lock = match setup::lock(settings, log, Phase::Freeze) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let mut exec = Processes::new(settings, log, waiter);
    exec.show_progress = true;
    let mut runner = Runner::with(settings, log, exec);
    if let Recorded::Unthawed(_) = runner.journal().read() {
        let msg = "a freeze is in progress (the journal holds hooks not yet thawed); a rehearsal \
                   would thaw them. Run `fsfreeze-hook thaw` first if that freeze is stale";
        log.line(&format!("rehearse refused: {msg}"));
        return Exit::Setup(msg.into());
    }
    let refused = |msg: String| {
        log.line(&format!("rehearse refused: {msg}"));
        Exit::Setup(msg)
    };
    let found = match setup::discover(settings, log) {
        Ok(Some(f)) => f,
        Ok(None) => {
            return refused(format!(
                "hooks dir {} does not exist",
                escape_path(&settings.hooks_dir)
            ));
        }
        Err(msg) => return refused(msg),
    };
    for s in &found.skipped {
        outln!("skip {}: {}", escape(&s.name), s.reason);
    }
    let start = Instant::now();
    if settings.presync {
        presync::presync(settings, log, &presync::every_freezable(log));
    }
    let end = match runner.freeze(&found.hooks) {
        End::Done => {
            let interrupted = snapshot_pause(waiter, pause);
            // Interrupted while paused: thaw first (that is what releases the
            // applications), then report the interruption.
            match (runner.thaw(Some(&found)), interrupted) {
                (End::Done, Some(sig)) => End::Interrupted(
                    sig,
                    format!("rehearsal interrupted by {}; thawed", sig.as_str()),
                ),
                (end, _) => end,
            }
        }
        failed => failed,
    };
    out!(
        "{}",
        report::table(&found.hooks, &runner.records, settings.parallel)
    );
    let optional: Vec<String> = found
        .hooks
        .iter()
        .filter(|h| settings.is_optional(&h.name))
        .map(|h| escape(&h.name))
        .collect();
    if !optional.is_empty() {
        outln!(
            "optional (a failure is logged and counted, the freeze goes on): {}",
            optional.join(", ")
        );
    }
    // What the other mode would make of the pause, from this run.
    let took: Vec<(&std::ffi::OsStr, Duration)> = found
        .hooks
        .iter()
        .filter_map(|h| {
            let r = runner.records.iter().find(|r| {
                r.name == h.name && r.phase == Phase::Freeze && r.finished.outcome.success()
            })?;
            Some((h.name.as_os_str(), r.finished.elapsed))
        })
        .collect();
    if took.len() == found.hooks.len()
        && let Some(advice) = pause_advice(&took, settings.parallel)
    {
        outln!("{advice}");
    }
    outln!("log: {}", escape_path(log.path()));
    setup::finish(log, "rehearse", start, end)
}

/// The rehearsal's stand-in for the snapshot: waits `pause`, or less if a
/// stop signal comes (returned).
fn snapshot_pause(waiter: &Waiter, pause: Duration) -> Option<Signal> {
    if pause.is_zero() {
        return None;
    }
    outln!(
        "holding for {} (the snapshot would be taken now)",
        format_duration(pause)
    );
    let end = Instant::now() + pause;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match waiter.wait(None, Some(left)) {
            sys::Wake::Signal(Signal::SIGCHLD) | sys::Wake::Timeout | sys::Wake::Readable => {}
            sys::Wake::Signal(sig) => return Some(sig),
        }
    }
}
