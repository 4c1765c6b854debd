//! `refresh`: what the packages' scripts run, so that qemu-ga runs this
//! build across upgrades of either package, and nothing else of `enable` is
//! redone. On the RHEL family the hook is a copy (`/etc/qemu-ga` is a plain
//! directory of qemu-guest-agent's package, so rpm writes its stock script
//! over the hook at every install of that package, upgrade, downgrade or
//! reinstall alike, with no `.rpmnew`): the copy is taken back and the newer
//! stock script kept as `<hook>.stock`, what `disable` puts back. On Debian
//! the hook is a link to the packaged binary, which needs nothing.

use std::fs;
use std::path::Path;

use super::{
    Change, PACKAGED, Plan, a_build_of_ours, current_hook, ours, read_record, record, stock_path,
};
use crate::exit::Exit;

pub fn refresh(root: &Path, agent_installed: bool) -> Exit {
    match run_refresh(root, agent_installed) {
        Ok(()) => Exit::Ok,
        Err(msg) => Exit::Setup(format!("refresh: {msg}")),
    }
}

fn run_refresh(root: &Path, agent_installed: bool) -> Result<(), String> {
    let hook = current_hook(root);
    let changes = read_record(root, &hook)?.unwrap_or_default();
    let installed_here = changes
        .iter()
        .any(|c| matches!(c, Change::Hook(p, _) if *p == hook));
    if !installed_here {
        outln!(
            "{} is not a hook `enable` installed: nothing to refresh",
            hook.display()
        );
        return Ok(());
    }
    let mut plan = Plan {
        root: root.to_path_buf(),
        dry_run: false,
        done: Vec::new(),
        agent_installed,
    };
    // A copy that earlier builds installed where dpkg diverts now.
    if plan.convert_copy_to_diversion(&hook, &changes)? {
        return Ok(());
    }
    if fs::symlink_metadata(plan.entry(&hook)).is_ok_and(|m| m.file_type().is_symlink()) {
        outln!(
            "{} is a link (to {PACKAGED}): nothing to refresh",
            hook.display()
        );
        return Ok(());
    }
    let binary = ours().map_err(|e| format!("cannot read this binary: {e}"))?;
    match fs::read(plan.path(&hook)) {
        Ok(now) if now == binary => outln!("{} is already this build", hook.display()),
        Ok(now) if a_build_of_ours(&now) => {
            plan.say(&format!(
                "replace {} (another build of fsfreeze-hook) with this one",
                hook.display()
            ));
            plan.put_binary(&hook, &binary)?;
        }
        Ok(_) if plan.rewritten_by_agent_package(&hook) => plan.reclaim(&hook, &binary)?,
        Ok(_) => outln!(
            "{} is no longer the fsfreeze-hook `enable` installed (replaced or edited since): left alone; `fsfreeze-hook check` says what qemu-ga runs",
            hook.display()
        ),
        Err(e) => outln!("{}: {e}: left alone", hook.display()),
    }
    if !plan.done.is_empty() {
        record(&plan, &hook).map_err(|e| format!("cannot write the record of changes: {e}"))?;
    }
    Ok(())
}

impl Plan {
    /// Whether the file at `hook`, where `enable` installed this binary, is
    /// the stock script qemu-guest-agent's package wrote over it: rpm just
    /// installed that package (its trigger says so), or rpm finds the file
    /// as the package that owns it shipped it.
    pub(super) fn rewritten_by_agent_package(&self, hook: &Path) -> bool {
        let recorded = read_record(&self.root, hook)
            .ok()
            .flatten()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| matches!(c, Change::Hook(p, _) if p == hook))
            });
        recorded && (self.agent_installed || shipped_by_rpm(&self.root, hook))
    }

    /// The agent's package wrote its stock script at `hook` over this
    /// binary: that script becomes the kept one (an older one replaced) and
    /// this build goes back. Its modification time is the package's, so
    /// once `disable` puts it back, `rpm -V` finds it as shipped.
    pub(super) fn reclaim(&mut self, hook: &Path, binary: &[u8]) -> Result<(), String> {
        let stock = stock_path(hook);
        let kept_before = read_record(&self.root, hook)
            .ok()
            .flatten()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| matches!(c, Change::Stock(p, _) if p == hook))
            });
        self.say(&format!(
            "keep {} (the stock script qemu-guest-agent's package wrote over it) as {}",
            hook.display(),
            stock.display()
        ));
        if !self.dry_run {
            fs::rename(self.entry(hook), self.entry(&stock)).map_err(|e| e.to_string())?;
        }
        if !kept_before {
            self.done.push(Change::Stock(hook.to_path_buf(), stock));
        }
        self.say(&format!(
            "install this binary as {} (mode 0755)",
            hook.display()
        ));
        self.put_binary(hook, binary)
    }
}

/// Whether rpm (on the system at `root`) finds `path` as the package that
/// owns it shipped it: owned, and not among what `rpm --verify` reports of
/// that package (its time aside). False where there is no rpm.
fn shipped_by_rpm(root: &Path, path: &Path) -> bool {
    let rpm = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("rpm")
            .arg("--root")
            .arg(root)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
    };
    let Some(owner) = rpm(&[
        "-qf".as_ref(),
        "--qf".as_ref(),
        "%{NAME}\n".as_ref(),
        path.as_os_str(),
    ])
    .filter(|o| o.status.success())
    .and_then(|o| String::from_utf8(o.stdout).ok())
    .and_then(|o| o.lines().next().map(str::to_string)) else {
        return false;
    };
    // `rpm -V` exits non-zero when any file of the package differs (an
    // edited sysconfig, say): its lines are what counts.
    let Some(verify) = rpm(&[
        "-V".as_ref(),
        "--nodeps".as_ref(),
        "--noscripts".as_ref(),
        "--nomtime".as_ref(),
        owner.as_ref(),
    ]) else {
        return false;
    };
    let path = path.to_string_lossy();
    !String::from_utf8_lossy(&verify.stdout)
        .lines()
        .any(|l| l.ends_with(&format!(" {path}")))
}
