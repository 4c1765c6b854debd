//! The config file: TOML, read with spans so that every error names the
//! file, line and key.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{
    ConfigError, LogFormat, LogTarget, MAX_KILL_GRACE, MAX_OUTPUT_LIMIT, MAX_TIME_LIMIT, OnError,
    ThawOrder, TimeLimit,
};
use crate::config::units::{
    format_size, format_time_limit, out_of_range, parse_duration, parse_size,
};

/// The config file's values, each `None` when absent.
#[derive(Debug, Default)]
pub(super) struct FileConfig {
    pub hooks_dir: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub timeout: Option<TimeLimit>,
    pub phase_timeout: Option<TimeLimit>,
    pub max_frozen: Option<TimeLimit>,
    pub kill_grace: Option<Duration>,
    pub on_error: Option<OnError>,
    pub thaw_order: Option<ThawOrder>,
    pub output_limit: Option<Option<u64>>,
    pub log_format: Option<LogFormat>,
    pub log_target: Option<LogTarget>,
    pub hook_timeouts: BTreeMap<String, TimeLimit>,
    pub parallel: Option<bool>,
    /// `[hooks."NAME"] parallel = false`: hooks kept out of a parallel group.
    pub hook_solo: BTreeSet<String>,
    /// `[hooks."NAME"] on_error = ...`: what that hook's failure does.
    pub hook_on_error: BTreeMap<String, OnError>,
    pub presync: Option<bool>,
    pub presync_timeout: Option<TimeLimit>,
    pub metrics_file: Option<PathBuf>,
}

/// Every key of the file (the man page test checks each is documented).
pub const KEY_NAMES: [&str; 17] = [
    "hooks_dir",
    "log_file",
    "state_dir",
    "timeout",
    "phase_timeout",
    "max_frozen",
    "kill_grace",
    "on_error",
    "thaw_order",
    "output_limit",
    "parallel",
    "presync",
    "presync_timeout",
    "metrics_file",
    "log_format",
    "log_target",
    "hooks",
];

/// Every key of a `[hooks."NAME"]` table.
pub const HOOK_KEY_NAMES: [&str; 3] = ["timeout", "parallel", "on_error"];

/// An error located in the text but not yet in a file.
#[derive(Debug)]
pub(super) struct Located {
    span: Option<Range<usize>>,
    key: Option<String>,
    message: String,
}

impl Located {
    fn at(span: Range<usize>, key: &str, message: impl Into<String>) -> Located {
        Located {
            span: Some(span),
            key: Some(key.to_string()),
            message: message.into(),
        }
    }

    pub(super) fn in_file(self, path: &Path, text: &str) -> ConfigError {
        ConfigError {
            file: path.to_path_buf(),
            line: self.span.map(|s| line_of(text.as_bytes(), s.start)),
            key: self.key,
            message: self.message,
        }
    }
}

type Entry<'a> = (
    &'a Spanned<std::borrow::Cow<'a, str>>,
    &'a Spanned<DeValue<'a>>,
);

impl FileConfig {
    pub(super) fn parse(text: &str) -> Result<FileConfig, Located> {
        let (cfg, mut problems) = FileConfig::parse_all(text);
        match problems.is_empty() {
            true => Ok(cfg),
            false => Err(problems.remove(0)),
        }
    }

    /// The config, and every problem of it in file order (`check` lists them
    /// all; a run stops at the first).
    pub(super) fn parse_all(text: &str) -> (FileConfig, Vec<Located>) {
        let doc = match DeTable::parse(text) {
            Ok(doc) => doc,
            Err(e) => {
                let syntax = Located {
                    span: e.span(),
                    key: None,
                    message: format!("not valid TOML: {}", e.message()),
                };
                return (FileConfig::default(), vec![syntax]);
            }
        };
        let mut cfg = FileConfig::default();
        let mut problems = Vec::new();
        for (key, value) in doc.get_ref().iter() {
            if let Err(e) = cfg.take((key, value)) {
                problems.push(e);
            }
        }
        (cfg, problems)
    }

    /// One key of the file into the config.
    fn take(&mut self, (key, value): Entry<'_>) -> Result<(), Located> {
        let cfg = self;
        let name = key.get_ref().as_ref();
        let span = key.span();
        match name {
            "hooks_dir" => cfg.hooks_dir = Some(path_value((key, value))?),
            "log_file" => cfg.log_file = Some(path_value((key, value))?),
            "state_dir" => cfg.state_dir = Some(path_value((key, value))?),
            "timeout" => cfg.timeout = Some(limit_value((key, value), MAX_TIME_LIMIT)?),
            "phase_timeout" => cfg.phase_timeout = Some(limit_value((key, value), MAX_TIME_LIMIT)?),
            "max_frozen" => cfg.max_frozen = Some(limit_value((key, value), MAX_TIME_LIMIT)?),
            "kill_grace" => {
                let grace = limit_value((key, value), MAX_KILL_GRACE)?;
                cfg.kill_grace = Some(grace.unwrap_or(Duration::ZERO));
            }
            "on_error" => {
                cfg.on_error = Some(match word_value((key, value), &["abort", "continue"])? {
                    "abort" => OnError::Abort,
                    _ => OnError::Continue,
                })
            }
            "thaw_order" => {
                cfg.thaw_order = Some(match word_value((key, value), &["reverse", "forward"])? {
                    "reverse" => ThawOrder::Reverse,
                    _ => ThawOrder::Forward,
                })
            }
            "output_limit" => cfg.output_limit = Some(size_value((key, value))?),
            "log_format" => {
                cfg.log_format = Some(match word_value((key, value), &["text", "json"])? {
                    "text" => LogFormat::Text,
                    _ => LogFormat::Json,
                })
            }
            "log_target" => {
                cfg.log_target = Some(
                    match word_value((key, value), &["file", "syslog", "journal"])? {
                        "file" => LogTarget::File,
                        "syslog" => LogTarget::Syslog,
                        _ => LogTarget::Journald,
                    },
                )
            }
            "parallel" => cfg.parallel = Some(bool_value((key, value))?),
            "metrics_file" => cfg.metrics_file = Some(path_value((key, value))?),
            "presync" => cfg.presync = Some(bool_value((key, value))?),
            "presync_timeout" => {
                cfg.presync_timeout = Some(limit_value((key, value), MAX_TIME_LIMIT)?)
            }
            "hooks" => {
                let tables = hooks_table((key, value))?;
                cfg.hook_timeouts = tables.timeouts;
                cfg.hook_solo = tables.solo;
                cfg.hook_on_error = tables.on_error;
            }
            other => {
                return Err(Located::at(
                    span,
                    other,
                    format!(
                        "unknown key (known: {}, [hooks.\"NAME\"])",
                        KEY_NAMES[..KEY_NAMES.len() - 1].join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn string_value<'a>((key, value): Entry<'a>) -> Result<&'a str, Located> {
    match value.get_ref() {
        DeValue::String(s) => Ok(s.as_ref()),
        _ => Err(Located::at(
            value.span(),
            key.get_ref(),
            "expected a string in quotes",
        )),
    }
}

fn path_value((key, value): Entry<'_>) -> Result<PathBuf, Located> {
    let s = string_value((key, value))?;
    if s.is_empty() {
        return Err(Located::at(
            value.span(),
            key.get_ref(),
            "must not be empty",
        ));
    }
    Ok(PathBuf::from(OsString::from(s)))
}

fn limit_value((key, value): Entry<'_>, max: Duration) -> Result<TimeLimit, Located> {
    let bad = |msg: String| Located::at(value.span(), key.get_ref(), msg);
    let text = match value.get_ref() {
        DeValue::String(s) => s.as_ref(),
        DeValue::Integer(_) | DeValue::Float(_) => {
            return Err(bad(
                "write durations as strings with a unit, e.g. \"30s\", \"500ms\", \"5m\" (\"0\": no limit)"
                    .into(),
            ));
        }
        _ => return Err(bad("expected a duration string such as \"30s\"".into())),
    };
    let d = parse_duration(text).map_err(bad)?;
    if d > max {
        return Err(bad(out_of_range(text, &format_time_limit(Some(max)))));
    }
    Ok((!d.is_zero()).then_some(d))
}

fn size_value((key, value): Entry<'_>) -> Result<Option<u64>, Located> {
    let bad = |msg: String| Located::at(value.span(), key.get_ref(), msg);
    let n = match value.get_ref() {
        DeValue::String(s) => parse_size(s).map_err(bad)?,
        DeValue::Integer(i) => u64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map_err(|_| {
                bad(format!(
                    "invalid size {i} (a count of bytes, or e.g. \"1MiB\")"
                ))
            })?,
        _ => return Err(bad("expected a size such as \"1MiB\"".into())),
    };
    if n > MAX_OUTPUT_LIMIT {
        let written = match value.get_ref() {
            DeValue::Integer(i) => i.as_str().to_string(),
            _ => n.to_string(),
        };
        return Err(bad(out_of_range(&written, &format_size(MAX_OUTPUT_LIMIT))));
    }
    Ok((n != 0).then_some(n))
}

fn word_value<'a>((key, value): Entry<'a>, allowed: &[&str]) -> Result<&'a str, Located> {
    let s = string_value((key, value))?;
    if allowed.contains(&s) {
        Ok(s)
    } else {
        Err(Located::at(
            value.span(),
            key.get_ref(),
            format!("\"{s}\" is not one of: {}", allowed.join(", ")),
        ))
    }
}

fn bool_value((key, value): Entry<'_>) -> Result<bool, Located> {
    match value.get_ref() {
        DeValue::Boolean(b) => Ok(*b),
        _ => Err(Located::at(
            value.span(),
            key.get_ref(),
            "expected true or false (no quotes)",
        )),
    }
}

/// What `[hooks."NAME"]` tables say.
struct HookTables {
    timeouts: BTreeMap<String, TimeLimit>,
    /// The hooks with `parallel = false`.
    solo: BTreeSet<String>,
    on_error: BTreeMap<String, OnError>,
}

fn hooks_table((key, value): Entry<'_>) -> Result<HookTables, Located> {
    let DeValue::Table(table) = value.get_ref() else {
        return Err(Located::at(
            value.span(),
            key.get_ref(),
            "expected tables such as [hooks.\"20-mysql\"]",
        ));
    };
    let mut out = BTreeMap::new();
    let mut solo = BTreeSet::new();
    let mut on_error = BTreeMap::new();
    for (name, settings) in table.iter() {
        let hook = name.get_ref().as_ref();
        let full = |k: &str| format!("hooks.\"{hook}\".{k}");
        let DeValue::Table(settings_table) = settings.get_ref() else {
            return Err(Located::at(
                settings.span(),
                &format!("hooks.\"{hook}\""),
                "expected a table, e.g. [hooks.\"20-mysql\"] timeout = \"5m\"",
            ));
        };
        for (k, v) in settings_table.iter() {
            match k.get_ref().as_ref() {
                "timeout" => {
                    let limit = limit_value((k, v), MAX_TIME_LIMIT).map_err(|mut e| {
                        e.key = Some(full("timeout"));
                        e
                    })?;
                    out.insert(hook.to_string(), limit);
                }
                "parallel" => {
                    let parallel = bool_value((k, v)).map_err(|mut e| {
                        e.key = Some(full("parallel"));
                        e
                    })?;
                    if !parallel {
                        solo.insert(hook.to_string());
                    }
                }
                "on_error" => {
                    let word = word_value((k, v), &["abort", "continue"]).map_err(|mut e| {
                        e.key = Some(full("on_error"));
                        e
                    })?;
                    on_error.insert(
                        hook.to_string(),
                        if word == "continue" {
                            OnError::Continue
                        } else {
                            OnError::Abort
                        },
                    );
                }
                other => {
                    return Err(Located::at(
                        k.span(),
                        &full(other),
                        format!(
                            "unknown key (known in a hook table: {})",
                            HOOK_KEY_NAMES.join(", ")
                        ),
                    ));
                }
            }
        }
    }
    Ok(HookTables {
        timeouts: out,
        solo,
        on_error,
    })
}

pub(super) fn line_of(text: &[u8], offset: usize) -> usize {
    text[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(text).map_err(|e| e.in_file(Path::new("/x.conf"), text))
    }

    #[test]
    fn full_file_parses() {
        let cfg = parse(
            r#"
hooks_dir = "/srv/hooks"
log_file = "/tmp/l.log"
state_dir = "/tmp/st"
timeout = "30s"
phase_timeout = "0"
kill_grace = "500ms"
on_error = "continue"
thaw_order = "forward"
output_limit = "64KiB"

[hooks."20-mysql"]
timeout = "5m"

[hooks."40-cache"]
on_error = "continue"

[hooks."50-strict"]
on_error = "abort"
"#,
        )
        .unwrap();
        assert_eq!(cfg.hook_on_error["40-cache"], OnError::Continue);
        assert_eq!(cfg.hook_on_error["50-strict"], OnError::Abort);
        assert!(!cfg.hook_on_error.contains_key("20-mysql"));
        assert_eq!(cfg.hooks_dir.unwrap(), PathBuf::from("/srv/hooks"));
        assert_eq!(cfg.timeout, Some(Some(Duration::from_secs(30))));
        assert_eq!(cfg.phase_timeout, Some(None));
        assert_eq!(cfg.kill_grace, Some(Duration::from_millis(500)));
        assert_eq!(cfg.on_error, Some(OnError::Continue));
        assert_eq!(cfg.thaw_order, Some(ThawOrder::Forward));
        assert_eq!(cfg.output_limit, Some(Some(64 << 10)));
        assert_eq!(
            cfg.hook_timeouts["20-mysql"],
            Some(Duration::from_secs(300))
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let err = parse("timeout = \"1s\"\n\ntimeuot = \"2s\"\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("config /x.conf:3: key `timeuot`: unknown key"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        // The list of known keys is complete.
        for key in [
            "hooks_dir",
            "phase_timeout",
            "thaw_order",
            "output_limit",
            "hooks.",
        ] {
            assert!(text.contains(key), "{text}");
        }
    }

    #[test]
    fn bad_values_name_their_key_and_line() {
        let cases = [
            ("timeout = \"5x\"", 1, "timeout"),
            ("\nkill_grace = 5", 2, "kill_grace"),
            ("on_error = \"ignore\"", 1, "on_error"),
            ("thaw_order = \"sideways\"", 1, "thaw_order"),
            ("timeout = \"48h\"", 1, "timeout"),
            ("log_file = \"\"", 1, "log_file"),
            ("output_limit = \"2GiB\"", 1, "output_limit"),
            ("output_limit = -1", 1, "output_limit"),
            ("[hooks.\"a\"]\ntimeout = \"x\"", 2, "hooks.\"a\".timeout"),
            ("[hooks.\"a\"]\ntimout = \"1s\"", 2, "hooks.\"a\".timout"),
            (
                "[hooks.\"a\"]\non_error = \"skip\"",
                2,
                "hooks.\"a\".on_error",
            ),
        ];
        for (text, line, key) in cases {
            let err = parse(text).unwrap_err();
            assert_eq!(err.line, Some(line), "{text}: {err}");
            assert_eq!(err.key.as_deref(), Some(key), "{text}: {err}");
        }
    }

    #[test]
    fn syntax_error_and_duplicate_key_have_a_line() {
        let err = parse("timeout = \"1s\"\ntimeout = \"2s\"\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        let err = parse("a = = 1").unwrap_err();
        assert_eq!(err.line, Some(1), "{err}");
        assert!(err.to_string().contains("not valid TOML"));
    }

    /// Lines made of the config's own vocabulary, mixed with noise, so that
    /// the generator reaches the value checks and not only the TOML parser.
    fn config_texts() -> impl Strategy<Value = String> {
        let mut keys: Vec<&'static str> = KEY_NAMES.to_vec();
        keys.extend(["[hooks.\"a\"]", "[hooks]", "bogus"]);
        let key = proptest::sample::select(keys);
        let value = prop_oneof![
            proptest::sample::select(vec![
                "\"30s\"",
                "\"0\"",
                "\"abort\"",
                "\"forward\"",
                "\"1MiB\"",
                "\"\"",
                "5",
                "-1",
                "1.5",
                "true",
                "[]",
                "{}",
                "\"99999999999999999999h\"",
                "\"1e9s\"",
                "{ timeout = \"1s\" }",
                "\"/x\"",
                "0x10",
            ])
            .prop_map(String::from),
            any::<String>(),
        ];
        let line = prop_oneof![
            (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
            any::<String>(),
        ];
        proptest::collection::vec(line, 0..8).prop_map(|lines| lines.join("\n"))
    }

    proptest! {
        #[test]
        fn parser_never_panics_and_errors_are_one_located_line(text in config_texts()) {
            if let Err(e) = parse(&text) {
                let shown = e.to_string();
                prop_assert!(!shown.contains('\n'), "{}", shown);
                prop_assert!(shown.starts_with("config /x.conf"), "{}", shown);
            }
        }

        #[test]
        fn value_parsers_never_panic(text in any::<String>()) {
            let _ = crate::config::units::parse_duration(&text);
            let _ = crate::config::units::parse_size(&text);
        }
    }
}
