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

/// A filesystem a freeze froze: where it is mounted, and which one it is
/// (the st_dev of that directory when it was frozen; `None` in records of
/// older versions and for a recovery's `--all`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrozenFs {
    pub mountpoint: PathBuf,
    pub dev: Option<u64>,
}

impl FrozenFs {
    /// One a thaw finds by its path alone.
    pub fn at(mountpoint: PathBuf) -> FrozenFs {
        FrozenFs {
            mountpoint,
            dev: None,
        }
    }
}

/// Where a freeze writes down each filesystem before its FIFREEZE (the
/// journal), so that whoever thaws later knows it.
pub trait Ledger {
    /// The filesystem `dev` at `mountpoint` is about to be frozen.
    fn freezing(&mut self, mountpoint: &Path, dev: u64) -> anyhow::Result<()>;
    /// ... and was not: not ours to thaw.
    fn not_frozen(&mut self, mountpoint: &Path) -> anyhow::Result<()>;
}

pub trait Filesystems {
    fn mountinfo(&self) -> io::Result<String>;
    /// Device numbers of a block device node (for btrfs sources).
    fn block_dev(&self, source: &str) -> Option<(u32, u32)>;
    /// Which filesystem the directory at `mountpoint` is on (st_dev).
    fn device(&self, mountpoint: &Path) -> Result<u64, Errno>;
    /// FIFREEZE of filesystem `dev` through `mountpoint`; EXDEV when the
    /// path leads to another filesystem now.
    fn freeze(&self, mountpoint: &Path, dev: u64) -> Result<(), Errno>;
    /// FITHAW through `mountpoint`, of filesystem `dev` only when given
    /// (EXDEV: the path leads to another one now).
    fn thaw(&self, mountpoint: &Path, dev: Option<u64>) -> Result<(), Errno>;
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

    fn device(&self, mountpoint: &Path) -> Result<u64, Errno> {
        crate::sys::device(mountpoint)
    }

    fn freeze(&self, mountpoint: &Path, dev: u64) -> Result<(), Errno> {
        crate::sys::fifreeze(mountpoint, dev)
    }

    fn thaw(&self, mountpoint: &Path, dev: Option<u64>) -> Result<(), Errno> {
        crate::sys::fithaw(mountpoint, dev)
    }
}

/// The device-mapper name of block device `dev` (`vg-db` for LVM's `vg/db`),
/// when it is one: what its sysfs entry says.
pub fn dm_name(dev: (u32, u32)) -> Option<String> {
    dm_attribute(dev, "name")
}

/// Whether device-mapper device `dev` is suspended now (its writes wait
/// until it is resumed).
pub fn dm_suspended(dev: (u32, u32)) -> bool {
    dm_attribute(dev, "suspended").as_deref() == Some("1")
}

/// What device-mapper's sysfs says of block device `dev` (`None`: no such
/// attribute, or not a device-mapper device).
fn dm_attribute(dev: (u32, u32), name: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/sys/dev/block/{}:{}/dm/{name}", dev.0, dev.1));
    Some(text.ok()?.trim_end().to_string())
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
    pub unthawed: Vec<(FrozenFs, Errno)>,
}

impl fmt::Display for FreezeFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot freeze {}: {}",
            escape_path(&self.mountpoint),
            self.cause
        )?;
        for (frozen, e) in &self.unthawed {
            write!(f, "; and {}", thaw_failure(frozen, *e))?;
        }
        Ok(())
    }
}

/// Freezes `targets` (in mount order) children first. Each filesystem is in
/// the journal, with which one it is, before its FIFREEZE. Returns what this
/// call froze, in freeze order.
pub fn freeze_all(
    fs: &dyn Filesystems,
    targets: &[Target],
    ledger: &mut dyn Ledger,
    log: &Log,
) -> Result<Vec<FrozenFs>, FreezeFailed> {
    let mut frozen: Vec<FrozenFs> = Vec::with_capacity(targets.len());
    for t in targets.iter().rev() {
        let mp = &t.mountpoint;
        let shown = escape_path(mp);
        let fail = |frozen: &[FrozenFs], cause: String| FreezeFailed {
            mountpoint: mp.clone(),
            cause,
            unthawed: thaw_all(fs, frozen, log),
        };
        let dev = match fs.device(mp) {
            Ok(dev) => dev,
            // (An XFS that was shut down fails here, with EIO.)
            Err(e) => {
                log.line(&format!("FIFREEZE of {shown} failed: {}", e.desc()));
                return Err(fail(&frozen, format!("FIFREEZE failed: {}", e.desc())));
            }
        };
        if let Err(e) = ledger.freezing(mp, dev) {
            return Err(fail(&frozen, format!("{e:#}")));
        }
        let result = fs.freeze(mp, dev);
        if result.is_err()
            && let Err(e) = ledger.not_frozen(mp)
        {
            log.warn(&format!("{e:#}"));
        }
        match result {
            Ok(()) => {
                log.line(&format!("froze {shown} ({})", t.fstype));
                frozen.push(FrozenFs {
                    mountpoint: mp.clone(),
                    dev: Some(dev),
                });
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
            Err(Errno::EXDEV) => {
                let cause = "its path led to another filesystem when it was to be frozen";
                log.line(&format!("FIFREEZE of {shown} not done: {cause}"));
                return Err(fail(&frozen, cause.to_string()));
            }
            Err(e) => {
                log.line(&format!("FIFREEZE of {shown} failed: {}", e.desc()));
                return Err(fail(&frozen, format!("FIFREEZE failed: {}", e.desc())));
            }
        }
    }
    Ok(frozen)
}

/// Thaws `frozen` (given in freeze order) in mount order. A filesystem that
/// is not frozen (EINVAL) is no failure, unless this freeze froze it (its
/// device is known): then someone else thawed it meanwhile, a failure
/// (see [`thawed_early`]). One whose path now leads to another
/// filesystem (a directory on the way swapped for a link) is thawed through
/// another of its mounts if mountinfo has one, and is a failure if none is
/// found. Returns the failures.
pub fn thaw_all(fs: &dyn Filesystems, frozen: &[FrozenFs], log: &Log) -> Vec<(FrozenFs, Errno)> {
    let mut failed = Vec::new();
    for f in frozen.iter().rev() {
        let shown = escape_path(&f.mountpoint);
        // A path that leads elsewhere now, or nowhere: the filesystem we
        // froze may still be reached through another of its mounts.
        let result = match (fs.thaw(&f.mountpoint, f.dev), f.dev) {
            (Err(e), Some(dev)) if e != Errno::EINVAL => {
                match thaw_elsewhere(fs, dev, log, &shown) {
                    Err(Errno::EXDEV) if e != Errno::EXDEV => Err(e),
                    other => other,
                }
            }
            (result, _) => result,
        };
        match result {
            Ok(()) => log.line(&format!("thawed {shown}")),
            // Not ours (a recovery's --all, the guard's every filesystem):
            // nothing to say but that.
            Err(Errno::EINVAL) if f.dev.is_none() => log.line(&format!("{shown} was not frozen")),
            // One we froze, thawed by someone else meanwhile: what was
            // copied since may be torn. A failure, but nothing to keep.
            Err(e) => {
                log.line(&thaw_failure(f, e));
                failed.push((f.clone(), e));
            }
        }
    }
    failed
}

/// Whether a thaw's failures include a filesystem someone else thawed
/// before it (what a snapshot copied may be torn).
pub fn thawed_early(failed: &[(FrozenFs, Errno)]) -> bool {
    failed.iter().any(|(_, e)| *e == Errno::EINVAL)
}

/// How a failed FITHAW is said.
pub fn thaw_failure(f: &FrozenFs, e: Errno) -> String {
    let shown = escape_path(&f.mountpoint);
    match e {
        Errno::EINVAL => format!(
            "{shown} was no longer frozen at the thaw: someone else thawed it (another qemu-ga's thaw, fsfreeze -u, a guard); what was copied meanwhile may be torn"
        ),
        Errno::EXDEV => format!(
            "FITHAW of {shown} not done: its path leads to another filesystem now, and no other mount of the frozen one was found; it stays frozen"
        ),
        e => format!("FITHAW of {shown} failed: {}", e.desc()),
    }
}

/// FITHAW of filesystem `dev` through whichever of its mounts still leads
/// to it; EXDEV when none does.
fn thaw_elsewhere(fs: &dyn Filesystems, dev: u64, log: &Log, shown: &str) -> Result<(), Errno> {
    let text = fs.mountinfo().map_err(|_| Errno::EXDEV)?;
    for m in mounts::parse(&text) {
        match fs.thaw(&m.mountpoint, Some(dev)) {
            Err(Errno::EXDEV) | Err(Errno::ENOENT) | Err(Errno::ELOOP) | Err(Errno::ENOTDIR)
            | Err(Errno::EACCES) => continue,
            result => {
                log.warn(&format!(
                    "{shown} no longer leads to the filesystem frozen there; it was reached at {}",
                    escape_path(&m.mountpoint)
                ));
                return result;
            }
        }
    }
    Err(Errno::EXDEV)
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::phase::records::journal::Journal;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A machine in memory: a mountinfo text, per-mountpoint errors, paths
    /// that now lead to another mount's filesystem, and a record of every
    /// call. A filesystem is its mountinfo device (a bind mount shares it).
    #[derive(Default)]
    pub struct Fake {
        pub mountinfo: String,
        pub freeze_errors: HashMap<PathBuf, Errno>,
        /// `path -> other mountpoint`: where a swapped path leads now.
        pub redirect: HashMap<PathBuf, PathBuf>,
        pub frozen: RefCell<Vec<u64>>,
        pub calls: RefCell<Vec<String>>,
    }

    impl Fake {
        fn dev_at(&self, mp: &Path) -> Result<u64, Errno> {
            let mp = self.redirect.get(mp).map_or(mp, |p| p.as_path());
            mounts::parse(&self.mountinfo)
                .iter()
                .find(|m| m.mountpoint == mp)
                .map(|m| ((m.dev.0 as u64) << 20) | m.dev.1 as u64)
                .ok_or(Errno::ENOENT)
        }
    }

    impl Filesystems for Fake {
        fn mountinfo(&self) -> io::Result<String> {
            Ok(self.mountinfo.clone())
        }
        fn block_dev(&self, source: &str) -> Option<(u32, u32)> {
            (source == "/dev/loop9").then_some((7, 9))
        }
        fn device(&self, mp: &Path) -> Result<u64, Errno> {
            self.dev_at(mp)
        }
        fn freeze(&self, mp: &Path, dev: u64) -> Result<(), Errno> {
            self.calls
                .borrow_mut()
                .push(format!("freeze {}", mp.display()));
            if let Some(e) = self.freeze_errors.get(mp) {
                return Err(*e);
            }
            if self.dev_at(mp)? != dev {
                return Err(Errno::EXDEV);
            }
            let mut frozen = self.frozen.borrow_mut();
            if frozen.contains(&dev) {
                return Err(Errno::EBUSY);
            }
            frozen.push(dev);
            Ok(())
        }
        fn thaw(&self, mp: &Path, dev: Option<u64>) -> Result<(), Errno> {
            self.calls
                .borrow_mut()
                .push(format!("thaw {}", mp.display()));
            let on = self.dev_at(mp)?;
            if dev.is_some_and(|d| d != on) {
                return Err(Errno::EXDEV);
            }
            let mut frozen = self.frozen.borrow_mut();
            let before = frozen.len();
            frozen.retain(|f| *f != on);
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
        assert_eq!(paths(&frozen), ["/c", "/a/b", "/a", "/"].map(PathBuf::from));
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
        let crate::phase::records::journal::Recorded::Unthawed(held) = journal.read() else {
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
        assert_eq!(paths(&frozen), ["/c", "/"].map(PathBuf::from));
        let crate::phase::records::journal::Recorded::Unthawed(held) = journal.read() else {
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
        assert!(thaw_all(&fs, &[FrozenFs::at(PathBuf::from("/a"))], &log).is_empty());
    }

    fn paths(frozen: &[FrozenFs]) -> Vec<PathBuf> {
        frozen.iter().map(|f| f.mountpoint.clone()).collect()
    }

    #[test]
    fn a_path_swapped_after_the_freeze_thaws_the_frozen_filesystem_or_fails() {
        let target = |mp: &str, dev| Target {
            mountpoint: PathBuf::from(mp),
            dev,
            fstype: "ext4".into(),
        };
        let (_dir, mut journal, log) = setup();
        // /a/b now leads to / (a directory on the way became a link): the
        // thaw thaws no other filesystem, finds no other mount of the
        // frozen one, and fails; it stays frozen, and / was not touched.
        let mut fs = fake(&[]);
        let frozen = freeze_all(&fs, &[target("/a/b", (7, 1))], &mut journal, &log).unwrap();
        fs.redirect.insert("/a/b".into(), "/".into());
        let failed = thaw_all(&fs, &frozen, &log);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].1, Errno::EXDEV);
        assert_eq!(fs.frozen.borrow().len(), 1, "still frozen");
        assert!(thaw_failure(&failed[0].0, Errno::EXDEV).contains("it stays frozen"));
        // /a is swapped too, but /bind is another mount of /a's filesystem:
        // the thaw reaches it there.
        let mut fs = fake(&[]);
        let frozen = freeze_all(&fs, &[target("/a", (7, 0))], &mut journal, &log).unwrap();
        fs.redirect.insert("/a".into(), "/".into());
        assert!(thaw_all(&fs, &frozen, &log).is_empty());
        assert!(fs.frozen.borrow().is_empty(), "thawed through /bind");
        assert!(fs.calls.borrow().iter().any(|c| c == "thaw /bind"));
        // A path swapped between the look and the FIFREEZE: nothing frozen.
        let fs = Fake {
            redirect: [(PathBuf::from("/c"), PathBuf::from("/"))].into(),
            ..fake(&[])
        };
        let err = freeze_all(&fs, &[target("/a", (7, 0))], &mut journal, &log);
        assert!(err.is_ok(), "an unswapped path freezes");
        let dev_c = fs.device(Path::new("/c")).unwrap();
        assert_eq!(fs.freeze(Path::new("/a"), dev_c), Err(Errno::EXDEV));
    }
}
