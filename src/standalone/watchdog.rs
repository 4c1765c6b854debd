//! The guarantee that nothing stays frozen. A process of its own (a detached
//! grandchild of the runner, its own session, no descriptor but a pipe from
//! the runner), armed before the first FIFREEZE. It thaws exactly what the
//! journal records, then runs the thaw hooks, when:
//! - the runner dies (the pipe closes without a word: SIGKILL included);
//! - its deadline passes (`--auto-thaw`, or a snapshot's `--max-frozen` plus
//!   a margin, in case the runner is stuck);
//! - it gets SIGTERM, SIGINT or SIGHUP (a shutdown must not leave a frozen
//!   filesystem behind).
//!
//! The runner tells it `D` (done: it thawed everything itself) or `H` (handed
//! over: `freeze --fs` exits on purpose, leaving the thaw to `thaw --fs` or to
//! the deadline). `thaw` sends it SIGUSR1 when it has thawed: it then exits if
//! the journal holds no filesystem any more. Everything it needs is in memory
//! or on tmpfs: the binary is static, the journal lives under /run, and it
//! opens the log only after the thaw.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;

use crate::config::Settings;
use crate::filesystems::{self as freeze, Kernel};
use crate::log::Log;
use crate::phase::engine::runner::ThawCause;
use crate::phase::records::journal::{Journal, Recorded};
use crate::phase::setup;
use crate::phase::unfreeze::{open_log_after_thaw, thaw_hooks_locked};
use crate::sys::{self, Waiter, Wake};

const DONE: u8 = b'D';
const HAND_OVER: u8 = b'H';

pub struct Watchdog {
    tx: OwnedFd,
    pid: sys::proc::Ident,
}

impl Watchdog {
    /// Starts the watchdog and waits until it is ready (its signals are set
    /// up), so that nothing is frozen before it watches.
    pub fn arm(settings: &Settings, deadline: Option<Duration>) -> io::Result<Watchdog> {
        let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let until = deadline.map(|d| Instant::now() + d);
        let pid = sys::start_helper(&[rx.as_fd()], |fds, waiter| {
            watch(fds[0], &waiter, settings, until)
        })?;
        Ok(Watchdog { tx, pid })
    }

    pub fn pid(&self) -> sys::proc::Ident {
        self.pid
    }

    /// The runner thawed everything itself: the watchdog exits.
    pub fn done(self) {
        let _ = nix::unistd::write(&self.tx, &[DONE]);
    }

    /// The runner exits on purpose with filesystems frozen: the watchdog
    /// keeps its deadline and waits for `thaw`.
    pub fn hand_over(self) {
        let _ = nix::unistd::write(&self.tx, &[HAND_OVER]);
    }
}

/// The watchdog's life, in the detached process.
fn watch(rx: BorrowedFd<'_>, waiter: &Waiter, settings: &Settings, until: Option<Instant>) {
    let mut runner_attached = true;
    let mut until = until;
    let why = loop {
        let left = until.map(|u| u.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            if runner_attached && !holds_filesystems(settings) {
                // The runner thawed the filesystems and is busy with the thaw
                // hooks: nothing to bound any more; its death still counts.
                until = None;
                continue;
            }
            break "its deadline passed".to_string();
        }
        match waiter.wait(runner_attached.then_some(rx), left) {
            Wake::Readable => {
                let mut byte = [0u8; 1];
                match nix::unistd::read(rx, &mut byte) {
                    Ok(1) if byte[0] == DONE => return,
                    Ok(1) if byte[0] == HAND_OVER => runner_attached = false,
                    Err(nix::errno::Errno::EINTR) => {}
                    _ => break "the runner died before it thawed".to_string(),
                }
            }
            Wake::Signal(Signal::SIGUSR1) => {
                if !holds_filesystems(settings) {
                    return;
                }
            }
            Wake::Signal(Signal::SIGCHLD) | Wake::Timeout => {}
            Wake::Signal(sig) => break format!("it got {}", sig.as_str()),
        }
    };
    thaw_for(settings, waiter, &why);
}

fn holds_filesystems(settings: &Settings) -> bool {
    matches!(Journal::new(&settings.state_dir).read(), Recorded::Unthawed(h) if !h.filesystems.is_empty())
}

/// Thaws what the journal holds: filesystems first, without waiting for the
/// lock (a stuck runner may hold it; FITHAW of a filesystem already thawed
/// only says EINVAL), then, under the lock, the thaw hooks.
fn thaw_for(settings: &Settings, waiter: &Waiter, why: &str) {
    let Recorded::Unthawed(held) = Journal::new(&settings.state_dir).read() else {
        return;
    };
    let start = Instant::now();
    let mut log = Log::of(settings);
    log.line(&format!(
        "watchdog pid {}: {why}; thawing what the journal holds",
        std::process::id()
    ));
    let failed = freeze::thaw_all(&Kernel, &held.filesystems, &log);
    open_log_after_thaw(&mut log, settings);
    let mut ran = Vec::new();
    let end = thaw_hooks_locked(settings, &log, waiter, &failed, ThawCause::Thaw, &mut ran);
    crate::phase::records::metrics::record(settings, &log, "watchdog_thaw", start, &end, &ran);
    // No one reads its exit status: the log has the end.
    setup::log_end(&log, "watchdog thaw", start, &end);
}
