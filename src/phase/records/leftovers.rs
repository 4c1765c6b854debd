//! What a hook leaves behind, and when it is ours to end. A hook that is
//! ended (timeout, a failure of its group, a stop signal) takes with it what
//! it started outside its process group: processes below it in new sessions
//! (`setsid`) and what the runner, as child subreaper, adopted from it (a
//! double fork's orphan); what a hook that ended by itself left running (a
//! lock holder) is left alone. A freeze hook whose runner died (`kill -9`)
//! is recorded, so that the next thaw ends what is left of it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::log::Log;

/// How long to wait for a process to go after SIGKILL. A process stuck in
/// uninterruptible sleep (say, writing to a frozen filesystem) cannot die
/// before that ends; we stop waiting rather than hang the agent.
pub const KILL_WAIT: Duration = Duration::from_secs(5);
use crate::sys::{self, proc::Ident};

/// `<state dir>/running/r<RUNNER PID>`: the freeze hooks of a run while
/// they run, one line `+PID` when each starts and `-PID` when it has ended
/// (a hook leads a session and a process group of its own, both bearing
/// its number: `sys::Group::Session`). The hook itself dies with its runner
/// (see `sys::spawn`), but what it runs in the foreground (a database
/// client taking a lock) would go on and take the lock after the thaw: the
/// next thaw ends such a group first ([`end_left_freeze_hooks`]). One file
/// a run, opened once, appended to, removed when the freeze hooks are over
/// ([`freeze_hooks_over`]): two small writes a hook. (Versions before wrote
/// a file a hook, named by its number and holding it: still read.)
fn running_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("running")
}

thread_local! {
    /// This run's record of running freeze hooks, once its first started.
    static RECORD: RefCell<Option<(std::fs::File, PathBuf)>> = const { RefCell::new(None) };
}

fn open_record(state_dir: &Path) -> Option<(std::fs::File, PathBuf)> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = running_dir(state_dir);
    let path = dir.join(format!("r{}", std::process::id()));
    // A new file (a stale one of a reused pid removed first), not through a
    // link; appended to, so that a line is written whole or not at all.
    let create = || {
        std::fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
    };
    let file = match create() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::phase::records::journal::ensure_state_dir(&dir).ok()?;
            create().ok()?
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&path);
            create().ok()?
        }
        Err(_) => return None,
    };
    Some((file, path))
}

/// Appends `line` to this run's record (opened under `state_dir` first if
/// need be). Returns whether it was written.
fn record_line(state_dir: Option<&Path>, line: &str) -> bool {
    use std::io::Write;
    RECORD.with(|r| {
        let mut r = r.borrow_mut();
        if r.is_none() {
            *r = state_dir.and_then(open_record);
        }
        r.as_mut()
            .is_some_and(|(file, _)| file.write_all(line.as_bytes()).is_ok())
    })
}

/// The freeze hooks of this run are over (each ended, or given up on):
/// their record goes.
pub fn freeze_hooks_over() {
    if let Some((_, path)) = RECORD.with(|r| r.borrow_mut().take()) {
        let _ = std::fs::remove_file(path);
    }
}

/// The hooks a record names as started and not ended: in a file of this
/// version (`+PID`, `-PID` lines), or of versions before (named by the
/// number, holding it).
fn still_running(name: &str, text: &str) -> Vec<i32> {
    if let Ok(pid) = name.parse::<i32>() {
        return text
            .trim()
            .parse::<i32>()
            .ok()
            .filter(|sid| *sid == pid)
            .into_iter()
            .collect();
    }
    let mut open: Vec<i32> = Vec::new();
    for line in text.lines() {
        let (sign, number) = line.split_at(line.len().min(1));
        match (sign, number.parse::<i32>()) {
            ("+", Ok(p)) if p > 1 => open.push(p),
            ("-", Ok(p)) => open.retain(|q| *q != p),
            _ => {}
        }
    }
    open
}

/// Before a thaw's hooks: the process groups of freeze hooks whose runner
/// died while they ran (`kill -9`), if anything of them still runs, are
/// ended (TERM, `grace`, KILL), so that no freeze takes its lock after the
/// thaw released it.
pub fn end_left_freeze_hooks(state_dir: &Path, grace: Duration, log: &Log) {
    let Ok(entries) = std::fs::read_dir(running_dir(state_dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for pgid in still_running(&name.to_string_lossy(), &text) {
            if sys::proc::group_alive_in(pgid, pgid) {
                log.warn(&format!(
                    "the process group {pgid} of a freeze hook whose runner died still runs; ending it before the thaw hooks"
                ));
                end_left_group(pgid, grace);
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// Ends process group `pgid` (its session bears the same number): TERM,
/// `grace`, KILL.
fn end_left_group(pgid: i32, grace: Duration) {
    let group = Pid::from_raw(pgid);
    sys::signal_group(group, Signal::SIGTERM);
    let until = Instant::now() + grace;
    while sys::proc::group_alive_in(pgid, pgid) && Instant::now() < until {
        thread::sleep(Duration::from_millis(10));
    }
    let until = Instant::now() + KILL_WAIT;
    while sys::proc::group_alive_in(pgid, pgid) && Instant::now() < until {
        sys::signal_group(group, Signal::SIGKILL);
        thread::sleep(Duration::from_millis(10));
    }
}

thread_local! {
    /// Hooks running now (their pids).
    static LIVE: RefCell<Vec<i32>> = const { RefCell::new(Vec::new()) };
    /// Processes the runner adopted (as child subreaper) that are left
    /// alone: what a hook that ended by itself left running (a lock holder).
    static LEFT_ON_PURPOSE: RefCell<Vec<Ident>> = const { RefCell::new(Vec::new()) };
}

/// A hook was started (below its own `reaper`, if it has one): it runs; a
/// freeze hook (`state_dir` given) is recorded there until it ends.
/// Returns whether it was.
pub fn started(pid: Pid, reaper: Option<Pid>, state_dir: Option<&Path>) -> bool {
    LIVE.with(|l| {
        l.borrow_mut()
            .extend([Some(pid), reaper].into_iter().flatten().map(Pid::as_raw))
    });
    state_dir.is_some_and(|dir| record_line(Some(dir), &format!("+{pid}\n")))
}

/// A hook ended (`by_itself`: not ended by us): its record goes, and what
/// it left running is left alone from now on (a hook with a reaper of its
/// own: what the reaper handed up to the runner when it exited; hooks
/// running meanwhile have their own reapers).
pub fn ended(pid: Pid, reaper: Option<Pid>, recorded: bool, by_itself: bool) {
    if recorded {
        record_line(None, &format!("-{pid}\n"));
    }
    let gone = [Some(pid), reaper];
    LIVE.with(|l| {
        l.borrow_mut()
            .retain(|p| !gone.contains(&Some(Pid::from_raw(*p))))
    });
    if by_itself {
        let left: Vec<Ident> = adopted().into_iter().map(|(p, _)| Ident::of(p)).collect();
        LEFT_ON_PURPOSE.with(|k| k.borrow_mut().extend(left));
    }
}

/// This process's children now that are neither a running hook nor a
/// helper of ours: what the runner adopted from hooks.
fn adopted() -> Vec<(i32, sys::proc::Stat)> {
    let live = LIVE.with(|l| l.borrow().clone());
    let helpers = sys::detached();
    sys::proc::my_children()
        .into_iter()
        .filter(|p| !live.contains(p) && !helpers.contains(p))
        .filter_map(|p| Some((p, sys::proc::stat(p)?)))
        .filter(|(_, s)| s.live())
        .collect()
}

/// What ending hook `pid` must end besides its process group: every
/// process below it, whatever session it made (`setsid`), and what it
/// orphaned (a double fork's): with a `reaper` of its own, what that
/// adopted, which is below the reaper; else what the runner adopted since
/// the hook started, but nothing a hook that ended by itself left running,
/// and no helper of ours.
pub fn strays_of(pid: Pid, reaper: Option<Pid>) -> Vec<Ident> {
    let hook = Ident::of(pid.as_raw());
    let all = sys::proc::descendants();
    let mut out: Vec<i32> = Vec::new();
    let mut frontier = vec![reaper.unwrap_or(pid).as_raw()];
    while let Some(parent) = frontier.pop() {
        for (p, s) in &all {
            if s.ppid == parent && s.live() && !out.contains(p) {
                out.push(*p);
                frontier.push(*p);
            }
        }
    }
    // (The hook itself, below its reaper, is signalled with its group.)
    out.retain(|p| *p != pid.as_raw());
    if reaper.is_some() {
        return out.into_iter().map(Ident::of).collect();
    }
    let kept = LEFT_ON_PURPOSE.with(|k| k.borrow().clone());
    for (p, s) in adopted() {
        let since = hook.start.is_none_or(|start| s.start >= start);
        if since && !kept.contains(&Ident::of(p)) && !out.contains(&p) {
            out.push(p);
        }
    }
    out.into_iter().map(Ident::of).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_the_hooks_started_and_not_ended() {
        // This version's: one file a run.
        assert_eq!(
            still_running("r812", "+900\n+901\n-900\n+902\n"),
            [901, 902]
        );
        // A line cut short by kill -9, garbage, init: nothing.
        assert_eq!(
            still_running("r812", "+903\n-903\n+9x\n+1\n+"),
            [] as [i32; 0]
        );
        // Versions before: a file a hook, named by it, holding it.
        assert_eq!(still_running("904", "904\n"), [904]);
        assert_eq!(still_running("904", "905\n"), [] as [i32; 0]);
    }
}
