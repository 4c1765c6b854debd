//! End to end under the real qemu-ga, as root: the agent serves QMP on a temp
//! unix socket, may only freeze through guest-fsfreeze-freeze-list (plain
//! guest-fsfreeze-freeze is blocked), and is given the test's own loop mount.
//! Run for every agent in $FSFREEZE_HOOK_TEST_AGENTS (colon-separated; the
//! test command puts Debian's 7.2 and bookworm-backports' 10.0 there).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{BIN, alive, eventually, freezing_test, read_pid};
use crate::loopfs::LoopFs;
use crate::qmp::Qmp;

/// A qemu-ga binary to test against, with what it says of its version.
pub struct TestAgent {
    pub path: PathBuf,
    /// `qemu-ga -V`, e.g. "QEMU Guest Agent 10.0.2".
    pub version: String,
    /// 9.1 or later: the hook's exit status and stderr reach the caller,
    /// and qemu-ga reads the hook's output until EOF.
    pub reports_hook_errors: bool,
}

impl std::fmt::Display for TestAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.version, self.path.display())
    }
}

impl TestAgent {
    pub fn probe(path: PathBuf) -> TestAgent {
        let out = Command::new(&path).arg("-V").output().unwrap();
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let number = version.split_whitespace().last().unwrap_or_default();
        let mut parts = number.split('.').map(|n| n.parse::<u32>().ok());
        let (Some(Some(major)), Some(Some(minor))) = (parts.next(), parts.next()) else {
            panic!("{}: no version in {version:?}", path.display());
        };
        TestAgent {
            path,
            version,
            reports_hook_errors: (major, minor) >= (9, 1),
        }
    }

    /// The stock hook script of the same package (`/etc/qemu/fsfreeze-hook`
    /// beside `/usr/sbin/qemu-ga`).
    pub fn stock_script(&self) -> PathBuf {
        let root = self.path.ancestors().nth(3).unwrap_or(Path::new("/"));
        root.join("etc/qemu/fsfreeze-hook")
    }

    /// Says in the test's output which agent this run is under (the test
    /// command shows the end-to-end tests' output).
    pub fn announce(&self) {
        println!("under {self}");
    }
}

/// The qemu-ga binaries of $FSFREEZE_HOOK_TEST_AGENTS. Under CI a missing
/// one fails, and so does a list without both generations (before 9.1 and
/// 9.1 or later): an agent silently replaced by another version cannot pass.
pub fn agents() -> Vec<TestAgent> {
    let list =
        std::env::var("FSFREEZE_HOOK_TEST_AGENTS").unwrap_or_else(|_| "/usr/sbin/qemu-ga".into());
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let mut out = Vec::new();
    for path in list.split(':').filter(|p| !p.is_empty()).map(PathBuf::from) {
        if path.exists() {
            out.push(TestAgent::probe(path));
        } else {
            assert!(
                !ci,
                "qemu-ga {} is missing; the test command unpacks it (tests/fetch-qemu)",
                path.display()
            );
            eprintln!("skipped qemu-ga {}: not there", path.display());
        }
    }
    // Root runs the test command, which unpacks them: none is a failure.
    // A normal user's run without them says so on every test that skips.
    if out.is_empty() {
        assert!(
            !ci && !nix::unistd::geteuid().is_root(),
            "no qemu-ga to test under (FSFREEZE_HOOK_TEST_AGENTS={list:?}); the test command unpacks them (tests/fetch-qemu)"
        );
        eprintln!(
            "SKIPPED: no qemu-ga to test under; run the test command (tests/run) to unpack them"
        );
    }
    if ci {
        let old = out.iter().any(|a| !a.reports_hook_errors);
        let new = out.iter().any(|a| a.reports_hook_errors);
        let seen: Vec<String> = out.iter().map(|a| a.to_string()).collect();
        assert!(
            old && new,
            "CI=true needs a qemu-ga before 9.1 and one of 9.1 or later; have {seen:?}"
        );
    }
    out
}

/// An installed hook: our binary as <dir>/etc/fsfreeze-hook, its hooks dir
/// and config beside it, as `enable` would lay them out under /etc/qemu.
pub struct Install {
    pub dir: tempfile::TempDir,
    pub hook: PathBuf,
    pub hooks_dir: PathBuf,
    pub log: PathBuf,
    pub trace: PathBuf,
}

impl Install {
    pub fn new() -> Install {
        Install::with_config("timeout = \"10s\"\nkill_grace = \"1s\"\n")
    }

    pub fn with_config(settings: &str) -> Install {
        let dir = tempfile::Builder::new()
            .prefix("fsfreeze-hook-qga.")
            .tempdir()
            .unwrap();
        let etc = dir.path().join("etc");
        let hooks_dir = etc.join("fsfreeze-hook.d");
        fs::create_dir_all(&hooks_dir).unwrap();
        let hook = etc.join("fsfreeze-hook");
        fs::copy(BIN, &hook).unwrap();
        let log = dir.path().join("hook.log");
        fs::write(
            etc.join("fsfreeze-hook.conf"),
            format!(
                "log_file = \"{}\"\nstate_dir = \"{}\"\n{settings}",
                log.display(),
                dir.path().join("state").display()
            ),
        )
        .unwrap();
        let trace = dir.path().join("trace");
        Install {
            dir,
            hook,
            hooks_dir,
            log,
            trace,
        }
    }

    /// A hook that records its phase in the trace (outside the frozen
    /// filesystem) and writes a file named after itself and the phase into
    /// the frozen filesystem: possible only while it is not frozen.
    pub fn add(&self, name: &str, mnt: &Path, extra: &str) {
        let path = self.hooks_dir.join(name);
        fs::write(
            &path,
            format!(
                "#!/bin/sh\n\
                 echo \"{name} $1 rollback=$FSFREEZE_ROLLBACK\" >> '{trace}'\n\
                 echo written > '{mnt}/{name}'.\"$1\"\n\
                 {extra}\n",
                trace = self.trace.display(),
                mnt = mnt.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn trace(&self) -> Vec<String> {
        fs::read_to_string(&self.trace)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Install {
    /// The state dir of the installed hook (its journal says the guard).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        crate::common::end_guard(&self.state());
    }
}

/// qemu-ga on a temp socket with its own statedir and pidfile, killed by its
/// pid on drop.
pub struct Agent {
    child: Child,
    qmp: Qmp,
}

impl Agent {
    pub fn start(qga: &TestAgent, install: &Install) -> Agent {
        Agent::start_in(qga, install, Command::new(&qga.path))
    }

    /// qemu-ga in a private mount namespace whose /dev/log is the datagram
    /// socket `syslog` (the machine's logging is never touched): what it,
    /// its hooks and what they leave behind send to syslog arrives there.
    pub fn start_logging_to(qga: &TestAgent, install: &Install, syslog: &Path) -> Agent {
        let keep = install.dir.path().join("dev-keep");
        fs::create_dir_all(&keep).unwrap();
        let script = format!(
            "set -e\nmount --rbind /dev '{keep}'\nmount -t tmpfs tmpfs /dev\ntouch /dev/null /dev/log\nmount --bind '{keep}/null' /dev/null\nln -s /proc/self/fd /dev/fd\nmount --bind '{sock}' /dev/log\nexec \"$@\"",
            keep = keep.display(),
            sock = syslog.display()
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script, "sh"])
            .arg(&qga.path);
        Agent::start_in(qga, install, cmd)
    }

    /// The pid of qemu-ga itself (the wrappers exec it).
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn start_in(qga: &TestAgent, install: &Install, mut command: Command) -> Agent {
        qga.announce();
        let dir = install.dir.path();
        let sock = dir.join("qga.sock");
        let statedir = dir.join("qga-state");
        fs::create_dir_all(&statedir).unwrap();
        let log = dir.join("qga.log");
        let child = command
            .arg("-m")
            .arg("unix-listen")
            .arg("-p")
            .arg(&sock)
            .arg("-t")
            .arg(&statedir)
            .arg("-f")
            .arg(dir.join("qga.pid"))
            .arg("-l")
            .arg(&log)
            .arg("-b")
            .arg("guest-fsfreeze-freeze")
            .arg(format!("-F{}", install.hook.display()))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut agent_child = Some(child);
        assert!(
            eventually(Duration::from_secs(10), || sock.exists()),
            "qemu-ga did not create its socket"
        );
        let mut agent = Agent {
            child: agent_child.take().unwrap(),
            qmp: Qmp::connect(&sock, Duration::from_secs(60), &log),
        };
        agent.qmp.sync_delimited(Duration::from_secs(10));
        // Only guest-fsfreeze-freeze-list with the test's own mount may
        // freeze anything: make sure plain freeze (every filesystem of this
        // machine) is disabled, without calling it.
        let info = agent.call("guest-info", json!({})).unwrap();
        let plain_freeze = info["supported_commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "guest-fsfreeze-freeze")
            .expect("guest-info lists guest-fsfreeze-freeze");
        assert_eq!(
            plain_freeze["enabled"], false,
            "{}: -b guest-fsfreeze-freeze did not take",
            qga
        );
        agent
    }

    pub fn call(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        self.qmp.call(command, arguments)
    }

    pub fn status(&mut self) -> String {
        self.call("guest-fsfreeze-status", json!({}))
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn freeze_list(agent: &mut Agent, mnt: &Path) -> Result<Value, String> {
    agent.call(
        "guest-fsfreeze-freeze-list",
        json!({ "mountpoints": [mnt] }),
    )
}

#[test]
#[ignore = "needs root"]
fn qemu_ga_cycle_runs_hooks_before_freeze_and_after_thaw_in_reverse() {
    let _exclusive = freezing_test("qemu_ga_cycle");
    for qga in agents() {
        let install = Install::new();
        let fs = LoopFs::ext4(install.dir.path());
        install.add("10-first", &fs.mnt, "");
        install.add("20-second", &fs.mnt, "");
        let mut agent = Agent::start(&qga, &install);
        assert_eq!(
            freeze_list(&mut agent, &fs.mnt),
            Ok(json!(1)),
            "{}",
            fs::read_to_string(&install.log).unwrap_or_default()
        );
        assert_eq!(agent.status(), "frozen");
        assert!(fs.frozen(), "{}: the test's mount must be frozen now", qga);
        assert_eq!(
            install.trace(),
            ["10-first freeze rollback=0", "20-second freeze rollback=0"]
        );
        assert_eq!(agent.call("guest-fsfreeze-thaw", json!({})), Ok(json!(1)));
        assert_eq!(agent.status(), "thawed");
        assert!(!fs.frozen());
        assert_eq!(
            install.trace(),
            [
                "10-first freeze rollback=0",
                "20-second freeze rollback=0",
                "20-second thaw rollback=0",
                "10-first thaw rollback=0"
            ],
            "{}",
            qga
        );
        // Freeze hooks wrote before FIFREEZE, thaw hooks after FITHAW (a
        // write to a frozen filesystem would have blocked until the timeout).
        for f in [
            "10-first.freeze",
            "20-second.freeze",
            "20-second.thaw",
            "10-first.thaw",
        ] {
            let listing: Vec<_> = fs::read_dir(&fs.mnt)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(
                fs.mnt.join(f).exists(),
                "{f} missing under {}: {listing:?}",
                qga
            );
        }
        let log = fs::read_to_string(&install.log).unwrap();
        assert_eq!(log.matches(": freeze finished in").count(), 1, "{log}");
        assert_eq!(log.matches(": thaw finished in").count(), 1, "{log}");
    }
}

#[test]
#[ignore = "needs root"]
fn qemu_ga_failing_hook_is_reported_and_rolled_back_nothing_frozen() {
    let _exclusive = freezing_test("qemu_ga_failing_hook");
    for qga in agents() {
        let install = Install::new();
        let fs = LoopFs::ext4(install.dir.path());
        install.add("10-first", &fs.mnt, "");
        install.add(
            "20-db",
            &fs.mnt,
            "[ \"$1\" = freeze ] && { echo 'flush failed' >&2; exit 1; }\nexit 0",
        );
        install.add("30-never", &fs.mnt, "");
        let mut agent = Agent::start(&qga, &install);
        let err = freeze_list(&mut agent, &fs.mnt).expect_err("the freeze must fail");
        if qga.reports_hook_errors {
            // 9.1+ hands the hook's output to the hypervisor: our one line.
            assert!(
                err.contains("fsfreeze-hook: freeze aborted: 20-db exited with status 1 after"),
                "{}: {err}",
                qga
            );
            assert!(err.contains("rolled back 20-db, 10-first"), "{err}");
        } else {
            assert!(
                err.contains("fsfreeze hook has failed with status"),
                "{}: {err}",
                qga
            );
        }
        assert_eq!(agent.status(), "thawed");
        assert!(!fs.frozen(), "nothing may stay frozen");
        assert_eq!(
            install.trace(),
            [
                "10-first freeze rollback=0",
                "20-db freeze rollback=0",
                "20-db thaw rollback=1",
                "10-first thaw rollback=1"
            ]
        );
        let log = fs::read_to_string(&install.log).unwrap();
        assert!(
            log.contains("flush failed"),
            "hook output is in the log: {log}"
        );
    }
}

/// The stock MySQL sample leaves a lock holder running. Under qemu-ga 9.1+
/// that holder would keep qemu-ga's pipe open and stall the freeze; with us
/// in between, the freeze returns at once and the holder lives until thaw.
#[test]
#[ignore = "needs root"]
fn qemu_ga_freeze_returns_promptly_while_a_lock_holder_lives_on() {
    let _exclusive = freezing_test("qemu_ga_lock_holder");
    for qga in agents() {
        let install = Install::new();
        let fs = LoopFs::ext4(install.dir.path());
        let pid = install.dir.path().join("holder.pid");
        let stop = install.dir.path().join("holder.stop");
        install.add(
            "10-holder",
            &fs.mnt,
            &format!(
                "case \"$1\" in\n\
                 freeze) ( while [ ! -e '{stop}' ]; do sleep 0.1; done ) & echo $! > '{pid}' ;;\n\
                 thaw) touch '{stop}' ;;\n\
                 esac",
                stop = stop.display(),
                pid = pid.display()
            ),
        );
        let mut agent = Agent::start(&qga, &install);
        let start = Instant::now();
        assert_eq!(freeze_list(&mut agent, &fs.mnt), Ok(json!(1)));
        let took = start.elapsed();
        // Not until the holder ends (the thaw): some 200 ms, with room for a
        // loaded machine.
        assert!(
            took < Duration::from_secs(8),
            "{}: freeze took {took:?}",
            qga
        );
        let holder = read_pid(&pid);
        assert!(alive(holder), "the lock holder must live until thaw");
        assert_eq!(agent.call("guest-fsfreeze-thaw", json!({})), Ok(json!(1)));
        assert!(
            eventually(Duration::from_secs(5), || !alive(holder)),
            "the thaw hook ends the holder"
        );
        assert!(!fs.frozen());
    }
}

/// A hook that hangs forever must not hang qemu-ga: our timeout ends it, the
/// agent answers with an error, nothing is frozen, and the next cycle works.
#[test]
#[ignore = "needs root"]
fn qemu_ga_hanging_hook_is_cut_off_and_the_next_cycle_works() {
    let _exclusive = freezing_test("qemu_ga_hanging_hook");
    for qga in agents() {
        let install = Install::with_config("timeout = \"2s\"\nkill_grace = \"500ms\"\n");
        let fs = LoopFs::ext4(install.dir.path());
        let hang = install.dir.path().join("hang");
        fs::write(&hang, "").unwrap();
        install.add("10-first", &fs.mnt, "");
        install.add(
            "20-hangs",
            &fs.mnt,
            &format!(
                "[ \"$1\" = freeze ] && [ -e '{}' ] && while :; do sleep 1; done\nexit 0",
                hang.display()
            ),
        );
        let mut agent = Agent::start(&qga, &install);
        let start = Instant::now();
        let err = freeze_list(&mut agent, &fs.mnt).expect_err("the freeze must fail");
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(2) && took < Duration::from_secs(10),
            "{}: answered after {took:?}",
            qga
        );
        if qga.reports_hook_errors {
            assert!(err.contains("20-hangs timed out after 2s"), "{err}");
        }
        assert_eq!(agent.status(), "thawed");
        assert!(!fs.frozen());
        // The next cycle, with the hook no longer hanging, works.
        fs::remove_file(&hang).unwrap();
        fs::remove_file(&install.trace).unwrap();
        assert_eq!(freeze_list(&mut agent, &fs.mnt), Ok(json!(1)));
        assert!(fs.frozen());
        assert_eq!(agent.call("guest-fsfreeze-thaw", json!({})), Ok(json!(1)));
        assert!(!fs.frozen());
        assert_eq!(
            install.trace(),
            [
                "10-first freeze rollback=0",
                "20-hangs freeze rollback=0",
                "20-hangs thaw rollback=0",
                "10-first thaw rollback=0"
            ]
        );
    }
}
