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
//!
//! Under systemd the guard lives in the agent's service: a stop, a restart
//! or a shutdown SIGTERMs it with qemu-ga, which ignores SIGTERM while it
//! believes the guest frozen. When the SIGTERM came from PID 1 and systemd
//! says the unit is stopping, the guard, its thaw and hooks done, removes
//! qemu-ga's frozen mark and ends it with SIGHUP, so the stop does not wait
//! TimeoutStopSec and the next agent starts thawed.

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
use crate::sys::{self, Waiter, Wake, agent};

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
    let agent = the_agent();
    let pid = sys::start_helper(&[], |_, waiter| {
        watch(settings, &waiter, until, max, agent.as_ref())
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

/// The qemu-ga that runs this freeze, as its guard needs to know it.
struct Agent {
    /// The process (its start time tells it from a later one).
    who: sys::proc::Ident,
    /// Where it marks itself frozen ([`agent::FROZEN_MARK`] in its
    /// statedir).
    mark: std::path::PathBuf,
    /// The systemd service it runs in, from its cgroup
    /// (`qemu-guest-agent.service`), if any.
    unit: Option<String>,
}

/// Our caller, if it is a qemu-ga; `None` for rehearse, a test, a shell.
fn the_agent() -> Option<Agent> {
    let parent = std::os::unix::process::parent_id() as i32;
    let argv = sys::proc::cmdline(parent)?;
    let (argv0, args) = argv.split_first()?;
    if std::path::Path::new(argv0).file_name() != Some(std::ffi::OsStr::new("qemu-ga")) {
        return None;
    }
    let dir = agent::statedir(args, |p| std::fs::read_to_string(p).ok());
    let unit = std::fs::read_to_string(format!("/proc/{parent}/cgroup"))
        .ok()
        .and_then(|c| agent::service_of_cgroup(&c));
    Some(Agent {
        who: sys::proc::Ident::of(parent),
        mark: dir.join(agent::FROZEN_MARK),
        unit,
    })
}

/// Whether systemd is stopping `unit` now: its ActiveState is
/// `deactivating` (a stop, a restart, a shutdown, or the clean-up after its
/// main process died). Asked of systemd itself: a SIGTERM from PID 1 alone
/// may be `systemctl kill`, which stops nothing.
fn unit_stopping(unit: &str) -> Result<bool, String> {
    Ok(agent::systemctl_show(unit, "ActiveState")? == "deactivating")
}

/// What woke the guard to thaw.
enum Why {
    /// `max_frozen` passed.
    Expired,
    /// A stop signal, after this long frozen, from this pid (0: unknown).
    Signal(Signal, Duration, i32),
}

/// The guard's life, in its detached process.
fn watch(
    settings: &Settings,
    waiter: &Waiter,
    until: Instant,
    max: Duration,
    agent: Option<&Agent>,
) {
    let why = loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Why::Expired;
        }
        match waiter.wait(None, Some(left.min(LOOK_EVERY))) {
            // Stood down by a thaw or a newer freeze.
            Wake::Signal(Signal::SIGUSR1) => return,
            // One the journal no longer names (two freezes at once: the
            // second stood down before the first armed it) ends by itself:
            // one guard at most.
            Wake::Timeout if !still_named(settings) => return,
            Wake::Signal(Signal::SIGCHLD) | Wake::Timeout | Wake::Readable => {}
            Wake::Signal(sig) => break Why::Signal(sig, max - left, waiter.sender()),
        }
    };
    thaw_guest(settings, waiter, why, max, agent);
}

/// Thaws every filesystem qemu-ga would have frozen, then the hooks, and
/// says why: after the thaw, in the log and to syslog. When systemd is
/// stopping the agent's service, also ends the agent, which ignores SIGTERM
/// while it believes the guest frozen (systemd would wait TimeoutStopSec
/// for it, then kill it), once every filesystem is thawed.
fn thaw_guest(
    settings: &Settings,
    waiter: &Waiter,
    why: Why,
    max: Duration,
    agent: Option<&Agent>,
) {
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
    // Why, asked now that nothing is frozen (systemctl is on a disk).
    let (cause, text) = match why {
        Why::Expired => (
            ThawCause::MaxFrozen,
            format!(
                "thawed by max_frozen after {}: no thaw came from the hypervisor",
                format_duration(max)
            ),
        ),
        Why::Signal(sig, after, from) => {
            let unit = agent.and_then(|a| a.unit.as_deref());
            let stopping = match unit {
                // systemd kills a service's processes from PID 1.
                Some(unit) if from == 1 => unit_stopping(unit).unwrap_or_else(|e| {
                    log.warn(&format!(
                        "cannot ask systemd whether {unit} is stopping: {e}"
                    ));
                    false
                }),
                _ => false,
            };
            match unit.filter(|_| stopping) {
                Some(unit) => (
                    ThawCause::AgentStop,
                    format!(
                        "thawed by the guard after {}: systemd was stopping {unit} ({} from PID 1: a stop, a restart or a shutdown)",
                        format_duration(after),
                        sig.as_str()
                    ),
                ),
                None => (
                    ThawCause::GuardSignal,
                    format!(
                        "thawed by the guard after {}: it got {}{} (a frozen guest cannot shut down)",
                        format_duration(after),
                        sig.as_str(),
                        if from > 0 {
                            format!(" from pid {from}")
                        } else {
                            String::new()
                        }
                    ),
                ),
            }
        }
    };
    if let Some(agent) = agent {
        clear_the_mark(&log, agent, failed.is_empty());
    }
    let mut ran = Vec::new();
    let end = thaw_hooks_locked(settings, &log, waiter, &failed, cause, &mut ran);
    log.alert(
        Event::new("guard_thaw", &text)
            .level(Level::Error)
            .with("guard_pid", me as u32)
            .with("filesystems", every.len() as u64)
            .with("cause", cause.word()),
    );
    metrics::record(settings, &log, "guard_thaw", start, &end, &ran);
    setup::log_end(&log, "guard thaw", start, &end);
    // Last: once the agent is gone systemd sends what is left of the
    // service a second SIGTERM, which would cut the hooks short.
    if let Some(agent) = agent
        && cause == ThawCause::AgentStop
    {
        end_the_agent(&log, agent, failed.is_empty());
    }
}

/// After the guard's thaw, with every filesystem thawed, removes the
/// agent's frozen mark: a qemu-ga that dies now (killed, or ended below)
/// must not leave the next one believing the guest frozen.
fn clear_the_mark(log: &Log, agent: &Agent, all_thawed: bool) {
    let mark = crate::text::escape_path(&agent.mark);
    if !all_thawed {
        log.warn(&format!(
            "qemu-ga's {mark} kept: a filesystem is still frozen"
        ));
        return;
    }
    if std::fs::symlink_metadata(&agent.mark).is_ok_and(|m| m.is_file()) {
        match std::fs::remove_file(&agent.mark) {
            Ok(()) => log.line(&format!(
                "removed qemu-ga's {mark}: the filesystems are thawed, and an agent started after this one must not believe them frozen"
            )),
            Err(e) => log.warn(&format!("cannot remove qemu-ga's {mark}: {e}")),
        }
    }
}

/// When systemd is stopping the agent's service, after the guard's thaw
/// and hooks: ends the agent with SIGHUP, which it does not catch (it takes
/// SIGTERM and SIGINT, and ignores both while it believes the guest
/// frozen, so systemd would wait TimeoutStopSec and kill it) and which
/// systemd counts as a clean exit. An agent whose guest is not wholly
/// thawed is left to systemd.
fn end_the_agent(log: &Log, agent: &Agent, all_thawed: bool) {
    if !sys::proc::is_ours(agent.who) {
        return;
    }
    if !all_thawed {
        log.warn(&format!(
            "qemu-ga (pid {}) left to systemd: a filesystem is still frozen",
            agent.who.pid
        ));
        return;
    }
    log.line(&format!(
        "ending qemu-ga (pid {}) with SIGHUP: it ignores systemd's SIGTERM while it believes the guest frozen, and the guest is thawed",
        agent.who.pid
    ));
    sys::proc::signal_ours(agent.who, Signal::SIGHUP);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn the_agent_is_ended_and_its_mark_removed_only_once_every_filesystem_is_thawed() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&dir.path().join("log"), false);
        // A stand-in for qemu-ga: a process of this user.
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let agent = Agent {
            who: sys::proc::Ident::of(child.id() as i32),
            mark: dir.path().join(agent::FROZEN_MARK),
            unit: Some("qemu-guest-agent.service".into()),
        };
        std::fs::write(&agent.mark, "").unwrap();
        // A filesystem still frozen: the mark stays, the agent runs on.
        clear_the_mark(&log, &agent, false);
        end_the_agent(&log, &agent, false);
        std::thread::sleep(Duration::from_millis(100));
        assert!(agent.mark.exists());
        assert!(child.try_wait().unwrap().is_none(), "the agent was ended");
        // All thawed: the mark goes, the agent gets SIGHUP.
        clear_the_mark(&log, &agent, true);
        end_the_agent(&log, &agent, true);
        assert!(!agent.mark.exists());
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGHUP));
        let text = std::fs::read_to_string(dir.path().join("log")).unwrap();
        assert!(
            text.contains("a filesystem is still frozen")
                && text.contains(&format!("ending qemu-ga (pid {}) with SIGHUP", child.id())),
            "{text}"
        );
        // Once gone, nothing is signalled again (its pid may be another's).
        end_the_agent(&log, &agent, true);
    }
}
