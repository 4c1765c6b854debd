//! `hold` and `release`: keep a client session (a database lock) alive from
//! the freeze hook until the thaw hook, without hanging the agent.
//!
//! `hold NAME -- COMMAND` starts COMMAND with a pipe to its stdin, writes to it
//! what `hold` reads on its own stdin (the statements that take the lock),
//! and waits until COMMAND prints a line containing the ready marker. Then it
//! returns, while a keeper process (its own session, holding no descriptor of
//! the hook's or qemu-ga's) keeps COMMAND's stdin open, and with it the
//! session and its lock. `release NAME` (from the thaw hook) makes the keeper
//! close that stdin (after writing `--release-input`, if given), so COMMAND
//! ends its session; `--max-hold` does the same on its own if no thaw comes.
//! A held session is a file `<state dir>/held/NAME`, which `status` shows.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::units::format_time_limit;
use crate::config::{Settings, TimeLimit};
use crate::exit::Exit;
use crate::log::Log;
use crate::phase::engine::process::{Context, WaitEnd, Watch, spawn_command};
use crate::sys::{self, Group, Waiter, Wake};

/// What a keeper waits for its COMMAND to end after closing its stdin,
/// before ending it with signals.
const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// The options of one `hold`.
pub struct HoldArgs {
    pub name: String,
    pub max_hold: TimeLimit,
    pub ready: String,
    pub ready_timeout: TimeLimit,
    pub release_input: Option<String>,
    pub command: Vec<OsString>,
}

/// A held session, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    pub keeper: sys::proc::Ident,
    pub command: i32,
    pub since_ms: u64,
    pub until_ms: Option<u64>,
}

fn sessions_dir(settings: &Settings) -> PathBuf {
    settings.state_dir.join("held")
}

/// What `hold` and `release` say of a name that is not one (escaped: it
/// may hold anything).
fn not_a_name(command: &str, name: &str) -> String {
    format!(
        "{command}: \"{}\" is not a name (letters, digits, - _ .)",
        crate::text::escape(std::ffi::OsStr::new(name))
    )
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && !name.starts_with('.')
}

/// Every session recorded under the state dir.
pub fn sessions(settings: &Settings) -> Vec<Session> {
    let Ok(entries) = fs::read_dir(sessions_dir(settings)) else {
        return Vec::new();
    };
    let mut out: Vec<Session> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            parse(
                &e.file_name().to_string_lossy(),
                &fs::read_to_string(e.path()).ok()?,
            )
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

fn parse(name: &str, text: &str) -> Option<Session> {
    let mut s = Session {
        name: name.to_string(),
        keeper: sys::proc::Ident {
            pid: 0,
            start: None,
        },
        command: 0,
        since_ms: 0,
        until_ms: None,
    };
    for line in text.lines() {
        let (k, v) = line.split_once(' ')?;
        match k {
            "keeper" => s.keeper = sys::proc::Ident::decode(v)?,
            "command" => s.command = v.parse().ok()?,
            "since" => s.since_ms = v.parse().ok()?,
            "until" => s.until_ms = v.parse().ok().filter(|&u: &u64| u != 0),
            _ => {}
        }
    }
    (s.keeper.pid > 0).then_some(s)
}

fn record(settings: &Settings, s: &Session) -> std::io::Result<()> {
    let dir = sessions_dir(settings);
    fs::create_dir_all(&dir)?;
    let text = format!(
        "keeper {}\ncommand {}\nsince {}\nuntil {}\n",
        s.keeper.encode(),
        s.command,
        s.since_ms,
        s.until_ms.unwrap_or(0)
    );
    let tmp = dir.join(format!(".{}.tmp", s.name));
    sys::paths::replace_file(&dir.join(&s.name), &tmp, text.as_bytes(), 0o600, false)
}

/// `hold`: start the session and return once it is ready.
pub fn hold(settings: &Settings, log: &Log, args: HoldArgs) -> Exit {
    if !valid_name(&args.name) {
        return Exit::Setup(not_a_name("hold", &args.name));
    }
    if let Err(e) = crate::phase::records::journal::ensure_state_dir(&settings.state_dir)
        .and_then(|()| crate::phase::records::journal::ensure_state_dir(&sessions_dir(settings)))
    {
        return Exit::Setup(format!("hold {}: {e:#}", args.name));
    }
    // A session of that name still held (a thaw never came): replace it.
    if let Some(old) = sessions(settings).into_iter().find(|s| s.name == args.name) {
        if sys::proc::is_ours(old.keeper) {
            log.warn(&format!(
                "hold {}: replacing the session still held (keeper pid {})",
                args.name, old.keeper
            ));
            end_keeper(old.keeper);
        }
        let _ = fs::remove_file(sessions_dir(settings).join(&args.name));
    }
    let mut input = Vec::new();
    let stdin = std::io::stdin();
    if !std::io::IsTerminal::is_terminal(&stdin) {
        let _ = stdin.lock().read_to_end(&mut input);
    }
    let (ready_r, ready_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return Exit::Setup(format!("hold {}: {e}", args.name)),
    };
    let name = args.name.clone();
    let started = sys::detach(&[ready_w.as_fd()], |fds| {
        keep(settings, &args, &input, fds[0])
    });
    drop(ready_w);
    if let Err(e) = started {
        return Exit::Setup(format!("hold {name}: cannot start the keeper: {e}"));
    }
    let mut report = String::new();
    let _ = std::io::BufRead::read_line(
        &mut std::io::BufReader::new(std::fs::File::from(ready_r)),
        &mut report,
    );
    match report.trim_end().split_once(' ') {
        Some(("OK", pids)) => {
            log.line(&format!(
                "hold {name}: session ready ({pids}); held until `release {name}` or for {} at most",
                format_time_limit(args.max_hold)
            ));
            Exit::Ok
        }
        Some(("FAIL", why)) => {
            log.line(&format!("hold {name}: failed: {why}"));
            Exit::Failed(format!("hold {name} failed: {why}"))
        }
        _ => Exit::Failed(format!("hold {name}: the keeper ended without a word")),
    }
}

/// `release`: end the session held as `name`, and wait until it is gone.
pub fn release(settings: &Settings, log: &Log, name: &str) -> Exit {
    if !valid_name(name) {
        let line = not_a_name("release", name);
        log.line(&line);
        return Exit::Setup(line);
    }
    // The recorded session, and a keeper that holds the name but has not
    // recorded it yet (its COMMAND not ready): every session of the name.
    let recorded = sessions(settings).into_iter().find(|s| s.name == name);
    let mut keepers: Vec<sys::proc::Ident> = recorded.iter().map(|s| s.keeper).collect();
    if let Some(starting) = lock_holder(settings, name)
        && !keepers.contains(&starting)
    {
        keepers.push(starting);
    }
    keepers.retain(|k| sys::proc::is_ours(*k));
    if recorded.is_none() && keepers.is_empty() {
        log.line(&format!("release {name}: nothing held under that name"));
        return Exit::Ok;
    }
    for keeper in &keepers {
        end_keeper(*keeper);
    }
    let _ = fs::remove_file(sessions_dir(settings).join(name));
    let pids: Vec<String> = keepers.iter().map(|k| k.pid.to_string()).collect();
    log.line(&format!(
        "release {name}: released (keeper pid {})",
        if pids.is_empty() {
            recorded.map_or_else(String::new, |s| format!("{}, gone already", s.keeper))
        } else {
            pids.join(", ")
        }
    ));
    Exit::Ok
}

/// `<state dir>/held/.NAME.lock`: a keeper holds an exclusive flock on it
/// for its whole life, with its pid and start time in it, so that one name
/// has one session at a time.
fn lock_path(settings: &Settings, name: &str) -> PathBuf {
    sessions_dir(settings).join(format!(".{name}.lock"))
}

/// The keeper that wrote itself into the name's lock file, if any.
fn lock_holder(settings: &Settings, name: &str) -> Option<sys::proc::Ident> {
    let text = fs::read_to_string(lock_path(settings, name)).ok()?;
    sys::proc::Ident::decode(text.trim_end())
}

/// Takes the name's lock for this keeper and writes who holds it; `Err`:
/// the line for `hold` (another keeper holds it).
fn take_name(settings: &Settings, name: &str) -> Result<NameLock, String> {
    // The keeper that held it removes the file before it lets go; a lock
    // taken on a file no longer at the path is taken again on the new one.
    for _ in 0..100 {
        let lock = lock_name_file(settings, name)?;
        if same_file(&lock, &lock_path(settings, name)) {
            return Ok(NameLock {
                path: lock_path(settings, name),
                _lock: lock,
            });
        }
    }
    Err(format!(
        "cannot lock the name {name}: its lock file keeps changing"
    ))
}

/// A held name; its file is removed before the lock goes.
struct NameLock {
    path: PathBuf,
    _lock: Flock<fs::File>,
}

impl Drop for NameLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn same_file(file: &fs::File, path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn lock_name_file(settings: &Settings, name: &str) -> Result<Flock<fs::File>, String> {
    let path = lock_path(settings, name);
    let file = sys::paths::open_lock_file(&path)
        .map_err(|e| format!("cannot open {}: {e}", crate::text::escape_path(&path)))?;
    let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((_, Errno::EWOULDBLOCK)) => {
            return Err(format!(
                "another `hold {name}` is under way{}; release it first",
                lock_holder(settings, name)
                    .map(|k| format!(" (keeper pid {k})"))
                    .unwrap_or_default()
            ));
        }
        Err((_, e)) => {
            return Err(format!(
                "cannot lock {}: {e}",
                crate::text::escape_path(&path)
            ));
        }
    };
    let me = format!("{}\n", sys::proc::Ident::me().encode());
    let written = lock
        .set_len(0)
        .and_then(|()| std::io::Seek::rewind(&mut *lock))
        .and_then(|()| lock.write_all(me.as_bytes()));
    written.map_err(|e| format!("cannot write {}: {e}", crate::text::escape_path(&path)))?;
    Ok(lock)
}

/// Asks a keeper to release (SIGUSR1) and waits for it to go.
fn end_keeper(pid: sys::proc::Ident) {
    sys::proc::signal_ours(pid, Signal::SIGUSR1);
    sys::proc::wait_gone(pid, RELEASE_GRACE + Duration::from_secs(5));
}

/// The keeper, in its detached process: start COMMAND, feed it, report
/// readiness, hold, release.
fn keep(settings: &Settings, args: &HoldArgs, input: &[u8], ready: BorrowedFd<'_>) {
    // One line; the pipe stays open (it is one of the keeper's own
    // descriptors), so `hold` reads up to the newline, not to EOF.
    let say = |text: String| {
        let line = format!("{}\n", text.replace('\n', " "));
        let _ = nix::unistd::write(ready, line.as_bytes());
    };
    let program = crate::text::program(&args.command);
    let Ok(waiter) = Waiter::take_over() else {
        return say("FAIL cannot set up signal handling".into());
    };
    // Held until this keeper exits: one session per name.
    let _name = match take_name(settings, &args.name) {
        Ok(lock) => lock,
        Err(why) => return say(format!("FAIL {why}")),
    };
    let Started { pid, stdin, output } = match start(args) {
        Ok(s) => s,
        Err(e) => return say(format!("FAIL cannot run {program}: {e}")),
    };
    let mut stdin = std::fs::File::from(stdin);
    let _ = stdin.write_all(input);
    let _ = stdin.flush();
    // Styled as `hold`'s own lines are: a JSON log gets JSON lines only.
    let log = Log::of(settings);
    let ctx = Context {
        waiter: &waiter,
        log: &log,
        output_limit: None,
        state_dir: &settings.state_dir,
        config: settings.config_file.as_deref(),
        progress: None,
    };
    let end_now = |stdin: std::fs::File| {
        drop(stdin);
        Watch::new(pid, None, &ctx, &mut None).end_group(RELEASE_GRACE);
    };
    let mut seen = Vec::new();
    if let Err(why) = wait_ready(args, &waiter, pid, &output, &mut seen) {
        end_now(stdin);
        let output = String::from_utf8_lossy(&seen).trim().replace('\n', " | ");
        let detail = if output.is_empty() {
            String::new()
        } else {
            format!("; it said: {output}")
        };
        return say(format!("FAIL {why}{detail}"));
    }
    let since_ms = crate::phase::records::journal::now_ms();
    let session = Session {
        name: args.name.clone(),
        keeper: sys::proc::Ident::me(),
        command: pid.as_raw(),
        since_ms,
        until_ms: args.max_hold.map(|d| since_ms + d.as_millis() as u64),
    };
    if let Err(e) = record(settings, &session) {
        end_now(stdin);
        return say(format!("FAIL cannot record the session: {e}"));
    }
    say(format!(
        "OK keeper pid {}, {program} pid {pid}",
        session.keeper
    ));
    let why = hold_until_released(args, &waiter, pid, &output);
    let ended = close_session(args, stdin, pid, &ctx);
    let _ = fs::remove_file(sessions_dir(settings).join(&args.name));
    // Only now the log: the lock is gone, so nothing waits on us any more
    // (the log may be on a filesystem that is still frozen).
    let mut log = log;
    log.attach(!sys::is_root());
    log.write_deferred();
    let held_for =
        Duration::from_millis(crate::phase::records::journal::now_ms().saturating_sub(since_ms));
    log.line(&format!(
        "hold {}: {why}; session closed after {} ({ended})",
        args.name,
        crate::config::units::format_duration(held_for)
    ));
}

/// Reads COMMAND's output into `seen` until a line holds the ready marker;
/// `Err` says why it never came.
fn wait_ready(
    args: &HoldArgs,
    waiter: &Waiter,
    pid: Pid,
    output: &OwnedFd,
    seen: &mut Vec<u8>,
) -> Result<(), String> {
    let ended = || {
        format!(
            "{} ended before it was ready",
            crate::text::program(&args.command)
        )
    };
    let ready_by = args.ready_timeout.map(|t| Instant::now() + t);
    loop {
        if seen
            .split(|&b| b == b'\n')
            .any(|l| crate::text::contains(l, args.ready.as_bytes()))
        {
            return Ok(());
        }
        let left = ready_by.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return Err(format!(
                "no \"{}\" within {}",
                args.ready,
                format_time_limit(args.ready_timeout)
            ));
        }
        match waiter.wait(Some(output.as_fd()), left) {
            Wake::Readable => {
                let mut buf = [0u8; 4096];
                match nix::unistd::read(output, &mut buf) {
                    Ok(0) | Err(_) => return Err(ended()),
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            Wake::Signal(Signal::SIGCHLD) | Wake::Timeout => {
                if !matches!(sys::try_reap(pid), Ok(None)) {
                    drain(output, seen);
                    return Err(ended());
                }
            }
            Wake::Signal(sig) => return Err(format!("interrupted by {}", sig.as_str())),
        }
    }
}

/// Holds the session until `release` (SIGUSR1), `--max-hold`, a stop signal
/// or COMMAND's own end; returns which.
fn hold_until_released(args: &HoldArgs, waiter: &Waiter, pid: Pid, output: &OwnedFd) -> String {
    let ended = || format!("{} ended by itself", crate::text::program(&args.command));
    let until = args.max_hold.map(|d| Instant::now() + d);
    loop {
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return format!(
                "max hold of {} expired before any release",
                format_time_limit(args.max_hold)
            );
        }
        match waiter.wait(Some(output.as_fd()), left) {
            Wake::Readable => {
                let mut buf = [0u8; 4096];
                if matches!(nix::unistd::read(output, &mut buf), Ok(0) | Err(_)) {
                    // Output closed: wait for the exit (SIGCHLD) only.
                    if !matches!(sys::try_reap(pid), Ok(None)) {
                        return ended();
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Wake::Signal(Signal::SIGUSR1) => return "released".to_string(),
            Wake::Signal(Signal::SIGCHLD) | Wake::Timeout => {
                if !matches!(sys::try_reap(pid), Ok(None)) {
                    return ended();
                }
            }
            Wake::Signal(sig) => return format!("got {}", sig.as_str()),
        }
    }
}

/// Ends the session the courteous way first (the release input, then end
/// of input), with signals only if COMMAND does not end within the grace.
fn close_session(args: &HoldArgs, mut stdin: std::fs::File, pid: Pid, ctx: &Context<'_>) -> String {
    if let Some(text) = &args.release_input {
        let _ = stdin.write_all(text.as_bytes());
        let _ = stdin.flush();
    }
    drop(stdin);
    let mut signal_seen = None;
    let mut watch = Watch::new(pid, None, ctx, &mut signal_seen);
    match watch.wait_until(Some(Instant::now() + RELEASE_GRACE), false) {
        WaitEnd::Ended(_) => "it ended".to_string(),
        _ => {
            watch.end_group(RELEASE_GRACE);
            "it was ended with signals".to_string()
        }
    }
}

/// What an ended COMMAND left in its output pipe (without waiting for
/// processes it may have left holding it).
fn drain(output: &OwnedFd, seen: &mut Vec<u8>) {
    let _ = nix::fcntl::fcntl(output, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut buf = [0u8; 4096];
    while let Ok(n) = nix::unistd::read(output, &mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
    }
}

struct Started {
    pid: Pid,
    stdin: OwnedFd,
    output: OwnedFd,
}

/// COMMAND in its own process group: stdin from a pipe we keep, stdout and
/// stderr into another we read; it runs where the keeper is (`/`).
fn start(args: &HoldArgs) -> Result<Started, Errno> {
    let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let pid = spawn_command(
        &args.command,
        in_r.as_fd(),
        out_w.as_fd(),
        out_w.as_fd(),
        Group::Session,
    )?;
    Ok(Started {
        pid,
        stdin: in_w,
        output: out_r,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_records() {
        assert!(valid_name("mariadb") && valid_name("pg-15_main.1"));
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        let s = parse("db", "keeper 10 99\ncommand 11\nsince 5\nuntil 0\n").unwrap();
        let keeper = sys::proc::Ident {
            pid: 10,
            start: Some(99),
        };
        assert_eq!(
            (s.keeper, s.command, s.since_ms, s.until_ms),
            (keeper, 11, 5, None)
        );
        // An older version's record: the pid alone.
        let old = parse("db", "keeper 10\ncommand 11\nsince 5\nuntil 0\n").unwrap();
        assert_eq!(old.keeper.start, None);
        assert!(parse("db", "garbage").is_none());
    }
}
