//! The run log (this file), the events written to it, syslog or journald
//! (`event`), and the small JSON writer they share (`json`).
//!
//! One appended file holds the runner's own lines and the hooks' output.
//! Logging never fails a phase: when the file cannot be opened or written,
//! lines go to syslog, and without syslog to stderr.

pub mod event;
pub mod json;

use std::cell::{Cell, RefCell};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::syslog::{Facility, LogFlags, Priority, Severity};

use crate::config::{LogFormat, LogTarget};
use crate::log::event::{Event, Level};
use crate::text::escape_path;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sink {
    File,
    Syslog,
    Stderr,
}

pub struct Log {
    path: PathBuf,
    /// Why the file is not to be opened at all (`Settings::log_refused`).
    refused: Option<String>,
    file: Option<File>,
    sink: Cell<Sink>,
    /// While filesystems are frozen, lines wait here: the log may live on one
    /// of them, and a write there would block until the thaw.
    deferred: RefCell<Option<Deferred>>,
    format: LogFormat,
    target: LogTarget,
}

/// Lines kept while frozen: in memory, and copied to a spill file on tmpfs
/// (the state dir) so that a runner killed while frozen loses none: whoever
/// thaws appends the spill file to the log.
#[derive(Default)]
struct Deferred {
    bytes: Vec<u8>,
    /// Events for syslog or journald: a daemon that writes to a frozen disk
    /// stops reading its socket, and a send to it would block.
    events: Vec<Event>,
    spill: Option<(PathBuf, File)>,
}

impl Deferred {
    fn push(&mut self, bytes: &[u8]) {
        self.bytes.extend_from_slice(bytes);
        if let Some((_, f)) = self.spill.as_mut() {
            let _ = f.write_all(bytes);
        }
    }
}

/// Opens `path` to append (created with mode 0600), never through a final
/// symlink, and only a regular file: a link or a FIFO planted at the log's
/// or the spill file's name by whoever may write that directory is refused.
fn open_append(path: &Path) -> std::io::Result<File> {
    open_regular(path, true)
}

fn open_regular(path: &Path, append: bool) -> std::io::Result<File> {
    let file = OpenOptions::new()
        .read(!append)
        .append(append)
        .create(append)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    // Appended to: a file of ours by one name only. In a directory a
    // system group may write (Ubuntu's /var/log) a member could have put
    // its own file, or another name of a file of root's, there.
    if append {
        use std::os::unix::fs::MetadataExt;
        if meta.uid() != nix::unistd::geteuid().as_raw() {
            return Err(std::io::Error::other("owned by another user"));
        }
        if meta.nlink() != 1 {
            return Err(std::io::Error::other("another name links to it"));
        }
    }
    Ok(file)
}

impl Log {
    /// Opens (creating with mode 0600) the log at `path` (unit tests; a run
    /// opens the one its settings name, [`Log::open_of`]). A missing parent is
    /// created only for the per-user fallback location, never under /var.
    #[cfg(test)]
    pub fn open(path: &Path, create_parent: bool) -> Log {
        Log::open_path(path, None, create_parent)
    }

    /// A log that keeps lines in memory and does not touch the file yet:
    /// opening a file for writing on a frozen filesystem blocks until the
    /// thaw, so whatever may run while something is frozen starts this way
    /// and calls [`Log::attach`] once it is safe.
    pub fn deferred(path: &Path) -> Log {
        Log {
            path: path.to_path_buf(),
            refused: None,
            file: None,
            sink: Cell::new(Sink::File),
            deferred: RefCell::new(Some(Deferred::default())),
            format: LogFormat::Text,
            target: LogTarget::File,
        }
    }

    /// The log a run's settings name, deferred ([`Log::deferred`]), in their
    /// format and target; never opened when the settings refuse its file.
    pub fn of(settings: &crate::config::Settings) -> Log {
        let mut log =
            Log::deferred(&settings.log_file).styled(settings.log_format, settings.log_target);
        log.refused = settings.log_refused.clone();
        log
    }

    /// [`Log::of`], opened at once.
    pub fn open_of(settings: &crate::config::Settings, create_parent: bool) -> Log {
        let mut log = Log::of(settings);
        log.attach(create_parent);
        *log.deferred.borrow_mut() = None;
        log
    }

    /// The log at `path` in the default style, opened at once, unless
    /// `refused` says why not (then syslog): for a run that stops before it
    /// has settings (its config is unusable).
    pub fn open_path(path: &Path, refused: Option<String>, create_parent: bool) -> Log {
        let mut log = Log::deferred(path);
        log.refused = refused;
        log.attach(create_parent);
        *log.deferred.borrow_mut() = None;
        log
    }

    /// Sets the format (`log_format`) and where the runner's own events go
    /// (`log_target`); hook output always goes to the file.
    pub fn styled(mut self, format: LogFormat, target: LogTarget) -> Log {
        self.format = format;
        self.target = target;
        self
    }

    /// Whether lines are JSON objects (hook output is then wrapped too).
    pub fn is_json(&self) -> bool {
        self.format == LogFormat::Json
    }

    /// Opens the file of a [`Log::deferred`] log; lines stay deferred until
    /// [`Log::write_deferred`].
    pub fn attach(&mut self, create_parent: bool) {
        if let Some(why) = &self.refused {
            if self.sink.get() == Sink::File {
                self.fall_back(&format!(
                    "log {} not opened: {why}",
                    escape_path(&self.path)
                ));
            }
            return;
        }
        if create_parent && let Some(parent) = self.path.parent() {
            let _ = fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent);
        }
        match open_append(&self.path) {
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

    /// Appends whole lines of a hook's output, as `output` made them (escaped
    /// text lines, or JSON events). Without a usable log file they are
    /// dropped: hook output is never sent to the runner's own streams, which
    /// qemu-ga 9.1+ reads until EOF.
    pub fn output(&self, bytes: &[u8]) {
        if let Some(deferred) = self.deferred.borrow_mut().as_mut() {
            deferred.push(bytes);
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

    /// From now on keep lines (filesystems are about to freeze), in memory
    /// and in `spill`, a file on tmpfs.
    pub fn defer(&self, spill: Option<&Path>) {
        let spill = spill.and_then(|p| open_append(p).ok().map(|f| (p.to_path_buf(), f)));
        *self.deferred.borrow_mut() = Some(Deferred {
            spill,
            ..Deferred::default()
        });
    }

    /// Writes the lines kept since [`Log::defer`] and writes directly again.
    pub fn write_deferred(&self) {
        let deferred = self.deferred.borrow_mut().take();
        if let Some(deferred) = deferred {
            self.write_file(&deferred.bytes);
            for event in deferred.events {
                self.event(event);
            }
            if let Some((path, _)) = deferred.spill {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Leaves the kept lines in the spill file for whoever thaws later: this
    /// process exits while frozen.
    pub fn park(&self) {
        self.deferred.borrow_mut().take();
    }

    /// Appends lines parked by an earlier run, once filesystems are thawed,
    /// ahead of any lines deferred now.
    pub fn unpark(&self, path: &Path) {
        let read = || -> std::io::Result<Vec<u8>> {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut open_regular(path, false)?, &mut bytes)?;
            Ok(bytes)
        };
        if let Ok(bytes) = read() {
            self.write_file(&bytes);
            let _ = fs::remove_file(path);
        }
    }

    /// Records one event: to syslog or the journal when so configured, else
    /// (or when the journal cannot be reached) as one line of the file,
    /// written in a single write.
    pub fn event(&self, event: Event) {
        if self.target != LogTarget::File
            && let Some(deferred) = self.deferred.borrow_mut().as_mut()
        {
            // Parked (the runner exits frozen), it reaches the file instead.
            if let Some((_, f)) = deferred.spill.as_mut() {
                let _ = f.write_all(event.text().as_bytes());
            }
            deferred.events.push(event);
            return;
        }
        match self.target {
            LogTarget::Syslog => return crate::log::event::to_syslog(&event),
            LogTarget::Journald if event::to_journald(&event) => return,
            _ => {}
        }
        let text = match self.format {
            LogFormat::Text => event.text(),
            LogFormat::Json => event.json(),
        };
        if let Some(deferred) = self.deferred.borrow_mut().as_mut() {
            deferred.push(text.as_bytes());
            return;
        }
        if self.sink.get() == Sink::File
            && let Some(mut f) = self.file.as_ref()
        {
            match f.write_all(text.as_bytes()) {
                Ok(()) => return,
                Err(e) => self.fall_back(&format!(
                    "cannot write log {}: {e}",
                    escape_path(&self.path)
                )),
            }
        }
        self.emit_fallback(Severity::LOG_INFO, &event.message);
    }

    /// An event monitoring must see even where nobody reads the log file:
    /// as [`Log::event`], and to syslog too when events go to the file (to
    /// the journal they are seen; syslog there is the journal again, and
    /// the event would be in it twice).
    pub fn alert(&self, event: Event) {
        if self.target == LogTarget::File {
            event::to_syslog(&event);
        }
        self.event(event);
    }

    /// A plain message.
    pub fn line(&self, msg: &str) {
        self.event(Event::message(msg));
    }

    pub fn warn(&self, msg: &str) {
        self.event(Event::message(msg).level(Level::Warning));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deferred_log_keeps_syslog_events_until_the_thaw() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::deferred(&dir.path().join("log")).styled(LogFormat::Text, LogTarget::Syslog);
        log.line("while frozen");
        log.output(b"hook output\n");
        {
            let deferred = log.deferred.borrow();
            let d = deferred.as_ref().unwrap();
            assert_eq!(d.events.len(), 1, "not sent while frozen");
            assert_eq!(d.bytes, b"hook output\n");
        }
        log.write_deferred();
        assert!(log.deferred.borrow().is_none());
    }
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lines_are_appended_with_a_date_and_the_file_is_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
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
        // Deferred lines reach the file only when written out.
        let log = Log::open(&path, false);
        let spill = dir.join("spill");
        log.defer(Some(&spill));
        log.line("while frozen");
        assert!(
            fs::read_to_string(&spill)
                .unwrap()
                .ends_with(": while frozen\n")
        );
        assert!(!fs::read_to_string(&path).unwrap().contains("while frozen"));
        log.write_deferred();
        assert!(
            fs::read_to_string(&path)
                .unwrap()
                .ends_with(": while frozen\n")
        );
    }
}
