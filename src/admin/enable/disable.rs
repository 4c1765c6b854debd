//! `disable`: undo what `enable` recorded, in reverse order, whatever the
//! config holds, and say what qemu-ga runs then.

use std::fs;
use std::path::{Path, PathBuf};

use super::{
    Change, Plan, RECORD_HEADER, RECORD_HEADER_1, a_build_of_ours, checksum, dpkg_divert, mode_of,
    record_path, stock_path, with_hook,
};
use crate::admin::agent::{self, CONFIGS, DEFAULT_HOOK, HookSetting, RESTART};
use crate::exit::Exit;
use crate::sys::paths::in_root;

pub fn disable(root: &Path, dry_run: bool) -> Exit {
    match run_disable(root, dry_run) {
        Ok(()) => Exit::Ok,
        Err(msg) => Exit::Setup(format!("disable: {msg}")),
    }
}

/// The hook qemu-ga runs now on the system at `root` (the default place
/// when nothing names one).
pub(super) fn current_hook(root: &Path) -> PathBuf {
    agent::inspect(root)
        .hook
        .path()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HOOK))
}

/// The changes `enable` recorded beside `hook`; `None`: no record there.
pub(super) fn read_record(root: &Path, hook: &Path) -> Result<Option<Vec<Change>>, String> {
    let rec = in_root(root, &record_path(hook));
    let Ok(text) = fs::read_to_string(&rec) else {
        return Ok(None);
    };
    let mut lines = text.lines();
    let encoded = match lines.next() {
        Some(RECORD_HEADER) => true,
        Some(RECORD_HEADER_1) => false,
        _ => return Err(format!("{} is not a record of `enable`", rec.display())),
    };
    Ok(Some(
        lines.filter_map(|l| Change::parse(l, encoded)).collect(),
    ))
}

/// The hook `enable` set up on the system at `root`, and its record: beside
/// the hook qemu-ga runs now, else beside one of the places `enable` uses
/// (where an administrator pointed qemu-ga elsewhere since, a removal must
/// still undo the diversion and the link it left there).
fn enabled_hook(root: &Path) -> Result<Option<(PathBuf, Vec<Change>)>, String> {
    let current = current_hook(root);
    for hook in [
        current,
        PathBuf::from(DEFAULT_HOOK),
        PathBuf::from(RHEL_HOOK),
    ] {
        if let Some(changes) = read_record(root, &hook)? {
            return Ok(Some((hook, changes)));
        }
    }
    Ok(None)
}

/// Where `enable` set the hook up, when that is not the hook qemu-ga runs
/// now (an administrator pointed it elsewhere since).
pub fn enabled_elsewhere(root: &Path) -> Option<PathBuf> {
    enabled_hook(root)
        .ok()
        .flatten()
        .map(|(hook, _)| hook)
        .filter(|hook| *hook != current_hook(root))
}

/// The RHEL family's hook (`FSFREEZE_HOOK_PATHNAME` in its sysconfig).
const RHEL_HOOK: &str = "/etc/qemu-ga/fsfreeze-hook";

fn run_disable(root: &Path, dry_run: bool) -> Result<(), String> {
    let Some((hook, changes)) = enabled_hook(root)? else {
        outln!(
            "not enabled by fsfreeze-hook (no {}): nothing to undo",
            record_path(&current_hook(root)).display()
        );
        return Ok(());
    };
    if let Err(e) = crate::config::Settings::load_for_agent(&hook, root) {
        outln!(
            "note: {e}: ignored (disable undoes what `enable` recorded whatever the config says)"
        );
    }
    let plan = Plan {
        root: root.to_path_buf(),
        dry_run,
        done: Vec::new(),
        agent_installed: false,
    };
    // Undo in reverse order of doing.
    let mut kept = Vec::new();
    for change in changes.iter().rev() {
        plan.undo(change, &hook, &mut kept)?;
    }
    plan.say(&format!("remove {}", record_path(&hook).display()));
    if !dry_run {
        let _ = fs::remove_file(plan.entry(&record_path(&hook)));
    }
    // What qemu-ga runs once restarted, as this system sets it up now:
    // the line `enable` put in qemu-ga.conf goes, and Debian's unit names no
    // hook of its own.
    let after = match dry_run {
        false => agent::inspect(root).hook,
        true => match agent::inspect(root).hook {
            HookSetting::Config { source, .. }
                if changes.iter().any(|c| {
                    matches!(c, Change::ConfCreated(f) | Change::ConfEdited(f, _) if *f == source)
                }) =>
            {
                HookSetting::None
            }
            other => other,
        },
    };
    let runs = if dry_run { "would run" } else { "runs" };
    match &after {
        HookSetting::CommandLine { path, source } | HookSetting::Config { path, source } => {
            warn_of_what_stock_runs(root, path, dry_run);
            outln!(
                "qemu-ga {runs} {} after its restart (set in {})",
                path.display(),
                source.display()
            );
        }
        HookSetting::Disabled { source } => {
            outln!(
                "qemu-ga {runs} no hook after its restart ({} switches it off)",
                source.display()
            )
        }
        HookSetting::None => outln!(
            "qemu-ga {runs} no hook after its restart, as before `enable`: its unit starts it without -F and no qemu-ga.conf names one (for the stock script: fsfreeze-hook={DEFAULT_HOOK} in the [general] section of {})",
            CONFIGS[0]
        ),
    }
    outln!("then restart the agent: {RESTART}");
    Ok(())
}

/// Names every entry of the hooks dir that the stock script will run once
/// it is back, though ours did not (skipped on purpose, as `.disabled`, or
/// refused as untrusted): before the switch, so that nothing runs unseen.
fn warn_of_what_stock_runs(root: &Path, hook: &Path, dry_run: bool) {
    use crate::config::Settings;
    let settings = Settings::load_for_agent(hook, root)
        .unwrap_or_else(|_| Settings::load_for_agent_without_config(hook, root));
    let listing = crate::admin::list::inspect(&settings, root);
    let will = if dry_run { "would run" } else { "will run" };
    for e in &listing.entries {
        let Some(why) = e.verdict.reason() else {
            continue;
        };
        if crate::phase::engine::discovery::stock_runs(&e.name, &e.path) {
            // As the guest names it.
            let guest = match e.path.strip_prefix(root) {
                Ok(rest) if root != Path::new("/") => Path::new("/").join(rest),
                _ => e.path.clone(),
            };
            outln!(
                "note: the stock script {will} {} at the next freeze; fsfreeze-hook did not ({why}); remove it or take its execute bit away if it must not run",
                crate::text::escape_path(&guest)
            );
        }
    }
}

impl Plan {
    /// Undoes one change of `enable`'s record; a hook path that holds
    /// another file than the one installed is kept, and added to `kept`.
    fn undo(&self, change: &Change, hook: &Path, kept: &mut Vec<PathBuf>) -> Result<(), String> {
        let remove = |path: &Path| {
            self.say(&format!("remove {}", path.display()));
            if !self.dry_run {
                let _ = fs::remove_file(self.entry(path));
            }
        };
        match change {
            Change::ConfEdited(conf, backup) => self.restore_conf(conf, backup, hook)?,
            Change::ConfCreated(conf) => remove(conf),
            Change::Hook(path, sum) => {
                let now = fs::read(self.path(path)).ok();
                let installed = now
                    .as_deref()
                    .is_some_and(|bytes| Some(checksum(bytes)) == *sum || a_build_of_ours(bytes));
                if now.is_none() || installed {
                    remove(path);
                } else {
                    kept.push(path.clone());
                    outln!(
                        "keep {}: it is no longer the fsfreeze-hook `enable` installed (a newer stock script, or an edit); compare it with {} and keep the one qemu-ga should run",
                        path.display(),
                        stock_path(path).display()
                    );
                }
            }
            Change::Diverted(path, stock) => {
                if kept.contains(path) {
                    outln!(
                        "keep the diversion of {} to {}: {} holds another file (see above); `dpkg-divert --package fsfreeze-hook --rename --remove {}` once it is moved away",
                        path.display(),
                        stock.display(),
                        path.display(),
                        path.display()
                    );
                    return Ok(());
                }
                self.say(&format!(
                    "undivert {}: {} back (dpkg-divert --remove)",
                    path.display(),
                    stock.display()
                ));
                if !self.dry_run {
                    dpkg_divert(&self.root, &["--remove".as_ref(), path.as_os_str()])?;
                }
            }
            Change::Stock(path, stock) => {
                if kept.contains(path) {
                    outln!(
                        "keep {} where it is: {} holds another file (see above)",
                        stock.display(),
                        path.display()
                    );
                    return Ok(());
                }
                self.say(&format!(
                    "put {} back as {}",
                    stock.display(),
                    path.display()
                ));
                if !self.dry_run {
                    fs::rename(self.entry(stock), self.entry(path)).map_err(|e| e.to_string())?;
                }
            }
            Change::Dir(dir) => {
                let empty = fs::read_dir(self.path(dir)).is_ok_and(|mut d| d.next().is_none());
                if !empty {
                    outln!("keep {}: it is not empty", dir.display());
                    return Ok(());
                }
                self.say(&format!("remove the empty {}", dir.display()));
                if !self.dry_run {
                    let _ = fs::remove_dir(self.entry(dir));
                }
            }
        }
        Ok(())
    }

    /// A config `enable` edited: the original back if nothing else changed
    /// since, else only our line taken out.
    fn restore_conf(&self, conf: &Path, backup: &Path, hook: &Path) -> Result<(), String> {
        let original =
            fs::read(self.path(backup)).map_err(|e| format!("{}: {e}", backup.display()))?;
        let now = fs::read_to_string(self.path(conf)).unwrap_or_default();
        if now == with_hook(&String::from_utf8_lossy(&original), hook) {
            self.say(&format!(
                "restore {} from {}",
                conf.display(),
                backup.display()
            ));
            if !self.dry_run {
                fs::rename(self.entry(backup), self.entry(conf)).map_err(|e| e.to_string())?;
            }
            return Ok(());
        }
        let line = format!("fsfreeze-hook={}", hook.display());
        self.say(&format!(
            "remove {line} from {} (edited since enable; the rest kept)",
            conf.display()
        ));
        if !self.dry_run {
            let kept: String = now
                .split_inclusive('\n')
                .filter(|l| l.trim() != line)
                .collect();
            self.write_file(conf, kept.as_bytes(), mode_of(&self.path(conf)))
                .map_err(|e| e.to_string())?;
            let _ = fs::remove_file(self.entry(backup));
        }
        Ok(())
    }
}
