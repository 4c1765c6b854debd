//! The rehearsal's closing table: each hook's time per phase, and how long
//! applications were held.

use std::fmt::Write as _;
use std::time::Duration;

use crate::phase::Phase;
use crate::phase::engine::discovery::Hook;
use crate::phase::engine::runner::{Record, held_window};
use crate::text::escape;

/// The table; with `schedule` (parallel groups) each freeze's start and end
/// too, from the first freeze hook's start.
pub fn table(hooks: &[Hook], records: &[Record], schedule: bool) -> String {
    let secs = |d: Duration| format!("{:.3}s", d.as_secs_f64());
    let first = records
        .iter()
        .filter(|r| r.phase == Phase::Freeze)
        .map(|r| r.started)
        .min();
    let mut rows: Vec<[String; 6]> = Vec::new();
    let (mut freeze_total, mut thaw_total) = (Duration::ZERO, Duration::ZERO);
    for hook in hooks {
        let find = |phase: Phase| {
            records
                .iter()
                .find(|r| r.name == hook.name && r.phase == phase)
        };
        let freeze = find(Phase::Freeze);
        let thaw = find(Phase::Thaw);
        freeze_total += freeze.map_or(Duration::ZERO, |r| r.finished.elapsed);
        thaw_total += thaw.map_or(Duration::ZERO, |r| r.finished.elapsed);
        let held = match (freeze, thaw) {
            (Some(f), Some(t)) => {
                secs((t.started + t.finished.elapsed).saturating_duration_since(f.started))
            }
            _ => "-".into(),
        };
        let result = match (freeze, thaw) {
            (None, _) => "not run".to_string(),
            (Some(f), _) if !f.finished.outcome.success() => {
                format!("freeze {}", f.finished.outcome.describe())
            }
            (Some(_), Some(t)) if !t.finished.outcome.success() => {
                format!("thaw {}", t.finished.outcome.describe())
            }
            (Some(_), Some(t)) if t.rollback => "ok, rolled back".to_string(),
            (Some(_), Some(_)) => "ok".to_string(),
            (Some(_), None) => "not thawed".to_string(),
        };
        let span = match (freeze, first) {
            (Some(f), Some(t0)) => {
                let from = f.started.saturating_duration_since(t0);
                format!("+{}..+{}", secs(from), secs(from + f.finished.elapsed))
            }
            _ => "-".into(),
        };
        rows.push([
            escape(&hook.name),
            span,
            freeze.map_or_else(|| "-".into(), |r| secs(r.finished.elapsed)),
            thaw.map_or_else(|| "-".into(), |r| secs(r.finished.elapsed)),
            held,
            result,
        ]);
    }
    let held = held_window(records);
    rows.push([
        "total".into(),
        String::new(),
        secs(freeze_total),
        secs(thaw_total),
        held.map_or_else(|| "-".into(), secs),
        String::new(),
    ]);
    let header = ["HOOK", "FROZE AT", "FREEZE", "THAW", "HELD", "RESULT"].map(String::from);
    // The schedule column only for parallel groups: the rest as before.
    let columns: Vec<usize> = if schedule {
        (0..6).collect()
    } else {
        vec![0, 2, 3, 4, 5]
    };
    let width = |i: usize| {
        rows.iter()
            .chain(std::iter::once(&header))
            .map(|r| r[i].chars().count())
            .max()
            .unwrap_or(0)
    };
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let mut line = String::new();
        for (n, &c) in columns.iter().enumerate() {
            let cell = &row[c];
            if n == 0 {
                line.push_str(&format!("{cell:<w$}", w = width(c)));
            } else if n + 1 == columns.len() {
                line.push_str(&format!("  {cell}"));
            } else {
                line.push_str(&format!("  {cell:>w$}", w = width(c)));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    match held {
        Some(d) => {
            let _ = writeln!(
                out,
                "Applications were held for {} (first freeze hook's start to last thaw hook's end).",
                secs(d)
            );
        }
        None if hooks.is_empty() => out.push_str("No hooks to run.\n"),
        None => {}
    }
    out
}
