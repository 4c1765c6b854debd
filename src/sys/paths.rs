//! Paths as the kernel would resolve them, also inside an image mounted at
//! some root (chroot-like: `..` stops at the root, symlinks stay inside).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::path::{Component, Path, PathBuf};

/// A path of the system mounted at `root`, as a path of this machine that
/// stays inside `root`, whatever the system holds: resolved as a chroot
/// would, `..` stopping at `root` and every symlink (an absolute one taken
/// from `root`) followed inside it; what does not exist is taken as named.
/// For `/` the path itself. An image someone else made can so never lead a
/// read, and with [`entry_in_root`] a write, outside it.
pub fn in_root(root: &Path, guest: &Path) -> PathBuf {
    if root == Path::new("/") {
        return guest.to_path_buf();
    }
    resolve_in(root, guest, true)
}

/// [`in_root`] for a write, a rename or a removal: the directory entry
/// itself (its parent resolved inside `root`; a final symlink is the entry,
/// not followed).
pub fn entry_in_root(root: &Path, guest: &Path) -> PathBuf {
    if root == Path::new("/") {
        return guest.to_path_buf();
    }
    resolve_in(root, guest, false)
}

/// The chroot-like resolution of [`in_root`], also for `root` `/` (where it
/// is the kernel's); `follow_last`: whether a final symlink is followed.
pub fn resolve_in(root: &Path, guest: &Path, follow_last: bool) -> PathBuf {
    let mut pending = components(guest);
    let mut real = root.to_path_buf();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            if real != root {
                real.pop();
            }
            continue;
        }
        let next = real.join(&part);
        let last = pending.is_empty();
        let link = fs::symlink_metadata(&next).is_ok_and(|m| m.file_type().is_symlink());
        if !link || (last && !follow_last) {
            real = next;
            continue;
        }
        links += 1;
        let Some(target) = fs::read_link(&next).ok().filter(|_| links <= 40) else {
            // A loop (or an unreadable link): the entry itself, inside root.
            real = next;
            continue;
        };
        if target.is_absolute() {
            real = root.to_path_buf();
        }
        for c in components(&target).into_iter().rev() {
            pending.push_front(c);
        }
    }
    real
}

/// The names of a path's components, `..` kept (resolved by the walk after
/// the symlinks before it), `.` and the root left out.
pub fn components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// The SELinux label of `path` (its `security.selinux` attribute, the
/// target's for a symlink), if it has one.
pub fn selinux_label(path: &Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = vec![0u8; 1024];
    // SAFETY: both strings are NUL-terminated and live for the call; the
    // kernel writes at most `buf.len()` bytes into `buf`.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c"security.selinux".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    while buf.last() == Some(&0) {
        buf.pop();
    }
    String::from_utf8(buf).ok()
}

/// Opens (creating, mode 0600) a lock file to flock, never through a final
/// symlink: someone who planted one there chooses no file root opens.
pub fn open_lock_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Replaces `target` by a file holding `bytes` with `mode`, written first at
/// `tmp` (in the same directory) and then renamed over it: never half a
/// file. The directory may be someone else's: whatever was at `tmp` (a
/// symlink to a file of root's, say) is removed, not followed, and the file
/// is created new (O_EXCL, O_NOFOLLOW). `durable`: synced before the rename.
pub fn replace_file(
    target: &Path,
    tmp: &Path,
    bytes: &[u8],
    mode: u32,
    durable: bool,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    match fs::remove_file(tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    // The umask may have taken bits the caller asked for.
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    drop(f);
    fs::rename(tmp, target)
}
