//! `list`, `check`, `enable`, `disable` and `completions`, over scratch
//! system roots laid out like Debian 12 and RHEL 9.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{BIN, Env, assert_has, require_root};

const STOCK: &str = "#!/bin/sh\n# the stock fsfreeze-hook script\nexit 0\n";

pub fn put(root: &Path, guest: &str, text: &str, mode: u32) {
    let p = root.join(guest.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn dir(root: &Path, guest: &str) {
    let p = root.join(guest.trim_start_matches('/'));
    fs::create_dir_all(&p).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Debian 12 with qemu-guest-agent installed: the unit starts plain
/// qemu-ga, the stock hook and its dir exist, no qemu-ga.conf.
pub fn debian(root: &Path) {
    put(root, "/usr/sbin/qemu-ga", "ELF", 0o755);
    put(root, "/bin/sh", "ELF", 0o755);
    put(
        root,
        "/lib/systemd/system/qemu-guest-agent.service",
        "[Unit]\nDescription=QEMU Guest Agent\nBindsTo=dev-virtio\\x2dports-org.qemu.guest_agent.0.device\n\n[Service]\nExecStart=-/usr/sbin/qemu-ga\nRestart=always\nRestartSec=0\n\n[Install]\n",
        0o644,
    );
    put(root, "/etc/qemu/fsfreeze-hook", STOCK, 0o755);
    dir(root, "/etc/qemu/fsfreeze-hook.d");
    put(root, "/dev/virtio-ports/org.qemu.guest_agent.0", "", 0o600);
    dir(root, "/var/log");
    dir(root, "/run");
}

/// RHEL 9: the unit passes -F${FSFREEZE_HOOK_PATHNAME} from
/// /etc/sysconfig/qemu-ga, hooks under /etc/qemu-ga.
pub fn rhel(root: &Path) {
    put(root, "/usr/bin/qemu-ga", "ELF", 0o755);
    put(root, "/usr/bin/sh", "ELF", 0o755);
    // RHEL's /bin is a symlink into /usr.
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    put(
        root,
        "/usr/lib/systemd/system/qemu-guest-agent.service",
        "[Unit]\nDescription=QEMU Guest Agent\n\n[Service]\nUMask=0077\nEnvironmentFile=/etc/sysconfig/qemu-ga\nExecStart=/usr/bin/qemu-ga \\\n  --method=virtio-serial \\\n  --path=/dev/virtio-ports/org.qemu.guest_agent.0 \\\n  --allow-rpcs=${FILTER_RPC_ARGS} \\\n  -F${FSFREEZE_HOOK_PATHNAME}\nRestart=always\nRestartSec=0\n",
        0o644,
    );
    put(
        root,
        "/etc/sysconfig/qemu-ga",
        "# This is a systemd environment file, not a shell script.\nFILTER_RPC_ARGS=guest-ping,guest-fsfreeze-freeze,guest-fsfreeze-thaw\n# FSFREEZE_HOOK_PATHNAME=/dev/null disables the feature.\nFSFREEZE_HOOK_PATHNAME=/etc/qemu-ga/fsfreeze-hook\n",
        0o644,
    );
    put(root, "/etc/qemu-ga/fsfreeze-hook", STOCK, 0o755);
    dir(root, "/etc/qemu-ga/fsfreeze-hook.d");
    put(root, "/dev/virtio-ports/org.qemu.guest_agent.0", "", 0o600);
    // The agent's package owns its log directory.
    dir(root, "/var/log/qemu-ga");
    dir(root, "/run");
}

/// Every path under `root` with its mode and contents (or link target).
pub fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let body = if meta.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            Vec::new()
        } else if meta.file_type().is_symlink() {
            fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            fs::read(&p).unwrap()
        };
        out.insert(rel, (meta.permissions().mode(), body));
    }
    out
}

pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(args: &[&str]) -> Out {
    out_of(
        Command::new(BIN)
            .args(args)
            .env_remove("FSFREEZE_HOOK_CONFIG"),
    )
}

/// What `cmd` exited with and printed.
fn out_of(cmd: &mut Command) -> Out {
    let out = cmd.output().unwrap();
    Out {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn at(root: &Path) -> String {
    root.display().to_string()
}

#[test]
fn check_on_debian_says_qemu_ga_runs_no_hook_and_how_to_fix_it() {
    let root = tempfile::tempdir().unwrap();
    debian(root.path());
    let out = run(&["check", "--root", &at(root.path())]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("problem: qemu-ga runs no hook"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        line.contains("starts it without -F and no qemu-ga.conf sets fsfreeze-hook="),
        "{line}"
    );
    assert!(
        line.ends_with(
            "Fix: run `fsfreeze-hook enable`, then `systemctl restart qemu-guest-agent`"
        ),
        "{line}"
    );
    assert!(
        out.stdout
            .contains("ok: qemu-ga is installed (/usr/sbin/qemu-ga)"),
        "{}",
        out.stdout
    );
    assert_has(&out.stdout, "ok: the guest agent's virtio port");
    assert_eq!(out.stdout.lines().last(), Some("1 problem(s)"));
}

#[test]
#[ignore = "needs root"]
fn enable_then_disable_on_debian_leaves_the_root_byte_identical() {
    require_root("enable_disable_debian");
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    debian(root.path());
    put(
        root.path(),
        "/etc/qemu/qemu-ga.conf",
        "# site settings\n[general]\nverbose=true\n",
        0o644,
    );
    let before = tree(root.path());
    let dry = run(&["enable", "--root", &r, "--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}{}", dry.stdout, dry.stderr);
    assert!(
        dry.stdout
            .lines()
            .all(|l| l.starts_with("would: ") || l.starts_with("then restart")),
        "{}",
        dry.stdout
    );
    assert_eq!(tree(root.path()), before, "--dry-run changes nothing");

    let out = run(&["enable", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout.lines().collect::<Vec<_>>(),
        [
            "keep /etc/qemu/fsfreeze-hook as /etc/qemu/fsfreeze-hook.stock (never run; `disable` puts it back)",
            "install this binary as /etc/qemu/fsfreeze-hook (mode 0755)",
            "set fsfreeze-hook=/etc/qemu/fsfreeze-hook in /etc/qemu/qemu-ga.conf (the rest kept; original saved as /etc/qemu/qemu-ga.conf.before-fsfreeze-hook)",
            "then restart the agent: systemctl restart qemu-guest-agent",
        ]
    );
    let conf = fs::read_to_string(root.path().join("etc/qemu/qemu-ga.conf")).unwrap();
    assert_eq!(
        conf,
        "# site settings\n[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\nverbose=true\n"
    );
    assert_eq!(
        fs::read(root.path().join("etc/qemu/fsfreeze-hook")).unwrap(),
        fs::read(BIN).unwrap()
    );
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/10-app",
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    let check = run(&["check", "--root", &r]);
    assert_eq!(check.code, Some(0), "{}", check.stdout);
    assert!(
        check
            .stdout
            .contains("ok: /etc/qemu/fsfreeze-hook is this fsfreeze-hook"),
        "{}",
        check.stdout
    );
    assert_has(&check.stdout, "ok: 1 hook(s) will run");
    fs::remove_file(root.path().join("etc/qemu/fsfreeze-hook.d/10-app")).unwrap();

    let again = run(&["enable", "--root", &r]);
    assert_eq!(again.code, Some(0));
    assert_has(&again.stdout, "already enabled: nothing to change");

    let out = run(&["disable", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(tree(root.path()), before, "{}", out.stdout);
    let again = run(&["disable", "--root", &r]);
    assert_eq!(again.code, Some(0));
    assert_has(&again.stdout, "nothing to undo");
}

#[test]
#[ignore = "needs root"]
fn check_flags_max_frozen_0_and_says_the_guard_is_on_otherwise() {
    require_root("check_max_frozen");
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    debian(root.path());
    assert_eq!(run(&["enable", "--root", &r]).code, Some(0));
    let out = run(&["check", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_has(
        &out.stdout,
        "ok: max_frozen 10m: if no thaw comes, the guest thaws itself",
    );
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.conf",
        "max_frozen = \"0\"\n",
        0o644,
    );
    let out = run(&["check", "--root", &r]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert_has(
        &out.stdout,
        "problem: max_frozen is 0: no guard; if the hypervisor's thaw never comes, the guest stays frozen until someone thaws it from its console",
    );
    assert_has(&out.stdout, "Fix: set max_frozen = \"10m\"");
}

#[test]
#[ignore = "needs root"]
fn enable_creates_qemu_ga_conf_when_there_is_none_and_disable_removes_it() {
    require_root("enable_disable_no_conf");
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    debian(root.path());
    let before = tree(root.path());
    assert_eq!(run(&["enable", "--root", &r]).code, Some(0));
    assert_eq!(
        fs::read_to_string(root.path().join("etc/qemu/qemu-ga.conf")).unwrap(),
        "[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\n"
    );
    assert_eq!(run(&["disable", "--root", &r]).code, Some(0));
    assert_eq!(tree(root.path()), before);
}

/// A Debian image, enabled, with `config` as its fsfreeze-hook.conf; the
/// image and its path as `--root` takes it.
fn enabled_debian_with(config: &str) -> (tempfile::TempDir, String) {
    let (root, r) = enabled_debian();
    put(root.path(), "/etc/qemu/fsfreeze-hook.conf", config, 0o644);
    (root, r)
}

/// A Debian root, enabled; the root and its path as `--root` takes it.
fn enabled_debian() -> (tempfile::TempDir, String) {
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    debian(root.path());
    assert_eq!(run(&["enable", "--root", &r]).code, Some(0));
    (root, r)
}

#[test]
#[ignore = "needs root"]
fn check_lists_every_problem_of_the_config_not_only_the_first() {
    require_root("check_every_config_problem");
    let (_root, r) = enabled_debian_with("timeout = \"5 s\"\nkill_grace = \"soon\"\nbogus = 1\n");
    let out = run(&["check", "--root", &r]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let problems: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("problem: config "))
        .collect();
    assert_eq!(problems.len(), 3, "{}", out.stdout);
    for (line, key) in [(1, "timeout"), (2, "kill_grace"), (3, "bogus")] {
        assert!(
            problems
                .iter()
                .any(|p| p.contains(&format!("fsfreeze-hook.conf:{line}: key `{key}`"))),
            "{key}: {problems:?}"
        );
    }
}

#[test]
#[ignore = "needs root"]
fn check_json_and_a_metrics_directory_that_does_not_exist() {
    require_root("check_json_metrics");
    let (root, r) = enabled_debian_with(
        "metrics_file = \"/var/lib/prometheus/node-exporter/fsfreeze_hook.prom\"\n",
    );
    let out = run(&["check", "--root", &r, "--json"]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let doc: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(doc["ok"], false);
    let problems: Vec<&serde_json::Value> = doc["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["level"] == "problem")
        .collect();
    assert_eq!(doc["problems"], problems.len() as f64, "{doc}");
    let metrics = problems
        .iter()
        .find(|p| {
            p["text"]
                .as_str()
                .unwrap()
                .starts_with("metrics_file's directory")
        })
        .unwrap_or_else(|| panic!("{doc}"));
    assert_has(
        metrics["text"].as_str().unwrap(),
        "does not exist: no metrics are written",
    );
    assert!(metrics["fix"].as_str().unwrap().starts_with("create "));
    // Made, it is fine.
    dir(root.path(), "/var/lib/prometheus/node-exporter");
    let out = run(&["check", "--root", &r, "--json"]);
    let doc: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert!(
        doc["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["level"] == "ok"
                && f["text"]
                    .as_str()
                    .unwrap()
                    .starts_with("metrics_file's directory")),
        "{doc}"
    );
}

#[test]
#[ignore = "needs root"]
fn check_says_restart_when_the_agent_is_older_than_its_settings() {
    // The service's agent, as a sysvinit-style daemon with its pidfile, in a
    // mount namespace whose /etc and /usr/sbin (overlays) and /run are the
    // test's own (qemu-ga installed there as /usr/sbin/qemu-ga, on a private
    // socket and state dir, freezing blocked).
    require_root("check_restart");
    for qga in crate::qemu_ga::agents() {
        qga.announce();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let script = format!(
            "set -e\n\
             mkdir -p {d}/upper {d}/work\n\
             mount -t overlay overlay -o lowerdir=/etc,upperdir={d}/upper,workdir={d}/work /etc\n\
             rm -rf /etc/qemu; mkdir -p /etc/qemu\n\
             mkdir -p {d}/sbin-upper {d}/sbin-work\n\
             mount -t overlay overlay -o lowerdir=/usr/sbin,upperdir={d}/sbin-upper,workdir={d}/sbin-work /usr/sbin\n\
             cp '{q}' /usr/sbin/qemu-ga\n\
             mount -t tmpfs -o mode=0755 tmpfs /run\n\
             printf '[general]\\n' >/etc/qemu/qemu-ga.conf\n\
             touch -d '1 hour ago' /etc/qemu/qemu-ga.conf\n\
             mkdir -p {d}/st\n\
             start() {{ rm -f /run/qemu-ga.pid; /usr/sbin/qemu-ga -d -m unix-listen -p {d}/sock -t {d}/st -f /run/qemu-ga.pid -b guest-fsfreeze-freeze; i=0; while [ ! -s /run/qemu-ga.pid ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; }}\n\
             stop() {{ p=$(cat /run/qemu-ga.pid); kill $p; while kill -0 $p 2>/dev/null; do sleep 0.05; done; }}\n\
             start\n\
             '{bin}' check >{d}/fresh || true\n\
             sleep 2; touch /etc/qemu/qemu-ga.conf\n\
             '{bin}' check >{d}/stale || true\n\
             stop; start\n\
             '{bin}' check >{d}/restarted || true\n\
             stop",
            q = qga.path.display(),
            bin = crate::common::BIN,
        );
        let out = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let said = |name: &str| fs::read_to_string(dir.path().join(name)).unwrap();
        let fine = "ok: qemu-ga is running (pid ";
        assert_has(&said("fresh"), fine);
        assert_has(&said("fresh"), "started after its settings last changed");
        let stale = said("stale");
        let line = stale
            .lines()
            .find(|l| l.starts_with("problem: qemu-ga (pid "))
            .unwrap_or_else(|| panic!("{qga}: {stale}"));
        assert!(
            line.contains("before /etc/qemu/qemu-ga.conf changed at")
                && line.ends_with("Fix: `systemctl restart qemu-guest-agent`"),
            "{line}"
        );
        assert_has(
            &said("restarted"),
            "started after its settings last changed",
        );
    }
}

#[test]
#[ignore = "needs root"]
fn disable_keeps_a_hook_that_is_no_longer_what_enable_installed() {
    require_root("disable_keeps_foreign");
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    debian(root.path());
    assert_eq!(run(&["enable", "--root", &r]).code, Some(0));
    // qemu-guest-agent upgraded with --force-confnew: a newer stock script
    // at the hook path.
    let newer = "#!/bin/sh\n# a newer stock script\n";
    put(root.path(), "/etc/qemu/fsfreeze-hook", newer, 0o755);
    let dry = run(&["disable", "--root", &r, "--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}{}", dry.stdout, dry.stderr);
    let out = run(&["disable", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    for said in [&dry.stdout, &out.stdout] {
        assert_has(
            said,
            "keep /etc/qemu/fsfreeze-hook: it is no longer the fsfreeze-hook `enable` installed",
        );
        assert_has(
            said,
            "keep /etc/qemu/fsfreeze-hook.stock where it is: /etc/qemu/fsfreeze-hook holds another file",
        );
    }
    assert_eq!(
        fs::read_to_string(root.path().join("etc/qemu/fsfreeze-hook")).unwrap(),
        newer
    );
    assert_eq!(
        fs::read_to_string(root.path().join("etc/qemu/fsfreeze-hook.stock")).unwrap(),
        STOCK
    );
    // A newer build of ours at the hook path is still ours to remove.
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    debian(root.path());
    assert_eq!(run(&["enable", "--root", &r]).code, Some(0));
    let mut ours = fs::read(BIN).unwrap();
    ours.extend_from_slice(b"another build");
    fs::write(root.path().join("etc/qemu/fsfreeze-hook"), ours).unwrap();
    let out = run(&["disable", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(
        fs::read_to_string(root.path().join("etc/qemu/fsfreeze-hook")).unwrap(),
        STOCK
    );
}

#[test]
#[ignore = "needs root"]
fn disable_names_what_the_stock_script_will_run_that_fsfreeze_hook_did_not() {
    require_root("disable_names_stock_runs");
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    debian(root.path());
    // The stock script ran before `enable`: qemu-ga.conf named it.
    put(
        root.path(),
        "/etc/qemu/qemu-ga.conf",
        "[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\n",
        0o644,
    );
    assert_eq!(run(&["enable", "--root", &r]).code, Some(0));
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/10-app",
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/20-fail.disabled",
        "#!/bin/sh\nexit 1\n",
        0o755,
    );
    // Skipped by both: not named.
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/30-old.dpkg-old",
        "#!/bin/sh\nexit 1\n",
        0o755,
    );
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/40-off.disabled",
        "#!/bin/sh\nexit 1\n",
        0o644,
    );
    let dry = run(&["disable", "--root", &r, "--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}{}", dry.stdout, dry.stderr);
    assert_has(
        &dry.stdout,
        "note: the stock script would run /etc/qemu/fsfreeze-hook.d/20-fail.disabled at the next freeze; fsfreeze-hook did not (ignored suffix \".disabled\")",
    );
    let out = run(&["disable", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let notes: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("note:"))
        .collect();
    assert_eq!(notes.len(), 1, "{}", out.stdout);
    assert_has(
        notes[0],
        "the stock script will run /etc/qemu/fsfreeze-hook.d/20-fail.disabled",
    );
    assert_has(
        &out.stdout,
        "qemu-ga runs /etc/qemu/fsfreeze-hook after its restart (set in /etc/qemu/qemu-ga.conf)",
    );
}

#[test]
#[ignore = "needs root"]
fn disable_on_debian_says_qemu_ga_runs_no_hook_as_before_enable() {
    // Debian's unit starts qemu-ga without -F: the qemu-ga.conf `enable`
    // made goes, and with it every hook; no note of what the stock script
    // would run, for it will not run.
    require_root("disable_says_no_hook");
    let (root, r) = enabled_debian();
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/20-fail.disabled",
        "#!/bin/sh\nexit 1\n",
        0o755,
    );
    let said = "no hook after its restart, as before `enable`: its unit starts it without -F and no qemu-ga.conf names one (for the stock script: fsfreeze-hook=/etc/qemu/fsfreeze-hook in the [general] section of /etc/qemu/qemu-ga.conf)";
    let dry = run(&["disable", "--root", &r, "--dry-run"]);
    assert_has(&dry.stdout, &format!("qemu-ga would run {said}"));
    let out = run(&["disable", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_has(&out.stdout, &format!("qemu-ga runs {said}"));
    assert!(
        !out.stdout.contains("note: the stock script"),
        "{}",
        out.stdout
    );
    let check = run(&["check", "--root", &r]);
    assert_has(&check.stdout, "qemu-ga runs no hook: ");
}

#[test]
#[ignore = "needs root"]
fn a_hook_path_with_spaces_is_enabled_and_disabled_back_to_the_same_tree() {
    require_root("enable_disable_spaces");
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    debian(root.path());
    // The site's own agent config names a hook in a dir with spaces.
    put(
        root.path(),
        "/etc/qemu/qemu-ga.conf",
        "[general]\nfsfreeze-hook=/opt/site hooks/fsfreeze hook\n",
        0o644,
    );
    put(root.path(), "/opt/site hooks/fsfreeze hook", STOCK, 0o755);
    let before = tree(root.path());
    let out = run(&["enable", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_has(
        &out.stdout,
        "keep /opt/site hooks/fsfreeze hook as /opt/site hooks/fsfreeze hook.stock",
    );
    let record =
        fs::read_to_string(root.path().join("opt/site hooks/fsfreeze hook.enabled")).unwrap();
    assert!(
        record.contains(
            "stock /opt/site%20hooks/fsfreeze%20hook /opt/site%20hooks/fsfreeze%20hook.stock"
        ),
        "{record}"
    );
    let out = run(&["disable", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_has(
        &out.stdout,
        "put /opt/site hooks/fsfreeze hook.stock back as /opt/site hooks/fsfreeze hook",
    );
    assert_eq!(tree(root.path()), before, "{}", out.stdout);
}

#[test]
#[ignore = "needs root"]
fn rhel_hook_comes_from_sysconfig_enable_installs_there() {
    require_root("enable_disable_rhel");
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    rhel(root.path());
    let check = run(&["check", "--root", &r]);
    assert_eq!(check.code, Some(1), "{}", check.stdout);
    assert_has(
        &check.stdout,
        "ok: qemu-ga runs the hook /etc/qemu-ga/fsfreeze-hook (set in /usr/lib/systemd/system/qemu-guest-agent.service)",
    );
    assert_has(
        &check.stdout,
        "problem: /etc/qemu-ga/fsfreeze-hook is a script (the stock hook?), not fsfreeze-hook. Fix: run `fsfreeze-hook enable`",
    );
    let before = tree(root.path());
    let out = run(&["enable", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("install this binary as /etc/qemu-ga/fsfreeze-hook"),
        "{}",
        out.stdout
    );
    assert!(
        !out.stdout.contains("qemu-ga.conf"),
        "the unit already passes -F: {}",
        out.stdout
    );
    let check = run(&["check", "--root", &r]);
    assert_eq!(check.code, Some(0), "{}", check.stdout);
    assert_eq!(run(&["disable", "--root", &r]).code, Some(0));
    assert_eq!(tree(root.path()), before);
}

#[test]
fn check_names_hooks_that_will_not_run_and_notes_deliberate_skips() {
    let root = tempfile::tempdir().unwrap();
    debian(root.path());
    put(
        root.path(),
        "/etc/qemu/qemu-ga.conf",
        "[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\n",
        0o644,
    );
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/10-ok",
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/20-db.dpkg-old",
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/30-noexec",
        "#!/bin/sh\nexit 0\n",
        0o644,
    );
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/40-py",
        "#!/usr/bin/python3.99\n",
        0o755,
    );
    let out = run(&["check", "--root", &at(root.path())]);
    let hooks = root.path().join("etc/qemu/fsfreeze-hook.d");
    assert!(
        out.stdout
            .contains("note: 20-db.dpkg-old is skipped on purpose: ignored suffix \".dpkg-old\""),
        "{}",
        out.stdout
    );
    assert_has(
        &out.stdout,
        &format!(
            "problem: hook 30-noexec will not run: not executable. Fix: chmod 755 {}/30-noexec",
            hooks.display()
        ),
    );
    assert_has(
        &out.stdout,
        "problem: hook 40-py will not run: names interpreter /usr/bin/python3.99 in its #! line, which does not exist. Fix: install that interpreter, or fix the #! line",
    );
    assert!(
        out.stdout
            .contains("problem: /etc/qemu/fsfreeze-hook is a script (the stock hook?)"),
        "{}",
        out.stdout
    );
    assert_has(&out.stdout, "ok: 1 hook(s) will run");
}

#[test]
fn check_names_the_optional_hooks() {
    let root = tempfile::tempdir().unwrap();
    debian(root.path());
    put(
        root.path(),
        "/etc/qemu/qemu-ga.conf",
        "[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\n",
        0o644,
    );
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.conf",
        "state_dir = \"/run/fsfreeze-hook\"\n[hooks.\"60-cache\"]\non_error = \"continue\"\n",
        0o644,
    );
    // What the last freezes took (the medians count).
    put(
        root.path(),
        "/run/fsfreeze-hook/durations",
        "10-db 2900,3000,3100\n60-cache 300\n",
        0o600,
    );
    for name in ["10-db", "60-cache"] {
        put(
            root.path(),
            &format!("/etc/qemu/fsfreeze-hook.d/{name}"),
            "#!/bin/sh\nexit 0\n",
            0o755,
        );
    }
    let out = run(&["check", "--root", &at(root.path())]);
    assert_has(
        &out.stdout,
        "ok: 2 hook(s) will run; optional (a failure is logged and counted, the freeze goes on): 60-cache\n",
    );
    // And what parallel hooks would make of the pause.
    assert_has(
        &out.stdout,
        "note: from the last freezes: the freeze hooks take about 3.3 s one after another (10-db held 300 ms of it, waiting for the others); with parallel = true about 3.0 s, all finishing together\n",
    );
}

#[test]
fn list_says_why_each_entry_runs_or_not() {
    let env = Env::new();
    env.hook("10-ok", "exit 0");
    env.hook("20-db.dpkg-old", "exit 0");
    let noexec = env.hook("30-noexec", "exit 0");
    fs::set_permissions(&noexec, fs::Permissions::from_mode(0o644)).unwrap();
    let py = env.hooks.join("40-py");
    fs::write(&py, "#!/usr/bin/python3.99\n").unwrap();
    fs::set_permissions(&py, fs::Permissions::from_mode(0o755)).unwrap();
    env.set_config("[hooks.\"10-ok\"]\ntimeout = \"5m\"\n");
    let run = env.run(&["list"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], format!("hooks dir {}", env.hooks.display()));
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["runs", "10-ok", "timeout", "5m", "(per-hook", "setting)"]
    );
    assert!(
        lines[2].contains("skipped")
            && lines[2].contains("20-db.dpkg-old")
            && lines[2].ends_with("ignored suffix \".dpkg-old\""),
        "{}",
        lines[2]
    );
    assert!(
        lines[3].contains("30-noexec") && lines[3].ends_with("not executable"),
        "{}",
        lines[3]
    );
    assert!(
        lines[4].contains("refused")
            && lines[4].contains("40-py")
            && lines[4].ends_with(
                "names interpreter /usr/bin/python3.99 in its #! line, which does not exist (the freeze fails under on_error = abort)"
            ),
        "{}",
        lines[4]
    );
    let run = env.run(&["list", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    let entries = doc["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[0]["name"], "10-ok");
    assert_eq!(entries[0]["runs"], true);
    assert_eq!(entries[0]["timeout_ms"], 300_000);
    assert_eq!(entries[1]["runs"], false);
    assert_eq!(entries[1]["reason"], "ignored suffix \".dpkg-old\"");
    assert_eq!(entries[1]["refused"], false);
    assert_eq!(entries[3]["refused"], true);
    // Under continue, the freeze goes on without it: the line says so.
    env.set_config("on_error = \"continue\"\n");
    let run = env.run(&["list"]);
    assert_has(
        &run.stdout,
        "which does not exist (logged and passed over under on_error = continue)",
    );
    assert_eq!(doc["problem"], serde_json::Value::Null);
}

#[test]
fn completions_come_from_the_same_definitions() {
    for (shell, needle) in [
        ("bash", "snapshot"),
        ("zsh", "rehearse"),
        ("fish", "mountpoint"),
    ] {
        let out = run(&["completions", shell]);
        assert_eq!(out.code, Some(0), "{shell}: {}", out.stderr);
        assert!(
            out.stdout.contains("fsfreeze-hook") && out.stdout.contains(needle),
            "{shell}"
        );
    }
}

#[test]
fn completions_to_a_reader_that_went_away_are_no_panic() {
    // `completions bash | head -1`: the pipe's reader is gone before the
    // script is written.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BIN)
        .args(["completions", "bash"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn check_names_a_stock_script_that_dies_under_dash() {
    for agent in crate::stock::with_stock_script() {
        agent.announce();
        // What the script really does under dash (10.0.2's dies; 7.2's and
        // Debian 13's 10.0.13 do not).
        let dies = crate::stock::stock_dies_under_dash(&agent);
        for sh in ["dash", "bash"] {
            let root = tempfile::tempdir().unwrap();
            debian(root.path());
            put(
                root.path(),
                "/etc/qemu/qemu-ga.conf",
                "[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\n",
                0o644,
            );
            fs::remove_file(root.path().join("bin/sh")).unwrap();
            put(root.path(), &format!("/usr/bin/{sh}"), "ELF", 0o755);
            std::os::unix::fs::symlink(format!("/usr/bin/{sh}"), root.path().join("bin/sh"))
                .unwrap();
            let stock = fs::read_to_string(agent.stock_script()).unwrap();
            put(root.path(), "/etc/qemu/fsfreeze-hook", &stock, 0o755);
            let out = run(&["check", "--root", &at(root.path())]);
            let finding = "problem: /etc/qemu/fsfreeze-hook reads ${PIPESTATUS[0]}, which only bash has, under #!/bin/sh (/bin/sh is dash): whenever its log file is not writable";
            if dies && sh == "dash" {
                assert_has(&out.stdout, finding);
                assert_has(&out.stdout, "Bad substitution");
            } else {
                assert!(
                    !out.stdout.contains("PIPESTATUS"),
                    "{agent}, {sh}: {}",
                    out.stdout
                );
            }
            assert_has(
                &out.stdout,
                "problem: /etc/qemu/fsfreeze-hook is a script (the stock hook?)",
            );
        }
    }
}

/// Host files next to an image: none may change, whatever the image says.
struct Outside {
    dir: PathBuf,
}

impl Outside {
    fn new(top: &Path) -> Outside {
        let dir = top.join("elsewhere");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("victim"), "host file\n").unwrap();
        fs::write(dir.join("secret"), "host secret\n").unwrap();
        Outside { dir }
    }
}

/// No file of `root` holds the host's secret.
fn no_secret_inside(root: &Path) {
    for (path, (_, body)) in tree(root) {
        assert!(
            !String::from_utf8_lossy(&body).contains("host secret"),
            "{} holds the host's secret",
            path.display()
        );
    }
}

/// `enable` then `disable` on an image made by `make`; the host dir beside
/// it stays byte-identical and no host data lands in the image.
fn confined(test: &str, make: impl Fn(&Path, &Outside)) {
    let top = tempfile::tempdir().unwrap();
    let outside = Outside::new(top.path());
    let img = top.path().join("img");
    debian(&img);
    make(&img, &outside);
    let before = tree(&outside.dir);
    for cmd in ["enable", "disable"] {
        let out = run(&[cmd, "--root", &at(&img)]);
        assert_eq!(
            tree(&outside.dir),
            before,
            "{test}: {cmd} wrote outside the image:\n{}{}",
            out.stdout,
            out.stderr
        );
        no_secret_inside(&img);
    }
}

#[test]
#[ignore = "needs root"]
fn enable_and_disable_never_write_outside_the_image() {
    require_root("image_confined");
    // The hook named through `..`.
    confined("dotdot hook", |img, _| {
        put(
            img,
            "/etc/qemu/qemu-ga.conf",
            "[general]\nfsfreeze-hook=/../elsewhere/victim\n",
            0o644,
        );
    });
    // An absolute symlink in the image to the host dir.
    confined("absolute link", |img, outside| {
        fs::remove_dir_all(img.join("etc/qemu")).unwrap();
        std::os::unix::fs::symlink(&outside.dir, img.join("etc/qemu")).unwrap();
    });
    // qemu-ga.conf a link to a host file: never read into the image.
    confined("conf link", |img, outside| {
        std::os::unix::fs::symlink(
            outside.dir.join("secret"),
            img.join("etc/qemu/qemu-ga.conf"),
        )
        .unwrap();
    });
    // Links planted where enable writes its temp file and the backup.
    confined("planted links", |img, outside| {
        put(
            img,
            "/etc/qemu/qemu-ga.conf",
            "[general]\nverbose=true\n",
            0o644,
        );
        for name in [
            "etc/qemu/fsfreeze-hook.fsfreeze-hook-new",
            "etc/qemu/qemu-ga.fsfreeze-hook-new",
            "etc/qemu/qemu-ga.conf.before-fsfreeze-hook",
        ] {
            std::os::unix::fs::symlink(outside.dir.join("victim"), img.join(name)).unwrap();
        }
    });
    // A record of `enable` that the image brought along, naming host paths.
    confined("forged record", |img, _| {
        put(
            img,
            "/etc/qemu/fsfreeze-hook.enabled",
            "fsfreeze-hook enable 1\nhook /../elsewhere/victim\nstock /../elsewhere/secret /../elsewhere/victim\ndir /../elsewhere\nconf-created /../../elsewhere/secret\n",
            0o644,
        );
    });
}

#[test]
#[ignore = "needs root"]
fn enable_makes_the_hooks_dir_the_runner_reads_and_check_flags_scripts_elsewhere() {
    require_root("hooks_dir_rule");
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    debian(root.path());
    fs::remove_dir(root.path().join("etc/qemu/fsfreeze-hook.d")).unwrap();
    put(
        root.path(),
        "/etc/qemu/qemu-ga.conf",
        "[general]\nfsfreeze-hook=/etc/qemu/my-hook\n",
        0o644,
    );
    // Scripts put where an earlier enable said (beside the hook, `.d`).
    put(
        root.path(),
        "/etc/qemu/my-hook.d/10-db",
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    let check = run(&["check", "--root", &r]);
    assert_has(
        &check.stdout,
        &format!(
            "{}/etc/qemu/fsfreeze-hook.d does not exist, but {}/etc/qemu/my-hook.d holds 1 script(s), which never run",
            root.path().display(),
            root.path().display()
        ),
    );
    let out = run(&["enable", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_has(&out.stdout, "create /etc/qemu/fsfreeze-hook.d (mode 0755)");
    assert!(root.path().join("etc/qemu/fsfreeze-hook.d").is_dir());
    assert!(!root.path().join("etc/qemu/my-hook.d.d").exists());
    let check = run(&["check", "--root", &r]);
    assert!(
        !check.stdout.contains("my-hook.d holds"),
        "{}",
        check.stdout
    );
}

/// Sets a file's SELinux label (the `security.selinux` attribute: an ext4
/// keeps it without an SELinux kernel).
#[allow(unsafe_code)]
fn label(path: &Path, label: &str) {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let value = format!("{label}\0");
    // SAFETY: NUL-terminated strings and a buffer that live for the call.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            c"security.selinux".as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        rc,
        0,
        "{}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

#[test]
#[ignore = "needs root"]
fn check_reports_selinux_labels_and_the_restorecon_that_fixes_a_wrong_one() {
    require_root("check_selinux");
    let dir = tempfile::tempdir().unwrap();
    // The root on an ext4 the test made: it keeps security.selinux.
    let fs = crate::loopfs::LoopFs::ext4(dir.path());
    let root = fs.mnt.clone();
    let r = at(&root);
    rhel(&root);
    assert_eq!(run(&["enable", "--root", &r]).code, Some(0));
    put(&root, "/sys/fs/selinux/enforce", "1", 0o644);
    let good = "system_u:object_r:virt_qemu_ga_unconfined_exec_t:s0";
    put(
        &root,
        "/etc/qemu-ga/fsfreeze-hook.d/10-good",
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    put(
        &root,
        "/etc/qemu-ga/fsfreeze-hook.d/20-moved",
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    label(&root.join("etc/qemu-ga/fsfreeze-hook.d"), good);
    label(&root.join("etc/qemu-ga/fsfreeze-hook.d/10-good"), good);
    // Moved in from a home directory: it kept that label.
    label(
        &root.join("etc/qemu-ga/fsfreeze-hook.d/20-moved"),
        "unconfined_u:object_r:user_home_t:s0",
    );
    label(
        &root.join("etc/qemu-ga/fsfreeze-hook"),
        "system_u:object_r:virt_qemu_ga_exec_t:s0",
    );
    let out = run(&["check", "--root", &r]);
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert_has(&out.stdout, "note: SELinux is enforcing");
    // The runner must share its scripts' domain (the package's module
    // labels the hook so), or it cannot end an unconfined one.
    assert_has(
        &out.stdout,
        "problem: hook /etc/qemu-ga/fsfreeze-hook is labelled system_u:object_r:virt_qemu_ga_exec_t:s0, not virt_qemu_ga_unconfined_exec_t: qemu-ga's SELinux domain runs it in its own domain, from which it may not end hooks that run unconfined (virt_qemu_ga_run_unconfined on). Fix: `restorecon -v /etc/qemu-ga/fsfreeze-hook`",
    );
    assert_has(
        &out.stdout,
        &format!("ok: /etc/qemu-ga/fsfreeze-hook.d is labelled {good}"),
    );
    assert_has(
        &out.stdout,
        &format!("ok: /etc/qemu-ga/fsfreeze-hook.d/10-good is labelled {good}"),
    );
    assert_has(
        &out.stdout,
        "problem: /etc/qemu-ga/fsfreeze-hook.d/20-moved is labelled unconfined_u:object_r:user_home_t:s0, not virt_qemu_ga_unconfined_exec_t: qemu-ga's SELinux domain may not run it. Fix: `restorecon -Rv /etc/qemu-ga/fsfreeze-hook.d`",
    );
    assert_eq!(
        out.stdout.lines().last(),
        Some("2 problem(s)"),
        "{}",
        out.stdout
    );
    assert_has(
        &out.stdout,
        "note: state dir /run/fsfreeze-hook is not there yet (what qemu-ga makes there is virt_qemu_ga_var_run_t)",
    );
    // What the runner writes in qemu-ga's domain: the state dir that an
    // administrator's shell made first (var_run_t), the log, and the
    // boolean that lets hooks reach a database.
    fs::create_dir(root.join("run/fsfreeze-hook")).unwrap();
    label(
        &root.join("run/fsfreeze-hook"),
        "unconfined_u:object_r:var_run_t:s0",
    );
    put(&root, "/var/log/qemu-ga/fsfreeze-hook.log", "", 0o640);
    label(
        &root.join("var/log/qemu-ga/fsfreeze-hook.log"),
        "system_u:object_r:var_log_t:s0",
    );
    put(
        &root,
        "/sys/fs/selinux/booleans/virt_qemu_ga_run_unconfined",
        "0 0",
        0o644,
    );
    let out = run(&["check", "--root", &r]);
    assert_has(
        &out.stdout,
        "problem: state dir /run/fsfreeze-hook is labelled unconfined_u:object_r:var_run_t:s0, not virt_qemu_ga_var_run_t: qemu-ga's SELinux domain may not write it, and every freeze would fail. Fix: `restorecon -Rv /run/fsfreeze-hook`",
    );
    assert_has(
        &out.stdout,
        "problem: log /var/log/qemu-ga/fsfreeze-hook.log is labelled system_u:object_r:var_log_t:s0, not virt_qemu_ga_log_t",
    );
    assert_has(
        &out.stdout,
        "problem: virt_qemu_ga_run_unconfined is off: hooks run confined in qemu-ga's own domain, where a database client is denied its server. Fix: `setsebool -P virt_qemu_ga_run_unconfined on`",
    );
    assert_eq!(
        out.stdout.lines().last(),
        Some("5 problem(s)"),
        "{}",
        out.stdout
    );
    label(&root.join("etc/qemu-ga/fsfreeze-hook"), good);
    label(
        &root.join("run/fsfreeze-hook"),
        "system_u:object_r:virt_qemu_ga_var_run_t:s0",
    );
    label(
        &root.join("var/log/qemu-ga/fsfreeze-hook.log"),
        "system_u:object_r:virt_qemu_ga_log_t:s0",
    );
    put(
        &root,
        "/sys/fs/selinux/booleans/virt_qemu_ga_run_unconfined",
        "1 1",
        0o644,
    );
    let out = run(&["check", "--root", &r]);
    assert_has(
        &out.stdout,
        "ok: state dir /run/fsfreeze-hook is labelled system_u:object_r:virt_qemu_ga_var_run_t:s0",
    );
    assert_has(
        &out.stdout,
        "ok: log /var/log/qemu-ga/fsfreeze-hook.log is labelled system_u:object_r:virt_qemu_ga_log_t:s0",
    );
    assert_has(
        &out.stdout,
        "ok: virt_qemu_ga_run_unconfined is on: hooks run unconfined",
    );
    assert_has(
        &out.stdout,
        &format!("ok: hook /etc/qemu-ga/fsfreeze-hook is labelled {good}"),
    );
    assert_eq!(
        out.stdout.lines().last(),
        Some("1 problem(s)"),
        "{}",
        out.stdout
    );

    // Permissive: said, not a problem. A log outside /var/log/qemu-ga is
    // a problem only when enforcing.
    put(&root, "/sys/fs/selinux/enforce", "0", 0o644);
    let out = run(&["check", "--root", &r]);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_has(&out.stdout, "note: SELinux is permissive");
    assert_has(
        &out.stdout,
        "20-moved is labelled unconfined_u:object_r:user_home_t:s0, not virt_qemu_ga_unconfined_exec_t: qemu-ga's SELinux domain would be denied it when enforcing",
    );
    put(&root, "/sys/fs/selinux/enforce", "1", 0o644);
    label(&root.join("etc/qemu-ga/fsfreeze-hook.d/20-moved"), good);
    put(
        &root,
        "/etc/qemu-ga/fsfreeze-hook.conf",
        "log_file = \"/var/log/fsfreeze.log\"\n",
        0o644,
    );
    let out = run(&["check", "--root", &r]);
    assert_has(
        &out.stdout,
        "problem: log_file /var/log/fsfreeze.log is outside /var/log/qemu-ga",
    );
    // No SELinux (no enforce file): not a word about it.
    fs::remove_file(root.join("sys/fs/selinux/enforce")).unwrap();
    let out = run(&["check", "--root", &r]);
    assert!(!out.stdout.contains("SELinux"), "{}", out.stdout);
}

/// `BIN args` with the config a run reads (`FSFREEZE_HOOK_CONFIG`) at
/// `config`.
fn run_with_config(config: &Path, args: &[&str]) -> Out {
    out_of(
        Command::new(BIN)
            .args(args)
            .env("FSFREEZE_HOOK_CONFIG", config),
    )
}

#[test]
#[ignore = "needs root"]
fn disable_check_list_and_status_go_on_whatever_the_config_holds() {
    // A package's removal runs `disable`: a config broken (an unquoted
    // duration) or not trusted (group-writable) must not stop it, or qemu-ga
    // is left naming a hook the removal deletes. The config is both the one
    // the run reads and the one beside the root's hook.
    require_root("config_never_blocks_disable");
    for (name, text, mode) in [
        ("broken", "timeout = 30s\n", 0o644),
        ("untrusted", "timeout = \"30s\"\n", 0o664),
    ] {
        let (root, r) = enabled_debian();
        put(root.path(), "/etc/qemu/fsfreeze-hook.conf", text, mode);
        let config = root.path().join("etc/qemu/fsfreeze-hook.conf");

        // check says each problem, then judges the rest.
        let check = run_with_config(&config, &["check", "--root", &r]);
        assert_eq!(
            check.code,
            Some(1),
            "{name}: {}{}",
            check.stdout,
            check.stderr
        );
        if name == "broken" {
            assert_has(&check.stdout, "problem: ");
            assert_has(
                &check.stdout,
                "note: what follows is judged without the config",
            );
        }
        assert_has(
            &check.stdout,
            "/etc/qemu/fsfreeze-hook is this fsfreeze-hook",
        );
        // list and status: the problem, then what they show.
        for cmd in ["list", "status"] {
            let out = run_with_config(&config, &[cmd]);
            assert_eq!(
                out.code,
                Some(1),
                "{name} {cmd}: {}{}",
                out.stdout,
                out.stderr
            );
            let first = out.stdout.lines().next().unwrap_or_default();
            assert!(
                first.starts_with("problem: ") && first.contains("Fix: "),
                "{name} {cmd}: {}",
                out.stdout
            );
            assert!(
                out.stdout.lines().count() > 1,
                "{name} {cmd}: {}",
                out.stdout
            );
        }
        let list = run_with_config(&config, &["list"]);
        assert_has(&list.stdout, "hooks dir ");

        // disable undoes what enable recorded: the stock hook is back.
        let out = run_with_config(&config, &["disable", "--root", &r]);
        assert_eq!(out.code, Some(0), "{name}: {}{}", out.stdout, out.stderr);
        if name == "broken" {
            assert_has(
                &out.stdout,
                "ignored (disable undoes what `enable` recorded",
            );
        }
        assert_eq!(
            fs::read_to_string(root.path().join("etc/qemu/fsfreeze-hook")).unwrap(),
            STOCK,
            "{name}: {}",
            out.stdout
        );
        assert!(!root.path().join("etc/qemu/fsfreeze-hook.enabled").exists());
        assert!(
            !root.path().join("etc/qemu/qemu-ga.conf").exists(),
            "{name}"
        );
        // And enable again, the config as it is: its problem said first.
        let out = run_with_config(&config, &["enable", "--root", &r]);
        assert_eq!(out.code, Some(0), "{name}: {}{}", out.stdout, out.stderr);
        if name == "broken" {
            assert!(out.stdout.starts_with("problem: "), "{}", out.stdout);
        }
        assert_eq!(
            fs::read(root.path().join("etc/qemu/fsfreeze-hook")).unwrap(),
            fs::read(BIN).unwrap()
        );
    }
}

#[test]
#[ignore = "needs root"]
fn check_says_where_the_log_really_goes() {
    require_root("check_log_place");
    // Ubuntu's /var/log (root:syslog 0775): the log is written there.
    let (root, r) = enabled_debian();
    let var_log = root.path().join("var/log");
    nix::unistd::chown(&var_log, None, Some(nix::unistd::Gid::from_raw(4))).unwrap();
    fs::set_permissions(&var_log, fs::Permissions::from_mode(0o775)).unwrap();
    let out = run(&["check", "--root", &r]);
    assert_has(&out.stdout, "ok: log ");
    assert!(!out.stdout.contains("is not written"), "{}", out.stdout);
    // Writable by a user's group: not written, lines to syslog, and why.
    nix::unistd::chown(&var_log, None, Some(nix::unistd::Gid::from_raw(65534))).unwrap();
    let out = run(&["check", "--root", &r]);
    assert_has(&out.stdout, "is not written: its directory is not safe: ");
    assert_has(
        &out.stdout,
        "the runner's lines go to syslog. Fix: take write access to ",
    );
    // RHEL without its log directory: said, not "writable".
    let root = tempfile::tempdir().unwrap();
    let r = at(root.path());
    rhel(root.path());
    assert_eq!(run(&["enable", "--root", &r]).code, Some(0));
    fs::remove_dir(root.path().join("var/log/qemu-ga")).unwrap();
    let out = run(&["check", "--root", &r]);
    assert_has(
        &out.stdout,
        "/var/log/qemu-ga/fsfreeze-hook.log is not written: its directory ",
    );
    assert_has(
        &out.stdout,
        "does not exist: the runner's lines go to syslog",
    );
}

#[test]
#[ignore = "needs root"]
fn a_process_of_another_user_named_qemu_ga_is_not_the_agent() {
    // Without systemd and a pidfile, check looks for the agent among the
    // processes: by the program it runs and its owner, never by a name any
    // user may give a process of theirs.
    require_root("qemu_ga_by_exe");
    assert!(
        !Path::new("/run/systemd/system").exists(),
        "this test asks check about a machine without systemd"
    );
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("qemu-ga");
    fs::copy("/bin/sleep", &fake).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let mut imposter = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&fake)
        .arg("60")
        .spawn()
        .unwrap();
    assert!(crate::common::eventually(
        std::time::Duration::from_secs(5),
        || fs::read_to_string(format!("/proc/{}/comm", imposter.id()))
            .is_ok_and(|c| c.trim() == "qemu-ga")
    ));
    let out = run(&["check"]);
    let _ = imposter.kill();
    let _ = imposter.wait();
    assert!(
        !out.stdout.contains("ok: qemu-ga is running"),
        "{}",
        out.stdout
    );
}

#[test]
#[ignore = "needs root"]
fn check_names_the_directory_to_fix_when_the_hooks_dir_is_not_trusted() {
    // A group-writable hooks dir: what to fix is the directory, not each
    // hook in it.
    require_root("check_dir_fix");
    let (root, r) = enabled_debian();
    put(
        root.path(),
        "/etc/qemu/fsfreeze-hook.d/10-a",
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    let dir = root.path().join("etc/qemu/fsfreeze-hook.d");
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o775)).unwrap();
    let out = run(&["check", "--root", &r]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("problem: ") && l.contains("10-a"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let fix = line.split("Fix: ").nth(1).unwrap_or_default();
    assert!(
        fix.starts_with(&format!("chown root: {0}; chmod go-w {0}", dir.display())),
        "{line}"
    );
}

#[test]
#[ignore = "needs root"]
fn enable_in_a_chroot_without_proc_run_by_its_name() {
    // How images are built: `chroot ROOT fsfreeze-hook enable`, no /proc
    // mounted, the binary found on PATH.
    require_root("enable_in_chroot");
    let root = tempfile::tempdir().unwrap();
    debian(root.path());
    let bin = root.path().join("usr/sbin/fsfreeze-hook");
    fs::copy(BIN, &bin).unwrap();
    assert!(!root.path().join("proc/self").exists());
    let out = out_of(
        Command::new("chroot")
            .arg(root.path())
            .args(["fsfreeze-hook", "enable"])
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
    );
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("install this binary as /etc/qemu/fsfreeze-hook"),
        "{}",
        out.stdout
    );
    assert_eq!(
        fs::read(root.path().join("etc/qemu/fsfreeze-hook")).unwrap(),
        fs::read(BIN).unwrap()
    );
}
