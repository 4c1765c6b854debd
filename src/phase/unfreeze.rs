//! The steps every thaw shares (the `thaw` command's, the watchdog's, the
//! guard's): which filesystems, the log once they are thawed, and the thaw
//! hooks of what the journal records.

use std::path::PathBuf;

use nix::errno::Errno;

use crate::config::Settings;
use crate::filesystems::{self, Filesystems, FrozenFs};
use crate::log::Log;
use crate::phase::engine::runner::{End, Record, Runner, ThawCause};
use crate::phase::records::journal::{Journal, Recorded, StateLock, Unthawed, now_ms};
use crate::phase::setup;
use crate::sys::{self, Waiter};
use crate::text::escape_path;

/// Where a run that exits with filesystems frozen leaves its log lines
/// (tmpfs): whoever thaws writes them to the log.
pub fn parked_log(settings: &Settings) -> PathBuf {
    settings.state_dir.join("parked.log")
}

/// After the filesystems are thawed: open the log, then write what an
/// earlier run parked and what this one deferred.
pub fn open_log_after_thaw(log: &mut Log, settings: &Settings) {
    log.attach(!sys::is_root());
    // held.log: the name earlier builds used, for lines parked across an upgrade.
    log.unpark(&settings.state_dir.join("held.log"));
    log.unpark(&parked_log(settings));
    log.write_deferred();
}

/// The thaw hooks of what the journal records, after its filesystems were
/// thawed; filesystems whose thaw failed stay recorded. The hooks' runs are
/// added to `ran` (for the metrics).
pub fn thaw_hooks(
    settings: &Settings,
    log: &Log,
    waiter: &Waiter,
    fs_failed: &[(FrozenFs, Errno)],
    cause: ThawCause,
    ran: &mut Vec<Record>,
) -> End {
    let found = match setup::discover(settings, log) {
        Ok(f) => f,
        Err(msg) => return End::Failed(format!("thaw refused, no hook run: {msg}")),
    };
    crate::phase::records::leftovers::end_left_freeze_hooks(
        &settings.state_dir,
        settings.kill_grace,
        log,
    );
    let mut runner = Runner::new(settings, log, waiter);
    if let Err(e) = runner.journal_mut().note_fs_thawed() {
        log.warn(&format!("{e:#}"));
    }
    let held = matches!(runner.journal().read(), Recorded::Unthawed(_));
    let end = if found.is_none() && !held {
        // The stock script's behaviour: no hooks dir, nothing to do.
        log.line(&format!(
            "hooks dir {} does not exist; nothing to run",
            escape_path(&settings.hooks_dir)
        ));
        End::Nothing
    } else {
        runner.thaw_as(found.as_ref(), cause)
    };
    ran.append(&mut runner.records);
    if fs_failed.is_empty() {
        return end;
    }
    // What the hooks' thaw left held stays; the filesystems whose thaw
    // failed are added to it.
    let mut journal = Journal::new(&settings.state_dir);
    let mut keep = match journal.read() {
        Recorded::Unthawed(h) => h,
        _ => Unthawed {
            since_ms: now_ms(),
            ..Unthawed::default()
        },
    };
    keep.complete = true;
    // One thawed by someone else is not frozen: nothing to keep of it.
    keep.filesystems = fs_failed
        .iter()
        .rev()
        .filter(|(_, e)| *e != Errno::EINVAL)
        .map(|(f, _)| f.clone())
        .collect();
    if let Err(e) = journal.keep_unthawed(&keep, cause.word()) {
        log.warn(&format!("{e:#}"));
    }
    let fs = fs_failed
        .iter()
        .map(|(f, e)| filesystems::thaw_failure(f, *e))
        .collect::<Vec<_>>()
        .join("; ");
    match end {
        End::Done | End::Nothing => End::Failed(format!("thaw failed: {fs}")),
        End::Failed(line) => End::Failed(format!("{line}; {fs}")),
        End::Interrupted(sig, line) => End::Interrupted(sig, format!("{line}; {fs}")),
    }
}

/// A helper's thaw of the hooks (the watchdog's, the guard's): under the
/// lock, like any thaw.
pub fn thaw_hooks_locked(
    settings: &Settings,
    log: &Log,
    waiter: &Waiter,
    fs_failed: &[(FrozenFs, Errno)],
    cause: ThawCause,
    ran: &mut Vec<Record>,
) -> End {
    match StateLock::acquire(&settings.state_dir, settings.phase_timeout, false) {
        Ok(_lock) => thaw_hooks(settings, log, waiter, fs_failed, cause, ran),
        Err(e) => End::Failed(format!("filesystems thawed, hooks not: {e:#}")),
    }
}

/// The filesystems a thaw thaws, in freeze order: those the journal
/// records, and with `all` (recovery) every filesystem qemu-ga would freeze,
/// whoever froze it.
pub fn to_thaw(
    fs: &dyn Filesystems,
    recorded: Vec<FrozenFs>,
    all: bool,
    log: &Log,
) -> Vec<FrozenFs> {
    if !all {
        return recorded;
    }
    let targets = match filesystems::targets(fs, &[]) {
        Ok(t) => t,
        Err(e) => {
            log.warn(&e);
            return recorded;
        }
    };
    // Children first, as a freeze goes, so that thaw_all runs in mount
    // order; recorded ones no longer mounted come first (thawed last).
    let mut out: Vec<FrozenFs> = recorded
        .into_iter()
        .filter(|r| !targets.iter().any(|t| t.mountpoint == r.mountpoint))
        .collect();
    out.extend(
        targets
            .iter()
            .rev()
            .map(|t| FrozenFs::at(t.mountpoint.clone())),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystems::tests::Fake;
    use std::path::Path;

    #[test]
    fn thaw_all_covers_every_freezable_filesystem_in_mount_order() {
        let fake = Fake {
            mountinfo: "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
                        2 1 0:20 / /run rw - tmpfs tmpfs rw\n\
                        3 1 7:0 / /a rw - ext4 /dev/loop0 rw\n\
                        4 3 7:1 / /a/b rw - xfs /dev/loop1 rw\n\
                        5 1 7:0 / /bind rw - ext4 /dev/loop0 rw\n"
                .into(),
            ..Fake::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&dir.path().join("log"), false);
        let recorded = vec![
            FrozenFs::at(PathBuf::from("/a")),
            FrozenFs::at(PathBuf::from("/gone")),
        ];
        assert_eq!(to_thaw(&fake, recorded.clone(), false, &log), recorded);
        let all = to_thaw(&fake, recorded, true, &log);
        let paths: Vec<PathBuf> = all.iter().map(|f| f.mountpoint.clone()).collect();
        assert_eq!(paths, ["/gone", "/a/b", "/a", "/"].map(PathBuf::from));
        // thaw_all walks that backwards: parents before children.
        for p in ["/a/b", "/a", "/"] {
            let dev = fake.device(Path::new(p)).unwrap();
            fake.freeze(Path::new(p), dev).unwrap();
        }
        // A recorded one no longer mounted anywhere cannot be thawed.
        let failed = filesystems::thaw_all(&fake, &all, &log);
        assert_eq!(failed, [(FrozenFs::at("/gone".into()), Errno::ENOENT)]);
        assert!(fake.frozen.borrow().is_empty());
        let calls = fake.calls.borrow();
        assert_eq!(calls[3..], ["thaw /", "thaw /a", "thaw /a/b", "thaw /gone"]);
    }
}
