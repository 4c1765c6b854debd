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
use crate::phase::discovery::{self, Discovery};
use crate::phase::journal::{self, StateLock};
use crate::phase::runner::End;
use crate::phase::trust::Policy;
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
