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
    budget: Budget,
    /// The hook, for JSON output lines.
    label: String,
    lines: Lines,
}

/// What the log takes of one hook's output: at most `limit` bytes per hook
/// and run (`None`: everything), counted across the runner and its relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Budget {
    limit: Option<u64>,
    kept: u64,
    dropped: u64,
}

impl Budget {
    fn new(limit: Option<u64>) -> Budget {
        Budget {
            limit,
            kept: 0,
            dropped: 0,
        }
    }

    /// Of `n` bytes read, how many the log takes; the rest count as dropped.
    fn admit(&mut self, n: usize) -> usize {
        let room = self.limit.map_or(n as u64, |l| l.saturating_sub(self.kept));
        let keep = (n as u64).min(room) as usize;
        self.kept += keep as u64;
        self.dropped += (n - keep) as u64;
        keep
    }

    /// The line that says what was dropped, if anything was.
    fn cut_note(&self, label: &str) -> Option<String> {
        (self.dropped > 0).then(|| {
            format!(
                "{label}: output cut at {} (output_limit); {} more discarded",
                format_size(self.limit.unwrap_or(0)),
                format_size(self.dropped)
            )
        })
    }
}

/// A line longer than this without a newline is logged in pieces of this
/// size (so an unlimited output keeps bounded memory).
const LONGEST_LINE: usize = 64 * 1024;

/// How much of a failed hook's last line the one error line carries.
const LAST_LINE: usize = 200;

/// Output bytes cut into log lines (see the module's doc).
struct Lines {
    partial: Vec<u8>,
    /// The last line that was not blank (its first [`LAST_LINE`] bytes):
    /// what a failed hook said last, for the one error line.
    last: Vec<u8>,
    /// JSON mode: the hook's name for the output events.
    json_label: Option<String>,
    /// Text mode: put in front of each line (`[NAME] ` for hooks that run
    /// at once, so that each line says whose it is).
    prefix: String,
}

impl Lines {
    fn new(json_label: Option<String>) -> Lines {
        Lines {
            partial: Vec::new(),
            last: Vec::new(),
            json_label,
            prefix: String::new(),
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

    fn remember(&mut self, line: &[u8]) {
        if line.iter().any(|b| !b.is_ascii_whitespace()) {
            self.last = line[..line.len().min(LAST_LINE)].to_vec();
        }
    }

    fn format(&mut self, line: &[u8]) -> Vec<u8> {
        self.remember(line);
        match &self.json_label {
            Some(hook) => crate::log::event::output_json(hook, line).into_bytes(),
            None => {
                let mut text = self.prefix.clone().into_bytes();
                text.extend(crate::text::escape_line(line).into_bytes());
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
            budget: Budget::new(limit),
            label,
            lines: Lines::new(None),
        };
        Ok((capture, write))
    }

    /// Text lines get `[label] ` in front, from now on.
    pub fn prefix_lines(&mut self, label: &str) {
        self.lines.prefix = format!("[{label}] ");
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
                    let keep = self.budget.admit(n);
                    if keep > 0 {
                        self.emit(log, &buf[..keep]);
                    }
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

    /// The last line the hook printed that was not blank (escaped, at most
    /// [`LAST_LINE`] bytes of it), once its output was taken.
    pub fn last_line(&self) -> Option<String> {
        (!self.lines.last.is_empty()).then(|| crate::text::escape_line(&self.lines.last))
    }

    /// After the hook ended: takes what is left, hands the pipe to a relay
    /// if something still holds it open, and logs what was cut. Returns how
    /// many bytes the hook wrote (kept or not) and its last line.
    pub fn finish(mut self, log: &Log, label: &str) -> (u64, Option<String>) {
        self.pump(log);
        if self.read.is_none() {
            self.lines.finish(&mut |line| log.output(line));
        }
        let written = self.budget.kept + self.budget.dropped;
        let last = self.last_line();
        if let Some(note) = self.budget.cut_note(label) {
            log.line(&note);
        }
        let Some(read) = self.read.take() else {
            return (written, last);
        };
        // The relay goes on with what is left of the budget, and with the
        // line the hook began (it gets the rest of it); it notes only what
        // it drops itself.
        let budget = Budget {
            dropped: 0,
            ..self.budget
        };
        self.lines.json_label = log.is_json().then(|| self.label.clone());
        let lines = std::mem::replace(&mut self.lines, Lines::new(None));
        let handed = match log.file_fd() {
            Some(log_fd) => crate::sys::detach(&[read.as_fd(), log_fd], |fds| {
                relay(fds[0], Some(fds[1]), budget, lines, label)
            }),
            None => crate::sys::detach(&[read.as_fd()], |fds| {
                relay(fds[0], None, budget, lines, label)
            }),
        };
        match handed {
            Ok(()) => log.line(&format!(
                "{label} left processes holding its output open; a detached relay logs what they print"
            )),
            Err(e) => log.warn(&format!(
                "{label} left processes holding its output open, and no relay could start ({e}); they may get SIGPIPE"
            )),
        }
        (written, last)
    }
}

/// The relay's loop, in the detached process: copy until every writer is
/// gone, within what is left of the limit.
fn relay(
    read: BorrowedFd<'_>,
    log: Option<BorrowedFd<'_>>,
    mut budget: Budget,
    mut lines: Lines,
    label: &str,
) {
    let _ = fcntl(read, FcntlArg::F_SETFL(OFlag::empty()));
    let mut buf = [0u8; 64 * 1024];
    let json = lines.json_label.is_some();
    let mut write = |line: &[u8]| {
        if let Some(fd) = log {
            write_all(fd, line);
        }
    };
    loop {
        match nix::unistd::read(read, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let keep = budget.admit(n);
                if keep > 0 {
                    lines.push(&buf[..keep], &mut write);
                }
            }
            Err(Errno::EINTR) => {}
            Err(_) => break,
        }
    }
    lines.finish(&mut write);
    if let (Some(fd), Some(note)) = (log, budget.cut_note(label)) {
        let note = crate::log::event::Event::message(note);
        let line = if json { note.json() } else { note.text() };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut lines = Lines::new(None);
        let mut write = |l: &[u8]| out.push(String::from_utf8(l.to_vec()).unwrap());
        for c in chunks {
            lines.push(c, &mut write);
        }
        lines.finish(&mut write);
        out
    }

    #[test]
    fn output_becomes_whole_escaped_lines() {
        // A line split across reads is one line; control characters but tab
        // are escaped; a last line without a newline gets one.
        assert_eq!(
            lines_of(&[b"one\ntw", b"o\tx\n", b"\x1b[2Jforged\rline"]),
            ["one\n", "two\tx\n", "\\u{1b}[2Jforged\\rline\n"]
        );
        assert!(lines_of(&[]).is_empty());
    }

    #[test]
    fn a_line_without_end_is_cut_at_the_longest_line() {
        let long = vec![b'x'; LONGEST_LINE + 10];
        let out = lines_of(&[&long]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), LONGEST_LINE + 1);
        assert_eq!(out[1], format!("{}\n", "x".repeat(10)));
    }

    #[test]
    fn the_budget_is_kept_across_reads_and_says_what_it_dropped() {
        let mut b = Budget::new(Some(10));
        assert_eq!(b.cut_note("h"), None);
        assert_eq!((b.admit(6), b.admit(6), b.admit(3)), (6, 4, 0));
        assert_eq!((b.kept, b.dropped), (10, 5));
        assert_eq!(
            b.cut_note("h").unwrap(),
            format!(
                "h: output cut at {} (output_limit); {} more discarded",
                format_size(10),
                format_size(5)
            )
        );
        let mut unlimited = Budget::new(None);
        assert_eq!(unlimited.admit(1 << 20), 1 << 20);
    }

    #[test]
    fn a_capture_logs_what_the_pipe_carried_within_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let log = Log::open(&path, false);
        let (mut capture, write) = Capture::new(Some(8), "h".into()).unwrap();
        nix::unistd::write(&write, b"abc\ndefghij\n").unwrap();
        drop(write);
        capture.pump(&log);
        assert_eq!(capture.finish(&log, "h").0, 12);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["abc", "defg"]);
        assert!(
            lines[2].ends_with("h: output cut at 8 bytes (output_limit); 4 bytes more discarded"),
            "{text}"
        );
    }
}
