//! Opening a hook for execution: open once, check the open file (type,
//! execute bit, owner and mode of it and of the directories above it, what
//! kind of program it is), and keep it open so that this same file is what
//! gets executed: an ELF program through the descriptor itself, a script by
//! its path once that path is seen to still name this file.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::trust::Policy;

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
    pub fn still_at(&self, path: &Path) -> Result<(), String> {
        let now = std::fs::metadata(path)
            .map_err(|e| format!("was replaced after it was checked ({e})"))?;
        if (now.dev(), now.ino()) != self.id {
            return Err(
                "was replaced after it was checked: another file is at its path now".into(),
            );
        }
        Ok(())
    }
}

/// Opens and checks the hook at `path`. The error is the reason it must not
/// run, as a phrase for the log and the summary line.
pub fn open(path: &Path, policy: &Policy) -> Result<Opened, String> {
    open_in(path, policy, Path::new("/"))
}

/// [`open`] for a hook of the system mounted at `root` (`check --root`):
/// its `#!` interpreter is looked for under `root`.
pub fn open_in(path: &Path, policy: &Policy, root: &Path) -> Result<Opened, String> {
    // O_NONBLOCK: an entry swapped for a FIFO since the dir was read must not
    // block the open; no effect on a regular file.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("cannot be opened: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot be examined: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err("is not executable".into());
    }
    policy
        .check_opened(path, &meta)
        .map_err(|u| format!("is not trusted: {u}"))?;
    let mut head = [0u8; SHEBANG_MAX];
    let n = read_head(&file, &mut head).map_err(|e| format!("cannot be read: {e}"))?;
    let (kind, interpreter) = classify(&head[..n], meta.len(), root)?;
    // The interpreter runs as root with the hook: judged as the hook is. A
    // file without #! is handed to /bin/sh.
    let interpreter = match kind {
        Kind::Shell => Some(root.join("bin/sh")),
        _ => interpreter,
    };
    if let Some(interpreter) = interpreter {
        policy.check_interpreter(&interpreter).map_err(|u| {
            let named = match kind {
                Kind::Shell => "is run by /bin/sh (no #! line)".to_string(),
                _ => format!(
                    "names interpreter {} in its #! line",
                    crate::hooks::escape_path(&interpreter)
                ),
            };
            format!("{named}, which is not trusted: {u}")
        })?;
    }
    Ok(Opened {
        id: (meta.dev(), meta.ino()),
        file,
        kind,
    })
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
/// and for a script, where its interpreter is.
fn classify(head: &[u8], len: u64, root: &Path) -> Result<(Kind, Option<PathBuf>), String> {
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = match rest.iter().position(|&b| b == b'\n') {
            Some(end) => &rest[..end],
            None if len as usize > head.len() => {
                return Err(format!(
                    "has a #! line longer than {} bytes, the kernel's limit",
                    SHEBANG_MAX - 1
                ));
            }
            None => rest,
        };
        let interpreter = line
            .split(|b| *b == b' ' || *b == b'\t')
            .find(|w| !w.is_empty())
            .ok_or("has a #! line that names no interpreter")?;
        let interpreter = Path::new(OsStr::from_bytes(interpreter));
        let inside = root.join(interpreter.strip_prefix("/").unwrap_or(interpreter));
        if !inside.exists() {
            return Err(format!(
                "names interpreter {} in its #! line, which does not exist",
                crate::hooks::escape_path(interpreter)
            ));
        }
        return Ok((Kind::Script, Some(inside)));
    }
    if head.starts_with(b"\x7fELF") {
        return Ok((Kind::Elf, None));
    }
    if head.contains(&0) {
        return Err("is binary data: neither a #! script nor an ELF executable".into());
    }
    Ok((Kind::Shell, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classify(head: &[u8], len: u64, root: &Path) -> Result<Kind, String> {
        super::classify(head, len, root).map(|(kind, _)| kind)
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
}
