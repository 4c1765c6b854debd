//! Which entries of the hooks dir run, in which order, and why the others do not.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Name endings the stock script skips (QEMU scripts/qemu-guest-agent/fsfreeze-hook),
/// then the leftovers of other package managers and editors: ucf (Debian config
/// merges), pacman, apk, vim swap files, and names admins use to park a hook.
const IGNORED_SUFFIXES: &[&str] = &[
    // stock list
    "~",
    ".bak",
    ".orig",
    ".rpmnew",
    ".rpmorig",
    ".rpmsave",
    ".sample",
    ".dpkg-old",
    ".dpkg-new",
    ".dpkg-tmp",
    ".dpkg-dist",
    ".dpkg-bak",
    ".dpkg-backup",
    ".dpkg-remove",
    // ours
    ".ucf-old",
    ".ucf-new",
    ".ucf-dist",
    ".pacnew",
    ".pacsave",
    ".pacorig",
    ".apk-new",
    ".swp",
    ".swo",
    ".save",
    ".old",
    ".disabled",
];

/// One hook that will run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub name: OsString,
    pub path: PathBuf,
}

impl Hook {
    /// The name as text for logs and messages, with control characters and
    /// invalid UTF-8 escaped so one hook is always one line.
    pub fn display_name(&self) -> String {
        crate::text::escape(&self.name)
    }
}

/// Why an entry of the hooks dir does not run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    Dotfile,
    IgnoredSuffix(&'static str),
    EditorLeftover,
    Directory,
    NotRegular(&'static str),
    NotExecutable,
    BrokenSymlink,
    Unreadable(String),
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::Dotfile => write!(f, "dotfile"),
            SkipReason::IgnoredSuffix(s) => write!(f, "ignored suffix \"{s}\""),
            SkipReason::EditorLeftover => write!(f, "editor leftover (#name#)"),
            SkipReason::Directory => write!(f, "directory"),
            SkipReason::NotRegular(kind) => write!(f, "not a regular file ({kind})"),
            SkipReason::NotExecutable => write!(f, "not executable"),
            SkipReason::BrokenSymlink => write!(f, "broken symlink"),
            SkipReason::Unreadable(e) => write!(f, "cannot stat: {e}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Skipped {
    pub name: OsString,
    pub reason: SkipReason,
}

/// The hooks dir, read once: what runs (byte order) and what does not.
#[derive(Clone, Debug, Default)]
pub struct Discovery {
    pub hooks: Vec<Hook>,
    pub skipped: Vec<Skipped>,
}

/// Reads the hooks dir. `Ok(None)`: it does not exist (the stock script exits 0).
pub fn discover(dir: &Path) -> io::Result<Option<Discovery>> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        names.push(entry?.file_name());
    }
    // Byte order, not the locale's collation: the same order on every machine.
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    let mut out = Discovery::default();
    for name in names {
        let path = dir.join(&name);
        match classify(&name, &path) {
            Ok(()) => out.hooks.push(Hook { name, path }),
            Err(reason) => out.skipped.push(Skipped { name, reason }),
        }
    }
    Ok(Some(out))
}

/// How many entries of [`IGNORED_SUFFIXES`] are the stock script's own.
const STOCK_SUFFIXES: usize = 14;

/// Whether the stock script would run the entry at `path`: its glob skips
/// dotfiles, its case statement the stock endings, and its test runs what
/// is a regular file (after links) with an execute bit. What `disable`
/// must name when ours passes it over.
pub fn stock_runs(name: &OsStr, path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let bytes = name.as_bytes();
    let skipped = bytes.first() == Some(&b'.')
        || IGNORED_SUFFIXES[..STOCK_SUFFIXES]
            .iter()
            .any(|s| bytes.ends_with(s.as_bytes()));
    !skipped && fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether the name alone excludes an entry; the filter applied before any
/// file is looked at.
pub fn name_verdict(name: &OsStr) -> Result<(), SkipReason> {
    let bytes = name.as_bytes();
    if bytes.first() == Some(&b'.') {
        return Err(SkipReason::Dotfile);
    }
    if let Some(s) = IGNORED_SUFFIXES
        .iter()
        .find(|s| bytes.ends_with(s.as_bytes()))
    {
        return Err(SkipReason::IgnoredSuffix(s));
    }
    // Emacs autosave files.
    if bytes.len() >= 2 && bytes.starts_with(b"#") && bytes.ends_with(b"#") {
        return Err(SkipReason::EditorLeftover);
    }
    Ok(())
}

fn classify(name: &OsStr, path: &Path) -> Result<(), SkipReason> {
    name_verdict(name)?;
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(match fs::symlink_metadata(path) {
                Ok(_) => SkipReason::BrokenSymlink,
                Err(e) => SkipReason::Unreadable(e.to_string()),
            });
        }
        Err(e) => return Err(SkipReason::Unreadable(e.to_string())),
    };
    let ft = meta.file_type();
    if ft.is_dir() {
        return Err(SkipReason::Directory);
    }
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "fifo"
        } else if ft.is_socket() {
            "socket"
        } else if ft.is_char_device() {
            "character device"
        } else if ft.is_block_device() {
            "block device"
        } else {
            "unknown type"
        };
        return Err(SkipReason::NotRegular(kind));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(SkipReason::NotExecutable);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn verdict(name: &str) -> Result<(), SkipReason> {
        name_verdict(OsStr::new(name))
    }

    #[test]
    fn suffixes_dotfiles_and_editor_leftovers_are_skipped() {
        // The full list is exercised end to end in tests/selection.rs.
        assert_eq!(verdict("x.bak"), Err(SkipReason::IgnoredSuffix(".bak")));
        assert_eq!(
            verdict("x.dpkg-old"),
            Err(SkipReason::IgnoredSuffix(".dpkg-old"))
        );
        assert_eq!(
            verdict("x.pacnew"),
            Err(SkipReason::IgnoredSuffix(".pacnew"))
        );
        assert_eq!(verdict("x~"), Err(SkipReason::IgnoredSuffix("~")));
        assert_eq!(verdict(".hidden"), Err(SkipReason::Dotfile));
        assert_eq!(verdict("#x#"), Err(SkipReason::EditorLeftover));
    }

    #[test]
    fn ordinary_names_run() {
        for name in [
            "10-app",
            "20 my sql",
            "a.sh",
            "bak",
            "#",
            "a#",
            "line\nbreak",
        ] {
            assert!(verdict(name).is_ok(), "{name:?} must run");
        }
    }

    /// The stock script's filter: its glob skips dotfiles, and its case
    /// statement skips these endings (QEMU scripts/qemu-guest-agent/fsfreeze-hook).
    fn stock_skips(name: &[u8]) -> bool {
        const STOCK: [&str; STOCK_SUFFIXES] = [
            "~",
            ".bak",
            ".orig",
            ".rpmnew",
            ".rpmorig",
            ".rpmsave",
            ".sample",
            ".dpkg-old",
            ".dpkg-new",
            ".dpkg-tmp",
            ".dpkg-dist",
            ".dpkg-bak",
            ".dpkg-backup",
            ".dpkg-remove",
        ];
        name.starts_with(b".") || STOCK.iter().any(|s| name.ends_with(s.as_bytes()))
    }

    fn file_names() -> impl Strategy<Value = Vec<u8>> {
        let byte = any::<u8>().prop_filter("not in file names", |b| *b != b'/' && *b != 0);
        let base = proptest::collection::vec(byte, 0..24);
        let ending = proptest::sample::select(
            IGNORED_SUFFIXES
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect::<Vec<_>>(),
        );
        prop_oneof![
            base.clone().prop_filter("non-empty", |n| !n.is_empty()),
            (base.clone(), ending).prop_map(|(mut b, e)| {
                b.extend(e);
                b
            }),
            base.prop_map(|b| [b".".to_vec(), b].concat()),
        ]
    }

    proptest! {
        #[test]
        fn never_runs_a_name_the_stock_script_skips(name in file_names()) {
            let verdict = name_verdict(OsStr::from_bytes(&name));
            if stock_skips(&name) {
                prop_assert!(verdict.is_err(), "{:?} would run", String::from_utf8_lossy(&name));
            }
            // Any name prints as one line.
            prop_assert!(!crate::text::escape(OsStr::from_bytes(&name)).contains('\n'));
        }
    }
}
