//! Waiting for a child, a stop signal, hook output, or a deadline, in one
//! place: the waited signals are blocked and read from a signalfd, polled
//! together with the hook's output pipe.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// What a detached helper waits for: its children, the stop signals, and
/// SIGUSR1 (its own request: release, or look again).
pub const HELPER_SIGNALS: [Signal; 5] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGUSR1,
];

/// SIGCHLD (a hook ended) and the signals that stop a run.
pub fn waited_signals() -> SigSet {
    let mut set = SigSet::empty();
    for sig in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(sig);
    }
    set
}

/// What ended a wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    Signal(Signal),
    /// The polled descriptor is readable (or at end of file).
    Readable,
    Timeout,
}

/// Waits for what wakes a helper or the runner: a signal (taken from a
/// signalfd: they stay blocked), a readable descriptor, or a timeout.
pub struct Waiter {
    fd: SignalFd,
}

impl Waiter {
    /// Needs the signals blocked first (`prepare_process`).
    pub fn new() -> std::io::Result<Waiter> {
        Waiter::from_set(&waited_signals())
    }

    /// Blocks `signals` and reads them from now on: how a detached helper
    /// (the watchdog, a hold keeper) takes over its signals.
    pub fn take_over(signals: &[Signal]) -> std::io::Result<Waiter> {
        let mut set = SigSet::empty();
        for sig in signals {
            set.add(*sig);
        }
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        Waiter::from_set(&set)
    }

    fn from_set(set: &SigSet) -> std::io::Result<Waiter> {
        let fd = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Waiter { fd })
    }

    /// Waits for a waited signal, for `input` to become readable, or for
    /// `timeout` (`None`: no limit) to pass.
    pub fn wait(&self, input: Option<BorrowedFd<'_>>, timeout: Option<Duration>) -> Wake {
        match input {
            Some(fd) => self.wait_any(&[fd], timeout),
            None => self.wait_any(&[], timeout),
        }
    }

    /// [`Waiter::wait`] for any of `inputs` (the outputs of hooks that run
    /// at once).
    pub fn wait_any(&self, inputs: &[BorrowedFd<'_>], timeout: Option<Duration>) -> Wake {
        let mut fds = vec![PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        fds.extend(inputs.iter().map(|fd| PollFd::new(*fd, PollFlags::POLLIN)));
        // poll takes whole milliseconds; round up so a deadline is never
        // reported early, and cap what one call waits (callers loop).
        let ms = timeout.map_or(u16::MAX as u128 * 1000, |t| t.as_micros().div_ceil(1000));
        let ms = PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, ms) {
            Ok(0) => Wake::Timeout,
            Ok(_) => {
                if let Some(sig) = self.take() {
                    return Wake::Signal(sig);
                }
                let ready = fds[1..]
                    .iter()
                    .any(|f| f.revents().is_some_and(|r| !r.is_empty()));
                if ready { Wake::Readable } else { Wake::Timeout }
            }
            // EINTR cannot come from the blocked signals; treat any failure
            // as a spurious wake-up and let the caller loop.
            Err(Errno::EINTR) | Err(_) => Wake::Timeout,
        }
    }

    fn take(&self) -> Option<Signal> {
        match self.fd.read_signal() {
            Ok(Some(info)) => Signal::try_from(info.ssi_signo as i32).ok(),
            _ => None,
        }
    }
}

/// Takes a TERM, INT or HUP that arrived while no hook was being waited for
/// (between hooks), without blocking. SIGCHLD is left pending.
pub fn take_pending_stop_signal() -> Option<Signal> {
    let mut set = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(sig);
    }
    let ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `set` is a valid, initialised sigset_t borrowed for the call; a
    // null siginfo pointer is allowed; `ts` is a valid zero timespec, so the
    // call only polls.
    let rc = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if rc > 0 {
        Signal::try_from(rc).ok()
    } else {
        None
    }
}
