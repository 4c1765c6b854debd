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

/// `<state dir>/running/PGID` (the hook's session in it): a freeze hook
/// while it runs. The hook itself dies with its runner (see `sys::spawn`),
/// but what it runs in the foreground (a database client taking a lock)
/// would go on and take the lock after the thaw: the next thaw ends such a
/// group first ([`end_left_freeze_hooks`]).
fn running_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("running")
}

fn record_running(state_dir: &Path, pid: Pid) -> Option<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = running_dir(state_dir);
    let path = dir.join(pid.as_raw().to_string());
    // A new file (a stale one of a reused pid removed first), not through a
    // link; one write, read back whole or not at all (see below).
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
    };
    let mut file = match create() {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::phase::journal::ensure_state_dir(&dir).ok()?;
            create().ok()?
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&path);
            create().ok()?
        }
        Err(_) => return None,
    };
    // A hook leads a session of its own (`sys::Group::Session`): its
    // session bears its number, as its group does.
    file.write_all(format!("{}\n", pid.as_raw()).as_bytes())
        .ok()?;
    Some(path)
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
        let Some(pgid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let sid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<i32>().ok());
        if let Some(sid) = sid
            && sys::proc::group_alive_in(pgid, sid)
        {
            log.warn(&format!(
                "the process group {pgid} of a freeze hook whose runner died still runs; ending it before the thaw hooks"
            ));
            let group = Pid::from_raw(pgid);
            sys::signal_group(group, Signal::SIGTERM);
            let until = Instant::now() + grace;
            while sys::proc::group_alive_in(pgid, sid) && Instant::now() < until {
                thread::sleep(Duration::from_millis(10));
            }
            let until = Instant::now() + KILL_WAIT;
            while sys::proc::group_alive_in(pgid, sid) && Instant::now() < until {
                sys::signal_group(group, Signal::SIGKILL);
                thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = std::fs::remove_file(&path);
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
/// Returns its record.
pub fn started(pid: Pid, reaper: Option<Pid>, state_dir: Option<&Path>) -> Option<PathBuf> {
    LIVE.with(|l| {
        l.borrow_mut()
            .extend([Some(pid), reaper].into_iter().flatten().map(Pid::as_raw))
    });
    record_running(state_dir?, pid)
}

/// A hook ended (`by_itself`: not ended by us): its record goes, and what
/// it left running is left alone from now on (a hook with a reaper of its
/// own: what the reaper handed up to the runner when it exited; hooks
/// running meanwhile have their own reapers).
pub fn ended(pid: Pid, reaper: Option<Pid>, record: Option<&Path>, by_itself: bool) {
    if let Some(record) = record {
        let _ = std::fs::remove_file(record);
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
