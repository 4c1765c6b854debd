//! Which filesystems a freeze covers (`mounts`, qemu-ga's rules) and the
//! FIFREEZE/FITHAW layer behind a trait, with its fake for unit tests.
//!
//! Freezing as qemu-ga does (QEMU qga/commands-linux.c): children before
//! parents, EOPNOTSUPP skipped, EBUSY meaning someone else froze it (never
//! thawed by us), any other failure thawing what was frozen. The kernel is
//! tested on loop-mounted images only.

pub mod mounts;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::log::Log;
use crate::text::escape_path;
use mounts::Target;

/// Where a freeze writes down each filesystem before its FIFREEZE (the
/// journal), so that whoever thaws later knows it.
pub trait Ledger {
    /// `mountpoint` is about to be frozen.
    fn freezing(&mut self, mountpoint: &Path) -> anyhow::Result<()>;
    /// ... and was not: not ours to thaw.
    fn not_frozen(&mut self, mountpoint: &Path) -> anyhow::Result<()>;
}

pub trait Filesystems {
    fn mountinfo(&self) -> io::Result<String>;
    /// Device numbers of a block device node (for btrfs sources).
    fn block_dev(&self, source: &str) -> Option<(u32, u32)>;
    fn freeze(&self, mountpoint: &Path) -> Result<(), Errno>;
    fn thaw(&self, mountpoint: &Path) -> Result<(), Errno>;
}

/// The real thing: /proc/self/mountinfo and the FIFREEZE/FITHAW ioctls.
pub struct Kernel;

impl Filesystems for Kernel {
    fn mountinfo(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
    }

    fn block_dev(&self, source: &str) -> Option<(u32, u32)> {
        mounts::block_dev_of(source)
    }

    fn freeze(&self, mountpoint: &Path) -> Result<(), Errno> {
        crate::sys::fifreeze(mountpoint)
    }

    fn thaw(&self, mountpoint: &Path) -> Result<(), Errno> {
        crate::sys::fithaw(mountpoint)
    }
}

/// What to freeze: the filesystems at `wanted` (`-m`), or, when empty, every
/// filesystem qemu-ga would freeze. In mount order.
pub fn targets(fs: &dyn Filesystems, wanted: &[PathBuf]) -> Result<Vec<Target>, String> {
    let text = fs
        .mountinfo()
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
    let mounts = mounts::parse(&text);
    let block_dev = |s: &str| fs.block_dev(s);
    if wanted.is_empty() {
        return Ok(mounts::freezable(&mounts, &block_dev));
    }
    let mut resolved = Vec::with_capacity(wanted.len());
    for w in wanted {
        let real = std::fs::canonicalize(w).map_err(|e| format!("{}: {e}", escape_path(w)))?;
        resolved.push(real);
    }
    mounts::at_mountpoints(&mounts, &resolved, &block_dev)
}

/// A FIFREEZE (or its journal record) failed; what was frozen before it has
/// been thawed again, except `unthawed`.
#[derive(Debug)]
pub struct FreezeFailed {
    pub mountpoint: PathBuf,
    pub cause: String,
    pub unthawed: Vec<(PathBuf, Errno)>,
}

impl fmt::Display for FreezeFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot freeze {}: {}",
            escape_path(&self.mountpoint),
            self.cause
        )?;
        for (mp, e) in &self.unthawed {
            write!(
                f,
                "; and {} could not be thawed: {}",
                escape_path(mp),
                e.desc()
            )?;
        }
        Ok(())
    }
}

/// Freezes `targets` (in mount order) children first. Each filesystem is in
/// the journal before its FIFREEZE. Returns the mountpoints this call froze,
/// in freeze order.
pub fn freeze_all(
    fs: &dyn Filesystems,
    targets: &[Target],
    ledger: &mut dyn Ledger,
    log: &Log,
) -> Result<Vec<PathBuf>, FreezeFailed> {
    let mut frozen: Vec<PathBuf> = Vec::with_capacity(targets.len());
    for t in targets.iter().rev() {
        let mp = &t.mountpoint;
        let fail = |frozen: &[PathBuf], cause: String| FreezeFailed {
            mountpoint: mp.clone(),
            cause,
            unthawed: thaw_all(fs, frozen, log),
        };
        if let Err(e) = ledger.freezing(mp) {
            return Err(fail(&frozen, format!("{e:#}")));
        }
        let result = fs.freeze(mp);
        if result.is_err()
            && let Err(e) = ledger.not_frozen(mp)
        {
            log.warn(&format!("{e:#}"));
        }
        let shown = escape_path(mp);
        match result {
            Ok(()) => {
                log.line(&format!("froze {shown} ({})", t.fstype));
                frozen.push(mp.clone());
            }
            Err(Errno::EOPNOTSUPP) => {
                log.line(&format!(
                    "{shown} ({}) cannot be frozen (EOPNOTSUPP); skipped",
                    t.fstype
                ));
            }
            Err(Errno::EBUSY) => log.line(&format!(
                "{shown} is already frozen by someone else; left to them, never thawed by us"
            )),
            Err(e) => {
                log.line(&format!("FIFREEZE of {shown} failed: {}", e.desc()));
                return Err(fail(&frozen, format!("FIFREEZE failed: {}", e.desc())));
            }
        }
    }
    Ok(frozen)
}

/// Thaws `frozen` (given in freeze order) in mount order. A filesystem that
/// is not frozen (EINVAL) is no failure. Returns the failures.
pub fn thaw_all(fs: &dyn Filesystems, frozen: &[PathBuf], log: &Log) -> Vec<(PathBuf, Errno)> {
    let mut failed = Vec::new();
    for mp in frozen.iter().rev() {
        let shown = escape_path(mp);
        match fs.thaw(mp) {
            Ok(()) => log.line(&format!("thawed {shown}")),
            Err(Errno::EINVAL) => log.line(&format!("{shown} was not frozen")),
            Err(e) => {
                log.line(&format!("FITHAW of {shown} failed: {}", e.desc()));
                failed.push((mp.clone(), e));
            }
        }
    }
    failed
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::phase::journal::Journal;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A machine in memory: a mountinfo text, per-mountpoint errors, and a
    /// record of every call.
    #[derive(Default)]
    pub struct Fake {
        pub mountinfo: String,
        pub freeze_errors: HashMap<PathBuf, Errno>,
        pub frozen: RefCell<Vec<PathBuf>>,
        pub calls: RefCell<Vec<String>>,
    }

    impl Filesystems for Fake {
        fn mountinfo(&self) -> io::Result<String> {
            Ok(self.mountinfo.clone())
        }
        fn block_dev(&self, source: &str) -> Option<(u32, u32)> {
            (source == "/dev/loop9").then_some((7, 9))
        }
        fn freeze(&self, mp: &Path) -> Result<(), Errno> {
            self.calls
                .borrow_mut()
                .push(format!("freeze {}", mp.display()));
            if let Some(e) = self.freeze_errors.get(mp) {
                return Err(*e);
            }
            let mut frozen = self.frozen.borrow_mut();
            if frozen.iter().any(|f| f == mp) {
                return Err(Errno::EBUSY);
            }
            frozen.push(mp.to_path_buf());
            Ok(())
        }
        fn thaw(&self, mp: &Path) -> Result<(), Errno> {
            self.calls
                .borrow_mut()
                .push(format!("thaw {}", mp.display()));
            let mut frozen = self.frozen.borrow_mut();
            let before = frozen.len();
            frozen.retain(|f| f != mp);
            if frozen.len() == before {
                Err(Errno::EINVAL)
            } else {
                Ok(())
            }
        }
    }

    const MOUNTINFO: &str = "\
1 0 8:1 / / rw - ext4 /dev/sda1 rw
2 1 0:20 / /run rw - tmpfs tmpfs rw
3 1 7:0 / /a rw - ext4 /dev/loop0 rw
4 3 7:1 / /a/b rw - xfs /dev/loop1 rw
5 1 0:40 / /c rw - btrfs /dev/loop9 rw
6 1 7:0 / /bind rw - ext4 /dev/loop0 rw
";

    fn setup() -> (tempfile::TempDir, Journal, Log) {
        let dir = tempfile::tempdir().unwrap();
        let mut journal = Journal::new(dir.path());
        journal.begin_freeze().unwrap();
        let log = Log::open(&dir.path().join("log"), false);
        (dir, journal, log)
    }

    fn fake(errors: &[(&str, Errno)]) -> Fake {
        Fake {
            mountinfo: MOUNTINFO.into(),
            freeze_errors: errors.iter().map(|(p, e)| (PathBuf::from(p), *e)).collect(),
            ..Fake::default()
        }
    }

    #[test]
    fn all_filesystems_children_first_thaw_in_mount_order() {
        let fs = fake(&[]);
        let (_dir, mut journal, log) = setup();
        let t = targets(&fs, &[]).unwrap();
        let frozen = freeze_all(&fs, &t, &mut journal, &log).unwrap();
        assert_eq!(frozen, ["/c", "/a/b", "/a", "/"].map(PathBuf::from));
        assert!(thaw_all(&fs, &frozen, &log).is_empty());
        assert_eq!(
            *fs.calls.borrow(),
            [
                "freeze /c",
                "freeze /a/b",
                "freeze /a",
                "freeze /",
                "thaw /",
                "thaw /a",
                "thaw /a/b",
                "thaw /c"
            ]
        );
        let crate::phase::journal::Recorded::Unthawed(held) = journal.read() else {
            panic!()
        };
        assert_eq!(held.filesystems, frozen);
    }

    #[test]
    fn unsupported_and_busy_are_skipped_and_never_thawed() {
        let fs = fake(&[("/a/b", Errno::EOPNOTSUPP), ("/a", Errno::EBUSY)]);
        let (_dir, mut journal, log) = setup();
        let t = targets(&fs, &[]).unwrap();
        let frozen = freeze_all(&fs, &t, &mut journal, &log).unwrap();
        assert_eq!(frozen, ["/c", "/"].map(PathBuf::from));
        let crate::phase::journal::Recorded::Unthawed(held) = journal.read() else {
            panic!()
        };
        assert_eq!(
            held.filesystems, frozen,
            "skipped ones are not recorded as ours"
        );
        thaw_all(&fs, &frozen, &log);
        assert!(!fs.calls.borrow().iter().any(|c| c == "thaw /a"));
    }

    #[test]
    fn a_failure_thaws_what_was_frozen_before_it() {
        let fs = fake(&[("/a", Errno::EIO)]);
        let (_dir, mut journal, log) = setup();
        let t = targets(&fs, &[]).unwrap();
        let err = freeze_all(&fs, &t, &mut journal, &log).unwrap_err();
        assert_eq!(err.mountpoint, PathBuf::from("/a"));
        assert!(
            err.to_string()
                .starts_with("cannot freeze /a: FIFREEZE failed: I/O error"),
            "{err}"
        );
        assert!(fs.frozen.borrow().is_empty(), "rolled back");
        assert_eq!(
            *fs.calls.borrow(),
            [
                "freeze /c",
                "freeze /a/b",
                "freeze /a",
                "thaw /a/b",
                "thaw /c"
            ]
        );
    }

    #[test]
    fn thaw_of_a_filesystem_not_frozen_is_no_failure() {
        let fs = fake(&[]);
        let (_dir, _journal, log) = setup();
        assert!(thaw_all(&fs, &[PathBuf::from("/a")], &log).is_empty());
    }
}
