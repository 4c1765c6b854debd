//! One phase: which hooks run in which order, what a failure does to the others
//! (rollback, `thaw.rs`), what the journal records; unit tested over a fake `Execute`.

mod events;
mod thaw;

use std::ffi::OsString;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::units::format_time_limit;
use crate::config::{OnError, Settings};
use crate::exit::Exit;
use crate::log::Log;
use crate::log::event::{Event, Level};
use crate::phase::Phase;
use crate::phase::engine::discovery::Hook;
use crate::phase::engine::execute::{Execute, GroupRun, Processes, Run};
use crate::phase::engine::process::{Bounds, Finished, Outcome, TimeoutSource};
use crate::phase::records::history::History;
use crate::phase::records::journal::{Journal, Recorded};
use crate::sys::Waiter;
use crate::text::escape_path;
use events::{end_event, start_event};

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

impl End {
    pub fn into_exit(self) -> Exit {
        match self {
            End::Done | End::Nothing => Exit::Ok,
            End::Failed(line) => Exit::Failed(line),
            End::Interrupted(sig, line) => Exit::Signal(sig, line),
        }
    }
}

/// Why a thaw runs: what its hooks are told (`FSFREEZE_ROLLBACK`) and what
/// the journal says of it afterwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThawCause {
    /// The thaw after a snapshot (qemu-ga's, or ours after `freeze --fs`).
    Thaw,
    /// The undoing of a freeze that failed after its hooks (FIFREEZE).
    Rollback,
    /// The guard's: no thaw came within `max_frozen`.
    MaxFrozen,
    /// The guard's: the agent's service was being stopped (systemd's
    /// SIGTERM: a stop, a restart, a shutdown).
    AgentStop,
    /// The guard's: another signal (SIGTERM, SIGINT or SIGHUP from
    /// elsewhere).
    GuardSignal,
}

impl ThawCause {
    fn rollback(self) -> bool {
        self != ThawCause::Thaw
    }

    /// The journal's word for it (`idle <ms> <word>`).
    pub fn word(self) -> &'static str {
        match self {
            ThawCause::Thaw => "thaw",
            ThawCause::Rollback => "rollback",
            ThawCause::MaxFrozen => "max_frozen",
            ThawCause::AgentStop => "agent_stop",
            ThawCause::GuardSignal => "guard_signal",
        }
    }

    /// Whether the journal's word is a guard's thaw.
    pub fn is_guards(word: &str) -> bool {
        [
            ThawCause::MaxFrozen,
            ThawCause::AgentStop,
            ThawCause::GuardSignal,
        ]
        .iter()
        .any(|c| c.word() == word)
    }
}

pub struct Runner<'a, X: Execute = Processes<'a>> {
    settings: &'a Settings,
    log: &'a Log,
    exec: X,
    journal: Journal,
    signal_seen: Option<Signal>,
    pub records: Vec<Record>,
}

impl<'a> Runner<'a> {
    /// A runner of real hooks.
    pub fn new(settings: &'a Settings, log: &'a Log, waiter: &'a Waiter) -> Runner<'a> {
        Runner::with(settings, log, Processes::new(settings, log, waiter))
    }
}

impl<'a, X: Execute> Runner<'a, X> {
    pub fn with(settings: &'a Settings, log: &'a Log, exec: X) -> Runner<'a, X> {
        Runner {
            settings,
            log,
            exec,
            journal: Journal::new(&settings.state_dir),
            signal_seen: None,
            records: Vec::new(),
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
        if let Recorded::Unthawed(before) = self.journal.read()
            && !before.names.is_empty()
        {
            self.log.warn(&format!(
                "the previous freeze was never thawed (hooks {}); starting a new one, they stay recorded for the next thaw",
                crate::text::names(&before.names)
            ));
        }
        if let Err(e) = self.journal.begin_freeze() {
            return End::Failed(format!("freeze refused, no hook run: {e:#}"));
        }
        let (started, failure) = self.freeze_in_order(hooks);
        crate::phase::records::leftovers::freeze_hooks_over();
        self.remember_durations();
        match failure {
            None => {
                if let Err(e) = self.journal.mark_frozen() {
                    self.log.warn(&format!("{e:#}"));
                }
                End::Done
            }
            Some(cause) => self.abort(&cause, &started),
        }
    }

    /// The freeze hooks in order (a parallel group at once): those whose
    /// freeze started, and the cause that stops the phase, if one does.
    fn freeze_in_order(&mut self, hooks: &[Hook]) -> (Vec<Hook>, Option<String>) {
        let deadline = self.deadline();
        let mut started: Vec<Hook> = Vec::new();
        let mut done = 0;
        for segment in self.segments(hooks) {
            let rest = &hooks[done..];
            done += segment.len();
            let failure = match segment.as_slice() {
                [hook] => self.freeze_one(hook, rest, deadline, &mut started),
                group => self.freeze_group(group, rest, deadline, &mut started),
            };
            if failure.is_some() {
                return (started, failure);
            }
        }
        (started, None)
    }

    /// One hook's freeze; `Some`: the cause that stops the phase.
    fn freeze_one(
        &mut self,
        hook: &Hook,
        rest: &[Hook],
        deadline: Option<Instant>,
        started: &mut Vec<Hook>,
    ) -> Option<String> {
        if let Some(sig) = self.stop_signal() {
            return Some(format!(
                "runner got {} before {} started",
                sig.as_str(),
                hook.display_name()
            ));
        }
        let Some(bounds) = self.bounds_for(hook, deadline, true) else {
            self.log_not_run(rest, "phase_timeout expired");
            return Some(format!(
                "phase_timeout ({}) expired before {} started",
                format_time_limit(self.settings.phase_timeout),
                hook.display_name()
            ));
        };
        let run = Run {
            phase: Phase::Freeze,
            rollback: false,
            bounds,
        };
        let fin = match self.open(hook, run) {
            Err(refused) => refused,
            Ok(ready) => {
                if let Err(e) = self.journal.started(&hook.name) {
                    return Some(format!("{}: {e:#}", hook.display_name()));
                }
                started.push(hook.clone());
                self.run(hook, &ready, run)
            }
        };
        self.judge_freeze(hook, &fin)
    }

    /// A freeze hook's end: `Some` cause when it stops the phase (`abort`,
    /// or a stop signal); under `continue` a failure is logged and passed.
    fn judge_freeze(&self, hook: &Hook, fin: &Finished) -> Option<String> {
        if fin.outcome.success() {
            return None;
        }
        let cause = format!("{} {}", hook.display_name(), fin.reason());
        if self.settings.on_error_for(&hook.name) == OnError::Abort || self.signal_seen.is_some() {
            return Some(cause);
        }
        let why = match hook.name.to_str() {
            Some(n) if self.settings.hook_on_error.contains_key(n) => {
                format!("optional: [hooks.\"{n}\"] on_error = continue")
            }
            _ => "on_error = continue".to_string(),
        };
        self.log.line(&format!("{cause}; going on ({why})"));
        None
    }

    /// A parallel group's freeze: every hook opened and checked, then all
    /// run at once, the quick ones started later (see [`History`]).
    fn freeze_group(
        &mut self,
        group: &[Hook],
        rest: &[Hook],
        deadline: Option<Instant>,
        started: &mut Vec<Hook>,
    ) -> Option<String> {
        let names = crate::text::names(&group.iter().map(|h| &h.name).collect::<Vec<_>>());
        if let Some(sig) = self.stop_signal() {
            return Some(format!(
                "runner got {} before {names} started",
                sig.as_str()
            ));
        }
        let mut readies = Vec::new();
        for hook in group {
            let Some(bounds) = self.bounds_for(hook, deadline, true) else {
                self.log_not_run(rest, "phase_timeout expired");
                return Some(format!(
                    "phase_timeout ({}) expired before {names} started",
                    format_time_limit(self.settings.phase_timeout)
                ));
            };
            let run = Run {
                phase: Phase::Freeze,
                rollback: false,
                bounds,
            };
            match self.open(hook, run) {
                Ok(ready) => readies.push((hook, ready, run)),
                Err(refused) => {
                    // Refused before any of the group started.
                    if let Some(cause) = self.judge_freeze(hook, &refused) {
                        return Some(cause);
                    }
                }
            }
        }
        let history = History::load(&self.settings.state_dir);
        let delays = history.schedule(
            &readies
                .iter()
                .map(|(h, _, _)| h.name.as_os_str())
                .collect::<Vec<_>>(),
        );
        // No start lies past the phase deadline, and each member's limits
        // are what is left of the phase when it starts.
        let now = self.exec.now();
        let delays: Vec<Duration> = delays
            .into_iter()
            .map(|d| deadline.map_or(d, |dl| d.min(dl.saturating_duration_since(now))))
            .collect();
        for ((hook, _, run), delay) in readies.iter_mut().zip(&delays) {
            run.bounds = self
                .bounds_at(hook, deadline, true, now + *delay)
                .unwrap_or(Bounds {
                    timeout: Some((Duration::ZERO, TimeoutSource::Phase)),
                    ..run.bounds
                });
        }
        let members = group_runs(&readies, delays);
        // An optional member's failure ends no other.
        let stop_on_failure: Vec<bool> = group
            .iter()
            .map(|h| self.settings.on_error_for(&h.name) == OnError::Abort)
            .collect();
        let before = self.records.len();
        self.run_members(&members, &stop_on_failure, Some(started));
        // The cause is the first failure in time; those ended because of it
        // are not causes.
        let ended: Vec<Record> = self.records[before..].to_vec();
        let mut failure = None;
        for r in ended
            .iter()
            .filter(|r| !matches!(r.finished.outcome, Outcome::Cancelled { .. }))
        {
            let hook = group.iter().find(|h| h.name == r.name).expect("a member");
            if let Some(cause) = self.judge_freeze(hook, &r.finished) {
                failure = failure.or(Some(cause));
            }
        }
        failure
    }

    /// Runs `members` at once, each logged and recorded as a single hook is;
    /// with `started`, each is recorded in the journal (and there) before it
    /// starts. Returns how each ended; `None`: never started.
    fn run_members(
        &mut self,
        members: &[GroupRun<'_, X::Ready>],
        stop_on_failure: &[bool],
        mut started: Option<&mut Vec<Hook>>,
    ) -> Vec<Option<Finished>> {
        let log = self.log;
        let journal = &mut self.journal;
        let records = &mut self.records;
        let starts: Vec<std::cell::Cell<Option<Instant>>> =
            members.iter().map(|_| std::cell::Cell::new(None)).collect();
        let mut on_start = |i: usize, at: Instant| -> Result<(), String> {
            let m = &members[i];
            if let Some(started) = started.as_deref_mut() {
                journal
                    .started(&m.hook.name)
                    .map_err(|e| format!("{e:#}"))?;
                started.push(m.hook.clone());
            }
            log.event(start_event(m.hook, m.run));
            starts[i].set(Some(at));
            Ok(())
        };
        let mut on_end = |i: usize, fin: &Finished| {
            let m = &members[i];
            log.event(end_event(m.hook, m.run, fin));
            records.push(Record {
                name: m.hook.name.clone(),
                phase: m.run.phase,
                rollback: m.run.rollback,
                started: starts[i].get().unwrap_or_else(Instant::now),
                finished: fin.clone(),
            });
        };
        self.exec.run_group(
            members,
            stop_on_failure,
            &mut self.signal_seen,
            &mut on_start,
            &mut on_end,
        )
    }

    /// The hooks in the order they run: each alone, or with `parallel`,
    /// consecutive hooks together but for those `[hooks."NAME"] parallel =
    /// false` keeps out, which run alone at their place.
    fn segments(&self, hooks: &[Hook]) -> Vec<Vec<Hook>> {
        let alone = |h: &Hook| {
            !self.settings.parallel
                || h.name
                    .to_str()
                    .is_some_and(|n| self.settings.hook_solo.contains(n))
        };
        let mut out: Vec<Vec<Hook>> = Vec::new();
        for hook in hooks {
            match out.last_mut() {
                Some(last) if !alone(hook) && last.last().is_some_and(|l| !alone(l)) => {
                    last.push(hook.clone())
                }
                _ => out.push(vec![hook.clone()]),
            }
        }
        out
    }

    /// Remembers how long each hook's freeze took this time, for the next
    /// parallel schedule.
    fn remember_durations(&self) {
        let mut history = History::load(&self.settings.state_dir);
        let mut any = false;
        for r in &self.records {
            if r.phase == Phase::Freeze && r.finished.outcome.success() {
                history.add(&r.name, r.finished.elapsed);
                any = true;
            }
        }
        if any && let Err(e) = history.save(&self.settings.state_dir) {
            self.log
                .warn(&format!("cannot remember hook durations: {e}"));
        }
    }

    /// A freeze that failed: roll back what started, and say so in one line.
    fn abort(&mut self, cause: &str, started: &[Hook]) -> End {
        self.log.event(
            Event::new(
                "rollback",
                format!(
                    "freeze aborted: {cause}; rolling back {} hook(s)",
                    started.len()
                ),
            )
            .level(Level::Error)
            .with("cause", cause)
            .with("hooks", started.len() as u64),
        );
        let failures = self.rollback(started);
        if let Err(e) = self.journal.settle("rollback") {
            self.log.warn(&format!("{e:#}"));
        }
        let mut line = format!("freeze aborted: {cause}");
        if !started.is_empty() {
            let names: Vec<&OsString> = started.iter().rev().map(|h| &h.name).collect();
            line.push_str(&format!("; rolled back {}", crate::text::names(&names)));
        }
        for f in &failures {
            line.push_str(&format!("; rollback: {f}"));
        }
        if let Some(note) = crate::sys::selinux::confined_hooks_note(&line) {
            line.push_str(&format!("; {note}"));
        }
        self.ended(line)
    }

    fn ended(&self, line: String) -> End {
        match self.signal_seen {
            Some(sig) => End::Interrupted(sig, line),
            None => End::Failed(line),
        }
    }

    fn stop_signal(&mut self) -> Option<Signal> {
        if let Some(sig) = self.exec.stop_signal() {
            self.signal_seen = Some(sig);
        }
        self.signal_seen
    }

    fn deadline(&self) -> Option<Instant> {
        self.settings.phase_timeout.map(|t| self.exec.now() + t)
    }

    /// The bounds of one hook: its own timeout or what is left of the phase,
    /// whichever is shorter. `None` when the phase has no time left.
    fn bounds_for(
        &self,
        hook: &Hook,
        deadline: Option<Instant>,
        interruptible: bool,
    ) -> Option<Bounds> {
        self.bounds_at(hook, deadline, interruptible, self.exec.now())
    }

    /// [`Runner::bounds_for`] a hook that starts `at` (a parallel group's
    /// member that starts later).
    fn bounds_at(
        &self,
        hook: &Hook,
        deadline: Option<Instant>,
        interruptible: bool,
        at: Instant,
    ) -> Option<Bounds> {
        let own = self
            .settings
            .timeout_for(&hook.name)
            .map(|d| (d, TimeoutSource::Hook));
        let phase = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(at);
                if left.is_zero() {
                    return None;
                }
                Some((left, TimeoutSource::Phase))
            }
            None => None,
        };
        let timeout = match (own, phase) {
            (Some(o), Some(p)) => Some(if p.0 < o.0 { p } else { o }),
            (o, p) => o.or(p),
        };
        Some(Bounds {
            timeout,
            grace: self.settings.kill_grace,
            interruptible,
        })
    }

    /// Opens and checks a hook; a refusal is logged and recorded.
    fn open(&mut self, hook: &Hook, run: Run) -> Result<X::Ready, Finished> {
        self.exec.open(hook).map_err(|why| {
            let why = why.to_string();
            self.log.event(
                Event::new(
                    "hook_refused",
                    format!(
                        "refused {} {}: it {why}",
                        escape_path(&hook.path),
                        run.phase
                    ),
                )
                .level(Level::Error)
                .with("hook", hook.display_name())
                .with("phase", run.phase.to_string())
                .with("reason", why.as_str()),
            );
            let fin = Finished::refused(why);
            self.record(hook, run, self.exec.now(), &fin);
            fin
        })
    }

    fn open_and_run(&mut self, hook: &Hook, run: Run) -> Finished {
        match self.open(hook, run) {
            Ok(ready) => self.run(hook, &ready, run),
            Err(refused) => refused,
        }
    }

    fn run(&mut self, hook: &Hook, ready: &X::Ready, run: Run) -> Finished {
        self.log.event(start_event(hook, run));
        let started = self.exec.now();
        let fin = self.exec.run(hook, ready, run, &mut self.signal_seen);
        self.log.event(end_event(hook, run, &fin));
        self.record(hook, run, started, &fin);
        fin
    }

    fn record(&mut self, hook: &Hook, run: Run, started: Instant, fin: &Finished) {
        self.records.push(Record {
            name: hook.name.clone(),
            phase: run.phase,
            rollback: run.rollback,
            started,
            finished: fin.clone(),
        });
    }

    fn log_not_run(&self, hooks: &[Hook], why: &str) {
        for h in hooks {
            self.log
                .line(&format!("not run: {} ({why})", escape_path(&h.path)));
        }
    }
}

/// The members of a group: the hooks opened for it, each with its delay.
fn group_runs<'r, R>(
    readies: &'r [(&'r Hook, R, Run)],
    delays: Vec<Duration>,
) -> Vec<GroupRun<'r, R>> {
    readies
        .iter()
        .zip(delays)
        .map(|((hook, ready, run), delay)| GroupRun {
            hook,
            ready,
            run: *run,
            delay,
        })
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ThawOrder;
    use crate::phase::engine::discovery::Discovery;
    use crate::phase::engine::hookfile::Refusal;
    use crate::phase::records::journal;
    use std::cell::Cell;
    use std::collections::HashMap;
    use std::path::PathBuf;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Hooks that take the time and give the outcome they are told to, on a
    /// clock of their own: no process, no sleep.
    struct Fake {
        now: Cell<Instant>,
        steps: HashMap<(&'static str, Phase), (Duration, Outcome)>,
        refused: Vec<&'static str>,
        /// The runner gets this signal while the named hook's freeze runs.
        signal_during: Option<(&'static str, Signal)>,
    }

    impl Fake {
        fn new() -> Fake {
            Fake {
                now: Cell::new(Instant::now()),
                steps: HashMap::new(),
                refused: Vec::new(),
                signal_during: None,
            }
        }

        fn step(mut self, name: &'static str, phase: Phase, takes: u64, outcome: Outcome) -> Fake {
            self.steps.insert((name, phase), (ms(takes), outcome));
            self
        }

        fn pass(&self, d: Duration) -> Finished {
            self.now.set(self.now.get() + d);
            Finished {
                outcome: Outcome::Exited(0),
                elapsed: d,
                output_bytes: 0,
                last_line: None,
            }
        }
    }

    impl Execute for Fake {
        type Ready = ();

        fn open(&mut self, hook: &Hook) -> Result<(), Refusal> {
            match self.refused.iter().any(|r| hook.name == *r) {
                true => Err(Refusal::NotExecutable),
                false => Ok(()),
            }
        }

        fn run(
            &mut self,
            hook: &Hook,
            _ready: &(),
            run: Run,
            signal_seen: &mut Option<Signal>,
        ) -> Finished {
            let name = hook.name.to_str().unwrap();
            let (takes, outcome) = self
                .steps
                .iter()
                .find(|((n, p), _)| *n == name && *p == run.phase)
                .map_or((ms(10), Outcome::Exited(0)), |(_, s)| s.clone());
            if let Some((at, sig)) = self.signal_during
                && at == name
                && run.phase == Phase::Freeze
                && run.bounds.interruptible
            {
                *signal_seen = Some(sig);
                let mut fin = self.pass(ms(5));
                fin.outcome = Outcome::Interrupted(sig);
                return fin;
            }
            if let Some((limit, kind)) = run.bounds.timeout
                && limit < takes
            {
                let mut fin = self.pass(limit);
                fin.outcome = Outcome::TimedOut {
                    limit,
                    kind,
                    killed: false,
                };
                return fin;
            }
            let mut fin = self.pass(takes);
            fin.outcome = outcome;
            fin
        }

        /// The group on the fake clock: starts and ends in time order, the
        /// first failure (with `stop_on_failure`) cancelling what runs and
        /// what has not started.
        fn run_group(
            &mut self,
            members: &[GroupRun<'_, ()>],
            stop_on_failure: &[bool],
            signal_seen: &mut Option<Signal>,
            on_start: &mut dyn FnMut(usize, Instant) -> Result<(), String>,
            on_end: &mut dyn FnMut(usize, &Finished),
        ) -> Vec<Option<Finished>> {
            let t0 = self.now.get();
            let mut results: Vec<Option<Finished>> = members.iter().map(|_| None).collect();
            let mut pending: Vec<usize> = (0..members.len()).collect();
            pending.sort_by_key(|&i| members[i].delay);
            // (when it ends, who, how), computed at its start.
            let mut running: Vec<(Instant, usize, Finished)> = Vec::new();
            let mut stopped = false;
            loop {
                let next_start = pending.first().map(|&i| t0 + members[i].delay);
                let next_end = running.iter().map(|r| r.0).min();
                match (next_start, next_end) {
                    (Some(s), e) if !stopped && e.is_none_or(|e| s <= e) => {
                        let i = pending.remove(0);
                        self.now.set(s);
                        if let Err(why) = on_start(i, s) {
                            let fin = Finished::not_started(why);
                            on_end(i, &fin);
                            results[i] = Some(fin);
                            continue;
                        }
                        let at = self.now.get();
                        let fin = self.run(members[i].hook, &(), members[i].run, signal_seen);
                        self.now.set(at);
                        running.push((at + fin.elapsed, i, fin));
                    }
                    (_, Some(e)) => {
                        let k = running.iter().position(|r| r.0 == e).unwrap();
                        let (end, i, fin) = running.remove(k);
                        self.now.set(end);
                        on_end(i, &fin);
                        let failed = !fin.outcome.success();
                        results[i] = Some(fin);
                        if stop_on_failure[i] && failed && !stopped {
                            stopped = true;
                            pending.clear();
                            for (_, j, _) in running.drain(..) {
                                let fin = Finished {
                                    outcome: Outcome::Cancelled { killed: false },
                                    elapsed: end.saturating_duration_since(t0 + members[j].delay),
                                    output_bytes: 0,
                                    last_line: None,
                                };
                                on_end(j, &fin);
                                results[j] = Some(fin);
                            }
                        }
                    }
                    _ => break,
                }
            }
            results
        }

        fn stop_signal(&mut self) -> Option<Signal> {
            None
        }

        fn now(&self) -> Instant {
            self.now.get()
        }
    }

    struct Setup {
        _dir: tempfile::TempDir,
        settings: Settings,
        log: Log,
        found: Discovery,
    }

    fn setup(names: &[&str]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings::defaults_in(dir.path());
        journal::ensure_state_dir(&settings.state_dir).unwrap();
        let log = Log::open(&settings.log_file, false);
        let hooks = names
            .iter()
            .map(|n| Hook {
                name: OsString::from(n),
                path: PathBuf::from("/hooks").join(n),
            })
            .collect();
        Setup {
            _dir: dir,
            settings,
            log,
            found: Discovery {
                hooks,
                skipped: Vec::new(),
            },
        }
    }

    /// The runs as "phase name", "(rollback)" marked.
    fn runs<X: Execute>(runner: &Runner<'_, X>) -> Vec<String> {
        runner
            .records
            .iter()
            .map(|r| {
                format!(
                    "{} {}{}",
                    r.phase,
                    r.name.to_string_lossy(),
                    if r.rollback { " (rollback)" } else { "" }
                )
            })
            .collect()
    }

    fn log_of(s: &Setup) -> String {
        std::fs::read_to_string(&s.settings.log_file).unwrap()
    }

    fn failed() -> Outcome {
        Outcome::Exited(1)
    }

    #[test]
    fn freezes_in_order_and_thaws_in_reverse() {
        let s = setup(&["10-a", "20-b", "30-c"]);
        let mut runner = Runner::with(&s.settings, &s.log, Fake::new());
        assert_eq!(runner.freeze(&s.found.hooks), End::Done);
        assert!(
            matches!(runner.journal().read(), Recorded::Unthawed(u) if u.complete && u.names.len() == 3)
        );
        assert_eq!(runner.thaw(Some(&s.found)), End::Done);
        assert_eq!(
            runs(&runner),
            [
                "freeze 10-a",
                "freeze 20-b",
                "freeze 30-c",
                "thaw 30-c",
                "thaw 20-b",
                "thaw 10-a"
            ]
        );
        assert!(matches!(runner.journal().read(), Recorded::Idle(_)));
        // Nothing recorded now: a second thaw runs nothing.
        assert_eq!(runner.thaw(Some(&s.found)), End::Done);
        assert_eq!(runner.records.len(), 6);
        assert!(log_of(&s).contains("no freeze recorded since the last thaw"));
    }

    #[test]
    fn thaw_order_forward_thaws_in_freeze_order() {
        let mut s = setup(&["10-a", "20-b"]);
        s.settings.thaw_order = ThawOrder::Forward;
        let mut runner = Runner::with(&s.settings, &s.log, Fake::new());
        runner.freeze(&s.found.hooks);
        runner.thaw(Some(&s.found));
        assert_eq!(runs(&runner)[2..], ["thaw 10-a", "thaw 20-b"]);
    }

    #[test]
    fn a_failed_freeze_rolls_back_every_started_hook_in_reverse_the_failed_one_included() {
        let s = setup(&["10-a", "20-b", "30-c"]);
        let fake = Fake::new().step("20-b", Phase::Freeze, 400, failed());
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        let End::Failed(line) = runner.freeze(&s.found.hooks) else {
            panic!("the freeze must fail");
        };
        assert_eq!(
            line,
            "freeze aborted: 20-b exited with status 1 after 400ms; rolled back 20-b, 10-a"
        );
        assert_eq!(
            runs(&runner),
            [
                "freeze 10-a",
                "freeze 20-b",
                "thaw 20-b (rollback)",
                "thaw 10-a (rollback)"
            ]
        );
        assert!(matches!(runner.journal().read(), Recorded::Idle(_)));
        assert!(log_of(&s).contains("rolling back 2 hook(s)"));
    }

    #[test]
    fn a_refused_hook_fails_the_freeze_and_only_started_hooks_are_rolled_back() {
        let s = setup(&["10-a", "20-b", "30-c"]);
        let mut fake = Fake::new();
        fake.refused.push("20-b");
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        let End::Failed(line) = runner.freeze(&s.found.hooks) else {
            panic!("the freeze must fail");
        };
        assert!(
            line.starts_with("freeze aborted: 20-b was not run"),
            "{line}"
        );
        assert!(line.ends_with("; rolled back 10-a"), "{line}");
        assert_eq!(
            runs(&runner),
            ["freeze 10-a", "freeze 20-b", "thaw 10-a (rollback)"]
        );
        assert!(log_of(&s).contains("refused /hooks/20-b freeze: it "));
    }

    #[test]
    fn on_error_continue_runs_every_hook_and_thaws_each_that_started() {
        let mut s = setup(&["10-a", "20-b", "30-c"]);
        s.settings.on_error = OnError::Continue;
        let fake = Fake::new().step("20-b", Phase::Freeze, 10, failed()).step(
            "10-a",
            Phase::Thaw,
            10,
            failed(),
        );
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        assert_eq!(runner.freeze(&s.found.hooks), End::Done);
        assert_eq!(runner.thaw(Some(&s.found)), End::Done);
        assert_eq!(runs(&runner).len(), 6);
        assert!(
            log_of(&s)
                .contains("20-b exited with status 1 after 10ms; going on (on_error = continue)")
        );
    }

    #[test]
    fn an_optional_hooks_failure_is_passed_over_and_another_hooks_still_aborts() {
        let mut s = setup(&["10-a", "20-b", "30-c"]);
        s.settings
            .hook_on_error
            .insert("20-b".into(), OnError::Continue);
        // 20-b fails in both phases: logged, and the phases succeed.
        let fake = Fake::new().step("20-b", Phase::Freeze, 10, failed()).step(
            "20-b",
            Phase::Thaw,
            10,
            failed(),
        );
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        assert_eq!(runner.freeze(&s.found.hooks), End::Done);
        assert_eq!(runner.thaw(Some(&s.found)), End::Done);
        assert_eq!(runs(&runner).len(), 6);
        let log = log_of(&s);
        assert!(
            log.contains(
                "20-b exited with status 1 after 10ms; going on (optional: [hooks.\"20-b\"] on_error = continue)"
            ),
            "{log}"
        );
        // 30-c is not optional: its failure aborts and rolls back.
        let fake = Fake::new().step("30-c", Phase::Freeze, 10, failed());
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        assert!(matches!(runner.freeze(&s.found.hooks), End::Failed(_)));
        assert_eq!(
            runs(&runner)[3..],
            [
                "thaw 30-c (rollback)",
                "thaw 20-b (rollback)",
                "thaw 10-a (rollback)"
            ]
        );
        // A thaw where a hook that is not optional fails, fails.
        let fake = Fake::new().step("20-b", Phase::Thaw, 10, failed()).step(
            "10-a",
            Phase::Thaw,
            10,
            failed(),
        );
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        assert_eq!(runner.freeze(&s.found.hooks), End::Done);
        assert!(matches!(runner.thaw(Some(&s.found)), End::Failed(_)));
    }

    #[test]
    fn an_optional_members_failure_cancels_no_other_member_of_its_group() {
        let mut s = parallel(&["10-a", "20-b", "30-c"]);
        s.settings
            .hook_on_error
            .insert("10-a".into(), OnError::Continue);
        let fake = Fake::new()
            .step("10-a", Phase::Freeze, 100, failed())
            .step("20-b", Phase::Freeze, 300, Outcome::Exited(0))
            .step("30-c", Phase::Freeze, 300, Outcome::Exited(0));
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        assert_eq!(runner.freeze(&s.found.hooks), End::Done);
        let done: Vec<_> = runner
            .records
            .iter()
            .map(|r| {
                (
                    r.name.to_string_lossy().into_owned(),
                    r.finished.outcome.success(),
                )
            })
            .collect();
        assert_eq!(
            done,
            [
                ("10-a".to_string(), false),
                ("20-b".to_string(), true),
                ("30-c".to_string(), true)
            ]
        );
    }

    #[test]
    fn the_phase_deadline_cuts_the_running_hook_and_stops_the_phase() {
        let mut s = setup(&["10-a", "20-b", "30-c"]);
        s.settings.phase_timeout = Some(ms(100));
        let fake = Fake::new()
            .step("10-a", Phase::Freeze, 60, Outcome::Exited(0))
            .step("20-b", Phase::Freeze, 60, Outcome::Exited(0));
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        let End::Failed(line) = runner.freeze(&s.found.hooks) else {
            panic!("the freeze must fail");
        };
        // 20-b got what was left of the phase (40ms), not its own 60s.
        assert!(
            line.starts_with("freeze aborted: 20-b timed out after 40ms (phase_timeout)"),
            "{line}"
        );
        // The rollback has a budget of its own: both hooks are thawed.
        assert_eq!(
            runs(&runner)[2..],
            ["thaw 20-b (rollback)", "thaw 10-a (rollback)"]
        );
    }

    #[test]
    fn a_phase_without_time_left_starts_no_further_hook() {
        let mut s = setup(&["10-a", "20-b"]);
        s.settings.phase_timeout = Some(ms(100));
        s.settings.on_error = OnError::Continue;
        let fake = Fake::new().step("10-a", Phase::Freeze, 500, Outcome::Exited(0));
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        let End::Failed(line) = runner.freeze(&s.found.hooks) else {
            panic!("an expired phase fails even under continue");
        };
        assert!(
            line.starts_with("freeze aborted: phase_timeout (100ms) expired before 20-b started"),
            "{line}"
        );
        assert_eq!(runs(&runner), ["freeze 10-a", "thaw 10-a (rollback)"]);
        assert!(log_of(&s).contains("not run: /hooks/20-b (phase_timeout expired)"));
    }

    #[test]
    fn a_stop_signal_mid_freeze_rolls_back_uninterrupted_and_is_reported() {
        let mut s = setup(&["10-a", "20-b", "30-c"]);
        // Even under `continue`: a stop signal is no hook failure to go past.
        s.settings.on_error = OnError::Continue;
        let mut fake = Fake::new();
        fake.signal_during = Some(("20-b", Signal::SIGTERM));
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        let End::Interrupted(sig, line) = runner.freeze(&s.found.hooks) else {
            panic!("the freeze must be interrupted");
        };
        assert_eq!(sig, Signal::SIGTERM);
        assert_eq!(
            line,
            "freeze aborted: 20-b was stopped because the runner got SIGTERM after 5ms; rolled back 20-b, 10-a"
        );
        assert_eq!(
            runs(&runner)[2..],
            ["thaw 20-b (rollback)", "thaw 10-a (rollback)"]
        );
        assert!(
            runner.records[2..]
                .iter()
                .all(|r| r.finished.outcome.success())
        );
    }

    #[test]
    fn every_thaw_hook_runs_after_a_failure_and_one_cut_off_is_kept_for_the_next_thaw() {
        let s = setup(&["10-a", "20-b", "30-c"]);
        let fake = Fake::new().step("30-c", Phase::Thaw, 10, failed()).step(
            "20-b",
            Phase::Thaw,
            120_000,
            Outcome::Exited(0),
        );
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        assert_eq!(runner.freeze(&s.found.hooks), End::Done);
        let End::Failed(line) = runner.thaw(Some(&s.found)) else {
            panic!("the thaw must fail");
        };
        assert!(
            line.starts_with("thaw failed: 30-c exited with status 1"),
            "{line}"
        );
        assert!(
            line.contains("20-b timed out after 1m, ended by SIGTERM (kept for the next thaw)"),
            "{line}"
        );
        assert_eq!(runs(&runner)[3..], ["thaw 30-c", "thaw 20-b", "thaw 10-a"]);
        // 30-c's thaw ran to its end (it failed, but it ran): only 20-b is left.
        let Recorded::Unthawed(left) = runner.journal().read() else {
            panic!("20-b must stay recorded");
        };
        assert_eq!(left.names, [OsString::from("20-b")]);
    }

    // ---- parallel groups ----

    /// Offsets of each freeze hook's start and end from the first start.
    fn schedule_of<X: Execute>(runner: &Runner<'_, X>) -> Vec<(String, u64, u64)> {
        let freezes: Vec<&Record> = runner
            .records
            .iter()
            .filter(|r| r.phase == Phase::Freeze)
            .collect();
        let t0 = freezes.iter().map(|r| r.started).min().unwrap();
        let mut out: Vec<(String, u64, u64)> = freezes
            .iter()
            .map(|r| {
                let start = (r.started - t0).as_millis() as u64;
                (
                    r.name.to_string_lossy().into_owned(),
                    start,
                    start + r.finished.elapsed.as_millis() as u64,
                )
            })
            .collect();
        out.sort();
        out
    }

    fn parallel(names: &[&str]) -> Setup {
        let mut s = setup(names);
        s.settings.parallel = true;
        s
    }

    fn remember(s: &Setup, runs: &[(&str, u64)]) {
        let mut h = History::default();
        for (name, took) in runs {
            h.add(OsStr::new(name), ms(*took));
        }
        h.save(&s.settings.state_dir).unwrap();
    }

    use std::ffi::OsStr;

    #[test]
    fn a_parallel_group_starts_the_quick_hooks_later_so_that_all_finish_together() {
        let s = parallel(&["10-app", "20-pg", "30-redis"]);
        remember(&s, &[("10-app", 100), ("20-pg", 1000), ("30-redis", 400)]);
        let fake = Fake::new()
            .step("10-app", Phase::Freeze, 100, Outcome::Exited(0))
            .step("20-pg", Phase::Freeze, 1000, Outcome::Exited(0))
            .step("30-redis", Phase::Freeze, 400, Outcome::Exited(0));
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        assert_eq!(runner.freeze(&s.found.hooks), End::Done);
        assert_eq!(
            schedule_of(&runner),
            [
                ("10-app".into(), 900, 1000),
                ("20-pg".into(), 0, 1000),
                ("30-redis".into(), 600, 1000)
            ]
        );
        // The thaw: all at once, as soon as it starts.
        assert_eq!(runner.thaw(Some(&s.found)), End::Done);
        let thaws: Vec<&Record> = runner
            .records
            .iter()
            .filter(|r| r.phase == Phase::Thaw)
            .collect();
        assert_eq!(thaws.len(), 3);
        assert!(thaws.iter().all(|r| r.started == thaws[0].started));
        // What this freeze took is remembered for the next schedule.
        let h = History::load(&s.settings.state_dir);
        assert_eq!(h.expected(OsStr::new("20-pg")), Some(ms(1000)));
    }

    #[test]
    fn without_history_a_group_starts_together_and_a_failure_cancels_the_rest() {
        let s = parallel(&["10-a", "20-b", "30-c"]);
        let fake = Fake::new()
            .step("10-a", Phase::Freeze, 300, Outcome::Exited(0))
            .step("20-b", Phase::Freeze, 50, failed())
            .step("30-c", Phase::Freeze, 400, Outcome::Exited(0));
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        let End::Failed(line) = runner.freeze(&s.found.hooks) else {
            panic!("the freeze must fail");
        };
        assert!(
            line.starts_with("freeze aborted: 20-b exited with status 1"),
            "{line}"
        );
        // All three started at once; the two still running were ended; all
        // three are rolled back, the failed one included.
        assert!(line.ends_with("rolled back 30-c, 20-b, 10-a"), "{line}");
        let cancelled: Vec<String> = runner
            .records
            .iter()
            .filter(|r| matches!(r.finished.outcome, Outcome::Cancelled { .. }))
            .map(|r| r.name.to_string_lossy().into_owned())
            .collect();
        assert_eq!(cancelled, ["10-a", "30-c"]);
        let rollbacks = runner.records.iter().filter(|r| r.rollback).count();
        assert_eq!(rollbacks, 3);
    }

    #[test]
    fn a_failure_before_the_later_hooks_start_rolls_back_only_what_started() {
        let s = parallel(&["10-a", "20-b", "30-c"]);
        remember(&s, &[("10-a", 100), ("20-b", 1000), ("30-c", 400)]);
        // 20-b starts first (it is the slow one) and fails at once.
        let fake = Fake::new().step("20-b", Phase::Freeze, 50, failed());
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        let End::Failed(line) = runner.freeze(&s.found.hooks) else {
            panic!("the freeze must fail");
        };
        assert!(line.ends_with("; rolled back 20-b"), "{line}");
        assert_eq!(runs(&runner), ["freeze 20-b", "thaw 20-b (rollback)"]);
    }

    #[test]
    fn a_hook_kept_out_of_the_group_runs_alone_at_its_place() {
        let mut s = parallel(&["10-a", "20-solo", "30-c", "40-d"]);
        s.settings.hook_solo.insert("20-solo".into());
        let mut runner = Runner::with(&s.settings, &s.log, Fake::new());
        assert_eq!(
            runner
                .segments(&s.found.hooks)
                .iter()
                .map(|g| g.len())
                .collect::<Vec<_>>(),
            [1, 1, 2]
        );
        assert_eq!(runner.freeze(&s.found.hooks), End::Done);
        let sched = schedule_of(&runner);
        // 10-a, then 20-solo after it, then 30-c and 40-d together.
        assert_eq!(sched[0], ("10-a".into(), 0, 10));
        assert_eq!(sched[1], ("20-solo".into(), 10, 20));
        assert_eq!((sched[2].1, sched[3].1), (20, 20));
        // Without `parallel`, every hook is alone: today's order.
        s.settings.parallel = false;
        let runner = Runner::with(&s.settings, &s.log, Fake::new());
        assert_eq!(runner.segments(&s.found.hooks).len(), 4);
    }

    #[test]
    fn a_group_member_past_its_timeout_times_out_and_the_group_is_ended() {
        let mut s = parallel(&["10-a", "20-b"]);
        s.settings
            .hook_timeouts
            .insert("20-b".into(), Some(ms(200)));
        let fake = Fake::new()
            .step("10-a", Phase::Freeze, 5000, Outcome::Exited(0))
            .step("20-b", Phase::Freeze, 9000, Outcome::Exited(0));
        let mut runner = Runner::with(&s.settings, &s.log, fake);
        let End::Failed(line) = runner.freeze(&s.found.hooks) else {
            panic!("the freeze must fail");
        };
        assert!(
            line.starts_with("freeze aborted: 20-b timed out after 200ms"),
            "{line}"
        );
        assert!(matches!(
            runner
                .records
                .iter()
                .find(|r| r.name == "10-a")
                .unwrap()
                .finished
                .outcome,
            Outcome::Cancelled { .. }
        ));
    }
}
