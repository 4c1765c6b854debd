//! The README's command blocks that install and build, run exactly as
//! written: the build section in this clone (the packages it names appear
//! where its comments say), and the RHEL family's quick start as root in a
//! throwaway root of that layout with its agent running. (The Debian quick
//! start runs in the systemd guests: vm::systemd.)

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::{BIN, block, require_root};

/// The version every package of this tree carries.
fn version() -> String {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .nth(1)
        .expect("fsfreeze-hook VERSION")
        .to_string()
}

#[test]
fn the_readmes_build_section_as_written() {
    let block = block("README.md", "## Build the packages", "sh");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deb = root.join(format!("target/deb/fsfreeze-hook_{}_amd64.deb", version()));
    let rpm = root.join(format!(
        "target/rpm/fsfreeze-hook-{}-1.x86_64.rpm",
        version()
    ));
    for made in [&deb, &rpm] {
        let _ = fs::remove_file(made);
    }
    let out = Command::new("sh")
        .arg("-ec")
        .arg(&block)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{block}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Where the block's comments say, and what they are.
    assert!(block.contains("target/deb/fsfreeze-hook_<version>_<arch>.deb"));
    assert!(block.contains("target/rpm/fsfreeze-hook-<version>-1.<arch>.rpm"));
    let info = Command::new("dpkg-deb")
        .arg("-f")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("Package: fsfreeze-hook")
            && info.contains(&format!("Version: {}", version())),
        "{info}"
    );
    let query = Command::new("rpm")
        .args(["-qp", "--qf", "%{NAME} %{VERSION} %{ARCH}"])
        .arg(&rpm)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&query.stdout),
        format!("fsfreeze-hook {} x86_64", version())
    );
    // The binary they packaged is the release build, static.
    let file = Command::new("file")
        .arg(root.join("target/x86_64-unknown-linux-gnu/release/fsfreeze-hook"))
        .output()
        .unwrap();
    let file = String::from_utf8_lossy(&file.stdout);
    assert!(file.contains("static"), "{file}");
}

#[test]
#[ignore = "needs root"]
fn the_readmes_rhel_quick_start_in_a_rhel_root() {
    require_root("rhel_quick_start");
    let block = block("README.md", "## Quick start: the RHEL family", "sh");
    assert!(
        block.starts_with("rpm -i target/rpm/fsfreeze-hook-*.rpm\n"),
        "{block}"
    );
    let work = tempfile::tempdir().unwrap();
    let rhel = crate::ansible::rhel_root(work.path());
    // Our .rpm where the block takes it from, in root's home.
    let rpm = crate::package::build_of(
        "build-rpm",
        Path::new(BIN),
        &rhel.path.join("root/target/rpm"),
    );
    assert!(rpm.ends_with(".rpm"), "{rpm}");
    // systemd's part, which a chroot lacks: `systemctl restart` restarts
    // the agent as the unit would, with the hook its sysconfig names.
    crate::admin::put(
        &rhel.path,
        "/usr/bin/systemctl",
        "#!/bin/sh\necho \"$*\" >>/systemctl.log\ncase \"$*\" in\n\
         'restart qemu-guest-agent') exec /usr/local/sbin/restart-test-agent ;;\n\
         esac\nexit 1\n",
        0o755,
    );
    let agent_before = fs::read_to_string(rhel.path.join("run/qemu-ga.pid")).unwrap();
    fs::write(rhel.path.join("root/quick-start.sh"), &block).unwrap();
    let out = Command::new("chroot")
        .arg(&rhel.path)
        .args([
            "/bin/sh",
            "-c",
            "cd /root && exec /bin/sh -e quick-start.sh",
        ])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", "/root")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("all good: the next freeze will run the hooks"),
        "{text}"
    );
    // Installed, enabled where RHEL's agent looks, the agent restarted.
    assert_eq!(
        fs::read(rhel.path.join("etc/qemu-ga/fsfreeze-hook")).unwrap(),
        fs::read(BIN).unwrap(),
        "the hook is this binary"
    );
    assert!(rhel.path.join("etc/qemu-ga/fsfreeze-hook.stock").exists());
    assert_eq!(
        fs::read_to_string(rhel.path.join("systemctl.log")).unwrap(),
        "restart qemu-guest-agent\n"
    );
    let agent_after = fs::read_to_string(rhel.path.join("run/qemu-ga.pid")).unwrap();
    assert_ne!(agent_before, agent_after, "the agent was restarted");
}
