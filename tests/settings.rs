//! The config file, flags, and where things are found by default.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use crate::common::{BIN, Env, assert_has, assert_lines, lines_with};

#[test]
fn bad_config_is_one_line_naming_file_line_and_key_and_runs_nothing() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    for (text, line, key) in [
        (
            "timeout = \"30s\"\nphase_timeout = \"soon\"\n",
            2,
            "phase_timeout",
        ),
        ("\n\nhook_dir = \"/x\"\n", 3, "hook_dir"),
        ("on_error = \"retry\"\n", 1, "on_error"),
        (
            "[hooks.\"20-mysql\"]\ntimeout = 5\n",
            2,
            "hooks.\"20-mysql\".timeout",
        ),
    ] {
        env.set_config(text);
        let run = env.run(&["freeze"]);
        assert_eq!(run.code, Some(3), "{text}: {run:?}");
        let expect = format!(
            "fsfreeze-hook: config {}:{line}: key `{key}`: ",
            env.config.display()
        );
        assert!(run.stderr.starts_with(&expect), "{text}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    }
    env.set_config("timeout = \n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(3));
    assert_has(&run.stderr, ":1: not valid TOML");
    assert!(env.trace().is_empty(), "no hook may run on a bad config");
}

#[test]
fn explicit_config_that_is_missing_is_an_error() {
    let env = Env::new();
    fs::remove_file(&env.config).unwrap();
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(3));
    assert_has(&run.stderr, "cannot read");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["freze"][..],
        &["freeze", "--bogus"],
        &["freeze", "--timeout", "x"],
        &[],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// Installed the way qemu-ga calls it: no flags, the config and hooks dir
/// found beside the invoked path.
#[test]
fn installed_copy_finds_its_config_and_hooks_beside_itself() {
    let env = Env::new();
    let bin = env.path().join("fsfreeze-hook");
    fs::copy(BIN, &bin).unwrap();
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755)).unwrap();
    env.tracing_hook("10-a", "");
    let log = env.path().join("beside.log");
    fs::write(
        env.path().join("fsfreeze-hook.conf"),
        format!(
            "log_file = \"{}\"\nstate_dir = \"{}\"\n",
            log.display(),
            env.state.display()
        ),
    )
    .unwrap();
    let out = Command::new(&bin)
        .arg("freeze")
        .env_remove("FSFREEZE_HOOK_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(env.trace(), ["10-a freeze rollback=0"]);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!(
            "config {}/fsfreeze-hook.conf",
            env.path().display()
        )),
        "{text}"
    );
    // The environment variable wins over the file beside the binary.
    let other_log = env.path().join("env.log");
    let env_conf = env.path().join("env.conf");
    fs::write(
        &env_conf,
        format!(
            "log_file = \"{}\"\nstate_dir = \"{}\"\n",
            other_log.display(),
            env.state.display()
        ),
    )
    .unwrap();
    let out = Command::new(&bin)
        .arg("thaw")
        .env("FSFREEZE_HOOK_CONFIG", &env_conf)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_lines(&fs::read_to_string(&other_log).unwrap(), "execute ", 1);
}

#[test]
fn flags_override_the_config_file() {
    let env = Env::new();
    env.hook("10-slow", "sleep 2");
    env.set_config(
        "timeout = \"100ms\"\nkill_grace = \"100ms\"\n[hooks.\"10-slow\"]\ntimeout = \"200ms\"\n",
    );
    assert_eq!(env.run(&["freeze"]).code, Some(1));
    let run = env.run(&["freeze", "--timeout", "0"]);
    assert_eq!(run.code, Some(0), "--timeout 0 lifts every limit: {run:?}");
}

/// The build is static: nothing is loaded from disk when it runs.
#[test]
fn binary_is_statically_linked() {
    let out = Command::new("file")
        .arg("-L")
        .arg(BIN)
        .output()
        .expect("file(1)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("statically linked") || text.contains("static-pie linked"),
        "{text}"
    );
}

/// One parser and one range for durations and sizes, on the command line
/// and in the config alike; the messages quote what was written.
#[test]
fn the_command_line_and_the_config_take_the_same_durations_and_sizes() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    for (flag, config, says) in [
        (
            "9223372036854775807s",
            "timeout = \"9223372036854775807s\"\n",
            "\"9223372036854775807s\" is out of range (at most 24h)",
        ),
        ("5m5m", "timeout = \"5m5m\"\n", "invalid duration \"5m5m\""),
    ] {
        let cli = env.run(&["--timeout", flag, "freeze"]);
        assert_eq!(cli.code, Some(2), "{cli:?}");
        assert!(cli.stderr.contains(says), "{}", cli.stderr);
        env.set_config(config);
        let file = env.run(&["freeze"]);
        assert_eq!(file.code, Some(3), "{file:?}");
        assert!(file.stderr.contains(says), "{}", file.stderr);
        env.set_config("");
    }
    env.set_config("output_limit = \"1025MiB\"\n");
    let file = env.run(&["freeze"]);
    assert_eq!(file.code, Some(3), "{file:?}");
    assert!(
        file.stderr
            .contains("\"1025MiB\" is out of range (at most 1 GiB)"),
        "{}",
        file.stderr
    );
    assert!(env.trace().is_empty(), "nothing ran: {:?}", env.trace());
}

#[test]
fn a_run_stopped_by_its_config_says_so_in_the_log_it_was_given() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.set_config("timeout = \"5 s\"\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_has(&run.log, "freeze refused: config ");
    assert_has(&run.log, "key `timeout`");
    assert!(env.trace().is_empty());
}

#[test]
#[ignore = "needs root"]
fn a_copy_beside_a_broken_config_logs_its_refusal_where_the_default_log_is() {
    // The reproduction: a copy of the binary beside a broken
    // fsfreeze-hook.conf, run as root as qemu-ga runs it. /var/log is a
    // private tmpfs of this test (a mount namespace of its own).
    crate::common::require_root("broken_config_default_log");
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let bin = dir.path().join("fsfreeze-hook");
    fs::copy(BIN, &bin).unwrap();
    fs::write(dir.path().join("fsfreeze-hook.conf"), "timeout = \"5 s\"\n").unwrap();
    let script = format!(
        "set -e\nmount -t tmpfs -o mode=0755 tmpfs /var/log\n\
         if {bin} freeze; then echo 'exit 0'; else echo \"exit $?\"; fi\n\
         cat /var/log/qga-fsfreeze-hook.log",
        bin = bin.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env_remove("FSFREEZE_HOOK_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_has(&stdout, "exit 3");
    assert_has(&stdout, "freeze refused: config ");
    assert_has(&stdout, "key `timeout`");
}

#[test]
fn each_commands_help_lists_only_the_global_options_it_uses() {
    let help = |cmd: &str| {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let release = help("release");
    for ignored in ["--timeout", "--on-error", "--hooks-dir"] {
        assert!(
            !release.contains(ignored),
            "release --help shows {ignored}:\n{release}"
        );
    }
    assert_has(&release, "--state-dir");
    let check = help("check");
    assert!(
        !check.contains("--log-file") && !check.contains("--config"),
        "{check}"
    );
    let freeze = help("freeze");
    for used in ["--timeout", "--on-error", "--hooks-dir", "--config"] {
        assert_has(&freeze, used);
    }
    // Still accepted where ignored (a script may pass them everywhere).
    let env = Env::new();
    let run = env.run(&["release", "db", "--timeout", "5s", "--on-error", "continue"]);
    assert_eq!(run.code, Some(0), "{run:?}");
}

/// The config example of docs/configuration.md, as written there.
fn manual_config() -> String {
    let example = crate::common::block("docs/configuration.md", "## The file", "toml");
    assert!(
        example.starts_with("# /etc/qemu/fsfreeze-hook.conf\n"),
        "the manual's config example: {example}"
    );
    example
}

#[test]
fn an_optional_hook_fails_and_the_freeze_goes_on_with_the_manuals_config() {
    let env = Env::new();
    let metrics = env.path().join("fsfreeze_hook.prom");
    // Top-level keys come before the tables.
    env.set_config(&format!(
        "metrics_file = \"{}\"\n{}",
        metrics.display(),
        manual_config()
    ));
    env.tracing_hook("10-a", "");
    env.tracing_hook("60-cache-warmup", "echo warming failed >&2; exit 1");
    env.tracing_hook("70-z", "");
    let list = env.run(&["list"]);
    assert_has(
        &list.stdout,
        "60-cache-warmup  timeout 1m, optional (a failure is logged, the freeze goes on)",
    );
    assert!(
        !lines_with(&list.stdout, "10-a")[0].contains("optional"),
        "{}",
        list.stdout
    );
    let freeze = env.run(&["freeze"]);
    assert_eq!(freeze.code, Some(0), "{}", freeze.log);
    assert_has(&freeze.log, "60-cache-warmup exited with status 1");
    assert_has(
        &freeze.log,
        "going on (optional: [hooks.\"60-cache-warmup\"] on_error = continue)",
    );
    let thaw = env.run(&["thaw"]);
    assert_eq!(thaw.code, Some(0), "{}", thaw.log);
    assert_eq!(
        env.trace(),
        [
            "10-a freeze rollback=0",
            "60-cache-warmup freeze rollback=0",
            "70-z freeze rollback=0",
            "70-z thaw rollback=0",
            "60-cache-warmup thaw rollback=0",
            "10-a thaw rollback=0"
        ]
    );
    let text = fs::read_to_string(&metrics).unwrap();
    for line in [
        "fsfreeze_hook_hook_optional{hook=\"60-cache-warmup\"} 1",
        "fsfreeze_hook_hook_optional{hook=\"10-a\"} 0",
        "fsfreeze_hook_hook_failures_total{hook=\"60-cache-warmup\",phase=\"freeze\"} 1",
        "fsfreeze_hook_hook_failures_total{hook=\"10-a\",phase=\"freeze\"} 0",
        "fsfreeze_hook_failures_total{phase=\"freeze\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
    }
    let rehearse = env.run(&["rehearse"]);
    assert_eq!(rehearse.code, Some(0), "{}", rehearse.stdout);
    assert_has(
        &rehearse.stdout,
        "optional (a failure is logged and counted, the freeze goes on): 60-cache-warmup",
    );
    // A hook that is not optional still fails the freeze.
    env.tracing_hook("70-z", "[ \"$1\" = freeze ] && exit 1; :");
    let strict = env.run(&["freeze"]);
    assert_ne!(strict.code, Some(0), "{}", strict.log);
    // And `--on-error abort` makes every hook strict for a rehearsal.
    env.tracing_hook("70-z", "");
    let rehearse = env.run(&["rehearse", "--on-error", "abort"]);
    assert_ne!(rehearse.code, Some(0), "{}", rehearse.stdout);
}

#[test]
fn rehearse_says_what_parallel_hooks_would_make_of_the_pause() {
    let env = Env::new();
    env.tracing_hook("10-app", "[ \"$1\" = freeze ] && sleep 0.2; :");
    env.tracing_hook("20-db", "[ \"$1\" = freeze ] && sleep 0.8; :");
    let run = env.run(&["rehearse"]);
    assert_eq!(run.code, Some(0), "{}", run.stdout);
    let line = lines_with(&run.stdout, "the freeze hooks take about")
        .first()
        .copied()
        .unwrap_or_else(|| panic!("{}", run.stdout))
        .to_string();
    // "... about 1.0 s one after another (10-app held 800 ms of it, ...);
    // with parallel = true about 812 ms, all finishing together"
    let secs = |s: &str| -> f64 {
        let (n, unit) = s.trim().split_once(' ').unwrap();
        let n: f64 = n.parse().unwrap();
        if unit.starts_with("ms") {
            n / 1000.0
        } else {
            n
        }
    };
    let sum = secs(
        line.split("about ")
            .nth(1)
            .unwrap()
            .split(" one after")
            .next()
            .unwrap(),
    );
    let held = secs(
        line.split("10-app held ")
            .nth(1)
            .unwrap()
            .split(" of it")
            .next()
            .unwrap(),
    );
    let together = secs(
        line.split("parallel = true about ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap(),
    );
    assert!(sum >= 0.95 && held >= 0.75 && together >= 0.75, "{line}");
    assert!(together < sum && held < sum, "{line}");
    // With parallel = true it says what one after another would take.
    env.set_config("parallel = true\n");
    let run = env.run(&["rehearse"]);
    assert_has(
        &run.stdout,
        "the freeze hooks run together (parallel = true): about ",
    );
}
