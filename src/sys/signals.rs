//! Waiting for a child, a stop signal, hook output, or a deadline, in one
//! place: the waited signals are blocked and read from a signalfd, polled
//! together with the hook's output pipe.

use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// Every standard signal whose default action ends a process (signal(7)),
/// but SIGKILL and SIGPIPE (ignored, as Rust's runtime sets it: a write to a
/// closed pipe is an error we handle). Each is blocked and read, never
/// fatal: the runner handles it as SIGTERM (the hook's group ended, rollback,
/// the one line, exit 128+N); a helper as its stop signal (the guard and the
/// watchdog thaw at once, a keeper releases). SIGUSR1 is a helper's own
/// request (release, stand down, look again). A fault of this process itself
/// (a real SIGSEGV) is delivered by the kernel however it is masked.
pub const STOP_SIGNALS: [Signal; 21] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGILL,
    Signal::SIGTRAP,
    Signal::SIGABRT,
    Signal::SIGBUS,
    Signal::SIGFPE,
    Signal::SIGUSR1,
    Signal::SIGSEGV,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGSTKFLT,
    Signal::SIGXCPU,
    Signal::SIGXFSZ,
    Signal::SIGVTALRM,
    Signal::SIGPROF,
    Signal::SIGIO,
    Signal::SIGPWR,
    Signal::SIGSYS,
];

/// SIGCHLD (a child ended) and the stop signals: what the runner and every
/// helper wait for.
pub fn waited_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for sig in STOP_SIGNALS {
        set.add(sig);
    }
    set
}

/// Blocks the real-time signals that are not libc's own (SIGRTMIN..=
/// SIGRTMAX): their default action ends a process too, and nothing of ours
/// uses them, so they are ignored. Blocked rather than SIG_IGN, which a hook
/// would inherit; a child starts with an empty mask and no pending signal.
pub fn block_realtime() {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set before sigaddset and
    // pthread_sigmask read it; every number lies in SIGRTMIN..=SIGRTMAX.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, set.as_ptr(), std::ptr::null_mut());
    }
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
    /// Who sent the last signal taken (`kill`'s sender; 0 for the
    /// kernel's own, such as SIGCHLD's exits or a timer's).
    sender: std::sync::atomic::AtomicI32,
}

impl Waiter {
    /// Needs the signals blocked first (`prepare_process`).
    pub fn new() -> std::io::Result<Waiter> {
        Waiter::from_set(&waited_signals())
    }

    /// Blocks the waited signals (and the real-time ones) and reads them
    /// from now on: how a detached helper (the guard, the watchdog, a hold
    /// keeper) takes over its signals.
    pub fn take_over() -> std::io::Result<Waiter> {
        let set = waited_signals();
        nix::sys::signal::sigprocmask(nix::sys::signal::SigmaskHow::SIG_BLOCK, Some(&set), None)?;
        block_realtime();
        Waiter::from_set(&set)
    }

    /// A waiter for the same signals but `sig`, which from then on stays
    /// blocked and pending, neither read nor fatal: how a guard that has
    /// begun its thaw lets a late stand-down (SIGUSR1) wait until it is done.
    pub fn without(&self, sig: Signal) -> std::io::Result<Waiter> {
        let mut set = waited_signals();
        set.remove(sig);
        Waiter::from_set(&set)
    }

    /// A waiter that reads no signal (unit tests, whose threads must not
    /// take the harness's signals).
    #[cfg(test)]
    pub fn deaf() -> Waiter {
        Waiter::from_set(&SigSet::empty()).expect("a signalfd")
    }

    fn from_set(set: &SigSet) -> std::io::Result<Waiter> {
        let fd = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)?;
        Ok(Waiter {
            fd,
            sender: std::sync::atomic::AtomicI32::new(0),
        })
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
            Ok(Some(info)) => {
                // A process's kill() (SI_USER), not something the kernel
                // queued: only then is the pid the sender's, and no other
                // process can claim it (rt_sigqueueinfo refuses SI_USER).
                let from = if info.ssi_code == libc::SI_USER {
                    info.ssi_pid as i32
                } else {
                    0
                };
                self.sender
                    .store(from, std::sync::atomic::Ordering::Relaxed);
                Signal::try_from(info.ssi_signo as i32).ok()
            }
            _ => None,
        }
    }

    /// The pid of the process whose `kill` sent the last signal this
    /// waiter took; 0 when the kernel sent it or none was taken.
    pub fn sender(&self) -> i32 {
        self.sender.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Takes a stop signal that arrived while no hook was being waited for
/// (between hooks), without blocking. SIGCHLD is left pending.
pub fn take_pending_stop_signal() -> Option<Signal> {
    let mut set = SigSet::empty();
    for sig in STOP_SIGNALS {
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

/// The standard signals ignored when this process was started (qemu-ga 7.2
/// and 10.0 run their hook with SIGPIPE ignored, as systemd starts
/// services), as a mask of bit `signal - 1`; read before Rust's runtime,
/// which ignores SIGPIPE before `main` whatever it was given. What hooks
/// get back, as the stock script passes them on.
pub fn ignored_at_start() -> u64 {
    IGNORED_AT_START.load(std::sync::atomic::Ordering::Relaxed)
}

static IGNORED_AT_START: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

extern "C" fn read_ignored_at_start() {
    let mut mask = 0u64;
    for sig in 1..32 {
        let mut old = std::mem::MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: a null new action only reads the current one into `old`,
        // a zeroed, properly sized sigaction owned by this frame.
        let rc = unsafe { libc::sigaction(sig, std::ptr::null(), old.as_mut_ptr()) };
        // SAFETY: sigaction filled it on success; zeroed memory is a valid
        // sigaction otherwise.
        if rc == 0 && unsafe { old.assume_init() }.sa_sigaction == libc::SIG_IGN {
            mask |= 1 << (sig - 1);
        }
    }
    IGNORED_AT_START.store(mask, std::sync::atomic::Ordering::Relaxed);
}

/// Run by the C library before `main` (and so before Rust's runtime): a
/// constructor in `.init_array`, called with no argument, touching only an
/// atomic.
#[used]
#[unsafe(link_section = ".init_array")]
static READ_IGNORED_AT_START: extern "C" fn() = read_ignored_at_start;
