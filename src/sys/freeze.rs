//! The filesystem freeze ioctls. FIFREEZE = _IOWR('X', 119, int) and
//! FITHAW = _IOWR('X', 120, int) (linux/fs.h); the int argument is unused.
//!
//! A mountpoint is reached by its path, which someone who owns a directory
//! on the way can point elsewhere between a freeze and its thaw. So a freeze
//! notes which filesystem it froze (the st_dev of the directory it opened)
//! and both ioctls act only on the open directory when it is on that one:
//! EXDEV says the path leads to another filesystem now.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;

nix::ioctl_readwrite!(ioctl_fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(ioctl_fithaw, b'X', 120, libc::c_int);

fn errno(e: std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
}

/// The directory at `mountpoint`, not through a final symlink, and the
/// filesystem it is on.
fn open_dir(mountpoint: &Path) -> Result<(File, u64), Errno> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOCTTY | libc::O_NOFOLLOW)
        .open(mountpoint)
        .map_err(errno)?;
    let dev = dir.metadata().map_err(errno)?.dev();
    Ok((dir, dev))
}

/// The directory at `mountpoint` if it is on filesystem `dev` (any, when
/// `None`); EXDEV when it is on another one.
fn open_on(mountpoint: &Path, dev: Option<u64>) -> Result<File, Errno> {
    let (dir, on) = open_dir(mountpoint)?;
    match dev {
        Some(want) if want != on => Err(Errno::EXDEV),
        _ => Ok(dir),
    }
}

/// Which filesystem the directory at `mountpoint` is on (its st_dev).
pub fn device(mountpoint: &Path) -> Result<u64, Errno> {
    open_dir(mountpoint).map(|(_, dev)| dev)
}

/// Freezes filesystem `dev`, mounted at `mountpoint`. EBUSY: already frozen;
/// EOPNOTSUPP: it cannot be frozen; EXDEV: the path leads elsewhere now.
pub fn fifreeze(mountpoint: &Path, dev: u64) -> Result<(), Errno> {
    let dir = open_on(mountpoint, Some(dev))?;
    let mut unused: libc::c_int = 0;
    // SAFETY: the fd is open for the call; the kernel ignores the int
    // argument, which points to a live local anyway.
    unsafe { ioctl_fifreeze(dir.as_raw_fd(), &mut unused) }.map(|_| ())
}

/// Thaws the filesystem mounted at `mountpoint` (only if it is `dev`, when
/// given). EINVAL: it was not frozen; EXDEV: the path leads elsewhere now.
pub fn fithaw(mountpoint: &Path, dev: Option<u64>) -> Result<(), Errno> {
    let dir = open_on(mountpoint, dev)?;
    let mut unused: libc::c_int = 0;
    // SAFETY: as for fifreeze.
    unsafe { ioctl_fithaw(dir.as_raw_fd(), &mut unused) }.map(|_| ())
}

#[cfg(test)]
mod tests {
    /// The request numbers linux/fs.h gives, the same on x86_64 and arm64
    /// (both use the generic ioctl encoding: read|write in the top two bits,
    /// the argument's size, 'X', the number). This runs on both (the arm64
    /// build's tests run under emulation).
    #[test]
    fn the_request_numbers_are_the_kernels() {
        let size = std::mem::size_of::<libc::c_int>();
        assert_eq!(size, 4);
        assert_eq!(nix::request_code_readwrite!(b'X', 119, size), 0xC004_5877);
        assert_eq!(nix::request_code_readwrite!(b'X', 120, size), 0xC004_5878);
    }
}
