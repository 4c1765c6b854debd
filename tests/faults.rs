//! Hostile and broken input: each case gets a clear error and loses nothing.
//! The README's "what happens when" table names these tests.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::require_root;
use crate::common::{BIN, Env, alive, assert_has, assert_lines, eventually, read_pid, signal};

const NOBODY: u32 = 65534;

fn chown_nobody(path: &Path) {
    nix::unistd::chown(path, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

// ---- trust ----------------------------------------------------------------

#[test]
#[ignore = "needs root"]
fn untrusted_hook_owned_by_another_user_fails_the_freeze_and_names_the_rule() {
    require_root("untrusted_hook_owner");
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let evil = env.tracing_hook("20-evil", "");
    chown_nobody(&evil);
    env.tracing_hook("30-c", "");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let expect = format!(
        "20-evil was not run: it is not trusted: {} is owned by uid 65534, not by root",
        evil.display()
    );
    assert_has(&run.stderr, &expect);
    assert_has(&run.stderr, "rolled back 10-a");
    // The untrusted hook never ran, not even for the rollback.
    assert_eq!(
        env.trace(),
        ["10-a freeze rollback=0", "10-a thaw rollback=1"]
    );
    assert_lines(
        &run.log,
        &format!("refused {} freeze: it is not trusted", evil.display()),
        1,
    );
}

#[test]
fn untrusted_hook_under_continue_is_logged_and_skipped() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let loose = env.tracing_hook("20-group-writable", "");
    chmod(&loose, 0o775);
    env.tracing_hook("30-c", "");
    env.set_config("on_error = \"continue\"\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        env.trace(),
        ["10-a freeze rollback=0", "30-c freeze rollback=0"]
    );
    let refused = assert_lines(&run.log, "refused ", 1);
    assert!(
        refused[0].contains("is writable by group (mode 0775; chmod go-w)"),
        "{}",
        refused[0]
    );
}

/// Not as root, the invoking user may own hooks too, but nobody else.
#[test]
#[ignore = "needs root"]
fn normal_user_runs_own_hooks_but_not_another_users() {
    require_root("normal_user_trust");
    let dir = tempfile::Builder::new()
        .prefix("fsfreeze-hook-nobody.")
        .tempdir()
        .unwrap();
    chmod(dir.path(), 0o755);
    let home = dir.path().join("home");
    let hooks = home.join("hooks");
    fs::create_dir_all(&hooks).unwrap();
    let trace = home.join("trace");
    for (name, owner) in [("10-mine", NOBODY), ("20-root", 0), ("30-other", 4242)] {
        let hook = hooks.join(name);
        fs::write(
            &hook,
            format!("#!/bin/sh\necho {name} >> '{}'\n", trace.display()),
        )
        .unwrap();
        chmod(&hook, 0o755);
        nix::unistd::chown(&hook, Some(owner.into()), Some(owner.into())).unwrap();
    }
    chown_nobody(&home);
    chown_nobody(&hooks);
    let out = Command::new(BIN)
        .args([
            "freeze",
            "--on-error",
            "continue",
            "--hooks-dir",
            hooks.to_str().unwrap(),
        ])
        .env_clear()
        .env("HOME", &home)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(fs::read_to_string(&trace).unwrap(), "10-mine\n20-root\n");
    let log =
        fs::read_to_string(home.join(".local/state/fsfreeze-hook/fsfreeze-hook.log")).unwrap();
    let refused = assert_lines(&log, "refused ", 1);
    assert!(
        refused[0].contains("30-other is owned by uid 4242, not by root or uid 65534"),
        "{}",
        refused[0]
    );
}

#[test]
fn hook_symlinked_into_a_writable_dir_is_refused() {
    let env = Env::new();
    let open_dir = env.path().join("open");
    fs::create_dir(&open_dir).unwrap();
    let target = open_dir.join("hook");
    fs::write(&target, "#!/bin/sh\nexit 0\n").unwrap();
    chmod(&target, 0o755);
    chmod(&open_dir, 0o777);
    symlink(&target, env.hooks.join("10-link")).unwrap();
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let expect = format!(
        "{} is writable by group and others (mode 0777",
        open_dir.display()
    );
    assert_has(&run.stderr, &expect);
}

#[test]
fn hooks_dir_writable_by_others_is_refused_and_nothing_runs() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    chmod(&env.hooks, 0o777);
    let why = format!(
        "hooks dir is not trusted: {} is writable by group and others",
        env.hooks.display()
    );
    refused_before_any_hook(&env, &why);
}

/// The run stops before any hook (exit 3) and says `why` on stderr.
fn refused_before_any_hook(env: &Env, why: &str) {
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_has(&run.stderr, why);
    assert!(env.trace().is_empty(), "no hook may run");
}

/// A world-writable dir counts when it is sticky and the entry below it is
/// trusted: a root-owned dir under /tmp is fine (every test relies on that),
/// a user-owned one is not.
#[test]
#[ignore = "needs root"]
fn user_owned_dir_under_sticky_tmp_is_refused() {
    require_root("user_owned_dir_under_tmp");
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let run = env.run(&["freeze"]);
    assert_eq!(
        run.code,
        Some(0),
        "root-owned temp dir under /tmp is trusted: {run:?}"
    );
    let user_dir = tempfile::Builder::new()
        .prefix("fsfreeze-hook-user-owned.")
        .tempdir()
        .unwrap();
    chown_nobody(user_dir.path());
    let hooks = user_dir.path().join("hooks");
    fs::create_dir(&hooks).unwrap();
    let run = env.run(&["freeze", "--hooks-dir", hooks.to_str().unwrap()]);
    assert_eq!(run.code, Some(3), "{run:?}");
    let expect = format!(
        "{} is owned by uid 65534, not by root",
        user_dir.path().display()
    );
    assert_has(&run.stderr, &expect);
}

#[test]
fn config_writable_by_others_is_refused() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    chmod(&env.config, 0o666);
    let why = format!(
        "config is not trusted, no hook run: {} is writable by group and others",
        env.config.display()
    );
    refused_before_any_hook(&env, &why);
}

// ---- what a hook file can be ------------------------------------------------

#[test]
fn missing_interpreter_is_named() {
    let env = Env::new();
    let path = env.hooks.join("10-py");
    fs::write(&path, "#!/usr/bin/python9 -u\nprint('hi')\n").unwrap();
    chmod(&path, 0o755);
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(
        &run.stderr,
        "10-py was not run: it names interpreter /usr/bin/python9 in its #! line, which does not exist",
    );
}

#[test]
fn overlong_shebang_and_binary_garbage_are_refused() {
    let env = Env::new();
    let long = env.hooks.join("10-long");
    fs::write(&long, format!("#!/bin/sh {}\nexit 0\n", "x".repeat(300))).unwrap();
    chmod(&long, 0o755);
    let garbage = env.hooks.join("20-garbage");
    fs::write(&garbage, b"\x00\x13\x37\xff garbage \x00\x00").unwrap();
    chmod(&garbage, 0o755);
    env.set_config("on_error = \"continue\"\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let refused = assert_lines(&run.log, "refused ", 2);
    assert!(
        refused[0].ends_with("has a #! line longer than 255 bytes, the kernel's limit"),
        "{}",
        refused[0]
    );
    assert!(
        refused[1].ends_with("is binary data: neither a #! script nor an ELF executable"),
        "{}",
        refused[1]
    );
}

#[test]
fn socket_in_the_hooks_dir_is_skipped() {
    let env = Env::new();
    let _listener = UnixListener::bind(env.hooks.join("10-socket")).unwrap();
    env.tracing_hook("20-a", "");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_lines(&run.log, "10-socket: not a regular file (socket)", 1);
    assert_eq!(env.trace(), ["20-a freeze rollback=0"]);
}

#[test]
#[ignore = "needs root"]
fn unreadable_hooks_dir_is_a_clear_error() {
    require_root("unreadable_hooks_dir");
    // Root reads any dir, so the run is made as nobody, in nobody's own dir.
    let dir = tempfile::Builder::new()
        .prefix("fsfreeze-hook-unreadable.")
        .tempdir()
        .unwrap();
    chmod(dir.path(), 0o755);
    let home = dir.path().join("home");
    fs::create_dir(&home).unwrap();
    let hooks = home.join("hooks");
    fs::create_dir(&hooks).unwrap();
    chown_nobody(&home);
    chown_nobody(&hooks);
    chmod(&hooks, 0o000);
    let out = Command::new(BIN)
        .args(["freeze", "--hooks-dir", hooks.to_str().unwrap()])
        .env_clear()
        .env("HOME", &home)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot read hooks dir {}: Permission denied",
            hooks.display()
        )),
        "{err}"
    );
}

#[test]
fn ten_thousand_hooks_run_in_order() {
    let env = Env::new();
    let target = env.path().join("shared-hook");
    fs::write(
        &target,
        format!(
            "#!/bin/sh\necho \"${{FSFREEZE_HOOK_PATH##*/}}\" >> '{}'\n",
            env.trace.display()
        ),
    )
    .unwrap();
    chmod(&target, 0o755);
    for i in 0..10_000 {
        symlink(&target, env.hooks.join(format!("{i:05}"))).unwrap();
    }
    let start = Instant::now();
    let run = env.run(&["freeze", "--timeout", "0"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let trace = env.trace();
    assert_eq!(trace.len(), 10_000);
    assert!(trace.windows(2).all(|w| w[0] < w[1]), "byte order");
    assert_eq!(trace[0], "00000");
    assert_eq!(trace[9_999], "09999");
    // A generous bound: about 1 ms a hook on the 2-core test machines.
    assert!(
        start.elapsed() < Duration::from_secs(240),
        "{:?}",
        start.elapsed()
    );
}

// ---- output -------------------------------------------------------------------

#[test]
fn hook_printing_100_mb_is_capped_at_the_output_limit() {
    let env = Env::new();
    env.hook(
        "10-flood",
        "head -c 104857600 /dev/zero | tr '\\0' 'x'\necho done-flooding >&2",
    );
    env.tracing_hook("20-after", "");
    let start = Instant::now();
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
    let log_size = fs::metadata(&env.log).unwrap().len();
    assert!(
        log_size < (1 << 20) + 64 * 1024,
        "log grew to {log_size} bytes"
    );
    assert!(log_size > (1 << 20), "the first MiB is kept: {log_size}");
    assert_lines(
        &run.log,
        "10-flood: output cut at 1 MiB (output_limit); 99.0 MiB more discarded",
        1,
    );
    assert_eq!(env.trace(), ["20-after freeze rollback=0"]);
}

#[test]
fn output_limit_is_configurable() {
    let env = Env::new();
    env.hook("10-chatty", "head -c 5000 /dev/zero | tr '\\0' '~'");
    env.set_config("output_limit = \"1KiB\"\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(run.log.matches('~').count(), 1024);
    assert_lines(
        &run.log,
        "output cut at 1 KiB (output_limit); 3.9 KiB more discarded",
        1,
    );
    env.set_config("output_limit = \"0\"\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.log.matches('~').count(), 1024 + 5000, "0: no limit");
}

#[test]
fn hook_that_closes_stdout_early_still_logs_stderr() {
    let env = Env::new();
    env.hook(
        "10-closer",
        "exec 1>&-\nsleep 0.2\necho 'still here on stderr' >&2",
    );
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_lines(&run.log, "still here on stderr", 1);
}

#[test]
fn hook_that_daemonizes_with_setsid_does_not_hold_up_the_runner() {
    let env = Env::new();
    let pid = env.path().join("daemon.pid");
    env.hook(
        "10-daemon",
        &format!(
            "setsid sh -c 'echo $$ > \"{pid}\"; sleep 3; echo \"daemon says hello\"' &\nexit 0",
            pid = pid.display()
        ),
    );
    let start = Instant::now();
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    // Far less than the daemon's 3 s (a run takes some 50 ms), with room
    // for a loaded machine.
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let daemon = read_pid(&pid);
    assert!(alive(daemon));
    assert!(
        eventually(Duration::from_secs(15), || env
            .log_text()
            .contains("daemon says hello")),
        "{}",
        env.log_text()
    );
    assert_lines(&run.log, "left processes holding its output open", 1);
}

#[test]
fn a_timed_out_hook_takes_what_it_started_in_new_sessions_with_it() {
    // 10-keep succeeds and leaves a lock holder in a session of its own:
    // left alone. 20-hang starts one with setsid (its child) and one by a
    // double fork (an orphan), then hangs past its timeout: both go with it.
    let env = Env::new();
    let p = |n: &str| env.path().join(n).display().to_string();
    env.tracing_hook(
        "10-keep",
        &format!(
            "[ \"$1\" = freeze ] && setsid sh -c 'echo $$ > {}; exec sleep 30' </dev/null >/dev/null 2>&1 &\nexit 0",
            p("keep.pid")
        ),
    );
    env.tracing_hook(
        "20-hang",
        &format!(
            "[ \"$1\" = freeze ] || exit 0\n\
             setsid sh -c 'echo $$ > {a}; exec sleep 30' </dev/null >/dev/null 2>&1 &\n\
             ( setsid sh -c 'echo $$ > {b}; exec sleep 30' </dev/null >/dev/null 2>&1 & )\n\
             while [ ! -s {a} ] || [ ! -s {b} ]; do sleep 0.05; done\n\
             sleep 30",
            a = p("child.pid"),
            b = p("orphan.pid")
        ),
    );
    env.set_config(
        "timeout = \"2s\"\nkill_grace = \"200ms\"\n[hooks.\"10-keep\"]\ntimeout = \"10s\"\n",
    );
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(&run.log, "20-hang");
    let keep = read_pid(&env.path().join("keep.pid"));
    for stray in ["child.pid", "orphan.pid"] {
        let pid = read_pid(&env.path().join(stray));
        assert!(
            eventually(Duration::from_secs(5), || !alive(pid)),
            "{stray} ({pid}) outlived the hook that was ended"
        );
    }
    assert!(
        alive(keep),
        "a lock holder of a hook that succeeded was ended"
    );
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(keep),
        nix::sys::signal::Signal::SIGKILL,
    );
}

#[test]
fn hook_killed_by_sigkill_fails_the_freeze() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.hook("20-dies", "[ \"$1\" = freeze ] && kill -KILL $$\nexit 0");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1));
    assert_has(&run.stderr, "20-dies was killed by SIGKILL after");
    assert_lines(&run.log, "20-dies finished with status=137", 1);
}

/// A log on a full filesystem: a tiny tmpfs the test mounts and fills.
#[test]
#[ignore = "needs root"]
fn log_on_a_full_filesystem_never_fails_a_phase() {
    require_root("log_on_full_fs");
    let env = Env::new();
    let mnt = env.path().join("full");
    fs::create_dir(&mnt).unwrap();
    let ok = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            // mode: not tmpfs's 1777, where the log would not be opened
            // (another user could plant a link or file at its name).
            "size=16k,mode=0755",
            "tmpfs",
            mnt.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let log = mnt.join("hook.log");
    fs::write(&log, "").unwrap();
    let filler = fs::write(mnt.join("filler"), vec![b'.'; 64 * 1024]);
    assert!(filler.is_err(), "the tmpfs must be full");
    env.tracing_hook("10-a", "echo some output");
    env.tracing_hook("20-b", "");
    let run = env.run(&["freeze", "--log-file", log.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(env.trace().len(), 2);
    assert!(
        run.stderr.contains("No space left on device") || Path::new("/dev/log").exists(),
        "the fallback (stderr without syslog) says why: {}",
        run.stderr
    );
    assert_eq!(
        env.run(&["thaw", "--log-file", log.to_str().unwrap()]).code,
        Some(0)
    );
}

#[test]
fn state_dir_that_vanished_between_freeze_and_thaw() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.tracing_hook("20-b", "");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    fs::remove_dir_all(&env.state).unwrap();
    env.clear_trace();
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        env.trace(),
        ["20-b thaw rollback=0", "10-a thaw rollback=0"],
        "every hook, as stock"
    );
    assert_lines(&run.log, "no journal (first run since boot)", 1);
    assert!(env.state.join("journal").exists(), "recreated");
}

#[test]
fn journal_from_another_version_is_treated_as_absent() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    fs::create_dir_all(&env.state).unwrap();
    fs::write(
        env.state.join("journal"),
        "fsfreeze-hook journal 7\nidle 1 thaw\n",
    )
    .unwrap();
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(env.trace(), ["10-a thaw rollback=0"]);
    assert_lines(
        &run.log,
        "written by another version (fsfreeze-hook journal 7)",
        1,
    );
}

// ---- config ---------------------------------------------------------------------

#[test]
fn config_out_of_range_duplicate_keys_and_non_utf8_are_clear_errors() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    for (text, needle) in [
        (
            b"timeout = \"25h\"\n".to_vec(),
            ":1: key `timeout`: \"25h\" is out of range (at most 24h)",
        ),
        (
            b"kill_grace = \"11m\"\n".to_vec(),
            ":1: key `kill_grace`: \"11m\" is out of range (at most 10m)",
        ),
        (
            b"output_limit = \"2GiB\"\n".to_vec(),
            ":1: key `output_limit`: \"2GiB\" is out of range (at most 1 GiB)",
        ),
        (
            b"timeout = \"1s\"\ntimeout = \"2s\"\n".to_vec(),
            ":2: not valid TOML: duplicate key",
        ),
        (
            b"log_file = \"/tmp/\xff.log\"\n".to_vec(),
            ":1: not valid UTF-8",
        ),
    ] {
        fs::write(&env.config, &text).unwrap();
        let run = env.run(&["freeze"]);
        assert_eq!(run.code, Some(3), "{needle}");
        assert!(run.stderr.contains(needle), "{needle}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1);
    }
    assert!(env.trace().is_empty());
}

// ---- the environment hooks start with ---------------------------------------

#[test]
fn hooks_get_a_default_path_the_agents_umask_at_least_022_and_inherit_resource_limits() {
    let env = Env::new();
    let out = env.path().join("seen");
    env.hook(
        "10-env",
        &format!(
            "echo \"$PATH\" > '{o}'\nulimit -n >> '{o}'\numask >> '{o}'",
            o = out.display()
        ),
    );
    // The caller's umask is passed on (RHEL's unit gives the agent 0077, and
    // the stock script its hooks), but never one looser than 022; its limits
    // are passed on.
    for (given, seen) in [("077", "0077"), ("027", "0027"), ("000", "0022")] {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(format!("umask {given} && ulimit -n 777 && exec \"$@\""))
            .arg("sh")
            .arg(BIN)
            .args(env.command(&["freeze"]).get_args())
            .env_clear();
        let status = cmd.status().unwrap();
        assert!(status.success());
        assert_eq!(
            fs::read_to_string(&out).unwrap(),
            format!("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n777\n{seen}\n"),
            "umask {given}"
        );
        assert!(env.command(&["thaw"]).status().unwrap().success());
    }
}

// ---- signals ----------------------------------------------------------------------

#[test]
fn sigint_and_sighup_mid_freeze_roll_back_and_exit_128_plus_signal() {
    use nix::sys::signal::Signal::*;
    // And every other signal whose default action would end the runner
    // with no rollback (signal(7)).
    for sig in [
        SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM, SIGQUIT, SIGPWR, SIGVTALRM, SIGPROF, SIGIO,
        SIGXCPU, SIGSTKFLT, SIGSEGV,
    ] {
        let code = 128 + sig as i32;
        let env = Env::new();
        env.tracing_hook("10-a", "");
        let started = env.hanging_freeze_hook("20-slow");
        env.set_config("kill_grace = \"200ms\"\n");
        let (child, start) = env.spawn_until(&["freeze"], &started);
        signal(&child, sig);
        let run = env.finish(child.wait_with_output().unwrap(), start);
        assert_eq!(run.code, Some(code), "{sig}: {run:?}");
        assert_eq!(
            env.trace(),
            [
                "10-a freeze rollback=0",
                "20-slow freeze rollback=0",
                "20-slow thaw rollback=1",
                "10-a thaw rollback=1"
            ],
            "{sig}"
        );
        assert_has(&run.log, &format!("interrupted by {}", sig.as_str()));
    }
}

#[test]
fn a_stop_signal_ends_the_wait_for_the_lock() {
    // Another run holds the lock (as a snapshot whose COMMAND copies for
    // minutes does): a freeze or thaw that waits for it still obeys
    // SIGTERM (a service stop) and ^C, long before phase_timeout.
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.set_config("phase_timeout = \"10m\"\n");
    fs::create_dir_all(&env.state).unwrap();
    let holding = env.path().join("holding");
    let mut holder = Command::new("flock")
        .arg(env.state.join("lock"))
        .args(["-c", &format!("touch '{}'; sleep 60", holding.display())])
        .spawn()
        .unwrap();
    assert!(eventually(Duration::from_secs(5), || holding.exists()));
    for (phase, sig) in [
        ("freeze", nix::sys::signal::Signal::SIGTERM),
        ("thaw", nix::sys::signal::Signal::SIGINT),
    ] {
        let start = Instant::now();
        let child = env
            .command(&[phase])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It waits once it has the lock file open (its signals are its
        // own long before: the first thing it does).
        let lock = env.state.join("lock");
        let waiting = || {
            fs::read_dir(format!("/proc/{}/fd", child.id())).is_ok_and(|fds| {
                fds.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
                    .any(|target| target == lock)
            })
        };
        assert!(eventually(Duration::from_secs(10), waiting));
        signal(&child, sig);
        let run = env.finish(child.wait_with_output().unwrap(), start);
        assert_eq!(run.code, Some(128 + sig as i32), "{phase}: {run:?}");
        assert_has(
            &run.stderr,
            &format!(
                "{phase} interrupted: {} came while waiting for the lock; no hook run",
                sig.as_str()
            ),
        );
        assert!(run.elapsed < Duration::from_secs(30), "{run:?}");
    }
    assert!(env.trace().is_empty(), "no hook ran: {:?}", env.trace());
    let _ = holder.kill();
    let _ = holder.wait();
}

#[test]
fn a_real_time_signal_to_the_runner_is_ignored() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let started = env.path().join("20-b.started");
    env.tracing_hook(
        "20-b",
        &format!(
            "[ \"$1\" = freeze ] && {{ touch '{}'; sleep 1; }}\nexit 0",
            started.display()
        ),
    );
    let (child, start) = env.spawn_until(&["freeze"], &started);
    let rt = libc::SIGRTMIN() + 3;
    let kill = Command::new("sh")
        .arg("-c")
        .arg(format!("kill -{rt} {}", child.id()))
        .status()
        .unwrap();
    assert!(kill.success());
    let run = env.finish(child.wait_with_output().unwrap(), start);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        env.trace(),
        ["10-a freeze rollback=0", "20-b freeze rollback=0"]
    );
    // As root the freeze left a guard: the thaw stands it down.
    env.run(&["thaw"]);
}

// ---- the whole trust chain (as root: other users' files and links) --------

/// A root-owned program that leaves a trace: what an attacker would point a
/// link at ("any root-owned executable").
fn root_program(env: &Env) -> std::path::PathBuf {
    let bin = env.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let program = bin.join("root-program");
    fs::write(
        &program,
        format!(
            "#!/bin/sh\necho \"root-program $1\" >> '{}'\n",
            env.trace.display()
        ),
    )
    .unwrap();
    chmod(&program, 0o755);
    program
}

fn lchown_nobody(p: &Path) {
    std::os::unix::fs::lchown(p, Some(NOBODY), Some(NOBODY)).unwrap();
}

#[test]
#[ignore = "needs root"]
fn sticky_world_writable_hooks_dir_is_refused_by_freeze_list_and_check() {
    require_root("sticky_hooks_dir");
    for mode in [0o1777, 0o3775] {
        let env = Env::new();
        let program = root_program(&env);
        env.tracing_hook("10-a", "");
        // Another user's entry: a symlink to a root-owned program.
        let link = env.hooks.join("20-theirs");
        symlink(&program, &link).unwrap();
        lchown_nobody(&link);
        if mode == 0o3775 {
            nix::unistd::chown(&env.hooks, None, Some(NOBODY.into())).unwrap();
        }
        chmod(&env.hooks, mode);
        let why = format!(
            "hooks dir is not trusted: {} is writable by",
            env.hooks.display()
        );
        refused_before_any_hook(&env, &why);
        let list = env.run(&["list"]);
        assert_has(&list.stdout, &why);
        let rehearse = env.run(&["rehearse"]);
        assert_eq!(rehearse.code, Some(3), "{rehearse:?}");
        assert!(env.trace().is_empty(), "{:?}", env.trace());
    }
}

#[test]
#[ignore = "needs root"]
fn a_hook_symlink_owned_by_another_user_is_refused() {
    require_root("foreign_hook_link");
    let env = Env::new();
    let program = root_program(&env);
    let link = env.hooks.join("20-theirs");
    symlink(&program, &link).unwrap();
    lchown_nobody(&link);
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(
        &run.stderr,
        &format!("{} is owned by uid {NOBODY}, not by root", link.display()),
    );
    assert!(env.trace().is_empty(), "{:?}", env.trace());
    let list = env.run(&["list"]);
    assert_has(&list.stdout, "20-theirs");
    assert_has(&list.stdout, "is owned by uid 65534");
}

/// `20-app -> <app>/freeze-hook`, in a dir of the application's user, who
/// replaces the file there with a link to a root-owned program.
#[test]
#[ignore = "needs root"]
fn a_link_in_another_users_dir_on_the_way_to_a_hook_is_refused() {
    require_root("foreign_link_in_chain");
    let env = Env::new();
    let program = root_program(&env);
    let app = env.path().join("srv-app");
    fs::create_dir(&app).unwrap();
    chmod(&app, 0o755);
    nix::unistd::chown(&app, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let theirs = app.join("freeze-hook");
    symlink(&program, &theirs).unwrap();
    lchown_nobody(&theirs);
    symlink(&theirs, env.hooks.join("20-app")).unwrap();
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(
        &run.stderr,
        &format!("{} is owned by uid {NOBODY}", app.display()),
    );
    assert!(env.trace().is_empty(), "{:?}", env.trace());
    let list = env.run(&["list"]);
    assert!(!list.stdout.contains("20-app  runs"), "{}", list.stdout);
    // Root's own link in a root-owned dir to the same program: runs.
    fs::remove_file(env.hooks.join("20-app")).unwrap();
    symlink(&program, env.hooks.join("20-app")).unwrap();
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(env.trace(), ["root-program freeze"]);
}

#[test]
#[ignore = "needs root"]
fn a_config_reached_through_another_users_link_is_refused() {
    require_root("foreign_config_link");
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let link = env.path().join("conf-link");
    symlink(&env.config, &link).unwrap();
    lchown_nobody(&link);
    let run = env
        .command(&["freeze"])
        .arg("--config")
        .arg(&link)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    assert_has(
        &String::from_utf8_lossy(&run.stderr),
        &format!(
            "config is not trusted, no hook run: {} is owned by uid {NOBODY}",
            link.display()
        ),
    );
    assert!(env.trace().is_empty());
}

/// 20-odd, run by `interpreter` (its #! line), tracing its phase; after a
/// tracing 10-a. Returns its path.
fn hook_run_by(env: &Env, interpreter: &Path) -> std::path::PathBuf {
    env.tracing_hook("10-a", "");
    let hook = env.hooks.join("20-odd");
    fs::write(
        &hook,
        format!(
            "#!{}\necho \"20-odd $1\" >> '{}'\n",
            interpreter.display(),
            env.trace.display()
        ),
    )
    .unwrap();
    chmod(&hook, 0o755);
    hook
}

/// After a fix: a new cycle runs 20-odd.
fn runs_once_fixed(env: &Env) {
    env.run(&["thaw"]);
    env.clear_trace();
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        env.trace().iter().any(|l| l == "20-odd freeze"),
        "{:?}",
        env.trace()
    );
}

#[test]
fn an_interpreter_that_others_may_write_is_refused() {
    let env = Env::new();
    let interp = env.path().join("interp");
    fs::copy("/bin/sh", &interp).unwrap();
    chmod(&interp, 0o757);
    hook_run_by(&env, &interp);
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(
        &run.stderr,
        &format!(
            "names interpreter {i} in its #! line, which is not trusted: {i} is writable by others",
            i = interp.display()
        ),
    );
    assert!(!env.trace().iter().any(|l| l.starts_with("20-odd")));
    chmod(&interp, 0o755);
    runs_once_fixed(&env);
}

#[test]
fn the_whole_chain_of_interpreters_is_judged() {
    // 20-odd names a wrapper that is fine; the wrapper is a #! script whose
    // own interpreter others may write: the kernel would run that too.
    let env = Env::new();
    let deep = env.path().join("deep");
    fs::write(
        &deep,
        format!(
            "#!/bin/sh\necho deep-ran >> '{}'\nexec /bin/sh \"$@\"\n",
            env.trace.display()
        ),
    )
    .unwrap();
    chmod(&deep, 0o757);
    let wrapper = env.path().join("wrapper");
    fs::write(
        &wrapper,
        format!("#!{}\nexec /bin/sh \"$@\"\n", deep.display()),
    )
    .unwrap();
    chmod(&wrapper, 0o755);
    let hook = hook_run_by(&env, &wrapper);
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(
        &run.stderr,
        &format!(
            "names interpreter {w} in its #! line, which is run by {d} (its own #! line), which is not trusted: {d} is writable by others",
            w = wrapper.display(),
            d = deep.display()
        ),
    );
    assert!(
        !env.trace()
            .iter()
            .any(|l| l == "deep-ran" || l.starts_with("20-odd"))
    );
    // Fixed, the chain runs as the kernel runs it.
    chmod(&deep, 0o755);
    runs_once_fixed(&env);
    // Deeper than the kernel follows: refused.
    let mut prev = deep.clone();
    for i in 0..4 {
        let next = env.path().join(format!("level{i}"));
        fs::write(&next, format!("#!{}\n", prev.display())).unwrap();
        chmod(&next, 0o755);
        prev = next;
    }
    fs::write(&hook, format!("#!{}\nexit 0\n", prev.display())).unwrap();
    env.run(&["thaw"]);
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(&run.stderr, "more than 4 levels deep (the kernel's limit)");
}

// ---- the places a run writes (as root: another user's directory) ----------

#[test]
#[ignore = "needs root"]
fn a_state_dir_another_user_may_write_is_refused_and_a_log_there_is_not_opened() {
    require_root("untrusted_places");
    let env = Env::new();
    env.tracing_hook("10-a", "");
    // A directory group-writable by a non-root group (as Ubuntu's /var/log
    // is by syslog), holding the state dir and the log.
    let shared = env.path().join("shared");
    fs::create_dir(&shared).unwrap();
    nix::unistd::chown(&shared, None, Some(nix::unistd::Gid::from_raw(65534))).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o775)).unwrap();
    let victim = env.path().join("victim");
    fs::write(&victim, "root's\n").unwrap();
    // What a member of that group plants: a link at the journal's
    // temporary name, and at the log's name.
    let state = shared.join("state");
    fs::create_dir(&state).unwrap();
    symlink(&victim, state.join("journal.tmp")).unwrap();
    let log = shared.join("hook.log");
    symlink(&victim, &log).unwrap();
    let run = env.run(&["freeze", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_has(
        &run.stderr,
        &format!(
            "state dir is not safe, nothing run: {} is writable by group (mode 0775",
            shared.display()
        ),
    );
    assert_has(
        &run.stderr,
        "only root may write there, as in /run/fsfreeze-hook",
    );
    assert!(env.trace().is_empty(), "a hook ran");
    // The state dir elsewhere, the log still there: the run goes on, the log
    // is not opened (lines go to syslog, else stderr) and says why.
    let run = env.run(&["freeze", "--log-file", log.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(env.trace(), ["10-a freeze rollback=0"]);
    assert!(
        run.stderr.contains("not opened: its directory is not safe")
            || Path::new("/dev/log").exists(),
        "{}",
        run.stderr
    );
    assert_eq!(fs::read_to_string(&victim).unwrap(), "root's\n");
    assert_eq!(env.run(&["thaw"]).code, Some(0));
}

#[test]
#[ignore = "needs root"]
fn a_log_in_a_directory_a_system_group_may_write_is_written_safely() {
    // Ubuntu's /var/log: root:syslog 0775. The log is written there, and
    // nothing a member of that group plants at its name turns root's lines
    // into a write elsewhere: a link, a file of its own, another name of a
    // file of root's: each refused (lines to syslog), the victim intact.
    require_root("system_group_log_dir");
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let var_log = env.path().join("var-log");
    fs::create_dir(&var_log).unwrap();
    nix::unistd::chown(&var_log, None, Some(nix::unistd::Gid::from_raw(4))).unwrap();
    fs::set_permissions(&var_log, fs::Permissions::from_mode(0o775)).unwrap();
    let log = var_log.join("qga-fsfreeze-hook.log");
    let cycle = |what: &str| {
        let run = env.run(&["freeze", "--log-file", log.to_str().unwrap()]);
        assert_eq!(run.code, Some(0), "{what}: {run:?}");
        assert_eq!(env.run(&["thaw"]).code, Some(0));
        run
    };
    let run = cycle("fresh");
    assert!(!run.stderr.contains("not opened"), "{}", run.stderr);
    let written = fs::read_to_string(&log).unwrap();
    assert!(written.contains(": freeze finished in"), "{written}");
    env.clear_trace();
    let victim = env.path().join("victim");
    fs::write(&victim, "root's\n").unwrap();
    let other = nix::unistd::Uid::from_raw(65534);
    for (what, plant) in [
        ("a link", &|log: &Path, victim: &Path| {
            symlink(victim, log).unwrap() as ()
        }),
        ("another user's file", &|log: &Path, _: &Path| {
            fs::write(log, "").unwrap();
            nix::unistd::chown(log, Some(other), None).unwrap();
        }),
        (
            "another name of root's file",
            &|log: &Path, victim: &Path| fs::hard_link(victim, log).unwrap(),
        ),
    ] as [(&str, &dyn Fn(&Path, &Path)); 3]
    {
        fs::remove_file(&log).unwrap();
        plant(&log, &victim);
        let run = cycle(what);
        assert_eq!(env.trace().len(), 2, "{what}: the hooks ran");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root's\n", "{what}");
        assert!(
            run.stderr.contains("cannot open log") || Path::new("/dev/log").exists(),
            "{what}: {}",
            run.stderr
        );
        if !fs::symlink_metadata(&log).unwrap().file_type().is_symlink() {
            assert!(
                !fs::read_to_string(&log)
                    .unwrap()
                    .contains("freeze finished"),
                "{what}: written through"
            );
        }
        env.clear_trace();
    }
}

#[test]
fn links_planted_at_the_names_a_run_writes_are_replaced_not_followed() {
    // In a state dir that is the run's own, as a leftover of an earlier
    // compromise or a restored backup would leave them.
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.set_config(&format!(
        "metrics_file = \"{}\"\n",
        env.path().join("m.prom").display()
    ));
    fs::create_dir_all(env.state.join("held")).unwrap();
    let victim = env.path().join("victim");
    fs::write(&victim, "precious\n").unwrap();
    for name in [
        "journal.tmp",
        ".durations.tmp",
        ".metrics.tmp",
        "parked.log",
        "held/.db.tmp",
    ] {
        symlink(&victim, env.state.join(name)).unwrap();
    }
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    let hold = env.run(&[
        "hold",
        "db",
        "--max-hold",
        "5s",
        "--",
        "sh",
        "-c",
        "echo FSFREEZE-READY; cat >/dev/null",
    ]);
    assert_eq!(hold.code, Some(0), "{hold:?}");
    assert_eq!(env.run(&["release", "db"]).code, Some(0));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    // A link at the log's own name is not followed either.
    let log = env.path().join("linked.log");
    symlink(&victim, &log).unwrap();
    let run = env.run(&["freeze", "--log-file", log.to_str().unwrap()]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
    assert_eq!(env.run(&["thaw"]).code, Some(0));
}

#[test]
#[ignore = "needs root"]
fn a_fallback_state_dir_in_tmp_made_by_another_user_is_refused() {
    require_root("tmp_fallback");
    // uid 65533 has no HOME and no XDG dirs: its state would go to
    // /tmp/fsfreeze-hook-65533, which uid 65532 made first.
    let dir = Path::new("/tmp/fsfreeze-hook-65533");
    let _ = fs::remove_dir_all(dir);
    let _ = fs::remove_file(dir);
    fs::create_dir(dir).unwrap();
    nix::unistd::chown(dir, Some(65532.into()), Some(65532.into())).unwrap();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o777)).unwrap();
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(self.0);
            let _ = fs::remove_file(self.0);
        }
    }
    let _remove = Remove(dir);
    let hooks = tempfile::tempdir().unwrap();
    fs::set_permissions(hooks.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let rehearse = |label: &str| {
        let out = Command::new(BIN)
            .args(["rehearse", "--hooks-dir"])
            .arg(hooks.path())
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .uid(65533)
            .gid(65533)
            .current_dir("/")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(3), "{label}: {stderr}");
        assert_has(
            &stderr,
            &format!("state dir is not safe, nothing run: {}", dir.display()),
        );
        stderr
    };
    let said = rehearse("another user's dir");
    assert_has(&said, "is owned by uid 65532");
    assert!(
        fs::read_dir(dir).unwrap().next().is_none(),
        "something was written into the other user's dir"
    );
    // A link there, made by that user, to a directory of theirs.
    fs::remove_dir(dir).unwrap();
    let theirs = tempfile::tempdir().unwrap();
    nix::unistd::chown(theirs.path(), Some(65532.into()), Some(65532.into())).unwrap();
    symlink(theirs.path(), dir).unwrap();
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        dir,
        Some(65532.into()),
        Some(65532.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
    rehearse("a link");
}

#[test]
fn a_reader_that_went_away_or_a_terminal_that_answers_eio_is_no_panic() {
    // Every write of ours to stdout or stderr may fail (the reader of a
    // pipe gone, EPIPE; a background job's terminal, EIO): the line is
    // lost, the run goes on and ends with its own status, never a panic
    // (101).
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let closed = || {
        let (r, w) = nix::unistd::pipe().unwrap();
        drop(r);
        std::process::Stdio::from(w)
    };
    let out = env.command(&["list"]).stdout(closed()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = env
        .command(&["hold", "not a name", "--", "true"])
        .stderr(closed())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let out = env
        .command(&["rehearse"])
        .stdout(closed())
        .stderr(closed())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(env.trace().len(), 2, "the rehearsal ran its hooks");
}

#[test]
fn hooks_keep_the_signals_their_caller_ignored_as_under_the_stock_script() {
    // qemu-ga 7.2 and 10.0 run their hook with SIGPIPE ignored (systemd
    // starts services so), and bash passes that on: a hook's write to a
    // closed pipe is EPIPE, not death. Rust's runtime ignores SIGPIPE in the
    // runner whatever it was given; hooks get what the runner was given.
    let env = Env::new();
    let seen = env.path().join("sigign");
    env.hook(
        "10-sig",
        &format!(
            "[ \"$1\" = freeze ] || exit 0\n\
             sed -n 's/^SigIgn:[[:space:]]*//p' /proc/self/status > '{s}'",
            s = seen.display()
        ),
    );
    let bits = |given: &str| {
        let status = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("{given} exec \"$@\""))
            .arg("sh")
            .arg(BIN)
            .args(env.command(&["freeze"]).get_args())
            .status()
            .unwrap();
        assert!(status.success());
        assert!(env.command(&["thaw"]).status().unwrap().success());
        let text = fs::read_to_string(&seen).unwrap();
        let mask = u64::from_str_radix(text.lines().next().unwrap().trim(), 16).unwrap();
        (mask, text)
    };
    const SIGHUP: u64 = 1 << 0;
    const SIGPIPE: u64 = 1 << 12;
    let (mask, text) = bits("trap '' PIPE HUP;");
    assert_eq!(mask & (SIGPIPE | SIGHUP), SIGPIPE | SIGHUP, "{text}");
    let (mask, text) = bits("");
    assert_eq!(
        mask & SIGPIPE,
        0,
        "SIGPIPE at its default when given so: {text}"
    );
}

#[test]
fn a_hook_the_kernel_cannot_execute_is_reported_with_the_reason_first_or_later_in_a_run() {
    // An ELF header and nothing a kernel can load: every check passes, the
    // exec fails (ENOEXEC). As the run's first spawn (whose errno comes
    // through a pipe) and after others (through memory the child shares).
    let env = Env::new();
    for name in ["05-broken", "20-broken"] {
        let path = env.hooks.join(name);
        fs::write(&path, b"\x7fELF\x02\x01\x01 not a program").unwrap();
        chmod(&path, 0o755);
    }
    env.tracing_hook("10-fine", "");
    env.tracing_hook("30-fine", "");
    env.set_config("on_error = \"continue\"\n");
    let run = env.run(&["freeze"]);
    for name in ["05-broken", "20-broken"] {
        assert_has(&run.log, &format!("{name} finished with status=126"));
        assert_has(
            &run.log,
            &format!("{name} could not be executed: Exec format error"),
        );
    }
    assert_eq!(
        env.trace(),
        ["10-fine freeze rollback=0", "30-fine freeze rollback=0"]
    );
    env.run(&["thaw"]);
}
