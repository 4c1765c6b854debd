//! The Ansible role (ansible/roles/fsfreeze_hook), run by real Ansible from
//! PyPI (the test command installs it into a virtual environment:
//! $FSFREEZE_HOOK_TEST_ANSIBLE is its bin/) through Ansible's chroot
//! connection, with the manual's playbook (docs/distributions.md), against throwaway roots: Debian
//! 12 as mmdebstrap makes it (tests/fetch-qemu), with Debian's
//! qemu-guest-agent, our .deb; and the RHEL family's layout, with the
//! faithful stand-in of its qemu-guest-agent package, our .rpm. Each root
//! gets this machine's python3 (and rpm) and a running agent of its own
//! (tests/ansible/prepare-root), so that `check`, which the role runs, sees
//! a live guest. Twice each: the second run changes nothing. Then a hook
//! that will not run fails the play.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{BIN, require_root};
use crate::package::succeeds;

/// Ansible's bin/ ($FSFREEZE_HOOK_TEST_ANSIBLE); `None` when the test
/// command did not install it (a failure under CI).
fn ansible() -> Option<PathBuf> {
    let dir = std::env::var_os("FSFREEZE_HOOK_TEST_ANSIBLE").filter(|d| !d.is_empty());
    let ci = std::env::var("CI").as_deref() == Ok("true");
    match dir.map(PathBuf::from) {
        Some(d) if d.join("ansible-playbook").exists() => Some(d),
        other => {
            assert!(
                !ci,
                "CI=true: no ansible-playbook in {other:?} (FSFREEZE_HOOK_TEST_ANSIBLE, set by the test command)"
            );
            eprintln!("SKIPPED: no Ansible (the test command installs it)");
            None
        }
    }
}

/// The playbook of docs/distributions.md, as written there.
fn manual_playbook() -> String {
    let playbook = crate::common::block("docs/distributions.md", "## Rollout with Ansible", "yaml");
    assert!(
        playbook.starts_with("# site.yml"),
        "the manual's playbook: {playbook}"
    );
    playbook
}

/// A root under test: its agent is killed and /proc unmounted on drop.
pub(crate) struct Root {
    _dir: tempfile::TempDir,
    pub path: PathBuf,
}

impl Drop for Root {
    fn drop(&mut self) {
        if let Ok(pid) = fs::read_to_string(self.path.join("run/qemu-ga.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.path.join("proc"))
            .status();
    }
}

/// Makes `root` drivable and live (tests/ansible/prepare-root with `args`),
/// and starts its agent, `qga` (its path in the root), through a restart
/// script the play is given: the root has no systemd.
fn live(root: &Path, qga: &str, args: &[&str]) {
    let prepare = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ansible/prepare-root");
    succeeds(Command::new(prepare).arg(root).args(args));
    fs::create_dir_all(root.join("root")).unwrap();
    fs::create_dir_all(root.join("run/qga-test")).unwrap();
    // (In the root's shell, builtins only: the RHEL root's is busybox's
    // without its applets. A socket of its own at each start. Only
    // guest-fsfreeze-freeze-list could freeze, and nothing connects.)
    crate::admin::put(
        root,
        "/usr/local/sbin/restart-test-agent",
        &format!(
            "#!/bin/sh\n\
             if read -r pid </run/qemu-ga.pid; then\n\
             \x20   kill \"$pid\" 2>/dev/null\n\
             \x20   while kill -0 \"$pid\" 2>/dev/null; do :; done\n\
             fi\n\
             exec {qga} -d -m unix-listen -p /run/qga-test/qga.$$.sock -t /run/qga-test \
             -f /run/qemu-ga.pid -b guest-fsfreeze-freeze </dev/null >/dev/null 2>&1\n"
        ),
        0o755,
    );
    succeeds(
        Command::new("chroot")
            .arg(root)
            .arg("/usr/local/sbin/restart-test-agent"),
    );
}

/// Runs the manual's playbook on `root` with `extra` vars (YAML): the
/// play's output, and whether it succeeded.
fn play(ansible: &Path, root: &Path, extra: &str) -> (bool, String) {
    let work = root.parent().unwrap();
    fs::write(
        work.join("inventory"),
        format!(
            "[guests]\ntarget ansible_connection=community.general.chroot ansible_host={} ansible_python_interpreter=/usr/bin/python3\n",
            root.display()
        ),
    )
    .unwrap();
    fs::write(work.join("site.yml"), manual_playbook()).unwrap();
    fs::write(work.join("extra.yml"), extra).unwrap();
    let out = Command::new(ansible.join("ansible-playbook"))
        .current_dir(work)
        .args(["-i", "inventory", "site.yml", "-e", "@extra.yml"])
        .env(
            "ANSIBLE_ROLES_PATH",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ansible/roles"),
        )
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCAL_TEMP", work.join("ansible-tmp"))
        .env("ANSIBLE_CONFIG", work.join("none.cfg"))
        .env_remove("ANSIBLE_STDOUT_CALLBACK")
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The recap's `changed=N` of the one host.
fn changed(output: &str) -> u32 {
    output
        .lines()
        .find_map(|l| l.split("changed=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no recap:\n{output}"))
}

/// The play twice on `root`, then once with a hook that will not run.
fn plays_twice_then_fails_on_a_problem(ansible: &Path, root: &Path, extra: &str, hooks_dir: &str) {
    let (ok, first) = play(ansible, root, extra);
    assert!(ok, "the first run:\n{first}");
    assert!(changed(&first) > 0, "{first}");
    let (ok, second) = play(ansible, root, extra);
    assert!(ok, "the second run:\n{second}");
    println!(
        "{}",
        second
            .lines()
            .rev()
            .find(|l| l.contains("changed="))
            .unwrap()
    );
    assert_eq!(
        changed(&second),
        0,
        "the second run changed something:\n{second}"
    );
    // What the play set up, as the binary would.
    for name in ["20-mariadb", "30-postgresql"] {
        let shipped = Command::new(BIN).args(["example", name]).output().unwrap();
        assert_eq!(
            fs::read(root.join(hooks_dir).join(name)).unwrap(),
            shipped.stdout,
            "{name}"
        );
    }
    assert_eq!(
        fs::read_to_string(
            root.join("etc/systemd/system/qemu-guest-agent.service.d/fsfreeze-hook.conf")
        )
        .unwrap(),
        "# fsfreeze-hook's hooks read their settings from qemu-ga's environment.\n[Service]\nEnvironment=\"FSFREEZE_MYSQL_DEFAULTS_FILE=/etc/mysql/debian.cnf\"\n"
    );
    // A hook the play does not manage, which will not run: the play fails,
    // naming it and its fix.
    let local = root.join(hooks_dir).join("90-local");
    fs::write(&local, "#!/bin/sh\nexit 0\n").unwrap();
    let (ok, failed) = play(ansible, root, extra);
    assert!(!ok, "{failed}");
    assert!(
        failed.contains(&format!(
            "hook 90-local will not run: not executable Fix: chmod 755 /{hooks_dir}/90-local"
        )),
        "{failed}"
    );
    fs::remove_file(&local).unwrap();
}

#[test]
#[ignore = "needs root"]
fn the_manuals_playbook_through_ansibles_chroot_connection() {
    require_root("ansible");
    let Some(ansible) = ansible() else { return };
    let work = tempfile::tempdir().unwrap();
    let restart = "fsfreeze_hook_restart_command: /usr/local/sbin/restart-test-agent\n";

    // Debian 12 with Debian's agent, our .deb.
    let tarball = std::env::var("FSFREEZE_HOOK_TEST_SYSTEMD_ROOTS")
        .ok()
        .and_then(|r| {
            r.split(':')
                .find(|t| t.contains("-bookworm-"))
                .map(PathBuf::from)
        });
    let Some(tarball) = tarball else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: no Debian 12 root (tests/fetch-qemu makes it)"
        );
        eprintln!("SKIPPED: no Debian 12 root (the test command makes it)");
        return;
    };
    let deb = crate::package::build_of("build-deb", Path::new(BIN), &work.path().join("deb"));
    let dir = tempfile::Builder::new()
        .prefix("fsfreeze-hook-ansible.")
        .tempdir()
        .unwrap();
    let debian = Root {
        path: dir.path().join("root"),
        _dir: dir,
    };
    fs::create_dir(&debian.path).unwrap();
    succeeds(
        Command::new("tar")
            .arg("-C")
            .arg(&debian.path)
            .arg("-xf")
            .arg(&tarball),
    );
    live(&debian.path, "/usr/sbin/qemu-ga", &[]);
    // As if systemd ran it: its runtime directory, and a systemctl that
    // notes each call, says the agent's MainPID, and restarts it (a chroot
    // has no systemd to ask). The role restarts the agent through it.
    fs::create_dir_all(debian.path.join("run/systemd/system")).unwrap();
    crate::admin::put(
        &debian.path,
        "/usr/bin/systemctl",
        "#!/bin/sh\necho \"$*\" >>/systemctl.log\ncase \"$*\" in\n\
         *MainPID*qemu-guest-agent.service) cat /run/qemu-ga.pid ;;\n\
         'restart qemu-guest-agent.service') exec /usr/local/sbin/restart-test-agent ;;\n\
         esac\n",
        0o755,
    );
    let calls = |root: &Path| {
        fs::read_to_string(root.join("systemctl.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("MainPID"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    plays_twice_then_fails_on_a_problem(
        &ansible,
        &debian.path,
        &format!("fsfreeze_hook_package: {deb}\n"),
        "etc/qemu/fsfreeze-hook.d",
    );
    // Restarted once, by the first run, after a reload; not by the second.
    assert_eq!(
        calls(&debian.path),
        ["daemon-reload", "restart qemu-guest-agent.service"]
    );
    assert_eq!(
        fs::read_link(debian.path.join("etc/qemu/fsfreeze-hook")).unwrap(),
        Path::new("../../usr/sbin/fsfreeze-hook")
    );

    // The RHEL family's layout, the stand-in agent, our .rpm.
    let rpm = crate::package::build_of("build-rpm", Path::new(BIN), &work.path().join("rpm"));
    let rhel = rhel_root(work.path());
    plays_twice_then_fails_on_a_problem(
        &ansible,
        &rhel.path,
        &format!("fsfreeze_hook_package: {rpm}\n{restart}"),
        "etc/qemu-ga/fsfreeze-hook.d",
    );
    assert_eq!(
        fs::read(rhel.path.join("etc/qemu-ga/fsfreeze-hook")).unwrap(),
        fs::read(BIN).unwrap(),
        "the hook is this binary"
    );
}

/// A throwaway root of the RHEL family's layout, live: the faithful
/// stand-in of its qemu-guest-agent package (qemu-ga 7.2) installed with
/// rpm, what provides /bin/sh, root's account, busybox's tools, this
/// machine's python3 and rpm, and the agent running (restarted by
/// /usr/local/sbin/restart-test-agent). `work` keeps the packages made.
pub(crate) fn rhel_root(work: &Path) -> Root {
    let dir = tempfile::Builder::new()
        .prefix("fsfreeze-hook-rhel.")
        .tempdir()
        .unwrap();
    let (path, r) = crate::package::rhel_root_for_packages(dir.path());
    let rhel = Root { path, _dir: dir };
    let agent = crate::package::rhel_agent_rpm(work, "qemu-ga-7", "7.2");
    crate::package::rpm_in(&r, &["-i", &agent]);
    // What provides /bin/sh on RHEL (bash), which our package requires.
    crate::package::rpm_in(&r, &["-i", &sh_provider(work)]);
    // The accounts and tools a RHEL root has (setup, coreutils), which
    // Ansible's connection uses: root's home, busybox's tools as links.
    crate::admin::put(
        &rhel.path,
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    );
    crate::admin::put(&rhel.path, "/etc/group", "root:x:0:\n", 0o644);
    // (After rpm is there: busybox has an rpm of its own.)
    live(
        &rhel.path,
        "/usr/bin/qemu-ga",
        &["--rpm", "--libs-of", "/usr/bin/qemu-ga"],
    );
    fs::copy("/bin/busybox", rhel.path.join("usr/bin/busybox")).unwrap();
    succeeds(Command::new("chroot").arg(&rhel.path).args([
        "/usr/bin/busybox",
        "--install",
        "-s",
        "/usr/bin",
    ]));
    assert!(!rhel.path.join("usr/bin/rpm").is_symlink());
    rhel
}

/// A package that provides /bin/sh, as bash does on RHEL (the stand-in
/// root's shell is a static busybox no package owns).
fn sh_provider(work: &Path) -> String {
    let top = work.join("sh-rpm");
    fs::create_dir_all(&top).unwrap();
    let spec = top.join("sh.spec");
    fs::write(
        &spec,
        "Name: sh-provider\nVersion: 1\nRelease: 1\nSummary: /bin/sh, as bash provides it\n\
         License: MIT\nBuildArch: noarch\nProvides: /bin/sh\n%description\nA stand-in.\n%files\n",
    )
    .unwrap();
    succeeds(
        Command::new("rpmbuild")
            .args(["-bb", "--quiet", "--define"])
            .arg(format!("_topdir {}", top.join("top").display()))
            .arg("--define")
            .arg(format!("_rpmdir {}", top.join("out").display()))
            .arg(&spec),
    );
    top.join("out/noarch/sh-provider-1-1.noarch.rpm")
        .display()
        .to_string()
}
