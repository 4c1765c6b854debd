//! Before the first freeze hook, while applications still run: flush the
//! filesystems about to be frozen (`syncfs` on each, all at once), so that
//! FIFREEZE, which runs while they are held, has little left to write.
//!
//! The flushing runs in a detached process: a device stuck in `syncfs`
//! (uninterruptible, SIGKILL or not) then holds neither the runner nor
//! qemu-ga's pipe, and past `presync_timeout` the phase goes on without it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::Settings;
use crate::config::units::{format_duration, format_time_limit};
use crate::log::Log;
use crate::log::event::{Event, Level};
use crate::sys;

/// Every filesystem qemu-ga freezes (by its rules): what a drop-in freeze
/// and a rehearsal flush.
pub fn every_freezable(log: &Log) -> Vec<PathBuf> {
    match crate::filesystems::targets(&crate::filesystems::Kernel, &[]) {
        Ok(targets) => targets.into_iter().map(|t| t.mountpoint).collect(),
        Err(e) => {
            log.warn(&format!("presync: {e}"));
            Vec::new()
        }
    }
}

/// Flushes `mountpoints`, waiting at most `presync_timeout` for it.
pub fn presync(settings: &Settings, log: &Log, mountpoints: &[PathBuf]) {
    if !settings.presync || mountpoints.is_empty() {
        return;
    }
    let start = Instant::now();
    let done = match start_flushing(mountpoints) {
        Ok(rx) => wait(&rx, settings.presync_timeout),
        Err(e) => {
            log.warn(&format!(
                "presync could not start ({e}); going on without it"
            ));
            return;
        }
    };
    let message = if done {
        format!(
            "presync: flushed {} filesystem(s) in {}",
            mountpoints.len(),
            format_duration(start.elapsed())
        )
    } else {
        format!(
            "presync: not finished after {} (presync_timeout; a device is slow or stuck); going on without it",
            format_time_limit(settings.presync_timeout)
        )
    };
    log.event(
        Event::new("presync", message)
            .level(if done { Level::Info } else { Level::Warning })
            .with("filesystems", mountpoints.len() as u64)
            .with("done", done)
            .with("duration_ms", start.elapsed().as_millis() as u64),
    );
}

/// Starts the detached flusher; its pipe says when every `syncfs` returned.
fn start_flushing(mountpoints: &[PathBuf]) -> std::io::Result<OwnedFd> {
    let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    sys::detach(&[tx.as_fd()], |fds| {
        std::thread::scope(|scope| {
            for mp in mountpoints {
                scope.spawn(move || {
                    if let Ok(dir) = std::fs::File::open(mp) {
                        let _ = nix::unistd::syncfs(&dir);
                    }
                });
            }
        });
        let _ = nix::unistd::write(fds[0], b"1");
    })?;
    Ok(rx)
}

/// Whether the flusher said it is done within `bound` (`None`: no bound).
/// Signals stay pending for the runner (this is no signal wait).
fn wait(rx: &OwnedFd, bound: Option<Duration>) -> bool {
    let end = bound.map(|b| Instant::now() + b);
    loop {
        let left = end.map(|e| e.saturating_duration_since(Instant::now()));
        if left == Some(Duration::ZERO) {
            return false;
        }
        let ms = left.map_or(PollTimeout::NONE, |l| {
            PollTimeout::try_from(l.as_millis().clamp(1, i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX)
        });
        let mut fds = [PollFd::new(rx.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, ms) {
            Ok(0) => {}
            Ok(_) => {
                let mut byte = [0u8; 1];
                // A byte: done. EOF without one: the flusher died; nothing
                // more will come either way.
                return matches!(nix::unistd::read(rx, &mut byte), Ok(1));
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}
