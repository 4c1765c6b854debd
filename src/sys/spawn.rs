//! Starting hooks from an open file (so what was checked is what runs), and
//! detaching a helper process from the runner.

use std::ffi::{CString, c_char};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, pipe2};

/// What to execute, prepared before the fork.
pub struct Exec<'a> {
    /// The open file to execute (execveat with AT_EMPTY_PATH).
    pub program: BorrowedFd<'a>,
    pub argv: &'a [CString],
    pub envp: &'a [CString],
    /// A descriptor the new program must be able to reopen as /dev/fd/N: the
    /// script file itself, which the kernel hands its interpreter by that
    /// name. Left open across the exec; every other descriptor above 2 is
    /// close-on-exec.
    pub keep_open: Option<BorrowedFd<'a>>,
    pub stdin: BorrowedFd<'a>,
    /// Stdout and stderr.
    pub output: BorrowedFd<'a>,
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Starts `exec` in a new process group, with an empty signal mask and
/// default signal dispositions. An exec failure is returned as the error
/// (reported by the child through a close-on-exec pipe, as std does).
pub fn spawn(exec: &Exec<'_>) -> io::Result<Pid> {
    // Everything the child touches is prepared here: after fork it only makes
    // async-signal-safe calls on this memory.
    let argv = pointers(exec.argv);
    let envp = pointers(exec.envp);
    let empty = SigSet::empty();
    let (err_read, err_write) = pipe2(OFlag::O_CLOEXEC)?;
    let child = ChildSetup {
        program: exec.program.as_raw_fd(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        keep_open: exec.keep_open.map(|f| f.as_raw_fd()),
        stdin: exec.stdin.as_raw_fd(),
        output: exec.output.as_raw_fd(),
        mask: &empty,
        err: err_write.as_raw_fd(),
    };
    // SAFETY: the runner is single-threaded, so the child is a consistent
    // copy of it; the child runs only `ChildSetup::exec`, which makes
    // async-signal-safe calls on memory prepared above and never returns.
    match unsafe { fork() }? {
        ForkResult::Child => child.exec(),
        ForkResult::Parent { child } => {
            drop(err_write);
            let mut buf = [0u8; 4];
            let n = read_full(&err_read, &mut buf);
            if n == buf.len() {
                let _ = waitpid(child, None);
                return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf)));
            }
            Ok(child)
        }
    }
}

struct ChildSetup<'a> {
    program: RawFd,
    argv: *const *const c_char,
    envp: *const *const c_char,
    keep_open: Option<RawFd>,
    stdin: RawFd,
    output: RawFd,
    mask: &'a SigSet,
    err: RawFd,
}

impl ChildSetup<'_> {
    fn exec(&self) -> ! {
        // SAFETY: we are the forked child of a single-threaded process. Each
        // call is async-signal-safe (setpgid, dup2, fcntl, sigaction,
        // sigprocmask, syscall(execveat), write, _exit) and uses descriptors
        // and pointers prepared before the fork, which stay valid because
        // this function never returns.
        unsafe {
            libc::setpgid(0, 0);
            libc::dup2(self.stdin, 0);
            libc::dup2(self.output, 1);
            libc::dup2(self.output, 2);
            if let Some(fd) = self.keep_open {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
            // Ignored signals survive exec; the runner ignores SIGPIPE (Rust
            // does) and may have inherited others. Hooks start from defaults.
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            libc::sigprocmask(libc::SIG_SETMASK, self.mask.as_ref(), std::ptr::null_mut());
            libc::syscall(
                libc::SYS_execveat,
                self.program,
                c"".as_ptr(),
                self.argv,
                self.envp,
                libc::AT_EMPTY_PATH,
            );
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(self.err, bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127)
        }
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match nix::unistd::read(fd, &mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    n
}

/// Reaps `pid` if it has ended.
pub fn try_reap(pid: Pid) -> io::Result<Option<Exit>> {
    match waitpid(pid, Some(WaitPidFlag::WNOHANG))? {
        WaitStatus::Exited(_, code) => Ok(Some(Exit::Code(code))),
        WaitStatus::Signaled(_, sig, _) => Ok(Some(Exit::Signal(sig))),
        _ => Ok(None),
    }
}

/// Runs `body` in a process detached from the runner: a grandchild (the
/// intermediate child exits at once, so init adopts it and the runner never
/// waits for it), in its own session, with fds 0-2 on /dev/null and no other
/// descriptor than `keep`, renumbered 3, 4, ... and passed to `body`. It never
/// holds the runner's lock, journal, or qemu-ga's pipe.
pub fn detach(keep: &[BorrowedFd<'_>], body: impl FnOnce(&[RawFd])) -> io::Result<()> {
    let keep: Vec<RawFd> = keep.iter().map(|f| f.as_raw_fd()).collect();
    // SAFETY: single-threaded runner; the intermediate child only forks and
    // exits; the grandchild rearranges its own descriptors and runs `body`,
    // then exits without returning into the runner's code.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            let _ = waitpid(child, None);
            Ok(())
        }
        ForkResult::Child => {
            // SAFETY: as above; _exit ends the intermediate child or the
            // grandchild without running the runner's destructors.
            unsafe {
                if !matches!(fork(), Ok(ForkResult::Child)) {
                    libc::_exit(0);
                }
                libc::setsid();
                // First out of the way (above any target number), then into
                // place, then everything else closed.
                let high: Vec<RawFd> = keep
                    .iter()
                    .map(|&fd| libc::fcntl(fd, libc::F_DUPFD, 1000))
                    .collect();
                let mut placed = Vec::with_capacity(high.len());
                for (i, &fd) in high.iter().enumerate() {
                    let target = 3 + i as RawFd;
                    libc::dup2(fd, target);
                    placed.push(target);
                }
                let first = 3 + placed.len() as libc::c_int;
                let closed = libc::syscall(
                    libc::SYS_close_range,
                    first as libc::c_uint,
                    libc::c_uint::MAX,
                    0 as libc::c_uint,
                );
                if closed != 0 {
                    // Before Linux 5.9: one by one, up to the descriptor limit.
                    let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as libc::c_int;
                    for fd in first..max {
                        libc::close(fd);
                    }
                }
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                for fd in 0..3 {
                    libc::dup2(null, fd);
                }
                if null > 2 {
                    libc::close(null);
                }
                libc::sigprocmask(
                    libc::SIG_SETMASK,
                    SigSet::empty().as_ref(),
                    std::ptr::null_mut(),
                );
                body(&placed);
                libc::_exit(0)
            }
        }
    }
}
