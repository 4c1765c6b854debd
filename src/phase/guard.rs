//! The guard of a drop-in freeze. After our `freeze` returns, qemu-ga
//! freezes every filesystem and thaws only when the hypervisor says so; if
//! that never comes (the backup crashed, the host lost the agent's socket),
//! the guest stays frozen for good: qemu-ga never thaws on its own.
//!
//! So a successful freeze phase leaves a guard behind: a detached process of
//! its own (own session, in `/`, holding none of qemu-ga's descriptors),
//! needing nothing from any disk (the binary is in memory, the journal on
//! tmpfs, the log opened only after its thaw). On a monotonic clock it waits
//! `max_frozen`; the next `thaw` or `freeze` phase stands it down (SIGUSR1).
//! If none comes in time, or it gets SIGTERM, SIGINT or SIGHUP (a shutdown),
//! it thaws what qemu-ga's `guest-fsfreeze-thaw` would (every block-device
//! filesystem of mountinfo), then runs the thaw hooks as a rollback, under
//! the lock, and says why in the log and to syslog. The late thaw then runs
//! no hook a second time: the journal says the guard thawed.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::Settings;
use crate::config::units::format_duration;
use crate::filesystems::{self, Kernel};
use crate::log::Log;
use crate::log::event::{Event, Level};
use crate::phase::engine::runner::ThawCause;
use crate::phase::records::journal::{Journal, Recorded, now_ms};
use crate::phase::records::metrics;
use crate::phase::setup;
use crate::phase::unfreeze::{open_log_after_thaw, thaw_hooks_locked, to_thaw};
use crate::sys::{self, Waiter, Wake};

/// Starts the guard of the freeze the journal records and records it there.
/// Nothing is armed without a `max_frozen` or without root (only root can
/// thaw; qemu-ga runs its hook as root).
pub fn arm(settings: &Settings, log: &Log, journal: &mut Journal) -> Result<(), String> {
    let Some(max) = settings.max_frozen else {
        log.line("no guard: max_frozen is 0, the guest stays frozen until the hypervisor thaws it");
        return Ok(());
    };
    if !sys::is_root() {
        log.line("no guard: not root (only root can thaw filesystems)");
        return Ok(());
    }
    let until = Instant::now() + max;
    let pid = sys::start_helper(&[], |_, waiter| watch(settings, &waiter, until, max))
        .map_err(|e| format!("cannot start the guard: {e}"))?;
    if let Err(e) = journal.guard(pid, now_ms() + max.as_millis() as u64) {
        // Unrecorded, no thaw could stand it down: it must not run.
        sys::proc::signal_ours(pid, Signal::SIGUSR1);
        return Err(format!("cannot record the guard: {e:#}"));
    }
    log.line(&format!(
        "guard pid {pid} armed: if no thaw comes within {} (max_frozen), it thaws every filesystem and runs the thaw hooks",
        format_duration(max)
    ));
    Ok(())
}

/// Ends the guard the journal records, first thing in a thaw or freeze: one
/// that waits exits at once; one already thawing is waited for, so that the
/// caller finds the journal as the guard left it.
pub fn stand_down(settings: &Settings, log: &Log) {
    let Recorded::Unthawed(unthawed) = Journal::new(&settings.state_dir).read() else {
        return;
    };
    let Some((pid, _)) = unthawed.guard else {
        return;
    };
    if !sys::proc::is_ours(pid) {
        log.warn(&format!(
            "the guard (pid {pid}) of the last freeze is not running"
        ));
        return;
    }
    sys::proc::signal_ours(pid, Signal::SIGUSR1);
    // A guard that thaws takes the lock for the hooks: at most a phase.
    let bound = settings.phase_timeout.unwrap_or(Duration::from_secs(300))
        + settings.kill_grace
        + Duration::from_secs(10);
    if !sys::proc::wait_gone(pid, bound) {
        log.warn(&format!("the guard (pid {pid}) did not end; going on"));
    } else {
        log.line(&format!("guard pid {pid} ended"));
    }
}

/// How often a guard looks whether the journal still names it.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// Whether this guard is still the freeze's: false once the journal names
/// another guard, or records no freeze (a thaw settled it); true while it
/// names none yet (the freeze records its guard just after starting it).
fn still_named(settings: &Settings) -> bool {
    let me = std::process::id() as i32;
    match Journal::new(&settings.state_dir).read() {
        Recorded::Unthawed(u) => u.guard.is_none_or(|(who, _)| who.pid == me),
        Recorded::Idle(_) => false,
        _ => true,
    }
}

/// The guard's life, in its detached process.
fn watch(settings: &Settings, waiter: &Waiter, until: Instant, max: Duration) {
    let why = loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break format!(
                "thawed by max_frozen after {}: no thaw came from the hypervisor",
                format_duration(max)
            );
        }
        match waiter.wait(None, Some(left.min(LOOK_EVERY))) {
            // Stood down by a thaw or a newer freeze.
            Wake::Signal(Signal::SIGUSR1) => return,
            // One the journal no longer names (two freezes at once: the
            // second stood down before the first armed it) ends by itself:
            // one guard at most.
            Wake::Timeout if !still_named(settings) => return,
            Wake::Signal(Signal::SIGCHLD) | Wake::Timeout | Wake::Readable => {}
            Wake::Signal(sig) => {
                break format!(
                    "thawed by the guard after {}: it got {} (a frozen guest cannot shut down)",
                    format_duration(max - left),
                    sig.as_str()
                );
            }
        }
    };
    thaw_guest(settings, waiter, &why);
}

/// Thaws every filesystem qemu-ga would have frozen, then the hooks, and
/// says so: after the thaw, in the log and to syslog.
fn thaw_guest(settings: &Settings, waiter: &Waiter, why: &str) {
    let me = std::process::id() as i32;
    // Still this guard's freeze? A thaw may have settled it meanwhile.
    let Recorded::Unthawed(unthawed) = Journal::new(&settings.state_dir).read() else {
        return;
    };
    if unthawed.guard.map(|(who, _)| who.pid) != Some(me) {
        return;
    }
    // From here on a stand-down (a late thaw's SIGUSR1) waits: the late thaw
    // waits for this guard, which finishes what it began, hooks included.
    let deaf;
    let waiter = match waiter.without(Signal::SIGUSR1) {
        Ok(w) => {
            deaf = w;
            &deaf
        }
        Err(_) => waiter,
    };
    let start = Instant::now();
    let mut log = Log::of(settings);
    setup::header(settings, &log, "guard thaw");
    let every = to_thaw(&Kernel, unthawed.filesystems.clone(), true, &log);
    let failed = filesystems::thaw_all(&Kernel, &every, &log);
    open_log_after_thaw(&mut log, settings);
    let mut ran = Vec::new();
    let end = thaw_hooks_locked(
        settings,
        &log,
        waiter,
        &failed,
        ThawCause::MaxFrozen,
        &mut ran,
    );
    log.alert(
        Event::new("guard_thaw", why)
            .level(Level::Error)
            .with("guard_pid", me as u32)
            .with("filesystems", every.len() as u64),
    );
    metrics::record(settings, &log, "guard_thaw", start, &end, &ran);
    setup::log_end(&log, "guard thaw", start, &end);
}
