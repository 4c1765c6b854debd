//! `enable` and `disable`: set qemu-ga up to call this binary as its hook,
//! and undo exactly that. `enable` records each change in a small file beside
//! the hook; `disable` reads it back. Both are idempotent, and `--dry-run`
//! only says what they would do.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::admin::agent::{self, CONFIGS, DEFAULT_HOOK, HookSetting};
use crate::exit::Exit;
use crate::sys::paths::{entry_in_root, in_root};

const RECORD_HEADER: &str = "fsfreeze-hook enable 1";
const RESTART: &str = "systemctl restart qemu-guest-agent";

/// One change `enable` made, as recorded (guest paths).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    /// Our binary was installed at this path.
    Hook(PathBuf),
    /// The file that was there was moved to the second path.
    Stock(PathBuf, PathBuf),
    /// This directory was created.
    Dir(PathBuf),
    /// This qemu-ga.conf was created.
    ConfCreated(PathBuf),
    /// This qemu-ga.conf was edited; the original is at the second path.
    ConfEdited(PathBuf, PathBuf),
}

impl Change {
    fn line(&self) -> String {
        let p = |p: &Path| crate::text::escape_path(p);
        match self {
            Change::Hook(a) => format!("hook {}", p(a)),
            Change::Stock(a, b) => format!("stock {} {}", p(a), p(b)),
            Change::Dir(a) => format!("dir {}", p(a)),
            Change::ConfCreated(a) => format!("conf-created {}", p(a)),
            Change::ConfEdited(a, b) => format!("conf-edited {} {}", p(a), p(b)),
        }
    }

    fn parse(line: &str) -> Option<Change> {
        let mut w = line.split(' ');
        let kind = w.next()?;
        let a = PathBuf::from(w.next()?);
        Some(match kind {
            "hook" => Change::Hook(a),
            "stock" => Change::Stock(a, PathBuf::from(w.next()?)),
            "dir" => Change::Dir(a),
            "conf-created" => Change::ConfCreated(a),
            "conf-edited" => Change::ConfEdited(a, PathBuf::from(w.next()?)),
            _ => return None,
        })
    }
}

fn record_path(hook: &Path) -> PathBuf {
    let mut s = hook.as_os_str().to_os_string();
    s.push(".enabled");
    PathBuf::from(s)
}

fn stock_path(hook: &Path) -> PathBuf {
    let mut s = hook.as_os_str().to_os_string();
    s.push(".stock");
    PathBuf::from(s)
}

fn backup_path(conf: &Path) -> PathBuf {
    let mut s = conf.as_os_str().to_os_string();
    s.push(".before-fsfreeze-hook");
    PathBuf::from(s)
}

/// `conf` with `fsfreeze-hook=HOOK` in its `[general]` section.
fn with_hook(conf: &str, hook: &Path) -> String {
    let line = format!("fsfreeze-hook={}", hook.display());
    let mut out = String::with_capacity(conf.len() + line.len() + 12);
    let mut inserted = false;
    for l in conf.split_inclusive('\n') {
        out.push_str(l);
        if !inserted && l.trim() == "[general]" {
            if !l.ends_with('\n') {
                out.push('\n');
            }
            out.push_str(&line);
            out.push('\n');
            inserted = true;
        }
    }
    if !inserted {
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("[general]\n");
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// What `enable` does on one system: where, and each step.
struct Plan {
    root: PathBuf,
    dry_run: bool,
    done: Vec<Change>,
}

impl Plan {
    fn say(&self, msg: &str) {
        println!("{}{msg}", if self.dry_run { "would: " } else { "" });
    }

    /// Where to read `guest` (inside the root, whatever its links say).
    fn path(&self, guest: &Path) -> PathBuf {
        in_root(&self.root, guest)
    }

    /// The entry to write, rename or remove for `guest` (inside the root).
    fn entry(&self, guest: &Path) -> PathBuf {
        entry_in_root(&self.root, guest)
    }

    fn mkdir(&mut self, guest: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut at = guest.to_path_buf();
        while !self.path(&at).exists() {
            missing.push(at.clone());
            match at.parent() {
                Some(p) => at = p.to_path_buf(),
                None => break,
            }
        }
        for dir in missing.into_iter().rev() {
            self.say(&format!("create {} (mode 0755)", dir.display()));
            if !self.dry_run {
                fs::DirBuilder::new().mode(0o755).create(self.entry(&dir))?;
                fs::set_permissions(self.entry(&dir), fs::Permissions::from_mode(0o755))?;
            }
            self.done.push(Change::Dir(dir));
        }
        Ok(())
    }

    fn write_file(&self, guest: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let target = self.entry(guest);
        let tmp = target.with_extension("fsfreeze-hook-new");
        // A new file of our own: whatever the tree held at that name (a
        // symlink out of it, say) is removed, not followed.
        match fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))?;
        fs::rename(tmp, target)
    }
}

/// The hooks dir the runner will read when qemu-ga runs `hook` (the
/// stock rule, `fsfreeze-hook.d` beside the hook, unless the config beside
/// it says otherwise), as a path of the system at `root`.
pub fn hooks_dir_of(root: &Path, hook: &Path) -> PathBuf {
    match crate::config::Settings::load_for_agent(hook, root) {
        Ok(s) => match s.hooks_dir.strip_prefix(root) {
            Ok(inside) => Path::new("/").join(inside),
            Err(_) => s.hooks_dir,
        },
        Err(_) => crate::config::default_hooks_dir(hook),
    }
}

fn ours() -> std::io::Result<Vec<u8>> {
    fs::read("/proc/self/exe")
}

pub fn enable(root: &Path, dry_run: bool) -> Exit {
    match run_enable(root, dry_run) {
        Ok(()) => Exit::Ok,
        Err(msg) => Exit::Setup(format!("enable: {msg}")),
    }
}

fn run_enable(root: &Path, dry_run: bool) -> Result<(), String> {
    let agent = agent::inspect(root);
    let (hook, conf_to_set) = match &agent.hook {
        HookSetting::CommandLine { path, .. } | HookSetting::Config { path, .. } => {
            (path.clone(), None)
        }
        HookSetting::Disabled { source } => {
            return Err(format!(
                "{} switches qemu-ga's hook off (/dev/null); set the hook path there first (RHEL: FSFREEZE_HOOK_PATHNAME=/etc/qemu-ga/fsfreeze-hook in /etc/sysconfig/qemu-ga)",
                source.display()
            ));
        }
        HookSetting::None => {
            // Edit the config qemu-ga reads: an existing one, else Debian's.
            let conf = CONFIGS
                .iter()
                .map(PathBuf::from)
                .find(|c| in_root(root, c).exists())
                .unwrap_or_else(|| PathBuf::from(CONFIGS[0]));
            (PathBuf::from(DEFAULT_HOOK), Some(conf))
        }
    };
    let mut plan = Plan {
        root: root.to_path_buf(),
        dry_run,
        done: Vec::new(),
    };
    let binary = ours().map_err(|e| format!("cannot read this binary: {e}"))?;
    let hook_at = plan.path(&hook);
    let parent = hook.parent().unwrap_or(Path::new("/")).to_path_buf();
    plan.mkdir(&parent).map_err(|e| e.to_string())?;
    match fs::read(&hook_at) {
        Ok(existing) if existing == binary => {
            println!("{} is already this fsfreeze-hook", hook.display())
        }
        Ok(existing) => {
            let marker: &[u8] = crate::phase::journal::HEADER.as_bytes();
            if existing.windows(marker.len()).any(|w| w == marker) {
                plan.say(&format!(
                    "replace {} (another build of fsfreeze-hook) with this one",
                    hook.display()
                ));
            } else {
                let stock = stock_path(&hook);
                if plan.path(&stock).exists() {
                    return Err(format!(
                        "{} is not fsfreeze-hook and {} exists too: move one of them away first",
                        hook.display(),
                        stock.display()
                    ));
                }
                plan.say(&format!(
                    "keep {} as {} (never run; `disable` puts it back)",
                    hook.display(),
                    stock.display()
                ));
                if !dry_run {
                    fs::rename(plan.entry(&hook), plan.entry(&stock)).map_err(|e| e.to_string())?;
                }
                plan.done.push(Change::Stock(hook.clone(), stock));
            }
            plan.say(&format!(
                "install this binary as {} (mode 0755)",
                hook.display()
            ));
            plan.write_file(&hook, &binary, 0o755)
                .map_err(|e| e.to_string())?;
            plan.done.push(Change::Hook(hook.clone()));
        }
        Err(_) => {
            plan.say(&format!(
                "install this binary as {} (mode 0755)",
                hook.display()
            ));
            plan.write_file(&hook, &binary, 0o755)
                .map_err(|e| e.to_string())?;
            plan.done.push(Change::Hook(hook.clone()));
        }
    }
    plan.mkdir(&hooks_dir_of(root, &hook))
        .map_err(|e| e.to_string())?;
    if let Some(conf) = conf_to_set {
        let at = plan.path(&conf);
        match fs::read_to_string(&at) {
            Ok(text) => {
                let backup = backup_path(&conf);
                plan.say(&format!(
                    "set fsfreeze-hook={} in {} (the rest kept; original saved as {})",
                    hook.display(),
                    conf.display(),
                    backup.display()
                ));
                if !dry_run {
                    let mode = fs::metadata(&at)
                        .map(|m| m.permissions().mode() & 0o7777)
                        .unwrap_or(0o644);
                    plan.write_file(&backup, text.as_bytes(), mode)
                        .map_err(|e| e.to_string())?;
                    plan.write_file(&conf, with_hook(&text, &hook).as_bytes(), mode)
                        .map_err(|e| e.to_string())?;
                }
                plan.done.push(Change::ConfEdited(conf, backup));
            }
            Err(_) => {
                plan.mkdir(conf.parent().unwrap_or(Path::new("/")))
                    .map_err(|e| e.to_string())?;
                plan.say(&format!(
                    "create {} with fsfreeze-hook={}",
                    conf.display(),
                    hook.display()
                ));
                plan.write_file(&conf, with_hook("", &hook).as_bytes(), 0o644)
                    .map_err(|e| e.to_string())?;
                plan.done.push(Change::ConfCreated(conf));
            }
        }
    }
    if plan.done.is_empty() {
        println!("already enabled: nothing to change");
        return Ok(());
    }
    if !dry_run {
        record(&plan, &hook).map_err(|e| format!("cannot write the record of changes: {e}"))?;
    }
    println!("then restart the agent: {RESTART}");
    Ok(())
}

/// Appends the changes to the record beside the hook (a second `enable`
/// that changes something adds to it).
fn record(plan: &Plan, hook: &Path) -> std::io::Result<()> {
    let path = plan.path(&record_path(hook));
    let mut text = fs::read_to_string(&path).unwrap_or_else(|_| format!("{RECORD_HEADER}\n"));
    for c in &plan.done {
        text.push_str(&c.line());
        text.push('\n');
    }
    plan.write_file(&record_path(hook), text.as_bytes(), 0o644)
}

pub fn disable(root: &Path, dry_run: bool) -> Exit {
    match run_disable(root, dry_run) {
        Ok(()) => Exit::Ok,
        Err(msg) => Exit::Setup(format!("disable: {msg}")),
    }
}

fn run_disable(root: &Path, dry_run: bool) -> Result<(), String> {
    let agent = agent::inspect(root);
    let hook = agent
        .hook
        .path()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_HOOK));
    let rec = in_root(root, &record_path(&hook));
    let Ok(text) = fs::read_to_string(&rec) else {
        println!(
            "not enabled by fsfreeze-hook (no {}): nothing to undo",
            record_path(&hook).display()
        );
        return Ok(());
    };
    let mut lines = text.lines();
    if lines.next() != Some(RECORD_HEADER) {
        return Err(format!("{} is not a record of `enable`", rec.display()));
    }
    let changes: Vec<Change> = lines.filter_map(Change::parse).collect();
    let plan = Plan {
        root: root.to_path_buf(),
        dry_run,
        done: Vec::new(),
    };
    let at = |p: &Path| plan.path(p);
    let entry = |p: &Path| plan.entry(p);
    // Undo in reverse order of doing.
    for change in changes.iter().rev() {
        match change {
            Change::ConfEdited(conf, backup) => {
                let original =
                    fs::read(at(backup)).map_err(|e| format!("{}: {e}", backup.display()))?;
                let now = fs::read_to_string(at(conf)).unwrap_or_default();
                let ours = with_hook(&String::from_utf8_lossy(&original), &hook);
                if now == ours {
                    plan.say(&format!(
                        "restore {} from {}",
                        conf.display(),
                        backup.display()
                    ));
                    if !dry_run {
                        fs::rename(entry(backup), entry(conf)).map_err(|e| e.to_string())?;
                    }
                } else {
                    // Edited since: take out only our line.
                    let line = format!("fsfreeze-hook={}", hook.display());
                    plan.say(&format!(
                        "remove {line} from {} (edited since enable; the rest kept)",
                        conf.display()
                    ));
                    if !dry_run {
                        let kept: String = now
                            .split_inclusive('\n')
                            .filter(|l| l.trim() != line)
                            .collect();
                        let mode = fs::metadata(at(conf))
                            .map(|m| m.permissions().mode() & 0o7777)
                            .unwrap_or(0o644);
                        plan.write_file(conf, kept.as_bytes(), mode)
                            .map_err(|e| e.to_string())?;
                        let _ = fs::remove_file(entry(backup));
                    }
                }
            }
            Change::ConfCreated(conf) => {
                plan.say(&format!("remove {}", conf.display()));
                if !dry_run {
                    let _ = fs::remove_file(entry(conf));
                }
            }
            Change::Hook(path) => {
                plan.say(&format!("remove {}", path.display()));
                if !dry_run {
                    let _ = fs::remove_file(entry(path));
                }
            }
            Change::Stock(path, stock) => {
                plan.say(&format!(
                    "put {} back as {}",
                    stock.display(),
                    path.display()
                ));
                if !dry_run {
                    fs::rename(entry(stock), entry(path)).map_err(|e| e.to_string())?;
                }
            }
            Change::Dir(dir) => {
                let empty = fs::read_dir(at(dir)).is_ok_and(|mut d| d.next().is_none());
                if empty {
                    plan.say(&format!("remove the empty {}", dir.display()));
                    if !dry_run {
                        let _ = fs::remove_dir(entry(dir));
                    }
                } else {
                    println!("keep {}: it is not empty", dir.display());
                }
            }
        }
    }
    plan.say(&format!("remove {}", record_path(&hook).display()));
    if !dry_run {
        let _ = fs::remove_file(plan.entry(&record_path(&hook)));
    }
    println!("then restart the agent: {RESTART}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hook_line_goes_into_general_and_keeps_the_rest() {
        let hook = Path::new("/etc/qemu/fsfreeze-hook");
        assert_eq!(
            with_hook("", hook),
            "[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\n"
        );
        assert_eq!(
            with_hook("[general]\nverbose=true\n", hook),
            "[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\nverbose=true\n"
        );
        assert_eq!(
            with_hook("# mine\n[other]\nx=1", hook),
            "# mine\n[other]\nx=1\n\n[general]\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\n"
        );
    }

    #[test]
    fn record_lines_round_trip() {
        for c in [
            Change::Hook("/a".into()),
            Change::Stock("/a".into(), "/a.stock".into()),
            Change::Dir("/d".into()),
            Change::ConfCreated("/c".into()),
            Change::ConfEdited("/c".into(), "/c.b".into()),
        ] {
            assert_eq!(Change::parse(&c.line()), Some(c));
        }
    }
}
