//! `enable` and `disable`: set qemu-ga up to call this binary as its hook,
//! and undo exactly that; `refresh` keeps that hook current across upgrades.
//!
//! `enable` records each change in a small file beside the hook (here: the
//! record, the copy and the config); `disable` (disable.rs) reads it back.
//! Both are idempotent, and `--dry-run` only says what they would do. Debian's
//! diversion is divert.rs; `refresh` (refresh.rs) is what the packages'
//! scripts run.

use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

mod disable;
mod divert;
mod refresh;

pub use disable::{disable, enabled_elsewhere};
pub use refresh::refresh;

use disable::{current_hook, read_record};
use divert::dpkg_divert;

use crate::admin::agent::{self, CONFIGS, DEFAULT_HOOK, HookSetting, RESTART};
use crate::exit::Exit;
use crate::sys::paths::{entry_in_root, in_root};
use crate::text::{decode_field, encode_field};

/// The record's first line; paths in it are encoded fields.
const RECORD_HEADER: &str = "fsfreeze-hook enable 2";
/// The first version's record: paths as plain words.
const RECORD_HEADER_1: &str = "fsfreeze-hook enable 1";

/// One change `enable` made, as recorded (guest paths).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    /// Our binary was installed at this path, with this content (FNV-1a
    /// of its bytes; `None` in records of versions that kept none).
    Hook(PathBuf, Option<u64>),
    /// The file that was there was moved to the second path.
    Stock(PathBuf, PathBuf),
    /// This directory was created.
    Dir(PathBuf),
    /// dpkg diverts the first path (a conffile of qemu-guest-agent) to the
    /// second, where the package's upgrades write it from now on.
    Diverted(PathBuf, PathBuf),
    /// This qemu-ga.conf was created.
    ConfCreated(PathBuf),
    /// This qemu-ga.conf was edited; the original is at the second path.
    ConfEdited(PathBuf, PathBuf),
}

impl Change {
    /// One line of the record: a word for the kind, then encoded paths.
    fn line(&self) -> String {
        let p = |p: &Path| encode_field(p.as_os_str().as_bytes());
        match self {
            Change::Hook(a, Some(sum)) => format!("hook {} {sum:016x}", p(a)),
            Change::Hook(a, None) => format!("hook {}", p(a)),
            Change::Stock(a, b) => format!("stock {} {}", p(a), p(b)),
            Change::Dir(a) => format!("dir {}", p(a)),
            Change::Diverted(a, b) => format!("diverted {} {}", p(a), p(b)),
            Change::ConfCreated(a) => format!("conf-created {}", p(a)),
            Change::ConfEdited(a, b) => format!("conf-edited {} {}", p(a), p(b)),
        }
    }

    /// A line of the record; `encoded`: written by a version that encodes
    /// paths ([`RECORD_HEADER`]), else the first one's plain words.
    fn parse(line: &str, encoded: bool) -> Option<Change> {
        let mut w = line.split(' ');
        let kind = w.next()?;
        let mut path = || -> Option<PathBuf> {
            let word = w.next()?;
            match encoded {
                true => Some(PathBuf::from(OsString::from_vec(decode_field(word)?))),
                false => Some(PathBuf::from(word)),
            }
        };
        let a = path()?;
        Some(match kind {
            "hook" => Change::Hook(a, w.next().and_then(|s| u64::from_str_radix(s, 16).ok())),
            "stock" => Change::Stock(a, path()?),
            "dir" => Change::Dir(a),
            "diverted" => Change::Diverted(a, path()?),
            "conf-created" => Change::ConfCreated(a),
            "conf-edited" => Change::ConfEdited(a, path()?),
            _ => return None,
        })
    }
}

/// FNV-1a (64 bits) of `bytes`: what `disable` compares the hook with to
/// know it is still the file `enable` installed (not an adversary's hash:
/// only root writes there).
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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
    /// rpm's trigger says qemu-guest-agent's package was just installed
    /// (`refresh --agent-installed`).
    agent_installed: bool,
}

impl Plan {
    fn say(&self, msg: &str) {
        outln!("{}{msg}", if self.dry_run { "would: " } else { "" });
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

    /// The hook just written gets the label the policy's file contexts
    /// give its path (a new file takes its directory's: `etc_t`, where the
    /// RPM's module says `virt_qemu_ga_unconfined_exec_t`), where SELinux is
    /// enabled on the system this runs on.
    fn relabel(&self, guest: &Path) {
        if self.dry_run
            || self.root != Path::new("/")
            || !Path::new("/sys/fs/selinux/enforce").exists()
        {
            return;
        }
        self.say(&format!("relabel {} (restorecon)", guest.display()));
        let done = std::process::Command::new("restorecon")
            .arg(guest)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .status();
        if !done.is_ok_and(|s| s.success()) {
            outln!(
                "note: restorecon {} failed: run it by hand",
                guest.display()
            );
        }
    }

    fn write_file(&self, guest: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let target = self.entry(guest);
        // A new file of our own: what the tree held at the temporary name
        // (a symlink out of it, say) is removed, not followed.
        let tmp = target.with_extension("fsfreeze-hook-new");
        crate::sys::paths::replace_file(&target, &tmp, bytes, mode, true)
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

/// This binary's bytes; by the path it was executed by where /proc is not
/// mounted (a package's scriptlet, `chroot ROOT fsfreeze-hook enable` in an
/// image build: `sys::own_path`).
fn ours() -> std::io::Result<Vec<u8>> {
    fs::read("/proc/self/exe").or_else(|e| match crate::sys::own_path() {
        path if path.is_absolute() => fs::read(path),
        _ => Err(e),
    })
}

pub fn enable(root: &Path, dry_run: bool) -> Exit {
    match run_enable(root, dry_run) {
        Ok(()) => Exit::Ok,
        Err(msg) => Exit::Setup(format!("enable: {msg}")),
    }
}

fn run_enable(root: &Path, dry_run: bool) -> Result<(), String> {
    let (hook, conf_to_set) = hook_to_set(root, &agent::inspect(root))?;
    // The config the hook will read is not enable's to judge, but a broken
    // one stops every freeze: said first, then enabled all the same.
    if let Err(e) = crate::config::Settings::load_for_agent(&hook, root) {
        outln!(
            "problem: {e}: every freeze will refuse until it is fixed. Fix: fix that line (`fsfreeze-hook check` lists every problem)"
        );
    }
    let mut plan = Plan {
        root: root.to_path_buf(),
        dry_run,
        done: Vec::new(),
        agent_installed: false,
    };
    let binary = ours().map_err(|e| format!("cannot read this binary: {e}"))?;
    // A copy that earlier builds installed where dpkg diverts now.
    if !dry_run
        && let Some(changes) = read_record(root, &hook)?
        && plan.convert_copy_to_diversion(&hook, &changes)?
    {
        outln!("then restart the agent: {RESTART}");
        return Ok(());
    }
    let parent = hook.parent().unwrap_or(Path::new("/")).to_path_buf();
    plan.mkdir(&parent).map_err(|e| e.to_string())?;
    plan.install(&hook, &binary)?;
    plan.mkdir(&hooks_dir_of(root, &hook))
        .map_err(|e| e.to_string())?;
    if let Some(conf) = conf_to_set {
        plan.set_hook_in(&conf, &hook).map_err(|e| e.to_string())?;
    }
    if plan.done.is_empty() {
        outln!("already enabled: nothing to change");
        return Ok(());
    }
    if !dry_run {
        record(&plan, &hook).map_err(|e| format!("cannot write the record of changes: {e}"))?;
    }
    outln!("then restart the agent: {RESTART}");
    Ok(())
}

/// Where qemu-ga runs its hook, and the config to point at it when nothing
/// names one yet.
fn hook_to_set(root: &Path, agent: &agent::Agent) -> Result<(PathBuf, Option<PathBuf>), String> {
    match &agent.hook {
        HookSetting::CommandLine { path, .. } | HookSetting::Config { path, .. } => {
            Ok((path.clone(), None))
        }
        HookSetting::Disabled { source } => Err(format!(
            "{} switches qemu-ga's hook off (/dev/null); set the hook path there first (RHEL: FSFREEZE_HOOK_PATHNAME=/etc/qemu-ga/fsfreeze-hook in /etc/sysconfig/qemu-ga)",
            source.display()
        )),
        HookSetting::None => {
            // Edit the config qemu-ga reads: an existing one, else Debian's.
            let conf = CONFIGS
                .iter()
                .map(PathBuf::from)
                .find(|c| in_root(root, c).exists())
                .unwrap_or_else(|| PathBuf::from(CONFIGS[0]));
            Ok((PathBuf::from(DEFAULT_HOOK), Some(conf)))
        }
    }
}

/// Whether `bytes` are a build of fsfreeze-hook (any version): the
/// journal's header is in every one.
pub fn a_build_of_ours(bytes: &[u8]) -> bool {
    crate::text::contains(bytes, crate::phase::records::journal::HEADER.as_bytes())
}

/// Where the package installs the binary.
const PACKAGED: &str = "/usr/sbin/fsfreeze-hook";

impl Plan {
    /// This binary at `hook`: nothing if it is there already, another build
    /// replaced, anything else kept aside as `<hook>.stock`.
    fn install(&mut self, hook: &Path, binary: &[u8]) -> Result<(), String> {
        let linked =
            fs::symlink_metadata(self.entry(hook)).is_ok_and(|m| m.file_type().is_symlink());
        let existing = fs::read(self.path(hook));
        let copy_of_ours = existing.as_deref().is_ok_and(a_build_of_ours);
        if (linked || !copy_of_ours) && self.divert_and_link(hook)? {
            return Ok(());
        }
        match existing {
            Ok(existing) if existing == binary => {
                outln!("{} is already this fsfreeze-hook", hook.display());
                return Ok(());
            }
            Ok(existing) if a_build_of_ours(&existing) => {
                self.say(&format!(
                    "replace {} (another build of fsfreeze-hook) with this one",
                    hook.display()
                ));
            }
            Ok(_) if self.rewritten_by_agent_package(hook) => {
                return self.reclaim(hook, binary);
            }
            Ok(_) => self.keep_aside(hook)?,
            Err(_) => {}
        }
        self.say(&format!(
            "install this binary as {} (mode 0755)",
            hook.display()
        ));
        self.put_binary(hook, binary)
    }

    /// This binary written at `hook` (mode 0755), relabelled, recorded.
    fn put_binary(&mut self, hook: &Path, binary: &[u8]) -> Result<(), String> {
        self.write_file(hook, binary, 0o755)
            .map_err(|e| e.to_string())?;
        self.relabel(hook);
        self.done
            .push(Change::Hook(hook.to_path_buf(), Some(checksum(binary))));
        Ok(())
    }

    /// `<hook>.stock`, where a hook that is not ours goes, if nothing is
    /// there yet.
    fn free_stock(&self, hook: &Path) -> Result<PathBuf, String> {
        let stock = stock_path(hook);
        if self.path(&stock).exists() {
            return Err(format!(
                "{} is not fsfreeze-hook and {} exists too: move one of them away first",
                hook.display(),
                stock.display()
            ));
        }
        Ok(stock)
    }

    /// Moves a hook that is not ours to `<hook>.stock`, never to be run.
    fn keep_aside(&mut self, hook: &Path) -> Result<(), String> {
        let stock = self.free_stock(hook)?;
        self.say(&format!(
            "keep {} as {} (never run; `disable` puts it back)",
            hook.display(),
            stock.display()
        ));
        if !self.dry_run {
            fs::rename(self.entry(hook), self.entry(&stock)).map_err(|e| e.to_string())?;
        }
        self.done.push(Change::Stock(hook.to_path_buf(), stock));
        Ok(())
    }

    /// `fsfreeze-hook=HOOK` in qemu-ga's config `conf`: an existing one
    /// edited (its original kept beside it), else a new one.
    fn set_hook_in(&mut self, conf: &Path, hook: &Path) -> std::io::Result<()> {
        let at = self.path(conf);
        let Ok(text) = fs::read_to_string(&at) else {
            self.mkdir(conf.parent().unwrap_or(Path::new("/")))?;
            self.say(&format!(
                "create {} with fsfreeze-hook={}",
                conf.display(),
                hook.display()
            ));
            self.write_file(conf, with_hook("", hook).as_bytes(), 0o644)?;
            self.done.push(Change::ConfCreated(conf.to_path_buf()));
            return Ok(());
        };
        let backup = backup_path(conf);
        self.say(&format!(
            "set fsfreeze-hook={} in {} (the rest kept; original saved as {})",
            hook.display(),
            conf.display(),
            backup.display()
        ));
        if !self.dry_run {
            let mode = mode_of(&at);
            self.write_file(&backup, text.as_bytes(), mode)?;
            self.write_file(conf, with_hook(&text, hook).as_bytes(), mode)?;
        }
        self.done
            .push(Change::ConfEdited(conf.to_path_buf(), backup));
        Ok(())
    }
}

/// The permission bits of a file, 0644 when it cannot be read.
fn mode_of(path: &Path) -> u32 {
    fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644)
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
            Change::Hook("/a".into(), None),
            Change::Hook("/a".into(), Some(checksum(b"binary"))),
            Change::Stock("/a".into(), "/a.stock".into()),
            Change::Dir("/d".into()),
            Change::ConfCreated("/c".into()),
            Change::ConfEdited("/c".into(), "/c.b".into()),
            // Any byte of a path: spaces, a newline, not UTF-8.
            Change::Stock("/my hooks/a b".into(), "/x\ny".into()),
            Change::Dir(PathBuf::from(OsString::from_vec(b"/d\xff%".to_vec()))),
        ] {
            assert_eq!(Change::parse(&c.line(), true), Some(c));
        }
        // A record of the first version: plain words.
        assert_eq!(
            Change::parse(
                "stock /etc/qemu/fsfreeze-hook /etc/qemu/fsfreeze-hook.stock",
                false
            ),
            Some(Change::Stock(
                "/etc/qemu/fsfreeze-hook".into(),
                "/etc/qemu/fsfreeze-hook.stock".into()
            ))
        );
    }
}
