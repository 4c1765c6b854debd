//! Who may have written what the runner executes or reads its orders from.
//! The rules of sshd's StrictModes and cron: as root, a hook, the config, a
//! `#!` interpreter, and every directory above them must be owned by root and
//! not writable by group or others. A directory writable by others counts
//! when it has the sticky bit (/tmp): only the owner of an entry can replace
//! it, and the entry below is checked in turn; never the hooks dir itself,
//! whose entries are what runs. A path is judged as the kernel resolves it:
//! every directory it passes through, and every symlink it follows (which
//! must have an allowed owner too), not only where it ends. Not as root, the
//! invoking user may own them too.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::sys::paths::components;

/// The reason a path is not trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Untrusted {
    pub path: PathBuf,
    pub rule: String,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", crate::text::escape_path(&self.path), self.rule)
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
    /// Interpreters already judged during this run.
    interpreters: RefCell<HashMap<PathBuf, Result<(), Untrusted>>>,
    /// What each interpreter looked at during this run is run by (`Some`:
    /// it is a `#!` script itself): every hook of a dir names the same one.
    next_interpreters: RefCell<HashMap<PathBuf, Option<PathBuf>>>,
    /// Directories already resolved and judged during this run, by the path
    /// they were named by: the hooks of one dir walk its way once.
    resolved: RefCell<HashMap<PathBuf, PathBuf>>,
}

const STICKY: u32 = 0o1000;
/// The kernel's limit on symlinks followed in one lookup (MAXSYMLINKS).
const MAX_LINKS: usize = 40;

/// What a directory is to the path being judged.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    /// Above what is judged: a sticky one may be writable by others.
    Above,
    /// The hooks dir itself: whoever may add an entry chooses what runs.
    Hooks,
}

impl Policy {
    pub fn current() -> Policy {
        Policy::with_user(nix::unistd::geteuid().as_raw())
    }

    fn with_user(uid: u32) -> Policy {
        Policy {
            user: (uid != 0).then_some(uid),
            trusted_dirs: RefCell::default(),
            interpreters: RefCell::default(),
            next_interpreters: RefCell::default(),
            resolved: RefCell::default(),
        }
    }

    #[cfg(test)]
    pub fn for_user(uid: u32) -> Policy {
        Policy::with_user(uid)
    }

    fn owners(&self) -> String {
        match self.user {
            None => "root".into(),
            Some(u) => format!("root or uid {u}"),
        }
    }

    fn check_owner(&self, path: &Path, meta: &Metadata) -> Result<(), Untrusted> {
        let uid = meta.uid();
        if uid != 0 && Some(uid) != self.user {
            return Err(Untrusted {
                path: path.to_path_buf(),
                rule: format!("is owned by uid {uid}, not by {}", self.owners()),
            });
        }
        Ok(())
    }

    /// Owner and mode of a file or directory (`dir`: how a directory counts).
    fn check_meta(&self, path: &Path, meta: &Metadata, dir: Option<Dir>) -> Result<(), Untrusted> {
        self.check_owner(path, meta)?;
        let mode = meta.mode();
        let writable = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (false, false) => return Ok(()),
            (true, false) => "group",
            (false, true) => "others",
            (true, true) => "group and others",
        };
        if dir == Some(Dir::Above) && mode & STICKY != 0 {
            // Entries below are checked for their owner on their own.
            return Ok(());
        }
        let sticky = if dir == Some(Dir::Hooks) && mode & STICKY != 0 {
            ", sticky or not: anyone who may add an entry chooses what runs"
        } else {
            ""
        };
        Err(Untrusted {
            path: path.to_path_buf(),
            rule: format!(
                "is writable by {writable} (mode {:04o}{sticky}; chmod go-w)",
                mode & 0o7777
            ),
        })
    }

    /// Resolves `path` as the kernel does, component by component, and judges
    /// every directory passed through (`last` says how the final one counts
    /// when it is a directory) and every symlink followed (its owner; the
    /// directory holding it is one passed through). Returns the path without
    /// symlinks and what it names, not yet judged when that is a file.
    fn walk(&self, path: &Path, last: Dir) -> Result<(PathBuf, Metadata), Untrusted> {
        let start = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()
                .map_err(|e| Untrusted {
                    path: path.to_path_buf(),
                    rule: format!("cannot be resolved: {e}"),
                })?
                .join(path)
        };
        match (start.parent(), start.file_name()) {
            (Some(parent), Some(name)) => {
                let base = self.resolve_dir(parent)?;
                self.walk_from(base, VecDeque::from([name.to_os_string()]), last)
            }
            _ => self.walk_from(PathBuf::from("/"), components(&start), last),
        }
    }

    /// A directory, walked once a run (see [`Policy::walk`]).
    fn resolve_dir(&self, dir: &Path) -> Result<PathBuf, Untrusted> {
        if let Some(real) = self.resolved.borrow().get(dir) {
            return Ok(real.clone());
        }
        let (real, meta) = self.walk_from(PathBuf::from("/"), components(dir), Dir::Above)?;
        if !meta.is_dir() {
            return Err(Untrusted {
                path: real,
                rule: "is not a directory".into(),
            });
        }
        self.resolved
            .borrow_mut()
            .insert(dir.to_path_buf(), real.clone());
        Ok(real)
    }

    /// The walk from `real`, a directory already judged (or `/`), through
    /// the names in `pending`.
    fn walk_from(
        &self,
        mut real: PathBuf,
        mut pending: VecDeque<OsString>,
        last: Dir,
    ) -> Result<(PathBuf, Metadata), Untrusted> {
        let examine = |p: &Path| {
            fs::symlink_metadata(p).map_err(|e| Untrusted {
                path: p.to_path_buf(),
                rule: format!("cannot be examined: {e}"),
            })
        };
        let mut meta = examine(&real)?;
        self.judge_dir(&real, &meta, Dir::Above)?;
        let mut links = 0;
        while let Some(part) = pending.pop_front() {
            if part == ".." {
                real.pop();
                meta = examine(&real)?;
                continue;
            }
            let next = real.join(&part);
            let m = examine(&next)?;
            if m.file_type().is_symlink() {
                self.check_owner(&next, &m)?;
                links += 1;
                if links > MAX_LINKS {
                    return Err(Untrusted {
                        path: next,
                        rule: "leads through too many levels of symlinks".into(),
                    });
                }
                let target = fs::read_link(&next).map_err(|e| Untrusted {
                    path: next.clone(),
                    rule: format!("cannot be read: {e}"),
                })?;
                if target.is_absolute() {
                    real = PathBuf::from("/");
                }
                for c in components(&target).into_iter().rev() {
                    pending.push_front(c);
                }
                continue;
            }
            real = next;
            meta = m;
            if meta.is_dir() {
                let kind = if pending.is_empty() { last } else { Dir::Above };
                self.judge_dir(&real, &meta, kind)?;
            } else if !pending.is_empty() {
                return Err(Untrusted {
                    path: real,
                    rule: "is not a directory".into(),
                });
            }
        }
        Ok((real, meta))
    }

    fn judge_dir(&self, path: &Path, meta: &Metadata, kind: Dir) -> Result<(), Untrusted> {
        if kind == Dir::Above && self.trusted_dirs.borrow().contains(path) {
            return Ok(());
        }
        self.check_meta(path, meta, Some(kind))?;
        if kind == Dir::Above {
            self.trusted_dirs.borrow_mut().insert(path.to_path_buf());
        }
        Ok(())
    }

    /// Checks the hooks dir: every directory and symlink on its way, and the
    /// dir itself, which no one but root (or the invoking user) may write
    /// to, sticky bit or not.
    pub fn check_hooks_dir(&self, dir: &Path) -> Result<(), Untrusted> {
        let (real, meta) = self.walk(dir, Dir::Hooks)?;
        if !meta.is_dir() {
            return Err(Untrusted {
                path: real,
                rule: "is not a directory".into(),
            });
        }
        Ok(())
    }

    /// Checks a directory that the runner writes in as root (the state dir,
    /// the log's): as the hooks dir, since whoever may add or replace an
    /// entry there chooses what root overwrites or reads back.
    pub fn check_private_dir(&self, dir: &Path) -> Result<(), Untrusted> {
        self.check_hooks_dir(dir)
    }

    /// Checks the log's directory: as a hooks dir, or else root's and
    /// writable by a system group as well (Ubuntu's /var/log is root:syslog
    /// 0775), the way to it judged as usual. A member of that group can
    /// plant a link or a file at the log's name, which the log's opening
    /// refuses (no link followed, a regular file of ours with one name): it
    /// can only lose lines, not turn root's writes elsewhere.
    pub fn check_log_dir(&self, dir: &Path) -> Result<(), Untrusted> {
        let strict = self.check_private_dir(dir);
        let Err(why) = strict else {
            return Ok(());
        };
        /// The last gid of a system group (Debian's and RHEL's SYS_GID_MAX).
        const SYSTEM_GID_MAX: u32 = 999;
        let system_group = fs::symlink_metadata(dir).is_ok_and(|m| {
            m.is_dir() && m.uid() == 0 && m.mode() & 0o002 == 0 && m.gid() <= SYSTEM_GID_MAX
        });
        let above = dir.parent().map_or(Ok(()), |p| self.check_private_dir(p));
        match system_group && above.is_ok() {
            true => Ok(()),
            false => Err(why),
        }
    }

    /// Checks a directory in which the runner is about to create one of
    /// its own (the state dir's parent): the way to it as for a hooks dir,
    /// the directory itself as one above (sticky `/tmp` allowed).
    pub fn check_dir_above(&self, dir: &Path) -> Result<(), Untrusted> {
        self.resolve_dir(dir).map(|_| ())
    }

    /// Checks a file that was opened by `path` and examined (`meta`, from
    /// fstat): its owner and mode, and the way to it as [`Policy::walk`]
    /// judges it, which must lead to that very file (same device and inode),
    /// so that what is judged is what was opened.
    pub fn check_opened(&self, path: &Path, meta: &Metadata) -> Result<(), Untrusted> {
        let (real, found) = self.walk(path, Dir::Above)?;
        self.check_meta(&real, meta, None)?;
        if (found.dev(), found.ino()) != (meta.dev(), meta.ino()) {
            return Err(Untrusted {
                path: path.to_path_buf(),
                rule: "was replaced while it was checked".into(),
            });
        }
        Ok(())
    }

    /// What runs `interpreter` (`look` finds it, once a run for each; a
    /// failure is not kept).
    pub fn interpreter_of<E>(
        &self,
        interpreter: &Path,
        look: impl FnOnce() -> Result<Option<PathBuf>, E>,
    ) -> Result<Option<PathBuf>, E> {
        if let Some(known) = self.next_interpreters.borrow().get(interpreter) {
            return Ok(known.clone());
        }
        let next = look()?;
        self.next_interpreters
            .borrow_mut()
            .insert(interpreter.to_path_buf(), next.clone());
        Ok(next)
    }

    /// Checks a `#!` interpreter as a hook is checked (once a run for each).
    pub fn check_interpreter(&self, path: &Path) -> Result<(), Untrusted> {
        if let Some(known) = self.interpreters.borrow().get(path) {
            return known.clone();
        }
        let judged = self
            .walk(path, Dir::Above)
            .and_then(|(real, meta)| self.check_meta(&real, &meta, None));
        self.interpreters
            .borrow_mut()
            .insert(path.to_path_buf(), judged.clone());
        judged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

    fn chmod(p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A file's path and what fstat says of it, as a caller that opened it.
    fn opened(p: &Path) -> Metadata {
        fs::File::open(p).unwrap().metadata().unwrap()
    }

    fn check_file(policy: &Policy, p: &Path) -> Result<(), Untrusted> {
        policy.check_opened(p, &opened(p))
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
        assert_eq!(check_file(&policy(), &file), Ok(()));
        chmod(&file, 0o775);
        let err = check_file(&policy(), &file).unwrap_err();
        assert!(err.rule.starts_with("is writable by group"), "{err}");
        chmod(&file, 0o757);
        let err = check_file(&policy(), &file).unwrap_err();
        assert!(err.rule.starts_with("is writable by others"), "{err}");
        chmod(&file, 0o755);
        chmod(dir.path(), 0o777);
        let err = check_file(&policy(), &file).unwrap_err();
        assert_eq!(err.path, fs::canonicalize(dir.path()).unwrap(), "{err}");
        chmod(dir.path(), 0o1777);
        assert_eq!(
            check_file(&policy(), &file),
            Ok(()),
            "sticky, above the file: the entry's owner decides"
        );
        chmod(dir.path(), 0o700);
    }

    #[test]
    fn the_hooks_dir_itself_may_not_be_writable_sticky_or_not() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("hooks.d");
        fs::create_dir(&hooks).unwrap();
        for mode in [0o1777, 0o3775, 0o1757, 0o777] {
            chmod(&hooks, mode);
            let err = Policy::for_user(me).check_hooks_dir(&hooks).unwrap_err();
            assert!(err.rule.starts_with("is writable by"), "{mode:o}: {err}");
        }
        chmod(&hooks, 0o1777);
        let err = Policy::for_user(me).check_hooks_dir(&hooks).unwrap_err();
        assert!(err.rule.contains("sticky or not"), "{err}");
        chmod(&hooks, 0o755);
        assert_eq!(Policy::for_user(me).check_hooks_dir(&hooks), Ok(()));
        // A sticky, world-writable dir above it (/tmp) is fine.
        chmod(dir.path(), 0o1777);
        assert_eq!(Policy::for_user(me).check_hooks_dir(&hooks), Ok(()));
        chmod(dir.path(), 0o700);
    }

    #[test]
    fn every_link_of_a_chain_and_every_dir_on_the_way_is_judged() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // hooks.d/20-app -> app/freeze-hook -> ../bin/real; app is writable
        // by group (an application's dir): the link inside it is not to be
        // trusted even though the final file is.
        for sub in ["hooks.d", "app", "bin"] {
            fs::create_dir(d.join(sub)).unwrap();
            chmod(&d.join(sub), 0o755);
        }
        let real = d.join("bin/real");
        fs::write(&real, "").unwrap();
        chmod(&real, 0o755);
        symlink("../bin/real", d.join("app/freeze-hook")).unwrap();
        let hook = d.join("hooks.d/20-app");
        symlink(d.join("app/freeze-hook"), &hook).unwrap();
        assert_eq!(check_file(&Policy::for_user(me), &hook), Ok(()));
        chmod(&d.join("app"), 0o775);
        let err = check_file(&Policy::for_user(me), &hook).unwrap_err();
        assert_eq!(err.path, d.join("app").canonicalize().unwrap(), "{err}");
        chmod(&d.join("app"), 0o755);
        // A link whose owner is not allowed (a policy for another user, when
        // not root: our links are not theirs).
        if me != 0 {
            let err = check_file(&Policy::for_user(me + 1), &hook).unwrap_err();
            assert!(err.rule.contains("owned by uid"), "{err}");
        }
        // A directory on the way reached through a link is judged too.
        let err = {
            chmod(&d.join("bin"), 0o777);
            check_file(&Policy::for_user(me), &hook).unwrap_err()
        };
        assert_eq!(err.path, real.parent().unwrap().canonicalize().unwrap());
        chmod(&d.join("bin"), 0o755);
    }

    #[test]
    fn what_is_judged_must_be_what_was_opened() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf");
        fs::write(&conf, "a").unwrap();
        let read = opened(&conf);
        // Swapped after it was read: the file now at the path is not it.
        let other = dir.path().join("other");
        fs::write(&other, "b").unwrap();
        fs::rename(&other, &conf).unwrap();
        let err = Policy::for_user(me).check_opened(&conf, &read).unwrap_err();
        assert!(err.rule.contains("replaced"), "{err}");
    }

    #[test]
    fn interpreters_are_judged_like_hooks() {
        let me = nix::unistd::geteuid().as_raw();
        let dir = tempfile::tempdir().unwrap();
        let interp = dir.path().join("python9");
        fs::write(&interp, "").unwrap();
        chmod(&interp, 0o755);
        assert_eq!(Policy::for_user(me).check_interpreter(&interp), Ok(()));
        chmod(&interp, 0o777);
        let err = Policy::for_user(me).check_interpreter(&interp).unwrap_err();
        assert!(
            err.rule.starts_with("is writable by group and others"),
            "{err}"
        );
        chmod(&interp, 0o755);
        chmod(dir.path(), 0o775);
        assert!(Policy::for_user(me).check_interpreter(&interp).is_err());
        chmod(dir.path(), 0o700);
    }

    #[test]
    fn another_owner_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = nix::unistd::geteuid().as_raw();
        // A policy for some other user: files of ours are not theirs (unless
        // we are root, whose files every policy trusts).
        let policy = Policy::for_user(me + 1);
        let err = policy.check_hooks_dir(dir.path());
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
