//! How the runner runs one hook, behind a trait: the real [`Processes`]
//! opens and checks the file and runs it as a process group with its limits;
//! the runner's unit tests put a fake in its place.

use std::io::Write;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::Settings;
use crate::log::Log;
use crate::phase::Phase;
use crate::phase::engine::discovery::Hook;
use crate::phase::engine::group::{Member, run_group};
use crate::phase::engine::hookfile::{self, Kind, Opened, Refusal};
use crate::phase::engine::process::{self, Bounds, Context, Finished, Spawn};
use crate::phase::engine::trust::Policy;
use crate::sys::{self, Waiter};
use crate::text::escape_path;

/// One run of a hook, as the runner asks for it.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub phase: Phase,
    /// A thaw that undoes a failed freeze (`FSFREEZE_ROLLBACK=1`).
    pub rollback: bool,
    pub bounds: Bounds,
}

/// One hook of a parallel group.
pub struct GroupRun<'r, R> {
    pub hook: &'r Hook,
    pub ready: &'r R,
    pub run: Run,
    /// When it starts, after the group's start.
    pub delay: Duration,
}

/// What the runner needs of the world to run hooks.
pub trait Execute {
    /// A hook checked and ready to run.
    type Ready;
    /// Opens and checks a hook; a refusal says why it must not run.
    fn open(&mut self, hook: &Hook) -> Result<Self::Ready, Refusal>;
    /// Runs it to its end within `run.bounds`; a stop signal the runner
    /// gets meanwhile is recorded in `signal_seen`.
    fn run(
        &mut self,
        hook: &Hook,
        ready: &Self::Ready,
        run: Run,
        signal_seen: &mut Option<Signal>,
    ) -> Finished;
    /// Runs hooks at once, each started `delay` after the group's start
    /// ([`crate::phase::engine::group`]): `on_start(i, now)` just before member `i`
    /// starts (an `Err` keeps it from starting, as its failure),
    /// `on_end(i, ..)` when it ended; the first failure of a member whose
    /// `stop_on_failure` is true ends the rest. `None`: never started.
    fn run_group(
        &mut self,
        members: &[GroupRun<'_, Self::Ready>],
        stop_on_failure: &[bool],
        signal_seen: &mut Option<Signal>,
        on_start: &mut dyn FnMut(usize, Instant) -> Result<(), String>,
        on_end: &mut dyn FnMut(usize, &Finished),
    ) -> Vec<Option<Finished>>;
    /// A stop signal (TERM, INT, HUP) that came between hooks, taken.
    fn stop_signal(&mut self) -> Option<Signal>;
    /// The clock of phase deadlines and of the records.
    fn now(&self) -> Instant;
}

/// The real thing: hook files opened and judged by the trust policy, run
/// as process groups, their output in the log.
pub struct Processes<'a> {
    settings: &'a Settings,
    log: &'a Log,
    waiter: &'a Waiter,
    policy: Policy,
    /// Show hooks that run longer than a second on stderr (`rehearse`).
    pub show_progress: bool,
}

impl<'a> Processes<'a> {
    pub fn new(settings: &'a Settings, log: &'a Log, waiter: &'a Waiter) -> Processes<'a> {
        Processes {
            settings,
            log,
            waiter,
            policy: Policy::current(),
            show_progress: false,
        }
    }
}

impl Execute for Processes<'_> {
    type Ready = Opened;

    fn open(&mut self, hook: &Hook) -> Result<Opened, Refusal> {
        hookfile::open(&hook.path, &self.policy)
    }

    fn run(
        &mut self,
        hook: &Hook,
        opened: &Opened,
        run: Run,
        signal_seen: &mut Option<Signal>,
    ) -> Finished {
        if opened.kind == Kind::Shell {
            self.log.warn(&format!(
                "{} has no #! line; running it with /bin/sh",
                escape_path(&hook.path)
            ));
        }
        let name = hook.display_name();
        let phase = run.phase.to_string();
        let limit = run.bounds.timeout.map(|(d, _)| d);
        let show = |elapsed: Duration| progress(&name, &phase, elapsed, limit);
        let fin = process::run(
            Spawn {
                path: &hook.path,
                opened,
                phase: &phase,
                rollback: run.rollback,
                at_once: false,
            },
            run.bounds,
            &Context {
                waiter: self.waiter,
                log: self.log,
                output_limit: self.settings.output_limit,
                state_dir: &self.settings.state_dir,
                config: self.settings.config_file.as_deref(),
                progress: self.show_progress.then_some(&show as &dyn Fn(Duration)),
            },
            signal_seen,
        );
        if self.show_progress && fin.elapsed >= Duration::from_secs(1) {
            progress_done();
        }
        fin
    }

    fn run_group(
        &mut self,
        members: &[GroupRun<'_, Opened>],
        stop_on_failure: &[bool],
        signal_seen: &mut Option<Signal>,
        on_start: &mut dyn FnMut(usize, Instant) -> Result<(), String>,
        on_end: &mut dyn FnMut(usize, &Finished),
    ) -> Vec<Option<Finished>> {
        for m in members.iter().filter(|m| m.ready.kind == Kind::Shell) {
            self.log.warn(&format!(
                "{} has no #! line; running it with /bin/sh",
                escape_path(&m.hook.path)
            ));
        }
        let phases: Vec<String> = members.iter().map(|m| m.run.phase.to_string()).collect();
        let group: Vec<Member<'_>> = members
            .iter()
            .zip(&phases)
            .map(|(m, phase)| Member {
                spawn: Spawn {
                    path: &m.hook.path,
                    opened: m.ready,
                    phase,
                    rollback: m.run.rollback,
                    at_once: true,
                },
                bounds: m.run.bounds,
                delay: m.delay,
            })
            .collect();
        let ctx = Context {
            waiter: self.waiter,
            log: self.log,
            output_limit: self.settings.output_limit,
            state_dir: &self.settings.state_dir,
            config: self.settings.config_file.as_deref(),
            progress: None,
        };
        run_group(&group, &ctx, signal_seen, stop_on_failure, on_start, on_end)
    }

    fn stop_signal(&mut self) -> Option<Signal> {
        sys::take_pending_stop_signal()
    }

    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Progress of a hook that runs longer than a second, on stderr: one line
/// rewritten in place on a terminal, plain lines (every 5 s) otherwise.
fn progress(hook: &str, phase: &str, elapsed: Duration, limit: Option<Duration>) {
    use std::io::IsTerminal;
    let secs = elapsed.as_secs();
    let limit = crate::config::units::format_time_limit(limit);
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(
            err,
            "\r\x1b[K  {phase} {hook}: running for {secs}s (limit {limit})"
        );
        let _ = std::io::Write::flush(&mut err);
    } else if secs == 1 || secs.is_multiple_of(5) {
        let _ = writeln!(
            err,
            "{phase} {hook}: still running after {secs}s (limit {limit})"
        );
    }
}

/// Ends a progress line on a terminal.
fn progress_done() {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        errln!();
    }
}
