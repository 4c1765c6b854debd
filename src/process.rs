//! Running one hook: spawn it in its own process group, wait with a deadline,
//! and on expiry end the whole group (TERM, grace, KILL), the way
//! coreutils' timeout does, so no grandchild outlives a timed-out hook.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::sys;

/// `PATH` for hooks when the caller has none (qemu-ga started by a minimal
/// init may not set one).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long to wait for a process to go after SIGKILL. A process stuck in
/// uninterruptible sleep (say, writing to a frozen filesystem) cannot die
/// before that ends; we stop waiting rather than hang the agent.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Which limit cut a hook off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitKind {
    Hook,
    Phase,
}

/// How a hook ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signaled(Signal),
    /// Ran past its limit; `killed` when SIGTERM and the grace were not enough.
    TimedOut {
        limit: Duration,
        kind: LimitKind,
        killed: bool,
    },
    /// The runner itself received `signal`; the hook's group was ended.
    Interrupted(Signal),
    /// Could not be executed at all.
    NotStarted(String),
}

impl Outcome {
    pub fn success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }

    /// The number the stock log line shows: the exit code, or 128+signal as a
    /// shell reports it.
    pub fn status_code(&self) -> i32 {
        match self {
            Outcome::Exited(c) => *c,
            Outcome::Signaled(s) | Outcome::Interrupted(s) => 128 + *s as i32,
            Outcome::TimedOut { killed, .. } => {
                128 + if *killed {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                } as i32
            }
            Outcome::NotStarted(_) => 126,
        }
    }

    /// A phrase for messages: "exited with status 1", "timed out after 60s".
    pub fn describe(&self) -> String {
        use crate::duration::format_duration;
        match self {
            Outcome::Exited(c) => format!("exited with status {c}"),
            Outcome::Signaled(s) => format!("was killed by {}", s.as_str()),
            Outcome::TimedOut {
                limit,
                kind,
                killed,
            } => format!(
                "timed out after {}{}, ended by {}",
                format_duration(*limit),
                match kind {
                    LimitKind::Hook => "",
                    LimitKind::Phase => " (phase_timeout)",
                },
                if *killed { "SIGKILL" } else { "SIGTERM" }
            ),
            Outcome::Interrupted(s) => format!("was stopped because the runner got {}", s.as_str()),
            Outcome::NotStarted(why) => format!("could not be executed: {why}"),
        }
    }
}

/// What a hook is run with.
pub struct Spawn<'a> {
    pub path: &'a Path,
    pub phase: &'a str,
    pub rollback: bool,
    pub log_path: &'a Path,
    /// Makes a handle for the hook's stdout or stderr (called twice a spawn).
    pub output: &'a dyn Fn() -> Stdio,
}

/// A hook that has finished.
#[derive(Clone, Debug)]
pub struct Finished {
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// It had no `#!` line and ran under /bin/sh.
    pub via_sh: bool,
}

impl Finished {
    /// How it ended and after how long, for the one-line summary:
    /// "exited with status 1 after 0.4s", "timed out after 60s, ended by SIGTERM".
    pub fn summary(&self) -> String {
        match self.outcome {
            // The limit already says how long.
            Outcome::TimedOut { .. } => self.outcome.describe(),
            _ => format!(
                "{} after {}",
                self.outcome.describe(),
                crate::duration::format_duration(self.elapsed)
            ),
        }
    }
}

/// Limits for one run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub timeout: Option<(Duration, LimitKind)>,
    pub grace: Duration,
    /// Whether TERM/INT/HUP to the runner stop this hook (not during rollback:
    /// a rollback releases locks and must be allowed to finish).
    pub interruptible: bool,
}

/// Runs one hook to its end. Signals the runner receives meanwhile are
/// recorded in `signal_seen`.
pub fn run(spawn: Spawn<'_>, limits: Limits, signal_seen: &mut Option<Signal>) -> Finished {
    let start = Instant::now();
    let Spawn {
        path,
        phase,
        rollback,
        log_path,
        output,
    } = spawn;
    let build = |program: &Path, via_sh: bool| {
        let mut cmd = Command::new(program);
        if via_sh {
            cmd.arg(path);
        }
        cmd.arg(phase)
            .stdin(Stdio::null())
            .stdout(output())
            .stderr(output())
            .process_group(0)
            .env("FSFREEZE_PHASE", phase)
            .env("FSFREEZE_ROLLBACK", if rollback { "1" } else { "0" })
            .env("FSFREEZE_HOOK_LOG", log_path);
        if std::env::var_os("PATH").is_none() {
            cmd.env("PATH", DEFAULT_PATH);
        }
        sys::unblock_signals_in_child(&mut cmd);
        cmd
    };
    // No #! line: a shell runs the file as a script, as it did under the
    // stock hook's shell. Decided here rather than left to execvp's fallback
    // so that the log can say so.
    let via_sh = needs_shell(path);
    let spawned = if via_sh {
        build(Path::new("/bin/sh"), true).spawn()
    } else {
        build(path, false).spawn()
    };
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Finished {
                outcome: Outcome::NotStarted(e.to_string()),
                elapsed: start.elapsed(),
                via_sh,
            };
        }
    };
    let outcome = supervise(child, start, limits, signal_seen);
    Finished {
        outcome,
        elapsed: start.elapsed(),
        via_sh,
    }
}

/// True for a file that is neither a `#!` script nor an ELF binary. A file
/// we cannot read is left to the kernel.
fn needs_shell(path: &Path) -> bool {
    let mut head = [0u8; 4];
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let n = std::io::Read::read(&mut f, &mut head).unwrap_or(0);
    let head = &head[..n];
    !(head.starts_with(b"#!") || head.starts_with(b"\x7fELF"))
}

fn supervise(
    mut child: Child,
    start: Instant,
    limits: Limits,
    signal_seen: &mut Option<Signal>,
) -> Outcome {
    let pgid = Pid::from_raw(child.id() as i32);
    let deadline = limits.timeout.map(|(d, _)| start + d);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return exit_outcome(status),
            Ok(None) => {}
            Err(e) => return Outcome::NotStarted(format!("cannot wait: {e}")),
        }
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining == Some(Duration::ZERO) {
            let (limit, kind) = limits.timeout.expect("deadline implies a limit");
            let killed = end_group(&mut child, pgid, limits.grace, signal_seen);
            return Outcome::TimedOut {
                limit,
                kind,
                killed,
            };
        }
        match sys::wait_for_signal(remaining) {
            None | Some(Signal::SIGCHLD) => {}
            Some(sig) => {
                *signal_seen = Some(sig);
                if limits.interruptible {
                    end_group(&mut child, pgid, limits.grace, signal_seen);
                    return Outcome::Interrupted(sig);
                }
            }
        }
    }
}

fn exit_outcome(status: ExitStatus) -> Outcome {
    match (status.code(), status.signal()) {
        (Some(code), _) => Outcome::Exited(code),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(s) => Outcome::Signaled(s),
            Err(_) => Outcome::Exited(128 + sig),
        },
        (None, None) => Outcome::Exited(-1),
    }
}

/// SIGTERM to the group, up to `grace` for every member to go, then SIGKILL.
/// Returns whether SIGKILL was needed. The hook itself is reaped here.
fn end_group(
    child: &mut Child,
    pgid: Pid,
    grace: Duration,
    signal_seen: &mut Option<Signal>,
) -> bool {
    sys::signal_group(pgid, Signal::SIGTERM);
    let grace_end = Instant::now() + grace;
    if wait_group_gone(child, pgid, grace_end, signal_seen) {
        return false;
    }
    sys::signal_group(pgid, Signal::SIGKILL);
    let kill_end = Instant::now() + KILL_WAIT;
    while !wait_group_gone(
        child,
        pgid,
        Instant::now() + Duration::from_millis(50),
        signal_seen,
    ) && Instant::now() < kill_end
    {
        // Members forked between the first SIGKILL and now.
        sys::signal_group(pgid, Signal::SIGKILL);
    }
    true
}

/// Waits until the hook is reaped and its group is empty, or `until`.
fn wait_group_gone(
    child: &mut Child,
    pgid: Pid,
    until: Instant,
    signal_seen: &mut Option<Signal>,
) -> bool {
    let mut reaped = false;
    loop {
        if !reaped {
            reaped = matches!(child.try_wait(), Ok(Some(_)) | Err(_));
        }
        // Grandchildren are not ours to reap; init does that, so poll.
        if reaped && !sys::group_alive(pgid) {
            return true;
        }
        let now = Instant::now();
        if now >= until {
            return false;
        }
        let step = (until - now).min(Duration::from_millis(10));
        if reaped {
            thread::sleep(step);
        } else if let Some(sig) = sys::wait_for_signal(Some(step))
            && sig != Signal::SIGCHLD
        {
            *signal_seen = Some(sig);
        }
    }
}
