//! Debian: where dpkg owns the hook (a conffile of qemu-guest-agent's) and
//! the packaged binary, `enable` has dpkg divert the stock hook to
//! `<hook>.stock` and makes the hook a link to the binary, so that the
//! agent's upgrades meet no changed conffile and ours reach qemu-ga with no
//! other step; a copy that earlier builds installed is converted.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Change, PACKAGED, Plan, RECORD_HEADER, a_build_of_ours, record_path, stock_path};

/// `dpkg-divert` on the system at `root`, as the package fsfreeze-hook.
pub(super) fn dpkg_divert(root: &Path, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = std::process::Command::new("dpkg-divert")
        .arg("--root")
        .arg(root)
        .args(["--package", "fsfreeze-hook", "--rename"])
        .args(args)
        .output()
        .map_err(|e| format!("dpkg-divert: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "dpkg-divert failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// The packages dpkg (on the system at `root`) says own `path`: nothing
/// where dpkg is not there or none does.
fn dpkg_owners(root: &Path, path: &Path) -> Vec<String> {
    let Ok(out) = std::process::Command::new("dpkg-query")
        .arg(format!("--root={}", root.display()))
        .arg("-S")
        .arg(path)
        .stderr(std::process::Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    // "pkg[, pkg]: path", and "diversion by ..." lines, which own nothing.
    text.lines()
        .filter(|l| !l.starts_with("diversion "))
        .filter_map(|l| l.split_once(": ").map(|(pkgs, _)| pkgs))
        .flat_map(|pkgs| pkgs.split(", ").map(str::to_string))
        .collect()
}

impl Plan {
    /// Whether dpkg is to divert `hook`: it is a file of a package (a
    /// conffile of qemu-guest-agent's on Debian), and the binary at
    /// /usr/sbin is our package's (a binary installed there by hand, or a
    /// build at another path, gets a copy instead: a link to it would
    /// outlive it).
    pub(super) fn divertible(&self, hook: &Path) -> bool {
        let packaged = fs::read(self.path(Path::new(PACKAGED))).is_ok_and(|b| a_build_of_ours(&b))
            && dpkg_owners(&self.root, Path::new(PACKAGED)).contains(&"fsfreeze-hook".to_string());
        packaged && !dpkg_owners(&self.root, hook).is_empty()
    }

    /// A copy of ours at `hook` (what earlier builds installed) where dpkg
    /// would divert it now: the kept stock script goes back to the hook's
    /// path, dpkg diverts it to `<hook>.stock`, and the hook becomes the
    /// link, so that qemu-guest-agent's upgrades meet no changed conffile.
    /// The record is written anew: what `enable` did besides the copy and
    /// the kept script, then the diversion. Whether it converted.
    pub(super) fn convert_copy_to_diversion(
        &mut self,
        hook: &Path,
        changes: &[Change],
    ) -> Result<bool, String> {
        let copy = fs::symlink_metadata(self.entry(hook)).is_ok_and(|m| m.is_file())
            && fs::read(self.path(hook)).is_ok_and(|b| a_build_of_ours(&b));
        if !copy || !self.divertible(hook) {
            return Ok(false);
        }
        let stock = stock_path(hook);
        let kept = changes
            .iter()
            .any(|c| matches!(c, Change::Stock(p, s) if p == hook && *s == stock))
            && fs::symlink_metadata(self.entry(&stock)).is_ok_and(|m| m.is_file());
        if kept {
            self.say(&format!(
                "put {} back as {}, for dpkg to divert it",
                stock.display(),
                hook.display()
            ));
            fs::rename(self.entry(&stock), self.entry(hook)).map_err(|e| e.to_string())?;
        } else {
            self.say(&format!("remove the copy {}", hook.display()));
            fs::remove_file(self.entry(hook)).map_err(|e| e.to_string())?;
        }
        self.divert_and_link(hook)?;
        let mut anew: Vec<Change> = changes
            .iter()
            .filter(|c| !matches!(c, Change::Hook(p, _) | Change::Stock(p, _) if p == hook))
            .cloned()
            .collect();
        anew.append(&mut self.done);
        self.done = anew;
        let text: String = std::iter::once(RECORD_HEADER.to_string())
            .chain(self.done.iter().map(Change::line))
            .map(|l| l + "\n")
            .collect();
        self.write_file(&record_path(hook), text.as_bytes(), 0o644)
            .map_err(|e| format!("cannot write the record of changes: {e}"))?;
        self.done.clear();
        Ok(true)
    }

    /// On a dpkg system where the hook is a file of qemu-guest-agent's
    /// package (a conffile on Debian) and our package is installed: dpkg
    /// diverts the stock hook to `<hook>.stock` (so that the agent's
    /// upgrades write it there, with no conffile prompt and no stale copy)
    /// and the hook becomes a link to the packaged binary (so that our
    /// upgrades reach qemu-ga with no other step). `false`: not such a
    /// system, the hook is installed as a copy.
    pub(super) fn divert_and_link(&mut self, hook: &Path) -> Result<bool, String> {
        if !self.divertible(hook) {
            return Ok(false);
        }
        // Relative, so that it leads to the same file inside an image.
        let depth = hook.parent().map_or(0, |p| p.components().count() - 1);
        let target = PathBuf::from("../".repeat(depth)).join(PACKAGED.trim_start_matches('/'));
        if fs::read_link(self.entry(hook)).is_ok_and(|t| t == target) {
            outln!("{} already leads to {PACKAGED}", hook.display());
            return Ok(true);
        }
        let stock = self.free_stock(hook)?;
        self.say(&format!(
            "divert {} to {} (dpkg-divert: qemu-guest-agent's upgrades write it there; `disable` puts it back)",
            hook.display(),
            stock.display()
        ));
        if !self.dry_run {
            dpkg_divert(
                &self.root,
                &[
                    "--divert".as_ref(),
                    stock.as_os_str(),
                    "--add".as_ref(),
                    hook.as_os_str(),
                ],
            )?;
        }
        self.done.push(Change::Diverted(hook.to_path_buf(), stock));
        self.say(&format!(
            "link {} to {PACKAGED} (the package's upgrades reach qemu-ga)",
            hook.display()
        ));
        if !self.dry_run {
            std::os::unix::fs::symlink(&target, self.entry(hook)).map_err(|e| e.to_string())?;
        }
        self.done.push(Change::Hook(hook.to_path_buf(), None));
        Ok(true)
    }
}
