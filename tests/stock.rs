//! Hooks written for the stock script run unchanged: under our runner a hook
//! sees the `$0`, arguments and siblings it sees under the stock script of
//! each qemu-ga the tests have (run beside the same hooks dir, its log moved
//! into the test's dir), and what it prints reaches the log the same; it and
//! what it leaves running hold nothing open but descriptors 0-2.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{Env, alive, assert_has, descriptors_of_sleep, eventually, read_pid};
use crate::qemu_ga::{TestAgent, agents};

/// The agents whose stock script is there; under CI each must have one.
pub fn with_stock_script() -> Vec<TestAgent> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    agents()
        .into_iter()
        .filter(|a| {
            let there = a.stock_script().exists();
            assert!(there || !ci, "{a}: no stock script beside it");
            there
        })
        .collect()
}

/// `agent`'s stock script installed as `<env>/fsfreeze-hook.stock`, beside
/// the env's hooks dir (it runs `$(dirname "$0")/fsfreeze-hook.d/*`), its
/// log moved to `log`, which is created first: the script of 9.1 and later
/// falls back to syslog when its log is not yet writable.
fn install_stock(env: &Env, agent: &TestAgent, log: &Path) -> PathBuf {
    let path = install_stock_logging_to(env, agent, log);
    fs::write(log, "").unwrap();
    path
}

fn install_stock_logging_to(env: &Env, agent: &TestAgent, log: &Path) -> PathBuf {
    let text = fs::read_to_string(agent.stock_script()).unwrap();
    assert!(text.contains("/var/log/qga-fsfreeze-hook.log"), "{agent}");
    let text = text.replace("/var/log/qga-fsfreeze-hook.log", &log.display().to_string());
    let path = env.path().join("fsfreeze-hook.stock");
    fs::write(&path, text).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Runs the installed stock script. Retried while the kernel says "text
/// file busy": a child another test thread forks at the moment the script
/// was written holds the writing descriptor until its own exec.
fn run_stock(stock: &Path, phase: &str) -> std::process::Output {
    for _ in 0..100 {
        match Command::new(stock).arg(phase).output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => return other.unwrap(),
        }
    }
    panic!("{} stayed busy", stock.display());
}

/// The lines of a log that hooks printed, from `marker` on.
fn printed(log: &str, marker: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.find(marker).map(|i| l[i..].to_string()))
        .collect()
}

#[test]
fn stock_hooks_see_the_same_dollar_zero_arguments_and_siblings_as_under_the_stock_script() {
    let stock_agents = with_stock_script();
    for agent in &stock_agents {
        agent.announce();
        let env = Env::new();
        env.set_config("on_error = \"continue\"\n");
        // A sibling that is not a hook (not executable): loaded through $0.
        fs::write(
            env.hooks.join("common.sh"),
            "GREETING='hello from common.sh'\n",
        )
        .unwrap();
        env.hook(
            "10-app",
            &format!(
                ". \"$(dirname \"$0\")/common.sh\"\n\
                 echo \"hook-says $(basename \"$0\"): $GREETING\"\n\
                 echo \"hook-says \\$0=$0 args=$#:$*\"\n\
                 echo \"$0 $*\" >> '{}'",
                env.trace.display()
            ),
        );
        // An ELF program as a hook: bash, which reports a missing script
        // file under its argv[0].
        let elf = env.hooks.join("20-elf");
        fs::copy("/bin/bash", &elf).unwrap();
        fs::set_permissions(&elf, fs::Permissions::from_mode(0o755)).unwrap();

        let stock_log = env.path().join("stock.log");
        let stock = install_stock(&env, agent, &stock_log);
        for phase in ["freeze", "thaw"] {
            let out = run_stock(&stock, phase);
            assert!(out.status.success(), "{agent}: stock {phase}: {out:?}");
        }
        let stock_trace = env.trace();
        env.clear_trace();
        let freeze = env.run(&["freeze"]);
        assert_eq!(freeze.code, Some(0), "{}", freeze.log);
        let thaw = env.run(&["thaw"]);
        assert_eq!(thaw.code, Some(0), "{}", thaw.log);

        let hook = env.hooks.join("10-app").display().to_string();
        assert_eq!(
            env.trace(),
            [format!("{hook} freeze"), format!("{hook} thaw")],
            "{agent}"
        );
        assert_eq!(env.trace(), stock_trace, "{agent}: $0 and arguments");
        let stock_text = fs::read_to_string(&stock_log).unwrap();
        let ours = env.log_text();
        assert_eq!(
            printed(&ours, "hook-says "),
            printed(&stock_text, "hook-says "),
            "{agent}: what 10-app printed\nours:\n{ours}\nstock:\n{stock_text}"
        );
        assert_has(&ours, "hook-says 10-app: hello from common.sh");
        let elf_says = format!("{}: freeze: No such file or directory", elf.display());
        assert_has(&stock_text, &elf_says);
        assert_has(&ours, &elf_says);
    }
}

/// What `agent`'s stock script does with three hooks when its log is not
/// writable (a log in a directory that does not exist), run as installed
/// (`#!/bin/sh`): its exit status and stderr, and the hooks' trace.
fn stock_with_an_unwritable_log(agent: &TestAgent) -> (Option<i32>, String, Vec<String>) {
    let env = Env::new();
    for name in ["10-a", "20-b", "30-c"] {
        env.tracing_hook(name, "");
    }
    let stock = install_stock_logging_to(&env, agent, &env.path().join("none/log"));
    let out = run_stock(&stock, "freeze");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        env.trace(),
    )
}

/// Whether `agent`'s stock script dies of `Bad substitution` after its
/// first hook where /bin/sh is dash (seen, not read from the script).
pub fn stock_dies_under_dash(agent: &TestAgent) -> bool {
    let (code, stderr, _) = stock_with_an_unwritable_log(agent);
    code == Some(2) && stderr.contains("Bad substitution")
}

/// What docs/stock-script.md's comparison says of the stock scripts where /bin/sh is
/// dash and their log is not writable. 7.2's has no syslog fallback: every
/// hook's redirection to the log fails, so none runs, exit 0. 10.0.2's
/// (bookworm-backports) falls back to syslog through a pipe whose status it
/// reads from bash's `${PIPESTATUS[0]}`: it runs the first hook and dies,
/// exit 2, the rest never run. Debian 13's 10.0.13 has the same fallback
/// with a POSIX way to the status: every hook runs, exit 0.
#[test]
fn the_stock_scripts_under_dash_with_an_unwritable_log() {
    let sh = fs::canonicalize("/bin/sh").unwrap();
    if !sh.ends_with("dash") {
        let ci = std::env::var("CI").as_deref() == Ok("true");
        assert!(
            !ci,
            "CI=true on Debian: /bin/sh is dash, here {}",
            sh.display()
        );
        eprintln!("skipped: /bin/sh is {}, not dash", sh.display());
        return;
    }
    let mut seen = Vec::new();
    for agent in with_stock_script() {
        agent.announce();
        let (code, stderr, trace) = stock_with_an_unwritable_log(&agent);
        let all = [
            "10-a freeze rollback=",
            "20-b freeze rollback=",
            "30-c freeze rollback=",
        ];
        let what = if !agent.reports_hook_errors {
            assert_eq!(code, Some(0), "{agent}: {stderr}");
            assert_eq!(trace, Vec::<String>::new(), "{agent}");
            "no hook runs"
        } else if code == Some(2) {
            assert_has(&stderr, "Bad substitution");
            assert_eq!(trace, ["10-a freeze rollback="], "{agent}");
            "dies after the first hook"
        } else {
            assert_eq!(code, Some(0), "{agent}: {stderr}");
            assert_eq!(trace, all, "{agent}");
            "runs every hook"
        };
        seen.push(format!("{}: {what}", agent.version));
    }
    println!("{}", seen.join("; "));
    // Under CI the three agents are 7.2, 10.0.2 and 10.0.13: each kind
    // of script is seen, so a change in any is noticed.
    if std::env::var("CI").as_deref() == Ok("true") {
        for what in [
            "no hook runs",
            "dies after the first hook",
            "runs every hook",
        ] {
            assert!(
                seen.iter().any(|s| s.ends_with(what)),
                "no agent's script {what}: {seen:?}"
            );
        }
    }
}

/// Kills the recorded process when the test ends, however it ends.
struct Reaper(i32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

#[test]
fn what_a_hook_leaves_running_holds_descriptors_0_1_2_only() {
    for shebang in [true, false] {
        let env = Env::new();
        let pidfile = env.path().join("holder.pid");
        let body = format!("sleep 60 &\necho $! > '{}'\n", pidfile.display());
        let path = env.hooks.join("10-holder");
        let text = if shebang {
            format!("#!/bin/sh\n{body}")
        } else {
            body
        };
        fs::write(&path, text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let run = env.run(&["freeze"]);
        assert_eq!(run.code, Some(0), "{}", run.log);
        let pid = read_pid(&pidfile);
        let _reaper = Reaper(pid);
        assert!(alive(pid), "the holder lives on after the freeze phase");
        assert_eq!(
            descriptors_of_sleep(pid),
            [0, 1, 2],
            "#! line: {shebang}; {:?}",
            fs::read_dir(format!("/proc/{pid}/fd"))
                .unwrap()
                .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                .collect::<Vec<_>>()
        );
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert!(eventually(Duration::from_secs(5), || !alive(pid)));
        env.run(&["thaw"]);
    }
}
