//! The packages: the .deb built by packaging/build-deb, installed into a
//! scratch root with `dpkg --root`; the .rpm built by packaging/build-rpm,
//! checked with `rpm -qp` and installed into a RHEL 9 style root with
//! `rpm --root`, where `check` and `enable --dry-run` then run.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::common::{BIN, require_root};

/// Runs `packaging/SCRIPT` on the test binary into `<work>/out`; the
/// package's path.
fn build(script: &str, work: &Path) -> String {
    build_of(script, Path::new(BIN), &work.join("out"))
}

/// Runs `packaging/SCRIPT` on `binary` into `out`; the package's path.
/// The pages of the manual (docs/*.md), by name.
fn manual_pages() -> Vec<String> {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    let pages: Vec<String> = fs::read_dir(docs)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md"))
        .collect();
    assert!(pages.len() >= 10, "{pages:?}");
    pages
}

pub(crate) fn build_of(script: &str, binary: &Path, out: &Path) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("packaging")
        .join(script);
    let built = Command::new(&path)
        .arg(binary)
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("packaging/{script}: {e}"));
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    String::from_utf8_lossy(&built.stdout).trim().to_string()
}

#[test]
#[ignore = "needs root"]
fn deb_installs_binary_man_page_examples_and_leaves_the_stock_hook_alone() {
    require_root("deb_package");
    let work = tempfile::tempdir().unwrap();
    let deb = build("build-deb", work.path());
    assert!(
        deb.ends_with("_amd64.deb") || deb.ends_with(".deb"),
        "{deb}"
    );

    // A scratch root with dpkg's database and qemu-guest-agent's stock hook.
    let root = work.path().join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc/qemu"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let stock = "#!/bin/sh\n# stock hook\nexit 0\n";
    fs::write(root.join("etc/qemu/fsfreeze-hook"), stock).unwrap();
    let install = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--log=/dev/null", "--force-script-chrootless", "-i", &deb])
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );

    let sbin = root.join("usr/sbin/fsfreeze-hook");
    assert_eq!(fs::read(&sbin).unwrap(), fs::read(BIN).unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&sbin).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    for f in [
        "usr/share/man/man8/fsfreeze-hook.8.gz",
        "usr/share/doc/fsfreeze-hook/examples/10-log-phase",
        "usr/share/doc/fsfreeze-hook/README.md.gz",
        "usr/share/bash-completion/completions/fsfreeze-hook",
        "usr/share/zsh/vendor-completions/_fsfreeze-hook",
        "usr/share/fish/vendor_completions.d/fsfreeze-hook.fish",
        "usr/share/fsfreeze-hook/fsfreeze-hook.rules.yml",
    ] {
        assert!(root.join(f).is_file(), "{f} missing");
    }
    // The manual, every page of docs/, where --help and the man page say.
    for page in manual_pages() {
        let f = format!("usr/share/doc/fsfreeze-hook/docs/{page}.gz");
        assert!(root.join(&f).is_file(), "{f} missing");
    }
    assert_eq!(
        fs::read_to_string(root.join("etc/qemu/fsfreeze-hook")).unwrap(),
        stock,
        "the stock hook is untouched"
    );
    let listed = Command::new("dpkg-deb")
        .args(["-c", &deb])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listed.stdout);
    let under_etc: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|p| p.starts_with("./etc/") && !p.ends_with('/'))
        .collect();
    assert_eq!(
        under_etc,
        ["./etc/logrotate.d/fsfreeze-hook"],
        "nothing of qemu-ga's under /etc: {listing}"
    );
    let conffiles = Command::new("dpkg-deb")
        .args(["-I", &deb, "conffiles"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&conffiles.stdout),
        "/etc/logrotate.d/fsfreeze-hook\n",
        "the logrotate rule is a conffile"
    );
    logrotate_rotates_the_default_logs(&root);
    lintian_finds_no_error(work.path());
    // The man page in the package is the checked-in one.
    let gz = Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man8/fsfreeze-hook.8.gz"))
        .output()
        .unwrap();
    let page = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/fsfreeze-hook.8")).unwrap();
    assert_eq!(gz.stdout, page);
}

/// Debian's lintian on the .deb of a stripped copy of the binary (the
/// release profile strips; the test binary is a debug build): no error.
fn lintian_finds_no_error(work: &Path) {
    let stripped = work.join("stripped");
    let strip = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(BIN)
        .status()
        .expect("strip (binutils)");
    assert!(strip.success());
    lintian_says_no_error(&build_from(&stripped, work));
}

/// `lintian` finds no error in the .deb `deb`, which holds the package's
/// changelog and machine-readable copyright.
fn lintian_says_no_error(deb: &str) {
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0"])
        .arg(deb)
        .output()
        .expect("lintian (the test command installs it)");
    let said = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = said.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(errors.is_empty(), "{said}");
    // The package's changelog and machine-readable copyright are there.
    let contents = Command::new("dpkg-deb").args(["-c", deb]).output().unwrap();
    let listing = String::from_utf8_lossy(&contents.stdout);
    for f in ["changelog.gz", "copyright"] {
        assert!(
            listing.contains(&format!("./usr/share/doc/fsfreeze-hook/{f}")),
            "{listing}"
        );
    }
}

/// The real logrotate, with the rule the package installed in `root`, on
/// `root`'s /var/log (bound over the machine's in a mount namespace of its
/// own), as Debian and the RHEL family have it (root:root 0755) and as
/// Ubuntu has it (root:syslog 0775: logrotate refuses such a directory
/// without a `su` directive): both default logs are rotated, and a new empty
/// one is made 0600.
fn logrotate_rotates_the_default_logs(root: &Path) {
    for (mode, gid) in [(0o755, 0), (0o775, 4)] {
        logrotate_rotates_the_default_logs_in(root, mode, gid);
    }
}

fn logrotate_rotates_the_default_logs_in(root: &Path, mode: u32, gid: u32) {
    use std::os::unix::fs::PermissionsExt;
    let logs = root.join("var/log");
    fs::create_dir_all(logs.join("qemu-ga")).unwrap();
    for d in [&logs, &logs.join("qemu-ga")] {
        fs::set_permissions(d, fs::Permissions::from_mode(mode)).unwrap();
    }
    nix::unistd::chown(&logs, None, Some(nix::unistd::Gid::from_raw(gid))).unwrap();
    for log in ["qga-fsfreeze-hook.log.1", "qemu-ga/fsfreeze-hook.log.1"] {
        let _ = fs::remove_file(logs.join(log));
    }
    let _ = fs::remove_file(root.join("logrotate.state"));
    for log in ["qga-fsfreeze-hook.log", "qemu-ga/fsfreeze-hook.log"] {
        fs::write(logs.join(log), "a line\n").unwrap();
    }
    let rule = root.join("etc/logrotate.d/fsfreeze-hook");
    assert!(rule.is_file(), "the package installs its logrotate rule");
    let state = root.join("logrotate.state");
    let script = format!(
        "set -e\nmount --bind '{logs}' /var/log\nlogrotate -f -s '{state}' '{rule}'",
        logs = logs.display(),
        state = state.display(),
        rule = rule.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("unshare and logrotate (the test command installs them)");
    assert!(
        out.status.success(),
        "/var/log {mode:o} group {gid}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for log in ["qga-fsfreeze-hook.log", "qemu-ga/fsfreeze-hook.log"] {
        let rotated = logs.join(format!("{log}.1"));
        assert_eq!(fs::read_to_string(&rotated).unwrap(), "a line\n", "{log}");
        let fresh = fs::metadata(logs.join(log)).unwrap();
        assert_eq!(
            (fresh.len(), fresh.permissions().mode() & 0o777),
            (0, 0o600),
            "{log}"
        );
    }
}

/// packaging/build-deb of `binary`; the package's path.
/// The least policy `secilc` compiles a module against: what every policy
/// must declare, and the types the module names, as RHEL's policy declares
/// them (virt_supplementary.te).
const STUB_POLICY: &str = "\
(class file (read))
(classorder (file))
(sid kernel)
(sidorder (kernel))
(user system_u)
(role system_r)
(role object_r)
(type kernel_t)
(type virt_qemu_ga_var_run_t)
(type virt_qemu_ga_unconfined_exec_t)
(category c0)
(categoryorder (c0))
(sensitivity s0)
(sensitivityorder (s0))
(sensitivitycategory s0 (c0))
(allow kernel_t self (file (read)))
(roletype system_r kernel_t)
(roletype object_r virt_qemu_ga_var_run_t)
(roletype object_r virt_qemu_ga_unconfined_exec_t)
(userrole system_u system_r)
(userrole system_u object_r)
(userlevel system_u (s0))
(userrange system_u ((s0) (s0 (c0))))
(sidcontext kernel (system_u system_r kernel_t ((s0) (s0))))
";

/// The package's SELinux module, compiled by Debian's `secilc` with the
/// stub policy: the file contexts it yields give the state dir (and what is
/// in it) qemu-ga's runtime type. A type the policy lacks would not compile.
fn selinux_module_labels_the_state_dir_and_the_hook(root: &Path) {
    let work = tempfile::tempdir().unwrap();
    let stub = work.path().join("stub.cil");
    fs::write(&stub, STUB_POLICY).unwrap();
    let module = root.join("usr/share/selinux/packages/fsfreeze-hook.cil");
    let contexts = work.path().join("file_contexts");
    let compile = |module: &Path| {
        Command::new("secilc")
            .args(["-M", "true", "-o"])
            .arg(work.path().join("policy"))
            .arg("-f")
            .arg(&contexts)
            .arg(&stub)
            .arg(module)
            .output()
            .expect("secilc (Debian's secilc package)")
    };
    let out = compile(&module);
    assert!(out.status.success(), "{out:?}");
    // The state dir as qemu-ga's domain writes it; the hook as its scripts
    // are labelled, so that the runner shares their domain.
    let mut said: Vec<String> = fs::read_to_string(&contexts)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    said.sort();
    assert_eq!(
        said,
        [
            "/etc/qemu-ga/fsfreeze-hook\t--\tsystem_u:object_r:virt_qemu_ga_unconfined_exec_t:s0",
            "/run/fsfreeze-hook(/.*)?\tsystem_u:object_r:virt_qemu_ga_var_run_t:s0"
        ]
    );
    // The stub is a real check: a module naming a type it lacks fails.
    let typo = work.path().join("typo.cil");
    fs::write(
        &typo,
        fs::read_to_string(&module)
            .unwrap()
            .replace("virt_qemu_ga_var_run_t", "virt_qemu_ga_run_t"),
    )
    .unwrap();
    assert!(!compile(&typo).status.success());
}

fn build_from(binary: &Path, work: &Path) -> String {
    build_of("build-deb", binary, &work.join("from-out"))
}

/// An empty root for `dpkg --root` under `work`: dpkg's database, nothing
/// installed.
fn dpkg_root(work: &Path) -> std::path::PathBuf {
    let root = work.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    root
}

/// `dpkg` on the scratch root `root` (maintainer scripts run outside it,
/// with DPKG_ROOT set, as dpkg's --force-script-chrootless does).
fn dpkg(root: &Path, args: &[&str]) -> String {
    succeeds(
        Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args(["--log=/dev/null", "--force-script-chrootless"])
            .args(args),
    )
}

/// Runs `cmd`, which must succeed; what it printed on both streams.
pub(crate) fn succeeds(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {said}");
    said
}

#[test]
#[ignore = "needs root"]
fn an_image_without_usr_share_doc_gets_the_examples_from_the_binary() {
    // dpkg told to leave /usr/share/doc and /usr/share/man out, as minimal
    // and container-style images are: the examples come from the binary,
    // byte for byte, and its help says where to look.
    require_root("deb_no_doc");
    let work = tempfile::tempdir().unwrap();
    let deb = build("build-deb", work.path());
    let root = dpkg_root(work.path());
    dpkg(
        &root,
        &[
            "--path-exclude=/usr/share/doc/*",
            "--path-exclude=/usr/share/man/*",
            "-i",
            &deb,
        ],
    );
    assert!(!root.join("usr/share/doc/fsfreeze-hook/examples").exists());
    let installed = root.join("usr/sbin/fsfreeze-hook");
    let listed = succeeds(Command::new(&installed).arg("example"));
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks.d-examples");
    for entry in fs::read_dir(&examples).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(listed.contains(&name), "{listed}");
        let out = Command::new(&installed)
            .args(["example", &name])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(
            out.stdout,
            fs::read(examples.join(&name)).unwrap(),
            "{name}"
        );
    }
    let wrong = Command::new(&installed)
        .args(["example", "99-nothing"])
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    let help = succeeds(Command::new(&installed).arg("--help"));
    assert!(help.contains("fsfreeze-hook example NAME"), "{help}");
}

#[test]
#[ignore = "needs root"]
fn removing_the_deb_first_disables_and_an_upgrade_does_not() {
    use crate::admin::{at, debian};
    require_root("deb_remove_disables");
    let work = tempfile::tempdir().unwrap();
    let deb = build("build-deb", work.path());
    let root = dpkg_root(work.path());
    debian(&root);
    let stock = fs::read(root.join("etc/qemu/fsfreeze-hook")).unwrap();
    dpkg(&root, &["-i", &deb]);
    let installed = root.join("usr/sbin/fsfreeze-hook");
    let enable = Command::new(&installed)
        .args(["enable", "--root", &at(&root)])
        .output()
        .unwrap();
    assert!(enable.status.success(), "{enable:?}");
    let ours = fs::read(&installed).unwrap();
    assert_eq!(fs::read(root.join("etc/qemu/fsfreeze-hook")).unwrap(), ours);
    // An upgrade (the same package again) leaves the set-up alone.
    dpkg(&root, &["-i", &deb]);
    assert_eq!(fs::read(root.join("etc/qemu/fsfreeze-hook")).unwrap(), ours);
    assert!(root.join("etc/qemu/fsfreeze-hook.enabled").exists());
    // Where dpkg does not own the hook, it is a copy: an upgrade to another
    // build replaces it (postinst).
    let newer = newer_build(work.path());
    dpkg(&root, &["-i", &build_from(&newer, work.path())]);
    assert_eq!(
        fs::read(root.join("etc/qemu/fsfreeze-hook")).unwrap(),
        fs::read(&newer).unwrap(),
        "the hook runs the upgraded build"
    );
    // A removal that cannot undo what enable did (its record unreadable)
    // fails while the binary is there, saying the command that finishes it.
    let record = root.join("etc/qemu/fsfreeze-hook.enabled");
    let kept = fs::read(&record).unwrap();
    fs::write(&record, "not a record\n").unwrap();
    let refused = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--log=/dev/null",
            "--force-script-chrootless",
            "-r",
            "fsfreeze-hook",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("run: fsfreeze-hook disable"), "{said}");
    assert!(installed.exists(), "{said}");
    fs::write(&record, kept).unwrap();
    // Removed with a config that is broken and not trusted: the stock hook
    // is back all the same, qemu-ga.conf as it was (none).
    crate::admin::put(
        &root,
        "/etc/qemu/fsfreeze-hook.conf",
        "timeout = 30s\n",
        0o664,
    );
    let said = dpkg(&root, &["-r", "fsfreeze-hook"]);
    assert_eq!(
        fs::read(root.join("etc/qemu/fsfreeze-hook")).unwrap(),
        stock,
        "{said}"
    );
    assert!(!root.join("etc/qemu/qemu-ga.conf").exists(), "{said}");
    assert!(!root.join("etc/qemu/fsfreeze-hook.stock").exists());
    assert!(!root.join("etc/qemu/fsfreeze-hook.enabled").exists());
    assert!(!installed.exists());
    // Purged: nothing of ours left (the logrotate rule was a conffile).
    dpkg(&root, &["-P", "fsfreeze-hook"]);
    assert!(!root.join("etc/logrotate.d/fsfreeze-hook").exists());
}

/// Another build of the binary (the test one with a few bytes more): what
/// an upgrade of the package brings.
fn newer_build(work: &Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let newer = work.join("newer");
    let mut bytes = fs::read(BIN).unwrap();
    bytes.extend_from_slice(b"\nanother build\n");
    fs::write(&newer, &bytes).unwrap();
    fs::set_permissions(&newer, fs::Permissions::from_mode(0o755)).unwrap();
    newer
}

/// A stand-in for Debian's qemu-guest-agent package at `version`: its
/// stock hook `/etc/qemu/fsfreeze-hook` (a conffile, saying `stock`), the
/// agent and its unit.
fn agent_deb(work: &Path, version: &str, stock: &str) -> String {
    let stage = work.join(format!("qga-{version}"));
    let put = |path: &str, text: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        let p = stage.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    };
    put("etc/qemu/fsfreeze-hook", stock, 0o755);
    put("usr/sbin/qemu-ga", "ELF", 0o755);
    put(
        "lib/systemd/system/qemu-guest-agent.service",
        "[Service]\nExecStart=-/usr/sbin/qemu-ga\n",
        0o644,
    );
    put(
        "DEBIAN/control",
        &format!(
            "Package: qemu-guest-agent\nVersion: {version}\nArchitecture: all\nMaintainer: test <test@example.org>\nDescription: stand-in\n"
        ),
        0o644,
    );
    put("DEBIAN/conffiles", "/etc/qemu/fsfreeze-hook\n", 0o644);
    let deb = work.join(format!("qga-{version}.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&stage)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    deb.display().to_string()
}

#[test]
#[ignore = "needs root"]
fn upgrades_of_either_package_keep_the_hook_ours_and_current_on_debian() {
    use crate::admin::at;
    require_root("deb_divert");
    let work = tempfile::tempdir().unwrap();
    let root = dpkg_root(work.path());
    let (stock1, stock2) = ("#!/bin/sh\n# stock 1\n", "#!/bin/sh\n# stock 2\n");
    dpkg(&root, &["-i", &agent_deb(work.path(), "7.2", stock1)]);
    dpkg(&root, &["-i", &build("build-deb", work.path())]);
    let hook = root.join("etc/qemu/fsfreeze-hook");
    let stock = root.join("etc/qemu/fsfreeze-hook.stock");
    let enable = Command::new(root.join("usr/sbin/fsfreeze-hook"))
        .args(["enable", "--root", &at(&root)])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&enable.stdout);
    assert!(enable.status.success(), "{said}");
    assert!(
        said.contains("divert /etc/qemu/fsfreeze-hook to /etc/qemu/fsfreeze-hook.stock"),
        "{said}"
    );
    assert_eq!(
        fs::read_link(&hook).unwrap(),
        Path::new("../../usr/sbin/fsfreeze-hook")
    );
    assert_eq!(fs::read_to_string(&stock).unwrap(), stock1);
    // qemu-guest-agent upgraded: no conffile prompt, the kept stock script
    // is the new one, the hook is still ours.
    let said = dpkg(&root, &["-i", &agent_deb(work.path(), "7.3", stock2)]);
    assert!(!said.contains("Configuration file"), "{said}");
    assert_eq!(fs::read_to_string(&stock).unwrap(), stock2);
    assert!(
        fs::symlink_metadata(&hook)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // Ours upgraded to another build: qemu-ga runs it from the next freeze.
    let newer = newer_build(work.path());
    let bytes = fs::read(&newer).unwrap();
    dpkg(&root, &["-i", &build_from(&newer, work.path())]);
    assert_eq!(
        fs::read(&hook).unwrap(),
        bytes,
        "the hook runs the upgraded build"
    );
    // Removed: the diversion is undone, the stock script is the hook again.
    dpkg(&root, &["-r", "fsfreeze-hook"]);
    assert!(
        !fs::symlink_metadata(&hook)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(fs::read_to_string(&hook).unwrap(), stock2);
    assert!(!stock.exists());
    let diversions = Command::new("dpkg-divert")
        .arg("--root")
        .arg(&root)
        .arg("--list")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&diversions.stdout).trim(), "");
    // And qemu-guest-agent reinstalled: no prompt.
    let said = dpkg(&root, &["-i", &agent_deb(work.path(), "7.3", stock2)]);
    assert!(!said.contains("Configuration file"), "{said}");
}

#[test]
#[ignore = "needs root"]
fn a_copy_enabled_by_an_earlier_build_becomes_the_diversion_at_the_next_upgrade() {
    // Debian's real qemu-guest-agent 7.2. A build installed by hand (not
    // dpkg's) gets a copy, as earlier builds of the package made; the
    // package's next upgrade turns that copy into the diversion, so that the
    // agent's upgrade to 10.0 meets no changed conffile (no prompt, no
    // .dpkg-new), the real agent freezes through our hook, and the removal
    // leaves the agent as shipped.
    use crate::admin::at;
    let _exclusive = crate::common::freezing_test("real_agent_copy_to_divert");
    let work = tempfile::tempdir().unwrap();
    let root = dpkg_root(work.path());
    let (r, w) = (root.display(), work.path().display());
    let (q7, q10) = (real_agent_deb("qemu-ga-7"), real_agent_deb("qemu-ga-10"));
    let ours = build("build-deb", work.path());
    let newer = newer_build(work.path());
    let newer_deb = build_of("build-deb", &newer, &work.path().join("newer-out"));
    let hook = root.join("etc/qemu/fsfreeze-hook");
    let stock = root.join("etc/qemu/fsfreeze-hook.stock");
    let binary = root.join("usr/sbin/fsfreeze-hook");
    let is_link = |p: &Path| fs::symlink_metadata(p).unwrap().file_type().is_symlink();
    dpkg_steps(
        &root,
        &format!("dpkg -i '{q7}'\ncp '{r}/etc/qemu/fsfreeze-hook' '{w}/stock-7'"),
    );
    fs::copy(BIN, &binary).unwrap();
    let enable = succeeds(Command::new(&binary).args(["enable", "--root", &at(&root)]));
    assert!(
        enable.contains("install this binary as /etc/qemu/fsfreeze-hook"),
        "a hand-installed binary gets a copy: {enable}"
    );
    assert!(!is_link(&hook));
    let stock7 = fs::read(work.path().join("stock-7")).unwrap();
    assert_eq!(fs::read(&stock).unwrap(), stock7);
    // The package installed over it: a first install changes nothing; its
    // upgrade makes the copy the diversion.
    let said = dpkg_steps(
        &root,
        &format!("dpkg -i '{ours}'\necho '== upgrade of fsfreeze-hook'\ndpkg -i '{newer_deb}'"),
    );
    assert_eq!(
        fs::read_link(&hook).unwrap(),
        Path::new("../../usr/sbin/fsfreeze-hook"),
        "{said}"
    );
    assert_eq!(fs::read(&hook).unwrap(), fs::read(&newer).unwrap());
    assert_eq!(fs::read(&stock).unwrap(), stock7, "{said}");
    let diversions = || {
        let out = Command::new("dpkg-divert")
            .arg("--root")
            .arg(&root)
            .arg("--list")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert!(
        diversions().contains("/etc/qemu/fsfreeze-hook to /etc/qemu/fsfreeze-hook.stock"),
        "{}",
        diversions()
    );
    // qemu-guest-agent upgraded to 10.0: no prompt, the kept script is
    // 10.0's, and its agent freezes through our hook.
    let said = dpkg_steps(&root, &format!("dpkg -i '{q10}'"));
    assert!(
        !root.join("etc/qemu/fsfreeze-hook.dpkg-new").exists(),
        "{said}"
    );
    assert_ne!(
        fs::read(&stock).unwrap(),
        stock7,
        "10.0's stock script: {said}"
    );
    assert!(is_link(&hook));
    let ours_log = work.path().join("ours.log");
    crate::admin::put(
        &root,
        "/etc/qemu/fsfreeze-hook.conf",
        &format!(
            "log_file = \"{}\"\nstate_dir = \"{}\"\n",
            ours_log.display(),
            work.path().join("state").display()
        ),
        0o644,
    );
    let (var_log, trace) = (work.path().join("var-log"), work.path().join("trace"));
    freeze_by_the_installed_agent(&root, &var_log, &trace);
    let log = fs::read_to_string(&ours_log).unwrap();
    assert!(log.contains(": freeze finished in"), "{log}");
    fs::remove_file(root.join("etc/qemu/fsfreeze-hook.conf")).unwrap();
    // Removed: the agent's stock script as shipped, no diversion left.
    dpkg_steps(&root, "dpkg -r fsfreeze-hook");
    assert!(!is_link(&hook));
    assert!(!stock.exists());
    assert_eq!(diversions(), "");
    let verify = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["-V", "qemu-guest-agent"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&verify.stdout), "", "dpkg -V");
}

/// Debian's own qemu-guest-agent package of `generation` ("qemu-ga-7",
/// "qemu-ga-10"), as tests/fetch-qemu downloaded it.
fn real_agent_deb(generation: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-qemu/debs")
        .join(generation);
    let found = fs::read_dir(&dir)
        .ok()
        .and_then(|mut d| d.find_map(|e| Some(e.ok()?.path())))
        .filter(|p| p.extension().is_some_and(|x| x == "deb"));
    found
        .unwrap_or_else(|| {
            panic!(
                "{}: no .deb (the test command runs tests/fetch-qemu)",
                dir.display()
            )
        })
        .display()
        .to_string()
}

/// Runs `steps` (shell) in a mount namespace of its own whose systemd state
/// is a tmpfs, `dpkg` there acting on `root` (the packages' maintainer
/// scripts see DPKG_ROOT and leave the machine's init system alone; the
/// namespace hides the machine's systemd state from them all the same).
/// What it printed.
fn dpkg_steps(root: &Path, steps: &str) -> String {
    let script = format!(
        "set -e\n\
         for d in /etc/systemd /var/lib/systemd; do [ -d $d ] && mount -t tmpfs tmpfs $d; done\n\
         dpkg() {{ command dpkg --root='{r}' --log=/dev/null --force-script-chrootless --force-depends \"$@\" </dev/null 2>&1; }}\n\
         {steps}",
        r = root.display(),
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    assert!(
        !said.contains("Configuration file"),
        "a conffile prompt: {said}"
    );
    said
}

/// One freeze and thaw of a loop-mounted filesystem by the agent installed
/// in `root` (its own binary, its hook `/etc/qemu/fsfreeze-hook` there), in
/// a mount namespace whose /var/log is `var_log` (the stock script logs to
/// /var/log/qga-fsfreeze-hook.log). Each phase's hook in the hooks dir
/// beside it records `$0 $1` in `trace`.
fn freeze_by_the_installed_agent(root: &Path, var_log: &Path, trace: &Path) {
    freeze_by_the_agent_in(root, DEBIAN_AGENT, var_log, trace);
}

/// Where an agent package puts qemu-ga and its hook: Debian's, RHEL's.
const DEBIAN_AGENT: (&str, &str) = ("usr/sbin/qemu-ga", "/etc/qemu/fsfreeze-hook");
const RHEL_AGENT: (&str, &str) = ("usr/bin/qemu-ga", "/etc/qemu-ga/fsfreeze-hook");

/// As [`freeze_by_the_installed_agent`], for an agent laid out as `agent`
/// (its binary, its hook) in `root`.
fn freeze_by_the_agent_in(root: &Path, agent: (&str, &str), var_log: &Path, trace: &Path) {
    use crate::loopfs::LoopFs;
    use crate::qemu_ga::{Agent, Install, TestAgent, freeze_list};
    let (binary, hook) = agent;
    let qga = TestAgent::probe(root.join(binary));
    let mut install = Install::new();
    install.hook = root.join(hook.trim_start_matches('/'));
    let fs = LoopFs::ext4(install.dir.path());
    for dir in ["", "qemu-ga"] {
        fs::create_dir_all(var_log.join(dir)).unwrap();
    }
    fs::write(var_log.join("qga-fsfreeze-hook.log"), "").unwrap();
    crate::admin::put(
        root,
        &format!("{hook}.d/10-mark"),
        &format!("#!/bin/sh\necho \"$0 $1\" >>'{}'\n", trace.display()),
        0o755,
    );
    let mut cmd = Command::new("unshare");
    cmd.args([
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        &format!(
            "mount --bind '{}' /var/log && exec \"$@\"",
            var_log.display()
        ),
        "sh",
    ])
    .arg(&qga.path);
    let mut agent = Agent::start_in(&qga, &install, cmd);
    assert_eq!(freeze_list(&mut agent, &fs.mnt), Ok(serde_json::json!(1)));
    assert!(fs.frozen());
    assert_eq!(
        agent.call("guest-fsfreeze-thaw", serde_json::json!({})),
        Ok(serde_json::json!(1))
    );
    assert!(!fs.frozen());
}

#[test]
#[ignore = "needs root"]
fn debians_own_qemu_guest_agent_upgraded_under_an_enabled_fsfreeze_hook() {
    // Debian 12's qemu-guest-agent 7.2, then bookworm-backports' 10.0, the
    // real packages, with ours installed, enabled, upgraded, removed and
    // purged between them, on a root of their own; between the steps the
    // agent installed there freezes a filesystem of the test's through the
    // hook installed there.
    use crate::admin::at;
    let _exclusive = crate::common::freezing_test("real_qemu_guest_agent");
    let work = tempfile::tempdir().unwrap();
    let root = dpkg_root(work.path());
    let ours = build("build-deb", work.path());
    let newer = newer_build(work.path());
    let newer_deb = build_of("build-deb", &newer, &work.path().join("newer-out"));
    let (r, w) = (root.display(), work.path().display());
    let (q7, q10) = (real_agent_deb("qemu-ga-7"), real_agent_deb("qemu-ga-10"));
    let _ = at(&root);
    let said = dpkg_steps(
        &root,
        &format!(
            "dpkg -i '{q7}'\n\
             cp '{r}/etc/qemu/fsfreeze-hook' '{w}/stock-7'\n\
             dpkg -i '{ours}'\n\
             '{r}/usr/sbin/fsfreeze-hook' enable --root '{r}'\n\
             echo '== upgrade of qemu-guest-agent'\n\
             dpkg -i '{q10}'\n\
             echo '== upgrade of fsfreeze-hook'\n\
             dpkg -i '{newer_deb}'"
        ),
    );
    assert!(
        said.contains("divert /etc/qemu/fsfreeze-hook to /etc/qemu/fsfreeze-hook.stock"),
        "{said}"
    );
    let hook = root.join("etc/qemu/fsfreeze-hook");
    assert_eq!(
        fs::read_link(&hook).unwrap(),
        Path::new("../../usr/sbin/fsfreeze-hook"),
        "the agent's upgrade kept the hook ours: {said}"
    );
    assert_eq!(
        fs::read(&hook).unwrap(),
        fs::read(&newer).unwrap(),
        "the hook is our upgraded build"
    );
    // The agent's next freeze runs it: our runner's log, in the test's dir.
    let ours_log = work.path().join("ours.log");
    crate::admin::put(
        &root,
        "/etc/qemu/fsfreeze-hook.conf",
        &format!(
            "log_file = \"{}\"\nstate_dir = \"{}\"\n",
            ours_log.display(),
            work.path().join("state").display()
        ),
        0o644,
    );
    let (var_log, trace) = (work.path().join("var-log"), work.path().join("trace"));
    freeze_by_the_installed_agent(&root, &var_log, &trace);
    let mark = root
        .join("etc/qemu/fsfreeze-hook.d/10-mark")
        .display()
        .to_string();
    assert_eq!(
        fs::read_to_string(&trace).unwrap(),
        format!("{mark} freeze\n{mark} thaw\n")
    );
    let log = fs::read_to_string(&ours_log).unwrap();
    assert!(
        log.contains(": freeze finished in") && log.contains(": thaw finished in"),
        "{log}"
    );
    // Removed with a config that is broken and not trusted (an unquoted
    // duration, group-writable): the removal undoes all the same, and says
    // what qemu-ga runs then: Debian's unit names no hook.
    crate::admin::put(
        &root,
        "/etc/qemu/fsfreeze-hook.conf",
        "timeout = 30s\n",
        0o664,
    );
    let said = dpkg_steps(
        &root,
        &format!(
            "echo '== removal of fsfreeze-hook'\n\
             dpkg -r fsfreeze-hook\n\
             echo '== reinstall of qemu-guest-agent'\n\
             dpkg -i '{q10}'"
        ),
    );
    assert!(
        said.contains("qemu-ga runs no hook after its restart, as before `enable`"),
        "{said}"
    );
    fs::remove_file(root.join("etc/qemu/fsfreeze-hook.conf")).unwrap();
    // After our removal the hook is 10.0's stock script, as if we had never
    // been there: dpkg verifies it unmodified.
    assert!(
        !fs::symlink_metadata(&hook)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_ne!(
        fs::read(&hook).unwrap(),
        fs::read(work.path().join("stock-7")).unwrap(),
        "not 10.0's script: {said}"
    );
    assert!(!root.join("etc/qemu/fsfreeze-hook.stock").exists());
    let verify = Command::new("dpkg")
        .arg(format!("--root={r}"))
        .args(["-V", "qemu-guest-agent"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&verify.stdout),
        "",
        "dpkg -V: the stock hook as shipped"
    );
    // The agent's next freeze runs the stock script: its own log says so.
    fs::remove_file(&trace).unwrap();
    freeze_by_the_installed_agent(&root, &var_log, &trace);
    assert_eq!(
        fs::read_to_string(&trace).unwrap(),
        format!("{mark} freeze\n{mark} thaw\n")
    );
    let stock_log = fs::read_to_string(var_log.join("qga-fsfreeze-hook.log")).unwrap();
    assert!(
        stock_log.contains(&format!("Executing {mark} freeze")),
        "{stock_log}"
    );

    // Purged: nothing of ours left, in the tree or in dpkg's records.
    let remains = dpkg_steps(
        &root,
        &format!(
            "dpkg -P fsfreeze-hook\n\
             dpkg-divert --root='{r}' --list\n\
             find '{r}' -name '*fsfreeze-hook*' ! -path '{r}/etc/qemu/fsfreeze-hook' ! -path '{r}/etc/qemu/fsfreeze-hook.d'"
        ),
    );
    let remains: Vec<&str> = remains
        .lines()
        .filter(|l| {
            !l.starts_with("(Reading database")
                && !l.starts_with("Purging")
                && !l.starts_with("Removing")
        })
        .collect();
    assert_eq!(remains, Vec::<&str>::new(), "left after the purge");
}

/// A RHEL 9 style root for rpm (`--root`), with a real (static) shell:
/// rpm runs scriptlets chrooted into it. The root, and its path as `--root`
/// takes it.
fn rpm_root(work: &Path) -> (std::path::PathBuf, String) {
    let root = work.join("root");
    fs::create_dir_all(&root).unwrap();
    crate::admin::rhel(&root);
    fs::copy("/bin/busybox", root.join("usr/bin/sh")).expect("busybox-static");
    let r = crate::admin::at(&root);
    (root, r)
}

/// rpm on the root `r`, as a test root needs it (no dependencies, no
/// signatures); what it said.
pub(crate) fn rpm_in(r: &str, args: &[&str]) -> String {
    succeeds(
        Command::new("rpm")
            .args(["--root", r, "--nodeps", "--nosignature"])
            .args(args),
    )
}

#[test]
#[ignore = "needs root"]
fn erasing_the_rpm_first_disables_and_an_upgrade_does_not() {
    require_root("rpm_erase_disables");
    let work = tempfile::tempdir().unwrap();
    let rpm = build("build-rpm", work.path());
    let (root, r) = rpm_root(work.path());
    let rpm_at = |args: &[&str]| rpm_in(&r, args);
    // SELinux enabled, its tools stand-ins that say how they were called.
    let called = root.join("scriptlets");
    for (tool, body) in [
        ("selinuxenabled", "exit 0"),
        ("semodule", "echo \"semodule $*\" >>/scriptlets"),
        ("restorecon", "echo \"restorecon $*\" >>/scriptlets"),
        (
            "systemd-tmpfiles",
            "echo \"systemd-tmpfiles $*\" >>/scriptlets",
        ),
    ] {
        crate::admin::put(
            &root,
            &format!("/usr/sbin/{tool}"),
            &format!("#!/usr/bin/sh\n{body}\n"),
            0o755,
        );
    }
    // The state dir an administrator's shell made before the package came.
    fs::create_dir(root.join("run/fsfreeze-hook")).unwrap();
    let calls = || {
        let said = fs::read_to_string(&called).unwrap_or_default();
        fs::remove_file(&called).ok();
        said
    };
    let stock = fs::read(root.join("etc/qemu-ga/fsfreeze-hook")).unwrap();
    rpm_at(&["-i", &rpm]);
    let module = "/usr/share/selinux/packages/fsfreeze-hook.cil";
    let relabel = format!(
        "semodule -X 200 -i {module}\n\
         systemd-tmpfiles --create /usr/lib/tmpfiles.d/fsfreeze-hook.conf\n\
         restorecon -R /run/fsfreeze-hook\n"
    );
    assert_eq!(calls(), relabel, "the install's %post");
    let installed = root.join("usr/sbin/fsfreeze-hook");
    succeeds(Command::new(&installed).args(["enable", "--root", &r]));
    let ours = fs::read(&installed).unwrap();
    assert_eq!(
        fs::read(root.join("etc/qemu-ga/fsfreeze-hook")).unwrap(),
        ours
    );
    // An upgrade (the same package again) leaves the set-up alone.
    rpm_at(&["-U", "--replacepkgs", &rpm]);
    assert_eq!(
        fs::read(root.join("etc/qemu-ga/fsfreeze-hook")).unwrap(),
        ours
    );
    // An upgrade to another build reaches the hook qemu-ga runs.
    let newer = newer_build(work.path());
    let newer_rpm = build_of("build-rpm", &newer, &work.path().join("newer-out"));
    calls();
    rpm_at(&["-U", "--replacepkgs", &newer_rpm]);
    assert_eq!(
        fs::read(root.join("etc/qemu-ga/fsfreeze-hook")).unwrap(),
        fs::read(&newer).unwrap(),
        "the hook runs the upgraded build"
    );
    assert_eq!(calls(), relabel, "an upgrade keeps the module, anew");
    // Erased with a config that is broken and not trusted: all the same.
    crate::admin::put(
        &root,
        "/etc/qemu-ga/fsfreeze-hook.conf",
        "timeout = 30s\n",
        0o664,
    );
    let said = rpm_at(&["-e", "fsfreeze-hook"]);
    assert_eq!(calls(), "semodule -X 200 -r fsfreeze-hook\n", "the erase");
    assert_eq!(
        fs::read(root.join("etc/qemu-ga/fsfreeze-hook")).unwrap(),
        stock,
        "{said}"
    );
    assert!(!installed.exists());
    // Where SELinux is disabled, no module is installed or removed.
    crate::admin::put(
        &root,
        "/usr/sbin/selinuxenabled",
        "#!/usr/bin/sh\nexit 1\n",
        0o755,
    );
    rpm_at(&["-i", &rpm]);
    rpm_at(&["-e", "fsfreeze-hook"]);
    let said = calls();
    assert!(!said.contains("semodule"), "{said}");
}

/// A stand-in for the RHEL family's qemu-guest-agent package, built as
/// RHEL 9's qemu-kvm spec builds it (tests/rhel/README.md): its unit and
/// sysconfig verbatim, `/etc/qemu-ga` a plain directory of the package (so
/// the stock hook in it is no `%config` file: rpm writes it at every
/// install), the sysconfig `%config(noreplace)`, `%postun` restarting the
/// agent; and a real qemu-ga as /usr/bin/qemu-ga: Debian's of `generation`
/// ("qemu-ga-7", "qemu-ga-10", as tests/fetch-qemu unpacked it), with that
/// package's stock script as the hook. Its version is `version`.
pub(crate) fn rhel_agent_rpm(work: &Path, generation: &str, version: &str) -> String {
    let unpacked = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-qemu")
        .join(generation);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rhel");
    let top = work.join(format!("qga-rpm-{version}"));
    fs::create_dir_all(&top).unwrap();
    let sample = top.join("fsfreeze-hook.d-sample");
    fs::write(&sample, "#!/bin/sh\n# a sample\n").unwrap();
    let udev = top.join("99-qemu-guest-agent.rules");
    fs::write(
        &udev,
        "SUBSYSTEM==\"virtio-ports\", ATTR{name}==\"org.qemu.guest_agent.0\", TAG+=\"systemd\"\n",
    )
    .unwrap();
    let qga = unpacked.join("usr/sbin/qemu-ga");
    let stock = unpacked.join("etc/qemu/fsfreeze-hook");
    assert!(
        qga.exists() && stock.exists(),
        "{} (the test command runs tests/fetch-qemu)",
        unpacked.display()
    );
    let spec = top.join("qga.spec");
    fs::write(
        &spec,
        format!(
            "Name: qemu-guest-agent\nVersion: {version}\nRelease: 1\n\
             Summary: QEMU guest agent (a stand-in built as RHEL 9 builds it)\n\
             License: GPL-2.0-or-later\nAutoReqProv: no\n\
             %global debug_package %{{nil}}\n%global __os_install_post %{{nil}}\n%global _build_id_links none\n\
             %description\nA stand-in.\n\
             %install\n\
             install -D -m 0644 '{unit}' %{{buildroot}}/usr/lib/systemd/system/qemu-guest-agent.service\n\
             install -D -m 0644 '{sysconfig}' %{{buildroot}}/etc/sysconfig/qemu-ga\n\
             mkdir -p %{{buildroot}}/etc/qemu-ga/fsfreeze-hook.d\n\
             install -p '{stock}' %{{buildroot}}/etc/qemu-ga/fsfreeze-hook\n\
             mkdir -p %{{buildroot}}/usr/share/qemu-kvm/qemu-ga/fsfreeze-hook.d/\n\
             install -p -m 0644 '{sample}' %{{buildroot}}/usr/share/qemu-kvm/qemu-ga/fsfreeze-hook.d/mysql-flush.sh.sample\n\
             mkdir -p -v %{{buildroot}}/var/log/qemu-ga/\n\
             install -D -p -m 0755 '{qga}' %{{buildroot}}/usr/bin/qemu-ga\n\
             install -D -m 0644 '{udev}' %{{buildroot}}/usr/lib/udev/rules.d/99-qemu-guest-agent.rules\n\
             %post\n\
             if [ $1 -eq 1 ]; then systemctl --no-reload preset qemu-guest-agent.service >/dev/null 2>&1 || :; fi\n\
             %preun\n\
             if [ $1 -eq 0 ]; then systemctl --no-reload disable --now qemu-guest-agent.service >/dev/null 2>&1 || :; fi\n\
             %postun\n\
             if [ $1 -ge 1 ]; then systemctl try-restart qemu-guest-agent.service >/dev/null 2>&1 || :; fi\n\
             %files\n\
             /usr/bin/qemu-ga\n\
             /usr/lib/systemd/system/qemu-guest-agent.service\n\
             /usr/lib/udev/rules.d/99-qemu-guest-agent.rules\n\
             %config(noreplace) /etc/sysconfig/qemu-ga\n\
             /etc/qemu-ga\n\
             /usr/share/qemu-kvm/qemu-ga\n\
             %dir /var/log/qemu-ga\n",
            unit = fixtures.join("qemu-guest-agent.service").display(),
            sysconfig = fixtures.join("qemu-ga.sysconfig").display(),
            stock = stock.display(),
            sample = sample.display(),
            qga = qga.display(),
            udev = udev.display(),
        ),
    )
    .unwrap();
    succeeds(
        Command::new("rpmbuild")
            .args(["-bb", "--quiet", "--target", "x86_64-linux", "--define"])
            .arg(format!("_topdir {}", top.join("top").display()))
            .arg("--define")
            .arg(format!("_rpmdir {}", top.join("out").display()))
            .arg(&spec),
    );
    let rpm = top.join(format!(
        "out/x86_64/qemu-guest-agent-{version}-1.x86_64.rpm"
    ));
    assert!(rpm.exists(), "{}", rpm.display());
    rpm.display().to_string()
}

/// A RHEL root for the faithful stand-in: no agent in it yet, a static
/// shell, and a `systemctl` that notes each call with what the hook was
/// then (`ours` or `stock`), in /systemctl.
pub(crate) fn rhel_root_for_packages(work: &Path) -> (std::path::PathBuf, String) {
    let root = work.join("root");
    for d in ["usr/bin", "usr/sbin", "var/log", "run", "etc"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    fs::copy("/bin/busybox", root.join("usr/bin/sh")).expect("busybox-static");
    // The agent's scriptlets send systemctl's output to /dev/null.
    fs::create_dir_all(root.join("dev")).unwrap();
    succeeds(
        Command::new("mknod")
            .arg(root.join("dev/null"))
            .args(["c", "1", "3"]),
    );
    fs::set_permissions(root.join("dev/null"), fs::Permissions::from_mode(0o666)).unwrap();
    crate::admin::put(
        &root,
        "/usr/bin/systemctl",
        "#!/usr/bin/sh\nhook=none\nif read -r first </etc/qemu-ga/fsfreeze-hook; then\n  case \"$first\" in '#!'*) hook=stock ;; *) hook=ours ;; esac\nfi\necho \"systemctl $* hook=$hook\" >>/systemctl\n",
        0o755,
    );
    let r = crate::admin::at(&root);
    (root, r)
}

#[test]
#[ignore = "needs root"]
fn rpm_installs_of_either_package_in_any_order_leave_qemu_ga_running_our_hook() {
    // The faithful stand-in: every install of qemu-guest-agent writes its
    // stock script over the hook (no .rpmnew). Upgrades, downgrades and
    // reinstalls of either package, in turn: after each the hook is ours
    // (before the agent's own restart), `.stock` is the stock script of the
    // agent installed now, and the real qemu-ga of the root freezes through
    // our hook; erased, ours leaves the stock script as shipped.
    let _exclusive = crate::common::freezing_test("rpm_real_agent");
    let work = tempfile::tempdir().unwrap();
    let ours = build("build-rpm", work.path());
    let newer = newer_build(work.path());
    let newer_rpm = build_of("build-rpm", &newer, &work.path().join("newer-out"));
    let (root, r) = rhel_root_for_packages(work.path());
    let rpm_at = |args: &[&str]| rpm_in(&r, args);
    let agent7 = rhel_agent_rpm(work.path(), "qemu-ga-7", "7.2");
    let agent10 = rhel_agent_rpm(work.path(), "qemu-ga-10", "10.0");
    let stock_of = |generation: &str| {
        fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("target/test-qemu")
                .join(generation)
                .join("etc/qemu/fsfreeze-hook"),
        )
        .unwrap()
    };
    let (stock7, stock10) = (stock_of("qemu-ga-7"), stock_of("qemu-ga-10"));
    let hook = root.join("etc/qemu-ga/fsfreeze-hook");
    let stock = root.join("etc/qemu-ga/fsfreeze-hook.stock");
    let installed = root.join("usr/sbin/fsfreeze-hook");
    let systemctl = root.join("systemctl");
    let restarts = || {
        let said = fs::read_to_string(&systemctl).unwrap_or_default();
        fs::remove_file(&systemctl).ok();
        said
    };
    let (var_log, trace) = (work.path().join("var-log"), work.path().join("trace"));
    let freezes_through = |what: &str| {
        fs::remove_file(&trace).ok();
        freeze_by_the_agent_in(&root, RHEL_AGENT, &var_log, &trace);
        let ran = fs::read_to_string(&trace).unwrap_or_default();
        assert_eq!(
            ran,
            "/etc/qemu-ga/fsfreeze-hook.d/10-mark freeze\n/etc/qemu-ga/fsfreeze-hook.d/10-mark thaw\n"
                .replace("/etc", &root.join("etc").display().to_string()),
            "{what}: the hook's scripts"
        );
        let log = fs::read_to_string(var_log.join("qemu-ga/fsfreeze-hook.log")).unwrap_or_default();
        assert!(
            log.contains(": freeze finished in") && log.contains(": thaw finished in"),
            "{what}: qemu-ga ran our hook (its log under /var/log/qemu-ga): {log}"
        );
        fs::remove_file(var_log.join("qemu-ga/fsfreeze-hook.log")).ok();
    };
    let is_ours_with_stock = |what: &str, binary: &Path, kept: &[u8], said: &str| {
        assert_eq!(
            fs::read(&hook).unwrap(),
            fs::read(binary).unwrap(),
            "{what}: {said}"
        );
        assert_eq!(
            fs::read(&stock).unwrap(),
            kept,
            "{what}: the kept stock script: {said}"
        );
    };

    rpm_at(&["-i", &agent7]);
    assert_eq!(fs::read(&hook).unwrap(), stock7);
    rpm_at(&["-i", &ours]);
    succeeds(Command::new(&installed).args(["enable", "--root", &r]));
    is_ours_with_stock("enabled", &installed, &stock7, "");
    freezes_through("enabled");

    // The agent upgraded: rpm wrote 10.0's stock script over our hook; our
    // trigger put ours back before the agent's %postun restarted it.
    restarts();
    let said = rpm_at(&["-U", &agent10]);
    is_ours_with_stock("agent upgraded", &installed, &stock10, &said);
    assert_eq!(
        restarts(),
        "systemctl try-restart qemu-guest-agent.service hook=ours\n",
        "{said}"
    );
    freezes_through("agent upgraded");
    // Downgraded, then reinstalled.
    let said = rpm_at(&["-U", "--oldpackage", &agent7]);
    is_ours_with_stock("agent downgraded", &installed, &stock7, &said);
    let said = rpm_at(&["-U", "--replacepkgs", &agent7]);
    is_ours_with_stock("agent reinstalled", &installed, &stock7, &said);
    assert!(!said.contains('`') && !said.contains("failed"), "{said}");
    // Ours replaced by another build and back (build-rpm gives every build
    // Cargo.toml's version: a reinstall of other bytes), then reinstalled:
    // the hook follows the build.
    let said = rpm_at(&["-U", "--replacepkgs", &newer_rpm]);
    is_ours_with_stock("ours upgraded", &newer, &stock7, &said);
    let said = rpm_at(&["-U", "--replacepkgs", &ours]);
    is_ours_with_stock("ours downgraded", &installed, &stock7, &said);
    let said = rpm_at(&["-U", "--replacepkgs", &ours]);
    is_ours_with_stock("ours reinstalled", &installed, &stock7, &said);
    // A hook the administrator replaced by hand is no agent's: an upgrade
    // of ours leaves it alone and says so.
    fs::write(&hook, "#!/bin/sh\n# mine\n").unwrap();
    let said = rpm_at(&["-U", "--replacepkgs", &newer_rpm]);
    assert_eq!(
        fs::read_to_string(&hook).unwrap(),
        "#!/bin/sh\n# mine\n",
        "{said}"
    );
    crate::common::assert_has(
        &said,
        "/etc/qemu-ga/fsfreeze-hook is no longer the fsfreeze-hook `enable` installed (replaced or edited since): left alone",
    );
    // The agent's next install writes its stock script over that too, and
    // the hook is ours again; then upgraded once more.
    rpm_at(&["-U", "--replacepkgs", &agent7]);
    is_ours_with_stock("agent reinstalled after an edit", &newer, &stock7, "");
    let said = rpm_at(&["-U", &agent10]);
    is_ours_with_stock("agent upgraded again", &newer, &stock10, &said);
    freezes_through("agent upgraded again");

    // Erased, ours leaves 10.0's stock script exactly as the package
    // shipped it: rpm -V finds nothing, its time included.
    let said = rpm_at(&["-e", "fsfreeze-hook"]);
    assert_eq!(fs::read(&hook).unwrap(), stock10, "{said}");
    let verify = Command::new("rpm")
        .args(["--root", &r, "-V", "--nodeps", "qemu-guest-agent"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "rpm -V: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let left: Vec<String> = crate::admin::tree(&root.join("etc/qemu-ga"))
        .into_keys()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        left,
        [
            "",
            "fsfreeze-hook",
            "fsfreeze-hook.d",
            "fsfreeze-hook.d/10-mark"
        ],
        "left after the erase"
    );
}

#[test]
#[ignore = "needs root"]
fn rpm_holds_what_the_deb_holds_and_installs_into_a_rhel_root() {
    use crate::admin::{at, put, rhel, run};
    require_root("rpm_package");
    let work = tempfile::tempdir().unwrap();
    let rpm = build("build-rpm", work.path());
    assert!(rpm.ends_with(".x86_64.rpm"), "{rpm}");
    let query = |args: &[&str]| {
        let out = Command::new("rpm").args(args).arg(&rpm).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let files = query(&["-qpl"]);
    for f in [
        "/usr/sbin/fsfreeze-hook",
        "/usr/share/man/man8/fsfreeze-hook.8.gz",
        "/usr/share/doc/fsfreeze-hook/README.RHEL",
        "/usr/share/doc/fsfreeze-hook/README.md.gz",
        "/usr/share/doc/fsfreeze-hook/examples/20-mariadb",
        "/usr/share/bash-completion/completions/fsfreeze-hook",
        "/usr/share/zsh/site-functions/_fsfreeze-hook",
        "/usr/share/fish/vendor_completions.d/fsfreeze-hook.fish",
        "/usr/share/selinux/packages/fsfreeze-hook.cil",
        "/usr/lib/tmpfiles.d/fsfreeze-hook.conf",
        "/usr/share/fsfreeze-hook/fsfreeze-hook.rules.yml",
    ] {
        assert!(files.lines().any(|l| l == f), "{f} not in\n{files}");
    }
    for page in manual_pages() {
        let f = format!("/usr/share/doc/fsfreeze-hook/docs/{page}.gz");
        assert!(files.lines().any(|l| l == f), "{f} not in\n{files}");
    }
    let under_etc: Vec<&str> = files.lines().filter(|l| l.starts_with("/etc/")).collect();
    assert_eq!(under_etc, ["/etc/logrotate.d/fsfreeze-hook"], "{files}");
    assert_eq!(
        query(&["-qpc"]).trim(),
        "/etc/logrotate.d/fsfreeze-hook",
        "the logrotate rule is a config file"
    );
    // The scriptlets as written (a backquote in the spec's text is not run
    // while it is built).
    assert!(
        query(&["-qp", "--triggers"])
            .contains("# its stock script over the hook. refresh keeps that as <hook>.stock"),
        "the trigger's text"
    );
    let info = query(&["-qpi"]);
    assert!(
        !info.contains("localhost"),
        "no made-up URL or address: {info}"
    );
    assert!(
        query(&["--changelog", "-q", "-p"]).contains(&format!("- {}-1", env!("CARGO_PKG_VERSION"))),
        "a changelog for this version"
    );
    assert!(
        files
            .lines()
            .any(|l| l == "/usr/share/licenses/fsfreeze-hook/LICENSE-MIT")
    );
    let version = format!("Version     : {}", env!("CARGO_PKG_VERSION"));
    assert!(
        info.contains("Name        : fsfreeze-hook") && info.contains(&version),
        "{info}"
    );
    // A static binary requires nothing; the erase scriptlet a shell.
    let requires = query(&["-qpR"]);
    assert!(
        requires
            .lines()
            .all(|l| l.starts_with("rpmlib(") || l.trim() == "/bin/sh"),
        "{requires}"
    );

    // A RHEL 9 style root with the stock hook, the package installed into it.
    let root = work.path().join("root");
    fs::create_dir_all(&root).unwrap();
    rhel(&root);
    let r = at(&root);
    let install = Command::new("rpm")
        .args([
            "--root",
            &r,
            "--nodeps",
            "--nosignature",
            "--noscripts",
            "-i",
            &rpm,
        ])
        .output()
        .unwrap();
    assert!(
        install.status.success(),
        "{}",
        String::from_utf8_lossy(&install.stderr)
    );
    let installed = root.join("usr/sbin/fsfreeze-hook");
    assert_eq!(fs::read(&installed).unwrap(), fs::read(BIN).unwrap());
    logrotate_rotates_the_default_logs(&root);
    selinux_module_labels_the_state_dir_and_the_hook(&root);
    // The tmpfiles.d entry, by the real systemd-tmpfiles: the state dir as
    // the runner makes it.
    succeeds(Command::new("systemd-tmpfiles").args([
        &format!("--root={r}"),
        "--create",
        "fsfreeze-hook.conf",
    ]));
    let state = fs::metadata(root.join("run/fsfreeze-hook")).unwrap();
    assert!(state.is_dir());
    assert_eq!(state.permissions().mode() & 0o7777, 0o700);
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&state), 0);
    put(
        &root,
        "/etc/qemu-ga/fsfreeze-hook.d/10-app",
        "#!/bin/sh\nexit 0\n",
        0o755,
    );
    let check = run(&["check", "--root", &r]);
    assert_eq!(check.code, Some(1), "{}", check.stdout);
    assert!(
        check.stdout.lines().any(|l| l.starts_with(
            "problem: /etc/qemu-ga/fsfreeze-hook is a script (the stock hook?), not fsfreeze-hook"
        )),
        "{}",
        check.stdout
    );
    let dry = Command::new(&installed)
        .args(["enable", "--root", &r, "--dry-run"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{said}");
    assert!(
        said.contains("would: keep /etc/qemu-ga/fsfreeze-hook as /etc/qemu-ga/fsfreeze-hook.stock")
            && said.contains("would: install this binary as /etc/qemu-ga/fsfreeze-hook"),
        "{said}"
    );
    // Enabled for real, the hook logs where qemu-ga's SELinux domain may.
    assert_eq!(run(&["enable", "--root", &r]).code, Some(0));
    let check = run(&["check", "--root", &r]);
    assert!(
        check.stdout.contains("/var/log/qemu-ga/fsfreeze-hook.log"),
        "{}",
        check.stdout
    );
}

#[test]
fn the_arm64_build_makes_arm64_packages() {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let Ok(bin) = std::env::var("FSFREEZE_HOOK_TEST_ARM64_BIN") else {
        assert!(!ci, "CI=true: the test command builds the arm64 binary");
        eprintln!(
            "no arm64 build (FSFREEZE_HOOK_TEST_ARM64_BIN; the test command makes one): not run"
        );
        return;
    };
    let file = succeeds(Command::new("file").arg("-b").arg(&bin));
    assert!(
        file.contains("ARM aarch64") && file.contains("statically linked"),
        "{file}"
    );
    let work = tempfile::tempdir().unwrap();
    let deb = build_of("build-deb", Path::new(&bin), work.path());
    assert!(deb.ends_with("_arm64.deb"), "{deb}");
    let info = succeeds(Command::new("dpkg-deb").args(["-f", &deb, "Architecture"]));
    assert_eq!(info.trim(), "arm64");
    lintian_says_no_error(&deb);
    let rpm = build_of("build-rpm", Path::new(&bin), work.path());
    assert!(rpm.ends_with(".aarch64.rpm"), "{rpm}");
    let arch = Command::new("rpm")
        .args(["-qp", "--qf", "%{ARCH}", &rpm])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&arch.stdout), "aarch64");
    // What they hold is that build, byte for byte.
    let unpacked = work.path().join("deb");
    succeeds(Command::new("dpkg-deb").args(["-x", &deb]).arg(&unpacked));
    assert_eq!(
        fs::read(unpacked.join("usr/sbin/fsfreeze-hook")).unwrap(),
        fs::read(&bin).unwrap()
    );
    // The completions came from it (run under emulation): they name its
    // subcommands.
    let bash =
        fs::read_to_string(unpacked.join("usr/share/bash-completion/completions/fsfreeze-hook"))
            .unwrap();
    assert!(
        bash.contains("snapshot") && bash.contains("rehearse"),
        "{bash}"
    );
}

#[test]
fn a_version_bump_is_checked_before_anything_is_built_and_reaches_the_man_page() {
    // A copy of the tree at 0.1.1 (no sources in it: a `cargo build` there
    // would fail at once, and none may be tried before the changelog is).
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    fs::create_dir(&tree).unwrap();
    succeeds(
        Command::new("cp")
            .args([
                "-a",
                "packaging",
                "man",
                "hooks.d-examples",
                "monitoring",
                "docs",
                "README.md",
            ])
            .args(["LICENSE-MIT", "LICENSE-APACHE", "Cargo.toml"])
            .arg(&tree)
            .current_dir(here),
    );
    let cargo = fs::read_to_string(tree.join("Cargo.toml")).unwrap();
    let now = cargo
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap()
        .to_string();
    let next = "99.0.1";
    fs::write(
        tree.join("Cargo.toml"),
        cargo.replacen(
            &format!("version = \"{now}\""),
            &format!("version = \"{next}\""),
            1,
        ),
    )
    .unwrap();
    let build_deb = |binary: Option<&Path>| {
        let mut cmd = Command::new(tree.join("packaging/build-deb"));
        if let Some(b) = binary {
            cmd.arg(b).arg(work.path().join("out"));
        }
        cmd.output().unwrap()
    };
    // The changelog not bumped: refused at once, nothing built.
    let out = build_deb(None);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(
        said.trim(),
        format!("packaging/changelog is for {now}, Cargo.toml says {next}: add an entry")
    );
    let changelog = fs::read_to_string(tree.join("packaging/changelog")).unwrap();
    let entry = changelog
        .split("\n\n")
        .take(2)
        .collect::<Vec<_>>()
        .join("\n\n");
    fs::write(
        tree.join("packaging/changelog"),
        format!(
            "{}\n\n{changelog}",
            entry.replacen(&format!("({now})"), &format!("({next})"), 1)
        ),
    )
    .unwrap();
    // A binary of another version: refused, not packaged under this one.
    let out = build_deb(Some(Path::new(BIN)));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!(
            "is fsfreeze-hook {now}, the package would be {next}"
        )),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A binary of this version: the package and its man page say so.
    let c = work.path().join("fake.c");
    fs::write(
        &c,
        format!(
            "#include <stdio.h>\n#include <string.h>\nint main(int c, char **v) {{\n\
             if (c > 1 && !strcmp(v[1], \"--version\")) {{ puts(\"fsfreeze-hook {next}\"); return 0; }}\n\
             if (c > 2 && !strcmp(v[1], \"completions\")) {{ puts(\"# completions\"); return 0; }}\n\
             return 1;\n}}\n"
        ),
    )
    .unwrap();
    let fake = work.path().join("fsfreeze-hook");
    succeeds(
        Command::new("gcc")
            .args(["-static", "-o"])
            .arg(&fake)
            .arg(&c),
    );
    let out = build_deb(Some(&fake));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = succeeds(Command::new("dpkg-deb").args(["-f", &deb, "Version"]));
    assert_eq!(version.trim(), next);
    let unpacked = work.path().join("unpacked");
    succeeds(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked));
    let page =
        succeeds(Command::new("zcat").arg(unpacked.join("usr/share/man/man8/fsfreeze-hook.8.gz")));
    assert!(
        page.contains(&format!("\"fsfreeze-hook {next}\"")),
        "the title line"
    );
    assert!(
        page.contains(&format!("\n.SH VERSION\nv{next}\n")),
        "the VERSION section"
    );
}

#[test]
#[ignore = "needs root"]
fn a_hook_path_the_administrator_changed_is_left_alone_and_removal_leaves_no_diversion() {
    // Enabled (the stock conffile diverted, the hook a link), then the
    // administrator points qemu-ga at a wrapper of their own. Our upgrade
    // takes nothing over (their script stays where it is, no .stock of it),
    // check says so, and the removal still undoes the diversion and the
    // link, leaving no dangling hook.
    use crate::admin::at;
    require_root("deb_hook_moved");
    let work = tempfile::tempdir().unwrap();
    let root = dpkg_root(work.path());
    let stock = "#!/bin/sh\n# stock\n";
    dpkg(&root, &["-i", &agent_deb(work.path(), "7.2", stock)]);
    dpkg(&root, &["-i", &build("build-deb", work.path())]);
    let installed = root.join("usr/sbin/fsfreeze-hook");
    succeeds(Command::new(&installed).args(["enable", "--root", &at(&root)]));
    let hook = root.join("etc/qemu/fsfreeze-hook");
    assert!(
        fs::symlink_metadata(&hook)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let wrapper = "#!/bin/sh\n# the administrator's\nexec /etc/qemu/fsfreeze-hook \"$@\"\n";
    crate::admin::put(&root, "/etc/qemu/my-wrapper", wrapper, 0o755);
    crate::admin::put(
        &root,
        "/etc/qemu/qemu-ga.conf",
        "[general]\nfsfreeze-hook=/etc/qemu/my-wrapper\n",
        0o644,
    );
    let newer = newer_build(work.path());
    let said = dpkg(&root, &["-i", &build_from(&newer, work.path())]);
    assert_eq!(
        fs::read_to_string(root.join("etc/qemu/my-wrapper")).unwrap(),
        wrapper,
        "{said}"
    );
    assert!(!root.join("etc/qemu/my-wrapper.stock").exists(), "{said}");
    assert!(!root.join("etc/qemu/my-wrapper.enabled").exists(), "{said}");
    assert!(
        fs::read_to_string(root.join("etc/qemu/qemu-ga.conf"))
            .unwrap()
            .contains("fsfreeze-hook=/etc/qemu/my-wrapper"),
        "{said}"
    );
    let check = Command::new(&installed)
        .args(["check", "--root", &at(&root)])
        .output()
        .unwrap();
    crate::common::assert_has(
        &String::from_utf8_lossy(&check.stdout),
        "note: `enable` set up /etc/qemu/fsfreeze-hook, but qemu-ga runs /etc/qemu/my-wrapper now",
    );
    let said = dpkg(&root, &["-r", "fsfreeze-hook"]);
    assert!(
        !fs::symlink_metadata(&hook)
            .unwrap()
            .file_type()
            .is_symlink(),
        "{said}"
    );
    assert_eq!(fs::read_to_string(&hook).unwrap(), stock, "{said}");
    let diversions = Command::new("dpkg-divert")
        .arg("--root")
        .arg(&root)
        .arg("--list")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&diversions.stdout).trim(),
        "",
        "{said}"
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/qemu/my-wrapper")).unwrap(),
        wrapper
    );
}
