//! The RHEL family as SELinux runs it: a guest booted with Debian's kernel
//! (Debian 12's 6.1, then Debian 13's 6.12),
//! SELinux enforcing, Fedora's targeted policy (built from its source by
//! tests/vm/build-policy) with our package's module, every file labelled by
//! the policy's file contexts, and qemu-ga as /usr/bin/qemu-ga entered as
//! `virt_qemu_ga_t` the way init enters it. Hooks run confined
//! (`virt_qemu_ga_run_unconfined` off, RHEL's default), then unconfined.
//! The kernel's audit lines are read from the console: no denial of the
//! runner, its helpers or its hooks may be among them, but the one a
//! confined database client is meant to get.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Guest;
use crate::common::{eventually, freezing_test};
use crate::qemu_ga::agents;

/// The policy tests/vm/build-policy built (once; then from target/).
fn policy() -> Option<PathBuf> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let build = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/build-policy");
    let out = Command::new(&build).output().unwrap();
    if !out.status.success() {
        let why = String::from_utf8_lossy(&out.stderr);
        assert!(!ci, "CI=true: tests/vm/build-policy failed: {why}");
        eprintln!("no SELinux policy ({why}): not run");
        return None;
    }
    Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A hook that notes its phase and its SELinux domain in /run/trace, then
/// runs `extra`.
fn hook(g: &mut Guest, name: &str, extra: &str) {
    g.admin(&format!(
        "cat > /etc/qemu-ga/fsfreeze-hook.d/{name} <<'EOF'\n#!/bin/sh\n\
         read ctx </proc/$$/attr/current\n\
         echo \"{name} $1 rollback=$FSFREEZE_ROLLBACK $(echo $ctx | cut -d: -f3)\" >> /run/trace\n\
         {extra}\nEOF\n\
         chmod 755 /etc/qemu-ga/fsfreeze-hook.d/{name}\n\
         restorecon -R /etc/qemu-ga"
    ));
}

fn trace(g: &mut Guest) -> Vec<String> {
    let out = g.admin("cat /run/trace 2>/dev/null; rm -f /run/trace; :");
    out.lines().map(String::from).collect()
}

/// One round of everything, with the boolean `unconfined` set as given.
fn round(g: &mut Guest, unconfined: bool) {
    let who = format!(
        "{} (virt_qemu_ga_run_unconfined={})",
        g.who,
        u8::from(unconfined)
    );
    let domain = if unconfined {
        "virt_qemu_ga_unconfined_t"
    } else {
        "virt_qemu_ga_t"
    };
    g.admin(&format!(
        "echo {} > /sys/fs/selinux/booleans/virt_qemu_ga_run_unconfined && echo 1 > /sys/fs/selinux/commit_pending_bools",
        u8::from(unconfined)
    ));
    let check = g.ctl("fsfreeze-hook check").1;
    let said = if unconfined {
        "virt_qemu_ga_run_unconfined is on: hooks run unconfined"
    } else {
        "virt_qemu_ga_run_unconfined is off: hooks run confined in qemu-ga's own domain"
    };
    assert!(check.contains(said), "{who}: check: {check}");

    // A cycle with a hook: its domain is the one check said.
    g.freeze().unwrap_or_else(|e| panic!("{who}: {e}"));
    g.thaw().unwrap_or_else(|e| panic!("{who}: {e}"));
    assert_eq!(
        trace(g),
        [
            format!("10-ctx freeze rollback=0 {domain}"),
            format!("10-ctx thaw rollback=0 {domain}")
        ],
        "{who}"
    );

    // A failing hook, rolled back; nothing frozen.
    hook(g, "30-fail", "[ \"$1\" = freeze ] && exit 1; exit 0");
    let err = g.freeze().expect_err("the freeze must fail");
    assert!(err.contains("30-fail exited with status 1"), "{who}: {err}");
    assert_eq!(g.status(), "thawed");
    assert_eq!(
        trace(g),
        [
            format!("10-ctx freeze rollback=0 {domain}"),
            format!("30-fail freeze rollback=0 {domain}"),
            format!("30-fail thaw rollback=1 {domain}"),
            format!("10-ctx thaw rollback=1 {domain}")
        ],
        "{who}"
    );
    g.admin("rm /etc/qemu-ga/fsfreeze-hook.d/30-fail");

    // A hanging hook and what it started: cut off at its timeout (5 s),
    // nothing of it left; the agent answers and the next cycle works.
    hook(
        g,
        "30-hang",
        "[ \"$1\" = freeze ] || exit 0\nsleep 301 &\nsetsid sleep 302 &\nwhile :; do sleep 1; done",
    );
    let start = Instant::now();
    let err = g.freeze().expect_err("the freeze must fail");
    assert!(
        start.elapsed() >= Duration::from_secs(5) && start.elapsed() < Duration::from_secs(60),
        "{who}: {:?}",
        start.elapsed()
    );
    assert!(err.contains("30-hang timed out after 5s"), "{who}: {err}");
    assert!(
        eventually(Duration::from_secs(10), || g
            .ctl("ps -o args | grep -q '[s]leep 30[12]'")
            .0
            != 0),
        "{who}: what the hanging hook started is left: {}",
        g.ctl("ps -o pid,args").1
    );
    g.admin("rm /etc/qemu-ga/fsfreeze-hook.d/30-hang");
    trace(g);

    // A lock holder the hook leaves on purpose lives until the thaw.
    hook(
        g,
        "30-holder",
        "case \"$1\" in\nfreeze) rm -f /run/stop; setsid sh -c 'while [ ! -e /run/stop ]; do sleep 0.1; done; echo stopped-by-thaw > /run/holder.log' & ;;\nthaw) touch /run/stop ;;\nesac",
    );
    g.freeze().unwrap_or_else(|e| panic!("{who}: {e}"));
    let alive = g.ctl("ps -o args | grep -q '[w]hile \\[ ! -e /run/stop'").0;
    assert_eq!(alive, 0, "{who}: the holder lives while frozen");
    g.thaw().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || g
            .ctl("grep -q stopped-by-thaw /run/holder.log")
            .0
            == 0),
        "{who}: the holder ends at the thaw"
    );
    g.admin("rm -f /etc/qemu-ga/fsfreeze-hook.d/30-holder /run/holder.log");
    trace(g);

    // No thaw comes: the guard thaws the guest at max_frozen (5 s); the
    // host's late thaw runs no hook twice.
    g.admin("echo 'max_frozen = \"5s\"' >> /etc/qemu-ga/fsfreeze-hook.conf");
    g.freeze().unwrap();
    let log = "/var/log/qemu-ga/fsfreeze-hook.log";
    assert!(
        eventually(Duration::from_secs(60), || g
            .ctl(&format!(
                "grep -c 'thawed by max_frozen' {log} | grep -qx {}",
                if unconfined { 2 } else { 1 }
            ))
            .0
            == 0),
        "{who}: the guard never thawed: {}",
        g.ctl(&format!("tail -5 {log}")).1
    );
    g.thaw().unwrap();
    g.admin("sed -i '/max_frozen/d' /etc/qemu-ga/fsfreeze-hook.conf");
    assert_eq!(
        trace(g),
        [
            format!("10-ctx freeze rollback=0 {domain}"),
            format!("10-ctx thaw rollback=1 {domain}")
        ],
        "{who}: the guard's thaw ran the hook, the late thaw none again"
    );
    // The log and the metrics, where qemu-ga's domain may write them.
    let metrics = g.admin("cat /var/log/qemu-ga/fsfreeze-hook.prom");
    assert!(metrics.contains("fsfreeze_hook_"), "{who}: {metrics}");
    // What the runner made and wrote is labelled as the policy says:
    // restorecon would change nothing.
    let relabel = g.admin("restorecon -Rnv /run/fsfreeze-hook /var/log/qemu-ga");
    assert_eq!(relabel.trim(), "", "{who}");

    // restorecon over /var/log and /run between two cycles changes nothing
    // that works.
    println!(
        "{who}: restorecon -Rv /var/log /run: {}",
        g.admin("restorecon -Rv /var/log /run").trim()
    );
    g.freeze()
        .unwrap_or_else(|e| panic!("{who}: after restorecon: {e}"));
    g.thaw().unwrap();
    assert_eq!(trace(g).len(), 2, "{who}");

    // A hook that talks to a database server's socket: denied while
    // confined, with the fix in the error and in check; allowed unconfined.
    g.admin("(unixsock listen /run/db.sock </dev/null >/dev/null 2>&1 &); sleep 0.5");
    hook(g, "20-db", "unixsock connect /run/db.sock");
    if unconfined {
        g.freeze().unwrap_or_else(|e| panic!("{who}: {e}"));
        g.thaw().unwrap();
    } else {
        let err = g.freeze().expect_err("a confined client is denied");
        assert!(
            err.contains("20-db exited with status 1")
                && err.contains("setsebool -P virt_qemu_ga_run_unconfined on"),
            "{who}: {err}"
        );
        let check = g.ctl("fsfreeze-hook check").1;
        assert!(
            check.contains("`setsebool -P virt_qemu_ga_run_unconfined on`"),
            "{who}: {check}"
        );
    }
    g.admin("rm /etc/qemu-ga/fsfreeze-hook.d/20-db; pkill unixsock || kill $(pidof unixsock)");
    trace(g);
}

#[test]
#[ignore = "needs root"]
fn enforcing_selinux_guest_runs_hooks_confined_and_unconfined_with_no_denial_of_ours() {
    let _exclusive = freezing_test("vm_selinux");
    let Some(policy) = policy() else { return };
    // Under 10.0.2, the first agent of 9.1 or later (the RHEL family ships
    // 9.x; Debian 13's 10.0.13 would load its libraries from paths the
    // policy labels for no one), on each kernel.
    let qga = agents()
        .into_iter()
        .find(|a| a.reports_hook_errors)
        .expect("an agent of 9.1 or later");
    for (kernel, _) in super::kernels() {
        selinux_cases(&qga, &policy, kernel.as_deref());
    }
}

/// The cases on one kernel (`None`: Debian 12's).
fn selinux_cases(
    qga: &crate::qemu_ga::TestAgent,
    policy: &std::path::Path,
    kernel: Option<&std::path::Path>,
) {
    let start = Instant::now();
    let mut g = Guest::boot_selinux(qga, policy, kernel);
    let kernel = g.admin("uname -r");
    let who = format!("{} on {}", g.who, kernel.trim());
    println!(
        "{who}: SELinux guest booted in {:?} (policy {})",
        start.elapsed(),
        std::fs::read_to_string(policy.join("source"))
            .unwrap_or_default()
            .trim()
    );
    let agent =
        g.admin("cat /proc/$(pidof qemu-ga)/attr/current; echo; cat /sys/fs/selinux/enforce");
    assert!(
        agent.contains("system_u:system_r:virt_qemu_ga_t:s0") && agent.trim_end().ends_with("\n1"),
        "{who}: {agent}"
    );
    // Typed at the shell, commands see what qemu-ga's hook sees: RHEL's
    // paths, from its unit and /etc/sysconfig/qemu-ga.
    hook(&mut g, "10-ctx", "");
    // (Its hooks dir, the config beside the hook, whose limit is 5 s, the
    // log under /var/log/qemu-ga.)
    let list = g.admin("fsfreeze-hook list");
    assert!(
        list.contains("hooks dir /etc/qemu-ga/fsfreeze-hook.d") && list.contains("timeout 5s"),
        "{who}: {list}"
    );
    let rehearse = g.admin("fsfreeze-hook rehearse");
    assert!(rehearse.contains("10-ctx"), "{who}: {rehearse}");
    let logged = g.admin("grep -c rehearse /var/log/qemu-ga/fsfreeze-hook.log");
    assert_ne!(logged.trim(), "0", "{who}: the rehearsal's log");
    // The state dir the rehearsal (root's shell) made is labelled as
    // qemu-ga's domain may write it: restorecon would change nothing.
    let relabel = g.admin("restorecon -Rnv /run/fsfreeze-hook");
    assert_eq!(relabel.trim(), "", "{who}: made by a rehearsal");
    g.admin("rm -rf /run/trace /run/fsfreeze-hook");
    // Red Hat's QE test of the hook (tp-qemu): a .d script without #!
    // whose output names its $0 and phase reaches the log.
    g.admin(
        "printf '%s\\n' \"printf 'testing %s:%s\\\\n' \\$0 \\$@\" > /etc/qemu-ga/fsfreeze-hook.d/user_script.sh\n\
         chmod 755 /etc/qemu-ga/fsfreeze-hook.d/user_script.sh; restorecon -R /etc/qemu-ga",
    );
    g.freeze().unwrap_or_else(|e| panic!("{who}: {e}"));
    g.thaw().unwrap_or_else(|e| panic!("{who}: {e}"));
    let log = g.admin("tail -n 4 /var/log/qemu-ga/fsfreeze-hook.log");
    println!("{who}: tp-qemu's script, the log's last lines:\n{log}");
    for phase in ["freeze", "thaw"] {
        let line = format!("testing /etc/qemu-ga/fsfreeze-hook.d/user_script.sh:{phase}");
        assert!(
            g.admin("cat /var/log/qemu-ga/fsfreeze-hook.log")
                .lines()
                .any(|l| l == line),
            "{who}: {line}"
        );
    }
    g.admin("rm /etc/qemu-ga/fsfreeze-hook.d/user_script.sh /run/trace");
    // The runner makes its state dir itself in the first round; in the
    // second, root's shell made it first with mkdir, and the shipped file
    // context relabels it.
    round(&mut g, false);
    let made = g.admin("rm -rf /run/fsfreeze-hook && mkdir /run/fsfreeze-hook && chmod 700 /run/fsfreeze-hook && restorecon -Rv /run/fsfreeze-hook");
    assert!(made.contains("virt_qemu_ga_var_run_t"), "{who}: {made}");
    round(&mut g, true);
    let console = g.console();
    let denials: Vec<&str> = console
        .lines()
        .filter(|l| l.contains("avc:  denied"))
        .collect();
    println!("{who}: the kernel's denials:\n{}", denials.join("\n"));
    let ours: Vec<&&str> = denials
        .iter()
        .filter(|l| l.contains("scontext=system_u:system_r:virt_qemu_ga"))
        .filter(|l| !l.contains("comm=\"unixsock\""))
        .collect();
    assert!(
        ours.is_empty(),
        "{who}: denied to the runner or its hooks: {ours:#?}"
    );
    assert!(
        denials.iter().any(|l| l.contains("comm=\"unixsock\"")
            && l.contains("scontext=system_u:system_r:virt_qemu_ga_t")),
        "{who}: the confined client was denied by the policy"
    );
    println!("{who}: SELinux guest took {:?}", start.elapsed());
}
