//! Running one hook: start the checked open file in its own process group,
//! wait with a deadline while its output flows into the log, and on expiry
//! end the whole group (TERM, grace, KILL), the way coreutils' timeout does,
//! so no grandchild outlives a timed-out hook.

use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::log::Log;
use crate::phase::engine::hookfile::{Kind, Opened};
use crate::phase::engine::output::Capture;
use crate::phase::records::leftovers::{self, KILL_WAIT};
use crate::sys::{self, Exec, Exit, Group, Program, Waiter, Wake};

/// `PATH` for hooks when the caller has none (qemu-ga started by a minimal
/// init may not set one).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Which limit cut a hook off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeoutSource {
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
        kind: TimeoutSource,
        killed: bool,
    },
    /// The runner itself received `signal`; the hook's group was ended.
    Interrupted(Signal),
    /// Another hook of its parallel group failed: this one's group was
    /// ended (`killed`: SIGTERM and the grace were not enough).
    Cancelled {
        killed: bool,
    },
    /// Checked and not run (untrusted, missing interpreter, ...): why.
    Refused(String),
    /// Could not be executed at all.
    NotStarted(String),
}

impl Outcome {
    pub fn success(&self) -> bool {
        matches!(self, Outcome::Exited(0))
    }

    /// The program ran to its own end (any status): not cut off, killed,
    /// refused or never started.
    pub fn ran_to_end(&self) -> bool {
        matches!(self, Outcome::Exited(_))
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
            Outcome::Cancelled { killed } => {
                128 + if *killed {
                    Signal::SIGKILL
                } else {
                    Signal::SIGTERM
                } as i32
            }
            Outcome::Refused(_) | Outcome::NotStarted(_) => 126,
        }
    }

    /// A phrase for messages: "exited with status 1", "timed out after 60s".
    pub fn describe(&self) -> String {
        use crate::config::units::format_duration;
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
                    TimeoutSource::Hook => "",
                    TimeoutSource::Phase => " (phase_timeout)",
                },
                if *killed { "SIGKILL" } else { "SIGTERM" }
            ),
            Outcome::Interrupted(s) => format!("was stopped because the runner got {}", s.as_str()),
            Outcome::Cancelled { killed } => format!(
                "was ended by {} when another hook of its group failed",
                if *killed { "SIGKILL" } else { "SIGTERM" }
            ),
            Outcome::Refused(why) => format!("was not run: it {why}"),
            Outcome::NotStarted(why) => format!("could not be executed: {why}"),
        }
    }
}

/// What a hook is run with.
pub struct Spawn<'a> {
    pub path: &'a Path,
    pub opened: &'a Opened,
    pub phase: &'a str,
    pub rollback: bool,
    /// One of hooks that run at once: its output lines get `[NAME] ` in
    /// front, and it runs below a reaper of its own
    /// ([`sys::spawn_reaped`]), so that what it orphans is known to be its.
    pub at_once: bool,
}

/// Where the runner's side of a hook run lives.
pub struct Context<'a> {
    pub waiter: &'a Waiter,
    pub log: &'a Log,
    pub output_limit: Option<u64>,
    /// The state dir, passed to hooks (for `hold` and `release`).
    pub state_dir: &'a Path,
    /// The config file this run read, passed to hooks, so that the `hold`
    /// and `release` they run read it too (log format and target).
    pub config: Option<&'a Path>,
    /// Told, about once a second after the first, how long the child has
    /// been running (`rehearse` shows it).
    pub progress: Option<&'a dyn Fn(Duration)>,
}

/// A hook that has finished.
#[derive(Clone, Debug)]
pub struct Finished {
    pub outcome: Outcome,
    pub elapsed: Duration,
    /// Bytes the hook wrote to stdout and stderr (kept or not).
    pub output_bytes: u64,
    /// The last line it printed that was not blank, escaped and bounded:
    /// a failed hook's reason, carried by the one error line.
    pub last_line: Option<String>,
}

impl Finished {
    pub fn not_started(why: String) -> Finished {
        Finished {
            outcome: Outcome::NotStarted(why),
            elapsed: Duration::ZERO,
            output_bytes: 0,
            last_line: None,
        }
    }

    pub fn refused(why: String) -> Finished {
        Finished {
            outcome: Outcome::Refused(why),
            elapsed: Duration::ZERO,
            output_bytes: 0,
            last_line: None,
        }
    }

    /// [`Finished::summary`], and for a failure what the hook printed last
    /// (`: "cannot reach the database"`): qemu-ga 9.1+ hands the one error
    /// line to the hypervisor's task log.
    pub fn reason(&self) -> String {
        match (&self.last_line, self.outcome.success()) {
            (Some(last), false) => format!("{}: \"{last}\"", self.summary()),
            _ => self.summary(),
        }
    }

    /// How it ended and after how long, for the one-line summary:
    /// "exited with status 1 after 0.4s", "timed out after 60s, ended by SIGTERM".
    pub fn summary(&self) -> String {
        match self.outcome {
            // The limit already says how long; a refused hook never ran.
            Outcome::TimedOut { .. } | Outcome::Refused(_) => self.outcome.describe(),
            _ => format!(
                "{} after {}",
                self.outcome.describe(),
                crate::config::units::format_duration(self.elapsed)
            ),
        }
    }
}

/// Bounds for one run.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub timeout: Option<(Duration, TimeoutSource)>,
    pub grace: Duration,
    /// Whether TERM/INT/HUP to the runner stop this hook (not during rollback:
    /// a rollback releases locks and must be allowed to finish).
    pub interruptible: bool,
}

/// Runs one hook to its end. Signals the runner receives meanwhile are
/// recorded in `signal_seen`.
pub fn run(
    spawn: Spawn<'_>,
    limits: Bounds,
    ctx: &Context<'_>,
    signal_seen: &mut Option<Signal>,
) -> Finished {
    let mut started = match start(&spawn, ctx) {
        Ok(s) => s,
        Err(not_run) => return not_run,
    };
    let at = started.at;
    let outcome = Watch::of(&mut started, ctx, signal_seen).supervise(at, limits);
    started.finish(outcome, ctx, spawn.path)
}

/// A hook's process group, started, with its output.
pub struct Started {
    pub pid: Pid,
    /// Its own reaper, when it runs at once with others.
    reaper: Option<sys::Reaped>,
    pub capture: Capture,
    pub at: Instant,
    /// A freeze hook, recorded while it runs (see [`leftovers`]).
    recorded: bool,
}

impl Started {
    /// After its end: what is left of its output, and how it went.
    pub fn finish(self, outcome: Outcome, ctx: &Context<'_>, path: &Path) -> Finished {
        // Ended by itself, what it left (a lock holder) stays.
        let by_itself = matches!(outcome, Outcome::Exited(_) | Outcome::Signaled(_));
        let reaper = self.reaper.as_ref().map(|r| r.reaper);
        leftovers::ended(self.pid, reaper, self.recorded, by_itself);
        let (output_bytes, last_line) = self
            .capture
            .finish(ctx.log, &crate::text::escape_path(path));
        Finished {
            outcome,
            elapsed: self.at.elapsed(),
            output_bytes,
            last_line,
        }
    }

    /// Reaps it if it has ended.
    pub fn try_reap(&self) -> std::io::Result<Option<Exit>> {
        sys::try_reap_below(self.pid, self.reaper.as_ref())
    }

    /// What ending it must end besides its process group
    /// ([`leftovers::strays_of`]).
    pub fn strays(&self) -> Vec<sys::proc::Ident> {
        leftovers::strays_of(self.pid, self.reaper.as_ref().map(|r| r.reaper))
    }
}

/// Starts one hook as its own process group, its output into a capture
/// (lines prefixed with `prefix`, for hooks that run at once); `Err`: how
/// it ended without running.
pub fn start(spawn: &Spawn<'_>, ctx: &Context<'_>) -> Result<Started, Finished> {
    let start = Instant::now();
    let not_started = |why: String| Finished {
        outcome: Outcome::NotStarted(why),
        elapsed: start.elapsed(),
        output_bytes: 0,
        last_line: None,
    };
    let label = crate::text::escape(spawn.path.file_name().unwrap_or(spawn.path.as_os_str()));
    let (mut capture, write) = match Capture::new(ctx.output_limit, label.clone()) {
        Ok(c) => c,
        Err(e) => return Err(not_started(format!("no output pipe: {e}"))),
    };
    if spawn.at_once {
        capture.prefix_lines(&label);
    }
    let devnull = match dev_null() {
        Ok(f) => f,
        Err(e) => return Err(not_started(format!("/dev/null: {e}"))),
    };
    // The hook sees what the stock script gave it: $0 is its path in the
    // hooks dir (argv[0] of an ELF program; for a script, the name the
    // kernel hands its interpreter), and nothing open but 0-2. An ELF program
    // is executed through the checked descriptor itself. A script's
    // interpreter opens the script by that path, so the path is compared with
    // the checked file just before the exec (`still_at` below); a file
    // without #! goes to /bin/sh the same way, as a shell's exec does it.
    let shell;
    let path = c_string(spawn.path.as_os_str());
    let phase = OsStr::new(spawn.phase);
    let (program, argv) = match (spawn.opened.kind, &path) {
        (_, None) => return Err(not_started("its path holds a NUL byte".into())),
        (Kind::Elf, Some(_)) => (
            Program::Open(spawn.opened.file.as_fd()),
            vec![spawn.path.as_os_str(), phase],
        ),
        (Kind::Script, Some(path)) => (Program::Path(path), vec![spawn.path.as_os_str(), phase]),
        (Kind::Shell, Some(_)) => {
            shell = match File::open("/bin/sh") {
                Ok(f) => f,
                Err(e) => return Err(not_started(format!("/bin/sh: {e}"))),
            };
            (
                Program::Open(shell.as_fd()),
                vec![OsStr::new("/bin/sh"), spawn.path.as_os_str(), phase],
            )
        }
    };
    let argv: Vec<CString> = argv.into_iter().filter_map(c_string).collect();
    let envp = environment(spawn, ctx);
    let exec = Exec {
        program,
        argv: &argv,
        envp: &envp,
        stdin: devnull,
        stdout: write.as_fd(),
        stderr: write.as_fd(),
        // In `/`, as qemu-ga runs its hook: a hook does not depend on where
        // an administrator typed `rehearse` (its path is absolute).
        dir: Some(c"/"),
        group: Group::Session,
    };
    if spawn.opened.kind != Kind::Elf
        && let Err(why) = spawn.opened.still_at(spawn.path)
    {
        return Err(Finished::refused(why.to_string()));
    }
    // (Without a subreaper of its own, the runner is none either: qemu's
    // user-mode emulation.)
    let spawned = if spawn.at_once && sys::is_subreaper() {
        sys::spawn_reaped(&exec).map(|r| (r.hook, Some(r)))
    } else {
        sys::spawn(&exec).map(|pid| (pid, None))
    };
    let (pid, reaper) = match spawned {
        Ok(s) => s,
        Err(e) => return Err(not_started(e.to_string())),
    };
    drop(write);
    let freeze = spawn.phase == "freeze" && !spawn.rollback;
    let recorded = leftovers::started(
        pid,
        reaper.as_ref().map(|r| r.reaper),
        freeze.then_some(ctx.state_dir),
    );
    Ok(Started {
        pid,
        reaper,
        capture,
        at: start,
        recorded,
    })
}

/// /dev/null, opened once a run: every hook's stdin.
fn dev_null() -> std::io::Result<BorrowedFd<'static>> {
    static NULL: std::sync::OnceLock<File> = std::sync::OnceLock::new();
    if let Some(f) = NULL.get() {
        return Ok(f.as_fd());
    }
    let f = File::open("/dev/null")?;
    Ok(NULL.get_or_init(|| f).as_fd())
}

/// Starts an administrator's command line (a snapshot's COMMAND, a hold's
/// client) in its own process group (`group`), looked up in `PATH` as a
/// shell would, with this process's environment and working directory and
/// the given stdin, stdout and stderr.
pub fn spawn_command(
    command: &[OsString],
    stdin: BorrowedFd<'_>,
    stdout: BorrowedFd<'_>,
    stderr: BorrowedFd<'_>,
    group: Group,
) -> Result<Pid, Errno> {
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| Errno::EINVAL))
        .collect::<Result<_, _>>()?;
    let first = argv.first().ok_or(Errno::EINVAL)?;
    let envp = key_values(std::env::vars_os());
    sys::spawn(&Exec {
        program: Program::Search(first),
        argv: &argv,
        envp: &envp,
        stdin,
        stdout,
        stderr,
        dir: None,
        group,
    })
    .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

fn key_values(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<CString> {
    vars.into_iter()
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            CString::new(kv).ok()
        })
        .collect()
}

fn c_string(s: &OsStr) -> Option<CString> {
    CString::new(s.as_bytes()).ok()
}

/// The caller's environment (qemu-ga's), with ours on top.
fn environment(spawn: &Spawn<'_>, ctx: &Context<'_>) -> Vec<CString> {
    let (log_path, state_dir) = (ctx.log.path(), ctx.state_dir);
    let exe = sys::own_path();
    let config = ctx.config.map(|c| c.as_os_str());
    let ours: [(&str, Option<&OsStr>); 7] = [
        ("FSFREEZE_PHASE", Some(OsStr::new(spawn.phase))),
        (
            "FSFREEZE_ROLLBACK",
            Some(OsStr::new(if spawn.rollback { "1" } else { "0" })),
        ),
        ("FSFREEZE_HOOK_LOG", Some(log_path.as_os_str())),
        ("FSFREEZE_HOOK_PATH", Some(spawn.path.as_os_str())),
        ("FSFREEZE_HOOK_STATE_DIR", Some(state_dir.as_os_str())),
        ("FSFREEZE_HOOK_BIN", Some(exe.as_os_str())),
        (crate::config::CONFIG_ENV, config),
    ];
    let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !ours.iter().any(|(name, _)| k == *name))
        .collect();
    if !vars.iter().any(|(k, _)| k == "PATH") {
        vars.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    vars.extend(
        ours.iter()
            .filter_map(|(k, v)| Some((OsString::from(k), (*v)?.to_os_string()))),
    );
    key_values(vars)
}

/// How a wait for a child ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitEnd {
    Ended(Outcome),
    Deadline,
    /// A stop signal (TERM, INT, HUP) reached the runner.
    Stopped(Signal),
}

/// The runner's side of one running child: a hook (with its output capture)
/// or a snapshot's COMMAND (without).
pub struct Watch<'a, 'b> {
    pid: Pid,
    /// The hook's own reaper, when it has one.
    reaper: Option<&'a sys::Reaped>,
    capture: Option<&'a mut Capture>,
    ctx: &'a Context<'b>,
    signal_seen: &'a mut Option<Signal>,
}

impl<'a, 'b> Watch<'a, 'b> {
    pub fn new(
        pid: Pid,
        capture: Option<&'a mut Capture>,
        ctx: &'a Context<'b>,
        signal_seen: &'a mut Option<Signal>,
    ) -> Watch<'a, 'b> {
        Watch {
            pid,
            reaper: None,
            capture,
            ctx,
            signal_seen,
        }
    }

    /// A started hook's.
    pub fn of(
        started: &'a mut Started,
        ctx: &'a Context<'b>,
        signal_seen: &'a mut Option<Signal>,
    ) -> Watch<'a, 'b> {
        Watch {
            pid: started.pid,
            reaper: started.reaper.as_ref(),
            capture: Some(&mut started.capture),
            ctx,
            signal_seen,
        }
    }

    fn try_reap(&self) -> std::io::Result<Option<Exit>> {
        sys::try_reap_below(self.pid, self.reaper)
    }

    fn pump(&mut self) {
        if let Some(c) = self.capture.as_deref_mut() {
            c.pump(self.ctx.log);
        }
    }

    fn capture_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.capture.as_deref().and_then(|c| c.fd())
    }

    /// Waits until the child ends, `deadline` passes, or a stop signal comes
    /// (recorded in `signal_seen`; returned only when `interruptible`).
    pub fn wait_until(&mut self, deadline: Option<Instant>, interruptible: bool) -> WaitEnd {
        let start = Instant::now();
        let mut next_tick = start + Duration::from_secs(1);
        loop {
            match self.try_reap() {
                Ok(Some(Exit::Code(c))) => return WaitEnd::Ended(Outcome::Exited(c)),
                Ok(Some(Exit::Signal(s))) => return WaitEnd::Ended(Outcome::Signaled(s)),
                Ok(None) => {}
                Err(e) => return WaitEnd::Ended(Outcome::NotStarted(format!("cannot wait: {e}"))),
            }
            let now = Instant::now();
            let remaining = deadline.map(|d| d.saturating_duration_since(now));
            if remaining == Some(Duration::ZERO) {
                return WaitEnd::Deadline;
            }
            let mut wake = remaining;
            if let Some(progress) = self.ctx.progress {
                if now >= next_tick {
                    progress(now - start);
                    next_tick += Duration::from_secs(1);
                }
                let to_tick = next_tick.saturating_duration_since(now);
                wake = Some(wake.map_or(to_tick, |w| w.min(to_tick)));
            }
            match self.ctx.waiter.wait(self.capture_fd(), wake) {
                Wake::Readable => self.pump(),
                Wake::Timeout | Wake::Signal(Signal::SIGCHLD) => {}
                Wake::Signal(sig) => {
                    *self.signal_seen = Some(sig);
                    if interruptible {
                        return WaitEnd::Stopped(sig);
                    }
                }
            }
        }
    }

    fn supervise(&mut self, start: Instant, limits: Bounds) -> Outcome {
        let deadline = limits.timeout.map(|(d, _)| start + d);
        match self.wait_until(deadline, limits.interruptible) {
            WaitEnd::Ended(outcome) => outcome,
            WaitEnd::Deadline => {
                let (limit, kind) = limits.timeout.expect("deadline implies a limit");
                let killed = self.end_group(limits.grace);
                Outcome::TimedOut {
                    limit,
                    kind,
                    killed,
                }
            }
            WaitEnd::Stopped(sig) => {
                self.end_group(limits.grace);
                Outcome::Interrupted(sig)
            }
        }
    }

    /// SIGTERM to the group and to what the child started outside it
    /// ([`leftovers::strays_of`]), up to `grace` for every member to go, then SIGKILL
    /// to whatever is left. Returns whether SIGKILL was needed. The child is
    /// reaped here.
    pub fn end_group(&mut self, grace: Duration) -> bool {
        let pgid = self.pid;
        let strays = leftovers::strays_of(pgid, self.reaper.map(|r| r.reaper));
        sys::signal_group(pgid, Signal::SIGTERM);
        for s in &strays {
            sys::proc::signal_ours(*s, Signal::SIGTERM);
        }
        let mut reaped = false;
        let until = Instant::now() + grace;
        let gone = self.wait_gone(&mut reaped, until);
        while strays.iter().any(|s| sys::proc::is_ours(*s)) && Instant::now() < until {
            thread::sleep(Duration::from_millis(10));
        }
        for s in &strays {
            sys::proc::signal_ours(*s, Signal::SIGKILL);
        }
        if gone {
            return false;
        }
        sys::signal_group(pgid, Signal::SIGKILL);
        let kill_end = Instant::now() + KILL_WAIT;
        while !self.wait_gone(&mut reaped, Instant::now() + Duration::from_millis(50))
            && Instant::now() < kill_end
        {
            // Members forked between the first SIGKILL and now.
            sys::signal_group(pgid, Signal::SIGKILL);
        }
        true
    }

    /// Waits until the child is reaped and its group is empty, or `until`,
    /// draining output meanwhile so no member blocks on a full pipe.
    fn wait_gone(&mut self, reaped: &mut bool, until: Instant) -> bool {
        loop {
            if !*reaped {
                *reaped = !matches!(self.try_reap(), Ok(None));
            }
            // Grandchildren are not ours to reap; init does that, so poll.
            if *reaped && !sys::group_alive(self.pid) {
                return true;
            }
            let now = Instant::now();
            if now >= until {
                return false;
            }
            let step = (until - now).min(Duration::from_millis(10));
            if *reaped {
                self.pump();
                thread::sleep(step);
                continue;
            }
            match self.ctx.waiter.wait(self.capture_fd(), Some(step)) {
                Wake::Readable => self.pump(),
                Wake::Signal(sig) if sig != Signal::SIGCHLD => *self.signal_seen = Some(sig),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phase::engine::hookfile;
    use crate::phase::engine::trust::Policy;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    use std::path::PathBuf;

    /// A hooks dir (trusted: this user's, mode 0755, under a temp dir),
    /// a log, and the runner's side of a run.
    struct Setup {
        dir: tempfile::TempDir,
        log: Log,
        waiter: Waiter,
    }

    impl Setup {
        fn new() -> Setup {
            let dir = tempfile::tempdir().unwrap();
            fs::create_dir(dir.path().join("hooks.d")).unwrap();
            let log = Log::open(&dir.path().join("log"), false);
            let waiter = Waiter::deaf();
            Setup { dir, log, waiter }
        }

        /// An executable file in the hooks dir; it records `$0` in a file
        /// named after `tag` beside the hooks dir.
        fn hook(&self, name: &str, shebang: bool, tag: &str) -> PathBuf {
            let path = self.dir.path().join("hooks.d").join(name);
            let record = self.dir.path().join(tag);
            let head = if shebang { "#!/bin/sh\n" } else { "" };
            let body = format!("{head}echo \"$0 $1\" > '{}'\n", record.display());
            fs::write(&path, body).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            path
        }

        fn run(&self, path: &Path, opened: &Opened) -> Finished {
            let limits = Bounds {
                timeout: None,
                grace: Duration::from_secs(1),
                interruptible: true,
            };
            // A test thread cannot count on SIGCHLD (the harness's other
            // threads may take it): the progress tick wakes the watch loop,
            // which reaps the hook, once a second.
            let ctx = Context {
                waiter: &self.waiter,
                log: &self.log,
                output_limit: None,
                state_dir: self.dir.path(),
                config: None,
                progress: Some(&|_| {}),
            };
            let spawn = Spawn {
                path,
                opened,
                phase: "freeze",
                rollback: false,
                at_once: false,
            };
            run(spawn, limits, &ctx, &mut None)
        }

        fn recorded(&self, tag: &str) -> Option<String> {
            fs::read_to_string(self.dir.path().join(tag)).ok()
        }
    }

    #[test]
    fn a_script_runs_with_its_own_path_as_dollar_zero() {
        for shebang in [true, false] {
            let s = Setup::new();
            let path = s.hook("10-app", shebang, "ran");
            let opened = hookfile::open(&path, &Policy::current()).unwrap();
            let fin = s.run(&path, &opened);
            assert!(fin.outcome.success(), "{:?}", fin.outcome);
            assert_eq!(
                s.recorded("ran").unwrap(),
                format!("{} freeze\n", path.display()),
                "#! line: {shebang}"
            );
        }
    }

    #[test]
    fn a_file_swapped_in_after_the_check_is_never_run() {
        for shebang in [true, false] {
            let s = Setup::new();
            let path = s.hook("10-app", shebang, "checked-ran");
            let opened = hookfile::open(&path, &Policy::current()).unwrap();
            // Between the check and the exec, another file takes the path
            // (rename: atomic, as an attacker would do it).
            let other = s.hook("other", shebang, "other-ran");
            fs::rename(&other, &path).unwrap();
            let fin = s.run(&path, &opened);
            match &fin.outcome {
                Outcome::Refused(why) => assert!(why.contains("replaced"), "{why}"),
                other => panic!("#! line {shebang}: ran: {other:?}"),
            }
            assert_eq!(s.recorded("other-ran"), None, "the other file ran");
            assert_eq!(s.recorded("checked-ran"), None);
            // Removed after the check: not run either.
            let path = s.hook("20-gone", shebang, "gone-ran");
            let opened = hookfile::open(&path, &Policy::current()).unwrap();
            fs::remove_file(&path).unwrap();
            assert!(matches!(s.run(&path, &opened).outcome, Outcome::Refused(_)));
        }
    }
}
