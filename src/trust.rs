//! Who may have written what the runner executes or reads its orders from.
//! The rules of sshd's StrictModes and cron: as root, a hook, the config, and
//! every directory above them must be owned by root and not writable by group
//! or others. A directory writable by others counts when it has the sticky bit
//! (/tmp): only the owner of an entry can replace it, and the entry below is
//! checked in turn. Not as root, the invoking user may own them too.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::fs::{self, File, Metadata};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The reason a path is not trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Untrusted {
    pub path: PathBuf,
    pub rule: String,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", crate::hooks::escape_path(&self.path), self.rule)
    }
}

#[derive(Debug)]
pub struct Policy {
    /// Besides root, the one other owner allowed (the invoking user when not
    /// root).
    user: Option<u32>,
    /// Directories already found trusted during this run (every hook of a
    /// dir shares its chain).
    trusted_dirs: RefCell<HashSet<PathBuf>>,
}

const STICKY: u32 = 0o1000;

impl Policy {
    pub fn current() -> Policy {
        let uid = nix::unistd::geteuid();
        Policy {
            user: (!uid.is_root()).then_some(uid.as_raw()),
            trusted_dirs: RefCell::default(),
        }
    }

    #[cfg(test)]
    pub fn for_user(uid: u32) -> Policy {
        Policy {
            user: (uid != 0).then_some(uid),
            trusted_dirs: RefCell::default(),
        }
    }

    fn owners(&self) -> String {
        match self.user {
            None => "root".into(),
            Some(u) => format!("root or uid {u}"),
        }
    }

    fn check_meta(&self, path: &Path, meta: &Metadata, is_dir: bool) -> Result<(), Untrusted> {
        let bad = |rule: String| {
            Err(Untrusted {
                path: path.to_path_buf(),
                rule,
            })
        };
        let uid = meta.uid();
        if uid != 0 && Some(uid) != self.user {
            return bad(format!("is owned by uid {uid}, not by {}", self.owners()));
        }
        let mode = meta.mode();
        let writable = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (false, false) => return Ok(()),
            (true, false) => "group",
            (false, true) => "others",
            (true, true) => "group and others",
        };
        if is_dir && mode & STICKY != 0 {
            // Entries below are checked for their owner on their own.
            return Ok(());
        }
        bad(format!(
            "is writable by {writable} (mode {:04o}; chmod go-w)",
            mode & 0o7777
        ))
    }

    /// Checks `dir` and every directory above it, after resolving symlinks.
    pub fn check_dir(&self, dir: &Path) -> Result<(), Untrusted> {
        let real = fs::canonicalize(dir).map_err(|e| Untrusted {
            path: dir.to_path_buf(),
            rule: format!("cannot be resolved: {e}"),
        })?;
        self.check_real_dir(&real)
    }

    /// [`Policy::check_dir`] for a path without symlinks.
    fn check_real_dir(&self, real: &Path) -> Result<(), Untrusted> {
        if self.trusted_dirs.borrow().contains(real) {
            return Ok(());
        }
        let mut at = PathBuf::from("/");
        let mut chain = vec![at.clone()];
        for part in real.components().skip(1) {
            at.push(part);
            chain.push(at.clone());
        }
        for p in chain {
            let meta = fs::symlink_metadata(&p).map_err(|e| Untrusted {
                path: p.clone(),
                rule: format!("cannot be examined: {e}"),
            })?;
            self.check_meta(&p, &meta, true)?;
        }
        self.trusted_dirs.borrow_mut().insert(real.to_path_buf());
        Ok(())
    }

    /// Checks an open file: `meta` from fstat, and the directories above the
    /// path the kernel has for it (its /proc/self/fd link: symlinks resolved,
    /// and no second lookup that could find another file).
    pub fn check_open_file(&self, file: &File, meta: &Metadata) -> Result<(), Untrusted> {
        let link = format!("/proc/self/fd/{}", file.as_raw_fd());
        let real = fs::read_link(&link).map_err(|e| Untrusted {
            path: PathBuf::from(&link),
            rule: format!("cannot be resolved (is /proc mounted?): {e}"),
        })?;
        self.check_meta(&real, meta, false)?;
        self.check_real_dir(real.parent().unwrap_or(Path::new("/")))
    }

    /// Checks a file by path (the config): the file and its directories.
    pub fn check_path(&self, path: &Path) -> Result<(), Untrusted> {
        let file = File::open(path).map_err(|e| Untrusted {
            path: path.to_path_buf(),
            rule: format!("cannot be opened: {e}"),
        })?;
        let meta = file.metadata().map_err(|e| Untrusted {
            path: path.to_path_buf(),
            rule: format!("cannot be examined: {e}"),
        })?;
        self.check_open_file(&file, &meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn modes_are_judged_for_the_running_user() {
        // Runs as whoever runs the tests: that user is the allowed owner. A
        // policy caches trusted dirs for one run, so each check gets a new one.
        let me = nix::unistd::geteuid().as_raw();
        let policy = || Policy::for_user(me);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hook");
        fs::write(&file, "").unwrap();
        chmod(&file, 0o755);
        assert_eq!(policy().check_path(&file), Ok(()));
        chmod(&file, 0o775);
        let err = policy().check_path(&file).unwrap_err();
        assert!(err.rule.starts_with("is writable by group"), "{err}");
        chmod(&file, 0o757);
        assert!(
            policy()
                .check_path(&file)
                .unwrap_err()
                .rule
                .starts_with("is writable by others")
        );
        chmod(&file, 0o755);
        chmod(dir.path(), 0o777);
        let err = policy().check_path(&file).unwrap_err();
        assert_eq!(err.path, fs::canonicalize(dir.path()).unwrap(), "{err}");
        chmod(dir.path(), 0o1777);
        assert_eq!(
            policy().check_path(&file),
            Ok(()),
            "sticky: the entry's owner decides"
        );
        chmod(dir.path(), 0o700);
    }

    #[test]
    fn another_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        // A policy for some other user: files of ours are not theirs (unless
        // we are root, whose files every policy trusts).
        let policy = Policy::for_user(me + 1);
        let err = policy.check_dir(dir.path());
        if me == 0 {
            assert_eq!(err, Ok(()));
        } else {
            assert!(
                err.unwrap_err()
                    .rule
                    .contains(&format!("owned by uid {me}"))
            );
        }
    }
}
