//! Which entries run, with what argv, stdin, environment and descriptors.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{PermissionsExt, symlink};

use crate::common::{Env, assert_lines, lines_with};

#[test]
fn skips_what_stock_skips_and_says_why_once() {
    let env = Env::new();
    env.tracing_hook("10-runs", "");
    for name in [
        "a~",
        "a.bak",
        "a.orig",
        "a.rpmnew",
        "a.rpmorig",
        "a.rpmsave",
        "a.sample",
        "a.dpkg-old",
        "a.dpkg-new",
        "a.dpkg-tmp",
        "a.dpkg-dist",
        "a.dpkg-bak",
        "a.dpkg-backup",
        "a.dpkg-remove",
        "a.ucf-old",
        "a.ucf-new",
        "a.ucf-dist",
        "a.pacnew",
        "a.pacsave",
        "a.pacorig",
        "a.apk-new",
        ".a.swp",
        "a.swp",
        "#a#",
        ".hidden",
    ] {
        env.tracing_hook(name, "");
    }
    fs::create_dir(env.hooks.join("50-dir")).unwrap();
    let plain = env.tracing_hook("60-not-exec", "");
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    symlink("/nonexistent/target", env.hooks.join("70-broken")).unwrap();
    nix::unistd::mkfifo(
        &env.hooks.join("80-fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o755),
    )
    .unwrap();
    let target = env.path().join("real-hook");
    fs::write(
        &target,
        format!(
            "#!/bin/sh\necho \"90-link $1\" >> '{}'\n",
            env.trace.display()
        ),
    )
    .unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o755)).unwrap();
    symlink(&target, env.hooks.join("90-link")).unwrap();

    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(env.trace(), ["10-runs freeze rollback=0", "90-link freeze"]);
    let skips = lines_with(&run.log, ": skip ");
    assert_eq!(
        skips.len(),
        29,
        "each skipped entry logged once: {skips:#?}"
    );
    for (name, reason) in [
        ("a.dpkg-old", "ignored suffix \".dpkg-old\""),
        (".hidden", "dotfile"),
        ("#a#", "editor leftover"),
        ("50-dir", "directory"),
        ("60-not-exec", "not executable"),
        ("70-broken", "broken symlink"),
        ("80-fifo", "not a regular file (fifo)"),
    ] {
        let line = skips
            .iter()
            .find(|l| l.contains(&format!("/{name}: ")))
            .unwrap_or_else(|| panic!("no skip line for {name}"));
        assert!(line.contains(&format!(": {reason}")), "{line}");
    }
}

#[test]
fn odd_names_run_and_log_on_one_line() {
    let env = Env::new();
    let names = [
        OsString::from("10 with spaces"),
        OsString::from("20-new\nline"),
        OsString::from_vec(b"30-latin1-\xe9".to_vec()),
    ];
    let marker = env.path().join("ran");
    for name in &names {
        env.hook(name, &format!("echo \"$1\" >> '{}'", marker.display()));
    }
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        fs::read_to_string(&marker).unwrap(),
        "freeze\nfreeze\nfreeze\n"
    );
    assert_lines(&run.log, "execute ", 3);
    assert_lines(&run.log, "/20-new\\nline freeze", 1);
    assert_lines(&run.log, "/30-latin1-\\xe9 freeze", 1);
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "journal round-trips odd names: {run:?}");
    assert_eq!(
        fs::read_to_string(&marker)
            .unwrap()
            .lines()
            .filter(|l| *l == "thaw")
            .count(),
        3
    );
}

#[test]
fn hook_without_shebang_runs_under_sh_with_a_warning() {
    let env = Env::new();
    let path = env.hooks.join("10-legacy");
    fs::write(
        &path,
        format!("echo \"legacy $1\" >> '{}'\n", env.trace.display()),
    )
    .unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(env.trace(), ["legacy freeze"]);
    assert_lines(&run.log, "has no #! line; running it with /bin/sh", 1);
}

#[test]
// A descriptor leaked on purpose takes a pre_exec hook: unsafe code.
#[allow(unsafe_code)]
fn hook_sees_phase_env_null_stdin_and_no_extra_descriptors() {
    let env = Env::new();
    let out = env.path().join("seen");
    let fds = env.path().join("fds");
    env.hook(
        "10-inspect",
        &format!(
            "exec > '{out}'\n\
             echo \"argv=$# $1\"\n\
             echo \"phase=$FSFREEZE_PHASE rollback=$FSFREEZE_ROLLBACK log=$FSFREEZE_HOOK_LOG\"\n\
             if read line; then echo stdin=data; else echo stdin=eof; fi\n\
             echo \"stdin_target=$(readlink /proc/$$/fd/0)\"\n\
             echo \"pgid_is_pid=$(test \"$(cut -d' ' -f5 /proc/$$/stat)\" = \"$$\" && echo yes || echo no)\"\n\
             echo \"sid_is_pid=$(test \"$(cut -d' ' -f6 /proc/$$/stat)\" = \"$$\" && echo yes || echo no)\"\n\
             echo \"umask=$(umask)\"\n\
             exec ls -l /proc/self/fd > '{fds}'",
            out = out.display(),
            fds = fds.display()
        ),
    );
    // An inherited descriptor that is not close-on-exec, as a careless caller
    // (or qemu-ga's socket) would leave: the hook must not see it.
    let leaked = fs::File::open("/dev/null").unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&leaked);
    let flags = nix::fcntl::fcntl(&leaked, nix::fcntl::FcntlArg::F_GETFD).unwrap();
    let mut cmd = env.command(&["freeze"]);
    // SAFETY: only fcntl, which is async-signal-safe, runs in the child.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    cmd.stdin(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    // Stdin of the runner is a pipe with data; the hook must still see /dev/null.
    use std::io::Write;
    let _ = child.stdin.take().unwrap().write_all(b"not for hooks\n");
    assert!(child.wait().unwrap().success());
    let seen = fs::read_to_string(&out).unwrap();
    let expect = [
        "argv=1 freeze".to_string(),
        format!("phase=freeze rollback=0 log={}", env.log.display()),
        "stdin=eof".to_string(),
        "stdin_target=/dev/null".to_string(),
        "pgid_is_pid=yes".to_string(),
        // A session of its own, as qemu-ga 9.1+ gives its hook: setsid, which
        // SELinux does not check (setpgid is denied to qemu-ga's domain).
        "sid_is_pid=yes".to_string(),
        "umask=0022".to_string(),
    ];
    assert_eq!(seen.lines().collect::<Vec<_>>(), expect, "{seen}");
    // What the exec'd ls inherited, less its own handle on /proc/self/fd:
    // 0-2 and nothing else: not the leaked fd, the runner's lock or journal,
    // nor the script file (its shell's own descriptor is close-on-exec).
    let listing = fs::read_to_string(&fds).unwrap();
    let mut inherited: Vec<u32> = listing
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .filter(|(_, target)| !target.ends_with("/fd"))
        .filter_map(|(left, _)| left.split_whitespace().last()?.parse().ok())
        .collect();
    inherited.sort();
    assert_eq!(inherited, [0, 1, 2], "{listing}");
    drop(leaked);
}

#[test]
fn hook_output_goes_to_the_log_never_to_the_runner_streams() {
    let env = Env::new();
    env.hook(
        "10-noisy",
        "echo \"to stdout $1\"\necho \"to stderr $1\" >&2",
    );
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr, "");
    let log: Vec<&str> = run.log.lines().collect();
    let exec = log.iter().position(|l| l.contains("execute ")).unwrap();
    assert_eq!(log[exec + 1], "to stdout freeze");
    assert_eq!(log[exec + 2], "to stderr freeze");
    assert!(
        log[exec + 3].contains("/10-noisy finished with status=0 in "),
        "{}",
        log[exec + 3]
    );
}

#[test]
fn log_keeps_stock_lines_adds_a_header_and_is_private() {
    let env = Env::new();
    env.hook("10-a", "exit 0");
    env.hook("20-b", "kill -TERM $$");
    env.set_config("on_error = \"continue\"\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0));
    let header = lines_with(&run.log, "fsfreeze-hook ");
    assert!(header[0].contains(&format!(
        ": fsfreeze-hook {} pid ",
        env!("CARGO_PKG_VERSION")
    )));
    assert!(header[0].contains(": freeze; hooks dir "));
    let a = env.hooks.join("10-a").display().to_string();
    let b = env.hooks.join("20-b").display().to_string();
    assert_lines(&run.log, &format!(": execute {a} freeze"), 1);
    assert_lines(&run.log, &format!(": {a} finished with status=0 in "), 1);
    let killed = assert_lines(&run.log, &format!(": {b} finished with status=143 in "), 1);
    assert!(
        killed[0].ends_with("was killed by SIGTERM"),
        "{}",
        killed[0]
    );
    let mode = fs::metadata(&env.log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn unwritable_log_never_fails_a_phase() {
    let env = Env::new();
    env.tracing_hook("10-a", "echo output");
    // A log path below a regular file can never be opened.
    let blocker = env.path().join("file");
    fs::write(&blocker, "").unwrap();
    let run = env
        .command(&[
            "freeze",
            "--log-file",
            blocker.join("x.log").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(env.trace(), ["10-a freeze rollback=0"]);
}

#[test]
fn hooks_dir_that_is_a_file_is_a_clear_error() {
    let env = Env::new();
    let file = env.path().join("not-a-dir");
    fs::write(&file, "").unwrap();
    let run = env
        .command(&["freeze", "--hooks-dir", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(3));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.starts_with("fsfreeze-hook: freeze refused, no hook run: cannot read hooks dir"),
        "{err}"
    );
}

/// Hooks run in `/`, as under qemu-ga, wherever the runner was started, and
/// get absolute paths for what they are told of (relative options given).
#[test]
fn hooks_run_in_the_root_directory_wherever_the_runner_was_started() {
    let env = Env::new();
    let out = env.path().join("where");
    env.hook(
        "10-where",
        &format!(
            "echo \"$(pwd) $FSFREEZE_HOOK_LOG $FSFREEZE_HOOK_STATE_DIR\" >> '{}'",
            out.display()
        ),
    );
    let run = std::process::Command::new(crate::common::BIN)
        .current_dir(env.path())
        .args([
            "--config",
            "fsfreeze-hook.conf",
            "--hooks-dir",
            "fsfreeze-hook.d",
            "--log-file",
            "hook.log",
            "--state-dir",
            "state",
            "rehearse",
        ])
        .env_remove("FSFREEZE_HOOK_CONFIG")
        .output()
        .unwrap();
    assert!(run.status.success(), "{run:?}");
    let seen = fs::read_to_string(&out).unwrap();
    let expect = format!("/ {} {}\n", env.log.display(), env.state.display());
    assert_eq!(seen, format!("{expect}{expect}"), "freeze and thaw");
}
