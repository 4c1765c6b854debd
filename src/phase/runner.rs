//! One phase: which hooks run in which order, what a failure does to the
//! others (rollback), and what the journal records.

use std::ffi::OsString;
use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::units::format_limit;
use crate::config::{OnError, Settings, ThawOrder};
use crate::log::Log;
use crate::log::event::{Event, Level};
use crate::phase::discovery::{Discovery, Hook};
use crate::phase::hookfile::{self, Kind, Opened};
use crate::phase::journal::{Journal, Recorded};
use crate::phase::process::{self, Context, Finished, LimitKind, Limits, Outcome, Spawn};
use crate::phase::trust::Policy;
use crate::sys;
use crate::sys::Events;
use crate::text::{escape, escape_path};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Freeze,
    Thaw,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Phase::Freeze => "freeze",
            Phase::Thaw => "thaw",
        })
    }
}

/// One hook run, kept for the rehearsal table.
#[derive(Clone, Debug)]
pub struct Record {
    pub name: OsString,
    pub phase: Phase,
    pub rollback: bool,
    pub started: Instant,
    pub finished: Finished,
}

/// How a phase ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// Every hook succeeded, or failures were accepted (`on_error = "continue"`).
    Done,
    /// There was nothing to do (no hooks dir); said in the log already.
    Nothing,
    /// One line for stderr: what failed and what was rolled back.
    Failed(String),
    /// The runner got a stop signal; cleanup is done.
    Interrupted(Signal, String),
}

pub struct Runner<'a> {
    settings: &'a Settings,
    log: &'a Log,
    events: &'a Events,
    policy: Policy,
    journal: Journal,
    signal_seen: Option<Signal>,
    pub records: Vec<Record>,
    /// Show hooks that run longer than a second on stderr (`rehearse`).
    pub show_progress: bool,
}

impl<'a> Runner<'a> {
    pub fn new(settings: &'a Settings, log: &'a Log, events: &'a Events) -> Runner<'a> {
        Runner {
            settings,
            log,
            events,
            policy: Policy::current(),
            journal: Journal::new(&settings.state_dir),
            signal_seen: None,
            records: Vec::new(),
            show_progress: false,
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// The journal of the freeze under way, for standalone mode's records.
    pub fn journal_mut(&mut self) -> &mut Journal {
        &mut self.journal
    }

    /// Runs the freeze hooks in order. The first failure under `abort` stops
    /// the phase and thaws, in reverse, every hook whose freeze started.
    pub fn freeze(&mut self, hooks: &[Hook]) -> End {
        if let Recorded::Held(held) = self.journal.read()
            && !held.names.is_empty()
        {
            self.log.warn(&format!(
                "the previous freeze was never thawed (hooks {}); starting a new one, they stay recorded for the next thaw",
                crate::text::names(&held.names)
            ));
        }
        if let Err(e) = self.journal.begin_freeze() {
            return End::Failed(format!("freeze refused, no hook run: {e:#}"));
        }
        let deadline = self.settings.phase_timeout.map(|t| Instant::now() + t);
        let mut started: Vec<Hook> = Vec::new();
        let mut failure = None;
        for (i, hook) in hooks.iter().enumerate() {
            if let Some(sig) = self.stop_signal() {
                failure = Some(format!(
                    "runner got {} before {} started",
                    sig.as_str(),
                    hook.display_name()
                ));
                break;
            }
            let Some(limits) = self.limits_for(hook, deadline, true) else {
                let cause = format!(
                    "phase_timeout ({}) expired before {} started",
                    format_limit(self.settings.phase_timeout),
                    hook.display_name()
                );
                self.log_not_run(&hooks[i..], "phase_timeout expired");
                failure = Some(cause);
                break;
            };
            let fin = match self.open(hook, Phase::Freeze, false) {
                Err(refused) => refused,
                Ok(opened) => {
                    if let Err(e) = self.journal.started(&hook.name) {
                        failure = Some(format!("{}: {e:#}", hook.display_name()));
                        break;
                    }
                    started.push(hook.clone());
                    self.run(hook, &opened, Phase::Freeze, false, limits)
                }
            };
            if fin.outcome.success() {
                continue;
            }
            let cause = format!("{} {}", hook.display_name(), fin.summary());
            if self.settings.on_error == OnError::Abort || self.signal_seen.is_some() {
                failure = Some(cause);
                break;
            }
            self.log
                .line(&format!("{cause}; going on (on_error = continue)"));
        }
        let Some(cause) = failure else {
            if let Err(e) = self.journal.mark_frozen() {
                self.log.warn(&format!("{e:#}"));
            }
            return End::Done;
        };
        self.log.event(
            Event::new(
                "rollback",
                format!(
                    "freeze aborted: {cause}; rolling back {} hook(s)",
                    started.len()
                ),
            )
            .level(Level::Error)
            .with("cause", cause.as_str())
            .with("hooks", started.len() as u64),
        );
        let rollback = self.rollback(&started);
        if let Err(e) = self.journal.settle("rollback") {
            self.log.warn(&format!("{e:#}"));
        }
        let mut line = format!("freeze aborted: {cause}");
        if !started.is_empty() {
            let names: Vec<OsString> = started.iter().rev().map(|h| h.name.clone()).collect();
            line.push_str(&format!("; rolled back {}", crate::text::names(&names)));
        }
        for f in &rollback.failures {
            line.push_str(&format!("; rollback: {f}"));
        }
        self.ended(line)
    }

    /// Runs the thaw hooks of what the journal says is held, in reverse of the
    /// freeze order (or forward, `thaw_order = "forward"`). Every hook runs even
    /// when an earlier one fails.
    pub fn thaw(&mut self, found: Option<&Discovery>) -> End {
        self.thaw_as(found, false)
    }

    /// [`Runner::thaw`]; with `rollback`, as the undoing of a freeze that
    /// failed after its hooks (a FIFREEZE failure): `FSFREEZE_ROLLBACK=1`.
    pub fn thaw_as(&mut self, found: Option<&Discovery>, rollback: bool) -> End {
        let all: &[Hook] = found.map_or(&[], |d| &d.hooks);
        let (mut plan, mut failures) = match self.journal.read() {
            Recorded::Idle => {
                self.log
                    .line("no freeze recorded since the last thaw or rollback; no hook runs");
                return End::Done;
            }
            Recorded::Absent => {
                self.log.line("no journal (first run since boot); thawing every hook, as the stock script does");
                (all.to_vec(), Vec::new())
            }
            Recorded::Corrupt(why) => {
                self.log.warn(&format!(
                    "journal {} is unusable ({why}); treated as absent: thawing every hook",
                    escape_path(self.journal.path())
                ));
                (all.to_vec(), Vec::new())
            }
            Recorded::Held(held) => {
                if !held.complete {
                    self.log.warn(&format!(
                        "the last freeze did not complete (its runner died); thawing the {} hook(s) it started",
                        held.names.len()
                    ));
                }
                let (plan, missing, gone) = resolve(&held.names, found);
                for m in &missing {
                    self.log.warn(m);
                }
                // Nothing can ever thaw a hook that no longer exists:
                // reported once, then no longer held.
                for name in &gone {
                    if let Err(e) = self.journal.thawed(name) {
                        self.log.warn(&format!("{e:#}"));
                    }
                }
                (plan, missing)
            }
        };
        if self.settings.thaw_order == ThawOrder::Reverse {
            plan.reverse();
        }
        let deadline = self.settings.phase_timeout.map(|t| Instant::now() + t);
        for (i, hook) in plan.iter().enumerate() {
            let stop = self.stop_signal();
            let limits = self.limits_for(hook, deadline, true);
            let Some(limits) = limits.filter(|_| stop.is_none()) else {
                let why = match stop {
                    Some(sig) => format!("runner got {}", sig.as_str()),
                    None => format!(
                        "phase_timeout ({}) expired",
                        format_limit(self.settings.phase_timeout)
                    ),
                };
                self.log_not_run(&plan[i..], &why);
                failures.push(format!(
                    "{why}; {} hook(s) not thawed, kept for the next thaw",
                    plan.len() - i
                ));
                break;
            };
            let fin = self.open_and_run(hook, Phase::Thaw, rollback, limits);
            self.record_thaw(hook, &fin);
            if !fin.outcome.success() {
                let kept = if fin.outcome.ran_to_end() {
                    ""
                } else {
                    " (kept for the next thaw)"
                };
                failures.push(format!("{} {}{kept}", hook.display_name(), fin.summary()));
            }
        }
        if let Err(e) =
            crate::phase::journal::ensure_state_dir(&self.settings.state_dir).and_then(|()| {
                let why = if rollback { "rollback" } else { "thaw" };
                self.journal.settle(why)
            })
        {
            self.log.warn(&format!("{e:#}"));
        }
        if failures.is_empty()
            || (self.settings.on_error == OnError::Continue && self.signal_seen.is_none())
        {
            return End::Done;
        }
        self.ended(format!("thaw failed: {}", failures.join("; ")))
    }

    /// A thaw that ran to its end (whatever its status) releases the hook
    /// in the journal; one cut off, refused or not started keeps it held.
    fn record_thaw(&mut self, hook: &Hook, fin: &Finished) {
        if fin.outcome.ran_to_end()
            && let Err(e) = self.journal.thawed(&hook.name)
        {
            self.log.warn(&format!("{e:#}"));
        }
    }

    fn ended(&self, line: String) -> End {
        match self.signal_seen {
            Some(sig) => End::Interrupted(sig, line),
            None => End::Failed(line),
        }
    }

    fn stop_signal(&mut self) -> Option<Signal> {
        if let Some(sig) = sys::take_pending_stop_signal() {
            self.signal_seen = Some(sig);
        }
        self.signal_seen
    }

    /// The rollback after a failed freeze: thaw, in reverse, every hook whose
    /// freeze started. It has its own phase budget, and signals do not cut it
    /// short: it is what releases the locks.
    fn rollback(&mut self, started: &[Hook]) -> Rollback {
        let deadline = self.settings.phase_timeout.map(|t| Instant::now() + t);
        let mut out = Rollback::default();
        for (i, hook) in started.iter().enumerate().rev() {
            let Some(limits) = self.limits_for(hook, deadline, false) else {
                self.log_not_run(&started[..=i], "phase_timeout expired during rollback");
                out.failures.push(format!(
                    "phase_timeout expired, {} hook(s) not rolled back",
                    i + 1
                ));
                break;
            };
            let fin = self.open_and_run(hook, Phase::Thaw, true, limits);
            self.record_thaw(hook, &fin);
            if !fin.outcome.success() {
                out.failures.push(format!(
                    "{} {}",
                    hook.display_name(),
                    fin.outcome.describe()
                ));
            }
        }
        out
    }

    /// The limit of one hook: its own timeout or what is left of the phase,
    /// whichever is shorter. `None` when the phase has no time left.
    fn limits_for(
        &self,
        hook: &Hook,
        deadline: Option<Instant>,
        interruptible: bool,
    ) -> Option<Limits> {
        let own = self
            .settings
            .timeout_for(&hook.name)
            .map(|d| (d, LimitKind::Hook));
        let phase = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return None;
                }
                Some((left, LimitKind::Phase))
            }
            None => None,
        };
        let timeout = match (own, phase) {
            (Some(o), Some(p)) => Some(if p.0 < o.0 { p } else { o }),
            (o, p) => o.or(p),
        };
        Some(Limits {
            timeout,
            grace: self.settings.kill_grace,
            interruptible,
        })
    }

    /// Opens and checks a hook; a refusal is logged and recorded.
    fn open(&mut self, hook: &Hook, phase: Phase, rollback: bool) -> Result<Opened, Finished> {
        hookfile::open(&hook.path, &self.policy).map_err(|why| {
            let why = why.to_string();
            self.log.event(
                Event::new(
                    "hook_refused",
                    format!("refused {} {phase}: it {why}", escape_path(&hook.path)),
                )
                .level(Level::Error)
                .with("hook", hook.display_name())
                .with("phase", phase.to_string())
                .with("reason", why.as_str()),
            );
            let fin = Finished::refused(why);
            self.records.push(Record {
                name: hook.name.clone(),
                phase,
                rollback,
                started: Instant::now(),
                finished: fin.clone(),
            });
            fin
        })
    }

    fn open_and_run(
        &mut self,
        hook: &Hook,
        phase: Phase,
        rollback: bool,
        limits: Limits,
    ) -> Finished {
        match self.open(hook, phase, rollback) {
            Ok(opened) => self.run(hook, &opened, phase, rollback, limits),
            Err(refused) => refused,
        }
    }

    fn run(
        &mut self,
        hook: &Hook,
        opened: &Opened,
        phase: Phase,
        rollback: bool,
        limits: Limits,
    ) -> Finished {
        let path = escape_path(&hook.path);
        let phase_word = phase.to_string();
        let name = hook.display_name();
        // The stock line, which existing monitoring greps for.
        self.log.event(
            Event::new(
                "hook_start",
                format!(
                    "execute {path} {phase_word}{}",
                    if rollback { " (rollback)" } else { "" }
                ),
            )
            .with("hook", name.as_str())
            .with("phase", phase_word.as_str())
            .with("rollback", rollback),
        );
        if opened.kind == Kind::Shell {
            self.log
                .warn(&format!("{path} has no #! line; running it with /bin/sh"));
        }
        let started = Instant::now();
        let limit = limits.timeout.map(|(d, _)| d);
        let show =
            |elapsed: Duration| crate::phase::report::progress(&name, &phase_word, elapsed, limit);
        let fin = process::run(
            Spawn {
                path: &hook.path,
                opened,
                phase: &phase_word,
                rollback,
            },
            limits,
            &Context {
                events: self.events,
                log: self.log,
                output_limit: self.settings.output_limit,
                state_dir: &self.settings.state_dir,
                progress: self.show_progress.then_some(&show as &dyn Fn(Duration)),
            },
            &mut self.signal_seen,
        );
        if self.show_progress && fin.elapsed >= Duration::from_secs(1) {
            crate::phase::report::progress_done();
        }
        let detail = match &fin.outcome {
            Outcome::Exited(_) => String::new(),
            other => format!(", {}", other.describe()),
        };
        let mut end = Event::new(
            "hook_end",
            format!(
                "{path} finished with status={} in {:.3}s{detail}",
                fin.outcome.status_code(),
                fin.elapsed.as_secs_f64()
            ),
        )
        .level(if fin.outcome.success() {
            Level::Info
        } else {
            Level::Error
        })
        .with("hook", name.as_str())
        .with("phase", phase_word.as_str())
        .with("rollback", rollback)
        .with("status", fin.outcome.status_code())
        .with("duration_ms", fin.elapsed.as_millis() as u64)
        .with("output_bytes", fin.output_bytes);
        match &fin.outcome {
            Outcome::Signaled(sig) | Outcome::Interrupted(sig) => {
                end = end.with("signal", sig.as_str())
            }
            Outcome::TimedOut { limit, killed, .. } => {
                end = end
                    .with("timeout_ms", limit.as_millis() as u64)
                    .with("signal", if *killed { "SIGKILL" } else { "SIGTERM" })
            }
            _ => {}
        }
        self.log.event(end);
        self.records.push(Record {
            name: hook.name.clone(),
            phase,
            rollback,
            started,
            finished: fin.clone(),
        });
        fin
    }

    fn log_not_run(&self, hooks: &[Hook], why: &str) {
        for h in hooks {
            self.log
                .line(&format!("not run: {} ({why})", escape_path(&h.path)));
        }
    }
}

#[derive(Default)]
struct Rollback {
    failures: Vec<String>,
}

/// Maps the journal's names to hooks of the current dir, in journal order.
/// A recorded hook that is gone or no longer runnable cannot be thawed: that
/// is reported (second list); one that no longer exists at all is also
/// returned in the third, since nothing can ever thaw it.
fn resolve(
    names: &[OsString],
    found: Option<&Discovery>,
) -> (Vec<Hook>, Vec<String>, Vec<OsString>) {
    let mut plan = Vec::new();
    let mut missing = Vec::new();
    let mut gone = Vec::new();
    for name in names {
        let hook = found.and_then(|d| d.hooks.iter().find(|h| &h.name == name));
        if let Some(h) = hook {
            plan.push(h.clone());
            continue;
        }
        let skipped = found.and_then(|d| d.skipped.iter().find(|s| &s.name == name));
        missing.push(match skipped {
            Some(s) => format!(
                "{} froze but is now skipped ({}); not thawed, kept for the next thaw",
                escape(name),
                s.reason
            ),
            None => {
                gone.push(name.clone());
                format!(
                    "{} froze but no longer exists; not thawed, and no longer recorded",
                    escape(name)
                )
            }
        });
    }
    (plan, missing, gone)
}

/// Total wall time from the first freeze hook's start to the last thaw hook's
/// end: how long applications were held.
pub fn held_window(records: &[Record]) -> Option<Duration> {
    let first = records.iter().find(|r| r.phase == Phase::Freeze)?.started;
    let last = records
        .iter()
        .filter(|r| r.phase == Phase::Thaw)
        .map(|r| r.started + r.finished.elapsed)
        .max()?;
    Some(last.saturating_duration_since(first))
}
