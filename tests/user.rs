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
#[ignore = "needs root"]
fn normal_user_rehearses_the_examples_with_fallback_locations() {
    require_root("normal_user_rehearse");
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

/// The README's Set up under umask 002: a clone that is group-writable is
/// refused with the rule named, and the command the README gives (run in the
/// clone by its owner) is enough for the rehearsal to run.
#[test]
#[ignore = "needs root"]
fn group_writable_clone_is_refused_and_the_readme_chmod_fixes_it() {
    require_root("umask_002_clone");
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let setup = readme.split("## Set up").nth(1).unwrap();
    let fix = setup
        .split('`')
        .find(|s| s.starts_with("chmod go-w ."))
        .expect("Set up gives the chmod for a group-writable clone");
    let dir = tempfile::Builder::new()
        .prefix("fsfreeze-hook-umask.")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let owned = |p: &Path, mode: u32| {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
        nix::unistd::chown(p, Some(NOBODY.into()), Some(NOBODY.into())).unwrap();
    };
    let home = dir.path().join("home");
    fs::create_dir(&home).unwrap();
    owned(&home, 0o755);
    // A clone made with umask 002: directories 0775, scripts 0775.
    let clone = dir.path().join("clone");
    let hooks = clone.join("hooks.d-examples");
    fs::create_dir_all(&hooks).unwrap();
    owned(&clone, 0o775);
    owned(&hooks, 0o775);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks.d-examples");
    for entry in fs::read_dir(&examples).unwrap() {
        let entry = entry.unwrap();
        let to = hooks.join(entry.file_name());
        fs::copy(entry.path(), &to).unwrap();
        owned(&to, 0o775);
    }
    let as_user = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .env_clear()
            .env("HOME", &home)
            .env("PATH", "/usr/bin:/bin")
            .uid(NOBODY)
            .gid(NOBODY)
            .current_dir(&clone)
            .output()
            .unwrap()
    };
    let rehearse = || as_user(BIN, &["rehearse", "--hooks-dir", "hooks.d-examples"]);
    let refused = rehearse();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "hooks dir is not trusted: {} is writable by group (mode 0775; chmod go-w)",
            clone.display()
        )),
        "{stderr}"
    );
    let chmod = as_user("/bin/sh", &["-c", fix]);
    assert!(chmod.status.success(), "{fix}: {chmod:?}");
    let ran = rehearse();
    assert_eq!(
        ran.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    assert!(String::from_utf8_lossy(&ran.stdout).contains("Applications were held for"));
}
