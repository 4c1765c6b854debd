//! `list`: every entry of the hooks dir in run order, and whether it runs
//! (with its time limit) or why not, without running anything. The answer to
//! the most asked question about qemu-ga hooks: "why does my hook not run?".

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::units::format_time_limit;
use crate::config::{Settings, TimeLimit};
use crate::exit::Exit;
use crate::log::json::{self, Object};
use crate::phase::engine::discovery::{self as hooks, Discovery, SkipReason};
use crate::phase::engine::hookfile::{self, Refusal};
use crate::phase::engine::trust::Policy;
use crate::text::{escape, escape_path};

/// Whether an entry runs at the next freeze.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Runs {
        timeout: TimeLimit,
        per_hook: bool,
    },
    /// Passed over by the name rules, as the stock script would: why.
    Skipped(SkipReason),
    /// A hook the runner refuses (untrusted, unusable): why. The freeze
    /// fails on it under `on_error = "abort"`.
    Refused(Refusal),
    /// The hooks dir cannot be used (the listing's problem): nothing in it
    /// runs.
    DirRefused(String),
}

impl Verdict {
    /// Why it does not run, as a phrase; `None` when it runs.
    pub fn reason(&self) -> Option<String> {
        match self {
            Verdict::Runs { .. } => None,
            Verdict::Skipped(why) => Some(why.to_string()),
            Verdict::Refused(why) => Some(why.to_string()),
            Verdict::DirRefused(why) => Some(why.clone()),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub name: OsString,
    pub path: PathBuf,
    pub verdict: Verdict,
    /// Its failure is logged and counted but fails no phase (`on_error =
    /// "continue"`, its own or the global one).
    pub optional: bool,
}

/// What the hooks dir holds, judged as a freeze would judge it.
pub struct Listing {
    pub dir: PathBuf,
    /// Why nothing in it runs (missing, unreadable, untrusted), if so.
    pub problem: Option<String>,
    pub entries: Vec<Entry>,
}

/// Judges every entry of `settings.hooks_dir`; `root` is where the system
/// is mounted (`/`, or a system image for `check --root`).
pub fn inspect(settings: &Settings, root: &Path) -> Listing {
    let dir = settings.hooks_dir.clone();
    let found = match hooks::discover(&dir) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return Listing {
                problem: Some(format!("hooks dir {} does not exist", escape_path(&dir))),
                dir,
                entries: Vec::new(),
            };
        }
        Err(e) => {
            return Listing {
                problem: Some(format!("cannot read hooks dir {}: {e}", escape_path(&dir))),
                dir,
                entries: Vec::new(),
            };
        }
    };
    let policy = Policy::current();
    let untrusted = policy
        .check_hooks_dir(&dir)
        .err()
        .map(|u| format!("hooks dir is not trusted: {u}"));
    let entries = judge(settings, &found, &policy, root, untrusted.as_deref());
    Listing {
        dir,
        problem: untrusted,
        entries,
    }
}

fn judge(
    settings: &Settings,
    found: &Discovery,
    policy: &Policy,
    root: &Path,
    dir_problem: Option<&str>,
) -> Vec<Entry> {
    let mut entries: Vec<Entry> = found
        .skipped
        .iter()
        .map(|s| Entry {
            path: settings.hooks_dir.join(&s.name),
            name: s.name.clone(),
            verdict: Verdict::Skipped(s.reason.clone()),
            optional: false,
        })
        .collect();
    for hook in &found.hooks {
        let verdict = match (dir_problem, hookfile::open_in(&hook.path, policy, root)) {
            (Some(p), _) => Verdict::DirRefused(p.to_string()),
            (None, Err(why)) => Verdict::Refused(why),
            (None, Ok(_)) => Verdict::Runs {
                timeout: settings.timeout_for(&hook.name),
                per_hook: hook
                    .name
                    .to_str()
                    .is_some_and(|n| settings.hook_timeouts.contains_key(n)),
            },
        };
        entries.push(Entry {
            name: hook.name.clone(),
            path: hook.path.clone(),
            verdict,
            optional: settings.is_optional(&hook.name),
        });
    }
    // Run order: byte order of the names, skipped ones in their place.
    entries.sort_by(|a, b| {
        use std::os::unix::ffi::OsStrExt;
        a.name.as_bytes().cmp(b.name.as_bytes())
    });
    entries
}

pub fn list(settings: &Settings, as_json: bool) -> Exit {
    let listing = inspect(settings, Path::new("/"));
    let sessions = crate::hold::sessions(settings);
    if as_json {
        let doc = to_json(&listing);
        let names = sessions.iter().map(|s| json::string(&s.name));
        outln!(
            "{},\"held_sessions\":{}}}",
            &doc[..doc.len() - 1],
            json::array(names)
        );
    } else {
        out!("{}", to_text(&listing));
        for s in &sessions {
            outln!(
                "held session {} (keeper pid {}): `release {}` ends it",
                s.name,
                s.keeper,
                s.name
            );
        }
    }
    Exit::Ok
}

fn to_text(l: &Listing) -> String {
    let mut out = format!("hooks dir {}\n", escape_path(&l.dir));
    if let Some(p) = &l.problem {
        out.push_str(&format!("nothing runs: {p}\n"));
    }
    let width = l
        .entries
        .iter()
        .map(|e| escape(&e.name).chars().count())
        .max()
        .unwrap_or(0);
    for e in &l.entries {
        let name = escape(&e.name);
        let pad = " ".repeat(width - name.chars().count());
        match &e.verdict {
            Verdict::Runs { timeout, per_hook } => out.push_str(&format!(
                "  runs     {name}{pad}  timeout {}{}{}\n",
                format_time_limit(*timeout),
                if *per_hook { " (per-hook setting)" } else { "" },
                if e.optional {
                    ", optional (a failure is logged, the freeze goes on)"
                } else {
                    ""
                }
            )),
            Verdict::Skipped(_) | Verdict::DirRefused(_) => out.push_str(&format!(
                "  skipped  {name}{pad}  {}\n",
                e.verdict.reason().unwrap_or_default()
            )),
            Verdict::Refused(why) => out.push_str(&format!(
                "  refused  {name}{pad}  {why} ({})\n",
                if e.optional {
                    "logged and passed over under on_error = continue"
                } else {
                    "the freeze fails under on_error = abort"
                }
            )),
        }
    }
    if l.entries.is_empty() && l.problem.is_none() {
        out.push_str("  (empty)\n");
    }
    out
}

fn to_json(l: &Listing) -> String {
    let entries = l.entries.iter().map(|e| {
        let (runs, timeout, reason) = match &e.verdict {
            Verdict::Runs { timeout, .. } => {
                (true, timeout.map(|t| t.as_millis().to_string()), None)
            }
            other => (false, None, other.reason().map(|r| json::string(&r))),
        };
        Object::new()
            .str("name", &escape(&e.name))
            .str("path", &escape_path(&e.path))
            .bool("runs", runs)
            .bool("refused", matches!(e.verdict, Verdict::Refused(_)))
            .bool("optional", e.optional)
            .opt("timeout_ms", timeout)
            .opt("reason", reason)
            .finish()
    });
    Object::new()
        .str("hooks_dir", &escape_path(&l.dir))
        .opt("problem", l.problem.as_deref().map(json::string))
        .raw("entries", json::array(entries))
        .finish()
}
