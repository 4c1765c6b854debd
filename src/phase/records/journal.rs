//! What the last freeze left holding, so that a thaw runs exactly those hooks,
//! and the lock that keeps two phases from interleaving.
//!
//! The journal is a small text file in the state dir (tmpfs `/run` by default:
//! gone at boot, which is right, since nothing is held after a reboot):
//!
//! ```text
//! fsfreeze-hook journal 1
//! freeze <unix-ms> <pid>
//! held <name>           a hook an earlier freeze left frozen (no thaw has
//!                       completed for it since): carried into this record
//! start <name>          one line before each hook's freeze starts
//! frozen <unix-ms>      the freeze phase completed
//! thawed <name>         a thaw (or rollback) of that hook ran to its end
//! watchdog <pid> <ms> <start>
//!                       standalone: the watchdog, its deadline (0: none) and
//!                       start time (older versions wrote no start)
//! fs <mountpoint> <dev>  standalone: one line before each FIFREEZE, with the
//!                       st_dev of the filesystem it is to freeze (older
//!                       versions wrote the mountpoint alone)
//! fs-skip <mountpoint>  ... which did not freeze it (unsupported, frozen by
//!                       someone else, failed): not ours to thaw
//! fs-frozen <unix-ms>   every filesystem is frozen
//! fs-thawed <unix-ms>   ... and thawed again; the hooks' thaw comes next
//! ```
//!
//! or, once nothing is held, the header and `idle <unix-ms> <why>`. Names and
//! paths are percent-encoded so any byte string fits on a line. Beside it,
//! `thawed-under` ("b<boot-ms> <who>") is where a thaw of ours that thawed a
//! running snapshot's filesystems says so at once.
//!
//! A hook's freeze is never forgotten: a new freeze carries over whatever an
//! earlier one left held (`held`, `fs`), and a hook leaves the record only by
//! a `thawed` line, written when its thaw has run to its end, so that a thaw
//! cut off (a signal, the phase deadline, `kill -9` of the runner) leaves the
//! rest for the next thaw and one that completed is not run again. A filesystem
//! is recorded before its FIFREEZE: a runner killed right after the ioctl
//! still leaves it listed, and thawing one that is not frozen is harmless.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use crate::filesystems::FrozenFs;
use crate::sys::proc::Ident;
use crate::text::{decode_field as decode, encode_field as encode};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// The journal's first line; its presence in a binary also marks it as ours.
pub const HEADER: &str = "fsfreeze-hook journal 1";

/// What the journal says is held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// No journal: first run since boot, or the state dir was lost.
    Absent,
    /// The last freeze was thawed or rolled back; by what (the `why` of
    /// [`Journal::settle`]: "thaw", "rollback", "max_frozen").
    Idle(String),
    /// A freeze that was not thawed yet.
    Unthawed(Unthawed),
    /// Unreadable, or written by another version: treated as absent.
    Corrupt(String),
}

/// What a freeze not yet thawed holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unthawed {
    pub since_ms: u64,
    /// Hooks whose freeze started, in start order.
    pub names: Vec<OsString>,
    /// The whole hook phase finished (otherwise the runner died during it).
    pub complete: bool,
    /// Filesystems frozen (or about to be), in freeze order.
    pub filesystems: Vec<FrozenFs>,
    /// When every filesystem was frozen.
    pub frozen_at_ms: Option<u64>,
    /// The watchdog and its deadline (unix ms), if one is armed.
    pub watchdog: Option<(Ident, Option<u64>)>,
    /// Drop-in: the guard and its deadline (unix ms), if one is armed.
    pub guard: Option<(Ident, u64)>,
}

pub struct Journal {
    path: PathBuf,
    append: Option<File>,
}

impl Journal {
    pub fn new(state_dir: &Path) -> Journal {
        Journal {
            path: state_dir.join("journal"),
            append: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When the record became idle (its `idle` line's time), if it is.
    pub fn idle_since_ms(&self) -> Option<u64> {
        let text = fs::read_to_string(&self.path).ok()?;
        let line = text.lines().find_map(|l| l.strip_prefix("idle "))?;
        line.split(' ').next()?.parse().ok()
    }

    pub fn read(&self) -> Recorded {
        match fs::read(&self.path) {
            Ok(bytes) => parse(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Recorded::Absent,
            Err(e) => Recorded::Corrupt(format!("cannot read: {e}")),
        }
    }

    /// Starts a freeze record, carrying over what the current one still
    /// holds; later [`Journal::started`] calls append to it. Returns the
    /// record's start time.
    pub fn begin_freeze(&mut self) -> Result<u64> {
        let since_ms = now_ms();
        let mut text = format!("{HEADER}\nfreeze {since_ms} {}\n", std::process::id());
        if let Recorded::Unthawed(carried) = self.read() {
            for name in &carried.names {
                text.push_str(&format!("held {}\n", encode(name.as_bytes())));
            }
            for fs in &carried.filesystems {
                text.push_str(&fs_line(fs));
            }
        }
        self.replace(&text)?;
        self.open_append()?;
        Ok(since_ms)
    }

    /// Records that a hook's freeze is about to start. Written before the
    /// spawn, so a runner killed mid-hook still leaves that hook to be thawed.
    pub fn started(&mut self, name: &std::ffi::OsStr) -> Result<()> {
        self.append_line(&format!("start {}\n", encode(name.as_bytes())))
    }

    pub fn mark_frozen(&mut self) -> Result<()> {
        self.append_line(&format!("frozen {}\n", now_ms()))
    }

    /// Records the watchdog guarding this freeze.
    pub fn watchdog(&mut self, who: Ident, deadline_ms: Option<u64>) -> Result<()> {
        self.append_line(&helper_line("watchdog", who, deadline_ms.unwrap_or(0)))
    }

    /// Records the guard left behind by a drop-in freeze.
    pub fn guard(&mut self, who: Ident, deadline_ms: u64) -> Result<()> {
        self.append_to_held(&helper_line("guard", who, deadline_ms))
    }

    /// Records a filesystem about to be frozen, and which one it is.
    pub fn fs_freezing(&mut self, mountpoint: &Path, dev: u64) -> Result<()> {
        self.append_line(&fs_line(&FrozenFs {
            mountpoint: mountpoint.to_path_buf(),
            dev: Some(dev),
        }))
    }

    /// Records that the last FIFREEZE did not freeze `mountpoint` for us.
    pub fn fs_skipped(&mut self, mountpoint: &Path) -> Result<()> {
        self.append_line(&format!(
            "fs-skip {}\n",
            encode(mountpoint.as_os_str().as_bytes())
        ))
    }

    pub fn fs_all_frozen(&mut self) -> Result<()> {
        self.append_line(&format!("fs-frozen {}\n", now_ms()))
    }

    /// Records that every filesystem of this freeze is thawed again (the
    /// hooks may still hold).
    pub fn fs_all_thawed(&mut self) -> Result<()> {
        self.append_line(&format!("fs-thawed {}\n", now_ms()))
    }

    /// Records that a hook's thaw (or rollback) ran to its end: it holds
    /// nothing any more. Appended at once, so a runner killed later in the
    /// phase does not thaw it twice.
    pub fn thawed(&mut self, name: &std::ffi::OsStr) -> Result<()> {
        self.append_to_held(&format!("thawed {}\n", encode(name.as_bytes())))
    }

    /// Records, outside a freeze, that the filesystems of the record were
    /// thawed (those whose thaw failed are recorded again afterwards).
    pub fn note_fs_thawed(&mut self) -> Result<()> {
        self.append_to_held(&format!("fs-thawed {}\n", now_ms()))
    }

    /// Appends to the record when it holds something (nothing to say else).
    fn append_to_held(&mut self, line: &str) -> Result<()> {
        if self.append.is_none() {
            if !matches!(self.read(), Recorded::Unthawed(_)) {
                return Ok(());
            }
            self.open_append()?;
        }
        self.append_line(line)
    }

    fn open_append(&mut self) -> Result<()> {
        let file = OpenOptions::new()
            .append(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .with_context(|| format!("cannot open journal {}", self.path.display()))?;
        self.append = Some(file);
        Ok(())
    }

    /// Ends a thaw or rollback: what the record still holds (hooks without a
    /// completed thaw, filesystems) is written anew as one complete record;
    /// idle when nothing is held.
    pub fn settle(&mut self, why: &str) -> Result<()> {
        let rest = match self.read() {
            Recorded::Unthawed(h) => h,
            _ => Unthawed::default(),
        };
        self.keep_unthawed(&rest, why)
    }

    /// Ends a freeze record, keeping what `rest` still holds (hooks not
    /// thawed, filesystems whose thaw failed); idle when it holds nothing.
    pub fn keep_unthawed(&mut self, rest: &Unthawed, why: &str) -> Result<()> {
        self.append = None;
        if rest.names.is_empty() && rest.filesystems.is_empty() {
            return self.replace(&format!("{HEADER}\nidle {} {why}\n", now_ms()));
        }
        let mut t = format!(
            "{HEADER}\nfreeze {} {}\n",
            rest.since_ms,
            std::process::id()
        );
        for name in &rest.names {
            t.push_str(&format!("start {}\n", encode(name.as_bytes())));
        }
        t.push_str(&format!("frozen {}\n", now_ms()));
        for fs in &rest.filesystems {
            t.push_str(&fs_line(fs));
        }
        self.replace(&t)
    }

    fn append_line(&mut self, line: &str) -> Result<()> {
        let file = self
            .append
            .as_mut()
            .context("journal is not open for a freeze")?;
        file.write_all(line.as_bytes())
            .with_context(|| format!("cannot write journal {}", self.path.display()))
    }

    /// Writes a whole new journal atomically (temp file, then rename), so a
    /// crash leaves either the old or the new record, never a mix.
    fn replace(&self, text: &str) -> Result<()> {
        // A new file at the temporary name (whatever was there removed, a
        // link not followed): the state dir's owner alone chooses its files.
        let tmp = self.path.with_extension("tmp");
        crate::sys::paths::replace_file(&self.path, &tmp, text.as_bytes(), 0o600, false)
            .with_context(|| format!("cannot write journal {}", self.path.display()))
    }
}

impl crate::filesystems::Ledger for Journal {
    fn freezing(&mut self, mountpoint: &Path, dev: u64) -> Result<()> {
        self.fs_freezing(mountpoint, dev)
    }

    fn not_frozen(&mut self, mountpoint: &Path) -> Result<()> {
        self.fs_skipped(mountpoint)
    }
}

fn parse(bytes: &[u8]) -> Recorded {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Recorded::Corrupt("not UTF-8".into());
    };
    let mut lines = text.lines();
    match lines.next() {
        Some(HEADER) => {}
        Some(other) if other.starts_with("fsfreeze-hook journal ") => {
            return Recorded::Corrupt(format!("written by another version ({other})"));
        }
        _ => return Recorded::Corrupt("no journal header".into()),
    }
    let mut state: Option<Recorded> = None;
    for line in lines {
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        let bad = || Recorded::Corrupt(format!("bad line: {line}"));
        let held = match (&mut state, word) {
            (None, "idle") => {
                let why = rest.split_once(' ').map_or("", |(_, why)| why);
                state = Some(Recorded::Idle(why.to_string()));
                continue;
            }
            (None, "freeze") => {
                let Some(since_ms) = rest.split(' ').next().and_then(|s| s.parse().ok()) else {
                    return bad();
                };
                state = Some(Recorded::Unthawed(Unthawed {
                    since_ms,
                    ..Unthawed::default()
                }));
                continue;
            }
            (Some(Recorded::Unthawed(h)), _) => h,
            _ => return Recorded::Corrupt(format!("unexpected line: {line}")),
        };
        let path = || {
            decode(rest)
                .filter(|p| !p.is_empty())
                .map(|p| PathBuf::from(OsString::from_vec(p)))
        };
        let name = || {
            decode(rest)
                .filter(|n| !n.is_empty())
                .map(OsString::from_vec)
        };
        match word {
            // Carried from an earlier freeze, or started in this one: held,
            // once, at its latest place in the freeze order.
            "held" | "start" if !held.complete => match name() {
                Some(n) => {
                    held.names.retain(|h| h != &n);
                    held.names.push(n);
                }
                None => return bad(),
            },
            "thawed" => match name() {
                Some(n) => held.names.retain(|h| h != &n),
                None => return bad(),
            },
            "frozen" => held.complete = true,
            "watchdog" => match parse_helper(rest) {
                Some((who, deadline)) => {
                    held.watchdog = Some((who, (deadline != 0).then_some(deadline)));
                }
                None => return bad(),
            },
            "guard" => match parse_helper(rest) {
                Some(helper) => held.guard = Some(helper),
                None => return bad(),
            },
            "fs" => match parse_fs(rest) {
                Some(f) => held.filesystems.push(f),
                None => return bad(),
            },
            "fs-skip" => match path() {
                Some(p) => held.filesystems.retain(|f| f.mountpoint != p),
                None => return bad(),
            },
            "fs-frozen" => held.frozen_at_ms = rest.parse().ok(),
            "fs-thawed" => {
                held.filesystems.clear();
                held.frozen_at_ms = None;
            }
            _ => return Recorded::Corrupt(format!("unexpected line: {line}")),
        }
    }
    state.unwrap_or_else(|| Recorded::Corrupt("empty journal".into()))
}

/// "fs MOUNTPOINT DEV" (the mountpoint encoded).
fn fs_line(fs: &FrozenFs) -> String {
    let path = encode(fs.mountpoint.as_os_str().as_bytes());
    match fs.dev {
        Some(dev) => format!("fs {path} {dev}\n"),
        None => format!("fs {path}\n"),
    }
}

fn parse_fs(rest: &str) -> Option<FrozenFs> {
    let mut parts = rest.split(' ');
    let path = decode(parts.next()?).filter(|p| !p.is_empty())?;
    let dev = match parts.next() {
        Some(d) => Some(d.parse().ok()?),
        None => None,
    };
    parts.next().is_none().then(|| FrozenFs {
        mountpoint: PathBuf::from(OsString::from_vec(path)),
        dev,
    })
}

/// "WORD PID DEADLINE START": the start time last, where a version that
/// wrote none had the line's end.
fn helper_line(word: &str, who: Ident, deadline_ms: u64) -> String {
    match who.start {
        Some(start) => format!("{word} {} {deadline_ms} {start}\n", who.pid),
        None => format!("{word} {} {deadline_ms}\n", who.pid),
    }
}

fn parse_helper(rest: &str) -> Option<(Ident, u64)> {
    let mut parts = rest.split(' ');
    let pid = parts.next()?.parse().ok().filter(|p: &i32| *p > 0)?;
    let deadline = parts.next()?.parse().ok()?;
    let start = match parts.next() {
        Some(s) => Some(s.parse().ok()?),
        None => None,
    };
    parts
        .next()
        .is_none()
        .then_some((Ident { pid, start }, deadline))
}

/// `<state dir>/thawed-under`: a thaw of ours that thawed, or knows to be
/// thawed, the filesystems a standalone freeze recorded while they are meant
/// to stay frozen (`thaw --fs`; qemu-ga's thaw, which thaws every
/// filesystem before it runs its hook) says so here, at once, for a
/// `snapshot` whose COMMAND still copies. A file of its own, not a journal
/// line: a watchdog of an older build reading the journal must still
/// understand every line of it.
fn thawed_under_path(state_dir: &Path) -> PathBuf {
    state_dir.join("thawed-under")
}

/// Says who thawed the recorded filesystems ("b<boot-ms> <who>": on the
/// boot clock, which no one steps; an older build's wall-clock line, with
/// no `b`, is never taken for a new one).
pub fn note_thawed_under(state_dir: &Path, who: &str) -> Result<()> {
    let tmp = state_dir.join(".thawed-under.tmp");
    let text = format!(
        "b{} {}\n",
        crate::sys::boot_ms(),
        crate::text::escape_line(who.as_bytes())
    );
    crate::sys::paths::replace_file(
        &thawed_under_path(state_dir),
        &tmp,
        text.as_bytes(),
        0o600,
        false,
    )
    .with_context(|| format!("cannot write {}", thawed_under_path(state_dir).display()))
}

/// Who thawed the recorded filesystems at or after `since_boot_ms` (the
/// boot clock, [`crate::sys::boot_ms`]), if one of ours said so.
pub fn thawed_under_since(state_dir: &Path, since_boot_ms: u64) -> Option<String> {
    let text = fs::read_to_string(thawed_under_path(state_dir)).ok()?;
    let (ms, who) = text.trim_end().split_once(' ')?;
    let ms = ms.strip_prefix('b')?.parse::<u64>().ok()?;
    (ms >= since_boot_ms).then(|| who.to_string())
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a freeze keeps the text of the config it ran under.
fn saved_config_path(state_dir: &Path) -> PathBuf {
    state_dir.join("config.at-freeze")
}

/// Keeps `text`, the config a freeze runs under, in the state dir (none: no
/// config file, whatever an earlier freeze kept goes): a thaw that finds
/// the config unusable runs with it ([`saved_config`]).
pub fn save_config(state_dir: &Path, text: Option<&str>) -> Result<()> {
    let path = saved_config_path(state_dir);
    match text {
        Some(text) => crate::sys::paths::replace_file(
            &path,
            &state_dir.join(".config.at-freeze.tmp"),
            text.as_bytes(),
            0o600,
            false,
        )
        .with_context(|| format!("cannot keep the config in {}", path.display())),
        None => match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("cannot remove {}", path.display()))
            }
            _ => Ok(()),
        },
    }
}

/// The config text the last freeze kept, and where it is.
pub fn saved_config(state_dir: &Path) -> Option<(PathBuf, String)> {
    let path = saved_config_path(state_dir);
    let text = fs::read_to_string(&path).ok()?;
    Some((path, text))
}

/// Creates the state dir (mode 0700) if needed, labelled for qemu-ga's
/// SELinux domain, and checks that it is a directory.
pub fn ensure_state_dir(dir: &Path) -> Result<()> {
    crate::sys::selinux::creating_for_agent(|| {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
    })
    .with_context(|| format!("cannot create state dir {}", dir.display()))?;
    if !fs::metadata(dir)?.is_dir() {
        bail!("state dir {} is not a directory", dir.display());
    }
    Ok(())
}

/// An exclusive lock on `<state dir>/lock`, released when dropped (or when the
/// process dies: flock locks belong to the open file).
pub struct StateLock {
    _lock: Flock<File>,
}

/// A stop signal (SIGTERM, ^C, ...) came while a run waited for the lock.
#[derive(Debug)]
pub struct LockWaitStopped(pub nix::sys::signal::Signal);

impl std::fmt::Display for LockWaitStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} came while waiting for the lock", self.0.as_str())
    }
}

impl std::error::Error for LockWaitStopped {}

impl StateLock {
    /// Waits for the lock up to `wait` (`None`: no limit). `stoppable`: a
    /// stop signal ends the wait ([`LockWaitStopped`]); a helper's thaw
    /// waits on whatever comes.
    pub fn acquire(state_dir: &Path, wait: Option<Duration>, stoppable: bool) -> Result<StateLock> {
        let path = state_dir.join("lock");
        let deadline = wait.map(|w| Instant::now() + w);
        let mut file = crate::sys::paths::open_lock_file(&path)
            .with_context(|| format!("cannot open lock {}", path.display()))?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(StateLock { _lock: lock }),
                Err((f, Errno::EWOULDBLOCK)) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        bail!(
                            "another fsfreeze-hook run holds {} (waited {})",
                            path.display(),
                            crate::config::units::format_time_limit(wait)
                        );
                    }
                    if stoppable && let Some(sig) = crate::sys::take_pending_stop_signal() {
                        return Err(LockWaitStopped(sig).into());
                    }
                    file = f;
                    thread::sleep(Duration::from_millis(20));
                }
                Err((_, e)) => bail!("cannot lock {}: {e}", path.display()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state dir, removed when the test ends however it ends.
    fn temp_dir(_tag: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        ensure_state_dir(d.path()).unwrap();
        d
    }

    #[test]
    fn a_thawed_under_note_is_judged_on_the_boot_clock_whatever_the_wall_clock() {
        let d = temp_dir("thawed_under");
        let before = crate::sys::boot_ms();
        note_thawed_under(d.path(), "thaw --fs (pid 7)").unwrap();
        assert_eq!(
            thawed_under_since(d.path(), before).as_deref(),
            Some("thaw --fs (pid 7)")
        );
        // A snapshot frozen after it does not take it for its own.
        assert_eq!(
            thawed_under_since(d.path(), crate::sys::boot_ms() + 1),
            None
        );
        // An older build's note, on the wall clock (a time far beyond any
        // boot clock's), is not taken for a new one: a clock stepped back
        // must not raise the alarm.
        fs::write(d.path().join("thawed-under"), format!("{} old\n", now_ms())).unwrap();
        assert_eq!(thawed_under_since(d.path(), before), None);
    }

    #[test]
    fn freeze_then_finish_round_trips() {
        let dir = temp_dir("rt");
        let mut j = Journal::new(dir.path());
        assert_eq!(j.read(), Recorded::Absent);
        j.begin_freeze().unwrap();
        let odd = OsString::from_vec(b"20 my\nsql%\xff".to_vec());
        j.started("10-app".as_ref()).unwrap();
        j.started(&odd).unwrap();
        match j.read() {
            Recorded::Unthawed(h) => {
                assert_eq!(h.names, vec![OsString::from("10-app"), odd.clone()]);
                assert!(!h.complete);
            }
            other => panic!("{other:?}"),
        }
        j.mark_frozen().unwrap();
        let dog = Ident {
            pid: 4242,
            start: Some(31337),
        };
        j.watchdog(dog, Some(99)).unwrap();
        let spaced = PathBuf::from("/srv/with space");
        j.fs_freezing(&spaced, 2049).unwrap();
        j.fs_freezing(Path::new("/busy"), 7).unwrap();
        j.fs_skipped(Path::new("/busy")).unwrap();
        j.fs_all_frozen().unwrap();
        let Recorded::Unthawed(h) = j.read() else {
            panic!("not held");
        };
        assert!(h.complete);
        assert_eq!(
            h.filesystems,
            vec![FrozenFs {
                mountpoint: spaced.clone(),
                dev: Some(2049)
            }],
            "skipped ones are not ours"
        );
        // An older version's line (the mountpoint alone) still reads.
        let Recorded::Unthawed(old) = parse(b"fsfreeze-hook journal 1\nfreeze 1 2\nfs /srv\n")
        else {
            panic!("an old fs line is not corrupt");
        };
        assert_eq!(old.filesystems, [FrozenFs::at("/srv".into())]);
        assert_eq!(h.watchdog, Some((dog, Some(99))));
        assert!(h.frozen_at_ms.is_some());
        j.fs_all_thawed().unwrap();
        let Recorded::Unthawed(after) = j.read() else {
            panic!("hooks still held");
        };
        assert!(after.filesystems.is_empty() && after.frozen_at_ms.is_none());
        assert_eq!(after.names.len(), 2);
        // A thaw: 10-app's ran to its end, the other's was cut off.
        j.thawed("10-app".as_ref()).unwrap();
        j.settle("thaw").unwrap();
        let Recorded::Unthawed(rest) = j.read() else {
            panic!("hooks still held");
        };
        assert_eq!(rest.names, vec![odd.clone()]);
        assert!(rest.complete && rest.filesystems.is_empty());
        j.thawed(&odd).unwrap();
        j.settle("thaw").unwrap();
        assert_eq!(j.read(), Recorded::Idle("thaw".into()));
    }

    #[test]
    fn the_guard_is_recorded_and_what_settled_the_freeze_is_kept() {
        let dir = temp_dir("guard");
        let mut j = Journal::new(dir.path());
        j.begin_freeze().unwrap();
        j.started("10-app".as_ref()).unwrap();
        j.mark_frozen().unwrap();
        let guard = Ident {
            pid: 777,
            start: Some(5),
        };
        j.guard(guard, 1_700_000_000_000).unwrap();
        let Recorded::Unthawed(h) = j.read() else {
            panic!("not held");
        };
        assert_eq!(h.guard, Some((guard, 1_700_000_000_000)));
        // A new freeze's record starts without the old guard.
        j.begin_freeze().unwrap();
        let Recorded::Unthawed(h) = j.read() else {
            panic!("not held");
        };
        assert_eq!(h.guard, None);
        j.thawed("10-app".as_ref()).unwrap();
        j.settle("max_frozen").unwrap();
        assert_eq!(j.read(), Recorded::Idle("max_frozen".into()));
        assert!(matches!(
            parse(b"fsfreeze-hook journal 1\nfreeze 1 2\nguard x 5\n"),
            Recorded::Corrupt(_)
        ));
        // An older version's line, without the start time, still reads.
        let Recorded::Unthawed(old) = parse(b"fsfreeze-hook journal 1\nfreeze 1 2\nguard 9 5\n")
        else {
            panic!("an old guard line is not corrupt");
        };
        assert_eq!(
            old.guard,
            Some((
                Ident {
                    pid: 9,
                    start: None
                },
                5
            ))
        );
    }

    #[test]
    fn a_new_freeze_carries_what_an_earlier_one_left_held() {
        let dir = temp_dir("carry");
        let mut j = Journal::new(dir.path());
        j.begin_freeze().unwrap();
        for n in ["10", "20", "30"] {
            j.started(n.as_ref()).unwrap();
        }
        j.mark_frozen().unwrap();
        // No thaw; a second freeze starts 10 and 20, fails at 20 and rolls
        // back 20 and 10: 30 is still frozen from the first.
        let mut j = Journal::new(dir.path());
        j.begin_freeze().unwrap();
        j.started("10".as_ref()).unwrap();
        j.started("20".as_ref()).unwrap();
        let Recorded::Unthawed(h) = j.read() else {
            panic!("held");
        };
        assert_eq!(h.names, ["30", "10", "20"].map(OsString::from));
        j.thawed("20".as_ref()).unwrap();
        j.thawed("10".as_ref()).unwrap();
        j.settle("rollback").unwrap();
        let Recorded::Unthawed(h) = j.read() else {
            panic!("30 must stay recorded");
        };
        assert_eq!(h.names, [OsString::from("30")]);
        // However many freezes follow, one held name is one entry.
        for _ in 0..10 {
            let mut j = Journal::new(dir.path());
            j.begin_freeze().unwrap();
            j.started("30".as_ref()).unwrap();
            j.mark_frozen().unwrap();
        }
        let Recorded::Unthawed(h) = j.read() else {
            panic!("held");
        };
        assert_eq!(h.names, [OsString::from("30")]);
    }

    #[test]
    fn garbage_and_other_versions_are_corrupt() {
        assert!(matches!(parse(b"\xff\xfe"), Recorded::Corrupt(_)));
        assert!(matches!(parse(b"hello\n"), Recorded::Corrupt(_)));
        assert!(
            matches!(parse(b"fsfreeze-hook journal 9\nidle 1 x\n"), Recorded::Corrupt(m) if m.contains("another version"))
        );
        assert!(matches!(
            parse(b"fsfreeze-hook journal 1\nstart x\n"),
            Recorded::Corrupt(_)
        ));
        assert!(matches!(
            parse(b"fsfreeze-hook journal 1\nfreeze 1 2\nstart %zz\n"),
            Recorded::Corrupt(_)
        ));
        assert!(matches!(
            parse(b"fsfreeze-hook journal 1\n"),
            Recorded::Corrupt(_)
        ));
    }

    #[test]
    fn lock_excludes_a_second_holder_until_dropped() {
        let dir = temp_dir("lock");
        let first = StateLock::acquire(dir.path(), Some(Duration::from_millis(50)), false).unwrap();
        let err = StateLock::acquire(dir.path(), Some(Duration::from_millis(100)), false)
            .err()
            .expect("second lock must fail");
        assert!(
            err.to_string().contains("another fsfreeze-hook run"),
            "{err}"
        );
        drop(first);
        StateLock::acquire(dir.path(), Some(Duration::from_millis(50)), false).unwrap();
    }
}
