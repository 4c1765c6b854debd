//! The guard of a drop-in freeze, under the real qemu-ga (as root, on a loop
//! mount the test made; only guest-fsfreeze-freeze-list can freeze): when the
//! hypervisor's thaw never comes, the guest thaws itself after `max_frozen`,
//! the late thaw runs no hook again, and the next cycle works. The guard
//! FITHAWs every block-device filesystem of the machine, as qemu-ga's own
//! thaw does: harmless for those not frozen.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{alive, assert_has, eventually, freezing_test, guard_of};
use crate::loopfs::LoopFs;
use crate::qemu_ga::{Agent, Install, agents, freeze_list};

/// Generous bounds for a loaded 2-core machine.
const LATE: Duration = Duration::from_secs(6);

/// A write into the mount, started now: it completes only once the
/// filesystem is thawed.
fn writer(mnt: &Path, name: &str) -> Child {
    Command::new("sh")
        .arg("-c")
        .arg(format!("echo written > '{}/{name}'", mnt.display()))
        .stdin(Stdio::null())
        .spawn()
        .unwrap()
}

fn finished(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_some()
}

/// Waits until the mount is thawed; how long that took from `since`.
fn thawed_after(fs: &LoopFs, since: Instant, limit: Duration) -> Duration {
    assert!(
        eventually(limit, || !fs.frozen()),
        "still frozen {:?} after the freeze",
        since.elapsed()
    );
    since.elapsed()
}

const HOOKS: [&str; 2] = ["10-first", "20-second"];

fn metrics_file(install: &Install) -> String {
    install
        .dir
        .path()
        .join("metrics.prom")
        .display()
        .to_string()
}

fn install(max_frozen: &str) -> (Install, LoopFs) {
    let install = Install::with_config(&format!(
        "timeout = \"10s\"\nkill_grace = \"1s\"\nmax_frozen = \"{max_frozen}\"\n"
    ));
    let conf = install.dir.path().join("etc/fsfreeze-hook.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    std::fs::write(
        &conf,
        format!("{text}metrics_file = \"{}\"\n", metrics_file(&install)),
    )
    .unwrap();
    let fs = LoopFs::ext4(install.dir.path());
    for h in HOOKS {
        install.add(h, &fs.mnt, "");
    }
    (install, fs)
}

fn trace_of(phases: &[(&str, &str, u8)]) -> Vec<String> {
    phases
        .iter()
        .map(|(h, p, rb)| format!("{h} {p} rollback={rb}"))
        .collect()
}

#[test]
#[ignore = "needs root"]
fn no_thaw_the_guest_thaws_itself_after_max_frozen_and_the_late_thaw_runs_no_hook_again() {
    let _exclusive = freezing_test("guard_no_thaw");
    for qga in agents() {
        let (install, fs) = install("3s");
        let sock_path = install.dir.path().join("syslog.sock");
        let syslog = UnixDatagram::bind(&sock_path).unwrap();
        syslog
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut agent = Agent::start_logging_to(&qga, &install, &sock_path);
        assert_eq!(freeze_list(&mut agent, &fs.mnt), Ok(json!(1)), "{qga}");
        let frozen_at = Instant::now();
        assert!(fs.frozen(), "{qga}");
        let mut write = writer(&fs.mnt, "during");
        let guard = guard_of(&install.state()).expect("the freeze records its guard");
        assert!(alive(guard), "{qga}: guard pid {guard}");

        // No thaw comes: the guard thaws at its deadline, not before.
        let took = thawed_after(&fs, frozen_at, Duration::from_secs(3) + LATE);
        assert!(
            took >= Duration::from_secs(2),
            "{qga}: thawed after {took:?}"
        );
        assert!(
            eventually(LATE, || finished(&mut write)),
            "{qga}: the write did not complete"
        );
        assert!(fs.mnt.join("during").exists());
        // Then the thaw hooks, as a rollback, once.
        let rolled_back = trace_of(&[
            ("10-first", "freeze", 0),
            ("20-second", "freeze", 0),
            ("20-second", "thaw", 1),
            ("10-first", "thaw", 1),
        ]);
        assert!(
            eventually(LATE, || install.trace() == rolled_back),
            "{qga}: {:?}",
            install.trace()
        );
        let why = "thawed by max_frozen after 3s: no thaw came from the hypervisor";
        assert!(
            eventually(LATE, || install.log_text().contains(why)),
            "{qga}: {}",
            install.log_text()
        );
        assert!(
            eventually(LATE, || !alive(guard)),
            "{qga}: the guard did not end"
        );
        let metrics = std::fs::read_to_string(metrics_file(&install)).unwrap();
        assert!(
            metrics
                .lines()
                .any(|l| l == "fsfreeze_hook_guard_thaws_total 1"),
            "{metrics}"
        );
        // The same line reached syslog, as an error (<27>: daemon.err).
        let mut said = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = syslog.recv(&mut buf) {
            said.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert!(
            said.iter()
                .any(|d| d.starts_with("<27>") && d.contains(why)),
            "{qga}: syslog got {said:#?}"
        );

        // The hypervisor's thaw comes late: answered, no hook runs again.
        assert!(
            agent.call("guest-fsfreeze-thaw", json!({})).is_ok(),
            "{qga}"
        );
        assert_eq!(agent.status(), "thawed");
        assert_eq!(install.trace(), rolled_back, "{qga}");
        assert_has(&install.log_text(), "the guard had already thawed");

        // The next cycle is an ordinary one, and leaves no guard behind.
        assert_eq!(freeze_list(&mut agent, &fs.mnt), Ok(json!(1)), "{qga}");
        assert!(fs.frozen());
        let next = guard_of(&install.state()).unwrap();
        assert_ne!(next, guard);
        assert_eq!(agent.call("guest-fsfreeze-thaw", json!({})), Ok(json!(1)));
        assert!(!fs.frozen());
        let mut expected = rolled_back.clone();
        expected.extend(trace_of(&[
            ("10-first", "freeze", 0),
            ("20-second", "freeze", 0),
            ("20-second", "thaw", 0),
            ("10-first", "thaw", 0),
        ]));
        assert_eq!(install.trace(), expected, "{qga}");
        assert!(
            eventually(LATE, || !alive(next)),
            "{qga}: guard {next} left"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn a_guarded_cycle_neither_thaws_early_nor_leaves_a_guard() {
    let _exclusive = freezing_test("guard_normal_cycle");
    for qga in agents() {
        let (install, fs) = install("8s");
        let mut agent = Agent::start(&qga, &install);
        assert_eq!(freeze_list(&mut agent, &fs.mnt), Ok(json!(1)), "{qga}");
        let mut write = writer(&fs.mnt, "during");
        let guard = guard_of(&install.state()).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        // Well before the deadline: still frozen, the write still waits.
        assert!(fs.frozen(), "{qga}: thawed early");
        assert!(!finished(&mut write), "{qga}: a write went through");
        assert_eq!(agent.call("guest-fsfreeze-thaw", json!({})), Ok(json!(1)));
        assert!(eventually(LATE, || finished(&mut write)));
        assert!(
            eventually(LATE, || !alive(guard)),
            "{qga}: guard {guard} left"
        );
        assert_eq!(
            install.trace(),
            trace_of(&[
                ("10-first", "freeze", 0),
                ("20-second", "freeze", 0),
                ("20-second", "thaw", 0),
                ("10-first", "thaw", 0),
            ]),
            "{qga}"
        );
        let log = install.log_text();
        assert!(!log.contains("thawed by max_frozen"), "{log}");
        assert_has(&log, &format!("guard pid {guard} ended"));
    }
}

#[test]
#[ignore = "needs root"]
fn qemu_ga_killed_while_frozen_the_guard_still_thaws() {
    let _exclusive = freezing_test("guard_agent_killed");
    for qga in agents() {
        let (install, fs) = install("3s");
        let mut agent = Agent::start(&qga, &install);
        assert_eq!(freeze_list(&mut agent, &fs.mnt), Ok(json!(1)), "{qga}");
        let frozen_at = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.pid()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        drop(agent);
        assert!(fs.frozen(), "{qga}: killing qemu-ga thawed nothing");
        assert!(
            install
                .dir
                .path()
                .join("qga-state/qga.state.isfrozen")
                .exists(),
            "{qga}: the killed agent left no frozen mark"
        );
        let took = thawed_after(&fs, frozen_at, Duration::from_secs(3) + LATE);
        assert!(
            took >= Duration::from_secs(2),
            "{qga}: thawed after {took:?}"
        );
        assert!(
            eventually(LATE, || install.trace().len() == 4),
            "{qga}: {:?}",
            install.trace()
        );
        assert_eq!(
            install.trace()[2..],
            trace_of(&[("20-second", "thaw", 1), ("10-first", "thaw", 1)])
        );
        // The killed agent left its "frozen" mark in its statedir; with the
        // filesystems thawed the guard removed it (the step qemu-ga's own
        // message asks of an administrator), so a restarted agent starts
        // thawed instead of refusing guest-exec until a thaw.
        let mark = install.dir.path().join("qga-state/qga.state.isfrozen");
        assert!(
            eventually(LATE, || !mark.exists()),
            "{qga}: {} is still there",
            mark.display()
        );
        assert_has(&install.log_text(), "qga.state.isfrozen");
        let _ = std::fs::remove_file(install.dir.path().join("qga.sock"));
        let mut again = Agent::start(&qga, &install);
        assert_eq!(
            again.call("guest-fsfreeze-status", json!({})),
            Ok(json!("thawed")),
            "{qga}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn sigterm_to_the_guard_thaws_at_once() {
    let _exclusive = freezing_test("guard_sigterm");
    for qga in agents() {
        let (install, fs) = install("10m");
        let mut agent = Agent::start(&qga, &install);
        assert_eq!(freeze_list(&mut agent, &fs.mnt), Ok(json!(1)), "{qga}");
        let guard = guard_of(&install.state()).unwrap();
        let sent = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(guard),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let took = thawed_after(&fs, sent, LATE);
        assert!(
            eventually(LATE, || install.log_text().contains("it got SIGTERM")),
            "{qga}: thawed after {took:?}: {}",
            install.log_text()
        );
        assert!(eventually(LATE, || install.trace().len() == 4));
        // A SIGTERM that is no stop of the agent's service (this one is
        // from the test, and this agent runs in no service): the agent is
        // left running, and `status` says what thawed.
        assert!(alive(agent.pid()), "{qga}: {}", install.log_text());
        assert!(!install.log_text().contains("ended qemu-ga"), "{qga}");
        let me = std::process::id();
        assert_has(
            &install.log_text(),
            &format!("it got SIGTERM from pid {me} (a frozen guest cannot shut down)"),
        );
        let status = Command::new(&install.hook).arg("status").output().unwrap();
        assert_has(
            &String::from_utf8_lossy(&status.stdout),
            "because it got a stop signal that was not the agent's service being stopped",
        );
        // qemu-ga still says frozen until its own thaw, which runs no hook.
        assert!(agent.call("guest-fsfreeze-thaw", json!({})).is_ok());
        assert_eq!(install.trace().len(), 4, "{qga}");
    }
}
