//! Standalone mode: freezing filesystems without qemu-ga (`freeze --fs`,
//! `snapshot`), the thaw that undoes either (and qemu-ga's plain thaw), and
//! `status`. Ordering rule everywhere: nothing is written to any filesystem
//! while one is frozen (log lines wait in memory, the journal is on tmpfs),
//! and a thaw thaws filesystems first, then runs the thaw hooks.

pub mod watchdog;

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;

use crate::app::{self, EXIT_SETUP, fail};
use crate::config::units::{format_duration, format_limit};
use crate::config::{Limit, Settings};
use crate::filesystems::mounts::Target;
use crate::filesystems::{self as freeze, Kernel};
use crate::log::Log;
use crate::phase::discovery::Discovery;
use crate::phase::journal::{Held, Journal, Recorded, StateLock, now_ms};
use crate::phase::process::{Context, Outcome, WaitEnd, Watch};
use crate::phase::runner::{End, Phase, Runner};
use crate::sys::{self, Events, Exec, Program};
use crate::text::escape_path;
use watchdog::Watchdog;

/// A snapshot's frozen window expired: the filesystems were thawed and
/// COMMAND ended. (As timeout(1).)
pub const EXIT_FROZEN_TOO_LONG: u8 = 124;
/// A snapshot could not freeze (hooks or FIFREEZE): everything was rolled
/// back and COMMAND did not run. (As timeout(1)'s own failure.)
pub const EXIT_FREEZE_FAILED: u8 = 125;
/// What the watchdog waits beyond `--max-frozen` before it acts on its own,
/// in case the runner is alive but stuck.
const WATCHDOG_MARGIN: Duration = Duration::from_secs(5);

fn parked(settings: &Settings) -> PathBuf {
    settings.state_dir.join("held.log")
}

/// After the filesystems are thawed: open the log, then write what an
/// earlier run parked and what this one held.
pub fn open_log_after_thaw(log: &mut Log, settings: &Settings) {
    log.attach(!sys::is_root());
    log.unpark(&parked(settings));
    log.release();
}

/// The thaw hooks of what the journal records, after its filesystems were
/// thawed; filesystems whose thaw failed stay recorded.
pub fn thaw_hooks(
    settings: &Settings,
    log: &Log,
    events: &Events,
    fs_failed: &[(PathBuf, Errno)],
) -> End {
    let found = match app::discover(settings, log) {
        Ok(f) => f,
        Err(msg) => return End::Failed(format!("thaw refused, no hook run: {msg}")),
    };
    let mut runner = Runner::new(settings, log, events);
    if let Err(e) = runner.journal_mut().note_fs_thawed() {
        log.warn(&format!("{e:#}"));
    }
    let held = matches!(runner.journal().read(), Recorded::Held(_));
    let end = if found.is_none() && !held {
        // The stock script's behaviour: no hooks dir, nothing to do.
        log.line(&format!(
            "hooks dir {} does not exist; nothing to run",
            escape_path(&settings.hooks_dir)
        ));
        End::Nothing
    } else {
        runner.thaw(found.as_ref())
    };
    if fs_failed.is_empty() {
        return end;
    }
    // What the hooks' thaw left held stays; the filesystems whose thaw
    // failed are added to it.
    let mut journal = Journal::new(&settings.state_dir);
    let mut keep = match journal.read() {
        Recorded::Held(h) => h,
        _ => Held {
            since_ms: now_ms(),
            ..Held::default()
        },
    };
    keep.complete = true;
    keep.filesystems = fs_failed.iter().rev().map(|(p, _)| p.clone()).collect();
    if let Err(e) = journal.finish_held(&keep, "thaw") {
        log.warn(&format!("{e:#}"));
    }
    let fs = fs_failed
        .iter()
        .map(|(p, e)| format!("FITHAW of {} failed: {}", escape_path(p), e.desc()))
        .collect::<Vec<_>>()
        .join("; ");
    match end {
        End::Done | End::Nothing => End::Failed(format!("thaw failed: {fs}")),
        End::Failed(line) => End::Failed(format!("{line}; {fs}")),
        End::Interrupted(sig, line) => End::Interrupted(sig, format!("{line}; {fs}")),
    }
}

/// The watchdog's thaw of the hooks: under the lock, like any thaw.
pub fn thaw_hooks_locked(
    settings: &Settings,
    log: &Log,
    events: &Events,
    fs_failed: &[(PathBuf, Errno)],
) -> End {
    match StateLock::acquire(&settings.state_dir, settings.phase_timeout) {
        Ok(_lock) => thaw_hooks(settings, log, events, fs_failed),
        Err(e) => End::Failed(format!("filesystems thawed, hooks not: {e:#}")),
    }
}

/// `thaw` (qemu-ga's, hooks) and `thaw --fs [--all]`: the filesystems the
/// journal records (every frozen one with `--all`), then the thaw hooks.
/// Even a plain thaw thaws recorded filesystems: no thaw leaves one frozen.
pub fn thaw(settings: &Settings, events: &Events, all: bool) -> ExitCode {
    // The log may be on a frozen filesystem: hold lines until the thaw.
    let mut log = Log::held(&settings.log_file).styled(settings.log_format, settings.log_target);
    app::header(settings, &log, if all { "thaw --fs --all" } else { "thaw" });
    let start = Instant::now();
    let lock = app::lock(settings, &log, Phase::Thaw);
    let held = match Journal::new(&settings.state_dir).read() {
        Recorded::Held(h) => Some(h),
        _ => None,
    };
    let recorded = held
        .as_ref()
        .map_or_else(Vec::new, |h| h.filesystems.clone());
    let frozen = to_thaw(&Kernel, recorded, all, &log);
    let fs_failed = freeze::thaw_all(&Kernel, &frozen, &log);
    open_log_after_thaw(&mut log, settings);
    let _lock = match lock {
        Ok(l) => l,
        Err(code) => return code,
    };
    let end = thaw_hooks(settings, &log, events, &fs_failed);
    if let Some((pid, _)) = held.and_then(|h| h.watchdog) {
        watchdog::disarm(pid);
    }
    app::finish(&log, "thaw", start, end)
}

/// The filesystems a thaw thaws, in freeze order: those the journal
/// records, and with `all` (recovery) every filesystem qemu-ga would freeze,
/// whoever froze it.
fn to_thaw(
    fs: &dyn freeze::Filesystems,
    recorded: Vec<PathBuf>,
    all: bool,
    log: &Log,
) -> Vec<PathBuf> {
    if !all {
        return recorded;
    }
    let targets = match freeze::targets(fs, &[]) {
        Ok(t) => t,
        Err(e) => {
            log.warn(&e);
            return recorded;
        }
    };
    // Children first, as a freeze goes, so that thaw_all runs in mount
    // order; recorded ones no longer mounted come first (thawed last).
    let mut out: Vec<PathBuf> = recorded
        .into_iter()
        .filter(|r| !targets.iter().any(|t| &t.mountpoint == r))
        .collect();
    out.extend(targets.iter().rev().map(|t| t.mountpoint.clone()));
    out
}

/// What a standalone freeze needs before anything is frozen.
struct Prepared {
    _lock: Option<StateLock>,
    targets: Vec<Target>,
    found: Discovery,
}

fn prepare(
    settings: &Settings,
    log: &Log,
    what: &str,
    mountpoints: &[PathBuf],
) -> Result<Prepared, ExitCode> {
    app::header(settings, log, what);
    let refuse = |msg: String| {
        log.line(&format!("{what} refused: {msg}"));
        fail(
            EXIT_SETUP,
            &format!("{what} refused, nothing frozen: {msg}"),
        )
    };
    if !sys::is_root() {
        return Err(refuse(
            "freezing filesystems needs root (CAP_SYS_ADMIN)".into(),
        ));
    }
    let lock = app::lock(settings, log, Phase::Freeze)?;
    if let Recorded::Held(h) = Journal::new(&settings.state_dir).read() {
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
    let found = app::discover(settings, log)
        .map_err(refuse)?
        .unwrap_or_default();
    Ok(Prepared {
        _lock: lock,
        targets,
        found,
    })
}

/// Freeze hooks, watchdog, FIFREEZE. On success the log is held and the
/// watchdog armed; on failure everything is rolled back and `Err` says why.
fn freeze_everything(
    settings: &Settings,
    log: &Log,
    runner: &mut Runner<'_>,
    prepared: &Prepared,
    deadline: Limit,
) -> Result<(Watchdog, Vec<PathBuf>), End> {
    match runner.freeze(&prepared.found.hooks) {
        End::Done | End::Nothing => {}
        other => return Err(other),
    }
    let undo_hooks = |runner: &mut Runner<'_>, cause: String| {
        let end = runner.thaw_as(Some(&prepared.found), true);
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
    log.hold(Some(&parked(settings)));
    match freeze::freeze_all(&Kernel, &prepared.targets, runner.journal_mut(), log) {
        Ok(frozen) => {
            let _ = runner.journal_mut().fs_all_frozen();
            Ok((dog, frozen))
        }
        Err(failed) => {
            log.release();
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
    events: &Events,
    mountpoints: &[PathBuf],
    auto_thaw: Limit,
) -> ExitCode {
    let start = Instant::now();
    let prepared = match prepare(settings, log, "freeze --fs", mountpoints) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut runner = Runner::new(settings, log, events);
    let (dog, frozen) = match freeze_everything(settings, log, &mut runner, &prepared, auto_thaw) {
        Ok(x) => x,
        Err(end) => return app::finish(log, "freeze --fs", start, end),
    };
    if let Some(sig) = sys::take_pending_stop_signal() {
        // Stopped while freezing: undo all of it.
        let failed = thaw_frozen(&mut runner, &frozen, log);
        let end = thaw_hooks(settings, log, events, &failed);
        dog.done();
        let line = format!(
            "freeze --fs interrupted by {}; thawed and rolled back",
            sig.as_str()
        );
        return app::finish(
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
    ExitCode::from(app::EXIT_OK)
}

/// The runner's own thaw of what it froze: FITHAW, record it, and write the
/// held log lines now that writing is safe.
fn thaw_frozen(runner: &mut Runner<'_>, frozen: &[PathBuf], log: &Log) -> Vec<(PathBuf, Errno)> {
    let failed = freeze::thaw_all(&Kernel, frozen, log);
    if failed.is_empty()
        && let Err(e) = runner.journal_mut().fs_all_thawed()
    {
        log.warn(&format!("{e:#}"));
    }
    log.release();
    failed
}

fn merge(line: String, end: End) -> String {
    match end {
        End::Done | End::Nothing => line,
        End::Failed(l) | End::Interrupted(_, l) => format!("{line}; {l}"),
    }
}

/// `snapshot -- COMMAND`: freeze hooks, FIFREEZE, COMMAND, FITHAW, thaw hooks.
pub fn snapshot(
    settings: &Settings,
    log: &Log,
    events: &Events,
    mountpoints: &[PathBuf],
    max_frozen: Limit,
    command: &[OsString],
) -> ExitCode {
    let start = Instant::now();
    let prepared = match prepare(settings, log, "snapshot", mountpoints) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let mut runner = Runner::new(settings, log, events);
    let deadline = max_frozen.map(|d| d + WATCHDOG_MARGIN);
    let (dog, frozen) = match freeze_everything(settings, log, &mut runner, &prepared, deadline) {
        Ok(x) => x,
        Err(end) => {
            let _ = app::finish(log, "snapshot", start, end);
            return ExitCode::from(EXIT_FREEZE_FAILED);
        }
    };
    let frozen_at = Instant::now();
    let ctx = Context {
        events,
        log,
        output_limit: settings.output_limit,
        state_dir: &settings.state_dir,
        progress: None,
    };
    let mut signal_seen = None;
    let mut stopped = None;
    // COMMAND's end: its status, why it was cut short, and its watch if it
    // still runs (to be ended after the thaw).
    let (code, why, running) = match spawn_command(command) {
        Err(e) => (
            if e == Errno::ENOENT { 127 } else { 126 },
            Some(format!(
                "cannot run {}: {}",
                crate::text::program(command),
                e.desc()
            )),
            None,
        ),
        Ok(pid) => {
            let mut watch = Watch::new(pid, None, &ctx, &mut signal_seen);
            match watch.wait_until(max_frozen.map(|d| frozen_at + d), true) {
                WaitEnd::Ended(outcome) => (command_status(&outcome), None, None),
                WaitEnd::Deadline => (
                    EXIT_FROZEN_TOO_LONG,
                    Some(format!(
                        "frozen window of {} expired; thawed, then ended {}",
                        format_limit(max_frozen),
                        crate::text::program(command)
                    )),
                    Some(watch),
                ),
                WaitEnd::Stopped(sig) => {
                    stopped = Some(sig);
                    (
                        128 + sig as u8,
                        Some(format!(
                            "got {}; thawed, then ended {}",
                            sig.as_str(),
                            crate::text::program(command)
                        )),
                        Some(watch),
                    )
                }
            }
        }
    };
    // Thaw first, in every case: the guarantee comes before the courtesy to
    // a COMMAND still running.
    let failed = thaw_frozen(&mut runner, &frozen, log);
    log.line(&format!(
        "{}; filesystems were frozen for {}",
        why.clone().unwrap_or_else(|| format!(
            "{} exited with status {code}",
            crate::text::program(command)
        )),
        format_duration(frozen_at.elapsed())
    ));
    if let Some(mut watch) = running {
        watch.end_group(settings.kill_grace);
    }
    let end = thaw_hooks(settings, log, events, &failed);
    dog.done();
    let hooks_failed = !matches!(end, End::Done | End::Nothing);
    // The log's result is the snapshot's: COMMAND's failure (or its cut)
    // counts as much as the hooks'; one stderr line says it all.
    let command_failed = (code != 0).then(|| {
        why.unwrap_or_else(|| {
            format!(
                "{} exited with status {code}",
                crate::text::program(command)
            )
        })
    });
    let end = match (end, command_failed, stopped) {
        (end, None, _) => end,
        (End::Interrupted(sig, line), Some(f), _) => End::Interrupted(sig, format!("{f}; {line}")),
        (End::Failed(line), Some(f), Some(sig)) => End::Interrupted(sig, format!("{f}; {line}")),
        (End::Failed(line), Some(f), None) => End::Failed(format!("{f}; {line}")),
        (End::Done | End::Nothing, Some(f), Some(sig)) => End::Interrupted(sig, f),
        (End::Done | End::Nothing, Some(f), None) => End::Failed(f),
    };
    let _ = app::finish(log, "snapshot", start, end);
    if hooks_failed && code == 0 {
        // COMMAND succeeded but the thaw did not: say so in the status.
        return ExitCode::from(app::EXIT_HOOK_FAILED);
    }
    ExitCode::from(code)
}

fn command_status(outcome: &Outcome) -> u8 {
    match outcome {
        Outcome::Exited(c) => *c as u8,
        Outcome::Signaled(s) => 128 + *s as u8,
        _ => 126,
    }
}

/// COMMAND runs in its own process group (so it can be ended whole) with the
/// runner's stdin, stdout, stderr and environment, looked up in `PATH`.
fn spawn_command(command: &[OsString]) -> Result<nix::unistd::Pid, Errno> {
    let argv = crate::phase::process::argv_of(command)?;
    let first = argv.first().ok_or(Errno::EINVAL)?;
    let envp = crate::phase::process::environment_now();
    let stdin = std::io::stdin();
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    sys::spawn(&Exec {
        program: Program::Search(first),
        argv: &argv,
        envp: &envp,
        stdin: stdin.as_fd(),
        stdout: stdout.as_fd(),
        stderr: stderr.as_fd(),
        // The administrator's command: it runs where they typed it.
        dir: None,
    })
    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystems::Filesystems;
    use crate::filesystems::tests::Fake;

    #[test]
    fn thaw_all_covers_every_freezable_filesystem_in_mount_order() {
        let fake = Fake {
            mountinfo: "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
                        2 1 0:20 / /run rw - tmpfs tmpfs rw\n\
                        3 1 7:0 / /a rw - ext4 /dev/loop0 rw\n\
                        4 3 7:1 / /a/b rw - xfs /dev/loop1 rw\n\
                        5 1 7:0 / /bind rw - ext4 /dev/loop0 rw\n"
                .into(),
            ..Fake::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&dir.path().join("log"), false);
        let recorded = vec![PathBuf::from("/a"), PathBuf::from("/gone")];
        assert_eq!(to_thaw(&fake, recorded.clone(), false, &log), recorded);
        let all = to_thaw(&fake, recorded, true, &log);
        assert_eq!(all, ["/gone", "/a/b", "/a", "/"].map(PathBuf::from));
        // thaw_all walks that backwards: parents before children.
        for p in ["/a/b", "/a", "/"] {
            fake.freeze(Path::new(p)).unwrap();
        }
        assert!(freeze::thaw_all(&fake, &all, &log).is_empty());
        let calls = fake.calls.borrow();
        assert_eq!(calls[3..], ["thaw /", "thaw /a", "thaw /a/b", "thaw /gone"]);
    }
}
