//! Starting hooks (from a checked open file, or by a path the caller has
//! just compared with one), and detaching a helper process from the runner.

use std::ffi::{CString, c_char};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork};

/// Which program to execute.
pub enum Program<'a> {
    /// An open file, run through its /proc/self/fd path, which names this
    /// open file and nothing else, so no other file can be swapped in between
    /// our checks and the exec. For ELF programs only: the kernel would hand
    /// a script's interpreter that /proc path, which close-on-exec has closed.
    Open(BorrowedFd<'a>),
    /// A path, executed as it is (no `PATH` search).
    Path(&'a std::ffi::CStr),
    /// A command name looked up in `PATH` (posix_spawnp), as a shell would.
    Search(&'a std::ffi::CStr),
}

/// What to execute.
pub struct Exec<'a> {
    pub program: Program<'a>,
    pub argv: &'a [CString],
    pub envp: &'a [CString],
    pub stdin: BorrowedFd<'a>,
    pub stdout: BorrowedFd<'a>,
    pub stderr: BorrowedFd<'a>,
    /// The working directory to run in; `None`: ours.
    pub dir: Option<&'a std::ffi::CStr>,
    pub group: Group,
}

/// Where the child is put, so that it and what it starts can be signalled
/// as one process group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// A session of its own (`setsid`), as qemu-ga 9.1+ runs its hook: no
    /// terminal. The kernel asks no security module about setsid, while
    /// `setpgid` is the SELinux permission `process setpgid`, which
    /// qemu-ga's domain `virt_qemu_ga_t` lacks (denied on every call).
    Session,
    /// A process group of its own in our session (`setpgid`), for a command
    /// that is lent our terminal as its foreground job.
    InSession,
}

/// How a child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(Signal),
}

fn pointers(strings: &[CString]) -> Vec<*mut c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

/// Starts `exec` in a new process group (a new session, or a group in
/// ours: [`Group`]), with an empty signal mask and the dispositions the
/// runner was given (SIGPIPE's included, which Rust changed), and tied to this
/// process: the kernel sends it SIGKILL if we die first (PR_SET_PDEATHSIG),
/// so a hook never outlives a runner killed with `kill -9` (what it starts
/// on purpose, a lock holder, is not tied: the setting is not inherited).
///
/// posix_spawn cannot set that, so this does what glibc's posix_spawn does:
/// a vfork-style clone (CLONE_VM | CLONE_VFORK) on a stack of its own, so no
/// copy of the runner's page tables (a fork per hook cost about 15% more);
/// we wait, suspended, until the child has executed or failed. An exec that
/// failed leaves its errno in memory we share; until a clone has shown that
/// it does share it, also in a close-on-exec pipe (an exec closes it
/// unwritten): where a clone with CLONE_VM is a fork after all (qemu's
/// user-mode emulation runs one so), a write to that memory is lost.
pub fn spawn(exec: &Exec<'_>) -> io::Result<Pid> {
    let (path, search) = match exec.program {
        Program::Open(fd) => (
            CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number"),
            false,
        ),
        Program::Path(path) => (path.to_owned(), false),
        Program::Search(name) => (name.to_owned(), true),
    };
    let argv = pointers(exec.argv);
    let envp = pointers(exec.envp);
    static DISPOSITIONS: std::sync::OnceLock<Vec<(libc::c_int, libc::sighandler_t)>> =
        std::sync::OnceLock::new();
    // Each standard signal as the runner was given it: ignored where it
    // was (as the stock script passes it on), else the default, whatever the
    // runner does with it (Rust ignores SIGPIPE and handles SIGSEGV and
    // SIGBUS; the runner waits for the stop signals).
    let dispositions = DISPOSITIONS.get_or_init(|| {
        let ignored = super::signals::ignored_at_start();
        (1..32)
            .filter(|&sig| sig != libc::SIGKILL && sig != libc::SIGSTOP)
            .map(|sig: libc::c_int| {
                // (An ignored SIGCHLD would have the kernel reap a hook's
                // children before the hook waits for them: never passed on.)
                let keep = ignored & (1 << (sig - 1)) != 0 && sig != libc::SIGCHLD;
                (sig, if keep { libc::SIG_IGN } else { libc::SIG_DFL })
            })
            .collect()
    });
    // The report pipe's write end above 2, where the child's dup2 of its
    // standard descriptors cannot replace it. Needed only until a clone has
    // shown that the child shares our memory (then the child leaves its
    // errno there: five system calls a hook fewer).
    let shared = SHARES_MEMORY.load(std::sync::atomic::Ordering::Relaxed);
    let pipe = if shared {
        None
    } else {
        Some(pipe_writing_above_2()?)
    };
    let child = Child {
        path: path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        search,
        fds: [
            (exec.stdin.as_raw_fd(), 0),
            (exec.stdout.as_raw_fd(), 1),
            (exec.stderr.as_raw_fd(), 2),
        ],
        dir: exec.dir.map_or(std::ptr::null(), |d| d.as_ptr()),
        session: exec.group == Group::Session,
        dispositions: dispositions.as_ptr(),
        n_dispositions: dispositions.len(),
        parent: nix::unistd::getpid().as_raw(),
        report: pipe.as_ref().map_or(-1, |(_, tx)| tx.as_raw_fd()),
        ran: AtomicBool::new(false),
        errno: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; CHILD_STACK];
    let mut old = SigSet::empty();
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut old),
    );
    // SAFETY: every pointer in `child` (path, argv, envp, dir, dispositions) and
    // the stack outlive the clone: with CLONE_VFORK this thread is suspended
    // until the child has executed or exited, so none is moved or freed
    // meanwhile. All signals are blocked across the clone (no handler of
    // ours runs on the child's stack); the child resets what it must and
    // sets its own mask. The stack's top is 16-byte aligned.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK);
        let top = top.sub(top as usize % 16);
        libc::clone(
            child_main,
            top.cast(),
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            (&child as *const Child).cast_mut().cast(),
        )
    };
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&old),
        None,
    );
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    let pid = Pid::from_raw(pid);
    // CLONE_VFORK: the child has executed or exited by now. If it ran in
    // our memory, it left its errno there (0: executed).
    if child.ran.load(std::sync::atomic::Ordering::Acquire) {
        SHARES_MEMORY.store(true, std::sync::atomic::Ordering::Relaxed);
        return match child.errno.load(std::sync::atomic::Ordering::Acquire) {
            0 => Ok(pid),
            errno => {
                let _ = waitpid(pid, None);
                Err(io::Error::from_raw_os_error(errno))
            }
        };
    }
    let Some((report_rx, report_tx)) = pipe else {
        // Shared memory seen once and not now: cannot be; say so rather
        // than guess.
        let _ = waitpid(pid, None);
        return Err(io::Error::other("the child ran outside our memory"));
    };
    drop(report_tx);
    let mut word = [0u8; 4];
    if super::read_up_to(&report_rx, &mut word).is_ok_and(|got| got == word.len()) {
        let _ = waitpid(pid, None);
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(word)));
    }
    Ok(pid)
}

/// Whether a clone of ours has been seen to share our memory (a clone
/// with CLONE_VM is a fork after all under qemu's user-mode emulation).
static SHARES_MEMORY: AtomicBool = AtomicBool::new(false);

/// The child's stack: what execvpe and the exec itself need, with room.
const CHILD_STACK: usize = 256 * 1024;

/// What the cloned child needs, prepared before the clone.
struct Child {
    path: *const c_char,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
    search: bool,
    fds: [(RawFd, RawFd); 3],
    dir: *const c_char,
    /// setsid, else setpgid(0, 0).
    session: bool,
    /// Each signal's disposition for the child: (signal, SIG_IGN or SIG_DFL).
    dispositions: *const (libc::c_int, libc::sighandler_t),
    n_dispositions: usize,
    parent: libc::pid_t,
    /// Where the child writes its errno when it cannot execute
    /// (close-on-exec, above 2); -1: none, the child shares our memory.
    report: RawFd,
    /// Set by the child first: seen by us after the clone, it ran in our
    /// memory.
    ran: AtomicBool,
    /// The child's errno when it could not execute, in our memory.
    errno: AtomicI32,
}

/// The cloned child: between clone and exec, only system calls on what
/// `arg` (a [`Child`]) points to; it never returns into our code.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the parent's `Child`, alive while the parent is
    // suspended (CLONE_VFORK); only system calls follow, and the child ends
    // in exec or _exit.
    unsafe {
        let c = &*arg.cast::<Child>();
        c.ran.store(true, std::sync::atomic::Ordering::Release);
        let fail = |c: &Child| {
            let errno = *libc::__errno_location();
            let errno = if errno == 0 { libc::EIO } else { errno };
            c.errno.store(errno, std::sync::atomic::Ordering::Release);
            if c.report >= 0 {
                let word = errno.to_ne_bytes();
                libc::write(c.report, word.as_ptr().cast(), word.len());
            }
            libc::_exit(127)
        };
        if c.session {
            libc::setsid();
        } else {
            libc::setpgid(0, 0);
        }
        for i in 0..c.n_dispositions {
            let (sig, handler) = *c.dispositions.add(i);
            libc::signal(sig, handler);
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::getppid() != c.parent {
            // The parent died before the tie was made.
            libc::_exit(127);
        }
        for (fd, target) in c.fds {
            if fd == target {
                // Ours are never close-on-exec; make sure.
                libc::fcntl(fd, libc::F_SETFD, 0);
            } else if libc::dup2(fd, target) < 0 {
                fail(c);
            }
        }
        if !c.dir.is_null() && libc::chdir(c.dir) != 0 {
            fail(c);
        }
        let empty = SigSet::empty();
        libc::sigprocmask(libc::SIG_SETMASK, empty.as_ref(), std::ptr::null_mut());
        if c.search {
            libc::execvpe(c.path, c.argv.cast(), c.envp.cast());
        } else {
            libc::execve(c.path, c.argv.cast(), c.envp.cast());
        }
        fail(c);
        127
    }
}

/// A hook started under a reaper of its own ([`spawn_reaped`]).
pub struct Reaped {
    /// Our child, the hook's parent: the child subreaper of the hook's
    /// tree, so that what the hook orphans is still known to be its own.
    pub reaper: Pid,
    pub hook: Pid,
    /// Where the reaper writes the hook's wait status before it exits.
    status: OwnedFd,
}

impl Reaped {
    /// Reaps the reaper if it has ended: the hook ended then (a reaper
    /// that died without saying how: killed, and the hook with it).
    pub fn try_reap(&self) -> io::Result<Option<Exit>> {
        let Some(reaper) = try_reap(self.reaper)? else {
            return Ok(None);
        };
        let mut word = [0u8; 4];
        if super::read_up_to(&self.status, &mut word).is_ok_and(|got| got == word.len()) {
            let status = i32::from_ne_bytes(word);
            if libc::WIFEXITED(status) {
                return Ok(Some(Exit::Code(libc::WEXITSTATUS(status))));
            }
            if let Ok(sig) = Signal::try_from(libc::WTERMSIG(status)) {
                return Ok(Some(Exit::Signal(sig)));
            }
        }
        Ok(Some(match reaper {
            Exit::Signal(sig) => Exit::Signal(sig),
            Exit::Code(_) => Exit::Signal(Signal::SIGKILL),
        }))
    }
}

/// Starts `exec` as [`spawn`] does, below a reaper of its own: a fork of
/// this process that makes itself the child subreaper of what it starts,
/// spawns the hook, reaps whatever is orphaned below it, and when the hook
/// has ended writes its wait status and exits. Hooks that run at once need
/// it: an orphan adopted by the runner could have come from any of them,
/// one adopted by the hook's own reaper came from that hook. What the hook
/// left running when it ended goes up to the runner with the reaper's exit.
///
/// The reaper holds no descriptor but its status pipe, blocks every
/// signal (a signal meant for the runner's process group is not for it),
/// and dies with the runner (PR_SET_PDEATHSIG), the hook with it. For the
/// runner, which is single-threaded: the fork's child allocates.
pub fn spawn_reaped(exec: &Exec<'_>) -> io::Result<Reaped> {
    let (status, tx) = pipe_writing_above_2()?;
    let runner = nix::unistd::getpid().as_raw();
    // SAFETY: the runner is single-threaded; the child never returns into
    // the runner's code (it ends in _exit).
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(tx);
            let mut msg = [0u8; 8];
            let got = super::read_up_to(&status, &mut msg);
            let word = |i: usize| i32::from_ne_bytes(msg[i..i + 4].try_into().expect("4 bytes"));
            match got {
                Ok(8) if word(0) == 0 => Ok(Reaped {
                    reaper: child,
                    hook: Pid::from_raw(word(4)),
                    status,
                }),
                other => {
                    let _ = waitpid(child, None);
                    Err(match other {
                        Ok(8) => io::Error::from_raw_os_error(word(4)),
                        _ => io::Error::other("the hook's reaper died before it started the hook"),
                    })
                }
            }
        }
        ForkResult::Child => reaper_main(exec, tx.as_raw_fd(), runner),
    }
}

/// The reaper's life (see [`spawn_reaped`]).
fn reaper_main(exec: &Exec<'_>, tx: RawFd, runner: libc::pid_t) -> ! {
    let say = |kind: i32, value: i32| {
        let mut msg = [0u8; 8];
        msg[..4].copy_from_slice(&kind.to_ne_bytes());
        msg[4..].copy_from_slice(&value.to_ne_bytes());
        // SAFETY: a write of a local buffer to our own pipe.
        unsafe { libc::write(tx, msg.as_ptr().cast(), msg.len()) };
    };
    // SAFETY: system calls on this process's own attributes and
    // descriptors; _exit ends it without running the runner's destructors.
    unsafe {
        libc::sigprocmask(
            libc::SIG_SETMASK,
            SigSet::all().as_ref(),
            std::ptr::null_mut(),
        );
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if libc::getppid() != runner {
            libc::_exit(0);
        }
        libc::prctl(libc::PR_SET_NAME, c"fsfreeze-reaper".as_ptr());
        libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong);
        let hook = match spawn(exec) {
            Ok(pid) => pid.as_raw(),
            Err(e) => {
                say(1, e.raw_os_error().unwrap_or(libc::EIO));
                libc::_exit(0)
            }
        };
        say(0, hook);
        // Nothing of the runner's is held open here (its lock, the hook's
        // output pipe: the hook's end of output must be seen).
        close_range(0, tx as libc::c_uint - 1);
        close_range(tx as libc::c_uint + 1, libc::c_uint::MAX);
        loop {
            let mut status = 0;
            let pid = libc::waitpid(-1, &mut status, 0);
            if pid == hook {
                let word = status.to_ne_bytes();
                libc::write(tx, word.as_ptr().cast(), word.len());
                libc::_exit(0);
            }
            if pid < 0 && *libc::__errno_location() != libc::EINTR {
                libc::_exit(0);
            }
        }
    }
}

/// A close-on-exec pipe whose write end is above 2, where a child's dup2 of
/// its standard descriptors cannot replace it: (read end, write end).
fn pipe_writing_above_2() -> io::Result<(OwnedFd, OwnedFd)> {
    let (rx, low_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let tx = nix::fcntl::fcntl(&low_tx, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor that nothing else owns.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })?;
    // Only the write end above 2 stays: every write end but the child's must
    // be closed before its reader waits for EOF.
    drop(low_tx);
    Ok((rx, tx))
}

/// Closes descriptors `first..=last` of this process (close_range; before
/// Linux 5.9 one by one, up to the descriptor limit). For a forked child:
/// system calls only.
fn close_range(first: libc::c_uint, last: libc::c_uint) {
    // SAFETY: closes this process's own descriptors; the caller owns none of
    // them any more.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first, last, 0 as libc::c_uint) != 0 {
            let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(1024, 1 << 20) as libc::c_uint;
            for fd in first..=last.min(max) {
                libc::close(fd as libc::c_int);
            }
        }
    }
}

/// Reaps hook `pid` if it has ended: through its reaper when it has one
/// ([`spawn_reaped`]), else directly.
pub fn try_reap_below(pid: Pid, reaper: Option<&Reaped>) -> io::Result<Option<Exit>> {
    match reaper {
        Some(r) => r.try_reap(),
        None => try_reap(pid),
    }
}

/// The helpers this process detached ([`detach`]): never strays of a hook.
static DETACHED: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// The pids of the helpers this process detached.
pub fn detached() -> Vec<i32> {
    DETACHED.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Makes this process the child subreaper of what it starts
/// (PR_SET_CHILD_SUBREAPER): a process a hook leaves behind by a double
/// fork or `setsid` is adopted by the runner instead of init, so that the
/// runner can end it with the hook it came from. Not inherited by children.
pub fn become_subreaper() {
    // SAFETY: prctl with plain integer arguments; it changes an attribute of
    // this process only.
    let done = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong) } == 0;
    SUBREAPER.store(done, std::sync::atomic::Ordering::Relaxed);
}

/// Whether this process is the child subreaper of what it starts (qemu's
/// user-mode emulation does not make it one): then everything a hook left
/// running is below it.
pub fn is_subreaper() -> bool {
    SUBREAPER.load(std::sync::atomic::Ordering::Relaxed)
}

static SUBREAPER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
/// waits for it), in its own session, in `/`, with fds 0-2 on /dev/null and no
/// other descriptor than `keep`, renumbered 3, 4, ... (close-on-exec) and
/// passed to `body`. It
/// never holds the runner's lock, journal, or qemu-ga's pipe.
pub fn detach(keep: &[BorrowedFd<'_>], body: impl FnOnce(&[BorrowedFd<'_>])) -> io::Result<()> {
    let keep: Vec<RawFd> = keep.iter().map(|f| f.as_raw_fd()).collect();
    // The intermediate child says the grandchild's pid here: a runner that
    // is a child subreaper adopts it, and must know it for one of its own.
    let (pid_r, pid_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: single-threaded runner; the intermediate child only forks,
    // writes a number and exits; the grandchild rearranges its own
    // descriptors and runs `body`, then exits without returning into the
    // runner's code.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => {
            drop(pid_w);
            let _ = waitpid(child, None);
            let mut buf = [0u8; 4];
            if nix::unistd::read(&pid_r, &mut buf) == Ok(4) {
                DETACHED
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(i32::from_ne_bytes(buf));
            }
            Ok(())
        }
        ForkResult::Child => {
            // SAFETY: as above; _exit ends the intermediate child or the
            // grandchild without running the runner's destructors.
            unsafe {
                match fork() {
                    Ok(ForkResult::Child) => {}
                    Ok(ForkResult::Parent { child }) => {
                        let pid = child.as_raw().to_ne_bytes();
                        libc::write(pid_w.as_raw_fd(), pid.as_ptr().cast(), pid.len());
                        libc::_exit(0);
                    }
                    Err(_) => libc::_exit(0),
                }
                libc::setsid();
                // Pin no mountpoint (an unmount would fail with EBUSY).
                libc::chdir(c"/".as_ptr());
                // First out of the way (above every target number, which
                // a low RLIMIT_NOFILE still allows), then into place, then
                // everything else closed.
                let above = 3 + keep.len() as libc::c_int;
                let high: Vec<RawFd> = keep
                    .iter()
                    .map(|&fd| libc::fcntl(fd, libc::F_DUPFD, above))
                    .collect();
                let mut placed = Vec::with_capacity(high.len());
                for (i, &fd) in high.iter().enumerate() {
                    let target = 3 + i as RawFd;
                    libc::dup2(fd, target);
                    // Kept by this process, not by what it executes (a hold
                    // keeper's COMMAND gets fds 0-2 only).
                    libc::fcntl(target, libc::F_SETFD, libc::FD_CLOEXEC);
                    placed.push(target);
                }
                close_range(3 + placed.len() as libc::c_uint, libc::c_uint::MAX);
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
                // The placed numbers stay open until this process exits.
                let fds: Vec<BorrowedFd<'_>> = placed
                    .iter()
                    .map(|&fd| BorrowedFd::borrow_raw(fd))
                    .collect();
                body(&fds);
                libc::_exit(0)
            }
        }
    }
}
