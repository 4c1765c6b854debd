//! Hooks of a parallel group, run at once: each started at its own moment
//! (so that the group finishes together), each bounded by its own timeout,
//! all watched in one loop over their outputs and the runner's signals.
//!
//! A failure (when the caller stops on one) or a stop signal ends the group:
//! no further hook starts, and those still running are ended as a timeout
//! ends one (SIGTERM to each process group, the grace, SIGKILL), together.

use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::phase::engine::process::{
    self, Bounds, Context, Finished, Outcome, Spawn, Started, Watch,
};
use crate::phase::records::leftovers::KILL_WAIT;
use crate::sys::{self, Exit, Wake, proc::Ident};

/// One hook of a group: what it runs, its bounds, when it starts (after
/// the group's start).
pub struct Member<'a> {
    pub spawn: Spawn<'a>,
    pub bounds: Bounds,
    pub delay: Duration,
}

/// One running member.
struct Live {
    index: usize,
    started: Started,
    deadline: Option<Instant>,
}

/// Why a group stops early.
#[derive(Clone, Copy)]
enum Stop {
    Failure,
    Signal(Signal),
}

/// Runs `members` at once. `on_start(i, now)` is called just before member
/// `i` is spawned (an `Err`: it must not start, which counts as its
/// failure), `on_end(i, finished)` when it has ended. The first failure of
/// a member whose `stop_on_failure` is true ends the group. Returns how each
/// ended; `None` for a member that never started.
pub fn run_group(
    members: &[Member<'_>],
    ctx: &Context<'_>,
    signal_seen: &mut Option<Signal>,
    stop_on_failure: &[bool],
    on_start: &mut dyn FnMut(usize, Instant) -> Result<(), String>,
    on_end: &mut dyn FnMut(usize, &Finished),
) -> Vec<Option<Finished>> {
    let t0 = Instant::now();
    let interruptible = members.iter().all(|m| m.bounds.interruptible);
    let mut results: Vec<Option<Finished>> = (0..members.len()).map(|_| None).collect();
    let mut pending: Vec<usize> = (0..members.len()).collect();
    pending.sort_by_key(|&i| members[i].delay);
    let mut running: Vec<Live> = Vec::new();
    let mut stop: Option<Stop> = None;
    let mut end = |i: usize, fin: Finished, stop: &mut Option<Stop>| {
        on_end(i, &fin);
        if stop_on_failure[i] && !fin.outcome.success() && stop.is_none() {
            *stop = Some(Stop::Failure);
        }
        results[i] = Some(fin);
    };
    let mut t0 = t0;
    // The starts were timed against hooks that have all ended now: the
    // rest need not wait (their offsets among themselves are kept).
    let hurry = |t0: &mut Instant, running: &[Live], pending: &[usize]| {
        if running.is_empty()
            && let Some(&first) = pending.first()
        {
            let now = Instant::now();
            if *t0 + members[first].delay > now {
                *t0 = now.checked_sub(members[first].delay).unwrap_or(*t0);
            }
        }
    };
    loop {
        hurry(&mut t0, &running, &pending);
        // Start whoever is due.
        while stop.is_none()
            && pending
                .first()
                .is_some_and(|&i| t0 + members[i].delay <= Instant::now())
        {
            let i = pending.remove(0);
            let m = &members[i];
            if let Err(why) = on_start(i, Instant::now()) {
                end(i, Finished::not_started(why), &mut stop);
                continue;
            }
            match process::start(&m.spawn, ctx) {
                Ok(started) => running.push(Live {
                    index: i,
                    deadline: m.bounds.timeout.map(|(d, _)| started.at + d),
                    started,
                }),
                Err(not_run) => end(i, not_run, &mut stop),
            }
        }
        // Whoever ended by itself.
        let mut k = 0;
        while k < running.len() {
            let outcome = match running[k].started.try_reap() {
                Ok(None) => {
                    k += 1;
                    continue;
                }
                Ok(Some(Exit::Code(c))) => Outcome::Exited(c),
                Ok(Some(Exit::Signal(s))) => Outcome::Signaled(s),
                Err(e) => Outcome::NotStarted(format!("cannot wait: {e}")),
            };
            let live = running.swap_remove(k);
            let fin = live
                .started
                .finish(outcome, ctx, members[live.index].spawn.path);
            end(live.index, fin, &mut stop);
        }
        // Whoever ran past its own limit: ended as a single hook is.
        let now = Instant::now();
        while let Some(k) = running
            .iter()
            .position(|l| l.deadline.is_some_and(|d| d <= now))
        {
            let mut live = running.swap_remove(k);
            let bounds = members[live.index].bounds;
            let (limit, kind) = bounds.timeout.expect("a deadline has a limit");
            let killed = Watch::of(&mut live.started, ctx, signal_seen).end_group(bounds.grace);
            let fin = live.started.finish(
                Outcome::TimedOut {
                    limit,
                    kind,
                    killed,
                },
                ctx,
                members[live.index].spawn.path,
            );
            end(live.index, fin, &mut stop);
        }
        if let Some(why) = stop {
            let grace = members
                .iter()
                .map(|m| m.bounds.grace)
                .max()
                .unwrap_or_default();
            for (index, fin) in end_all(running, ctx, grace, why, members) {
                end(index, fin, &mut stop);
            }
            break;
        }
        if pending.is_empty() && running.is_empty() {
            break;
        }
        // Sleep until output, a child's end, a signal, the next start or
        // the nearest deadline.
        hurry(&mut t0, &running, &pending);
        if running.is_empty() {
            continue;
        }
        let next = pending
            .first()
            .map(|&i| t0 + members[i].delay)
            .into_iter()
            .chain(running.iter().filter_map(|l| l.deadline))
            .min();
        let wake = next.map(|n| n.saturating_duration_since(Instant::now()));
        let fds: Vec<_> = running
            .iter()
            .filter_map(|l| l.started.capture.fd())
            .collect();
        match ctx.waiter.wait_any(&fds, wake) {
            Wake::Readable => {
                for live in &mut running {
                    live.started.capture.pump(ctx.log);
                }
            }
            Wake::Timeout | Wake::Signal(Signal::SIGCHLD) => {}
            Wake::Signal(sig) => {
                *signal_seen = Some(sig);
                if interruptible {
                    stop = Some(Stop::Signal(sig));
                }
            }
        }
    }
    results
}

/// Ends every running member together, each as a timeout ends one:
/// SIGTERM to its group and to what it started outside it
/// ([`Started::strays`](process::Started::strays)), `grace` for all of them to go (their
/// output drained meanwhile), then SIGKILL.
fn end_all(
    mut running: Vec<Live>,
    ctx: &Context<'_>,
    grace: Duration,
    why: Stop,
    members: &[Member<'_>],
) -> Vec<(usize, Finished)> {
    let mut strays: Vec<Vec<Ident>> = running.iter().map(|l| l.started.strays()).collect();
    let signal_all = |live: &Live, strays: &[Ident], sig: Signal| {
        sys::signal_group(live.started.pid, sig);
        for s in strays {
            sys::proc::signal_ours(*s, sig);
        }
    };
    for (live, strays) in running.iter().zip(&strays) {
        signal_all(live, strays, Signal::SIGTERM);
    }
    let mut killed = false;
    let mut gone: Vec<(usize, Finished)> = Vec::new();
    let mut reaped = vec![false; running.len()];
    let term_end = Instant::now() + grace;
    let kill_end = term_end + KILL_WAIT;
    while !running.is_empty() && Instant::now() < kill_end {
        if !killed && Instant::now() >= term_end {
            killed = true;
        }
        if killed {
            for (live, strays) in running.iter().zip(&strays) {
                signal_all(live, strays, Signal::SIGKILL);
            }
        }
        let mut k = 0;
        while k < running.len() {
            let pid: Pid = running[k].started.pid;
            if !reaped[k] {
                reaped[k] = !matches!(running[k].started.try_reap(), Ok(None));
            }
            if reaped[k]
                && !sys::group_alive(pid)
                && !strays[k].iter().any(|s| sys::proc::is_ours(*s))
            {
                let live = running.swap_remove(k);
                reaped.swap_remove(k);
                strays.swap_remove(k);
                let outcome = match why {
                    Stop::Failure => Outcome::Cancelled { killed },
                    Stop::Signal(sig) => Outcome::Interrupted(sig),
                };
                let fin = live
                    .started
                    .finish(outcome, ctx, members[live.index].spawn.path);
                gone.push((live.index, fin));
                continue;
            }
            running[k].started.capture.pump(ctx.log);
            k += 1;
        }
        thread::sleep(Duration::from_millis(10));
    }
    // Stuck in the kernel past SIGKILL: given up on, as a single hook is.
    for live in running {
        let outcome = match why {
            Stop::Failure => Outcome::Cancelled { killed: true },
            Stop::Signal(sig) => Outcome::Interrupted(sig),
        };
        let fin = live
            .started
            .finish(outcome, ctx, members[live.index].spawn.path);
        gone.push((live.index, fin));
    }
    gone
}
