//! A filesystem the test made: an image file, mkfs'd, loop-mounted under a
//! temp dir. Only these are ever frozen by tests. The guard thaws, unmounts and
//! detaches on drop (a failing assertion included), and a watchdog thread thaws
//! it if a test hangs past [`WATCHDOG`].

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// FIFREEZE and FITHAW: _IOWR('X', 119, int) and _IOWR('X', 120, int).
const FIFREEZE: libc::c_ulong = 0xc004_5877;
const FITHAW: libc::c_ulong = 0xc004_5878;
const WATCHDOG: Duration = Duration::from_secs(120);

pub struct LoopFs {
    pub mnt: PathBuf,
    pub image: PathBuf,
    dev: Option<String>,
    mounted: bool,
    watchdog: Option<mpsc::Sender<()>>,
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (the test command installs it)"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl LoopFs {
    /// A 64 MiB ext4 filesystem mounted at `<dir>/mnt`.
    pub fn ext4(dir: &Path) -> LoopFs {
        LoopFs::make(dir, "ext4", &dir.join("mnt"))
    }

    /// A filesystem of `fstype` (ext4, xfs, btrfs) on a sparse image in
    /// `dir`, mounted at `mnt` (created if missing; may be inside another
    /// test mount: drop the inner one first).
    pub fn make(dir: &Path, fstype: &str, mnt: &Path) -> LoopFs {
        let image = dir.join(format!(
            "{fstype}-{}.img",
            mnt.file_name().unwrap().to_string_lossy()
        ));
        // xfs wants 300 MiB at least; sparse, so it costs nothing.
        File::create(&image).unwrap().set_len(320 << 20).unwrap();
        let img = image.to_str().unwrap();
        match fstype {
            "ext4" => run("mkfs.ext4", &["-q", "-F", img]),
            "xfs" => run("mkfs.xfs", &["-q", "-f", img]),
            "btrfs" => run("mkfs.btrfs", &["-q", "-f", img]),
            other => panic!("no mkfs for {other}"),
        };
        LoopFs::mount(&image, mnt)
    }

    /// Loop-mounts an existing image (a copy the test made) at `mnt`. It
    /// fails (panics) when the image does not mount.
    pub fn mount(image: &Path, mnt: &Path) -> LoopFs {
        LoopFs::try_mount(image, mnt).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`LoopFs::mount`], with the failure returned.
    pub fn try_mount(image: &Path, mnt: &Path) -> Result<LoopFs, String> {
        let img = image.to_str().unwrap();
        let mnt = mnt.to_path_buf();
        fs::create_dir_all(&mnt).unwrap();
        let mut guard = LoopFs {
            mnt: mnt.clone(),
            image: image.to_path_buf(),
            dev: None,
            mounted: false,
            watchdog: None,
        };
        guard.dev = Some(run("losetup", &["--find", "--show", img]));
        let mounted = Command::new("mount")
            .args([guard.dev.as_deref().unwrap(), mnt.to_str().unwrap()])
            .output()
            .map_err(|e| e.to_string())?;
        if !mounted.status.success() {
            return Err(format!(
                "mount {img}: {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            ));
        }
        guard.mounted = true;
        let (tx, rx) = mpsc::channel::<()>();
        let watched = mnt.clone();
        thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(WATCHDOG) {
                eprintln!("watchdog: thawing {}", watched.display());
                let _ = thaw(&watched);
            }
        });
        guard.watchdog = Some(tx);
        Ok(guard)
    }

    /// Whether the filesystem is frozen, without a write that could hang:
    /// FIFREEZE fails with EBUSY on a frozen one. If it succeeds, the
    /// filesystem was not frozen, and it is thawed again at once.
    // The probe is an ioctl, which only unsafe code can make.
    #[allow(unsafe_code)]
    pub fn frozen(&self) -> bool {
        let dir = File::open(&self.mnt).unwrap();
        // SAFETY: FIFREEZE takes no memory from us (the int argument is
        // unused by the kernel); the fd is valid for the call.
        let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE, 0) };
        if rc == 0 {
            // SAFETY: as above, for FITHAW.
            let thawed = unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW, 0) };
            assert_eq!(thawed, 0, "could not undo the probe freeze");
            return false;
        }
        let err = std::io::Error::last_os_error();
        assert_eq!(
            err.raw_os_error(),
            Some(libc::EBUSY),
            "FIFREEZE probe: {err}"
        );
        true
    }
}

/// FITHAW; EINVAL means it was not frozen.
#[allow(unsafe_code)]
fn thaw(mnt: &Path) -> std::io::Result<()> {
    let dir = File::open(mnt)?;
    // SAFETY: FITHAW takes no memory from us; the fd is valid for the call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FITHAW, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if let Some(tx) = self.watchdog.take() {
            let _ = tx.send(());
        }
        if self.mounted {
            let _ = thaw(&self.mnt);
            let mnt = self.mnt.to_str().unwrap().to_string();
            let unmounted = (0..20).any(|_| {
                let ok = Command::new("umount")
                    .arg(&mnt)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    thread::sleep(Duration::from_millis(100));
                }
                ok
            });
            if !unmounted {
                let _ = Command::new("umount").args(["-l", &mnt]).status();
            }
        }
        if let Some(dev) = &self.dev {
            let _ = Command::new("losetup").args(["-d", dev]).status();
        }
    }
}

/// A bind mount made by a test, unmounted on drop.
pub struct BindMount {
    pub target: PathBuf,
}

impl BindMount {
    pub fn new(source: &Path, target: &Path) -> BindMount {
        fs::create_dir_all(target).unwrap();
        run(
            "mount",
            &["--bind", source.to_str().unwrap(), target.to_str().unwrap()],
        );
        BindMount {
            target: target.to_path_buf(),
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.target).status();
    }
}
