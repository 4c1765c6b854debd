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

use std::os::unix::ffi::OsStrExt;
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
    let mark = agents_frozen_mark();
    let pid = sys::start_helper(&[], |_, waiter| {
        watch(settings, &waiter, until, max, mark.as_deref())
    })
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

/// Where the qemu-ga that runs this freeze marks itself frozen: its
/// statedir's `qga.state.isfrozen` (`-t DIR`, `--statedir[=]DIR`, else its
/// default, /var/run). A qemu-ga that dies frozen leaves it, and the next
/// one starts believing the guest frozen (it refuses guest-exec until a
/// thaw) "until filesystems are manually unfrozen and the file is removed",
/// as it says. `None` when our caller is no qemu-ga (rehearse, a test).
fn agents_frozen_mark() -> Option<std::path::PathBuf> {
    let parent = std::os::unix::process::parent_id();
    let cmdline = std::fs::read(format!("/proc/{parent}/cmdline")).ok()?;
    let mut args = cmdline
        .split(|b| *b == 0)
        .map(|a| std::ffi::OsStr::from_bytes(a).to_os_string());
    let argv0 = args.next()?;
    if std::path::Path::new(&argv0).file_name() != Some(std::ffi::OsStr::new("qemu-ga")) {
        return None;
    }
    let mut dir = std::path::PathBuf::from("/var/run");
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        let bytes = a.as_bytes();
        if a == "-t" || a == "--statedir" {
            if let Some(d) = args.next() {
                dir = d.into();
            }
        } else if let Some(d) = bytes.strip_prefix(b"--statedir=") {
            dir = std::ffi::OsStr::from_bytes(d).into();
        } else if let Some(d) = bytes.strip_prefix(b"-t").filter(|d| !d.is_empty()) {
            dir = std::ffi::OsStr::from_bytes(d).into();
        }
    }
    Some(dir.join("qga.state.isfrozen"))
}

/// The guard's life, in its detached process.
fn watch(
    settings: &Settings,
    waiter: &Waiter,
    until: Instant,
    max: Duration,
    mark: Option<&std::path::Path>,
) {
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
    thaw_guest(settings, waiter, &why, mark);
}

/// Thaws every filesystem qemu-ga would have frozen, then the hooks, and
/// says so: after the thaw, in the log and to syslog.
fn thaw_guest(settings: &Settings, waiter: &Waiter, why: &str, mark: Option<&std::path::Path>) {
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
    // Every filesystem thawed: a qemu-ga that dies now (killed, or by
    // systemd after ignoring SIGTERM while it believes it is frozen) must
    // not leave the next one believing so.
    if let Some(mark) = mark
        && failed.is_empty()
        && std::fs::symlink_metadata(mark).is_ok_and(|m| m.is_file())
    {
        match std::fs::remove_file(mark) {
            Ok(()) => log.line(&format!(
                "removed qemu-ga's {}: the filesystems are thawed, and an agent started after this one must not believe them frozen",
                crate::text::escape_path(mark)
            )),
            Err(e) => log.warn(&format!(
                "cannot remove qemu-ga's {}: {e}",
                crate::text::escape_path(mark)
            )),
        }
    }
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
