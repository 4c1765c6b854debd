//! Order, failure policy, rollback and the journal-driven thaw.

use std::path::Path;

use crate::common::{Env, assert_has, assert_lines};

fn three_hooks(env: &Env) {
    env.tracing_hook("10-a", "");
    env.tracing_hook("20-b", "");
    env.tracing_hook("30-c", "");
}

#[test]
fn freeze_ascending_thaw_in_exact_reverse() {
    let env = Env::new();
    // Created out of order: the order is by name bytes, not creation.
    env.tracing_hook("30-c", "");
    env.tracing_hook("10-a", "");
    env.tracing_hook("20-b", "");
    env.tracing_hook("B-upper", "");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr, "", "a successful phase prints nothing");
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        env.trace(),
        [
            "10-a freeze rollback=0",
            "20-b freeze rollback=0",
            "30-c freeze rollback=0",
            "B-upper freeze rollback=0",
            "B-upper thaw rollback=0",
            "30-c thaw rollback=0",
            "20-b thaw rollback=0",
            "10-a thaw rollback=0",
        ]
    );
}

#[test]
fn thaw_order_forward_restores_the_stock_order() {
    let env = Env::new();
    three_hooks(&env);
    env.set_config("thaw_order = \"forward\"\n");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    assert_eq!(
        env.trace()[3..],
        [
            "10-a thaw rollback=0",
            "20-b thaw rollback=0",
            "30-c thaw rollback=0"
        ]
    );
}

#[test]
fn failing_freeze_rolls_back_started_hooks_in_reverse_and_names_the_cause() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.tracing_hook("20-mysql", "[ \"$1\" = freeze ] && exit 1\nexit 0");
    env.tracing_hook("30-c", "");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        env.trace(),
        [
            "10-a freeze rollback=0",
            "20-mysql freeze rollback=0",
            "20-mysql thaw rollback=1",
            "10-a thaw rollback=1",
        ],
        "30-c must not run; the failed hook and the ones before it get a rollback thaw"
    );
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line for qemu-ga: {:?}", run.stderr);
    assert!(
        lines[0].starts_with("fsfreeze-hook: freeze aborted: 20-mysql exited with status 1 after "),
        "{}",
        lines[0]
    );
    assert!(
        lines[0].ends_with("; rolled back 20-mysql, 10-a"),
        "{}",
        lines[0]
    );
    // After a rollback nothing is held: qemu-ga's later thaw runs no hook.
    env.clear_trace();
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0));
    assert!(env.trace().is_empty(), "{:?}", env.trace());
}

#[test]
fn on_error_continue_runs_every_hook_and_exits_zero() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.tracing_hook("20-b", "exit 3");
    env.tracing_hook("30-c", "");
    env.set_config("on_error = \"continue\"\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run.stderr, "");
    assert_eq!(env.trace().len(), 3);
    assert_lines(&run.log, "20-b finished with status=3", 1);
    assert_lines(&run.log, "going on (on_error = continue)", 1);
    // The flag overrides the file.
    env.clear_trace();
    let run = env.run(&["freeze", "--on-error", "abort"]);
    assert_eq!(run.code, Some(1));
    assert_eq!(env.trace().len(), 4, "{:?}", env.trace());
}

#[test]
fn thaw_runs_every_hook_even_when_some_fail() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.tracing_hook("20-b", "[ \"$1\" = thaw ] && exit 4\nexit 0");
    env.tracing_hook("30-c", "");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(
        env.trace()[3..],
        [
            "30-c thaw rollback=0",
            "20-b thaw rollback=0",
            "10-a thaw rollback=0"
        ]
    );
    assert!(
        run.stderr
            .starts_with("fsfreeze-hook: thaw failed: 20-b exited with status 4"),
        "{}",
        run.stderr
    );
    // Under continue the same failure is logged and the exit status is 0.
    env.set_config("on_error = \"continue\"\n");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    assert_eq!(env.run(&["thaw"]).code, Some(0));
}

#[test]
fn thaw_runs_exactly_what_froze_and_nothing_twice() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.tracing_hook("20-b", "");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    // A hook added between freeze and thaw froze nothing: it is not thawed.
    env.tracing_hook("15-new", "");
    env.clear_trace();
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    assert_eq!(
        env.trace(),
        ["20-b thaw rollback=0", "10-a thaw rollback=0"]
    );
    // qemu-ga sends thaw again: nothing recorded, nothing runs, exit 0.
    env.clear_trace();
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0));
    assert!(env.trace().is_empty());
    assert_lines(&run.log, "no freeze recorded since the last thaw", 1);
}

#[test]
fn thaw_without_any_journal_runs_every_hook_like_stock() {
    let env = Env::new();
    three_hooks(&env);
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        env.trace(),
        [
            "30-c thaw rollback=0",
            "20-b thaw rollback=0",
            "10-a thaw rollback=0"
        ]
    );
    assert_lines(&run.log, "no journal (first run since boot)", 1);
}

#[test]
fn corrupt_journal_is_treated_as_absent_with_a_warning() {
    let env = Env::new();
    three_hooks(&env);
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::write(env.state.join("journal"), b"\x00\x01garbage").unwrap();
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0));
    assert_eq!(env.trace().len(), 3);
    assert_lines(&run.log, "warning: journal", 1);
}

#[test]
fn recorded_hook_that_vanished_is_reported_at_thaw() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let gone = env.tracing_hook("20-b", "");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    std::fs::remove_file(gone).unwrap();
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(&run.stderr, "20-b froze but no longer exists");
    assert_eq!(env.trace().last().unwrap(), "10-a thaw rollback=0");
}

#[test]
fn missing_hooks_dir_is_one_log_line_and_success() {
    let env = Env::new();
    std::fs::remove_dir(&env.hooks).unwrap();
    for phase in ["freeze", "thaw"] {
        let before = env.log_text().lines().count();
        let run = env.run(&[phase]);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert_eq!(run.stderr, "");
        let new: Vec<&str> = run.log.lines().skip(before).collect();
        // The run header, then exactly one line about the dir.
        assert_eq!(new.len(), 2, "{new:?}");
        assert!(
            new[1].ends_with("does not exist; nothing to run"),
            "{new:?}"
        );
    }
}

#[test]
fn rehearse_prints_a_table_and_leaves_nothing_held() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.tracing_hook("20-slow", "sleep 0.3");
    let run = env.run(&["rehearse", "--hold", "200ms"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let row = |name: &str| {
        run.stdout
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no row {name}: {}", run.stdout))
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("HOOK"), ["HOOK", "FREEZE", "THAW", "HELD", "RESULT"]);
    let slow = row("20-slow");
    let secs = |s: &str| s.trim_end_matches('s').parse::<f64>().unwrap();
    assert!(secs(&slow[1]) >= 0.3 && secs(&slow[2]) >= 0.3, "{slow:?}");
    assert_eq!(slow[4], "ok");
    // 10-a is held from its freeze to its thaw: both slow phases and the hold.
    assert!(secs(&row("10-a")[3]) >= 0.8, "{:?}", row("10-a"));
    assert!(secs(&row("total")[3]) >= 0.8);
    assert!(run.stdout.contains("Applications were held for"));
    assert_eq!(
        env.trace(),
        [
            "10-a freeze rollback=0",
            "20-slow freeze rollback=0",
            "20-slow thaw rollback=0",
            "10-a thaw rollback=0"
        ]
    );
    // Nothing is held afterwards: a thaw runs no hook.
    env.clear_trace();
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    assert!(env.trace().is_empty());
}

#[test]
fn rehearse_refuses_while_a_real_freeze_holds_hooks() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    let run = env.run(&["rehearse"]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_has(&run.stderr, "a freeze is in progress");
    assert_eq!(env.trace(), ["10-a freeze rollback=0"]);
}

#[test]
fn rehearse_shows_progress_of_slow_hooks_plain_or_on_a_terminal() {
    let env = Env::new();
    env.hook("20-slow", "sleep 1.5");
    env.hook("10-fast", "exit 0");
    let run = env.run(&["rehearse"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    // One line a second while the slow hook runs (a loaded machine may
    // stretch 1.5 s past 2 s: a later line is fine); fast hooks show nothing.
    let lines: Vec<&str> = run.stderr.lines().collect();
    for phase in ["freeze", "thaw"] {
        assert!(
            lines.contains(&format!("{phase} 20-slow: still running after 1s (limit 1m)").as_str()),
            "{lines:?}"
        );
    }
    for line in &lines {
        let tail = line
            .strip_prefix("freeze 20-slow: still running after ")
            .or_else(|| line.strip_prefix("thaw 20-slow: still running after "));
        assert!(
            tail.is_some_and(|t| t.ends_with("s (limit 1m)")),
            "{line:?} in {lines:?}"
        );
    }
    // On a terminal (script(1) gives it one): one line rewritten in place.
    let cmd = env.command(&["rehearse"]);
    let line = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| format!("'{}'", a.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(" ");
    let out = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .output()
        .expect("script(1), from util-linux");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\r\x1b[K  freeze 20-slow: running for 1s (limit 1m)"),
        "{text:?}"
    );
}

// ---- the journal never forgets a frozen hook --------------------------------

/// A tracing hook whose freeze fails while `flag` exists.
fn failing_while(env: &Env, name: &str, flag: &std::path::Path) {
    env.tracing_hook(
        name,
        &format!(
            "[ \"$1\" = freeze ] && [ -e '{}' ] && exit 1\nexit 0",
            flag.display()
        ),
    );
}

/// A tracing hook whose thaw hangs (after its trace line) while `flag`
/// exists; it writes its pid (its process group's) to `<flag>.hanging` when
/// it starts hanging.
fn thaw_hanging_while(env: &Env, name: &str, flag: &std::path::Path) {
    env.tracing_hook(
        name,
        &format!(
            "if [ \"$1\" = thaw ] && [ -e '{f}' ]; then echo $$ > '{f}.tmp'; mv '{f}.tmp' '{f}.hanging'; sleep 30; fi\nexit 0",
            f = flag.display()
        ),
    );
}

/// Hooks 10-a, 20-b, 30-c frozen, no thaw; from now on 20-b's freeze fails.
fn frozen_then_20_fails() -> Env {
    let env = Env::new();
    let flag = env.path().join("fail-20");
    env.tracing_hook("10-a", "");
    failing_while(&env, "20-b", &flag);
    env.tracing_hook("30-c", "");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    std::fs::write(&flag, "").unwrap();
    env
}

#[test]
fn a_second_freeze_and_its_rollback_keep_what_the_first_left_frozen() {
    // No thaw came; the next freeze fails at 20-b and rolls back 20-b, 10-a.
    let env = frozen_then_20_fails();
    env.clear_trace();
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(
        &run.log,
        "the previous freeze was never thawed (hooks 10-a, 20-b, 30-c)",
    );
    assert_eq!(
        env.trace(),
        [
            "10-a freeze rollback=0",
            "20-b freeze rollback=0",
            "20-b thaw rollback=1",
            "10-a thaw rollback=1"
        ]
    );
    // 30-c is still frozen from the first freeze: the thaw runs it.
    env.clear_trace();
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(env.trace(), ["30-c thaw rollback=0"]);
    env.clear_trace();
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(env.trace().is_empty(), "{:?}", env.trace());
}

#[test]
fn ten_freezes_and_rollbacks_without_a_thaw_still_thaw_what_the_first_froze() {
    let env = frozen_then_20_fails();
    let flag = env.path().join("fail-20");
    for _ in 0..9 {
        assert_eq!(env.run(&["freeze"]).code, Some(1));
    }
    env.clear_trace();
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    assert_eq!(env.trace(), ["30-c thaw rollback=0"]);
    // Every hook of a whole freeze, then, however many times it froze: one
    // thaw each, in reverse.
    std::fs::remove_file(&flag).unwrap();
    for _ in 0..10 {
        assert_eq!(env.run(&["freeze"]).code, Some(0));
    }
    env.clear_trace();
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    assert_eq!(
        env.trace(),
        [
            "30-c thaw rollback=0",
            "20-b thaw rollback=0",
            "10-a thaw rollback=0"
        ]
    );
    env.clear_trace();
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    assert!(env.trace().is_empty(), "{:?}", env.trace());
}

/// A thaw cut off in 20-b's thaw: 30-c's thaw completed, 20-b's did not,
/// 10-a's never started. `cut` ends the thaw runner (given its child and
/// the marker that 20-b hangs); the next thaw runs 20-b and 10-a, not 30-c.
fn cut_off_thaw(config: &str, cut: impl FnOnce(&mut std::process::Child, &std::path::Path)) {
    let env = Env::new();
    env.set_config(config);
    let flag = env.path().join("hang-20");
    env.tracing_hook("10-a", "");
    thaw_hanging_while(&env, "20-b", &flag);
    env.tracing_hook("30-c", "");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    std::fs::write(&flag, "").unwrap();
    env.clear_trace();
    let hanging = env.path().join("hang-20.hanging");
    let (mut child, _) = env.spawn_until(&["thaw"], &hanging);
    cut(&mut child, &hanging);
    let _ = child.wait();
    assert_eq!(
        env.trace(),
        ["30-c thaw rollback=0", "20-b thaw rollback=0"]
    );
    std::fs::remove_file(&flag).unwrap();
    env.clear_trace();
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        env.trace(),
        ["20-b thaw rollback=0", "10-a thaw rollback=0"],
        "{}",
        run.log
    );
}

#[test]
fn a_thaw_cut_off_by_sigterm_is_finished_by_the_next_thaw() {
    cut_off_thaw("", |child, _| {
        crate::common::signal(child, nix::sys::signal::Signal::SIGTERM)
    });
}

#[test]
fn a_thaw_runner_killed_mid_phase_leaves_the_rest_for_the_next_thaw() {
    cut_off_thaw("", |child, hanging| {
        // kill -9: no chance to write anything more; the hanging hook (its
        // own process group) is ended by hand, as a reboot would.
        crate::common::signal(child, nix::sys::signal::Signal::SIGKILL);
        let _ = child.wait();
        let pgid = crate::common::read_pid(hanging);
        nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    });
}

#[test]
fn a_thaw_cut_off_by_the_phase_deadline_is_finished_by_the_next_thaw() {
    cut_off_thaw(
        "phase_timeout = \"1s\"\nkill_grace = \"100ms\"\n",
        |_, _| {},
    );
}

// ---- the guard of a drop-in freeze (end to end under qemu-ga: guard.rs) -----

#[test]
#[ignore = "needs root"]
fn a_second_freeze_replaces_the_guard() {
    crate::common::require_root("second_freeze_guard");
    let env = Env::new();
    three_hooks(&env);
    env.set_config("max_frozen = \"10m\"\n");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    let first = crate::common::guard_of(&env.state).expect("a guard");
    assert!(crate::common::alive(first));
    // No thaw came; a new freeze: the old guard ends, one new one remains.
    let run = env.run(&["freeze", "--max-frozen", "20m"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let second = crate::common::guard_of(&env.state).expect("a guard");
    assert_ne!(first, second);
    assert!(!crate::common::alive(first), "the first guard still runs");
    assert!(crate::common::alive(second));
    assert_has(&run.log, &format!("guard pid {first} ended"));
    assert_has(
        &run.log,
        &format!("guard pid {second} armed: if no thaw comes within 20m"),
    );
    let status = env.run(&["status"]);
    assert_has(&status.stdout, &format!("guard: pid {second}, armed"));
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    assert!(!crate::common::alive(second), "the thaw ends the guard");
}

#[test]
#[ignore = "needs root"]
fn a_failed_freeze_leaves_no_guard_and_max_frozen_0_arms_none() {
    crate::common::require_root("failed_freeze_guard");
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.hook("20-fails", "exit 1");
    assert_eq!(env.run(&["freeze"]).code, Some(1));
    assert_eq!(crate::common::guard_of(&env.state), None);
    std::fs::remove_file(env.hooks.join("20-fails")).unwrap();
    let run = env.run(&["freeze", "--max-frozen", "0"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(crate::common::guard_of(&env.state), None);
    assert_has(&run.log, "no guard: max_frozen is 0");
}

/// The journal records `other` as the guard, but it is not ours: status
/// says the guard does not run, and the thaw neither signals nor waits for it.
fn thaw_finds_no_guard_at(env: &Env, other: &mut std::process::Child) {
    let pid = other.id();
    let status = env.run(&["status"]);
    assert_has(&status.stdout, &format!("guard: pid {pid}, NOT RUNNING"));
    let thaw = env.run(&["thaw"]);
    assert_eq!(thaw.code, Some(0), "{thaw:?}");
    assert_has(
        &thaw.log,
        &format!("the guard (pid {pid}) of the last freeze is not running"),
    );
    assert!(
        other.try_wait().unwrap().is_none(),
        "a process that is not the guard was signalled"
    );
}

#[test]
#[ignore = "needs root"]
fn another_users_process_at_the_guards_pid_is_neither_signalled_nor_waited_for() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    crate::common::require_root("guard_pid_reused");
    let env = Env::new();
    env.tracing_hook("10-a", "");
    // A process of uid 65534 named fsfreeze-hook, at the pid a journal
    // records for its guard (as if the guard's pid had been reused).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fake = dir.path().join("fsfreeze-hook");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let mut other = std::process::Command::new(&fake)
        .arg("30")
        .uid(65534)
        .gid(65534)
        .spawn()
        .unwrap();
    let pid = other.id() as i32;
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::write(
        env.state.join("journal"),
        format!("fsfreeze-hook journal 1\nfreeze 1 1\nstart 10-a\nfrozen 2\nguard {pid} 3\n"),
    )
    .unwrap();
    thaw_finds_no_guard_at(&env, &mut other);
    assert_eq!(env.trace(), ["10-a thaw rollback=0"]);
    other.kill().unwrap();
    other.wait().unwrap();
}

#[test]
#[ignore = "needs root"]
fn a_copy_under_another_name_stands_its_guard_down() {
    crate::common::require_root("renamed_guard");
    let env = Env::new();
    let bin = env.renamed_bin("my-hook");
    env.tracing_hook("10-a", "");
    env.set_config("max_frozen = \"1h\"\n");
    let freeze = env.command_as(&bin, &["freeze"]).output().unwrap();
    assert!(freeze.status.success(), "{freeze:?}");
    let guard = crate::common::guard_of(&env.state).expect("a guard");
    let status = env.command_as(&bin, &["status"]).output().unwrap();
    assert_has(
        &String::from_utf8_lossy(&status.stdout),
        &format!("guard: pid {guard}, armed"),
    );
    let thaw = env.command_as(&bin, &["thaw"]).output().unwrap();
    assert!(thaw.status.success(), "{thaw:?}");
    assert_has(&env.log_text(), &format!("guard pid {guard} ended"));
    assert!(!crate::common::alive(guard), "the guard still waits");
}

#[test]
fn a_process_of_ours_at_a_recorded_pid_but_started_later_is_not_the_guard() {
    // The pid was reused by a process of this user, even one named
    // fsfreeze-hook: its start time is not the recorded one.
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fsfreeze-hook");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let mut other = std::process::Command::new(&fake).arg("30").spawn().unwrap();
    let pid = other.id() as i32;
    assert!(crate::common::eventually(
        std::time::Duration::from_secs(5),
        || { crate::common::start_time(pid).is_some() }
    ));
    let start = crate::common::start_time(pid).unwrap();
    std::fs::create_dir_all(&env.state).unwrap();
    std::fs::write(
        env.state.join("journal"),
        format!(
            "fsfreeze-hook journal 1\nfreeze 1 1\nstart 10-a\nfrozen 2\nguard {pid} 3 {}\n",
            start + 1
        ),
    )
    .unwrap();
    thaw_finds_no_guard_at(&env, &mut other);
    other.kill().unwrap();
    other.wait().unwrap();
}

#[test]
#[ignore = "needs root"]
fn the_guards_thaw_hooks_run_our_binary_after_an_upgrade_replaced_it() {
    // The guard thaws every filesystem (FITHAW): no other test's freeze may
    // be under way meanwhile.
    let _exclusive = crate::common::freezing_test("guard_after_upgrade");
    let env = Env::new();
    let bin = env.renamed_bin("fsfreeze-hook");
    let record = env.path().join("bin-seen");
    env.hook(
        "10-a",
        &format!(
            "[ \"$1\" = thaw ] || exit 0\n\"$FSFREEZE_HOOK_BIN\" --version >/dev/null 2>&1; echo \"$FSFREEZE_HOOK_BIN $?\" > '{}'",
            record.display()
        ),
    );
    // A relative metrics_file is the one beside where the freeze ran, also
    // for the guard, which runs in `/`.
    env.set_config("max_frozen = \"1h\"\nmetrics_file = \"metrics.prom\"\n");
    let freeze = env
        .command_as(&bin, &["freeze"])
        .current_dir(env.path())
        .output()
        .unwrap();
    assert!(freeze.status.success(), "{freeze:?}");
    let guard = crate::common::guard_of(&env.state).expect("a guard");
    // A package upgrade: a new file at the same path, the old one unlinked.
    std::fs::remove_file(&bin).unwrap();
    std::fs::copy(crate::common::BIN, &bin).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guard),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        crate::common::eventually(std::time::Duration::from_secs(20), || record.exists()
            && !crate::common::alive(guard)),
        "the guard's thaw hook did not run: {}",
        env.log_text()
    );
    assert_eq!(
        std::fs::read_to_string(&record).unwrap(),
        format!("{} 0\n", bin.display())
    );
    let metrics = std::fs::read_to_string(env.path().join("metrics.prom")).unwrap();
    assert_has(&metrics, "fsfreeze_hook_guard_thaws_total 1");
    // status says who thawed, and when.
    let status = env.run(&["status"]);
    assert_has(
        &status.stdout,
        "nothing held: the guard thawed the guest at ",
    );
    let json: serde_json::Value =
        serde_json::from_str(env.run(&["status", "--json"]).stdout.trim()).unwrap();
    assert_eq!(json["last_settled"]["by"], "guard_signal", "{json}");
    assert!(json["last_settled"]["at_ms"].is_u64(), "{json}");
    assert!(!Path::new("/metrics.prom").exists(), "written into /");
}

#[test]
#[ignore = "needs root"]
fn a_late_thaw_waits_for_a_guard_that_has_begun_thawing_and_runs_no_hook_twice() {
    // The guard thaws every filesystem (FITHAW): no other test's freeze may
    // be under way meanwhile.
    let _exclusive = crate::common::freezing_test("late_thaw_waits");
    let env = Env::new();
    let thawing = env.path().join("thawing");
    env.tracing_hook(
        "10-a",
        &format!(
            "[ \"$1\" = thaw ] && {{ touch '{}'; sleep 2; echo done >> '{}'; }}\nexit 0",
            thawing.display(),
            env.path().join("done").display()
        ),
    );
    env.set_config("max_frozen = \"1h\"\n");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    let guard = crate::common::guard_of(&env.state).expect("a guard");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(guard),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(
        crate::common::eventually(std::time::Duration::from_secs(10), || thawing.exists()),
        "the guard's thaw hook did not start"
    );
    // The hypervisor's thaw arrives while the guard's thaw hook runs.
    let late = env.run(&["thaw"]);
    assert_eq!(late.code, Some(0), "{late:?}");
    assert!(!crate::common::alive(guard));
    assert_eq!(
        std::fs::read_to_string(env.path().join("done")).unwrap(),
        "done\n",
        "the guard's thaw hook was cut off: {}",
        late.log
    );
    assert_eq!(
        env.trace(),
        ["10-a freeze rollback=0", "10-a thaw rollback=1"],
        "{}",
        late.log
    );
    assert_has(&late.log, "guard thaw finished");
    assert_has(&late.log, "the guard had already thawed the guest");
    assert!(!late.log.contains("guard thaw interrupted"), "{}", late.log);
}

#[test]
fn the_one_error_line_carries_what_the_failed_hook_said_last() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.hook(
        "20-db",
        "[ \"$1\" = freeze ] || exit 0\necho connecting\necho 'cannot reach the database' >&2\necho\nexit 1",
    );
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let line = run.stderr.lines().last().unwrap();
    assert!(
        line.contains("20-db exited with status 1 after ")
            && line.contains(": \"cannot reach the database\"; rolled back"),
        "{line}"
    );
    // Escaped, bounded, one line whatever the hook printed.
    env.hook(
        "20-db",
        "[ \"$1\" = freeze ] || exit 0\nprintf 'x\\033[2J%.0s' $(seq 1 300)\nexit 1",
    );
    env.run(&["thaw"]);
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let line = run.stderr.lines().last().unwrap();
    assert!(!line.contains('\u{1b}'), "{line:?}");
    assert!(line.len() < 2000, "{}", line.len());
    assert_has(line, "x\\u{1b}[2J");
}

#[test]
fn a_refused_rehearsal_is_logged_as_a_refused_freeze_is() {
    let env = Env::new();
    let gone = env.path().join("no-such-dir");
    let run = env.run(&["rehearse", "--hooks-dir", gone.to_str().unwrap()]);
    assert_eq!(run.code, Some(3), "{run:?}");
    assert_has(
        &run.log,
        &format!(
            "rehearse refused: hooks dir {} does not exist",
            gone.display()
        ),
    );
}

#[test]
fn a_config_broken_between_freeze_and_thaw_does_not_stop_the_thaw() {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;
    // The config breaks (an unquoted duration), or stops being trusted,
    // after the freeze: the thaw runs what the journal recorded, with the
    // settings the freeze ran under (here: forward thaw order), says why in
    // the log, and (as root) stands the guard down as any thaw does.
    for (name, broken, mode) in [
        ("broken", "max_frozen = 20s\n", 0o644),
        ("untrusted", "thaw_order = \"reverse\"\n", 0o666),
    ] {
        let env = Env::new();
        env.tracing_hook("10-a", "");
        env.tracing_hook("20-b", "");
        env.set_config("thaw_order = \"forward\"\n");
        let run = env.run(&["freeze"]);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        env.set_config(broken);
        let config = env.path().join("fsfreeze-hook.conf");
        fs::set_permissions(&config, fs::Permissions::from_mode(mode)).unwrap();
        let run = env.run(&["thaw"]);
        assert_eq!(run.code, Some(0), "{name}: {run:?}");
        assert_eq!(
            env.trace(),
            [
                "10-a freeze rollback=0",
                "20-b freeze rollback=0",
                "10-a thaw rollback=0",
                "20-b thaw rollback=0"
            ],
            "{name}: the freeze's settings (forward)"
        );
        assert_has(&run.log, "config unusable now: ");
        assert_has(
            &run.log,
            "the thaw runs with the settings the freeze ran under (kept in ",
        );
        if nix::unistd::geteuid().is_root() {
            assert_has(&run.log, "guard pid ");
            assert!(
                !run.log.contains("did not end"),
                "{name}: the guard stood down: {}",
                run.log
            );
        }
        // status shows it whatever the config.
        let status = env.run(&["status"]);
        assert_eq!(status.code, Some(1), "{name}: {status:?}");
        fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();
    }
}

#[test]
#[ignore = "needs root"]
fn two_freezes_at_once_leave_one_guard() {
    // The second freeze waits for the lock while the first runs a slow
    // hook: it stood the guard down before the first armed one. The guard
    // the journal no longer names ends by itself at once, thawing nothing;
    // the thaw ends the other.
    crate::common::require_root("two_freezes_one_guard");
    let env = Env::new();
    env.hook("10-slow", "[ \"$1\" = freeze ] && sleep 2; exit 0");
    env.set_config("max_frozen = \"5m\"\n");
    let first = env.command(&["freeze"]).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let second = env.run(&["freeze"]);
    let first = first.wait_with_output().unwrap();
    assert!(first.status.success());
    assert_eq!(second.code, Some(0), "{second:?}");
    let log = env.log_text();
    // "guard pid N armed: ..." of each freeze.
    let guards: Vec<i32> = log
        .lines()
        .filter(|l| l.contains(" armed: "))
        .filter_map(|l| {
            l.split("guard pid ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert_eq!(guards.len(), 2, "two guards armed: {log}");
    let first_guard = guards[0];
    assert!(
        crate::common::eventually(std::time::Duration::from_secs(10), || {
            !crate::common::alive(first_guard)
        }),
        "the guard the journal no longer names lives on: {log}"
    );
    assert!(crate::common::alive(guards[1]), "the journal's guard lives");
    let thaw = env.run(&["thaw"]);
    assert_eq!(thaw.code, Some(0), "{thaw:?}");
    assert_has(&thaw.log, &format!("guard pid {} ended", guards[1]));
    assert!(
        !env.log_text().contains("thawed by max_frozen"),
        "no guard thawed anything"
    );
}
