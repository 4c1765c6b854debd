//! qemu-ga's `freeze`: the freeze hooks, in order, rolled back on failure.
//! Filesystems are qemu-ga's to freeze, after this returns.

use std::time::Instant;

use crate::config::Settings;
use crate::exit::Exit;
use crate::log::Log;
use crate::phase::Phase;
use crate::phase::engine::runner::{End, Runner, ThawCause};
use crate::phase::guard;
use crate::phase::presync;
use crate::phase::records::journal::{self, Recorded};
use crate::phase::records::metrics;
use crate::phase::setup;
use crate::sys::Waiter;
use crate::text::escape_path;

/// `freeze`: the hooks only.
pub fn freeze(settings: &Settings, log: &Log, waiter: &Waiter) -> Exit {
    setup::header(settings, log, "freeze");
    let start = Instant::now();
    // One guard at a time, the newest: an older one (a freeze never thawed)
    // ends before anything else, and before the lock it would take.
    guard::stand_down(settings, log);
    let _lock = match setup::lock(settings, log, Phase::Freeze) {
        Ok(l) => l,
        Err(exit) => return exit,
    };
    let refuse = |msg: &str| {
        log.line(&format!("freeze refused: {msg}"));
        Exit::Setup(format!("freeze refused, no hook run: {msg}"))
    };
    // What the thaw runs under if the config is unusable by then.
    if let Err(e) = journal::save_config(&settings.state_dir, settings.config_text.as_deref()) {
        log.warn(&format!("{e:#}"));
    }
    let found = match setup::discover(settings, log) {
        Ok(f) => f,
        Err(msg) => return refuse(&msg),
    };
    let mut runner = Runner::new(settings, log, waiter);
    if let Recorded::Unthawed(h) = runner.journal().read()
        && !h.filesystems.is_empty()
    {
        // A new record would lose them, and with it the thaw.
        return refuse(
            "filesystems are frozen by a standalone freeze; run `fsfreeze-hook thaw` first",
        );
    }
    let Some(found) = found else {
        // The stock script's behaviour: no hooks dir, nothing to do.
        log.line(&format!(
            "hooks dir {} does not exist; nothing to run",
            escape_path(&settings.hooks_dir)
        ));
        return Exit::Ok;
    };
    if settings.presync {
        presync::presync(settings, log, &presync::every_freezable(log));
    }
    let end = match runner.freeze(&found.hooks) {
        End::Done => match guard::arm(settings, log, runner.journal_mut()) {
            Ok(()) => End::Done,
            Err(why) => {
                // Without its guard the guest could stay frozen for good.
                let undone = runner.thaw_as(Some(&found), ThawCause::Rollback);
                let line = format!("freeze aborted: {why}; hooks rolled back");
                match undone {
                    End::Done | End::Nothing => End::Failed(line),
                    End::Failed(l) | End::Interrupted(_, l) => End::Failed(format!("{line}; {l}")),
                }
            }
        },
        other => other,
    };
    // Before returning: qemu-ga freezes only after this.
    metrics::record(settings, log, "freeze", start, &end, &runner.records);
    setup::finish(log, "freeze", start, end)
}
