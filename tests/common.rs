//! The test builder: a temp dir with a hooks dir, a config, a log and a state
//! dir, and the real binary run against them.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

pub const BIN: &str = env!("CARGO_BIN_EXE_fsfreeze-hook");

pub struct Env {
    pub dir: TempDir,
    pub hooks: PathBuf,
    pub log: PathBuf,
    pub state: PathBuf,
    pub config: PathBuf,
    pub trace: PathBuf,
}

/// What one run left: exit code, its own stdout/stderr, and the log.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub log: String,
    pub elapsed: Duration,
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("fsfreeze-hook-test.")
            .tempdir()
            .expect("temp dir");
        let root = dir.path().to_path_buf();
        let hooks = root.join("fsfreeze-hook.d");
        fs::create_dir(&hooks).unwrap();
        let config = root.join("fsfreeze-hook.conf");
        fs::write(&config, "").unwrap();
        Env {
            hooks,
            log: root.join("hook.log"),
            state: root.join("state"),
            trace: root.join("trace"),
            config,
            dir,
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes an executable hook: `#!/bin/sh`, then `body`.
    pub fn hook(&self, name: impl AsRef<OsStr>, body: &str) -> PathBuf {
        let path = self.hooks.join(name.as_ref());
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A hook that appends "<name> <phase> rollback=<0|1>" to the trace file,
    /// then runs `extra`.
    pub fn tracing_hook(&self, name: &str, extra: &str) -> PathBuf {
        self.hook(
            name,
            &format!(
                "echo \"{name} $1 rollback=$FSFREEZE_ROLLBACK\" >> '{}'\n{extra}",
                self.trace.display()
            ),
        )
    }

    /// A tracing hook whose freeze touches a marker file and then hangs for
    /// 30 s; returns the marker, which says the freeze is under way.
    pub fn hanging_freeze_hook(&self, name: &str) -> PathBuf {
        let started = self.path().join(format!("{name}.started"));
        self.tracing_hook(
            name,
            &format!(
                "[ \"$1\" = freeze ] && {{ touch '{}'; sleep 30; }}\nexit 0",
                started.display()
            ),
        );
        started
    }

    /// Starts a run with captured streams and waits until `marker` exists.
    pub fn spawn_until(&self, args: &[&str], marker: &Path) -> (Child, Instant) {
        let start = Instant::now();
        let child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        assert!(
            eventually(Duration::from_secs(5), || marker.exists()),
            "{} never appeared",
            marker.display()
        );
        (child, start)
    }

    pub fn trace(&self) -> Vec<String> {
        fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn clear_trace(&self) {
        let _ = fs::remove_file(&self.trace);
    }

    pub fn set_config(&self, text: &str) {
        fs::write(&self.config, text).unwrap();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The binary with this env's config, hooks dir, log and state dir.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_as(Path::new(BIN), args)
    }

    /// A copy of the binary under another name in this env's dir, as
    /// `fsfreeze-hook=/etc/qemu/my-hook` in qemu-ga.conf would run it.
    pub fn renamed_bin(&self, name: &str) -> PathBuf {
        let path = self.path().join(name);
        fs::copy(BIN, &path).unwrap();
        path
    }

    /// [`Env::command`] with the binary at `bin`.
    pub fn command_as(&self, bin: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin);
        // The env's options first, so that a test's own (later) ones win.
        cmd.arg("--config")
            .arg(&self.config)
            .arg("--hooks-dir")
            .arg(&self.hooks)
            .arg("--log-file")
            .arg(&self.log)
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env_remove("FSFREEZE_HOOK_CONFIG");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let start = Instant::now();
        let out = self.command(args).output().expect("run fsfreeze-hook");
        self.finish(out, start)
    }

    pub fn finish(&self, out: Output, start: Instant) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            log: self.log_text(),
            elapsed: start.elapsed(),
        }
    }
}

/// The guard recorded in the journal of `state_dir`, if any.
pub fn guard_of(state_dir: &Path) -> Option<i32> {
    guard_recorded(state_dir).map(|(pid, _)| pid)
}

/// The guard's pid and start time as the journal records them.
fn guard_recorded(state_dir: &Path) -> Option<(i32, Option<u64>)> {
    let journal = fs::read_to_string(state_dir.join("journal")).ok()?;
    journal
        .lines()
        .filter_map(|l| l.strip_prefix("guard "))
        .filter_map(|rest| {
            let fields: Vec<&str> = rest.split(' ').collect();
            Some((
                fields.first()?.parse().ok()?,
                fields.get(2).and_then(|s| s.parse().ok()),
            ))
        })
        .next_back()
}

/// A process's start time (field 22 of /proc/PID/stat).
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Ends the guard recorded in `state_dir` if it still runs (the very process
/// recorded, whatever the binary was named): a test that freezes and never
/// thaws must not leave one to thaw the machine later.
pub fn end_guard(state_dir: &Path) {
    if let Some((pid, Some(start))) = guard_recorded(state_dir)
        && start_time(pid) == Some(start)
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        end_guard(&self.state);
        end_helpers_of(self.path());
    }
}

/// Ends every detached helper (a guard, a watchdog: a session leader of its
/// own) still running with `dir` on its command line, which it inherited
/// from the run that started it: whatever the journal says by now (a later
/// run may have rewritten it), none outlives the test.
pub fn end_helpers_of(dir: &Path) {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let ours = cmdline.windows(needle.len()).any(|w| w == needle);
        let session_leader = fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| {
                st.rsplit(')')
                    .next()?
                    .split_whitespace()
                    .nth(3)?
                    .parse::<i32>()
                    .ok()
            })
            == Some(pid);
        if ours && session_leader {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Whether a pid is a live process (not gone, not a zombie).
pub fn alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .next();
            !matches!(state, Some("Z" | "X") | None)
        }
        Err(_) => false,
    }
}

pub fn read_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(text) = fs::read_to_string(path)
            && let Ok(pid) = text.trim().parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls `cond` every 20 ms for up to `limit`.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The lines of `log` that contain `needle`.
pub fn lines_with<'a>(log: &'a str, needle: &str) -> Vec<&'a str> {
    log.lines().filter(|l| l.contains(needle)).collect()
}

/// Fails, showing `text`, unless it contains `needle`.
#[track_caller]
pub fn assert_has(text: &str, needle: &str) {
    assert!(text.contains(needle), "{needle:?} not in:\n{text}");
}

/// The lines of `log` that contain `needle`; fails, showing the log, unless
/// there are exactly `n`.
#[track_caller]
pub fn assert_lines<'a>(log: &'a str, needle: &str, n: usize) -> Vec<&'a str> {
    let found = lines_with(log, needle);
    assert_eq!(found.len(), n, "lines with {needle:?} in:\n{log}");
    found
}

/// Sends `sig` to a running child.
pub fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

/// Tests that freeze (loop mounts, qemu-ga) run one at a time: qemu-ga's
/// guest-fsfreeze-thaw thaws every filesystem of the machine, so it would
/// thaw another test's frozen mount (harmless to the machine, but not to
/// that test's assertions).
pub fn freezing_exclusively() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding it poisoned it; the next may go on.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// For a root-only test (marked `#[ignore = "needs root"]`, which the test
/// command includes when it runs as root): fails at once, naming the test,
/// when it was included without root.
pub fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test} needs root: run the test command with sudo"
    );
}

/// For a test that freezes (root-only, see [`require_root`]): the lock that
/// makes freezing tests run one at a time.
pub fn freezing_test(test: &str) -> std::sync::MutexGuard<'static, ()> {
    require_root(test);
    freezing_exclusively()
}

/// The descriptors `pid`, a `sleep`, holds, sorted: looked at once it is
/// asleep, not while its shell forks and execs it, nor while the loader has
/// libraries open.
pub fn descriptors_of_sleep(pid: i32) -> Vec<u32> {
    assert!(
        eventually(Duration::from_secs(5), || {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains("(sleep) S "))
        }),
        "{pid} never slept"
    );
    let mut fds: Vec<u32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort();
    fds
}

/// A page of the manual (`docs/NAME`) or the README (`README.md`), as
/// checked in: tests run what it shows as written there.
pub fn manual(page: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(page);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The first ```LANG block after `page`'s heading `heading`, as written.
pub fn block(page: &str, heading: &str, lang: &str) -> String {
    let text = manual(page);
    let at = text
        .find(&format!("\n{heading}\n"))
        .unwrap_or_else(|| panic!("{page}: no section {heading}"));
    text[at..]
        .split(&format!("```{lang}\n"))
        .nth(1)
        .and_then(|b| b.split("```").next())
        .unwrap_or_else(|| panic!("{page}: {heading} has no {lang} block"))
        .to_string()
}
