//! From a parsed command line to an exit status: settings, log, lock, hooks,
//! then the phase(s).

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::admin::status;
use crate::cli::{Cli, Command};
use crate::config::Settings;
use crate::config::units::{format_duration, format_limit};
use crate::log::Log;
use crate::log::event::{Event, Level};
use crate::phase::discovery::{self as hooks, Discovery};
use crate::phase::journal::{self, Recorded, StateLock};
use crate::phase::report;
use crate::phase::runner::{End, Phase, Runner};
use crate::phase::trust::Policy;
use crate::standalone;
use crate::sys::{self, Events};
use crate::text::escape_path;

/// Exit statuses; documented in the README.
pub const EXIT_OK: u8 = 0;
/// A hook failed: the freeze was aborted and rolled back, or a thaw hook failed.
pub const EXIT_HOOK_FAILED: u8 = 1;
/// Nothing was run: bad config, unusable hooks dir or state dir, lock busy.
pub const EXIT_SETUP: u8 = 3;

pub fn run(cli: Cli, argv0: &Path) -> ExitCode {
    let mut settings = match Settings::load(argv0, &cli.global.overrides()) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_SETUP, &e.to_string()),
    };
    // Hooks run in `/` and are given these paths: absolute ones.
    for path in [
        &mut settings.hooks_dir,
        &mut settings.log_file,
        &mut settings.state_dir,
    ] {
        if let Ok(abs) = std::path::absolute(&*path) {
            *path = abs;
        }
    }
    // The config decides what runs as root: it must be as trusted as a hook.
    if let (Some(config), Some(meta)) = (&settings.config_file, &settings.config_meta)
        && let Err(u) = Policy::current().check_opened(config, meta)
    {
        return fail(
            EXIT_SETUP,
            &format!("config is not trusted, no hook run: {u}"),
        );
    }
    let events = match Events::new() {
        Ok(e) => e,
        Err(e) => return fail(EXIT_SETUP, &format!("cannot set up signal handling: {e}")),
    };
    // A thaw may run while the log's filesystem is frozen, and status
    // writes nothing: neither opens the log up front.
    let open_log_at =
        |s: &Settings| Log::open(&s.log_file, !sys::is_root()).styled(s.log_format, s.log_target);
    let open_log = || open_log_at(&settings);
    match cli.command {
        Command::Freeze { fs: false, .. } => freeze_hooks(&settings, &open_log(), &events),
        Command::Freeze {
            fs: true,
            mountpoints,
            auto_thaw,
        } => standalone::freeze_fs(&settings, &open_log(), &events, &mountpoints, auto_thaw.0),
        Command::Thaw { all, .. } => standalone::thaw(&settings, &events, all),
        Command::Snapshot {
            mountpoints,
            max_frozen,
            command,
        } => standalone::snapshot(
            &settings,
            &open_log(),
            &events,
            &mountpoints,
            max_frozen.0,
            &command,
        ),
        Command::Status { json } => status::status(&settings, json),
        Command::List { json } => crate::admin::list::list(&settings, json),
        Command::Hold {
            name,
            max_hold,
            ready,
            ready_timeout,
            release_input,
            command,
        } => {
            let settings = crate::hold::settings_from_env(settings.clone());
            let args = crate::hold::HoldArgs {
                name,
                max_hold: max_hold.0,
                ready,
                ready_timeout: ready_timeout.0,
                release_input,
                command,
            };
            crate::hold::hold(&settings, &open_log_at(&settings), args)
        }
        Command::Release { name } => {
            let settings = crate::hold::settings_from_env(settings.clone());
            crate::hold::release(&settings, &open_log_at(&settings), &name)
        }
        Command::Check { root } => crate::admin::check::check(&root),
        Command::Enable { root, dry_run } => crate::admin::enable::enable(&root, dry_run),
        Command::Disable { root, dry_run } => crate::admin::enable::disable(&root, dry_run),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "fsfreeze-hook", &mut std::io::stdout());
            ExitCode::from(EXIT_OK)
        }
        Command::Rehearse { hold } => rehearse(&settings, &open_log(), &events, hold),
    }
}

/// Prints the one line a failure gets on stderr (qemu-ga 9.1+ hands it to the
/// hypervisor as the error text) and returns `code`.
pub fn fail(code: u8, line: &str) -> ExitCode {
    // One line, whatever a name in it holds: qemu-ga passes it on.
    eprintln!(
        "fsfreeze-hook: {}",
        crate::text::escape_line(line.as_bytes())
    );
    ExitCode::from(code)
}

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
                format_limit(settings.timeout),
                format_limit(settings.phase_timeout),
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
pub fn lock(settings: &Settings, log: &Log, phase: Phase) -> Result<Option<StateLock>, ExitCode> {
    let refuse = |e: anyhow::Error| {
        log.line(&format!("{phase} refused: {e:#}"));
        fail(EXIT_SETUP, &format!("{phase} refused, no hook run: {e:#}"))
    };
    if let Err(e) = journal::ensure_state_dir(&settings.state_dir) {
        if phase == Phase::Freeze {
            return Err(refuse(e));
        }
        log.warn(&format!("{e:#}; thawing without journal or lock"));
        return Ok(None);
    }
    match StateLock::acquire(&settings.state_dir, settings.phase_timeout) {
        Ok(lock) => Ok(Some(lock)),
        Err(e) => Err(refuse(e)),
    }
}

pub fn discover(settings: &Settings, log: &Log) -> Result<Option<Discovery>, String> {
    let found = hooks::discover(&settings.hooks_dir).map_err(|e| {
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

/// qemu-ga's `freeze`: the hooks only.
fn freeze_hooks(settings: &Settings, log: &Log, events: &Events) -> ExitCode {
    header(settings, log, "freeze");
    let start = Instant::now();
    let _lock = match lock(settings, log, Phase::Freeze) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let found = match discover(settings, log) {
        Ok(f) => f,
        Err(msg) => {
            log.line(&format!("freeze refused: {msg}"));
            return fail(EXIT_SETUP, &format!("freeze refused, no hook run: {msg}"));
        }
    };
    let mut runner = Runner::new(settings, log, events);
    if let Recorded::Held(h) = runner.journal().read()
        && !h.filesystems.is_empty()
    {
        // A new record would lose them, and with it the thaw.
        let msg = "filesystems are frozen by a standalone freeze; run `fsfreeze-hook thaw` first";
        log.line(&format!("freeze refused: {msg}"));
        return fail(EXIT_SETUP, &format!("freeze refused, no hook run: {msg}"));
    }
    let Some(found) = found else {
        // The stock script's behaviour: no hooks dir, nothing to do.
        log.line(&format!(
            "hooks dir {} does not exist; nothing to run",
            escape_path(&settings.hooks_dir)
        ));
        return ExitCode::from(EXIT_OK);
    };
    let end = runner.freeze(&found.hooks);
    finish(log, "freeze", start, end)
}

pub fn finish(log: &Log, phase: &str, start: Instant, end: End) -> ExitCode {
    let took = format_duration(start.elapsed());
    let event = |result: &'static str, message: String| {
        Event::new("run_end", message)
            .with("command", phase)
            .with("result", result)
            .with("duration_ms", start.elapsed().as_millis() as u64)
    };
    match end {
        End::Nothing => ExitCode::from(EXIT_OK),
        End::Done => {
            log.event(event("ok", format!("{phase} finished in {took}: ok")));
            ExitCode::from(EXIT_OK)
        }
        End::Failed(line) => {
            log.event(
                event("failed", format!("{phase} finished in {took}: {line}")).level(Level::Error),
            );
            fail(EXIT_HOOK_FAILED, &line)
        }
        End::Interrupted(sig, line) => {
            log.event(
                event(
                    "interrupted",
                    format!(
                        "{phase} interrupted by {} after {took}: {line}",
                        sig.as_str()
                    ),
                )
                .level(Level::Error)
                .with("signal", sig.as_str()),
            );
            fail(128 + sig as u8, &line)
        }
    }
}

/// The rehearsal's stand-in for the snapshot: waits `hold`, or less if a
/// stop signal comes (returned).
fn hold_for(events: &Events, hold: Duration) -> Option<nix::sys::signal::Signal> {
    if hold.is_zero() {
        return None;
    }
    println!(
        "holding for {} (the snapshot would be taken now)",
        format_duration(hold)
    );
    let end = Instant::now() + hold;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match events.wait(None, Some(left)) {
            sys::Event::Signal(nix::sys::signal::Signal::SIGCHLD)
            | sys::Event::Timeout
            | sys::Event::Readable => {}
            sys::Event::Signal(sig) => return Some(sig),
        }
    }
}

fn rehearse(settings: &Settings, log: &Log, events: &Events, hold: Duration) -> ExitCode {
    header(settings, log, "rehearse");
    println!(
        "Rehearsal of {}: freeze then thaw of the hooks; no filesystem is frozen.",
        escape_path(&settings.hooks_dir)
    );
    if let Some(note) = &settings.fallback_note {
        println!("{note}");
    } else {
        println!(
            "log in {}, state in {}",
            escape_path(&settings.log_file),
            escape_path(&settings.state_dir)
        );
    }
    let _lock = match lock(settings, log, Phase::Freeze) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let mut runner = Runner::new(settings, log, events);
    if let Recorded::Held(_) = runner.journal().read() {
        let msg = "a freeze is in progress (the journal holds hooks not yet thawed); a rehearsal \
                   would thaw them. Run `fsfreeze-hook thaw` first if that freeze is stale";
        log.line(&format!("rehearse refused: {msg}"));
        return fail(EXIT_SETUP, msg);
    }
    let found = match discover(settings, log) {
        Ok(Some(f)) => f,
        Ok(None) => {
            let msg = format!(
                "hooks dir {} does not exist",
                escape_path(&settings.hooks_dir)
            );
            return fail(EXIT_SETUP, &msg);
        }
        Err(msg) => return fail(EXIT_SETUP, &msg),
    };
    for s in &found.skipped {
        println!("skip {}: {}", crate::text::escape(&s.name), s.reason);
    }
    runner.show_progress = true;
    let start = Instant::now();
    let end = match runner.freeze(&found.hooks) {
        End::Done => {
            let interrupted = hold_for(events, hold);
            // Interrupted while holding: thaw first (that is what releases the
            // applications), then report the interruption.
            match (runner.thaw(Some(&found)), interrupted) {
                (End::Done, Some(sig)) => End::Interrupted(
                    sig,
                    format!("rehearsal interrupted by {}; thawed", sig.as_str()),
                ),
                (end, _) => end,
            }
        }
        failed => failed,
    };
    print!("{}", report::table(&found.hooks, &runner.records));
    println!("log: {}", escape_path(log.path()));
    finish(log, "rehearse", start, end)
}
