//! The two lines every hook run writes: the stock `execute PATH PHASE` and
//! `PATH finished with status=N`, with the details as fields.

use crate::log::event::{Event, Level};
use crate::phase::engine::discovery::Hook;
use crate::phase::engine::execute::Run;
use crate::phase::engine::process::{Finished, Outcome};
use crate::text::escape_path;

/// The stock "execute PATH PHASE" line, which existing monitoring greps for.
pub(super) fn start_event(hook: &Hook, run: Run) -> Event {
    Event::new(
        "hook_start",
        format!(
            "execute {} {}{}",
            escape_path(&hook.path),
            run.phase,
            if run.rollback { " (rollback)" } else { "" }
        ),
    )
    .with("hook", hook.display_name())
    .with("phase", run.phase.to_string())
    .with("rollback", run.rollback)
}

/// The stock "finished with status=N" line, with the details as fields.
pub(super) fn end_event(hook: &Hook, run: Run, fin: &Finished) -> Event {
    let detail = match &fin.outcome {
        Outcome::Exited(_) => String::new(),
        other => format!(", {}", other.describe()),
    };
    let mut end = Event::new(
        "hook_end",
        format!(
            "{} finished with status={} in {:.3}s{detail}",
            escape_path(&hook.path),
            fin.outcome.status_code(),
            fin.elapsed.as_secs_f64()
        ),
    )
    .level(if fin.outcome.success() {
        Level::Info
    } else {
        Level::Error
    })
    .in_stock_form()
    .with("hook", hook.display_name())
    .with("phase", run.phase.to_string())
    .with("rollback", run.rollback)
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
    end
}
