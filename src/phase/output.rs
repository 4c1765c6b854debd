//! A hook's output: through a pipe into the log, at most `output_limit`
//! bytes per hook and run, so a runaway hook can neither fill the disk nor
//! slow the runner (what is over the limit is read and dropped). Processes a
//! hook leaves behind (a lock holder) keep the pipe open after the hook
//! exits; a detached relay then goes on copying what they print, so they are
//! never cut off by SIGPIPE and never hold up the runner or qemu-ga.
//!
//! Output reaches the log in whole lines, each on a line of its own (a last
//! line without a newline gets one): in text mode with control characters
//! but tab escaped, so that a hook can neither forge a line of the runner's
//! nor glue its last words to one; in JSON mode as one event a line.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};

use crate::config::units::format_size;
use crate::log::Log;

pub struct Capture {
    read: Option<OwnedFd>,
    limit: Option<u64>,
    kept: u64,
    dropped: u64,
    /// The hook, for JSON output lines.
    label: String,
    lines: Lines,
}

/// A line longer than this without a newline is logged in pieces of this
/// size (so an unlimited output keeps bounded memory).
const LONGEST_LINE: usize = 64 * 1024;

/// Output bytes cut into log lines (see the module's doc).
struct Lines {
    partial: Vec<u8>,
    /// JSON mode: the hook's name for the output events.
    json_label: Option<String>,
}

impl Lines {
    fn new(json_label: Option<String>) -> Lines {
        Lines {
            partial: Vec::new(),
            json_label,
        }
    }

    /// Takes `bytes` and writes every line they complete.
    fn push(&mut self, bytes: &[u8], write: &mut impl FnMut(&[u8])) {
        self.partial.extend_from_slice(bytes);
        loop {
            let end = match self.partial.iter().position(|&b| b == b'\n') {
                Some(end) => end + 1,
                None if self.partial.len() >= LONGEST_LINE => LONGEST_LINE,
                None => return,
            };
            let line: Vec<u8> = self.partial.drain(..end).collect();
            let line = line.strip_suffix(b"\n").unwrap_or(&line);
            write(&self.format(line));
        }
    }

    /// Writes the rest, a line without its newline, as a whole line.
    fn finish(&mut self, write: &mut impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            write(&self.format(&rest));
        }
    }

    fn format(&self, line: &[u8]) -> Vec<u8> {
        match &self.json_label {
            Some(hook) => crate::log::event::output_json(hook, line).into_bytes(),
            None => {
                let mut text = crate::text::escape_line(line).into_bytes();
                text.push(b'\n');
                text
            }
        }
    }
}

impl Capture {
    /// A pipe: the capture keeps the read end, the hook gets the write end
    /// (returned) as stdout and stderr. `limit`: `None` keeps everything.
    pub fn new(limit: Option<u64>, label: String) -> io::Result<(Capture, OwnedFd)> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        // Only our end is non-blocking: the hook's writes block as usual.
        fcntl(&read, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let capture = Capture {
            read: Some(read),
            limit,
            kept: 0,
            dropped: 0,
            label,
            lines: Lines::new(None),
        };
        Ok((capture, write))
    }

    /// The read end while it is open, for polling.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.read.as_ref().map(|f| f.as_fd())
    }

    /// Moves everything readable now into the log.
    pub fn pump(&mut self, log: &Log) {
        let mut buf = [0u8; 64 * 1024];
        loop {
            let Some(fd) = &self.read else { return };
            let got = nix::unistd::read(fd, &mut buf);
            match got {
                Ok(0) => {
                    self.read = None;
                    return;
                }
                Ok(n) => {
                    let room = self.limit.map_or(n as u64, |l| l.saturating_sub(self.kept));
                    let keep = (n as u64).min(room) as usize;
                    if keep > 0 {
                        self.emit(log, &buf[..keep]);
                    }
                    self.kept += keep as u64;
                    self.dropped += (n - keep) as u64;
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => return,
                Err(_) => {
                    self.read = None;
                    return;
                }
            }
        }
    }

    fn emit(&mut self, log: &Log, bytes: &[u8]) {
        self.lines.json_label = log.is_json().then(|| self.label.clone());
        self.lines.push(bytes, &mut |line| log.output(line));
    }

    /// After the hook ended: takes what is left, hands the pipe to a relay
    /// if something still holds it open, and logs what was cut. Returns how
    /// many bytes the hook wrote (kept or not).
    pub fn finish(mut self, log: &Log, label: &str) -> u64 {
        self.pump(log);
        if self.read.is_none() {
            self.lines.finish(&mut |line| log.output(line));
        }
        let written = self.kept + self.dropped;
        if self.dropped > 0 {
            log.line(&cut_note(label, self.limit, self.dropped));
        }
        let Some(read) = self.read.take() else {
            return written;
        };
        let budget = Budget {
            limit: self.limit,
            remaining: self.limit.map(|l| l.saturating_sub(self.kept)),
            json_label: log.is_json().then(|| self.label.clone()),
            // A line the hook began is ended by the relay, which gets the
            // rest of it.
            partial: std::mem::take(&mut self.lines.partial),
        };
        let handed = match log.file_fd() {
            Some(log_fd) => crate::sys::detach(&[read.as_fd(), log_fd], |fds| {
                relay(fds[0], Some(fds[1]), budget, label)
            }),
            None => crate::sys::detach(&[read.as_fd()], |fds| relay(fds[0], None, budget, label)),
        };
        match handed {
            Ok(()) => log.line(&format!(
                "{label} left processes holding its output open; a detached relay logs what they print"
            )),
            Err(e) => log.warn(&format!(
                "{label} left processes holding its output open, and no relay could start ({e}); they may get SIGPIPE"
            )),
        }
        written
    }
}

fn cut_note(label: &str, limit: Option<u64>, dropped: u64) -> String {
    format!(
        "{label}: output cut at {} (output_limit); {} more discarded",
        format_size(limit.unwrap_or(0)),
        format_size(dropped)
    )
}

/// The limit of one hook's output and what the hook itself left of it; in
/// JSON mode, the hook's name for the output events.
#[derive(Clone)]
struct Budget {
    limit: Option<u64>,
    remaining: Option<u64>,
    json_label: Option<String>,
    /// The start of a line the hook did not end.
    partial: Vec<u8>,
}

/// The relay's loop, in the detached process: copy until every writer is
/// gone, within what is left of the limit.
fn relay(read: BorrowedFd<'_>, log: Option<BorrowedFd<'_>>, budget: Budget, label: &str) {
    let mut remaining = budget.remaining;
    let _ = fcntl(read, FcntlArg::F_SETFL(OFlag::empty()));
    let mut dropped = 0u64;
    let mut buf = [0u8; 64 * 1024];
    let mut lines = Lines::new(budget.json_label.clone());
    lines.partial = budget.partial.clone();
    let mut write = |line: &[u8]| {
        if let Some(fd) = log {
            write_all(fd, line);
        }
    };
    loop {
        match nix::unistd::read(read, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let keep = remaining.map_or(n as u64, |r| r.min(n as u64)) as usize;
                if keep > 0 {
                    lines.push(&buf[..keep], &mut write);
                }
                if let Some(r) = remaining.as_mut() {
                    *r -= keep as u64;
                }
                dropped += (n - keep) as u64;
            }
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    lines.finish(&mut write);
    if let (Some(fd), true) = (log, dropped > 0) {
        let note = crate::log::event::Event::message(cut_note(label, budget.limit, dropped));
        let line = if budget.json_label.is_some() {
            note.json()
        } else {
            note.text()
        };
        write_all(fd, line.as_bytes());
    }
}

fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}
