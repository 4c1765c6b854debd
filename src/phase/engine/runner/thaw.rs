//! The thaw side of a phase: the thaw hooks of what the journal records (in
//! reverse of the freeze, or forward), and the rollback of a failed freeze.

use std::ffi::OsString;
use std::time::Duration;

use crate::config::units::format_time_limit;
use crate::config::{OnError, ThawOrder};
use crate::phase::Phase;
use crate::phase::engine::discovery::{Discovery, Hook};
use crate::phase::engine::execute::{Execute, Run};
use crate::phase::engine::process::{Bounds, Finished};
use crate::phase::records::journal::{self, Recorded};
use crate::text::{escape, escape_path};

use super::{End, Runner, ThawCause, group_runs};

impl<X: Execute> Runner<'_, X> {
    /// Runs the thaw hooks of what the journal says is unthawed, in reverse
    /// of the freeze order (or forward, `thaw_order = "forward"`). Every hook
    /// runs even when an earlier one fails.
    pub fn thaw(&mut self, found: Option<&Discovery>) -> End {
        self.thaw_as(found, ThawCause::Thaw)
    }

    /// [`Runner::thaw`] for `cause`: a rollback's and the guard's hooks get
    /// `FSFREEZE_ROLLBACK=1`.
    pub fn thaw_as(&mut self, found: Option<&Discovery>, cause: ThawCause) -> End {
        let rollback = cause.rollback();
        let Some((mut plan, mut failures)) = self.thaw_plan(found) else {
            return End::Done;
        };
        // A failure that fails the thaw under `on_error = "abort"`: any but
        // an optional hook's.
        let mut strict = !failures.is_empty();
        if self.settings.thaw_order == ThawOrder::Reverse {
            plan.reverse();
        }
        let deadline = self.deadline();
        let mut done = 0;
        for segment in self.segments(&plan) {
            let stop = self.stop_signal();
            let bounds: Option<Vec<Bounds>> = segment
                .iter()
                .map(|h| self.bounds_for(h, deadline, true))
                .collect();
            let Some(bounds) = bounds.filter(|_| stop.is_none()) else {
                let why = match stop {
                    Some(sig) => format!("runner got {}", sig.as_str()),
                    None => format!(
                        "phase_timeout ({}) expired",
                        format_time_limit(self.settings.phase_timeout)
                    ),
                };
                self.log_not_run(&plan[done..], &why);
                failures.push(format!(
                    "{why}; {} hook(s) not thawed, kept for the next thaw",
                    plan.len() - done
                ));
                strict = true;
                break;
            };
            done += segment.len();
            for (hook, fin) in self.thaw_segment(&segment, &bounds, rollback) {
                self.record_thaw(&hook, &fin);
                if !fin.outcome.success() {
                    strict |= !self.settings.is_optional(&hook.name);
                    let kept = if fin.outcome.ran_to_end() {
                        ""
                    } else {
                        " (kept for the next thaw)"
                    };
                    failures.push(format!("{} {}{kept}", hook.display_name(), fin.reason()));
                }
            }
        }
        if let Err(e) = journal::ensure_state_dir(&self.settings.state_dir)
            .and_then(|()| self.journal.settle(cause.word()))
        {
            self.log.warn(&format!("{e:#}"));
        }
        if failures.is_empty()
            || (self.signal_seen.is_none()
                && (self.settings.on_error == OnError::Continue || !strict))
        {
            if !failures.is_empty() && self.settings.on_error == OnError::Abort {
                self.log.line(&format!(
                    "{}; going on: optional hook(s)",
                    failures.join("; ")
                ));
            }
            return End::Done;
        }
        failures.extend(crate::sys::selinux::confined_hooks_note(
            &failures.join("; "),
        ));
        self.ended(format!("thaw failed: {}", failures.join("; ")))
    }

    /// Which hooks a thaw runs, by what the journal says (in freeze order),
    /// with what is already known to fail; `None`: nothing to thaw.
    pub(super) fn thaw_plan(
        &mut self,
        found: Option<&Discovery>,
    ) -> Option<(Vec<Hook>, Vec<String>)> {
        let all: &[Hook] = found.map_or(&[], |d| &d.hooks);
        match self.journal.read() {
            Recorded::Idle(_) => {
                self.log
                    .line("no freeze recorded since the last thaw or rollback; no hook runs");
                None
            }
            Recorded::Absent => {
                self.log.line("no journal (first run since boot); thawing every hook, as the stock script does");
                Some((all.to_vec(), Vec::new()))
            }
            Recorded::Corrupt(why) => {
                self.log.warn(&format!(
                    "journal {} is unusable ({why}); treated as absent: thawing every hook",
                    escape_path(self.journal.path())
                ));
                Some((all.to_vec(), Vec::new()))
            }
            Recorded::Unthawed(unthawed) => {
                if !unthawed.complete {
                    self.log.warn(&format!(
                        "the last freeze did not complete (its runner died); thawing the {} hook(s) it started",
                        unthawed.names.len()
                    ));
                }
                let (plan, missing, gone) = resolve(&unthawed.names, found);
                for m in &missing {
                    self.log.warn(m);
                }
                // Nothing can ever thaw a hook that no longer exists:
                // reported once, then no longer recorded.
                for name in &gone {
                    if let Err(e) = self.journal.thawed(name) {
                        self.log.warn(&format!("{e:#}"));
                    }
                }
                Some((plan, missing))
            }
        }
    }

    /// A thaw that ran to its end (whatever its status) releases the hook
    /// in the journal; one cut off, refused or not started keeps it.
    pub(super) fn record_thaw(&mut self, hook: &Hook, fin: &Finished) {
        if fin.outcome.ran_to_end()
            && let Err(e) = self.journal.thawed(&hook.name)
        {
            self.log.warn(&format!("{e:#}"));
        }
    }

    /// The rollback after a failed freeze: thaw, in reverse, every hook whose
    /// freeze started. It has its own phase budget, and signals do not cut it
    /// short: it is what releases the locks. Returns what failed.
    pub(super) fn rollback(&mut self, started: &[Hook]) -> Vec<String> {
        let deadline = self.deadline();
        let mut failures = Vec::new();
        let reversed: Vec<Hook> = started.iter().rev().cloned().collect();
        let mut done = 0;
        for segment in self.segments(&reversed) {
            let bounds: Option<Vec<Bounds>> = segment
                .iter()
                .map(|h| self.bounds_for(h, deadline, false))
                .collect();
            let Some(bounds) = bounds else {
                let left = &reversed[done..];
                let in_order: Vec<Hook> = left.iter().rev().cloned().collect();
                self.log_not_run(&in_order, "phase_timeout expired during rollback");
                failures.push(format!(
                    "phase_timeout expired, {} hook(s) not rolled back",
                    left.len()
                ));
                break;
            };
            done += segment.len();
            for (hook, fin) in self.thaw_segment(&segment, &bounds, true) {
                self.record_thaw(&hook, &fin);
                if !fin.outcome.success() {
                    failures.push(format!(
                        "{} {}",
                        hook.display_name(),
                        fin.outcome.describe()
                    ));
                }
            }
        }
        failures
    }

    /// The thaw (or rollback) of one hook, or of a parallel group at once;
    /// how each ended.
    pub(super) fn thaw_segment(
        &mut self,
        segment: &[Hook],
        bounds: &[Bounds],
        rollback: bool,
    ) -> Vec<(Hook, Finished)> {
        let run = |bounds: Bounds| Run {
            phase: Phase::Thaw,
            rollback,
            bounds,
        };
        if let ([hook], [bounds]) = (segment, bounds) {
            return vec![(hook.clone(), self.open_and_run(hook, run(*bounds)))];
        }
        let mut out = Vec::new();
        let mut readies = Vec::new();
        for (hook, bounds) in segment.iter().zip(bounds) {
            match self.open(hook, run(*bounds)) {
                Ok(ready) => readies.push((hook, ready, run(*bounds))),
                Err(refused) => out.push((hook.clone(), refused)),
            }
        }
        let members = group_runs(&readies, vec![Duration::ZERO; readies.len()]);
        let results = self.run_members(&members, &vec![false; members.len()], None);
        for (member, fin) in members.iter().zip(results) {
            let fin = fin.unwrap_or_else(|| {
                Finished::not_started("not started: the runner got a stop signal".into())
            });
            out.push((member.hook.clone(), fin));
        }
        out
    }
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
