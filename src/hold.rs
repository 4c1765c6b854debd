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
use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::app::{EXIT_HOOK_FAILED, EXIT_OK, EXIT_SETUP, fail};
use crate::config::units::format_limit;
use crate::config::{Limit, Settings};
use crate::log::Log;
use crate::phase::process::{Context, WaitEnd, Watch};
use crate::sys::{self, Event, Events, Exec, Program};

/// What a keeper waits for its COMMAND to end after closing its stdin,
/// before ending it with signals.
const RELEASE_GRACE: Duration = Duration::from_secs(5);

/// The options of one `hold`.
pub struct HoldArgs {
    pub name: String,
    pub max_hold: Limit,
    pub ready: String,
    pub ready_timeout: Limit,
    pub release_input: Option<String>,
    pub command: Vec<OsString>,
}

/// A held session, as recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    pub name: String,
    pub keeper: i32,
    pub command: i32,
    pub since_ms: u64,
    pub until_ms: Option<u64>,
}

fn held_dir(settings: &Settings) -> PathBuf {
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
    let Ok(entries) = fs::read_dir(held_dir(settings)) else {
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
        keeper: 0,
        command: 0,
        since_ms: 0,
        until_ms: None,
    };
    for line in text.lines() {
        let (k, v) = line.split_once(' ')?;
        match k {
            "keeper" => s.keeper = v.parse().ok()?,
            "command" => s.command = v.parse().ok()?,
            "since" => s.since_ms = v.parse().ok()?,
            "until" => s.until_ms = v.parse().ok().filter(|&u: &u64| u != 0),
            _ => {}
        }
    }
    (s.keeper > 0).then_some(s)
}

fn record(settings: &Settings, s: &Session) -> std::io::Result<()> {
    let dir = held_dir(settings);
    fs::create_dir_all(&dir)?;
    let text = format!(
        "keeper {}\ncommand {}\nsince {}\nuntil {}\n",
        s.keeper,
        s.command,
        s.since_ms,
        s.until_ms.unwrap_or(0)
    );
    let tmp = dir.join(format!(".{}.tmp", s.name));
    fs::write(&tmp, text)?;
    fs::rename(tmp, dir.join(&s.name))
}

/// `hold`: start the session and return once it is ready.
pub fn hold(settings: &Settings, log: &Log, args: HoldArgs) -> ExitCode {
    if !valid_name(&args.name) {
        return fail(EXIT_SETUP, &not_a_name("hold", &args.name));
    }
    if let Err(e) = crate::phase::journal::ensure_state_dir(&settings.state_dir) {
        return fail(EXIT_SETUP, &format!("hold {}: {e:#}", args.name));
    }
    // A session of that name still held (a thaw never came): replace it.
    if let Some(old) = sessions(settings).into_iter().find(|s| s.name == args.name) {
        if crate::standalone::watchdog::alive(old.keeper) {
            log.warn(&format!(
                "hold {}: replacing the session still held (keeper pid {})",
                args.name, old.keeper
            ));
            end_keeper(old.keeper);
        }
        let _ = fs::remove_file(held_dir(settings).join(&args.name));
    }
    let mut input = Vec::new();
    let stdin = std::io::stdin();
    if !std::io::IsTerminal::is_terminal(&stdin) {
        let _ = stdin.lock().read_to_end(&mut input);
    }
    let (ready_r, ready_w) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_SETUP, &format!("hold {}: {e}", args.name)),
    };
    let name = args.name.clone();
    let started = sys::detach(&[ready_w.as_fd()], |fds| {
        keep(settings, &args, &input, fds[0])
    });
    drop(ready_w);
    if let Err(e) = started {
        return fail(
            EXIT_SETUP,
            &format!("hold {name}: cannot start the keeper: {e}"),
        );
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
                format_limit(args.max_hold)
            ));
            ExitCode::from(EXIT_OK)
        }
        Some(("FAIL", why)) => {
            log.line(&format!("hold {name}: failed: {why}"));
            fail(EXIT_HOOK_FAILED, &format!("hold {name} failed: {why}"))
        }
        _ => fail(
            EXIT_HOOK_FAILED,
            &format!("hold {name}: the keeper ended without a word"),
        ),
    }
}

/// `release`: end the session held as `name`, and wait until it is gone.
pub fn release(settings: &Settings, log: &Log, name: &str) -> ExitCode {
    if !valid_name(name) {
        let line = not_a_name("release", name);
        log.line(&line);
        return fail(EXIT_SETUP, &line);
    }
    let Some(s) = sessions(settings).into_iter().find(|s| s.name == name) else {
        log.line(&format!("release {name}: nothing held under that name"));
        return ExitCode::from(EXIT_OK);
    };
    if crate::standalone::watchdog::alive(s.keeper) {
        end_keeper(s.keeper);
    }
    let _ = fs::remove_file(held_dir(settings).join(name));
    log.line(&format!(
        "release {name}: released (keeper pid {})",
        s.keeper
    ));
    ExitCode::from(EXIT_OK)
}

/// Asks a keeper to release (SIGUSR1) and waits for it to go.
fn end_keeper(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGUSR1);
    let deadline = Instant::now() + RELEASE_GRACE + Duration::from_secs(5);
    while crate::standalone::watchdog::alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
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
    let Ok(events) = Events::take_over(&sys::HELPER_SIGNALS) else {
        return say("FAIL cannot set up signal handling".into());
    };
    let started = match start(args) {
        Ok(s) => s,
        Err(e) => {
            return say(format!(
                "FAIL cannot run {}: {e}",
                crate::text::program(&args.command)
            ));
        }
    };
    let Started { pid, stdin, output } = started;
    let mut stdin = Some(std::fs::File::from(stdin));
    if let Some(w) = stdin.as_mut() {
        let _ = w.write_all(input);
        let _ = w.flush();
    }
    // Until the marker: read COMMAND's output.
    let log = Log::held(&settings.log_file);
    let ctx = Context {
        events: &events,
        log: &log,
        output_limit: None,
        state_dir: &settings.state_dir,
        progress: None,
    };
    let mut seen = Vec::new();
    let ready_by = args.ready_timeout.map(|t| Instant::now() + t);
    let mut signal_seen = None;
    let outcome = loop {
        if seen
            .split(|&b| b == b'\n')
            .any(|l| find(l, args.ready.as_bytes()))
        {
            break Ok(());
        }
        let left = ready_by.map(|d| d.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            break Err(format!(
                "no \"{}\" within {}",
                args.ready,
                format_limit(args.ready_timeout)
            ));
        }
        match events.wait(Some(output.as_fd()), left) {
            Event::Readable => {
                let mut buf = [0u8; 4096];
                match nix::unistd::read(&output, &mut buf) {
                    Ok(0) | Err(_) => {
                        break Err(format!(
                            "{} ended before it was ready",
                            crate::text::program(&args.command)
                        ));
                    }
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            Event::Signal(Signal::SIGCHLD) | Event::Timeout => {
                if !matches!(sys::try_reap(pid), Ok(None)) {
                    drain(&output, &mut seen);
                    break Err(format!(
                        "{} ended before it was ready",
                        crate::text::program(&args.command)
                    ));
                }
            }
            Event::Signal(sig) => break Err(format!("interrupted by {}", sig.as_str())),
        }
    };
    if let Err(why) = outcome {
        drop(stdin.take());
        Watch::new(pid, None, &ctx, &mut signal_seen).end_group(RELEASE_GRACE);
        let output = String::from_utf8_lossy(&seen).trim().replace('\n', " | ");
        let detail = if output.is_empty() {
            String::new()
        } else {
            format!("; it said: {output}")
        };
        return say(format!("FAIL {why}{detail}"));
    }
    let since_ms = crate::phase::journal::now_ms();
    let until_ms = args.max_hold.map(|d| since_ms + d.as_millis() as u64);
    let session = Session {
        name: args.name.clone(),
        keeper: std::process::id() as i32,
        command: pid.as_raw(),
        since_ms,
        until_ms,
    };
    if let Err(e) = record(settings, &session) {
        drop(stdin.take());
        Watch::new(pid, None, &ctx, &mut signal_seen).end_group(RELEASE_GRACE);
        return say(format!("FAIL cannot record the session: {e}"));
    }
    say(format!(
        "OK keeper pid {}, {} pid {}",
        session.keeper,
        crate::text::program(&args.command),
        pid
    ));
    // Hold: until release, the deadline, a stop signal, or COMMAND's end.
    let until = args.max_hold.map(|d| Instant::now() + d);
    let why = loop {
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            break format!(
                "max hold of {} expired before any release",
                format_limit(args.max_hold)
            );
        }
        match events.wait(Some(output.as_fd()), left) {
            Event::Readable => {
                let mut buf = [0u8; 4096];
                if matches!(nix::unistd::read(&output, &mut buf), Ok(0) | Err(_)) {
                    // Output closed: wait for the exit (SIGCHLD) only.
                    if !matches!(sys::try_reap(pid), Ok(None)) {
                        break format!("{} ended by itself", crate::text::program(&args.command));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Event::Signal(Signal::SIGUSR1) => break "released".to_string(),
            Event::Signal(Signal::SIGCHLD) | Event::Timeout => {
                if !matches!(sys::try_reap(pid), Ok(None)) {
                    break format!("{} ended by itself", crate::text::program(&args.command));
                }
            }
            Event::Signal(sig) => break format!("got {}", sig.as_str()),
        }
    };
    // Release: the courteous way first (the release input, then end of
    // input), signals only if COMMAND does not end within the grace.
    if let (Some(w), Some(text)) = (stdin.as_mut(), &args.release_input) {
        let _ = w.write_all(text.as_bytes());
        let _ = w.flush();
    }
    drop(stdin.take());
    let mut watch = Watch::new(pid, None, &ctx, &mut signal_seen);
    let ended = match watch.wait_until(Some(Instant::now() + RELEASE_GRACE), false) {
        WaitEnd::Ended(_) => "it ended".to_string(),
        _ => {
            watch.end_group(RELEASE_GRACE);
            "it was ended with signals".to_string()
        }
    };
    let _ = fs::remove_file(held_dir(settings).join(&args.name));
    // Only now the log: the lock is gone, so nothing waits on us any more
    // (the log may be on a filesystem that is still frozen).
    let mut log = log;
    log.attach(!sys::is_root());
    log.release();
    let held_for = Duration::from_millis(crate::phase::journal::now_ms().saturating_sub(since_ms));
    log.line(&format!(
        "hold {}: {why}; session closed after {} ({ended})",
        args.name,
        crate::config::units::format_duration(held_for)
    ));
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
/// stderr into another we read.
fn start(args: &HoldArgs) -> Result<Started, Errno> {
    let argv = crate::phase::process::argv_of(&args.command)?;
    let first = argv.first().ok_or(Errno::EINVAL)?;
    let envp = crate::phase::process::environment_now();
    let (in_r, in_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let pid = sys::spawn(&Exec {
        program: Program::Search(first),
        argv: &argv,
        envp: &envp,
        stdin: in_r.as_fd(),
        stdout: out_w.as_fd(),
        stderr: out_w.as_fd(),
        // Where the keeper is: `/` (it is detached).
        dir: None,
    })
    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok(Started {
        pid,
        stdin: in_w,
        output: out_r,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Where `hold` and `release` keep state and log when a hook calls them:
/// the runner passes its state dir and log in the environment.
pub fn settings_from_env(mut settings: Settings) -> Settings {
    if let Some(d) = std::env::var_os("FSFREEZE_HOOK_STATE_DIR").filter(|d| !d.is_empty()) {
        settings.state_dir = PathBuf::from(d);
    }
    if let Some(l) = std::env::var_os("FSFREEZE_HOOK_LOG").filter(|l| !l.is_empty()) {
        settings.log_file = PathBuf::from(l);
    }
    settings
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
        let s = parse("db", "keeper 10\ncommand 11\nsince 5\nuntil 0\n").unwrap();
        assert_eq!(
            (s.keeper, s.command, s.since_ms, s.until_ms),
            (10, 11, 5, None)
        );
        assert!(parse("db", "garbage").is_none());
    }
}
