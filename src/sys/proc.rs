//! Processes as /proc shows them: one parser of `/proc/PID/stat`, one scan
//! of the process list, and the checks built on them.

use std::fs;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Our own processes' name in /proc/PID/comm (the first 15 bytes of the
/// binary's name).
const OURS: &str = "fsfreeze-hook";

/// What `/proc/PID/stat` says of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub pgrp: i32,
}

impl Stat {
    /// Neither a zombie nor dead.
    pub fn live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// Parses `/proc/PID/stat`: "pid (comm) state ppid pgrp ...". comm may hold
/// spaces and parentheses, so fields are counted from the last ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some(Stat { state, pgrp })
}

pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// A process's name (`/proc/PID/comm`), if it exists.
pub fn comm(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end_matches('\n').to_string())
}

/// Every process id /proc lists now.
pub fn pids() -> Vec<i32> {
    fs::read_dir("/proc").map_or_else(
        |_| Vec::new(),
        |entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        },
    )
}

/// Whether a live process named `name` runs.
pub fn running(name: &str) -> bool {
    pids().into_iter().any(|p| comm(p).as_deref() == Some(name))
}

/// Whether `pid` is a live process of ours (a watchdog, a guard, a keeper),
/// running as this user: a pid recorded earlier may have been reused by
/// anything since, by another user's process of the same name too.
pub fn is_ours(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mine = fs::metadata(format!("/proc/{pid}"))
        .is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw());
    mine && comm(pid).as_deref() == Some(OURS) && stat(pid).is_some_and(|s| s.live())
}

/// Sends `sig` to `pid` if it is still one of ours.
pub fn signal_ours(pid: i32, sig: Signal) {
    if is_ours(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), sig);
    }
}

/// True while a live (not zombie) process is left in process group `pgid`.
/// Zombies are skipped: a grandchild orphaned to an init that does not reap
/// (some container and microVM inits) would otherwise look alive forever.
pub fn group_alive(pgid: Pid) -> bool {
    if matches!(nix::sys::signal::killpg(pgid, None), Err(Errno::ESRCH)) {
        return false;
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return true;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(stat)
        .any(|s| s.pgrp == pgid.as_raw() && s.live())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_alive_tracks_a_real_group() {
        use std::os::unix::process::CommandExt;
        use std::process::Command;
        let mut child = Command::new("sleep")
            .arg("5")
            .process_group(0)
            .spawn()
            .expect("spawn sleep");
        let pgid = Pid::from_raw(child.id() as i32);
        assert!(group_alive(pgid));
        assert!(!is_ours(child.id() as i32), "sleep is not ours");
        assert!(pids().contains(&(child.id() as i32)));
        let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
        child.wait().expect("reap");
        assert!(!group_alive(pgid));
    }

    #[test]
    fn stat_parsing_skips_zombies_and_odd_names() {
        let member = |text: &str| parse_stat(text).is_some_and(|s| s.pgrp == 77 && s.live());
        assert!(member("10 (a) b) S 1 77 77 0"));
        assert!(!member("10 (sleep) Z 1 77 77 0"));
        assert!(!member("10 (sleep) S 1 78 78 0"));
        assert!(parse_stat("garbage").is_none());
        assert_eq!(
            parse_stat("1 (x y) R 0 5 5"),
            Some(Stat {
                state: 'R',
                pgrp: 5
            })
        );
    }

    #[test]
    fn this_test_is_seen_as_it_runs() {
        let me = std::process::id() as i32;
        assert!(stat(me).is_some_and(|s| s.live()));
        assert!(comm(me).is_some());
        // The test binary is not named fsfreeze-hook exactly.
        assert!(!is_ours(me));
    }
}
