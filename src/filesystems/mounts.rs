//! Which filesystems a freeze covers: qemu-ga's rules (QEMU
//! qga/commands-linux.c, build_fs_mount_list) applied to /proc/self/mountinfo.
//! Block-device backed only (device major not 0, except btrfs, whose major is
//! 0 but whose source is a block device), one entry per device (bind mounts
//! freeze once, as the first mount of the device), in mount order. Freezing
//! walks the list backwards (children before parents), thawing forwards.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// One line of mountinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub dev: (u32, u32),
    pub mountpoint: PathBuf,
    pub fstype: String,
    pub source: String,
}

/// A filesystem to freeze: where it is mounted, and its device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub mountpoint: PathBuf,
    pub dev: (u32, u32),
    pub fstype: String,
}

/// Parses mountinfo(5); malformed lines are skipped, as qemu-ga does.
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mount> {
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    let (before, after) = line.split_once(" - ")?;
    let mut left = before.split(' ');
    let _id = left.next()?;
    let _parent = left.next()?;
    let (major, minor) = left.next()?.split_once(':')?;
    let _root = left.next()?;
    let mountpoint = left.next()?;
    let mut right = after.split(' ');
    let fstype = right.next()?;
    let source = right.next().unwrap_or("");
    Some(Mount {
        dev: (major.parse().ok()?, minor.parse().ok()?),
        mountpoint: PathBuf::from(unescape(mountpoint)),
        fstype: String::from_utf8_lossy(&unescape(fstype).into_vec()).into_owned(),
        source: String::from_utf8_lossy(&unescape(source).into_vec()).into_owned(),
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape(field: &str) -> OsString {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            if v <= 255 {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// Every filesystem qemu-ga would freeze, in mount order. `block_dev` gives
/// the device numbers of a block device path (for btrfs), or `None`.
pub fn freezable(mounts: &[Mount], block_dev: &dyn Fn(&str) -> Option<(u32, u32)>) -> Vec<Target> {
    dedup(
        mounts
            .iter()
            .filter_map(|m| candidate(m, block_dev))
            .collect(),
    )
}

fn candidate(m: &Mount, block_dev: &dyn Fn(&str) -> Option<(u32, u32)>) -> Option<Target> {
    let dev = if m.dev.0 == 0 {
        // btrfs reports major 0; its source names the block device.
        if m.fstype != "btrfs" {
            return None;
        }
        block_dev(&m.source)?
    } else {
        m.dev
    };
    Some(Target {
        mountpoint: m.mountpoint.clone(),
        dev,
        fstype: m.fstype.clone(),
    })
}

fn dedup(targets: Vec<Target>) -> Vec<Target> {
    let mut out: Vec<Target> = Vec::with_capacity(targets.len());
    for t in targets {
        if !out.iter().any(|o| o.dev == t.dev) {
            out.push(t);
        }
    }
    out
}

/// The filesystems at the given mountpoints (`-m`), in mount order, each
/// device once. A path that is not a mountpoint, or whose filesystem cannot
/// be frozen (not block-device backed), is an error naming it.
pub fn at_mountpoints(
    mounts: &[Mount],
    wanted: &[PathBuf],
    block_dev: &dyn Fn(&str) -> Option<(u32, u32)>,
) -> Result<Vec<Target>, String> {
    let mut picked = Vec::new();
    for w in wanted {
        // The last mount at a path is the one visible there.
        let Some(m) = mounts.iter().rev().find(|m| &m.mountpoint == w) else {
            return Err(format!(
                "{} is not a mountpoint",
                crate::text::escape_path(w)
            ));
        };
        let Some(t) = candidate(m, block_dev) else {
            return Err(format!(
                "{} is a {} filesystem, not backed by a block device: it cannot be frozen",
                crate::text::escape_path(w),
                m.fstype
            ));
        };
        picked.push(t);
    }
    // Mount order, whatever order -m came in.
    let position = |t: &Target| mounts.iter().rposition(|m| m.mountpoint == t.mountpoint);
    picked.sort_by_key(position);
    Ok(dedup(picked))
}

/// The device numbers of a block device node, for btrfs sources.
pub fn block_dev_of(source: &str) -> Option<(u32, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(Path::new(source)).ok()?;
    if !meta.file_type().is_block_device() {
        return None;
    }
    let rdev = meta.rdev();
    Some((
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine with the cases that matter: root on a disk, /boot, tmpfs and
    /// proc, a loop-mounted image, a mount nested in it, a bind mount of it,
    /// btrfs (major 0, block source), overlay (major 0), NFS (major 0), a
    /// mountpoint with a space, and a second bind of the root fs.
    const FIXTURE: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid shared:12 - proc proc rw
24 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs udev rw,size=8g
25 22 0:23 / /run rw,nosuid,noexec shared:5 - tmpfs tmpfs rw,size=1g,mode=755
26 22 252:2 / /boot rw,relatime shared:30 - xfs /dev/vda2 rw,attr2
40 22 7:0 / /srv/img rw,relatime shared:40 - ext4 /dev/loop0 rw
41 40 7:1 / /srv/img/nested rw,relatime shared:41 - xfs /dev/loop1 rw
42 22 7:0 /data /srv/bind rw,relatime shared:40 - ext4 /dev/loop0 rw
43 22 0:45 / /srv/btr rw,relatime shared:43 - btrfs /dev/loop2 rw,space_cache=v2
44 22 0:46 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw,lowerdir=/a,upperdir=/b
45 22 0:47 / /mnt/nfs rw,relatime - nfs4 server:/export rw,vers=4.2
46 22 7:3 / /mnt/with\\040space rw - ext4 /dev/loop3 rw
47 22 252:1 /home /home rw,relatime shared:1 - ext4 /dev/vda1 rw
bogus line without separator
";

    fn block(source: &str) -> Option<(u32, u32)> {
        (source == "/dev/loop2").then_some((7, 2))
    }

    fn points(targets: &[Target]) -> Vec<String> {
        targets
            .iter()
            .map(|t| t.mountpoint.display().to_string())
            .collect()
    }

    #[test]
    fn selects_what_qemu_ga_freezes_in_mount_order() {
        let mounts = parse(FIXTURE);
        assert_eq!(mounts.len(), 13, "the malformed line is skipped");
        assert_eq!(
            points(&freezable(&mounts, &block)),
            [
                "/",
                "/boot",
                "/srv/img",
                "/srv/img/nested",
                "/srv/btr",
                "/mnt/with space"
            ],
            "tmpfs, proc, devtmpfs, overlay, nfs skipped; bind mounts of / and /srv/img once"
        );
    }

    #[test]
    fn btrfs_needs_a_block_device_source() {
        let mounts = parse("43 22 0:45 / /srv/btr rw - btrfs /not/a/device rw\n");
        assert!(freezable(&mounts, &block).is_empty());
    }

    #[test]
    fn explicit_mountpoints_in_mount_order_once_per_device() {
        let mounts = parse(FIXTURE);
        let want = |ps: &[&str]| ps.iter().map(PathBuf::from).collect::<Vec<_>>();
        let got = at_mountpoints(&mounts, &want(&["/srv/img/nested", "/srv/img"]), &block).unwrap();
        assert_eq!(points(&got), ["/srv/img", "/srv/img/nested"]);
        // A bind mount of an already chosen filesystem freezes it once.
        let got = at_mountpoints(&mounts, &want(&["/srv/img", "/srv/bind"]), &block).unwrap();
        assert_eq!(points(&got), ["/srv/img"]);
        // The bind mount alone names the device too.
        let got = at_mountpoints(&mounts, &want(&["/srv/bind"]), &block).unwrap();
        assert_eq!(got[0].dev, (7, 0));
        let err = at_mountpoints(&mounts, &want(&["/srv"]), &block).unwrap_err();
        assert_eq!(err, "/srv is not a mountpoint");
        let err = at_mountpoints(&mounts, &want(&["/run"]), &block).unwrap_err();
        assert!(
            err.contains("tmpfs filesystem, not backed by a block device"),
            "{err}"
        );
        let err = at_mountpoints(&mounts, &want(&["/mnt/nfs"]), &block).unwrap_err();
        assert!(err.contains("nfs4"), "{err}");
    }

    #[test]
    fn unescapes_octal_and_keeps_odd_bytes() {
        assert_eq!(
            unescape("a\\040b\\011c\\012d\\134e"),
            OsString::from("a b\tc\nd\\e")
        );
        assert_eq!(unescape("trailing\\"), OsString::from("trailing\\"));
        assert_eq!(unescape("\\999"), OsString::from("\\999"));
    }
}
