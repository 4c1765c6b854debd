//! The README's main command: a rehearsal of the shipped examples by a normal
//! user, whose log and state fall back to places that user can write.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use crate::common::BIN;
use crate::common::require_root;

const NOBODY: u32 = 65534;

#[test]
fn normal_user_rehearses_the_examples_with_fallback_locations() {
    if !require_root("normal_user_rehearse") {
        return;
    }
    let dir = tempfile::Builder::new()
        .prefix("fsfreeze-hook-user.")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let home = dir.path().join("home");
    fs::create_dir(&home).unwrap();
    nix::unistd::chown(&home, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks.d-examples");
    let out = Command::new(BIN)
        .args(["rehearse", "--hooks-dir"])
        .arg(&examples)
        .env_clear()
        .env("HOME", &home)
        .env("PATH", "/usr/bin:/bin")
        .uid(NOBODY)
        .gid(NOBODY)
        .current_dir(&home)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = home.join(".local/state/fsfreeze-hook/fsfreeze-hook.log");
    let state = home.join(".local/state/fsfreeze-hook/run");
    assert!(
        stdout.contains(&format!(
            "not root: log in {}, state in {}",
            log.display(),
            state.display()
        )),
        "{stdout}"
    );
    assert!(stdout.contains("10-log-phase"), "{stdout}");
    assert!(stdout.contains("Applications were held for"), "{stdout}");
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.contains("10-log-phase: freeze"), "{text}");
    assert!(text.contains("10-log-phase: thaw"), "{text}");
    assert_eq!(fs::metadata(&log).unwrap().uid(), NOBODY);
    assert_eq!(fs::metadata(state.join("journal")).unwrap().uid(), NOBODY);
}
