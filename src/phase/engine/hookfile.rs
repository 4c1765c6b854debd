//! Opening a hook for execution: open once, check the open file (type,
//! execute bit, owner and mode of it and of the directories above it, what
//! kind of program it is), and keep it open so that this same file is what
//! gets executed: an ELF program through the descriptor itself, a script by
//! its path once that path is seen to still name this file.

use std::ffi::OsStr;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::phase::engine::trust::{Policy, Untrusted};

/// The kernel reads at most this much of a `#!` line (BINPRM_BUF_SIZE since
/// Linux 5.1); a longer one cannot name its interpreter reliably.
const SHEBANG_MAX: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// An ELF executable.
    Elf,
    /// A `#!` script; the kernel starts its interpreter.
    Script,
    /// Text without a `#!` line: run by /bin/sh, as the stock hook's shell did.
    Shell,
}

/// Why a hook that the name rules let through must not run. Shown as a
/// phrase after the hook's path ("... is not executable"); `check` chooses
/// its advice by the variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    CannotOpen(String),
    CannotExamine(String),
    NotRegular,
    NotExecutable,
    Untrusted(Untrusted),
    CannotRead(String),
    /// A `#!` line longer than the kernel reads.
    LongShebang,
    NoInterpreterNamed,
    /// The interpreter named by `#!` (as written) does not exist.
    MissingInterpreter(PathBuf),
    /// The interpreter (`#!`'s, or /bin/sh for a file without one) breaks a
    /// trust rule.
    /// `via`: the interpreter the hook names, when the untrusted one is
    /// further down the chain (an interpreter that is a `#!` script itself).
    UntrustedInterpreter {
        path: PathBuf,
        no_shebang: bool,
        why: Untrusted,
        via: Option<PathBuf>,
    },
    /// Its interpreters are `#!` scripts more levels deep than the kernel
    /// follows (BINPRM_MAX_RECURSION, 4): the exec would fail anyway.
    InterpreterChainTooLong(PathBuf),
    BinaryData,
    /// The path no longer names the file that was checked.
    Replaced(Option<String>),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::text::escape_path;
        match self {
            Refusal::CannotOpen(e) => write!(f, "cannot be opened: {e}"),
            Refusal::CannotExamine(e) => write!(f, "cannot be examined: {e}"),
            Refusal::NotRegular => write!(f, "is not a regular file"),
            Refusal::NotExecutable => write!(f, "is not executable"),
            Refusal::Untrusted(u) => write!(f, "is not trusted: {u}"),
            Refusal::CannotRead(e) => write!(f, "cannot be read: {e}"),
            Refusal::LongShebang => write!(
                f,
                "has a #! line longer than {} bytes, the kernel's limit",
                SHEBANG_MAX - 1
            ),
            Refusal::NoInterpreterNamed => write!(f, "has a #! line that names no interpreter"),
            Refusal::MissingInterpreter(p) => write!(
                f,
                "names interpreter {} in its #! line, which does not exist",
                escape_path(p)
            ),
            Refusal::UntrustedInterpreter {
                no_shebang: true,
                why,
                ..
            } => write!(
                f,
                "is run by /bin/sh (no #! line), which is not trusted: {why}"
            ),
            Refusal::UntrustedInterpreter {
                path,
                why,
                via: Some(via),
                ..
            } => write!(
                f,
                "names interpreter {} in its #! line, which is run by {} (its own #! line), which is not trusted: {why}",
                escape_path(via),
                escape_path(path)
            ),
            Refusal::UntrustedInterpreter { path, why, .. } => write!(
                f,
                "names interpreter {} in its #! line, which is not trusted: {why}",
                escape_path(path)
            ),
            Refusal::InterpreterChainTooLong(p) => write!(
                f,
                "names interpreter {} in its #! line, whose interpreters are #! scripts more than {MAX_CHAIN} levels deep (the kernel's limit)",
                escape_path(p)
            ),
            Refusal::BinaryData => {
                write!(
                    f,
                    "is binary data: neither a #! script nor an ELF executable"
                )
            }
            Refusal::Replaced(None) => write!(
                f,
                "was replaced after it was checked: another file is at its path now"
            ),
            Refusal::Replaced(Some(e)) => write!(f, "was replaced after it was checked ({e})"),
        }
    }
}

#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub kind: Kind,
    /// Device and inode of the checked file.
    id: (u64, u64),
}

impl Opened {
    /// Whether `path` still names the checked file (same device and inode),
    /// following symlinks as an exec of `path` does. The error is the reason
    /// it must not run, as a phrase like those of [`open`].
    pub fn still_at(&self, path: &Path) -> Result<(), Refusal> {
        let now = std::fs::metadata(path).map_err(|e| Refusal::Replaced(Some(e.to_string())))?;
        if (now.dev(), now.ino()) != self.id {
            return Err(Refusal::Replaced(None));
        }
        Ok(())
    }
}

/// Opens and checks the hook at `path`. The error is the reason it must not
/// run, as a phrase for the log and the summary line.
pub fn open(path: &Path, policy: &Policy) -> Result<Opened, Refusal> {
    open_in(path, policy, Path::new("/"))
}

/// [`open`] for a hook of the system mounted at `root` (`check --root`):
/// its `#!` interpreter is looked for under `root`.
pub fn open_in(path: &Path, policy: &Policy, root: &Path) -> Result<Opened, Refusal> {
    // O_NONBLOCK: an entry swapped for a FIFO since the dir was read must not
    // block the open; no effect on a regular file.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| Refusal::CannotOpen(e.to_string()))?;
    let meta = file
        .metadata()
        .map_err(|e| Refusal::CannotExamine(e.to_string()))?;
    if !meta.is_file() {
        return Err(Refusal::NotRegular);
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(Refusal::NotExecutable);
    }
    policy
        .check_opened(path, &meta)
        .map_err(Refusal::Untrusted)?;
    let mut head = [0u8; SHEBANG_MAX];
    // As far as fstat said it goes: no read that only finds the end.
    let want = head
        .len()
        .min(usize::try_from(meta.len()).unwrap_or(usize::MAX));
    let n = read_head(&file, &mut head[..want]).map_err(|e| Refusal::CannotRead(e.to_string()))?;
    let (kind, interpreter) = classify(&head[..n], meta.len(), root)?;
    // The interpreter runs as root with the hook: judged as the hook is, and
    // so is each interpreter of an interpreter that is a #! script itself,
    // as far as the kernel follows them.
    let first = interpreter.clone();
    let mut next = interpreter;
    let mut depth = 0;
    while let Some(interpreter) = next {
        depth += 1;
        if depth > MAX_CHAIN {
            return Err(Refusal::InterpreterChainTooLong(
                first.expect("a chain has a first link"),
            ));
        }
        policy
            .check_interpreter(&interpreter)
            .map_err(|why| Refusal::UntrustedInterpreter {
                no_shebang: kind == Kind::Shell && depth == 1,
                path: interpreter.clone(),
                why,
                via: (depth > 1).then(|| first.clone()).flatten(),
            })?;
        next = policy.interpreter_of(&interpreter, || interpreter_of(&interpreter, root))?;
    }
    Ok(Opened {
        id: (meta.dev(), meta.ino()),
        file,
        kind,
    })
}

/// How many interpreters the kernel follows from a script (the script's own
/// and those of interpreters that are scripts: BINPRM_MAX_RECURSION).
const MAX_CHAIN: usize = 4;

/// The interpreter of `interpreter`, when it is a `#!` script itself.
fn interpreter_of(interpreter: &Path, root: &Path) -> Result<Option<PathBuf>, Refusal> {
    let Ok(file) = File::open(interpreter) else {
        return Ok(None);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let mut head = [0u8; SHEBANG_MAX];
    let n = read_head(&file, &mut head).unwrap_or(0);
    if !head[..n].starts_with(b"#!") {
        return Ok(None);
    }
    classify(&head[..n], len, root).map(|(_, next)| next)
}

fn read_head(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// What kind of program the first bytes show (`len` is the file's size),
/// and, but for an ELF program, where its interpreter is: the one `#!`
/// names, or /bin/sh for a file without one.
fn classify(head: &[u8], len: u64, root: &Path) -> Result<(Kind, Option<PathBuf>), Refusal> {
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => &rest[..end],
            None if len as usize > head.len() => return Err(Refusal::LongShebang),
            None => rest,
        };
        let interpreter = line
            .split(|b| *b == b' ' || *b == b'\t')
            .find(|w| !w.is_empty())
            .ok_or(Refusal::NoInterpreterNamed)?;
        let interpreter = Path::new(OsStr::from_bytes(interpreter));
        let inside = root.join(interpreter.strip_prefix("/").unwrap_or(interpreter));
        if !inside.exists() {
            return Err(Refusal::MissingInterpreter(interpreter.to_path_buf()));
        }
        return Ok((Kind::Script, Some(inside)));
    }
    if head.starts_with(b"\x7fELF") {
        return Ok((Kind::Elf, None));
    }
    if head.contains(&0) {
        return Err(Refusal::BinaryData);
    }
    Ok((Kind::Shell, Some(root.join("bin/sh"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind, or the refusal as the log words it.
    fn classify(head: &[u8], len: u64, root: &Path) -> Result<Kind, String> {
        super::classify(head, len, root)
            .map(|(kind, _)| kind)
            .map_err(|r| r.to_string())
    }

    #[test]
    fn kinds_and_refusals() {
        assert_eq!(
            classify(b"#!/bin/sh\necho hi\n", 18, Path::new("/")),
            Ok(Kind::Script)
        );
        assert_eq!(
            classify(b"#! /bin/sh -e\n", 14, Path::new("/")),
            Ok(Kind::Script)
        );
        assert_eq!(
            classify(b"\x7fELF\x02\x01", 1000, Path::new("/")),
            Ok(Kind::Elf)
        );
        assert_eq!(
            classify(b"echo no shebang\n", 16, Path::new("/")),
            Ok(Kind::Shell)
        );
        assert_eq!(classify(b"", 0, Path::new("/")), Ok(Kind::Shell));
        let missing = classify(b"#!/usr/bin/python9 -u\n", 22, Path::new("/")).unwrap_err();
        assert!(missing.contains("/usr/bin/python9"), "{missing}");
        assert!(
            classify(b"#!\n", 3, Path::new("/"))
                .unwrap_err()
                .contains("names no interpreter")
        );
        assert!(
            classify(b"\x00\x01\x02garbage", 10, Path::new("/"))
                .unwrap_err()
                .contains("binary data")
        );
        let long = [b"#!/bin/sh ".as_slice(), &[b'x'; 300]].concat();
        let err = classify(&long[..SHEBANG_MAX], long.len() as u64, Path::new("/")).unwrap_err();
        assert!(err.contains("longer than 255 bytes"), "{err}");
    }

    #[test]
    fn a_file_without_shebang_has_bin_sh_judged_as_its_interpreter() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        std::fs::create_dir(root.path().join("bin")).unwrap();
        std::fs::create_dir(root.path().join("hooks.d")).unwrap();
        let sh = root.path().join("bin/sh");
        std::fs::write(&sh, "ELF").unwrap();
        let hook = root.path().join("hooks.d/10-plain");
        std::fs::write(&hook, "echo no shebang\n").unwrap();
        chmod(&hook, 0o755);
        chmod(&sh, 0o755);
        let policy = || Policy::current();
        assert_eq!(
            open_in(&hook, &policy(), root.path())
                .map(|o| o.kind)
                .unwrap(),
            Kind::Shell
        );
        chmod(&sh, 0o757);
        let refused = open_in(&hook, &policy(), root.path()).unwrap_err();
        assert!(
            matches!(
                &refused,
                Refusal::UntrustedInterpreter {
                    no_shebang: true,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(
            refused
                .to_string()
                .starts_with("is run by /bin/sh (no #! line), which is not trusted: "),
            "{refused}"
        );
    }
}
