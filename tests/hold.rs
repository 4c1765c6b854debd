//! `hold` and `release`: a session kept alive from the freeze hook to the
//! thaw hook, detached from the hook and from qemu-ga's pipe.

use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crate::common::{Env, alive, assert_has, assert_lines, eventually, read_pid};

/// A "client" that holds until its stdin closes: it prints the marker after
/// reading `lock`, and records its pid and how it ended. Returns its path.
fn client(env: &Env) -> std::path::PathBuf {
    let path = env.path().join("client.sh");
    fs::write(
        &path,
        format!(
            "echo $$ > '{d}/client.pid'\n\
             while read l; do\n\
               [ \"$l\" = lock ] && echo FSFREEZE-READY\n\
               [ \"$l\" = unlock ] && echo unlocked >> '{d}/client.log'\n\
             done\n\
             echo closed >> '{d}/client.log'\n",
            d = env.path().display()
        ),
    )
    .unwrap();
    path
}

fn hook_pair(env: &Env, max_hold: &str) {
    let c = client(env);
    env.tracing_hook(
        "20-holder",
        &format!(
            "case \"$1\" in\n\
             freeze) printf 'lock\\n' | \"$FSFREEZE_HOOK_BIN\" hold demo --max-hold {max_hold} --release-input 'unlock\n' -- sh '{c}' ;;\n\
             thaw) \"$FSFREEZE_HOOK_BIN\" release demo ;;\n\
             esac",
            c = c.display()
        ),
    );
}

#[test]
fn freeze_hook_holds_a_session_until_the_thaw_hook_releases_it() {
    let env = Env::new();
    hook_pair(&env, "5m");
    // The runner's streams as qemu-ga 9.1+ reads them: one pipe, until EOF.
    let (mut reader, writer) = std::io::pipe().unwrap();
    let writer2 = writer.try_clone().unwrap();
    let start = Instant::now();
    let mut child = env
        .command(&["freeze"])
        .stdout(OwnedFd::from(writer))
        .stderr(OwnedFd::from(writer2))
        .spawn()
        .unwrap();
    let mut out = Vec::new();
    reader.read_to_end(&mut out).unwrap();
    // Not held until the session ends (--max-hold 5m): EOF comes when the
    // runner is done, some 100 ms.
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "EOF after {:?}",
        start.elapsed()
    );
    assert!(
        child.wait().unwrap().success(),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let client = read_pid(&env.path().join("client.pid"));
    assert!(
        alive(client),
        "the session outlives the hook and the runner"
    );
    let status = env.run(&["status"]).stdout;
    assert!(status.contains("session demo: keeper pid"), "{status}");
    assert!(status.contains("(holding)"), "{status}");
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(eventually(Duration::from_secs(5), || !alive(client)));
    assert_eq!(
        fs::read_to_string(env.path().join("client.log")).unwrap(),
        "unlocked\nclosed\n"
    );
    assert!(
        fs::read_dir(env.state.join("held"))
            .unwrap()
            .next()
            .is_none(),
        "no state left"
    );
    assert_lines(
        &env.log_text(),
        "hold demo: released; session closed after",
        1,
    );
}

#[test]
fn max_hold_releases_by_itself_when_no_thaw_comes() {
    let env = Env::new();
    hook_pair(&env, "1s");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    let client = read_pid(&env.path().join("client.pid"));
    assert!(alive(client));
    assert!(
        eventually(Duration::from_secs(5), || !alive(client)),
        "max hold did not end it"
    );
    assert!(eventually(Duration::from_secs(2), || env
        .log_text()
        .contains("max hold of 1s expired before any release")));
    // A later thaw finds nothing held and is fine.
    assert_eq!(env.run(&["thaw"]).code, Some(0));
}

#[test]
fn a_session_that_fails_before_it_is_ready_fails_the_freeze_with_its_output() {
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.hook(
        "20-db",
        "[ \"$1\" = freeze ] || exit 0\necho x | \"$FSFREEZE_HOOK_BIN\" hold db -- sh -c 'echo ERROR 1205: Lock wait timeout exceeded; exit 1'",
    );
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(&run.stderr, "20-db exited with status 1");
    assert_has(
        &run.log,
        "hold db failed: sh ended before it was ready; it said: ERROR 1205: Lock wait timeout exceeded",
    );
    assert_eq!(
        env.trace(),
        ["10-a freeze rollback=0", "10-a thaw rollback=1"]
    );
}

#[test]
fn a_second_hold_replaces_a_stale_session_of_the_same_name() {
    let env = Env::new();
    hook_pair(&env, "5m");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    let first = read_pid(&env.path().join("client.pid"));
    fs::remove_file(env.path().join("client.pid")).unwrap();
    // qemu-ga never sent the thaw; the next freeze comes.
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    let second = read_pid(&env.path().join("client.pid"));
    assert_ne!(first, second);
    assert!(
        eventually(Duration::from_secs(5), || !alive(first)),
        "the stale session was ended"
    );
    assert!(alive(second));
    assert_lines(
        &env.log_text(),
        "hold demo: replacing the session still held",
        1,
    );
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    assert!(eventually(Duration::from_secs(5), || !alive(second)));
}

/// COMMAND gets fds 0-2 only: not the keeper's end of the ready pipe (with
/// it, a `hold` whose keeper died would wait for COMMAND to exit).
#[test]
fn the_held_command_gets_descriptors_0_1_2_only() {
    let env = Env::new();
    let pidfile = env.path().join("command.pid");
    env.tracing_hook(
        "20-holder",
        &format!(
            "case \"$1\" in\n\
             freeze) \"$FSFREEZE_HOOK_BIN\" hold fds --max-hold 1m -- sh -c 'echo $$ > {p}; echo FSFREEZE-READY; exec sleep 60' ;;\n\
             thaw) \"$FSFREEZE_HOOK_BIN\" release fds ;;\n\
             esac",
            p = pidfile.display()
        ),
    );
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let pid = read_pid(&pidfile);
    assert_eq!(crate::common::descriptors_of_sleep(pid), [0, 1, 2]);
    let run = env.run(&["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(eventually(Duration::from_secs(5), || !alive(pid)));
}

#[test]
fn a_copy_under_another_name_releases_its_session() {
    // qemu-ga.conf may name the hook `/etc/qemu/my-hook`: the keeper is then
    // called my-hook, and `release` must still recognise it as ours.
    let env = Env::new();
    let bin = env.renamed_bin("my-hook");
    hook_pair(&env, "5m");
    let run = env.command_as(&bin, &["freeze"]).output().unwrap();
    assert!(run.status.success(), "{run:?}");
    let client = read_pid(&env.path().join("client.pid"));
    assert!(alive(client));
    let status = env.command_as(&bin, &["status"]).output().unwrap();
    assert_has(&String::from_utf8_lossy(&status.stdout), "(holding)");
    let thaw = env.command_as(&bin, &["thaw"]).output().unwrap();
    assert!(thaw.status.success(), "{thaw:?}");
    assert!(
        eventually(Duration::from_secs(5), || !alive(client)),
        "the session (and its lock) outlived `release`"
    );
    assert_eq!(
        fs::read_to_string(env.path().join("client.log")).unwrap(),
        "unlocked\nclosed\n"
    );
}

#[test]
fn a_json_log_gets_json_lines_from_hold_release_and_the_keeper() {
    let env = Env::new();
    env.set_config("log_format = \"json\"\n");
    hook_pair(&env, "5m");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    let client = read_pid(&env.path().join("client.pid"));
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    assert!(eventually(Duration::from_secs(5), || !alive(client)));
    // The keeper writes its last line once the session has closed.
    assert!(eventually(Duration::from_secs(5), || env
        .log_text()
        .contains("session closed after")));
    let log = env.log_text();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        assert!(v.is_object(), "{line}");
    }
    assert_has(&log, "hold demo: session ready");
    assert_has(&log, "release demo: released");
}

#[test]
fn a_second_hold_while_the_first_gets_ready_fails_at_once_and_release_ends_the_one() {
    let env = Env::new();
    let go = env.path().join("go");
    // Ready only once `go` exists; records its pid; holds until stdin closes.
    let client = |tag: &str| {
        format!(
            "echo $$ > '{d}/{tag}.pid'; while [ ! -e '{go}' ]; do sleep 0.05; done; echo FSFREEZE-READY; cat >/dev/null",
            d = env.path().display(),
            go = go.display()
        )
    };
    fn hold(script: &str) -> [&str; 8] {
        ["hold", "db", "--max-hold", "5m", "--", "sh", "-c", script]
    }
    let first = env
        .command(&hold(&client("first")))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first_pid = env.path().join("first.pid");
    assert!(eventually(Duration::from_secs(10), || first_pid.exists()));
    // The first keeper holds the name but has not recorded a session yet.
    let second = env.run(&hold(&client("second")));
    assert_eq!(second.code, Some(1), "{second:?}");
    assert_has(&second.stderr, "another `hold db` is under way (keeper pid");
    assert!(
        !env.path().join("second.pid").exists(),
        "the second COMMAND ran"
    );
    fs::write(&go, "").unwrap();
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let held = read_pid(&first_pid);
    assert!(alive(held));
    assert_eq!(env.run(&["release", "db"]).code, Some(0));
    assert!(
        eventually(Duration::from_secs(5), || !alive(held)),
        "a session of db outlived `release db`"
    );
    let left: Vec<_> = fs::read_dir(env.state.join("held"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
