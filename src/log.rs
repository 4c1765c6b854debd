//! The run log: one appended file shared by the runner's own lines and the
//! hooks' output. Logging never fails a phase: when the file cannot be opened or
//! written, lines go to syslog, and without syslog to stderr.

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::syslog::{Facility, LogFlags, Priority, Severity};

use crate::hooks::escape_path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    File,
    Syslog,
    Stderr,
}

pub struct Log {
    path: PathBuf,
    file: Option<File>,
    sink: Cell<Sink>,
    /// While filesystems are frozen, lines wait here: the log may live on one
    /// of them, and a write there would block until the thaw.
    held: RefCell<Option<Vec<u8>>>,
}

impl Log {
    /// Opens (creating with mode 0600) the log at `path`. A missing parent is
    /// created only for the per-user fallback location, never under /var.
    pub fn open(path: &Path, create_parent: bool) -> Log {
        let mut log = Log::held(path);
        log.attach(create_parent);
        *log.held.borrow_mut() = None;
        log
    }

    /// A log that keeps lines in memory and does not touch the file yet:
    /// opening a file for writing on a frozen filesystem blocks until the
    /// thaw, so whatever may run while something is frozen starts this way
    /// and calls [`Log::attach`] once it is safe.
    pub fn held(path: &Path) -> Log {
        Log {
            path: path.to_path_buf(),
            file: None,
            sink: Cell::new(Sink::File),
            held: RefCell::new(Some(Vec::new())),
        }
    }

    /// Opens the file of a [`Log::held`] log; lines stay held until
    /// [`Log::release`].
    pub fn attach(&mut self, create_parent: bool) {
        if create_parent && let Some(parent) = self.path.parent() {
            let _ = fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent);
        }
        match OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
        {
            Ok(f) => self.file = Some(f),
            Err(e) => self.fall_back(&format!("cannot open log {}: {e}", escape_path(&self.path))),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open log file while it is usable: where a detached relay writes.
    pub fn file_fd(&self) -> Option<BorrowedFd<'_>> {
        match (self.sink.get(), &self.file) {
            (Sink::File, Some(f)) => Some(f.as_fd()),
            _ => None,
        }
    }

    /// Appends a hook's output as it is. Without a usable log file it is
    /// dropped: hook output is never sent to the runner's own streams, which
    /// qemu-ga 9.1+ reads until EOF.
    pub fn output(&self, bytes: &[u8]) {
        if let Some(held) = self.held.borrow_mut().as_mut() {
            held.extend_from_slice(bytes);
            return;
        }
        self.write_file(bytes);
    }

    fn write_file(&self, bytes: &[u8]) {
        if self.sink.get() != Sink::File {
            return;
        }
        if let Some(mut f) = self.file.as_ref()
            && let Err(e) = f.write_all(bytes)
        {
            self.fall_back(&format!(
                "cannot write log {}: {e}",
                escape_path(&self.path)
            ));
        }
    }

    /// From now on keep lines in memory (filesystems are about to freeze).
    pub fn hold(&self) {
        self.held.borrow_mut().get_or_insert_with(Vec::new);
    }

    /// Writes the lines kept since [`Log::hold`] and writes directly again.
    pub fn release(&self) {
        let held = self.held.borrow_mut().take();
        if let Some(bytes) = held {
            self.write_file(&bytes);
        }
    }

    /// Hands the kept lines to a file (in the state dir, on tmpfs) for
    /// whoever thaws later, when this process exits while frozen.
    pub fn park(&self, path: &Path) {
        let held = self.held.borrow_mut().take();
        if let Some(bytes) = held {
            let _ = fs::write(path, bytes);
        }
    }

    /// Appends lines parked by an earlier run, once filesystems are thawed,
    /// ahead of any lines held now.
    pub fn unpark(&self, path: &Path) {
        if let Ok(bytes) = fs::read(path) {
            self.write_file(&bytes);
            let _ = fs::remove_file(path);
        }
    }

    /// Appends one line, `<date>: <msg>`, in a single write.
    pub fn line(&self, msg: &str) {
        if let Some(held) = self.held.borrow_mut().as_mut() {
            held.extend_from_slice(format!("{}: {msg}\n", timestamp()).as_bytes());
            return;
        }
        if self.sink.get() == Sink::File
            && let Some(mut f) = self.file.as_ref()
        {
            let text = format!("{}: {msg}\n", timestamp());
            match f.write_all(text.as_bytes()) {
                Ok(()) => return,
                Err(e) => self.fall_back(&format!(
                    "cannot write log {}: {e}",
                    escape_path(&self.path)
                )),
            }
        }
        self.emit_fallback(Severity::LOG_INFO, msg);
    }

    pub fn warn(&self, msg: &str) {
        self.line(&format!("warning: {msg}"));
    }

    fn fall_back(&self, why: &str) {
        let sink = if Path::new("/dev/log").exists() {
            let _ = nix::syslog::openlog(
                Some(c"fsfreeze-hook"),
                LogFlags::LOG_PID,
                Facility::LOG_DAEMON,
            );
            Sink::Syslog
        } else {
            Sink::Stderr
        };
        self.sink.set(sink);
        self.emit_fallback(
            Severity::LOG_WARNING,
            &format!(
                "{why}; logging to {}",
                match sink {
                    Sink::Syslog => "syslog",
                    _ => "stderr",
                }
            ),
        );
    }

    fn emit_fallback(&self, severity: Severity, msg: &str) {
        match self.sink.get() {
            Sink::Syslog => {
                let pri = Priority::new(severity, Facility::LOG_DAEMON);
                let _ = nix::syslog::syslog(pri, &msg);
            }
            _ => {
                let _ = writeln!(std::io::stderr(), "fsfreeze-hook: {msg}");
            }
        }
    }
}

/// Local time with milliseconds and offset: sortable, unambiguous across
/// time-zone changes.
pub fn timestamp() -> String {
    chrono::Local::now()
        .format("%Y-%m-%dT%H:%M:%S%.3f%:z")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lines_are_appended_with_a_date_and_the_file_is_private() {
        let dir = std::env::temp_dir().join(format!("fh-log-{}", std::process::id()));
        let path = dir.join("sub/x.log");
        let log = Log::open(&path, true);
        log.line("one");
        log.warn("two");
        drop(log);
        Log::open(&path, false).line("three");
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].ends_with(": one"));
        assert!(lines[1].ends_with(": warning: two"));
        assert!(lines[2].ends_with(": three"));
        assert!(lines[0].as_bytes()[4] == b'-' && lines[0].as_bytes()[10] == b'T');
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Held lines reach the file only when released.
        let log = Log::open(&path, false);
        log.hold();
        log.line("while frozen");
        assert!(!fs::read_to_string(&path).unwrap().contains("while frozen"));
        log.release();
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .ends_with(": while frozen\n")
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
