//! `status`: what the journal holds (hooks, filesystems, since when), and
//! whether its watchdog is running. Reads only: safe while frozen.

use crate::config::Settings;
use crate::exit::Exit;
use crate::log::json::{self, Object};
use crate::phase::engine::runner::ThawCause;
use crate::phase::records::journal::{Journal, Recorded, Unthawed};
use crate::text::escape_path;

/// `status`: what the journal holds, and whether its watchdog runs.
pub fn status(settings: &Settings, json: bool) -> Exit {
    let recorded = Journal::new(&settings.state_dir).read();
    let held = match &recorded {
        Recorded::Unthawed(h) => Some(h),
        _ => None,
    };
    let sessions = crate::hold::sessions(settings);
    if json {
        let list = sessions.iter().map(|s| {
            Object::new()
                .str("name", &s.name)
                .num("keeper_pid", s.keeper.pid)
                .num("command_pid", s.command)
                .bool("alive", crate::sys::proc::is_ours(s.keeper))
                .num("since_ms", s.since_ms as f64)
                .opt("until_ms", s.until_ms.map(|u| u.to_string()))
                .finish()
        });
        let doc = status_json(
            held,
            &recorded,
            Journal::new(&settings.state_dir).idle_since_ms(),
        );
        // The journal's object, with the held sessions added.
        outln!(
            "{},\"sessions\":{}}}",
            &doc[..doc.len() - 1],
            json::array(list)
        );
    } else {
        let idle_ms = Journal::new(&settings.state_dir).idle_since_ms();
        out!("{}", status_text(held, &recorded, idle_ms));
        for s in &sessions {
            outln!(
                "session {}: keeper pid {} ({}), since {}{}",
                s.name,
                s.keeper,
                if crate::sys::proc::is_ours(s.keeper) {
                    "holding"
                } else {
                    "NOT RUNNING"
                },
                when(s.since_ms),
                s.until_ms
                    .map(|u| format!(", released by itself at {}", when(u)))
                    .unwrap_or_default()
            );
        }
    }
    Exit::Ok
}

/// Why the guard thawed, by the journal's word.
fn guards_reason(word: &str) -> &'static str {
    if word == ThawCause::AgentStop.word() {
        "the agent's service was stopped while frozen (systemd: a stop, a restart or a shutdown)"
    } else if word == ThawCause::GuardSignal.word() {
        "it got a stop signal that was not the agent's service being stopped"
    } else {
        "no thaw came from the hypervisor within max_frozen"
    }
}

fn when(ms: u64) -> String {
    use chrono::TimeZone;
    chrono::Local
        .timestamp_millis_opt(ms as i64)
        .single()
        .map_or_else(
            || ms.to_string(),
            |t| t.format("%Y-%m-%dT%H:%M:%S%:z").to_string(),
        )
}

fn status_text(held: Option<&Unthawed>, recorded: &Recorded, idle_ms: Option<u64>) -> String {
    let Some(h) = held else {
        return match recorded {
            Recorded::Corrupt(why) => format!("nothing held (journal unusable: {why})\n"),
            Recorded::Idle(by) if ThawCause::is_guards(by) => format!(
                "nothing held: the guard thawed the guest{}, because {}; the log says more\n",
                idle_ms
                    .map(|t| format!(" at {}", when(t)))
                    .unwrap_or_default(),
                guards_reason(by)
            ),
            _ => "nothing held: no freeze since the last thaw\n".into(),
        };
    };
    let mut out = format!("frozen since {}\n", when(h.since_ms));
    let names: Vec<String> = h.names.iter().map(|n| crate::text::escape(n)).collect();
    out.push_str(&format!(
        "hooks holding: {}\n",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    ));
    if !h.filesystems.is_empty() {
        let fs: Vec<String> = h
            .filesystems
            .iter()
            .map(|f| escape_path(&f.mountpoint))
            .collect();
        out.push_str(&format!(
            "filesystems frozen{}: {}\n",
            h.frozen_at_ms
                .map(|t| format!(" since {}", when(t)))
                .unwrap_or_default(),
            fs.join(", ")
        ));
    }
    match h.watchdog {
        Some((pid, deadline)) => out.push_str(&format!(
            "watchdog: pid {pid}, {}{}\n",
            if crate::sys::proc::is_ours(pid) {
                "armed"
            } else {
                "NOT RUNNING"
            },
            deadline
                .map(|d| format!(", thaws at {}", when(d)))
                .unwrap_or_default()
        )),
        None if !h.filesystems.is_empty() => out.push_str("watchdog: none\n"),
        None => {}
    }
    if let Some((pid, deadline)) = h.guard {
        out.push_str(&format!(
            "guard: pid {pid}, {}, thaws the guest at {} unless a thaw comes (max_frozen)\n",
            if crate::sys::proc::is_ours(pid) {
                "armed"
            } else {
                "NOT RUNNING"
            },
            when(deadline)
        ));
    }
    out
}

fn status_json(held: Option<&Unthawed>, recorded: &Recorded, idle_ms: Option<u64>) -> String {
    let Some(h) = held else {
        // What settled the last freeze: "thaw", "rollback", or the guard's
        // "max_frozen", "agent_stop", "guard_signal", and when.
        let last = match recorded {
            Recorded::Idle(by) => Some(
                Object::new()
                    .str("by", by)
                    .opt("at_ms", idle_ms.map(|t| t.to_string()))
                    .finish(),
            ),
            _ => None,
        };
        return Object::new()
            .str("version", env!("CARGO_PKG_VERSION"))
            .bool("held", false)
            .raw("hooks", json::array([]))
            .raw("filesystems", json::array([]))
            .opt("watchdog", None)
            .opt("guard", None)
            .opt("last_settled", last)
            .finish();
    };
    let watchdog = h.watchdog.map(|(pid, deadline)| {
        Object::new()
            .num("pid", pid.pid)
            .bool("alive", crate::sys::proc::is_ours(pid))
            .opt("deadline_ms", deadline.map(|d| d.to_string()))
            .finish()
    });
    Object::new()
        .str("version", env!("CARGO_PKG_VERSION"))
        .bool("held", true)
        .num("since_ms", h.since_ms as f64)
        .raw(
            "hooks",
            json::array(
                h.names
                    .iter()
                    .map(|n| json::string(&crate::text::escape(n))),
            ),
        )
        .raw(
            "filesystems",
            json::array(
                h.filesystems
                    .iter()
                    .map(|f| json::string(&escape_path(&f.mountpoint))),
            ),
        )
        .opt("frozen_since_ms", h.frozen_at_ms.map(|t| t.to_string()))
        .opt("watchdog", watchdog)
        .opt(
            "guard",
            h.guard.map(|(pid, deadline)| {
                Object::new()
                    .num("pid", pid.pid)
                    .bool("alive", crate::sys::proc::is_ours(pid))
                    .num("deadline_ms", deadline as f64)
                    .finish()
            }),
        )
        .finish()
}
