//! `parallel = true`: hooks that run at once, end together on a failure, are
//! bounded each by its own timeout, and keep their output lines whole; and the
//! presync, which a stuck device must not hold up. (How much shorter the
//! applications' pause gets is measured by benches/parallel.py, not here.)

use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::common::{Env, alive, assert_has, eventually, freezing_test, read_pid, require_root};
use crate::loopfs::LoopFs;

/// 10-waits finishes only once 20-makes has run: one after the other, it
/// waits in vain (and fails after 10 s); at once, both succeed.
fn waiting_pair(env: &Env) {
    let marker = env.path().join("made");
    env.tracing_hook(
        "10-waits",
        &format!(
            "[ \"$1\" = freeze ] || exit 0\ni=0\nwhile [ ! -e '{m}' ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done\n[ -e '{m}' ]",
            m = marker.display()
        ),
    );
    env.tracing_hook(
        "20-makes",
        &format!(
            "[ \"$1\" = freeze ] && touch '{}'\nexit 0",
            marker.display()
        ),
    );
}

#[test]
fn the_hooks_of_a_group_run_at_once() {
    let env = Env::new();
    waiting_pair(&env);
    env.set_config("parallel = true\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let mut trace = env.trace();
    trace.sort();
    assert_eq!(
        trace,
        ["10-waits freeze rollback=0", "20-makes freeze rollback=0"]
    );
    assert_eq!(env.run(&["thaw"]).code, Some(0));
}

#[test]
fn without_parallel_the_same_hooks_run_one_after_the_other() {
    let env = Env::new();
    waiting_pair(&env);
    let run = env.run(&["freeze"]);
    assert_eq!(
        run.code,
        Some(1),
        "10-waits must have waited in vain: {run:?}"
    );
    assert_eq!(
        env.trace(),
        ["10-waits freeze rollback=0", "10-waits thaw rollback=1"]
    );
}

#[test]
fn a_failure_in_a_group_ends_the_running_hooks_and_rolls_back_each_that_started() {
    let env = Env::new();
    let pid = env.path().join("slow.pid");
    env.tracing_hook(
        "10-slow",
        &format!(
            "[ \"$1\" = freeze ] || exit 0\necho $$ > '{}'\nsleep 30",
            pid.display()
        ),
    );
    env.tracing_hook(
        "20-fails",
        &format!(
            "[ \"$1\" = freeze ] || exit 0\ni=0; while [ ! -e '{}' ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done\nexit 1",
            pid.display()
        ),
    );
    env.set_config("parallel = true\nkill_grace = \"1s\"\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .starts_with("fsfreeze-hook: freeze aborted: 20-fails exited with status 1"),
        "{}",
        run.stderr
    );
    assert!(pid.exists(), "10-slow never ran: {run:?}");
    assert!(!alive(read_pid(&pid)), "10-slow still runs");
    assert_has(&run.log, "10-slow finished with status=143");
    assert_has(
        &run.log,
        "was ended by SIGTERM when another hook of its group failed",
    );
    let mut thaws: Vec<String> = env
        .trace()
        .into_iter()
        .filter(|l| l.contains("thaw"))
        .collect();
    thaws.sort();
    assert_eq!(
        thaws,
        ["10-slow thaw rollback=1", "20-fails thaw rollback=1"]
    );
}

#[test]
fn a_group_member_past_its_timeout_is_killed_with_its_process_group() {
    let env = Env::new();
    let grandchild = env.path().join("grandchild.pid");
    env.tracing_hook(
        "10-hangs",
        &format!(
            "[ \"$1\" = freeze ] || exit 0\nsh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 60' &\nsleep 60",
            grandchild.display()
        ),
    );
    env.tracing_hook("20-quick", "exit 0");
    env.set_config(
        "parallel = true\nkill_grace = \"300ms\"\n[hooks.\"10-hangs\"]\ntimeout = \"1s\"\n",
    );
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.stderr
            .contains("10-hangs timed out after 1s, ended by SIGKILL"),
        "{}",
        run.stderr
    );
    assert!(
        eventually(Duration::from_secs(10), || !alive(read_pid(&grandchild))),
        "the TERM-ignoring grandchild survived"
    );
}

#[test]
fn output_of_hooks_that_run_at_once_is_never_interleaved_within_a_line() {
    let env = Env::new();
    for (name, c) in [("10-a", 'a'), ("20-b", 'b'), ("30-c", 'c')] {
        env.hook(
            name,
            &format!(
                "i=0; line=$(printf '%0.s{c}' $(seq 300)); while [ $i -lt 400 ]; do echo \"$line\"; i=$((i+1)); done"
            ),
        );
    }
    env.set_config("parallel = true\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let mut counts = [0; 3];
    for line in run.log.lines().filter(|l| l.starts_with('[')) {
        let (name, c, n) = match &line[..6] {
            "[10-a]" => ("10-a", 'a', 0),
            "[20-b]" => ("20-b", 'b', 1),
            "[30-c]" => ("30-c", 'c', 2),
            other => panic!("a line of nobody's: {other}"),
        };
        assert_eq!(line, format!("[{name}] {}", c.to_string().repeat(300)));
        counts[n] += 1;
    }
    assert_eq!(counts, [400, 400, 400]);
}

/// Thaws the outer filesystem on drop (before the inner one's unmount).
struct Thaw<'a>(&'a LoopFs);

impl Drop for Thaw<'_> {
    fn drop(&mut self) {
        let _ = Command::new("fsfreeze").arg("-u").arg(&self.0.mnt).status();
    }
}

#[test]
#[ignore = "needs root"]
fn a_presync_that_cannot_finish_does_not_hold_the_freeze() {
    let _exclusive = freezing_test("presync_stuck");
    require_root("presync_stuck");
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.set_config("presync_timeout = \"1s\"\n");
    // A filesystem whose backing file lives on another one, frozen: its
    // dirty data cannot reach its device, and syncfs on it blocks. The data
    // is written once the other is frozen (page cache only: the write
    // itself does not wait), so that no writeback of a loaded machine can
    // have flushed it first.
    let dir = tempfile::tempdir().unwrap();
    let outer = LoopFs::ext4(dir.path());
    let inner = LoopFs::make(&outer.mnt, "ext4", &dir.path().join("inner"));
    let status = Command::new("fsfreeze")
        .arg("-f")
        .arg(&outer.mnt)
        .status()
        .unwrap();
    assert!(status.success());
    let thaw = Thaw(&outer);
    let dirty = Command::new("timeout")
        .arg("20")
        .arg("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", inner.mnt.join("dirty").display()))
        .args(["bs=1M", "count=8", "status=none"])
        .status()
        .unwrap();
    assert!(
        dirty.success(),
        "the write into the inner filesystem: {dirty}"
    );
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_has(
        &run.log,
        "presync: not finished after 1s (presync_timeout; a device is slow or stuck); going on without it",
    );
    assert_eq!(env.trace(), ["10-a freeze rollback=0"]);
    assert!(
        run.elapsed < Duration::from_secs(20),
        "the freeze waited {:?}",
        run.elapsed
    );
    drop(thaw);
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    drop(inner);
}

/// A durations history that says 10-slow takes 20 s and 20-quick 0.1 s:
/// 20-quick is scheduled 19.9 s after the group's start.
fn history_says_slow(env: &Env) {
    fs::create_dir_all(&env.state).unwrap();
    fs::write(
        env.state.join("durations"),
        "10-slow 20000,20000,20000\n20-quick 100\n",
    )
    .unwrap();
}

#[test]
fn a_quick_hook_starts_at_once_when_the_slow_one_it_waited_for_has_ended() {
    let env = Env::new();
    history_says_slow(&env);
    // This time 10-slow is quick.
    env.tracing_hook("10-slow", "");
    env.tracing_hook("20-quick", "");
    env.set_config("parallel = true\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    // Not the 19.9 s the history scheduled (a run takes some 100 ms).
    assert!(run.elapsed < Duration::from_secs(6), "{:?}", run.elapsed);
    assert_eq!(env.trace().len(), 2);
    assert_eq!(env.run(&["thaw"]).code, Some(0));
}

#[test]
fn no_scheduled_start_lies_past_the_phase_deadline() {
    let env = Env::new();
    history_says_slow(&env);
    // This time 10-slow hangs, and a failure does not end the group
    // (on_error = "continue"): phase_timeout (3 s) ends the phase, not the
    // 19.9 s the history scheduled 20-quick at.
    env.hanging_freeze_hook("10-slow");
    env.tracing_hook("20-quick", "");
    env.set_config(
        "parallel = true\non_error = \"continue\"\nphase_timeout = \"3s\"\nkill_grace = \"200ms\"\n",
    );
    let run = env.run(&["freeze"]);
    assert!(run.elapsed < Duration::from_secs(9), "{:?}", run.elapsed);
    assert_has(&run.log, "phase_timeout");
    // As root a freeze that went on left a guard: the thaw stands it down.
    env.run(&["thaw"]);
}

#[test]
fn an_absurd_durations_history_is_ignored() {
    let env = Env::new();
    fs::create_dir_all(&env.state).unwrap();
    fs::write(
        env.state.join("durations"),
        "10-waits 1\n20-makes 18446744073709551615\n",
    )
    .unwrap();
    waiting_pair(&env);
    env.set_config("parallel = true\n");
    // 10-waits needs 20-makes to run at once with it: the absurd figure
    // must not delay either.
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(6), "{:?}", run.elapsed);
    // As root the freeze left a guard: the thaw stands it down.
    env.run(&["thaw"]);
}

/// Ends, when dropped, the processes whose pids the files name (what a
/// test's hooks left running), whatever the test found.
struct EndsLeftovers(Vec<std::path::PathBuf>);

impl Drop for EndsLeftovers {
    fn drop(&mut self) {
        for file in &self.0 {
            if let Some(pid) = fs::read_to_string(file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
                && alive(pid)
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// A hook's body that starts two sleeps outside its process group and
/// writes their pids to `<tag>-setsid.pid` (a child in a session of its
/// own) and `<tag>-orphan.pid` (a double fork's orphan, in a session of its
/// own too), then runs `rest`.
fn leaves_two(env: &Env, tag: &str, rest: &str) -> [std::path::PathBuf; 2] {
    let setsid = env.path().join(format!("{tag}-setsid.pid"));
    let orphan = env.path().join(format!("{tag}-orphan.pid"));
    env.tracing_hook(
        tag,
        &format!(
            "[ \"$1\" = freeze ] || exit 0\nsetsid sleep 301 & echo $! > '{s}.new'; mv '{s}.new' '{s}'\n( setsid sleep 302 & echo $! > '{o}.new'; mv '{o}.new' '{o}' )\n{rest}",
            s = setsid.display(),
            o = orphan.display(),
        ),
    );
    [setsid, orphan]
}

#[test]
fn a_member_past_its_timeout_ends_what_descends_from_it_and_nothing_another_member_started() {
    let env = Env::new();
    // 10-slow leaves two processes and hangs past its limit; 20-holder
    // leaves two lock holders and is still running when 10-slow is ended;
    // 30-quick ends by itself meanwhile (what it leaves is left alone, and
    // nothing of 10-slow's is taken for it).
    let slow = leaves_two(&env, "10-slow", "sleep 30");
    let holder = leaves_two(&env, "20-holder", "sleep 4");
    env.tracing_hook("30-quick", "sleep 1");
    let _cleanup = EndsLeftovers(slow.iter().chain(&holder).cloned().collect());
    env.set_config(
        "parallel = true\non_error = \"continue\"\nkill_grace = \"300ms\"\n[hooks.\"10-slow\"]\ntimeout = \"2s\"\n",
    );
    let run = env.run(&["freeze"]);
    assert_has(&run.log, "10-slow finished with status=143");
    assert_has(&run.log, "20-holder finished with status=0");
    for file in &slow {
        let pid = read_pid(file);
        assert!(
            eventually(Duration::from_secs(10), || !alive(pid)),
            "{} (pid {pid}) outlived the hook that was ended: {run:?}",
            file.display()
        );
    }
    for file in &holder {
        let pid = read_pid(file);
        assert!(
            alive(pid),
            "{} (pid {pid}), left by a hook that ended by itself, was ended: {run:?}",
            file.display()
        );
    }
    env.run(&["thaw"]);
}

#[test]
fn a_member_ended_with_its_group_takes_what_it_started_outside_its_process_group() {
    // The group ends because another member failed, or because the runner
    // got SIGTERM: either way, what the ended hook started in sessions of
    // its own goes with it, as with parallel off.
    for how in ["failure", "SIGTERM"] {
        let env = Env::new();
        let started = env.path().join("10-bg.started");
        let left = leaves_two(
            &env,
            "10-bg",
            &format!("touch '{}'; sleep 30", started.display()),
        );
        let _cleanup = EndsLeftovers(left.to_vec());
        if how == "failure" {
            env.tracing_hook(
                "20-fails",
                &format!(
                    "[ \"$1\" = freeze ] || exit 0\ni=0; while [ ! -e '{}' ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done\nexit 1",
                    started.display()
                ),
            );
        } else {
            env.hanging_freeze_hook("20-hangs");
        }
        env.set_config("parallel = true\nkill_grace = \"300ms\"\n");
        let run = if how == "failure" {
            env.run(&["freeze"])
        } else {
            let (child, start) = env.spawn_until(&["freeze"], &started);
            let _ = read_pid(&left[1]);
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            )
            .unwrap();
            env.finish(child.wait_with_output().unwrap(), start)
        };
        assert_eq!(
            run.code,
            Some(if how == "failure" { 1 } else { 143 }),
            "{how}: {run:?}"
        );
        for file in &left {
            let pid = read_pid(file);
            assert!(
                eventually(Duration::from_secs(10), || !alive(pid)),
                "{how}: {} (pid {pid}) outlived its hook: {run:?}",
                file.display()
            );
        }
    }
}
