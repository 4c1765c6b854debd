//! What every run does around its hooks: the header line, the state dir and
//! its lock, the hooks dir read and judged, and the closing line.

use std::path::Path;
use std::time::Instant;

use crate::config::units::{format_duration, format_time_limit};
use crate::config::{Overrides, Settings};
use crate::exit::Exit;
use crate::log::Log;
use crate::log::event::{Event, Level};
use crate::phase::Phase;
use crate::phase::engine::discovery::{self, Discovery};
use crate::phase::engine::runner::End;
use crate::phase::engine::trust::Policy;
use crate::phase::records::journal::{self, StateLock};
use crate::text::escape_path;

/// The first line of a run: who, what, with which settings.
pub fn header(settings: &Settings, log: &Log, what: &str) {
    let config = settings
        .config_file
        .as_deref()
        .map_or_else(|| "none".to_string(), escape_path);
    let hooks_dir = escape_path(&settings.hooks_dir);
    log.event(
        Event::new(
            "run_start",
            format!(
                "fsfreeze-hook {} pid {}: {what}; hooks dir {hooks_dir}; config {config}; on_error {}, timeout {}, phase_timeout {}",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                settings.on_error.as_str(),
                format_time_limit(settings.timeout),
                format_time_limit(settings.phase_timeout),
            ),
        )
        .with("command", what)
        .with("version", env!("CARGO_PKG_VERSION"))
        .with("pid", std::process::id())
        .with("hooks_dir", hooks_dir)
        .with("config", config),
    );
}

/// Takes the state dir and lock. A thaw goes on without a usable state dir
/// (it must never be the reason something stays held); a freeze does not.
pub fn lock(settings: &Settings, log: &Log, phase: Phase) -> Result<Option<StateLock>, Exit> {
    let refuse = |e: anyhow::Error| {
        log.line(&format!("{phase} refused: {e:#}"));
        Exit::Setup(format!("{phase} refused, no hook run: {e:#}"))
    };
    if let Err(e) = journal::ensure_state_dir(&settings.state_dir) {
        if phase == Phase::Freeze {
            return Err(refuse(e));
        }
        log.warn(&format!("{e:#}; thawing without journal or lock"));
        return Ok(None);
    }
    match StateLock::acquire(&settings.state_dir, settings.phase_timeout, true) {
        Ok(lock) => Ok(Some(lock)),
        Err(e) => match e.downcast_ref::<journal::LockWaitStopped>() {
            Some(journal::LockWaitStopped(sig)) => {
                let line = format!("{phase} interrupted: {e}; no hook run");
                log.line(&line);
                Err(Exit::Signal(*sig, line))
            }
            None => Err(refuse(e)),
        },
    }
}

/// The hooks dir, read and judged (`None`: it does not exist); each entry
/// skipped is logged with its reason.
pub fn discover(settings: &Settings, log: &Log) -> Result<Option<Discovery>, String> {
    let found = discovery::discover(&settings.hooks_dir).map_err(|e| {
        format!(
            "cannot read hooks dir {}: {e}",
            escape_path(&settings.hooks_dir)
        )
    })?;
    if found.is_some() {
        Policy::current()
            .check_hooks_dir(&settings.hooks_dir)
            .map_err(|u| format!("hooks dir is not trusted: {u}"))?;
    }
    if let Some(d) = &found {
        for s in &d.skipped {
            log.line(&format!(
                "skip {}: {}",
                escape_path(&settings.hooks_dir.join(&s.name)),
                s.reason
            ));
        }
    }
    Ok(found)
}

/// Logs how `what` ended (the closing line: result, duration).
pub fn log_end(log: &Log, what: &str, start: Instant, end: &End) {
    let took = format_duration(start.elapsed());
    let event = |result: &'static str, message: String| {
        Event::new("run_end", message)
            .with("command", what)
            .with("result", result)
            .with("duration_ms", start.elapsed().as_millis() as u64)
    };
    match end {
        End::Nothing => {}
        End::Done => log.event(event("ok", format!("{what} finished in {took}: ok"))),
        End::Failed(line) => log.event(
            event("failed", format!("{what} finished in {took}: {line}")).level(Level::Error),
        ),
        End::Interrupted(sig, line) => log.event(
            event(
                "interrupted",
                format!(
                    "{what} interrupted by {} after {took}: {line}",
                    sig.as_str()
                ),
            )
            .level(Level::Error)
            .with("signal", sig.as_str()),
        ),
    }
}

/// [`log_end`], and the exit status that end gives.
pub fn finish(log: &Log, what: &str, start: Instant, end: End) -> Exit {
    log_end(log, what, start, &end);
    end.into_exit()
}

/// The settings a thaw runs under when its config is unusable now (`why`):
/// those the freeze ran under, as it kept them beside its journal, else the
/// defaults; and the line that says which. A thaw must never wait on a
/// config: the hooks it owes hold database locks.
pub fn thaw_settings(argv0: &Path, flags: &Overrides, why: &str) -> (Settings, String) {
    let defaults = Settings::load_without_config(argv0, flags);
    match journal::saved_config(&defaults.state_dir) {
        Some((kept, text)) => match Settings::load_saved(argv0, flags, &kept, &text) {
            Ok(s) => (
                s,
                format!(
                    "{why}; the thaw runs with the settings the freeze ran under (kept in {})",
                    escape_path(&kept)
                ),
            ),
            Err(e) => (
                defaults,
                format!(
                    "{why}; what the freeze ran under is unusable too ({e}): the thaw runs with the defaults"
                ),
            ),
        },
        None => (defaults, format!("{why}; the thaw runs with the defaults")),
    }
}

/// The settings a run uses: the config file's over the defaults, flags over
/// both; the config judged as a hook is, since it decides what runs as root.
pub fn settings(argv0: &Path, flags: &Overrides) -> Result<Settings, Exit> {
    let settings = Settings::load(argv0, flags).map_err(|e| Exit::Setup(e.to_string()))?;
    let settings = absolute(settings);
    if let (Some(config), Some(meta)) = (&settings.config_file, &settings.config_meta)
        && let Err(u) = Policy::current().check_opened(config, meta)
    {
        return Err(Exit::Setup(format!(
            "config is not trusted, no hook run: {u}"
        )));
    }
    Ok(settings)
}

/// `settings` with every path absolute.
pub fn absolute(mut settings: Settings) -> Settings {
    // Hooks and helpers run in `/` and are given these paths: absolute ones,
    // before anything starts.
    for path in [
        &mut settings.hooks_dir,
        &mut settings.log_file,
        &mut settings.state_dir,
    ] {
        if let Ok(abs) = std::path::absolute(&*path) {
            *path = abs;
        }
    }
    // The guard and the watchdog write it too, from `/`; hooks get the
    // config's path.
    for path in [&mut settings.metrics_file, &mut settings.config_file]
        .into_iter()
        .flatten()
    {
        if let Ok(abs) = std::path::absolute(&*path) {
            *path = abs;
        }
    }
    settings
}

/// The places a run writes to, judged as the hooks dir is (every directory
/// on the way, and the place itself, which no other user may write): the
/// state dir, created if missing, is refused; the log is not opened (its
/// lines go to syslog, saying why). As root, a user who may write there
/// could plant a link at a name root writes, or a forged journal.
pub fn judge_places(mut settings: Settings, writes_state: bool) -> Result<Settings, Exit> {
    let policy = Policy::current();
    if writes_state {
        // Created (mode 0700) when missing, in a directory judged first, so
        // that nothing is made in another user's; what is used is judged
        // then. A thaw goes on without it if it cannot be made.
        let existing = settings.state_dir.ancestors().find(|d| d.exists());
        let judged = match existing {
            Some(d) if d == settings.state_dir => policy.check_private_dir(d),
            Some(d) => policy.check_dir_above(d).and_then(|()| {
                let _ = journal::ensure_state_dir(&settings.state_dir);
                match settings.state_dir.exists() {
                    true => policy.check_private_dir(&settings.state_dir),
                    false => Ok(()),
                }
            }),
            None => Ok(()),
        };
        if let Err(u) = judged {
            let fix = if crate::sys::is_root() {
                format!(
                    "only root may write there, as in {}",
                    crate::config::ROOT_STATE_DIR
                )
            } else {
                "use a directory of your own (--state-dir, or HOME or XDG_RUNTIME_DIR set)".into()
            };
            return Err(Exit::Setup(format!(
                "state dir is not safe, nothing run: {u}; {fix}"
            )));
        }
    }
    if let Some(dir) = settings.log_file.parent().filter(|d| d.exists())
        && let Err(u) = policy.check_log_dir(dir)
    {
        settings.log_refused = Some(format!("its directory is not safe: {u}"));
    }
    Ok(settings)
}

/// A run that stops before its log is open (its config unusable or not
/// trusted, its state dir unsafe) still says why in `log_file`, else (its
/// directory unsafe, or unwritable) in syslog.
pub fn log_refusal(log_file: &Path, what: &str, exit: &Exit) {
    let refused = log_file.parent().filter(|d| d.exists()).and_then(|dir| {
        Policy::current()
            .check_log_dir(dir)
            .err()
            .map(|u| format!("its directory is not safe: {u}"))
    });
    let log = Log::open_path(log_file, refused, !crate::sys::is_root());
    log.line(&format!("{what} refused: {}", exit.line().unwrap_or("?")));
}
