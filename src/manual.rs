//! The reference tables of the manual, written once: every config key with
//! its default and meaning, and every exit status. From these come the key
//! table of docs/configuration.md and the man page's CONFIGURATION, the
//! status table of docs/commands.md and the man page's EXIT STATUS. Tests
//! check the pages against them (and them against the parser and `Exit`);
//! `UPDATE_MANUAL=1 cargo test manual` rewrites the pages' generated parts,
//! `UPDATE_MAN=1 cargo test man_page` the man page.

/// A key of the config file. `default` and `meaning` are Markdown, with
/// links relative to docs/; a default written as a TOML value in backticks
/// (`"60s"`, `true`) is checked against the code's default.
pub struct Key {
    pub name: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

pub const KEYS: &[Key] = &[
    Key {
        name: "hooks_dir",
        default: "beside the invoked path",
        meaning: "directory of hook scripts: `fsfreeze-hook.d` beside the path the binary was invoked by (`/etc/qemu/fsfreeze-hook.d` for `/etc/qemu/fsfreeze-hook`); invoked through `PATH`, the one of the hook qemu-ga is set to run",
    },
    Key {
        name: "log_file",
        default: "`/var/log/qga-fsfreeze-hook.log` (the RHEL family: `/var/log/qemu-ga/fsfreeze-hook.log`)",
        meaning: "the log: the runner's lines and the hooks' output, appended, created 0600",
    },
    Key {
        name: "state_dir",
        default: "`/run/fsfreeze-hook`",
        meaning: "the journal, the lock, held sessions and log lines kept while frozen; on tmpfs, so nothing is held after a reboot (standalone mode refuses one on a filesystem it would freeze)",
    },
    Key {
        name: "timeout",
        default: "`\"60s\"`",
        meaning: "time limit of each hook; `--timeout` overrides it and every per-hook value",
    },
    Key {
        name: "phase_timeout",
        default: "`\"300s\"`",
        meaning: "time limit of a whole freeze or thaw phase, and of the wait for the lock",
    },
    Key {
        name: "max_frozen",
        default: "`\"10m\"`",
        meaning: "drop-in: if no thaw comes within this after a freeze, the guard the freeze left thaws every filesystem qemu-ga would freeze and runs the thaw hooks as a rollback (see [the guard](freeze-life.md#what-if-the-thaw-never-comes)); `\"0\"`: no guard, the guest stays frozen until the hypervisor thaws it; `freeze --max-frozen` overrides it",
    },
    Key {
        name: "kill_grace",
        default: "`\"5s\"`",
        meaning: "time between SIGTERM and SIGKILL of a hook's process group (`\"0\"`: KILL at once)",
    },
    Key {
        name: "on_error",
        default: "`\"abort\"`",
        meaning: "`\"abort\"`: a failing freeze hook stops the freeze and the hooks already run are thawed; `\"continue\"`: log it and go on, exit 0 (the stock script's behaviour)",
    },
    Key {
        name: "thaw_order",
        default: "`\"reverse\"`",
        meaning: "`\"reverse\"` (the exact reverse of the freeze) or `\"forward\"` (the stock script's order)",
    },
    Key {
        name: "parallel",
        default: "`false`",
        meaning: "`true`: consecutive hooks run at once, the quick ones started later so that all finish together, their thaws at once (see [parallel hooks](parallel.md)); `[hooks.\"NAME\"] parallel = false` keeps one out",
    },
    Key {
        name: "presync",
        default: "`true`",
        meaning: "before the first freeze hook, flush (`syncfs`) the filesystems to be frozen, so that the freeze has little left to write",
    },
    Key {
        name: "presync_timeout",
        default: "`\"30s\"`",
        meaning: "how long the flush may hold the freeze; past it the freeze goes on, and a device stuck in the flush holds nothing",
    },
    Key {
        name: "metrics_file",
        default: "unset",
        meaning: "after every phase that ends with nothing frozen, the Prometheus metrics, written anew atomically (see [metrics](logs-and-metrics.md#metrics)), e.g. `\"/var/lib/prometheus/node-exporter/fsfreeze_hook.prom\"`; a relative path is taken from the directory the command runs in; a rehearsal writes none",
    },
    Key {
        name: "output_limit",
        default: "`\"1MiB\"`",
        meaning: "bytes of output one hook may add to the log per run: a count, or `\"512KiB\"`, `\"4MiB\"`; `\"0\"`: no limit; at most 1 GiB",
    },
    Key {
        name: "log_format",
        default: "`\"text\"`",
        meaning: "`\"text\"`, or `\"json\"`: one JSON object per line and event (see [the log](logs-and-metrics.md#log))",
    },
    Key {
        name: "log_target",
        default: "`\"file\"`",
        meaning: "where the runner's own events go: `\"file\"`, `\"syslog\"` (facility daemon) or `\"journal\"` (native protocol), with identifier `fsfreeze-hook` and priorities info, warning, error; hook output always goes to the file",
    },
    Key {
        name: "[hooks.\"NAME\"] timeout",
        default: "`timeout`",
        meaning: "time limit of the hook named NAME",
    },
    Key {
        name: "[hooks.\"NAME\"] parallel",
        default: "`true`",
        meaning: "`false`: with `parallel = true`, NAME still runs alone, at its place between groups",
    },
    Key {
        name: "[hooks.\"NAME\"] on_error",
        default: "`on_error`",
        meaning: "`\"continue\"`: NAME is optional, for an application whose consistency is nice to have: its failure is logged and counted (`fsfreeze_hook_hook_failures_total`), the freeze goes on, and `list`, `check`, `rehearse` and the metric `fsfreeze_hook_hook_optional` say so; `\"abort\"`: its failure fails the phase even under a global `\"continue\"`; `--on-error` overrides it",
    },
];

/// An exit status, or a set of them (`code` as the table shows it).
pub struct Status {
    pub code: &'static str,
    pub meaning: &'static str,
}

pub const STATUSES: &[Status] = &[
    Status {
        code: "0",
        meaning: "success, or failures accepted under `on_error = \"continue\"`; also: no hooks dir, nothing recorded to thaw",
    },
    Status {
        code: "1",
        meaning: "a hook failed or was refused (untrusted, missing interpreter, ...): the freeze was aborted and rolled back, or a thaw hook failed; a thaw found a filesystem it froze thawed by someone else, or could not thaw one; `thaw --fs` thawed but its hooks could not take the lock; `check` found a problem, or `list` or `status` a config problem (said first, the rest shown all the same); `example` has no example of that name; a `hold` session did not become ready, or another `hold` of the name is under way",
    },
    Status {
        code: "2",
        meaning: "usage error: a wrong command, option or value",
    },
    Status {
        code: "3",
        meaning: "nothing was run: bad or untrusted config (not for a thaw, which runs with the settings its freeze ran under, nor for `check`, `enable`, `disable` and `refresh`, which read no run's config), hooks dir unreadable or untrusted, state dir unusable on freeze or writable by another user, lock not obtained within `phase_timeout`, `rehearse` while a freeze is held, a `hold` or `release` NAME that is not a name, `enable`/`disable`/`refresh` could not make a change",
    },
    Status {
        code: "123",
        meaning: "`snapshot` only: a filesystem it froze was thawed by someone else while COMMAND ran: what COMMAND copied may be torn (see [standalone snapshots](standalone.md))",
    },
    Status {
        code: "124",
        meaning: "`snapshot` only: the frozen window (`--max-frozen`) expired: the filesystems were thawed first, then COMMAND ended",
    },
    Status {
        code: "125",
        meaning: "`snapshot` only: the freeze failed and was rolled back, or was refused before anything ran (config, not root, not a mountpoint, the lock); COMMAND did not run",
    },
    Status {
        code: "126, 127, other",
        meaning: "`snapshot` only: COMMAND could not be executed, was not found, or exited with that status",
    },
    Status {
        code: "128+N",
        meaning: "the runner got signal N (TERM, INT, HUP, or any other that would end it: see [what happens when](freeze-life.md#what-happens-when)); it thawed and rolled back first: the running hook's group was ended and the freeze rolled back, or, while it waited for the lock another run held, it stopped waiting and ran nothing",
    },
];

/// The Markdown table of the keys.
pub fn keys_table() -> String {
    let mut out = String::from("| key | default | meaning |\n|---|---|---|\n");
    for key in KEYS {
        out += &format!("| `{}` | {} | {} |\n", key.name, key.default, key.meaning);
    }
    out
}

/// The Markdown table of the exit statuses.
pub fn statuses_table() -> String {
    let mut out = String::from("| code | meaning |\n|---|---|\n");
    for status in STATUSES {
        out += &format!("| {} | {} |\n", status.code, status.meaning);
    }
    out
}

/// The keys as the man page's CONFIGURATION lists them.
pub fn keys_roff() -> String {
    let mut out = String::new();
    for key in KEYS {
        out += &format!(
            ".TP\n.B {}\n{}; default: {}.\n",
            roff(key.name),
            roff(&capitalized(key.meaning)),
            roff(key.default)
        );
    }
    out
}

/// The statuses as the man page's EXIT STATUS lists them.
pub fn statuses_roff() -> String {
    let mut out = String::new();
    for status in STATUSES {
        out += &format!(
            ".TP\n.B {}\n{}.\n",
            roff(status.code),
            roff(&capitalized(status.meaning))
        );
    }
    out
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// One line of our Markdown as roff: code spans bold, a link its text and
/// the page it leads to.
fn roff(markdown: &str) -> String {
    let mut out = String::new();
    let mut rest = markdown;
    while let Some(at) = rest.find(['`', '[']) {
        out += &escape(&rest[..at]);
        let tail = &rest[at..];
        if let Some(code) = tail.strip_prefix('`') {
            let end = code.find('`').expect("a closed code span");
            out += &format!("\\fB{}\\fR", escape(&code[..end]));
            rest = &code[end + 1..];
        } else if let Some((text, after)) = tail[1..].split_once("](") {
            let end = after.find(')').expect("a closed link");
            let page = after[..end].split('#').next().unwrap();
            out += &format!("{}, \\fIdocs/{}\\fR", escape(text), escape(page));
            rest = &after[end + 1..];
        } else {
            out += "[";
            rest = &tail[1..];
        }
    }
    out += &escape(rest);
    if out.starts_with(['.', '\'']) {
        out.insert_str(0, "\\&");
    }
    out
}

fn escape(text: &str) -> String {
    text.replace('\\', "\\e").replace('-', "\\-")
}

/// `page` with the part between its markers for `what` replaced by `part`.
fn with_generated(page: &str, what: &str, part: &str) -> String {
    let start = format!(
        "<!-- {what}: generated from src/manual.rs; UPDATE_MANUAL=1 cargo test manual -->\n"
    );
    let end = format!("<!-- end of {what} -->\n");
    let at = page
        .find(&start)
        .unwrap_or_else(|| panic!("no marker for {what}"))
        + start.len();
    let stop = at + page[at..].find(&end).expect("the end marker");
    format!("{}{part}{}", &page[..at], &page[stop..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::file::{HOOK_KEY_NAMES, KEY_NAMES};
    use std::path::Path;

    /// `docs/NAME` with its `what` part generated anew: rewritten with
    /// UPDATE_MANUAL, else checked.
    fn is_current(name: &str, what: &str, part: &str) {
        let path = format!("{}/docs/{name}", env!("CARGO_MANIFEST_DIR"));
        let page = std::fs::read_to_string(&path).unwrap();
        let fresh = with_generated(&page, what, part);
        if std::env::var_os("UPDATE_MANUAL").is_some() {
            std::fs::write(&path, &fresh).unwrap();
        } else {
            assert!(
                page == fresh,
                "docs/{name}'s {what} is stale: run `UPDATE_MANUAL=1 cargo test manual` and commit it"
            );
        }
    }

    #[test]
    fn the_manuals_key_table_is_current() {
        is_current("configuration.md", "key table", &keys_table());
    }

    #[test]
    fn the_manuals_exit_status_table_is_current() {
        is_current("commands.md", "exit status table", &statuses_table());
    }

    #[test]
    fn every_key_the_parser_knows_is_in_the_reference_and_no_other() {
        let mut known: Vec<String> = KEY_NAMES
            .iter()
            .filter(|k| **k != "hooks")
            .map(|k| k.to_string())
            .chain(
                HOOK_KEY_NAMES
                    .iter()
                    .map(|k| format!("[hooks.\"NAME\"] {k}")),
            )
            .collect();
        let mut documented: Vec<String> = KEYS.iter().map(|k| k.name.to_string()).collect();
        known.sort();
        documented.sort();
        assert_eq!(documented, known);
    }

    /// The settings a config of `text` gives (its text left out), as
    /// Debug: two equal ones behave the same.
    fn settings_of(text: &str) -> String {
        use crate::config::{Overrides, Settings};
        let dir = tempfile::tempdir().unwrap();
        let flags = Overrides {
            log_file: Some(dir.path().join("log")),
            state_dir: Some(dir.path().join("state")),
            ..Overrides::default()
        };
        let argv0 = Path::new("/etc/qemu/fsfreeze-hook");
        let file = Path::new("/etc/qemu/fsfreeze-hook.conf");
        let mut s = Settings::load_saved(argv0, &flags, file, text)
            .unwrap_or_else(|e| panic!("{text}: {e:?}"));
        s.config_text = None;
        format!("{s:?}").replace(&dir.path().display().to_string(), "DIR")
    }

    /// A default the reference writes as a value (`"60s"`, `true`) is what
    /// the code does with no config: the same settings as with that value.
    #[test]
    fn the_defaults_written_as_values_are_the_codes() {
        let defaults = settings_of("");
        let mut checked = 0;
        for key in KEYS {
            let Some(value) = key
                .default
                .strip_prefix('`')
                .and_then(|d| d.strip_suffix('`'))
                .filter(|v| v.starts_with('"') || *v == "true" || *v == "false")
            else {
                continue;
            };
            let text = match key.name.strip_prefix("[hooks.\"NAME\"] ") {
                Some(hook_key) => format!("[hooks.\"x\"]\n{hook_key} = {value}\n"),
                None => format!("{} = {value}\n", key.name),
            };
            assert_eq!(settings_of(&text), defaults, "{}'s default", key.name);
            checked += 1;
        }
        assert!(checked >= 13, "{checked} defaults checked");
    }

    /// A wrong default in the reference would fail the test above.
    #[test]
    fn a_value_other_than_the_default_changes_the_settings() {
        assert_ne!(settings_of("timeout = \"61s\"\n"), settings_of(""));
        assert_ne!(
            settings_of("[hooks.\"x\"]\nparallel = false\n"),
            settings_of("")
        );
    }

    /// Every status `Exit` can give is in the table.
    #[test]
    fn every_status_an_exit_can_give_has_a_row() {
        use crate::exit::Exit;
        use nix::sys::signal::Signal;
        let l = String::new;
        let exits = [
            Exit::Ok,
            Exit::Failed(l()),
            Exit::Problems,
            Exit::Setup(l()),
            Exit::Signal(Signal::SIGTERM, l()),
            Exit::FrozenTooLong(l()),
            Exit::FreezeFailed(l()),
            Exit::Torn(l()),
            Exit::Command(126, None),
            Exit::Command(127, None),
            Exit::Command(9, None),
        ];
        let rows: Vec<&str> = STATUSES.iter().map(|s| s.code).collect();
        for exit in exits {
            let code = exit.code();
            let row = match exit {
                Exit::Signal(..) => "128+N".to_string(),
                Exit::Command(..) => "126, 127, other".to_string(),
                _ => code.to_string(),
            };
            assert!(rows.contains(&row.as_str()), "{exit:?}: {code} has no row");
        }
        // Usage errors are clap's.
        assert!(rows.contains(&"2"));
    }

    #[test]
    fn markdown_becomes_roff() {
        assert_eq!(
            roff("`\"0\"`: no guard (see [the guard](freeze-life.md#x)); a-b"),
            "\\fB\"0\"\\fR: no guard (see the guard, \\fIdocs/freeze\\-life.md\\fR); a\\-b"
        );
        assert_eq!(roff(".x [y"), "\\&.x [y");
    }
}

/// Every `fsfreeze-hook ...` command the code tells someone to type, and
/// every one the README and the manual show, parses: a fix that is a usage
/// error is no fix.
#[cfg(test)]
mod commands_shown {
    use std::path::Path;

    /// The `fsfreeze-hook ...` code spans of `text`, each cut at a shell
    /// operator; none with a placeholder (`{}`, `NAME`, `...`, `$`, `<`).
    fn shown(text: &str) -> Vec<Vec<String>> {
        text.split('`')
            .skip(1)
            .step_by(2)
            .filter_map(|span| span.strip_prefix("fsfreeze-hook "))
            .map(|rest| {
                rest.split(['>', '|', '&', ';', '#'])
                    .next()
                    .unwrap()
                    .split_whitespace()
                    // (A span that goes on in the next line of a doc comment.)
                    .filter(|w| *w != "///")
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .filter(|words| {
                !words.is_empty()
                    && !words.iter().any(|w| {
                        w.contains(['{', '$', '<', '[', '\\'])
                            || w.contains("...")
                            || (w.len() >= 3 && w.chars().all(|c| c.is_ascii_uppercase()))
                    })
            })
            .collect()
    }

    fn files(dir: &Path, ext: &str, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, ext, out);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_command_the_code_and_the_manual_show_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut paths = vec![root.join("README.md")];
        files(&root.join("src"), "rs", &mut paths);
        files(&root.join("docs"), "md", &mut paths);
        let mut checked = 0;
        let mut wrong = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            for words in shown(&text) {
                let argv = std::iter::once("fsfreeze-hook".to_string()).chain(words.clone());
                if let Err(e) = crate::cli::command().try_get_matches_from(argv) {
                    use clap::error::ErrorKind::*;
                    // A command's name alone is the command spoken of, not typed.
                    let named = words.len() == 1 && e.kind() == MissingRequiredArgument;
                    if !matches!(e.kind(), DisplayHelp | DisplayVersion) && !named {
                        wrong.push(format!(
                            "{}: fsfreeze-hook {}: {}",
                            path.display(),
                            words.join(" "),
                            e.kind()
                        ));
                    }
                }
                checked += 1;
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
        assert!(checked >= 40, "{checked} commands");
    }

    #[test]
    fn a_command_that_does_not_parse_is_found() {
        let text = format!(
            "run `fsfreeze-hook thaw {}`, then `fsfreeze-hook NAME`",
            "--all"
        );
        let words = &shown(&text)[..];
        assert_eq!(words, [vec!["thaw".to_string(), "--all".to_string()]]);
        let argv = ["fsfreeze-hook", "thaw", "--all"];
        assert!(crate::cli::command().try_get_matches_from(argv).is_err());
    }
}
