//! The one OS layer: every libc call nix does not wrap safely, /proc,
//! paths as the kernel resolves them, signals, spawning, FIFREEZE.
//!
//! Each `unsafe` block sits behind a small safe function with a `SAFETY:`
//! note. The runner is single-threaded: `spawn` and `detach` rely on it.

pub mod agent;
mod freeze;
pub mod paths;
pub mod proc;
pub mod selinux;
mod signals;
mod spawn;

use std::fs;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{SigHandler, SigmaskHow, Signal, sigprocmask};
use nix::sys::stat::Mode;
use nix::unistd::Pid;

pub use freeze::{device, fifreeze, fithaw};
pub use proc::group_alive;
pub use signals::{Waiter, Wake, take_pending_stop_signal, waited_signals};
pub use spawn::{
    Exec, Exit, Group, Program, Reaped, become_subreaper, detach, detached, is_subreaper, spawn,
    spawn_reaped, try_reap, try_reap_below,
};

/// The path this binary was started from, read once when the process
/// starts ([`prepare_process`]) and inherited by every helper it forks: a
/// package upgrade that replaces the file while a guard or watchdog waits
/// leaves `/proc/self/exe` reading ".../fsfreeze-hook (deleted)", while this
/// path runs the installed (new) binary. Hooks get it as FSFREEZE_HOOK_BIN.
pub fn own_path() -> &'static std::path::Path {
    static OWN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    OWN.get_or_init(|| {
        let Ok(link) = fs::read_link("/proc/self/exe") else {
            // No /proc (a chroot an image is built in): the path execve
            // was given, made absolute; a shell or chroot's PATH search
            // gives the full one.
            return exec_path().unwrap_or_else(|| "fsfreeze-hook".into());
        };
        // Replaced before we read it (a very early upgrade): the name it had.
        use std::os::unix::ffi::OsStrExt;
        let bytes = link.as_os_str().as_bytes();
        match bytes.strip_suffix(b" (deleted)") {
            Some(path) => std::ffi::OsStr::from_bytes(path).into(),
            None => link,
        }
    })
}

/// The path this process was executed by (the kernel's AT_EXECFN), made
/// absolute against the working directory.
fn exec_path() -> Option<std::path::PathBuf> {
    // SAFETY: getauxval reads this process's auxiliary vector; for
    // AT_EXECFN it returns a pointer to the NUL-terminated path the kernel
    // placed on the initial stack, which lives as long as the process, or 0.
    let ptr = unsafe { libc::getauxval(libc::AT_EXECFN) } as *const libc::c_char;
    if ptr.is_null() {
        return None;
    }
    // SAFETY: as above, a valid C string for the life of the process.
    let bytes = unsafe { std::ffi::CStr::from_ptr(ptr) }.to_bytes();
    use std::os::unix::ffi::OsStrExt;
    let path = std::path::Path::new(std::ffi::OsStr::from_bytes(bytes));
    if path.is_absolute() {
        Some(path.to_path_buf())
    } else {
        std::env::current_dir().ok().map(|d| d.join(path))
    }
}

/// Puts the process in the state the runner relies on: fds 0-2 open (so no
/// file we open lands on them), the waited signals blocked (children get an
/// empty mask again, see `spawn`), SIGCHLD at its default disposition (an
/// inherited SIG_IGN would make the kernel reap our hooks before we can read
/// their status), and every inherited descriptor above 2 marked close-on-exec
/// so hooks never inherit qemu-ga's socket or anything else the caller leaked.
pub fn prepare_process() {
    ensure_std_fds();
    own_path();
    // Failure is impossible for a valid set and SIG_BLOCK.
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited_signals()), None);
    signals::block_realtime();
    // SAFETY: SIG_DFL installs no handler, so no Rust code can run in signal
    // context; changing a disposition is process-wide and we are single-threaded
    // at this point.
    let _ = unsafe { nix::sys::signal::signal(Signal::SIGCHLD, SigHandler::SigDfl) };
    mark_inherited_fds_cloexec();
    // Hooks get the umask the agent gave (RHEL's unit sets UMask=0077, and
    // the stock script passes it on), never one that lets others write what
    // they create (022 at the least); the runner sets explicit modes on its
    // own files.
    let given = nix::sys::stat::umask(Mode::from_bits_truncate(0o022));
    nix::sys::stat::umask(given | Mode::from_bits_truncate(0o022));
}

/// Opens /dev/null on any of fds 0-2 that the caller left closed.
fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: the number is only borrowed for one fcntl call that reads
        // flags; EBADF (closed) is the answer we look for.
        let probe = unsafe { BorrowedFd::borrow_raw(fd) };
        if fcntl(probe, FcntlArg::F_GETFD) == Err(Errno::EBADF) {
            // open returns the lowest free number, which is this one; the
            // descriptor is kept for the life of the process on purpose.
            if let Ok(null) = nix::fcntl::open("/dev/null", OFlag::O_RDWR, Mode::empty())
                && null.as_raw_fd() == fd
            {
                std::mem::forget(null);
            }
        }
    }
}

fn mark_inherited_fds_cloexec() {
    // close_range(2) with CLOSE_RANGE_CLOEXEC needs Linux 5.11; older guests
    // (RHEL 8 runs 4.18) take the /proc walk below.
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags; the arguments are
    // plain integers and no memory is passed to the kernel.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    let Ok(entries) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: the descriptor number came from /proc/self/fd of this
        // single-threaded process; it is only borrowed for one fcntl call, and
        // if it was the directory stream's own (now closed) descriptor, fcntl
        // fails with EBADF, which is ignored.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let _ = fcntl(borrowed, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
    }
}

/// Reads until `buf` is full or the writers are gone (end of file); how
/// many bytes came.
pub fn read_up_to(fd: impl AsFd, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match nix::unistd::read(&fd, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// Starts a helper process ([`detach`]) that waits on [`waited_signals`], and
/// returns who it is (pid and start time, as it read them itself) once it is
/// ready: from then on a signal sent to it is read by its [`Waiter`], never
/// lost and never fatal. `body` gets the kept descriptors and that waiter.
pub fn start_helper(
    keep: &[BorrowedFd<'_>],
    body: impl FnOnce(&[BorrowedFd<'_>], Waiter),
) -> std::io::Result<proc::Ident> {
    let (ready_rx, ready_tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let mut fds = keep.to_vec();
    fds.push(ready_tx.as_fd());
    detach(&fds, |fds| {
        let (keep, ready) = fds.split_at(fds.len() - 1);
        let Ok(waiter) = Waiter::take_over() else {
            return; // no pid is written: the caller learns it did not start
        };
        let me = proc::Ident::me();
        let mut word = [0u8; 12];
        word[..4].copy_from_slice(&me.pid.to_ne_bytes());
        word[4..].copy_from_slice(&me.start.unwrap_or(0).to_ne_bytes());
        if nix::unistd::write(ready[0], &word).is_ok() {
            body(keep, waiter);
        }
    })?;
    drop(ready_tx);
    let mut buf = [0u8; 12];
    if read_up_to(&ready_rx, &mut buf)? < buf.len() {
        return Err(std::io::Error::other("the helper did not start"));
    }
    let pid = i32::from_ne_bytes(buf[..4].try_into().expect("4 bytes"));
    let start = u64::from_ne_bytes(buf[4..].try_into().expect("8 bytes"));
    Ok(proc::Ident {
        pid,
        start: (start != 0).then_some(start),
    })
}

/// The terminal on stdin, lent to a process group (a snapshot's COMMAND,
/// which may prompt) while it runs, and taken back when this is dropped.
/// Nothing when stdin is not our controlling terminal in the foreground.
pub struct Foreground {
    ours: Option<Pid>,
}

impl Foreground {
    pub fn lend(pgid: Pid) -> Foreground {
        let ours = nix::unistd::getpgrp();
        if !in_terminal_foreground() || !set_foreground(pgid) {
            return Foreground { ours: None };
        }
        // It may have read the terminal before it was its own, and been
        // stopped (SIGTTIN) for that: on with it.
        let _ = nix::sys::signal::killpg(pgid, Signal::SIGCONT);
        Foreground { ours: Some(ours) }
    }
}

impl Drop for Foreground {
    fn drop(&mut self) {
        if let Some(ours) = self.ours {
            set_foreground(ours);
        }
    }
}

/// Whether stdin is our controlling terminal and our process group its
/// foreground job: what a command may be lent the terminal from.
pub fn in_terminal_foreground() -> bool {
    let stdin = std::io::stdin();
    std::io::IsTerminal::is_terminal(&stdin)
        // SAFETY: tcgetpgrp only reads the terminal's foreground group
        // through a descriptor that is open (stdin).
        && unsafe { libc::tcgetpgrp(stdin.as_raw_fd()) } == nix::unistd::getpgrp().as_raw()
}

/// tcsetpgrp on stdin with SIGTTOU blocked: a process in the background
/// (we are, while COMMAND has the terminal) may then take it back.
fn set_foreground(pgid: Pid) -> bool {
    let mut ttou = nix::sys::signal::SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let mut old = nix::sys::signal::SigSet::empty();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old));
    // SAFETY: tcsetpgrp takes an open descriptor (stdin) and a number.
    let done = unsafe { libc::tcsetpgrp(std::io::stdin().as_raw_fd(), pgid.as_raw()) } == 0;
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    done
}

/// Sends `sig` to every process of group `pgid`; a group already gone is fine.
pub fn signal_group(pgid: Pid, sig: Signal) {
    let _ = nix::sys::signal::killpg(pgid, sig);
}

/// Milliseconds since boot (CLOCK_BOOTTIME): one clock for every process
/// of this boot, which no one steps (suspend counts), for times that
/// processes compare with one another.
pub fn boot_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, owned by this frame.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
