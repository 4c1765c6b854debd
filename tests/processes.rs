//! Time limits, process groups, background processes left by hooks, signals
//! to the runner, and the lock between runs.

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::common::{
    Env, alive, assert_has, assert_lines, eventually, lines_with, read_pid, signal,
};

#[test]
fn timed_out_hook_and_its_term_ignoring_grandchild_are_killed() {
    let env = Env::new();
    let gc = env.path().join("grandchild.pid");
    env.hook(
        "10-hang",
        &format!(
            "sh -c 'trap \"\" TERM; echo $$ > \"{gc}\"; while :; do sleep 0.1; done' &\n\
             trap '' TERM\n\
             while :; do sleep 0.1; done",
            gc = gc.display()
        ),
    );
    env.set_config("kill_grace = \"300ms\"\n");
    let run = env.run(&["freeze", "--timeout", "1s"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let gc_pid = read_pid(&gc);
    assert!(!alive(gc_pid), "grandchild {gc_pid} outlived the timeout");
    // 1 s limit + 0.3 s grace, then KILL; rollback thaw gets its own 1 s.
    assert!(
        run.elapsed >= Duration::from_millis(1300),
        "{:?}",
        run.elapsed
    );
    assert!(run.elapsed < Duration::from_secs(15), "{:?}", run.elapsed);
    let line = lines_with(&run.log, "10-hang finished with status=137");
    assert_eq!(
        line.len(),
        2,
        "freeze and rollback both time out: {}",
        run.log
    );
    assert!(
        line[0].ends_with("timed out after 1s, ended by SIGKILL"),
        "{}",
        line[0]
    );
    assert!(
        run.stderr
            .contains("10-hang timed out after 1s, ended by SIGKILL;"),
        "{}",
        run.stderr
    );
}

#[test]
fn hook_that_exits_on_term_is_not_killed() {
    let env = Env::new();
    env.hook("10-slow", "sleep 30 & wait");
    let run = env.run(&["freeze", "--timeout", "500ms", "--on-error", "continue"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let line = assert_lines(&run.log, "10-slow finished with status=143", 1);
    assert!(
        line[0].ends_with("timed out after 500ms, ended by SIGTERM"),
        "{}",
        line[0]
    );
    assert!(run.elapsed < Duration::from_secs(4), "{:?}", run.elapsed);
}

#[test]
fn phase_timeout_bounds_the_whole_phase() {
    let env = Env::new();
    env.tracing_hook("10-a", "sleep 0.8");
    env.tracing_hook("20-b", "[ \"$1\" = freeze ] && sleep 30\nexit 0");
    env.tracing_hook("30-c", "");
    env.set_config("timeout = \"0\"\nphase_timeout = \"1500ms\"\nkill_grace = \"100ms\"\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    assert_has(&run.stderr, "20-b timed out after");
    assert_has(&run.stderr, "(phase_timeout)");
    assert_eq!(
        env.trace(),
        [
            "10-a freeze rollback=0",
            "20-b freeze rollback=0",
            "20-b thaw rollback=1",
            "10-a thaw rollback=1"
        ]
    );
}

#[test]
fn per_hook_timeout_from_the_config() {
    let env = Env::new();
    env.hook("10-fast-limit", "sleep 5");
    env.hook("20-long-limit", "sleep 0.5");
    env.set_config(
        "timeout = \"300ms\"\nkill_grace = \"100ms\"\non_error = \"continue\"\n\
         [hooks.\"20-long-limit\"]\ntimeout = \"10s\"\n",
    );
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0));
    assert_lines(&run.log, "10-fast-limit finished with status=143", 1);
    assert_lines(&run.log, "20-long-limit finished with status=0", 1);
}

/// The way qemu-ga 9.1+ runs its hook: stdout and stderr are one pipe, read
/// until EOF. A lock holder left by a hook must not keep that pipe open.
#[test]
fn background_holder_does_not_delay_the_runner_and_keeps_logging() {
    let env = Env::new();
    let pid = env.path().join("holder.pid");
    let done = env.path().join("holder.done");
    env.hook(
        "10-lock-holder",
        &format!(
            "[ \"$1\" = freeze ] || exit 0\n\
             ( trap 'echo SIGPIPE >> \"{done}\"' PIPE; sleep 5; echo 'late line from the holder'; echo ok >> \"{done}\" ) &\n\
             echo $! > \"{pid}\"",
            pid = pid.display(),
            done = done.display()
        ),
    );
    let (mut reader, writer) = std::io::pipe().unwrap();
    let writer2 = writer.try_clone().unwrap();
    let start = Instant::now();
    let mut child = env
        .command(&["freeze"])
        .stdin(Stdio::null())
        .stdout(OwnedFd::from(writer))
        .stderr(OwnedFd::from(writer2))
        .spawn()
        .unwrap();
    let reading = std::thread::spawn(move || {
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        all
    });
    // Drop our copies of the write end (moved into the Command and consumed).
    let output = reading.join().unwrap();
    let eof_after = start.elapsed();
    let status = child.wait().unwrap();
    assert!(status.success());
    assert_eq!(output, b"", "nothing on the runner's streams");
    // Long before the holder's 5 s (it takes some 50 ms).
    assert!(
        eof_after < Duration::from_secs(3),
        "EOF after {eof_after:?}"
    );
    let holder = read_pid(&pid);
    assert!(alive(holder), "the holder must outlive the runner");
    assert!(
        eventually(Duration::from_secs(20), || fs::read_to_string(&done)
            .is_ok()),
        "holder never finished"
    );
    assert_eq!(
        fs::read_to_string(&done).unwrap(),
        "ok\n",
        "holder was hit by SIGPIPE"
    );
    assert!(
        eventually(Duration::from_secs(6), || env
            .log_text()
            .contains("late line from the holder")),
        "{}",
        env.log_text()
    );
}

#[test]
fn sigterm_to_the_runner_ends_the_hook_rolls_back_and_exits_143() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let started = env.hanging_freeze_hook("20-slow");
    env.set_config("kill_grace = \"200ms\"\n");
    let (child, start) = env.spawn_until(&["freeze"], &started);
    signal(&child, nix::sys::signal::SIGTERM);
    let run = env.finish(child.wait_with_output().unwrap(), start);
    assert_eq!(run.code, Some(143), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(10));
    assert_eq!(
        env.trace(),
        [
            "10-a freeze rollback=0",
            "20-slow freeze rollback=0",
            "20-slow thaw rollback=1",
            "10-a thaw rollback=1"
        ]
    );
    // The journal is left true: nothing is held.
    env.clear_trace();
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    assert!(env.trace().is_empty());
}

#[test]
fn sigkill_of_the_runner_mid_freeze_leaves_a_journal_the_thaw_follows() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    let started = env.hanging_freeze_hook("20-b");
    env.tracing_hook("30-c", "");
    let (mut child, _) = env.spawn_until(&["freeze"], &started);
    child.kill().unwrap();
    child.wait().unwrap();
    env.clear_trace();
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(
        env.trace(),
        ["20-b thaw rollback=0", "10-a thaw rollback=0"]
    );
    assert_lines(&run.log, "the last freeze did not complete", 1);
}

#[test]
fn a_freeze_hook_dies_with_its_killed_runner_and_the_thaw_ends_what_it_left_running() {
    // The hook's own process takes a lock 2 s in; a client it runs in the
    // foreground (a subshell of its group) takes another 2 s in. The runner
    // is killed with -9 at once, the thaw comes: neither lock may be taken
    // after the thaw released them.
    // One after the other, and in a parallel group (each hook below a
    // reaper of its own, which dies with the runner too).
    for parallel in [false, true] {
        let env = Env::new();
        let started = env.path().join("started");
        let locks = env.path().join("locks");
        env.tracing_hook(
            "10-db",
            &format!(
                "[ \"$1\" = freeze ] || exit 0\n\
             ( sleep 2; echo client-lock >> '{l}' ) &\n\
             echo $$ > '{s}.pid'; touch '{s}'\n\
             sleep 2; echo hook-lock >> '{l}'\n\
             wait",
                l = locks.display(),
                s = started.display()
            ),
        );
        if parallel {
            env.tracing_hook("20-other", "sleep 1");
            env.set_config("parallel = true\n");
        }
        let (mut child, _) = env.spawn_until(&["freeze"], &started);
        if parallel {
            // Both hooks of the group under way before the kill.
            assert!(eventually(Duration::from_secs(10), || env
                .trace()
                .iter()
                .any(|l| l.starts_with("20-other freeze"))));
        }
        let hook = crate::common::read_pid(&env.path().join("started.pid"));
        child.kill().unwrap();
        child.wait().unwrap();
        // The hook's own process goes with its runner, before any thaw.
        assert!(
            eventually(Duration::from_secs(2), || !alive(hook)),
            "the hook outlived its runner"
        );
        let run = env.run(&["thaw"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        let mut trace = env.trace();
        trace.sort();
        let expected: &[&str] = if parallel {
            &[
                "10-db freeze rollback=0",
                "10-db thaw rollback=0",
                "20-other freeze rollback=0",
                "20-other thaw rollback=0",
            ]
        } else {
            &["10-db freeze rollback=0", "10-db thaw rollback=0"]
        };
        assert_eq!(trace, expected, "parallel: {parallel}");
        assert_has(
            &run.log,
            "of a freeze hook whose runner died still runs; ending it before the thaw hooks",
        );
        std::thread::sleep(Duration::from_secs(4));
        assert_eq!(
            fs::read_to_string(&locks).unwrap_or_default(),
            "",
            "a lock was taken after the thaw"
        );
        assert!(!env.state.join("running").read_dir().unwrap().any(|_| true));
    }
}

#[test]
fn second_run_waits_for_the_lock_then_fails_clearly() {
    let env = Env::new();
    let started = env.hanging_freeze_hook("10-slow");
    let (mut first, _) = env.spawn_until(&["freeze"], &started);
    // This run's phase_timeout (1 s) is its wait for the lock.
    env.set_config("phase_timeout = \"1s\"\n");
    let start = Instant::now();
    let run = env.command(&["thaw"]).output().unwrap();
    let waited = start.elapsed();
    assert_eq!(run.status.code(), Some(3));
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(err.contains("another fsfreeze-hook run holds"), "{err}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // With the default limit the second run waits until the first is done.
    env.set_config("");
    let mut second = env.command(&["thaw"]).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        second.try_wait().unwrap().is_none(),
        "the second run must wait"
    );
    signal(&first, nix::sys::signal::SIGTERM);
    assert_eq!(first.wait().unwrap().code(), Some(143));
    assert_eq!(second.wait().unwrap().code(), Some(0));
}

#[test]
fn ctrl_c_during_a_rehearsal_hold_thaws_at_once() {
    let env = Env::new();
    let frozen = env.path().join("frozen");
    env.tracing_hook("10-a", &format!("touch '{}'", frozen.display()));
    let (child, start) = env.spawn_until(&["rehearse", "--hold", "30s"], &frozen);
    std::thread::sleep(Duration::from_millis(100));
    signal(&child, nix::sys::signal::SIGINT);
    let run = env.finish(child.wait_with_output().unwrap(), start);
    assert_eq!(run.code, Some(130), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    assert_eq!(
        env.trace(),
        ["10-a freeze rollback=0", "10-a thaw rollback=0"]
    );
    assert!(
        run.stderr
            .contains("rehearsal interrupted by SIGINT; thawed"),
        "{}",
        run.stderr
    );
}
