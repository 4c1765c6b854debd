//! Standalone mode, for real, as root, on filesystems the tests made:
//! loop-mounted ext4, xfs and btrfs images, a mount nested in another, a bind
//! mount. Frozen state is probed with FIFREEZE (EBUSY: frozen), never with a
//! write. The "all filesystems" selection is tested on fixtures in
//! src/mounts.rs and src/freeze.rs, never here.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::{
    BIN, Env, alive, assert_has, assert_lines, eventually, freezing_test, read_pid, signal,
};
use crate::loopfs::{BindMount, LoopFs};

/// A hook that records its phase in the trace and writes a file into each
/// of `mounts` (possible only while they are not frozen).
fn writing_hook(env: &Env, name: &str, mounts: &[&Path]) {
    let writes: String = mounts
        .iter()
        .map(|m| format!("echo written > '{}/{name}'.\"$1\"\n", m.display()))
        .collect();
    env.tracing_hook(name, &writes);
}

fn run_args<'a>(mounts: &'a [&'a Path], tail: &[&'a str]) -> Vec<&'a str> {
    let mut args = Vec::new();
    for m in mounts {
        args.push("-m");
        args.push(m.to_str().unwrap());
    }
    args.extend_from_slice(tail);
    args
}

fn froze_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split(": froze ").nth(1))
        .filter(|rest| rest.starts_with('/'))
        .map(|rest| rest.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
#[ignore = "needs root"]
fn snapshot_freezes_ext4_xfs_btrfs_runs_command_while_frozen_then_thaws() {
    let _exclusive = freezing_test("snapshot_three_filesystems");
    let env = Env::new();
    let filesystems: Vec<LoopFs> = ["ext4", "xfs", "btrfs"]
        .iter()
        .map(|t| LoopFs::make(env.path(), t, &env.path().join(t)))
        .collect();
    let mounts: Vec<&Path> = filesystems.iter().map(|f| f.mnt.as_path()).collect();
    writing_hook(&env, "10-app", &mounts);
    let running = env.path().join("command-running");
    let release = env.path().join("command-may-end");
    let command = format!(
        "touch '{}'; while [ ! -e '{}' ]; do sleep 0.05; done; exit 7",
        running.display(),
        release.display()
    );
    let mut args = vec!["snapshot"];
    args.extend(run_args(&mounts, &["--", "sh", "-c", &command]));
    let (child, start) = env.spawn_until(&args, &running);
    for fs in &filesystems {
        assert!(
            fs.frozen(),
            "{} must be frozen while COMMAND runs",
            fs.mnt.display()
        );
    }
    fs::write(&release, "").unwrap();
    let run = env.finish(child.wait_with_output().unwrap(), start);
    assert_eq!(run.code, Some(7), "COMMAND's status: {run:?}");
    for fs in &filesystems {
        assert!(!fs.frozen());
        for phase in ["freeze", "thaw"] {
            assert!(
                fs.mnt.join(format!("10-app.{phase}")).exists(),
                "{phase} hook wrote to {}",
                fs.mnt.display()
            );
        }
    }
    assert_eq!(
        env.trace(),
        ["10-app freeze rollback=0", "10-app thaw rollback=0"]
    );
    // Children before parents: reverse mount order.
    let order: Vec<String> = mounts
        .iter()
        .rev()
        .map(|m| m.display().to_string())
        .collect();
    assert_eq!(froze_lines(&run.log), order, "{}", run.log);
}

#[test]
#[ignore = "needs root"]
fn nested_mount_freezes_child_first_and_thaws_parent_first() {
    let _exclusive = freezing_test("nested_mount");
    let env = Env::new();
    let outer = LoopFs::make(env.path(), "ext4", &env.path().join("outer"));
    let inner = LoopFs::make(env.path(), "xfs", &outer.mnt.join("inner"));
    let (o, i) = (
        outer.mnt.display().to_string(),
        inner.mnt.display().to_string(),
    );
    // -m in either order: the mount order decides.
    let run = env.run(&["snapshot", "-m", &o, "-m", &i, "--", "true"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(froze_lines(&run.log), [i.clone(), o.clone()]);
    let thawed: Vec<&str> = run
        .log
        .lines()
        .filter_map(|l| l.split(": thawed ").nth(1))
        .collect();
    assert_eq!(thawed, [o.as_str(), i.as_str()]);
    assert!(!inner.frozen() && !outer.frozen());
}

#[test]
#[ignore = "needs root"]
fn bind_mount_is_frozen_once() {
    let _exclusive = freezing_test("bind_mount");
    let env = Env::new();
    let fs = LoopFs::make(env.path(), "ext4", &env.path().join("data"));
    fs::create_dir(fs.mnt.join("sub")).unwrap();
    let bind = BindMount::new(&fs.mnt.join("sub"), &env.path().join("bound"));
    let (a, b) = (
        fs.mnt.display().to_string(),
        bind.target.display().to_string(),
    );
    let run = env.run(&["snapshot", "-m", &a, "-m", &b, "--", "true"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(froze_lines(&run.log).len(), 1, "{}", run.log);
    // The bind mount alone reaches the same filesystem.
    let running = env.path().join("running");
    let cmd = format!("touch '{}'; sleep 1", running.display());
    let (child, start) = env.spawn_until(&["snapshot", "-m", &b, "--", "sh", "-c", &cmd], &running);
    assert!(fs.frozen());
    assert_eq!(
        env.finish(child.wait_with_output().unwrap(), start).code,
        Some(0)
    );
    assert!(!fs.frozen());
}

#[test]
#[ignore = "needs root"]
fn max_frozen_thaws_on_time_and_ends_the_command() {
    let _exclusive = freezing_test("max_frozen");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    env.tracing_hook("10-app", "");
    env.set_config("kill_grace = \"500ms\"\n");
    let running = env.path().join("running");
    let pid = env.path().join("command.pid");
    let cmd = format!(
        "echo $$ > '{}'; trap '' TERM; touch '{}'; while :; do sleep 0.1; done",
        pid.display(),
        running.display()
    );
    let m = fs.mnt.display().to_string();
    let (child, start) = env.spawn_until(
        &[
            "snapshot",
            "-m",
            &m,
            "--max-frozen",
            "1s",
            "--",
            "sh",
            "-c",
            &cmd,
        ],
        &running,
    );
    let frozen_since = Instant::now();
    assert!(fs.frozen());
    assert!(
        eventually(Duration::from_secs(5), || !fs.frozen()),
        "never thawed"
    );
    let frozen_for = frozen_since.elapsed();
    assert!(
        frozen_for >= Duration::from_millis(700) && frozen_for < Duration::from_secs(3),
        "{frozen_for:?}"
    );
    let run = env.finish(child.wait_with_output().unwrap(), start);
    assert_eq!(run.code, Some(124), "{run:?}");
    assert_has(&run.stderr, "frozen window of 1s expired");
    assert!(
        !alive(read_pid(&pid)),
        "COMMAND, which ignores TERM, was killed"
    );
    assert_eq!(
        env.trace(),
        ["10-app freeze rollback=0", "10-app thaw rollback=0"]
    );
}

#[test]
#[ignore = "needs root"]
fn auto_thaw_thaws_and_runs_the_thaw_hooks_when_no_thaw_comes() {
    let _exclusive = freezing_test("auto_thaw");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    writing_hook(&env, "10-app", &[&fs.mnt]);
    let m = fs.mnt.display().to_string();
    let start = Instant::now();
    let run = env.run(&["freeze", "--fs", "-m", &m, "--auto-thaw", "1s"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        fs.frozen(),
        "freeze --fs returns with the filesystem frozen"
    );
    assert!(
        eventually(Duration::from_secs(5), || !fs.frozen()),
        "the watchdog never thawed"
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    assert!(
        eventually(Duration::from_secs(5), || env.trace().len() == 2),
        "{:?}",
        env.trace()
    );
    assert!(
        eventually(Duration::from_secs(2), || fs
            .mnt
            .join("10-app.thaw")
            .exists()),
        "the thaw hook ran after the thaw"
    );
    let log = env.log_text();
    assert_lines(
        &log,
        "its deadline passed; thawing what the journal holds",
        1,
    );
    // The freeze's own lines, held while frozen, reached the log too.
    assert_eq!(froze_lines(&log), [m.as_str()], "{log}");
}

#[test]
#[ignore = "needs root"]
fn freeze_fs_then_thaw_fs_with_status_in_between() {
    let _exclusive = freezing_test("freeze_then_thaw");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    writing_hook(&env, "10-a", &[&fs.mnt]);
    writing_hook(&env, "20-b", &[&fs.mnt]);
    let m = fs.mnt.display().to_string();
    let run = env.run(&["freeze", "--fs", "-m", &m]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(fs.frozen());
    let status = env.run(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(json["held"], true);
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(json["hooks"], serde_json::json!(["10-a", "20-b"]));
    assert_eq!(json["filesystems"], serde_json::json!([m]));
    assert_eq!(json["watchdog"]["alive"], true);
    let watchdog = json["watchdog"]["pid"].as_i64().unwrap() as i32;
    let text = env.run(&["status"]).stdout;
    assert!(
        text.contains(&format!("watchdog: pid {watchdog}, armed")),
        "{text}"
    );
    let run = env.run(&["thaw", "--fs"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(!fs.frozen());
    assert_eq!(
        env.trace(),
        [
            "10-a freeze rollback=0",
            "20-b freeze rollback=0",
            "20-b thaw rollback=0",
            "10-a thaw rollback=0"
        ]
    );
    assert!(
        eventually(Duration::from_secs(3), || !alive(watchdog)),
        "the watchdog exits after the thaw"
    );
    let status = env.run(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(json["held"], false, "{}", status.stdout);
}

#[test]
#[ignore = "needs root"]
fn kill_9_of_the_runner_while_frozen_thaws_within_2s() {
    let _exclusive = freezing_test("kill_9");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    writing_hook(&env, "10-app", &[&fs.mnt]);
    let running = env.path().join("running");
    let cmd = format!("touch '{}'; sleep 30", running.display());
    let m = fs.mnt.display().to_string();
    let (child, _) = env.spawn_until(&["snapshot", "-m", &m, "--", "sh", "-c", &cmd], &running);
    assert!(fs.frozen());
    signal(&child, nix::sys::signal::SIGKILL);
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || !fs.frozen()),
        "still frozen 2 s after kill -9"
    );
    eprintln!("thawed {:?} after kill -9", killed.elapsed());
    assert!(
        eventually(Duration::from_secs(5), || fs
            .mnt
            .join("10-app.thaw")
            .exists()),
        "thaw hooks ran"
    );
    let log = env.log_text();
    assert_lines(&log, "the runner died before it thawed", 1);
    assert_eq!(
        froze_lines(&log),
        [m],
        "the dead runner's held lines are kept: {log}"
    );
    drop(child);
}

#[test]
#[ignore = "needs root"]
fn a_fifreeze_failure_thaws_what_was_frozen_and_rolls_back_the_hooks() {
    let _exclusive = freezing_test("fifreeze_failure");
    let env = Env::new();
    // Mounted first, frozen last: a shut-down XFS, whose FIFREEZE fails (EIO).
    let broken = LoopFs::make(env.path(), "xfs", &env.path().join("broken"));
    let good = LoopFs::make(env.path(), "ext4", &env.path().join("good"));
    let shutdown = std::process::Command::new("xfs_io")
        .args(["-x", "-c", "shutdown", broken.mnt.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(shutdown.success());
    env.tracing_hook("10-app", "");
    let ran = env.path().join("command-ran");
    let (b, g) = (
        broken.mnt.display().to_string(),
        good.mnt.display().to_string(),
    );
    let cmd = format!("touch '{}'", ran.display());
    let run = env.run(&["snapshot", "-m", &b, "-m", &g, "--", "sh", "-c", &cmd]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("cannot freeze {b}: FIFREEZE failed: ")),
        "{}",
        run.stderr
    );
    assert!(!ran.exists(), "COMMAND must not run");
    assert!(!good.frozen(), "what was frozen is thawed again");
    assert_eq!(froze_lines(&run.log), [g.as_str()]);
    assert_lines(&run.log, &format!(": thawed {g}"), 1);
    assert_eq!(
        env.trace(),
        ["10-app freeze rollback=0", "10-app thaw rollback=1"]
    );
}

#[test]
#[ignore = "needs root"]
fn not_a_mountpoint_or_state_dir_on_a_frozen_filesystem_is_refused() {
    let _exclusive = freezing_test("refusals");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    env.tracing_hook("10-app", "");
    let plain: PathBuf = env.path().join("plain");
    fs::create_dir(&plain).unwrap();
    // Refused before COMMAND ran: 125, never a status COMMAND could give.
    let run = env.run(&["snapshot", "-m", plain.to_str().unwrap(), "--", "true"]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("{} is not a mountpoint", plain.display())),
        "{}",
        run.stderr
    );
    let on_frozen = fs.mnt.join("state");
    let m = fs.mnt.display().to_string();
    let run = env.run(&[
        "snapshot",
        "-m",
        &m,
        "--state-dir",
        on_frozen.to_str().unwrap(),
        "--",
        "true",
    ]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert_has(&run.stderr, "which would be frozen; use a tmpfs");
    // `freeze --fs` keeps 3 for the same refusal (it has no COMMAND).
    let run = env.run(&["freeze", "--fs", "-m", plain.to_str().unwrap()]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert!(env.trace().is_empty(), "no hook ran");
    assert!(!fs.frozen());
}

#[test]
#[ignore = "needs root"]
fn stop_signals_during_a_snapshot_thaw_first_then_end_the_command() {
    let _exclusive = freezing_test("snapshot_signals");
    for (sig, code) in [
        (nix::sys::signal::SIGTERM, 143),
        (nix::sys::signal::SIGINT, 130),
        (nix::sys::signal::SIGHUP, 129),
    ] {
        let env = Env::new();
        let fs = LoopFs::ext4(env.path());
        env.tracing_hook("10-app", "");
        let running = env.path().join("running");
        let cmd = format!("touch '{}'; sleep 30", running.display());
        let m = fs.mnt.display().to_string();
        let (child, start) =
            env.spawn_until(&["snapshot", "-m", &m, "--", "sh", "-c", &cmd], &running);
        signal(&child, sig);
        let run = env.finish(child.wait_with_output().unwrap(), start);
        assert_eq!(run.code, Some(code), "{sig}: {run:?}");
        assert!(!fs.frozen());
        assert_eq!(
            env.trace(),
            ["10-app freeze rollback=0", "10-app thaw rollback=0"]
        );
    }
}

/// A shutdown sends SIGTERM to everything: the watchdog thaws rather than
/// leave a frozen filesystem behind.
#[test]
#[ignore = "needs root"]
fn sigterm_to_the_watchdog_thaws() {
    let _exclusive = freezing_test("watchdog_sigterm");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    env.tracing_hook("10-app", "");
    let m = fs.mnt.display().to_string();
    assert_eq!(
        env.run(&["freeze", "--fs", "-m", &m, "--auto-thaw", "0"])
            .code,
        Some(0)
    );
    assert!(fs.frozen());
    let status = env.run(&["status", "--json"]).stdout;
    let json: serde_json::Value = serde_json::from_str(status.trim()).unwrap();
    assert_eq!(json["watchdog"]["deadline_ms"], serde_json::Value::Null);
    let pid = json["watchdog"]["pid"].as_i64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGTERM).unwrap();
    assert!(
        eventually(Duration::from_secs(2), || !fs.frozen()),
        "the watchdog did not thaw"
    );
    assert!(
        eventually(Duration::from_secs(5), || env.trace().len() == 2),
        "{:?}",
        env.trace()
    );
    assert_lines(&env.log_text(), "it got SIGTERM; thawing", 1);
}

/// The log says what the exit status says: a snapshot whose COMMAND failed,
/// ran past --max-frozen or could not start is logged as failed (text and
/// JSON, level error), with one stderr line; a good one as ok.
#[test]
#[ignore = "needs root"]
fn snapshot_logs_the_result_its_exit_status_gives() {
    let _exclusive = freezing_test("snapshot_result");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    let m = fs.mnt.display().to_string();
    let cases: [(&[&str], i32, &str); 4] = [
        (&["--", "true"], 0, "ok"),
        (&["--", "sh", "-c", "exit 7"], 7, "exited with status 7"),
        (
            &["--max-frozen", "1s", "--", "sleep", "5"],
            124,
            "frozen window of 1s expired",
        ),
        (&["--", "/nonexistent"], 127, "cannot run /nonexistent"),
    ];
    for format in ["text", "json"] {
        for (tail, code, says) in cases {
            env.set_config(&format!("log_format = \"{format}\"\n"));
            let _ = fs::remove_file(&env.log);
            let mut args = vec!["snapshot", "-m", &m];
            args.extend_from_slice(tail);
            let run = env.run(&args);
            assert_eq!(run.code, Some(code), "{tail:?}: {run:?}");
            assert!(!fs.frozen());
            let end = run
                .log
                .lines()
                .find(|l| l.contains("snapshot finished") || l.contains("\"run_end\""))
                .unwrap_or_else(|| panic!("{tail:?}: no end line in {}", run.log));
            assert!(end.contains(says), "{tail:?}: {end}");
            if code == 0 {
                assert!(
                    end.contains(": ok") || end.contains("\"result\":\"ok\""),
                    "{end}"
                );
                assert_eq!(run.stderr, "", "{tail:?}");
            } else {
                assert!(!end.contains(": ok"), "{tail:?}: {end}");
                if format == "json" {
                    assert!(end.contains("\"result\":\"failed\""), "{end}");
                    assert!(end.contains("\"level\":\"error\""), "{end}");
                }
                assert_eq!(run.stderr.lines().count(), 1, "{tail:?}: {}", run.stderr);
                assert_has(&run.stderr, says);
            }
        }
    }
}

#[test]
fn a_snapshot_refused_for_its_config_or_without_root_exits_125() {
    let env = Env::new();
    env.set_config("timeout = \"5 s\"\n");
    let run = env.run(&["snapshot", "-m", "/", "--", "sh", "-c", "exit 3"]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert_has(&run.stderr, "timeout");
    // Not root (as root: run as nobody, the env readable to it).
    env.set_config("");
    let mut cmd = env.command(&["snapshot", "-m", "/", "--", "sh", "-c", "exit 3"]);
    if nix::unistd::geteuid().is_root() {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        fs::set_permissions(env.path(), fs::Permissions::from_mode(0o755)).unwrap();
        cmd.uid(65534).gid(65534).env("HOME", "/nonexistent");
    }
    let run = env.finish(cmd.output().unwrap(), Instant::now());
    assert_eq!(run.code, Some(125), "{run:?}");
    assert_has(&run.stderr, "needs root");
}

#[test]
#[ignore = "needs root"]
fn thaw_fs_thaws_before_it_waits_for_a_stuck_runs_lock() {
    let _exclusive = freezing_test("thaw_first");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    env.tracing_hook("10-a", "");
    env.set_config("phase_timeout = \"10s\"\n");
    let m = fs.mnt.display().to_string();
    let run = env.run(&["freeze", "--fs", "-m", &m]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(fs.frozen());
    // A stuck run holds the state dir's lock.
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(env.state.join("lock"))
        .unwrap();
    let stuck = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let mut thaw = env
        .command(&["thaw", "--fs"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || !fs.frozen()),
        "still frozen while the thaw waits for the lock"
    );
    assert!(
        thaw.try_wait().unwrap().is_none(),
        "the thaw did not wait for the lock at all"
    );
    let run = env.finish(thaw.wait_with_output().unwrap(), start);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(
        &run.stderr,
        "1 of 1 filesystem(s) thawed, but no thaw hook ran (thaw refused, no hook run: another fsfreeze-hook run holds",
    );
    assert_eq!(env.trace(), ["10-a freeze rollback=0"]);
    drop(stuck);
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        env.trace(),
        ["10-a freeze rollback=0", "10-a thaw rollback=0"]
    );
}

#[test]
#[ignore = "needs root"]
fn a_directory_on_the_way_swapped_for_a_link_does_not_keep_the_filesystem_frozen() {
    let _exclusive = freezing_test("swapped_path");
    let env = Env::new();
    let way = env.path().join("way");
    fs::create_dir(&way).unwrap();
    let fs = LoopFs::make(env.path(), "ext4", &way.join("mnt"));
    env.tracing_hook("10-a", "");
    let m = fs.mnt.display().to_string();
    let run = env.run(&["freeze", "--fs", "-m", &m]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(fs.frozen());
    // Whoever owns `way` swaps it for a link to a directory of their own,
    // with a `mnt` in it on another (unfrozen) filesystem.
    let real = env.path().join("way.real");
    let decoy = env.path().join("decoy");
    fs::create_dir_all(decoy.join("mnt")).unwrap();
    fs::rename(&way, &real).unwrap();
    std::os::unix::fs::symlink(&decoy, &way).unwrap();
    let thaw = env.run(&["thaw", "--fs"]);
    // Put the path back before any assertion: the test's own guard thaws
    // and unmounts by it.
    fs::remove_file(&way).unwrap();
    fs::rename(&real, &way).unwrap();
    assert!(!fs.frozen(), "the filesystem stayed frozen: {thaw:?}");
    assert_eq!(thaw.code, Some(0), "{thaw:?}");
    assert_has(
        &thaw.log,
        &format!(
            "{m} no longer leads to the filesystem frozen there; it was reached at {}",
            real.join("mnt").display()
        ),
    );
    assert_eq!(
        env.trace(),
        ["10-a freeze rollback=0", "10-a thaw rollback=0"]
    );
}

#[test]
#[ignore = "needs root"]
fn a_command_run_from_a_terminal_may_prompt() {
    let _exclusive = freezing_test("terminal_prompt");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    env.tracing_hook("10-app", "");
    let got = env.path().join("got");
    // COMMAND reads a line from the terminal while frozen; `script` gives
    // the run a terminal and types the line.
    let line = format!(
        "{bin} --config {c} --hooks-dir {h} --log-file {l} --state-dir {s} snapshot --max-frozen 20s -m {m} -- sh -c 'read answer; echo \"$answer\" > {g}'; echo \"status=$?\"",
        bin = crate::common::BIN,
        c = env.config.display(),
        h = env.hooks.display(),
        l = env.log.display(),
        s = env.state.display(),
        m = fs.mnt.display(),
        g = got.display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script(1), from util-linux");
    std::thread::sleep(Duration::from_millis(500));
    use std::io::Write;
    child.stdin.as_mut().unwrap().write_all(b"yes\n").unwrap();
    let start = Instant::now();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("status=0"), "{text:?}");
    // Not the 20 s a COMMAND stopped by SIGTTIN would wait.
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(fs::read_to_string(&got).unwrap(), "yes\n");
    assert!(!fs.frozen());
}

#[test]
#[ignore = "needs root"]
fn a_snapshot_thawed_by_someone_else_while_command_ran_exits_123() {
    let _exclusive = freezing_test("torn_snapshot");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    env.tracing_hook("10-app", "");
    let m = fs.mnt.display().to_string();
    // COMMAND succeeds, but the filesystem was thawed under it (as another
    // qemu-ga's thaw, `fsfreeze -u` or a guard would): its copy may be torn.
    let cmd = format!("fsfreeze -u '{m}'; exit 0");
    let run = env.run(&["snapshot", "-m", &m, "--", "sh", "-c", &cmd]);
    assert_eq!(run.code, Some(123), "{run:?}");
    assert_has(
        &run.stderr,
        &format!("{m} was no longer frozen at the thaw: someone else thawed it"),
    );
    assert_has(&run.log, "what was copied meanwhile may be torn");
    assert!(!fs.frozen());
    // Nothing is left recorded: the next freeze is not refused.
    let status = env.run(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_str(status.stdout.trim()).unwrap();
    assert_eq!(json["held"], false, "{}", status.stdout);
    // Untouched, the same snapshot is COMMAND's status.
    let run = env.run(&["snapshot", "-m", &m, "--", "sh", "-c", "exit 0"]);
    assert_eq!(run.code, Some(0), "{run:?}");
}

#[test]
#[ignore = "needs root"]
fn a_snapshot_says_at_once_when_a_thaw_of_ours_thaws_it_while_command_runs() {
    let _exclusive = freezing_test("torn_snapshot_seen");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    let m = fs.mnt.display().to_string();
    let ours = format!(
        "'{BIN}' --config '{}' --hooks-dir '{}' --log-file '{}' --state-dir '{}'",
        env.config.display(),
        env.hooks.display(),
        env.log.display(),
        env.state.display()
    );
    // qemu-ga's thaw thaws every filesystem, then runs its hook's thaw:
    // a stand-in named qemu-ga does the same.
    let agent = env.path().join("qemu-ga");
    fs::copy("/bin/bash", &agent).unwrap();
    let err = env.path().join("snapshot.err");
    let seen = env.path().join("seen");
    for (thawer, who) in [
        (
            format!("{ours} thaw --fs"),
            "`fsfreeze-hook thaw --fs` (pid ",
        ),
        (
            format!(
                "'{}' -c \"fsfreeze -u '{m}'; {ours} thaw; true\"",
                agent.display()
            ),
            "qemu-ga's thaw (pid ",
        ),
    ] {
        // COMMAND starts the thaw (which then waits for the snapshot's
        // lock), and looks for the snapshot's word while it still runs.
        let _ = fs::remove_file(&seen);
        let cmd = format!(
            "{thawer} >/dev/null 2>&1 & t=$!\n\
             for i in $(seq 100); do\n\
               if grep -q 'thawed by' '{err}'; then echo yes >'{seen}'; break; fi\n\
               sleep 0.2\n\
             done\n\
             kill $t; wait $t; exit 0",
            err = err.display(),
            seen = seen.display()
        );
        let out = env
            .command(&["snapshot", "-m", &m, "--", "sh", "-c", &cmd])
            .stderr(fs::File::create(&err).unwrap())
            .output()
            .unwrap();
        let stderr = fs::read_to_string(&err).unwrap();
        assert_eq!(out.status.code(), Some(123), "{stderr}");
        assert!(seen.exists(), "said only after COMMAND: {stderr}");
        assert_has(
            &stderr,
            &format!("fsfreeze-hook: error: the filesystems were thawed by {who}"),
        );
        assert_has(&stderr, "while sh still runs: what it copies may be torn");
        assert_has(&env.log_text(), "error: the filesystems were thawed by");
        assert!(!fs.frozen());
    }
}

#[test]
#[ignore = "needs root"]
fn command_freezes_refuses_a_mountpoint_that_is_not_on_device_mapper() {
    // Nothing in COMMAND would freeze a loop-mounted ext4: refused before
    // any hook runs, nothing frozen, COMMAND not run.
    let _exclusive = freezing_test("command_freezes_refusal");
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let fs = LoopFs::ext4(env.path());
    let ran = env.path().join("ran");
    let mnt = fs.mnt.to_str().unwrap();
    let touch = format!("touch {}", ran.display());
    let run = env.run(&[
        "snapshot",
        "--command-freezes",
        "-m",
        mnt,
        "--",
        "sh",
        "-c",
        &touch,
    ]);
    assert_eq!(run.code, Some(125), "{run:?}");
    assert!(
        run.stderr.contains("is not on device-mapper"),
        "{}",
        run.stderr
    );
    assert!(env.trace().is_empty(), "a hook ran: {:?}", env.trace());
    assert!(!ran.exists(), "COMMAND ran");
}

/// `thaw --fs --all`, the recovery `check` gives for a guest left frozen by
/// anyone: a filesystem frozen by someone else (`fsfreeze -f`, nothing
/// recorded in our journal) is thawed, and the command succeeds. (FITHAW of
/// every other filesystem qemu-ga would freeze finds it not frozen.)
#[test]
#[ignore = "needs root"]
fn thaw_fs_all_thaws_a_filesystem_someone_else_froze() {
    let _exclusive = freezing_test("thaw_all");
    let env = Env::new();
    let fs = LoopFs::ext4(env.path());
    let m = fs.mnt.display().to_string();
    let frozen = std::process::Command::new("fsfreeze")
        .args(["-f", &m])
        .status()
        .unwrap();
    assert!(frozen.success() && fs.frozen());
    let run = env.run(&["thaw", "--fs", "--all"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(!fs.frozen(), "{m} still frozen: {run:?}");
    assert_has(&run.log, &format!("thawed {m}"));
}
