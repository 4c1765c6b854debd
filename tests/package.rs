//! The Debian package: built by packaging/build-deb from the test binary,
//! installed into a scratch root with `dpkg --root`.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::{BIN, require_root};

#[test]
#[ignore = "needs root"]
fn deb_installs_binary_man_page_examples_and_leaves_the_stock_hook_alone() {
    require_root("deb_package");
    let work = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/build-deb");
    let out = Command::new(&script)
        .arg(BIN)
        .arg(work.path().join("out"))
        .output()
        .expect("packaging/build-deb");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = String::from_utf8_lossy(&out.stdout).trim().to_string();
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
    ] {
        assert!(root.join(f).is_file(), "{f} missing");
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
    assert!(
        !listing.contains("./etc/"),
        "the package ships nothing under /etc: {listing}"
    );
    // The man page in the package is the checked-in one.
    let gz = Command::new("gzip")
        .arg("-dc")
        .arg(root.join("usr/share/man/man8/fsfreeze-hook.8.gz"))
        .output()
        .unwrap();
    let page = fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("man/fsfreeze-hook.8")).unwrap();
    assert_eq!(gz.stdout, page);
}
