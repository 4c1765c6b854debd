//! log_format = "json", and log_target = "syslog" / "journal". The syslog
//! and journal sockets are the test's own, bound into a private mount
//! namespace (unshare -m) at /dev/log and /run/systemd/journal/socket: the
//! machine's logging is never touched.

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::Duration;

use crate::common::{BIN, Env, assert_has, require_root};

#[test]
fn json_log_has_one_object_per_event_with_the_fields_fleets_ship() {
    let env = Env::new();
    env.hook("10-a", "echo \"out $1\"\necho err >&2");
    env.hook("20-slow", "sleep 5");
    env.set_config("log_format = \"json\"\ntimeout = \"300ms\"\nkill_grace = \"100ms\"\n");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let events: Vec<serde_json::Value> = run
        .log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "run_start",
            "presync",
            "hook_start",
            "output",
            "output",
            "hook_end",
            "hook_start",
            "hook_end",
            "rollback",
            "hook_start",
            "hook_end",
            "hook_start",
            "output",
            "output",
            "hook_end",
            "run_end"
        ]
    );
    let presync = &events[1];
    assert_eq!(presync["done"], true);
    assert!(presync["filesystems"].as_u64().unwrap() >= 1, "{presync}");
    let out = &events[3];
    assert_eq!(
        (out["hook"].as_str(), out["line"].as_str()),
        (Some("10-a"), Some("out freeze"))
    );
    let ok = &events[5];
    assert_eq!(ok["status"], 0);
    assert_eq!(ok["output_bytes"], 15);
    assert_eq!(ok["rollback"], false);
    let slow = &events[7];
    assert_eq!(slow["level"], "error");
    assert_eq!(slow["status"], 143);
    assert_eq!(slow["timeout_ms"], 300);
    assert_eq!(slow["signal"], "SIGTERM");
    assert!(slow["duration_ms"].as_u64().unwrap() >= 300);
    assert_eq!(events[8]["hooks"], 2);
    assert_eq!(events[9]["rollback"], true);
    assert_eq!(events[15]["result"], "failed");
}

/// A private /run whose journald socket is the test's ($SOCK).
const JOURNAL_SOCKET: &str = "mount -t tmpfs tmpfs /run\nmkdir -p /run/systemd/journal\ntouch /run/systemd/journal/socket\nmount --bind \"$SOCK\" /run/systemd/journal/socket";

/// A private /dev with /dev/null, and the test's socket ($SOCK) as /dev/log.
const SYSLOG_SOCKET: &str = "mount --rbind /dev \"$KEEP\"\nmount -t tmpfs tmpfs /dev\ntouch /dev/null /dev/log\nmount --bind \"$KEEP/null\" /dev/null\nln -s /proc/self/fd /dev/fd\nmount --bind \"$SOCK\" /dev/log";

/// Starts the binary with `args` in a private mount namespace that `setup`
/// prepares (`$SOCK` is the test's datagram socket, `$KEEP` a spare dir),
/// then `after` in it; the run, and the socket.
fn start_in_namespace(
    env: &Env,
    setup: &str,
    args: &[&str],
    after: &str,
) -> (std::process::Child, UnixDatagram) {
    let sock_path = env.path().join("log.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let keep = env.path().join("keep");
    std::fs::create_dir(&keep).unwrap();
    let script = format!(
        "set -e\nSOCK='{}'\nKEEP='{}'\n{setup}\n\"$@\" || status=$?\n{after}\nexit ${{status:-0}}",
        sock_path.display(),
        keep.display()
    );
    let child = Command::new("unshare")
        .args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
            BIN,
        ])
        .args(env.command(args).get_args())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (child, sock)
}

/// Runs the binary in a private mount namespace that `setup` prepares;
/// returns the datagrams the test's socket received.
fn in_namespace(env: &Env, setup: &str, args: &[&str]) -> Vec<String> {
    let (child, sock) = start_in_namespace(env, setup, args, "");
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    // The run's own status is the caller's business (a failing hook here).
    let out = child.wait_with_output().unwrap();
    assert!(out.status.code().is_some_and(|c| c < 2), "{out:?}");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    got
}

#[test]
#[ignore = "needs root"]
fn journal_target_sends_events_with_identifier_and_priority() {
    require_root("journal_target");
    let env = Env::new();
    env.hook("10-a", "echo hook output");
    env.set_config("log_target = \"journal\"\n");
    let got = in_namespace(&env, JOURNAL_SOCKET, &["freeze"]);
    let end = got
        .iter()
        .find(|d| d.contains("FSFREEZE_EVENT=hook_end"))
        .unwrap_or_else(|| panic!("{got:#?}"));
    assert!(end.contains("SYSLOG_IDENTIFIER=fsfreeze-hook\n"), "{end}");
    assert!(end.contains("PRIORITY=6\n"), "{end}");
    assert!(
        end.contains("FSFREEZE_HOOK=10-a\n") && end.contains("FSFREEZE_STATUS=0\n"),
        "{end}"
    );
    assert!(got.iter().any(|d| d.contains("FSFREEZE_EVENT=run_start")));
    // The runner's events went to the journal; the hook's output to the file.
    let log = env.log_text();
    assert!(
        log.contains("hook output") && !log.contains("finished with status"),
        "{log}"
    );
}

#[test]
#[ignore = "needs root"]
fn with_the_journal_target_the_guards_alert_is_in_the_journal_once() {
    // journald reads syslog's socket too: an alert sent to both would be in
    // the journal twice. Both sockets here are the test's.
    let _exclusive = crate::common::freezing_test("journal_alert_once");
    let env = Env::new();
    env.tracing_hook("10-a", "");
    env.set_config("log_target = \"journal\"\nmax_frozen = \"2s\"\n");
    // Both sockets are the test's. The guard outlives the freeze in this
    // namespace; it thaws (FITHAW of every filesystem, harmless) and alerts
    // after 2 s.
    let (mut child, sock) = start_in_namespace(
        &env,
        &format!("{SYSLOG_SOCKET}\n{JOURNAL_SOCKET}"),
        &["freeze"],
        "sleep 5",
    );
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut seen_at = None;
    while std::time::Instant::now() < deadline
        && seen_at.is_none_or(|t: std::time::Instant| t.elapsed() < Duration::from_secs(2))
    {
        if let Ok(n) = sock.recv(&mut buf) {
            let d = String::from_utf8_lossy(&buf[..n]).into_owned();
            if d.contains("thawed by max_frozen") && seen_at.is_none() {
                seen_at = Some(std::time::Instant::now());
            }
            got.push(d);
        }
    }
    let _ = child.wait();
    let alerts: Vec<&String> = got
        .iter()
        .filter(|d| d.contains("thawed by max_frozen"))
        .collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert!(
        alerts[0].contains("FSFREEZE_EVENT=guard_thaw"),
        "{alerts:#?}"
    );
    assert!(alerts[0].contains("PRIORITY=3\n"), "{alerts:#?}");
}

#[test]
#[ignore = "needs root"]
fn syslog_target_sends_events_with_identifier_and_priority() {
    require_root("syslog_target");
    let env = Env::new();
    env.hook("10-fails", "exit 3");
    env.set_config("log_target = \"syslog\"\n");
    // A private /dev with /dev/null and the test's socket as /dev/log.
    let got = in_namespace(&env, SYSLOG_SOCKET, &["freeze"]);
    // <PRI> = facility daemon (3) * 8 + severity: err (3) for a failed hook.
    let failed = got
        .iter()
        .find(|d| d.contains("10-fails finished with status=3"))
        .unwrap_or_else(|| panic!("{got:#?}"));
    assert!(failed.starts_with("<27>"), "{failed}");
    assert!(failed.contains("fsfreeze-hook["), "{failed}");
    assert!(
        got.iter()
            .any(|d| d.starts_with("<30>") && d.contains(": freeze; hooks dir")),
        "{got:#?}"
    );
}

// ---- a log no one can forge --------------------------------------------------

/// Every line of the text log is the runner's (a date first) or a hook's
/// output line; none holds a control character but tab.
fn lines_are_whole(log: &str) {
    for b in log.bytes() {
        assert!(
            b == b'\n' || b == b'\t' || b >= 0x20 && b != 0x7f,
            "control byte {b:#04x} in the log:\n{log}"
        );
    }
}

#[test]
fn a_name_given_to_release_cannot_forge_a_log_line() {
    let env = Env::new();
    let forged = "x\n2026-01-01T00:00:00.000+00:00: thaw finished in 1ms: ok\x1b[2K";
    let run = env.command(&["release", forged]).output().unwrap();
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    let log = env.log_text();
    lines_are_whole(&log);
    assert!(
        !log.lines()
            .any(|l| l.starts_with("2026-01-01T00:00:00.000+00:00")),
        "{log}"
    );
    assert_has(
        &log,
        r#"release: "x\n2026-01-01T00:00:00.000+00:00: thaw finished in 1ms: ok\u{1b}[2K" is not a name"#,
    );
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn hook_output_is_whole_escaped_lines_in_text_and_json() {
    for format in ["text", "json"] {
        let env = Env::new();
        env.set_config(&format!("log_format = \"{format}\"\n"));
        env.hook(
            "10-raw",
            r"printf 'a\033[2Kb\000c\r\n'; printf 'no newline'",
        );
        env.hook("20-next", "echo next");
        let run = env.run(&["freeze"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        let log = env.log_text();
        lines_are_whole(&log);
        if format == "text" {
            let lines: Vec<&str> = log.lines().collect();
            assert!(lines.contains(&r"a\u{1b}[2Kb\u{0}c\r"), "{log}");
            // The last words without a newline are a line of their own; the
            // runner's next line starts on a new one.
            let i = lines.iter().position(|l| *l == "no newline").expect(&log);
            assert!(lines[i + 1].starts_with("20"), "{log}");
            assert!(lines.contains(&"next"), "{log}");
        } else {
            for line in log.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect(line);
                assert!(v.is_object());
            }
            assert_has(&log, r#""line":"no newline""#);
        }
    }
}

#[test]
fn what_a_lingering_process_prints_is_escaped_and_ended_too() {
    let env = Env::new();
    env.hook(
        "10-linger",
        r"( sleep 0.3; printf 'late\033[1A'; printf ' still' ) &",
    );
    env.hook("20-next", "echo next");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        crate::common::eventually(std::time::Duration::from_secs(5), || env
            .log_text()
            .lines()
            .any(|l| l == r"late\u{1b}[1A still")),
        "{}",
        env.log_text()
    );
    lines_are_whole(&env.log_text());
    assert!(env.log_text().ends_with('\n'));
}

#[test]
fn a_failed_hooks_line_keeps_the_stock_form() {
    // `<date>: <path> finished with status=<N>`, as the stock script writes
    // it, failures too (no level word in front): monitoring that matches the
    // stock lines matches ours.
    let env = Env::new();
    env.hook("10-fail", "[ \"$1\" = freeze ] && exit 3; exit 0");
    let run = env.run(&["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    let path = env.hooks.join("10-fail");
    let line = run
        .log
        .lines()
        .find(|l| l.contains("finished with status=3"))
        .unwrap_or_else(|| panic!("{}", run.log));
    let (_, rest) = line.split_once(": ").unwrap();
    assert!(
        rest.starts_with(&format!("{} finished with status=3", path.display())),
        "{line}"
    );
}
