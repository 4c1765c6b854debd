//! Metrics for a monitoring system: after every phase, the whole
//! `metrics_file` anew (a temporary file in its directory, then a rename) in
//! the Prometheus text format, for node_exporter's textfile collector. The
//! counters live in the state dir (`<state_dir>/metrics`), so they survive
//! between runs (not reboots: counters that restart at zero are what
//! Prometheus expects of a restart). Written only when nothing is or may be
//! frozen: by the phases that end thawed, never by a rehearsal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::config::Settings;
use crate::log::Log;
use crate::phase::Phase;
use crate::phase::engine::process::Outcome;
use crate::phase::engine::runner::{End, Record};
use crate::phase::records::journal::now_ms;
use crate::sys::paths::replace_file;
use crate::text::{decode_field, encode_field};

/// What is kept between runs: flat `key value` lines; hook names encoded.
#[derive(Debug, Default, PartialEq)]
struct State {
    values: BTreeMap<String, f64>,
}

impl State {
    fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("metrics")
    }

    fn load(state_dir: &Path) -> State {
        let text = fs::read_to_string(State::path(state_dir)).unwrap_or_default();
        let values = text
            .lines()
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect();
        State { values }
    }

    fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let mut text = String::new();
        for (k, v) in &self.values {
            let _ = writeln!(text, "{k} {v}");
        }
        let tmp = state_dir.join(".metrics.tmp");
        crate::sys::paths::replace_file(
            &State::path(state_dir),
            &tmp,
            text.as_bytes(),
            0o600,
            false,
        )
    }

    fn set(&mut self, key: String, value: f64) {
        self.values.insert(key, value);
    }

    fn add(&mut self, key: String, by: f64) {
        *self.values.entry(key).or_insert(0.0) += by;
    }

    fn get(&self, key: &str) -> Option<f64> {
        self.values.get(key).copied()
    }
}

/// One phase that ended thawed: what the metrics learn from it.
struct Ran<'a> {
    /// "freeze", "thaw", "snapshot", "guard_thaw", "watchdog_thaw".
    pub phase: &'a str,
    pub took: Duration,
    pub end: &'a End,
    pub records: &'a [Record],
    /// Whether a hook is optional (`on_error = "continue"`).
    pub optional: &'a dyn Fn(&std::ffi::OsStr) -> bool,
}

/// Adds a phase that ended thawed (`phase` begun at `start`, its hooks'
/// runs `records`) to the counters and writes `metrics_file`, if one is set.
/// Failures are logged, never fatal.
pub fn record(
    settings: &Settings,
    log: &Log,
    phase: &str,
    start: Instant,
    end: &End,
    records: &[Record],
) {
    let Some(file) = &settings.metrics_file else {
        return;
    };
    let ran = Ran {
        phase,
        took: start.elapsed(),
        end,
        records,
        optional: &|name| settings.is_optional(name),
    };
    let mut state = State::load(&settings.state_dir);
    update(&mut state, &ran, now_ms() as f64 / 1000.0);
    let written = state
        .save(&settings.state_dir)
        .and_then(|()| write_atomically(file, &render(&state)));
    if let Err(e) = written {
        log.warn(&format!(
            "cannot write metrics {}: {e}",
            crate::text::escape_path(file)
        ));
    }
}

fn update(state: &mut State, ran: &Ran<'_>, now: f64) {
    let p = ran.phase;
    let ok = matches!(ran.end, End::Done | End::Nothing);
    state.add(format!("runs {p}"), 1.0);
    // Present from the first run on, at 0 too: rate() and alerts need it.
    state.add(format!("failures {p}"), if ok { 0.0 } else { 1.0 });
    state.set(format!("last_run {p}"), now);
    if ok {
        state.set(format!("last_success {p}"), now);
    }
    state.set(format!("last_duration {p}"), ran.took.as_secs_f64());
    state.set(format!("last_ok {p}"), if ok { 1.0 } else { 0.0 });
    for r in ran.records {
        let hook = encode_field(r.name.as_bytes());
        let phase = if r.rollback {
            "rollback"
        } else {
            phase_word(r.phase)
        };
        state.set(
            format!("hook_duration {hook} {phase}"),
            r.finished.elapsed.as_secs_f64(),
        );
        state.set(
            format!("hook_status {hook} {phase}"),
            r.finished.outcome.status_code() as f64,
        );
        if matches!(r.finished.outcome, Outcome::TimedOut { .. }) {
            state.add("hook_timeouts".into(), 1.0);
        }
        // At 0 from its first run on, as the phases' failures.
        state.add(
            format!("hook_failures {hook} {phase}"),
            if r.finished.outcome.success() {
                0.0
            } else {
                1.0
            },
        );
        state.set(
            format!("hook_optional {hook}"),
            if (ran.optional)(&r.name) { 1.0 } else { 0.0 },
        );
    }
    let rolled_back = ran.records.iter().any(|r| r.rollback);
    if rolled_back && p != "guard_thaw" {
        state.add("rollbacks".into(), 1.0);
    }
    match p {
        "freeze" if ok => state.set("frozen_since".into(), now),
        "freeze" => {
            state.values.remove("frozen_since");
        }
        "guard_thaw" => state.add("guard_thaws".into(), 1.0),
        _ => {}
    }
    // The frozen window as the runner saw it: the freeze phase's end to
    // the start of what thawed it.
    if p != "freeze"
        && let Some(since) = state.values.remove("frozen_since")
    {
        let started = now - ran.took.as_secs_f64();
        state.set("frozen_window".into(), (started - since).max(0.0));
    }
}

fn phase_word(phase: Phase) -> &'static str {
    match phase {
        Phase::Freeze => "freeze",
        Phase::Thaw => "thaw",
    }
}

/// A label value as the text format wants it (`\`, `"` and newline
/// escaped), of a value that keeps names apart: a name's `\` doubled and
/// each byte that is not UTF-8 as `\xNN`, so two hooks whose names differ
/// only there are two series (node_exporter drops a duplicate one, with an
/// error at every scrape).
fn label(value: &[u8]) -> String {
    let mut kept = String::with_capacity(value.len());
    for chunk in value.utf8_chunks() {
        kept.push_str(&chunk.valid().replace('\\', "\\\\"));
        for b in chunk.invalid() {
            kept.push_str(&format!("\\x{b:02x}"));
        }
    }
    kept.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition text of `state`.
fn render(state: &State) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP fsfreeze_hook_{name} {help}");
        let _ = writeln!(out, "# TYPE fsfreeze_hook_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "fsfreeze_hook_{name}{labels} {v}");
        }
    };
    family(
        "info",
        "gauge",
        "The fsfreeze-hook that wrote these metrics.",
        vec![(
            format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            1.0,
        )],
    );
    let by_phase = |prefix: &str| -> Vec<(String, f64)> {
        state
            .values
            .iter()
            .filter_map(|(k, v)| {
                let phase = k.strip_prefix(prefix)?.strip_prefix(' ')?;
                Some((format!("{{phase=\"{}\"}}", label(phase.as_bytes())), *v))
            })
            .collect()
    };
    for (name, kind, key, help) in [
        ("runs_total", "counter", "runs", "Runs of each phase."),
        (
            "failures_total",
            "counter",
            "failures",
            "Runs of each phase that failed (a hook failed or was refused, the freeze rolled back, or the runner was stopped).",
        ),
        (
            "last_run_timestamp_seconds",
            "gauge",
            "last_run",
            "When each phase last ended (Unix time).",
        ),
        (
            "last_success_timestamp_seconds",
            "gauge",
            "last_success",
            "When each phase last ended successfully (Unix time).",
        ),
        (
            "last_duration_seconds",
            "gauge",
            "last_duration",
            "How long each phase took the last time.",
        ),
        (
            "last_success",
            "gauge",
            "last_ok",
            "1 if each phase's last run succeeded, else 0.",
        ),
    ] {
        family(name, kind, help, by_phase(key));
    }
    let by_hook = |prefix: &str| -> Vec<(String, f64)> {
        state
            .values
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(prefix)?.strip_prefix(' ')?;
                let (hook, phase) = rest.rsplit_once(' ')?;
                let hook = decode_field(hook).unwrap_or_else(|| hook.as_bytes().to_vec());
                Some((
                    format!("{{hook=\"{}\",phase=\"{phase}\"}}", label(&hook)),
                    *v,
                ))
            })
            .collect()
    };
    family(
        "hook_last_duration_seconds",
        "gauge",
        "How long each hook ran the last time, by phase (rollback: a thaw undoing a failed freeze).",
        by_hook("hook_duration"),
    );
    family(
        "hook_failures_total",
        "counter",
        "Runs of each hook that failed, by phase (an optional hook's failures too, which fail no phase).",
        by_hook("hook_failures"),
    );
    family(
        "hook_optional",
        "gauge",
        "1 for a hook whose failure is logged and counted but fails no phase (on_error = \"continue\", its own or the global one), else 0.",
        state
            .values
            .iter()
            .filter_map(|(k, v)| {
                let hook = k.strip_prefix("hook_optional ")?;
                let hook = decode_field(hook).unwrap_or_else(|| hook.as_bytes().to_vec());
                Some((format!("{{hook=\"{}\"}}", label(&hook)), *v))
            })
            .collect(),
    );
    family(
        "hook_last_exit_status",
        "gauge",
        "Each hook's last exit status, by phase (128+N: ended by signal N; 126: refused or not started).",
        by_hook("hook_status"),
    );
    for (name, key, help) in [
        (
            "rollbacks_total",
            "rollbacks",
            "Freezes rolled back after a failure.",
        ),
        (
            "hook_timeouts_total",
            "hook_timeouts",
            "Hooks ended for running past their time limit.",
        ),
        (
            "guard_thaws_total",
            "guard_thaws",
            "Times the guard thawed the guest because no thaw came within max_frozen.",
        ),
    ] {
        family(
            name,
            "counter",
            help,
            vec![(String::new(), state.get(key).unwrap_or(0.0))],
        );
    }
    if let Some(w) = state.get("frozen_window") {
        family(
            "last_frozen_window_seconds",
            "gauge",
            "The last frozen window as the runner saw it: from the freeze phase's end to the start of the thaw.",
            vec![(String::new(), w)],
        );
    }
    out
}

/// `text` as `path`: a temporary file in the same directory (which the
/// textfile collector ignores: it reads only `*.prom`), then a rename. That
/// directory may belong to the exporter's user: see [`replace_file`].
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("metrics_file names no file"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    replace_file(path, &dir.join(tmp_name), text.as_bytes(), 0o644, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::phase::engine::process::Finished;
    use std::ffi::OsString;
    use std::os::unix::ffi::OsStringExt;
    use std::time::Instant;

    fn rec(name: &[u8], phase: Phase, rollback: bool, outcome: Outcome, ms: u64) -> Record {
        Record {
            name: OsString::from_vec(name.to_vec()),
            phase,
            rollback,
            started: Instant::now(),
            finished: Finished {
                outcome,
                elapsed: Duration::from_millis(ms),
                output_bytes: 0,
                last_line: None,
            },
        }
    }

    #[test]
    fn counters_add_up_and_the_text_is_well_formed() {
        let mut s = State::default();
        let ok = [rec(
            b"10-db \"x\"\\\n",
            Phase::Freeze,
            false,
            Outcome::Exited(0),
            120,
        )];
        update(
            &mut s,
            &Ran {
                phase: "freeze",
                took: Duration::from_millis(150),
                end: &End::Done,
                records: &ok,
                optional: &|_| false,
            },
            1000.0,
        );
        update(
            &mut s,
            &Ran {
                phase: "thaw",
                took: Duration::from_millis(50),
                end: &End::Done,
                records: &[],
                optional: &|_| false,
            },
            1010.0,
        );
        let failed = [
            rec(
                b"20-b",
                Phase::Freeze,
                false,
                Outcome::TimedOut {
                    limit: Duration::from_secs(1),
                    kind: crate::phase::engine::process::TimeoutSource::Hook,
                    killed: false,
                },
                1000,
            ),
            rec(b"20-b", Phase::Thaw, true, Outcome::Exited(0), 10),
        ];
        update(
            &mut s,
            &Ran {
                phase: "freeze",
                took: Duration::from_secs(1),
                end: &End::Failed("x".into()),
                records: &failed,
                optional: &|_| false,
            },
            1020.0,
        );
        let text = render(&s);
        for line in [
            "fsfreeze_hook_runs_total{phase=\"freeze\"} 2",
            "fsfreeze_hook_failures_total{phase=\"freeze\"} 1",
            "fsfreeze_hook_last_success_timestamp_seconds{phase=\"freeze\"} 1000",
            "fsfreeze_hook_last_run_timestamp_seconds{phase=\"freeze\"} 1020",
            "fsfreeze_hook_last_success{phase=\"freeze\"} 0",
            "fsfreeze_hook_last_success{phase=\"thaw\"} 1",
            "fsfreeze_hook_rollbacks_total 1",
            "fsfreeze_hook_hook_timeouts_total 1",
            "fsfreeze_hook_guard_thaws_total 0",
            "fsfreeze_hook_hook_last_exit_status{hook=\"20-b\",phase=\"freeze\"} 143",
            "fsfreeze_hook_hook_last_exit_status{hook=\"20-b\",phase=\"rollback\"} 0",
            // Quote, backslash and newline of a name escaped as the format wants.
            // (a name's own backslash doubled first: the value is `\\`).
            "fsfreeze_hook_hook_last_duration_seconds{hook=\"10-db \\\"x\\\"\\\\\\\\\\n\",phase=\"freeze\"} 0.12",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
        }
        // Freeze ended at 1000, the thaw (50 ms) started at 1009.95.
        let window: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("fsfreeze_hook_last_frozen_window_seconds "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((window - 9.95).abs() < 1e-6, "{window}");
        // Every family has its HELP and TYPE before its samples.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let name = l.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        let dir = tempfile::tempdir().unwrap();
        s.save(dir.path()).unwrap();
        assert_eq!(State::load(dir.path()), s);
    }

    #[test]
    fn a_link_at_the_temporary_name_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, "root's").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(".m.prom.tmp")).unwrap();
        write_atomically(&dir.path().join("m.prom"), "x 1\n").unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root's");
        assert_eq!(
            fs::read_to_string(dir.path().join("m.prom")).unwrap(),
            "x 1\n"
        );
        assert!(!dir.path().join(".m.prom.tmp").exists());
    }

    #[test]
    fn names_that_differ_in_bytes_that_are_not_utf8_are_two_series() {
        let names: [&[u8]; 4] = [b"10-\xff", b"10-\xfe", b"10-\\xff", b"10-\xc3\xbf"];
        let labels: Vec<String> = names.iter().map(|n| label(n)).collect();
        for (i, a) in labels.iter().enumerate() {
            for b in &labels[i + 1..] {
                assert_ne!(a, b, "{labels:?}");
            }
        }
        // In the text: `\\xff` for the byte, `\\\\xff` for the name written so.
        assert_eq!(labels[0], r"10-\\xff");
        assert_eq!(labels[2], r"10-\\\\xff");
        assert_eq!(labels[3], "10-\u{ff}");
    }
}
