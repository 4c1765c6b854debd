//! The filesystem freeze ioctls. FIFREEZE = _IOWR('X', 119, int) and
//! FITHAW = _IOWR('X', 120, int) (linux/fs.h); the int argument is unused.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;

nix::ioctl_readwrite!(ioctl_fifreeze, b'X', 119, libc::c_int);
nix::ioctl_readwrite!(ioctl_fithaw, b'X', 120, libc::c_int);

fn open_dir(mountpoint: &Path) -> Result<File, Errno> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOCTTY)
        .open(mountpoint)
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Freezes the filesystem mounted at `mountpoint`. EBUSY: already frozen;
/// EOPNOTSUPP: the filesystem cannot be frozen.
pub fn fifreeze(mountpoint: &Path) -> Result<(), Errno> {
    let dir = open_dir(mountpoint)?;
    let mut unused: libc::c_int = 0;
    // SAFETY: the fd is open for the call; the kernel ignores the int
    // argument, which points to a live local anyway.
    unsafe { ioctl_fifreeze(dir.as_raw_fd(), &mut unused) }.map(|_| ())
}

/// Thaws the filesystem mounted at `mountpoint`. EINVAL: it was not frozen.
pub fn fithaw(mountpoint: &Path) -> Result<(), Errno> {
    let dir = open_dir(mountpoint)?;
    let mut unused: libc::c_int = 0;
    // SAFETY: as for fifreeze.
    unsafe { ioctl_fithaw(dir.as_raw_fd(), &mut unused) }.map(|_| ())
}
