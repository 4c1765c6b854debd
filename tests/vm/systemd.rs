//! Debian as guests really run it: booted with systemd as init, Debian's
//! qemu-guest-agent started by the unit its package ships, our .deb
//! (packaging/build-deb) installed and enabled by the README's quick start,
//! typed into a root shell of the guest. Driven from the host through the
//! agent's socket, as a hypervisor does, and through a control shell (a
//! service of its own) as an administrator. On Debian 12's kernel and on
//! Debian 13's.
//!
//! What runs: the quick start and `check`; a freeze and thaw from the host
//! through a hook; `log_target = "journal"` read back with journalctl; a
//! drop-in of the agent's unit whose environment reaches the hooks, and
//! `check` asking for the restart it needs; `50-systemd-service` pausing a
//! real unit with `systemctl freeze`; then what systemd does to a frozen
//! guest's agent: a restart, a `kill -9` and a poweroff while frozen each
//! thaw at once, finish within seconds (qemu-ga ignores SIGTERM while it
//! believes the guest frozen: the guard ends it), and leave an agent that
//! is not stuck in "frozen"; `check` names a stale frozen mark.
//!
//! The guests: Debian 12 (systemd 252, qemu-guest-agent 7.2) on Debian 12's
//! kernel and on Debian 13's, and Debian 13 (systemd 257, qemu-guest-agent
//! 10.0) on its own kernel; each says which it ran.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{Guest, Kind, build_guest, guest_dir, kernels, qemu_system};
use crate::common::{BIN, freezing_test};

/// The roots tests/fetch-qemu made (FSFREEZE_HOOK_TEST_SYSTEMD_ROOTS).
fn roots() -> Vec<PathBuf> {
    let roots: Vec<PathBuf> = std::env::var("FSFREEZE_HOOK_TEST_SYSTEMD_ROOTS")
        .unwrap_or_default()
        .split(':')
        .filter(|r| !r.is_empty())
        .map(PathBuf::from)
        .collect();
    if roots.is_empty() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: FSFREEZE_HOOK_TEST_SYSTEMD_ROOTS is set by the test command (tests/fetch-qemu, as root)"
        );
        eprintln!("no systemd guest's root (the test command makes it, as root): skipped");
    }
    roots
}

/// Our .deb of the test binary, as packaging/build-deb makes it.
fn deb(out: &Path) -> PathBuf {
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-deb");
    let made = Command::new(build).arg(BIN).arg(out).output().unwrap();
    assert!(
        made.status.success(),
        "packaging/build-deb: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&made.stdout).trim())
}

/// The README's drop-in for the hooks' settings, as written there.
fn quick_start_drop_in() -> String {
    crate::common::block("README.md", "## Quick start: Debian and Ubuntu", "ini")
}

/// The README's Debian quick start block, as written there.
fn quick_start() -> String {
    let block = crate::common::block("README.md", "## Quick start: Debian and Ubuntu", "sh");
    assert!(
        block.starts_with("dpkg -i target/deb/fsfreeze-hook_*.deb\n"),
        "the quick start installs the package the build section makes: {block}"
    );
    block
}

impl Guest {
    /// Debian with systemd from `root` (a tarball tests/fetch-qemu made), our
    /// `deb` left in /root/target/deb (and installed and enabled in the
    /// image when `in_image`), on `kernel` (`None`: Debian 12's).
    fn boot_systemd(root: &Path, deb: &Path, in_image: bool, kernel: Option<&Path>) -> Guest {
        let dir = guest_dir();
        let kind = Kind::Systemd(root, in_image);
        build_guest(dir.path(), &["-".as_ref(), deb.as_os_str()], kind, kernel);
        let mut qemu = qemu_system();
        qemu.args(["-accel", "tcg", "-M", "pc"]);
        Guest::start(
            dir,
            qemu,
            "console=ttyS0 panic=-1",
            kind.ready(),
            Duration::from_secs(300),
            false,
            "Debian's qemu-guest-agent".into(),
        )
    }

    /// After the agent restarted: a new session with the new one.
    fn resync(&mut self) {
        self.qmp.sync_delimited(Duration::from_secs(120));
    }
}

/// Whether /data is frozen, asked without a write: FIFREEZE of a frozen
/// filesystem fails with EBUSY; one that froze is thawed again at once.
fn data_frozen(g: &mut Guest) -> bool {
    let out = g.admin(
        "if out=$(fsfreeze --freeze /data 2>&1); then fsfreeze --unfreeze /data; echo thawed; \
         else case $out in *busy*) echo frozen ;; *) echo \"$out\" ;; esac; fi",
    );
    match out.trim() {
        "frozen" => true,
        "thawed" => false,
        other => panic!("fsfreeze /data: {other}"),
    }
}

/// The hook that traces each phase with what it was given.
const TRACE_HOOK: &str = r#"cat > /etc/qemu/fsfreeze-hook.d/10-trace <<'EOF'
#!/bin/sh
echo "10-trace $1 rollback=${FSFREEZE_ROLLBACK:-} greeting=${FSFREEZE_TEST_GREETING:-}" >> /run/trace
EOF
chmod 755 /etc/qemu/fsfreeze-hook.d/10-trace"#;

/// A freeze from the host that must succeed, with /data frozen after it.
fn freeze(g: &mut Guest, who: &str) {
    let frozen = g.freeze();
    assert!(
        frozen.is_ok(),
        "{who}: {frozen:?}\n{}",
        g.admin("tail -20 /var/log/qga-fsfreeze-hook.log")
    );
    assert!(
        data_frozen(g),
        "{who}: /data is not frozen after the freeze"
    );
}

fn trace(g: &mut Guest) -> Vec<String> {
    g.admin("cat /run/trace 2>/dev/null; rm -f /run/trace")
        .lines()
        .map(String::from)
        .collect()
}

/// Milliseconds `script` (run in the control shell) took, from the guest's
/// clock.
fn timed(g: &mut Guest, script: &str) -> (u64, String) {
    let out = g.admin(&format!(
        "s=$(date +%s%N); {script}; e=$(date +%s%N); echo \"took $(( (e - s) / 1000000 ))\""
    ));
    let ms = out
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("took "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{script}: {out}"));
    (ms, out)
}

/// The journal's lines since `cursor` (a `journalctl --show-cursor` token),
/// and the next cursor.
fn journal_since(g: &mut Guest, cursor: &str) -> (String, String) {
    let out = g.admin(&format!(
        "journalctl --no-pager --show-cursor -o short-precise {}",
        if cursor.is_empty() {
            "-n 0".to_string()
        } else {
            format!("--after-cursor='{cursor}'")
        }
    ));
    let next = out
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("-- cursor: "))
        .unwrap_or(cursor)
        .to_string();
    let lines = out
        .lines()
        .filter(|l| !l.starts_with("-- cursor: "))
        .collect::<Vec<_>>()
        .join("\n");
    (lines, next)
}

/// [`journal_since`] until its lines hold `needle` (journald, whose files
/// are on the root, writes what came while it was frozen after the thaw).
fn journal_until(g: &mut Guest, cursor: &str, needle: &str) -> (String, String) {
    let since = Instant::now();
    let (mut all, mut next) = journal_since(g, cursor);
    while !all.contains(needle) && since.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(500));
        let (more, after) = journal_since(g, &next);
        if !more.is_empty() {
            all.push('\n');
            all.push_str(&more);
        }
        next = after;
    }
    (all, next)
}

/// Waits until /data is thawed after `what`, 30 s at most; how long it took.
fn thawed_after(g: &mut Guest, who: &str, what: &str) -> Duration {
    let since = Instant::now();
    while data_frozen(g) {
        assert!(
            since.elapsed() < Duration::from_secs(30),
            "{who}: still frozen 30 s after {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    since.elapsed()
}

/// What `stop-sigterm` ends with when systemd waited TimeoutStopSec.
const TIMED_OUT: &str = "timed out";

#[test]
#[ignore = "needs root"]
fn under_systemd_the_quick_start_hooks_journal_and_a_stop_while_frozen() {
    let _exclusive = freezing_test("vm_systemd");
    let roots = roots();
    if roots.is_empty() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let deb = deb(&work.path().join("deb"));
    for root in &roots {
        // Debian 12 on both kernels (its own, and 13's as a newer one);
        // Debian 13 on its own.
        let trixie = root
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("-trixie-"));
        for (kernel, name) in kernels() {
            if trixie && kernel.is_none() {
                continue;
            }
            assert!(!trixie || name == "Debian 13's kernel");
            // Debian 13's image has it installed and enabled by chroot
            // without /proc, as an image builder would; then the quick
            // start installs it again.
            systemd_cases(root, &deb, trixie, kernel.as_deref());
        }
    }
}

fn systemd_cases(root: &Path, deb: &Path, in_image: bool, kernel: Option<&Path>) {
    let start = Instant::now();
    let mut g = Guest::boot_systemd(root, deb, in_image, kernel);
    let booted = start.elapsed();
    let versions = g.admin(
        "systemctl --version | head -1; uname -r; qemu-ga -V; . /etc/os-release; echo \"$PRETTY_NAME\"",
    );
    let v: Vec<&str> = versions.lines().collect();
    let who = format!("{} ({}, {}, kernel {})", v[3], v[0], v[2], v[1]);
    g.who = who.clone();
    eprintln!("{who}: booted to its control shell in {booted:?}");

    if in_image {
        // Enabled in the image: qemu-ga runs our hook from its first start.
        let out = g.admin(
            "dpkg-divert --list /etc/qemu/fsfreeze-hook; readlink /etc/qemu/fsfreeze-hook; fsfreeze-hook check",
        );
        assert!(
            out.contains("diversion of /etc/qemu/fsfreeze-hook to /etc/qemu/fsfreeze-hook.stock")
                && out.contains("all good"),
            "{who}: enabled in the image without /proc: {out}"
        );
    }

    // The README's quick start, line by line as written, in /root where
    // the host left target/deb/.
    let quick = quick_start();
    let out = g.admin(&format!("set -e\n{quick}"));
    assert!(
        out.contains("all good: the next freeze will run the hooks"),
        "{who}: the quick start's check: {out}"
    );
    assert!(out.contains("20-mariadb"), "{who}: {out}");
    g.resync();

    // A freeze and thaw from the host, through a hook.
    g.admin(TRACE_HOOK);
    freeze(&mut g, &who);
    assert_eq!(g.status(), "frozen");
    assert!(g.thaw().is_ok(), "{who}");
    assert!(!data_frozen(&mut g), "{who}: /data frozen after the thaw");
    assert_eq!(
        trace(&mut g),
        [
            "10-trace freeze rollback=0 greeting=",
            "10-trace thaw rollback=0 greeting="
        ],
        "{who}"
    );

    // The README's drop-in, as written, and a hook that says what it got
    // (older than the drop-in below, which check is to name).
    g.admin(&format!(
        "mkdir -p /etc/systemd/system/qemu-guest-agent.service.d\n\
         cat > /etc/systemd/system/qemu-guest-agent.service.d/readme.conf <<'EOF'\n{}EOF\n\
         printf '#!/bin/sh\\necho \"$FSFREEZE_MYSQL_DEFAULTS_FILE\" > /run/mysql-defaults\\n' \
         > /etc/qemu/fsfreeze-hook.d/11-env && chmod 755 /etc/qemu/fsfreeze-hook.d/11-env",
        quick_start_drop_in()
    ));
    // A drop-in's environment, a real unit paused by 50-systemd-service,
    // and the journal as the log.
    g.admin(
        "cat > /etc/systemd/system/demo.service <<'EOF'
[Service]
ExecStart=/bin/sh -c 'while :; do date +%s%N > /run/demo.tick; sleep 0.2; done'
EOF
systemctl daemon-reload
systemctl start demo.service
fsfreeze-hook example 50-systemd-service > /etc/qemu/fsfreeze-hook.d/50-systemd-service
chmod 755 /etc/qemu/fsfreeze-hook.d/50-systemd-service
printf 'log_target = \"journal\"\\n' > /etc/qemu/fsfreeze-hook.conf
mkdir -p /etc/systemd/system/qemu-guest-agent.service.d
sleep 1.1
printf '[Service]\\nEnvironment=FSFREEZE_SERVICES=demo.service\\nEnvironment=FSFREEZE_TEST_GREETING=hello\\n' \
    > /etc/systemd/system/qemu-guest-agent.service.d/hooks.conf",
    );
    let (rc, out) = g.ctl("fsfreeze-hook check");
    assert_eq!(rc, 1, "{who}: check before the restart: {out}");
    assert!(
        out.contains("qemu-guest-agent.service.d/hooks.conf changed at")
            && out.contains("Fix: `systemctl restart qemu-guest-agent`"),
        "{who}: {out}"
    );
    g.admin("systemctl daemon-reload && systemctl restart qemu-guest-agent");
    let out = g.admin("fsfreeze-hook check");
    assert!(out.contains("all good"), "{who}: {out}");
    g.resync();
    let (_, cursor) = journal_since(&mut g, "");
    freeze(&mut g, &who);
    let paused = g.admin(
        "systemctl show --property=FreezerState --value demo.service; \
         a=$(cat /run/demo.tick); sleep 1; b=$(cat /run/demo.tick); [ \"$a\" = \"$b\" ] && echo still",
    );
    assert_eq!(
        paused.trim(),
        "frozen\nstill",
        "{who}: demo.service while frozen"
    );
    assert!(g.thaw().is_ok(), "{who}");
    let running = g.admin("systemctl show --property=FreezerState --value demo.service");
    assert_eq!(running.trim(), "running", "{who}");
    assert_eq!(
        trace(&mut g),
        [
            "10-trace freeze rollback=0 greeting=hello",
            "10-trace thaw rollback=0 greeting=hello"
        ],
        "{who}: the drop-in's environment reaches the hooks"
    );
    assert_eq!(
        g.admin("cat /run/mysql-defaults").trim(),
        "/etc/mysql/debian.cnf",
        "{who}: the README's drop-in reaches the hooks"
    );
    let (lines, cursor) = journal_until(&mut g, &cursor, "thaw finished");
    let ours = g.admin(
        "journalctl --no-pager -o verbose SYSLOG_IDENTIFIER=fsfreeze-hook FSFREEZE_EVENT=run_end \
         | grep -E '^ *(FSFREEZE_EVENT|_SYSTEMD_UNIT|MESSAGE)=' | tail -6",
    );
    assert!(
        ours.contains("_SYSTEMD_UNIT=qemu-guest-agent.service")
            && ours.contains("MESSAGE=freeze finished")
            && ours.contains("MESSAGE=thaw finished"),
        "{who}: the runs' ends in the journal: {ours}"
    );
    // (The hooks' own output stays in the log file.)
    let log = g.admin("grep 50-systemd-service /var/log/qga-fsfreeze-hook.log | tail -4");
    assert!(
        log.contains("50-systemd-service: paused demo.service")
            && log.contains("50-systemd-service: resumed demo.service"),
        "{who}: 50-systemd-service's lines in the log:\n{log}\n{lines}"
    );

    // A restart of the agent while frozen: the guard thaws, the agent is
    // ended (it ignores SIGTERM while it believes the guest frozen), the
    // restart completes in seconds, and the new agent is not "frozen".
    freeze(&mut g, &who);
    let (ms, _) = timed(&mut g, "systemctl restart qemu-guest-agent");
    let (lines, cursor) = journal_until(&mut g, &cursor, "Started qemu-guest-agent.service");
    eprintln!("{who}: systemctl restart qemu-guest-agent while frozen took {ms} ms:\n{lines}");
    assert!(
        ms < 30_000,
        "{who}: the restart took {ms} ms (TimeoutStopSec is 90 s):\n{lines}"
    );
    assert!(!lines.contains(TIMED_OUT), "{who}:\n{lines}");
    assert!(!data_frozen(&mut g), "{who}: frozen after the restart");
    assert_eq!(
        lines.matches("thawed by the guard").count(),
        1,
        "{who}: the guard's line, once in the journal:\n{lines}"
    );
    assert!(
        lines.contains("systemd was stopping qemu-guest-agent.service"),
        "{who}:\n{lines}"
    );
    g.resync();
    assert_eq!(g.status(), "thawed", "{who}: the new agent's freeze state");
    assert!(g.sh("true").0 == 0, "{who}: guest-exec after the restart");
    let status = g.admin("fsfreeze-hook status");
    assert!(
        status.contains("because the agent's service was stopped while frozen"),
        "{who}: {status}"
    );
    let traced = trace(&mut g);
    assert_eq!(
        traced,
        [
            "10-trace freeze rollback=0 greeting=hello",
            "10-trace thaw rollback=1 greeting=hello"
        ],
        "{who}: the thaw hooks ran as a rollback"
    );
    assert_eq!(
        g.admin("systemctl show --property=FreezerState --value demo.service")
            .trim(),
        "running",
        "{who}"
    );

    // `kill -9` of the agent while frozen: systemd ends what is left of the
    // unit, the guard first among it, before the automatic restart.
    freeze(&mut g, &who);
    g.admin("kill -9 $(systemctl show --property=MainPID --value qemu-guest-agent)");
    let took = thawed_after(&mut g, &who, "kill -9 of the agent");
    eprintln!("{who}: thawed {took:?} after kill -9 of the agent");
    let (lines, cursor) = journal_until(&mut g, &cursor, "guard thaw finished");
    g.resync();
    assert_eq!(g.status(), "thawed", "{who}: the restarted agent:\n{lines}");
    let status = g.admin("fsfreeze-hook status");
    assert!(
        status.contains("because the agent's service was stopped while frozen"),
        "{who}: {status}\n{lines}"
    );
    assert_eq!(
        trace(&mut g),
        [
            "10-trace freeze rollback=0 greeting=hello",
            "10-trace thaw rollback=1 greeting=hello"
        ],
        "{who}: the thaw hooks ran as a rollback after kill -9"
    );

    // `systemctl kill` while frozen: SIGTERM from PID 1 to the unit's
    // processes, but no stop. The guard thaws; the agent is left running
    // (it still says "frozen" until the host's thaw, which runs no hook a
    // second time).
    freeze(&mut g, &who);
    let agent = g.admin("systemctl show --property=MainPID --value qemu-guest-agent");
    g.admin("systemctl kill qemu-guest-agent");
    thawed_after(&mut g, &who, "systemctl kill");
    let (lines, _) = journal_until(&mut g, &cursor, "guard thaw finished");
    assert!(
        lines.contains("thawed by the guard") && lines.contains("it got SIGTERM from pid 1"),
        "{who}:\n{lines}"
    );
    assert!(!lines.contains("ending qemu-ga"), "{who}:\n{lines}");
    assert_eq!(
        g.admin("systemctl show --property=MainPID --value qemu-guest-agent"),
        agent,
        "{who}: systemctl kill is no stop: the agent runs on"
    );
    assert_eq!(g.status(), "frozen", "{who}: the agent still believes it");
    assert!(g.thaw().is_ok(), "{who}");
    let status = g.admin("fsfreeze-hook status");
    assert!(
        status.contains(
            "because it got a stop signal that was not the agent's service being stopped"
        ),
        "{who}: {status}"
    );
    assert_eq!(
        trace(&mut g),
        [
            "10-trace freeze rollback=0 greeting=hello",
            "10-trace thaw rollback=1 greeting=hello"
        ],
        "{who}: the host's late thaw ran no hook again"
    );

    // A frozen mark left with nothing frozen: `check` names it and its fix.
    g.admin("touch /run/qga.state.isfrozen");
    let (rc, out) = g.ctl("fsfreeze-hook check");
    assert_eq!(rc, 1, "{who}: {out}");
    assert!(
        out.contains("qemu-ga's /var/run/qga.state.isfrozen says the guest is frozen, but no freeze is in progress")
            && out.contains("rm /var/run/qga.state.isfrozen"),
        "{who}: {out}"
    );
    g.admin("rm /run/qga.state.isfrozen");

    // A poweroff while frozen.
    freeze(&mut g, &who);
    let asked = Instant::now();
    g.ctl_send("systemctl poweroff");
    let off = loop {
        if let Some(status) = g.qemu.try_wait().unwrap() {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(60),
            "{who}: no poweroff within 60 s of the request (TimeoutStopSec is 90 s):\n{}",
            g.console()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "{who}: poweroff while frozen took {:?} ({off})",
        asked.elapsed()
    );
    assert!(
        !g.console().contains("stop-sigterm' timed out"),
        "{}",
        g.console()
    );
    eprintln!("{who}: all cases in {:?}", start.elapsed());
}
