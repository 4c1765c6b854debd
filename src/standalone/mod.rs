//! Freezing filesystems without qemu-ga: `freeze --fs` (this file),
//! `snapshot`, and the watchdog that guarantees their thaw.
//!
//! Ordering rule everywhere: nothing is written to any filesystem while one
//! is frozen (log lines wait in memory, the journal is on tmpfs); the thaw
//! (`phase::thaw`) thaws filesystems first, then runs the thaw hooks.

mod snapshot;
pub mod watchdog;

pub use snapshot::snapshot;

/// Which filesystems a snapshot is about (`-m`; none: every one qemu-ga
/// would freeze), and whether COMMAND freezes them itself
/// (`--command-freezes`: device-mapper's suspend does), so that we must not.
pub struct Chosen<'a> {
    pub mountpoints: &'a [PathBuf],
    pub by_command: bool,
}

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Instant;

use nix::errno::Errno;

use crate::config::units::format_duration;
use crate::config::{Settings, TimeLimit};
use crate::exit::Exit;
use crate::filesystems::mounts::Target;
use crate::filesystems::{self as freeze, FrozenFs, Kernel};
use crate::log::Log;
use crate::phase::Phase;
use crate::phase::engine::discovery::Discovery;
use crate::phase::engine::runner::{End, Runner, ThawCause};
use crate::phase::records::journal::{Journal, Recorded, StateLock, now_ms};
use crate::phase::setup;
use crate::phase::unfreeze::{parked_log, thaw_hooks};
use crate::sys::{self, Waiter};
use crate::text::escape_path;
use watchdog::Watchdog;

/// What a standalone freeze needs before anything is frozen.
pub(super) struct Prepared {
    _lock: Option<StateLock>,
    targets: Vec<Target>,
    /// Whether we FIFREEZE them (not when COMMAND freezes them itself).
    fifreeze: bool,
    found: Discovery,
}

pub(super) fn prepare(
    settings: &Settings,
    log: &Log,
    what: &str,
    chosen: Chosen<'_>,
) -> Result<Prepared, Exit> {
    let mountpoints = chosen.mountpoints;
    setup::header(settings, log, what);
    let refuse = |msg: String| {
        log.line(&format!("{what} refused: {msg}"));
        Exit::Setup(format!("{what} refused, nothing frozen: {msg}"))
    };
    if !sys::is_root() {
        return Err(refuse(
            "freezing filesystems needs root (CAP_SYS_ADMIN)".into(),
        ));
    }
    let lock = setup::lock(settings, log, Phase::Freeze)?;
    if let Recorded::Unthawed(h) = Journal::new(&settings.state_dir).read() {
        return Err(refuse(format!(
            "a freeze is held (hooks {}, {} filesystem(s)); run `fsfreeze-hook thaw` first",
            h.names.len(),
            h.filesystems.len()
        )));
    }
    let targets = freeze::targets(&Kernel, mountpoints).map_err(refuse)?;
    if targets.is_empty() {
        return Err(refuse("no filesystem to freeze".into()));
    }
    if chosen.by_command
        && let Some(t) = targets.iter().find(|t| freeze::dm_name(t.dev).is_none())
    {
        return Err(refuse(format!(
            "{} is not on device-mapper: nothing in COMMAND would freeze it (--command-freezes is for COMMANDs that suspend a device-mapper device, such as lvcreate -s)",
            escape_path(&t.mountpoint)
        )));
    }
    // The journal must stay writable while everything else is frozen.
    let state_dev = std::fs::metadata(&settings.state_dir)
        .map(|m| {
            (
                nix::sys::stat::major(m.dev()) as u32,
                nix::sys::stat::minor(m.dev()) as u32,
            )
        })
        .map_err(|e| {
            refuse(format!(
                "state dir {}: {e}",
                escape_path(&settings.state_dir)
            ))
        })?;
    if let Some(t) = targets.iter().find(|t| t.dev == state_dev) {
        return Err(refuse(format!(
            "state dir {} is on {}, which would be frozen; use a tmpfs such as /run/fsfreeze-hook",
            escape_path(&settings.state_dir),
            escape_path(&t.mountpoint)
        )));
    }
    let found = setup::discover(settings, log)
        .map_err(refuse)?
        .unwrap_or_default();
    Ok(Prepared {
        _lock: lock,
        targets,
        fifreeze: !chosen.by_command,
        found,
    })
}

/// Freeze hooks, watchdog, FIFREEZE. On success the log is held and the
/// watchdog armed; on failure everything is rolled back and `Err` says why.
pub(super) fn freeze_everything(
    settings: &Settings,
    log: &Log,
    runner: &mut Runner<'_>,
    prepared: &Prepared,
    deadline: TimeLimit,
) -> Result<(Watchdog, Vec<FrozenFs>), End> {
    let mountpoints: Vec<PathBuf> = prepared
        .targets
        .iter()
        .map(|t| t.mountpoint.clone())
        .collect();
    crate::phase::presync::presync(settings, log, &mountpoints);
    match runner.freeze(&prepared.found.hooks) {
        End::Done | End::Nothing => {}
        other => return Err(other),
    }
    let undo_hooks = |runner: &mut Runner<'_>, cause: String| {
        let end = runner.thaw_as(Some(&prepared.found), ThawCause::Rollback);
        Err(match end {
            End::Done | End::Nothing => {
                End::Failed(format!("freeze aborted: {cause}; hooks rolled back"))
            }
            End::Failed(l) | End::Interrupted(_, l) => {
                End::Failed(format!("freeze aborted: {cause}; {l}"))
            }
        })
    };
    let dog = match Watchdog::arm(settings, deadline) {
        Ok(d) => d,
        Err(e) => return undo_hooks(runner, format!("cannot start the watchdog: {e}")),
    };
    let deadline_ms = deadline.map(|d| now_ms() + d.as_millis() as u64);
    if let Err(e) = runner.journal_mut().watchdog(dog.pid(), deadline_ms) {
        dog.done();
        return undo_hooks(runner, format!("{e:#}"));
    }
    log.line(&format!(
        "watchdog pid {} armed{}",
        dog.pid(),
        deadline
            .map(|d| format!("; it thaws on its own after {}", format_duration(d)))
            .unwrap_or_default()
    ));
    // (Held back when COMMAND freezes them too: a log on one of them would
    // wait for its thaw.)
    log.defer(Some(&parked_log(settings)));
    if !prepared.fifreeze {
        for t in &prepared.targets {
            log.line(&format!(
                "{} not frozen here: COMMAND freezes it itself (device-mapper {}, --command-freezes)",
                escape_path(&t.mountpoint),
                freeze::dm_name(t.dev).unwrap_or_default()
            ));
        }
        return Ok((dog, Vec::new()));
    }
    match freeze::freeze_all(&Kernel, &prepared.targets, runner.journal_mut(), log) {
        Ok(frozen) => {
            let _ = runner.journal_mut().fs_all_frozen();
            Ok((dog, frozen))
        }
        Err(failed) => {
            log.write_deferred();
            dog.done();
            undo_hooks(runner, failed.to_string())
        }
    }
}

/// `freeze --fs`: freeze hooks, then the filesystems; return with them
/// frozen, the watchdog thawing them after `auto_thaw` unless a thaw comes.
pub fn freeze_fs(
    settings: &Settings,
    log: &Log,
    waiter: &Waiter,
    mountpoints: &[PathBuf],
    auto_thaw: TimeLimit,
) -> Exit {
    let start = Instant::now();
    let chosen = Chosen {
        mountpoints,
        by_command: false,
    };
    let prepared = match prepare(settings, log, "freeze --fs", chosen) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut runner = Runner::new(settings, log, waiter);
    let (dog, frozen) = match freeze_everything(settings, log, &mut runner, &prepared, auto_thaw) {
        Ok(x) => x,
        Err(end) => return setup::finish(log, "freeze --fs", start, end),
    };
    if let Some(sig) = sys::take_pending_stop_signal() {
        // Stopped while freezing: undo all of it.
        let failed = thaw_frozen(&mut runner, &frozen, log);
        let end = thaw_hooks(
            settings,
            log,
            waiter,
            &failed,
            ThawCause::Thaw,
            &mut Vec::new(),
        );
        dog.done();
        let line = format!(
            "freeze --fs interrupted by {}; thawed and rolled back",
            sig.as_str()
        );
        return setup::finish(
            log,
            "freeze --fs",
            start,
            End::Interrupted(sig, merge(line, end)),
        );
    }
    log.line(&format!(
        "froze {} filesystem(s) in {}; watchdog pid {} thaws them {}",
        frozen.len(),
        format_duration(start.elapsed()),
        dog.pid(),
        match auto_thaw {
            Some(d) => format!(
                "after {} unless `fsfreeze-hook thaw` comes first",
                format_duration(d)
            ),
            None => "only if this freeze is abandoned (no --auto-thaw)".into(),
        }
    ));
    log.park();
    dog.hand_over();
    Exit::Ok
}

/// The runner's own thaw of what it froze: FITHAW, record it, and write the
/// held log lines now that writing is safe.
pub(super) fn thaw_frozen(
    runner: &mut Runner<'_>,
    frozen: &[FrozenFs],
    log: &Log,
) -> Vec<(FrozenFs, Errno)> {
    let failed = freeze::thaw_all(&Kernel, frozen, log);
    if failed.is_empty()
        && let Err(e) = runner.journal_mut().fs_all_thawed()
    {
        log.warn(&format!("{e:#}"));
    }
    log.write_deferred();
    failed
}

fn merge(line: String, end: End) -> String {
    match end {
        End::Done | End::Nothing => line,
        End::Failed(l) | End::Interrupted(_, l) => format!("{line}; {l}"),
    }
}
