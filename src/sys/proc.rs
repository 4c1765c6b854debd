//! Processes as /proc shows them: one parser of `/proc/PID/stat`, one scan
//! of the process list, and the checks built on them.

use std::fs;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// Our own processes' name in /proc/PID/comm (the first 15 bytes of the
/// binary's name): how a helper recorded by a version that kept no start
/// time is recognised.
const OURS: &str = "fsfreeze-hook";

/// What `/proc/PID/stat` says of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    /// When it started, in clock ticks after boot: with the pid, what tells
    /// this process from a later one that reused the pid.
    pub start: u64,
}

impl Stat {
    /// Neither a zombie nor dead.
    pub fn live(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// Parses `/proc/PID/stat`: "pid (comm) state ppid pgrp ...". comm may hold
/// spaces and parentheses, so fields are counted from the last ')'; the
/// start time is field 22 (proc(5)).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        session: fields.get(3).and_then(|f| f.parse().ok()).unwrap_or(0),
        start: fields.get(19).and_then(|f| f.parse().ok()).unwrap_or(0),
    })
}

pub fn stat(pid: i32) -> Option<Stat> {
    // This process's own through its main thread's entry, which the kernel
    // answers: qemu's user-mode emulation (the arm64 build's tests) answers
    // /proc/self/stat and /proc/<own pid>/stat itself, with a start time of
    // its own making, which then matches no other reader's.
    let path = if pid == std::process::id() as i32 {
        format!("/proc/{pid}/task/{pid}/stat")
    } else {
        format!("/proc/{pid}/stat")
    };
    parse_stat(&fs::read_to_string(path).ok()?)
}

/// A process as a record names it: its pid and, since this version, its
/// start time. Whether it is still ours and alive is judged by both and by
/// its owner, never by the program's name (the binary may be installed as
/// `/etc/qemu/my-hook` or a copy of any name).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ident {
    pub pid: i32,
    /// `None`: recorded by an older version, which kept the pid only.
    pub start: Option<u64>,
}

impl Ident {
    /// The process `pid` as it is now.
    pub fn of(pid: i32) -> Ident {
        Ident {
            pid,
            start: stat(pid).map(|s| s.start),
        }
    }

    /// This process.
    pub fn me() -> Ident {
        Ident::of(std::process::id() as i32)
    }

    /// As records write it: "PID START" (or "PID" alone when the start is
    /// unknown).
    pub fn encode(&self) -> String {
        match self.start {
            Some(start) => format!("{} {start}", self.pid),
            None => self.pid.to_string(),
        }
    }

    /// Reads [`Ident::encode`]'s form; a lone pid is an old record.
    pub fn decode(text: &str) -> Option<Ident> {
        let mut parts = text.split(' ');
        let pid: i32 = parts.next()?.parse().ok().filter(|p| *p > 0)?;
        let start = match parts.next() {
            Some(s) => Some(s.parse().ok()?),
            None => None,
        };
        parts.next().is_none().then_some(Ident { pid, start })
    }
}

impl std::fmt::Display for Ident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.pid)
    }
}

/// When process `pid` started, on the wall clock: the boot time
/// (`/proc/stat`'s btime, whole seconds) plus its start in clock ticks, so
/// within about a second.
pub fn started_at(pid: i32) -> Option<std::time::SystemTime> {
    let btime: u64 = fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok())?;
    // SAFETY: sysconf only reads a constant of the system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|t| *t > 0)?;
    let start = stat(pid)?.start;
    let since_boot = std::time::Duration::from_millis(start * 1000 / ticks);
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(btime) + since_boot)
}

/// A process's name (`/proc/PID/comm`), if it exists.
pub fn comm(pid: i32) -> Option<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(text.trim_end_matches('\n').to_string())
}

/// A process's command line (`/proc/PID/cmdline`), argv[0] first, empty
/// words left out; `None` when it cannot be read.
pub fn cmdline(pid: i32) -> Option<Vec<std::ffi::OsString>> {
    use std::os::unix::ffi::OsStrExt;
    let text = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        text.split(|b| *b == 0)
            .filter(|w| !w.is_empty())
            .map(|w| std::ffi::OsStr::from_bytes(w).to_os_string())
            .collect(),
    )
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

/// Whether process `pid` is root's and runs the program at `exe` (also
/// when an upgrade replaced that file since it started: the kernel then
/// says " (deleted)"). A name proves nothing: any user may call a process
/// anything.
pub fn runs_as_root(pid: i32, exe: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let root = fs::metadata(format!("/proc/{pid}")).is_ok_and(|m| m.uid() == 0);
    let Ok(link) = fs::read_link(format!("/proc/{pid}/exe")) else {
        return false;
    };
    let link = link.as_os_str().as_bytes();
    let link = link.strip_suffix(b" (deleted)").unwrap_or(link);
    root && link == exe.as_os_str().as_bytes()
}

/// Whether a live process of root's runs the program at `exe`.
pub fn running(exe: &std::path::Path) -> bool {
    pids().into_iter().any(|p| runs_as_root(p, exe))
}

/// Whether the recorded process is a live process of ours (a watchdog, a
/// guard, a keeper), running as this user: a pid recorded earlier may have
/// been reused by anything since, by another user's process too. A record
/// with a start time is judged by it; an old one by the name it had then.
pub fn is_ours(who: Ident) -> bool {
    use std::os::unix::fs::MetadataExt;
    let mine = fs::metadata(format!("/proc/{}", who.pid))
        .is_ok_and(|m| m.uid() == nix::unistd::geteuid().as_raw());
    let Some(now) = stat(who.pid).filter(|s| s.live()) else {
        return false;
    };
    let same = match who.start {
        Some(start) => now.start == start,
        None => comm(who.pid).as_deref() == Some(OURS),
    };
    mine && same
}

/// Waits up to `bound` until the recorded process is no longer one of
/// ours (gone, or a zombie); true when it is not. Woken by its exit
/// itself (a pidfd, Linux 5.3), else looks every 2 ms.
pub fn wait_gone(who: Ident, bound: Duration) -> bool {
    use std::os::fd::{FromRawFd, OwnedFd};
    let until = Instant::now() + bound;
    // SAFETY: pidfd_open with plain integer arguments; on success it
    // returns a new descriptor that nothing else owns.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, who.pid, 0) };
    // SAFETY: as above, a fresh descriptor when not negative.
    let pidfd = (raw >= 0).then(|| unsafe { OwnedFd::from_raw_fd(raw as i32) });
    loop {
        // (Checked after the pidfd is open: it is of the recorded process
        // if that one still runs now.)
        if !is_ours(who) {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        match &pidfd {
            Some(fd) => {
                use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                let ms = PollTimeout::try_from(left.as_millis().clamp(1, i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX);
                let _ = poll(
                    &mut [PollFd::new(std::os::fd::AsFd::as_fd(fd), PollFlags::POLLIN)],
                    ms,
                );
            }
            None => std::thread::sleep(left.min(Duration::from_millis(2))),
        }
    }
}

/// Sends `sig` to the recorded process if it is still one of ours.
pub fn signal_ours(who: Ident, sig: Signal) {
    if is_ours(who) {
        let _ = nix::sys::signal::kill(Pid::from_raw(who.pid), sig);
    }
}

/// Every process /proc lists now, with what its stat says.
pub fn all() -> Vec<(i32, Stat)> {
    pids()
        .into_iter()
        .filter_map(|p| Some((p, stat(p)?)))
        .collect()
}

/// This thread's children now (`/proc/self/task/TID/children`, one read;
/// the whole process list where the kernel lacks that file).
pub fn my_children() -> Vec<i32> {
    use std::io::Read;
    let tid = nix::unistd::gettid();
    if let Ok(mut file) = fs::File::open(format!("/proc/self/task/{tid}/children")) {
        // A few numbers: read without looking up a size first (read_to_end
        // asks for one: two more system calls for every hook).
        let mut text = Vec::new();
        let mut buf = [0u8; 512];
        let done = loop {
            match file.read(&mut buf) {
                Ok(0) => break true,
                Ok(n) => text.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break false,
            }
        };
        if done {
            return String::from_utf8_lossy(&text)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
        }
    }
    let me = std::process::id() as i32;
    all()
        .into_iter()
        .filter(|(_, s)| s.ppid == me)
        .map(|(p, _)| p)
        .collect()
}

/// The children of process `pid` now (`/proc/PID/task/TID/children` of
/// each of its threads); `None` where the kernel lacks those files.
fn children_of(pid: i32) -> Option<Vec<i32>> {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let text = fs::read_to_string(task.path().join("children")).ok()?;
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    Some(out)
}

/// Every process below this one now (what it started, and, as a child
/// subreaper, what it adopted), found through the children files alone: no
/// other process's /proc entry is read, which qemu-ga's SELinux domain may
/// not do (each attempt an audited denial). Where the kernel lacks those
/// files, the whole process list's.
pub fn descendants() -> Vec<(i32, Stat)> {
    let me = std::process::id() as i32;
    let mut out: Vec<(i32, Stat)> = Vec::new();
    let mut frontier = vec![me];
    while let Some(parent) = frontier.pop() {
        let Some(children) = children_of(parent) else {
            return all_below(me);
        };
        for p in children {
            if !out.iter().any(|(q, _)| *q == p)
                && let Some(s) = stat(p)
            {
                out.push((p, s));
                frontier.push(p);
            }
        }
    }
    out
}

/// Every process below `top` in the whole process list.
fn all_below(top: i32) -> Vec<(i32, Stat)> {
    let all = all();
    let mut out: Vec<(i32, Stat)> = Vec::new();
    let mut frontier = vec![top];
    while let Some(parent) = frontier.pop() {
        for (p, s) in &all {
            if s.ppid == parent && !out.iter().any(|(q, _)| q == p) {
                out.push((*p, *s));
                frontier.push(*p);
            }
        }
    }
    out
}

/// True while a live process of this user is left in process group `pgid`
/// of session `sid`: a hook's group, recorded by a runner that died. (A pid
/// is not reused while a group or session still bears its number, and a
/// group of another session is another one.)
pub fn group_alive_in(pgid: i32, sid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    // No group of that number at all: nothing to look at.
    if matches!(
        nix::sys::signal::killpg(Pid::from_raw(pgid), None),
        Err(Errno::ESRCH)
    ) {
        return false;
    }
    let me = nix::unistd::geteuid().as_raw();
    all().into_iter().any(|(p, s)| {
        s.pgrp == pgid
            && s.session == sid
            && s.live()
            && fs::metadata(format!("/proc/{p}")).is_ok_and(|m| m.uid() == me)
    })
}

/// True while a live (not zombie) process is left in process group `pgid`,
/// the group of a hook this process started. As their child subreaper,
/// every member is below this process, and only those are looked at (no
/// other process's /proc entry read: qemu-ga's SELinux domain may not);
/// otherwise an orphan went to init, and the whole process list is.
/// Zombies are skipped: a grandchild orphaned to an init that does not reap
/// (some container and microVM inits) would otherwise look alive forever.
pub fn group_alive(pgid: Pid) -> bool {
    if matches!(nix::sys::signal::killpg(pgid, None), Err(Errno::ESRCH)) {
        return false;
    }
    let candidates = match super::is_subreaper() {
        true => descendants(),
        false => all(),
    };
    candidates
        .into_iter()
        .any(|(_, s)| s.pgrp == pgid.as_raw() && s.live())
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
        let pid = child.id() as i32;
        let pgid = Pid::from_raw(pid);
        // Under qemu's user-mode emulation (the arm64 run) spawn may return
        // before the child has set its group (its vfork is a fork; seen
        // failing once under load): the group appears within 5 s at most.
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !group_alive(pgid) && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(group_alive(pgid));
        // Recorded with its start time, a process of this user is ours
        // whatever its name; by the pid alone (an old record) only when
        // named fsfreeze-hook.
        assert!(is_ours(Ident::of(pid)));
        assert!(
            !is_ours(Ident { pid, start: None }),
            "sleep is not named ours"
        );
        let other_start = Ident {
            pid,
            start: Ident::of(pid).start.map(|s| s + 1),
        };
        assert!(
            !is_ours(other_start),
            "a reused pid is not the recorded process"
        );
        assert!(pids().contains(&pid));
        let _ = nix::sys::signal::killpg(pgid, Signal::SIGKILL);
        child.wait().expect("reap");
        assert!(!group_alive(pgid));
        assert!(!is_ours(Ident::of(pid)), "gone");
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
                ppid: 0,
                pgrp: 5,
                session: 5,
                start: 0,
            })
        );
        let full =
            "42 (fsfreeze (x)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let s = parse_stat(full).unwrap();
        assert_eq!((s.ppid, s.pgrp, s.session, s.start), (1, 42, 42, 987654));
    }

    #[test]
    fn idents_round_trip_and_old_records_read() {
        let me = Ident::me();
        assert!(me.start.is_some());
        assert_eq!(Ident::decode(&me.encode()), Some(me));
        assert_eq!(
            Ident::decode("77"),
            Some(Ident {
                pid: 77,
                start: None
            })
        );
        for bad in ["", "x", "0", "-3", "7 x", "7 8 9"] {
            assert_eq!(Ident::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn this_test_is_seen_as_it_runs() {
        let me = std::process::id() as i32;
        assert!(stat(me).is_some_and(|s| s.live()));
        assert!(comm(me).is_some());
        assert!(is_ours(Ident::me()));
        // Recorded by the pid alone, it would have to be named fsfreeze-hook.
        assert!(!is_ours(Ident {
            pid: me,
            start: None
        }));
    }
}
