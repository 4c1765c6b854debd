//! `metrics_file` as a monitoring system sees it: Debian's
//! prometheus-node-exporter, on a loopback port of its own with its textfile
//! collector pointed at the test's dir, scraped over HTTP after freeze/thaw
//! cycles (a success, a rolled-back failure).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::{Env, eventually};

struct Exporter {
    child: Child,
    port: u16,
}

impl Exporter {
    fn start(textfile_dir: &std::path::Path) -> Exporter {
        // A free port: bound, read, let go (the exporter binds it next).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(["--collector.disable-defaults", "--collector.textfile"])
            .arg(format!(
                "--collector.textfile.directory={}",
                textfile_dir.display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-node-exporter (the test command installs it)");
        let exporter = Exporter { child, port };
        assert!(
            eventually(Duration::from_secs(15), || exporter.try_scrape().is_some()),
            "node_exporter did not answer on port {port}"
        );
        exporter
    }

    fn try_scrape(&self) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        let (head, body) = reply.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200")
            .then(|| body.to_string())
            .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
    }

    fn scrape(&self) -> String {
        self.try_scrape().expect("a scrape")
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the sample `series` (name and labels as written).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// An env whose metrics_file is in a dir of its own, node_exporter's
/// textfile collector's.
fn with_textfile_dir() -> (Env, std::path::PathBuf) {
    let env = Env::new();
    let textfile = env.path().join("textfile");
    std::fs::create_dir(&textfile).unwrap();
    env.set_config(&format!(
        "metrics_file = \"{}/fsfreeze_hook.prom\"\n",
        textfile.display()
    ));
    (env, textfile)
}

/// A scrape that says node_exporter read our file without an error.
fn scrape_cleanly(exporter: &Exporter) -> String {
    let m = exporter.scrape();
    assert_eq!(
        sample(&m, "node_textfile_scrape_error"),
        Some(0.0),
        "the collector could not read our file:\n{m}"
    );
    m
}

#[test]
fn node_exporter_serves_our_metrics_after_a_success_and_a_rolled_back_failure() {
    let (env, textfile) = with_textfile_dir();
    env.tracing_hook("10-app", "");
    let exporter = Exporter::start(&textfile);
    // Nothing written yet: no series of ours, and no error either.
    let before = exporter.scrape();
    assert_eq!(sample(&before, "fsfreeze_hook_info"), None);

    assert_eq!(env.run(&["freeze"]).code, Some(0));
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    env.hook("20-db \"main\"", "[ \"$1\" = freeze ] && exit 4\nexit 0");
    assert_eq!(env.run(&["freeze"]).code, Some(1));

    let m = scrape_cleanly(&exporter);
    for (series, value) in [
        ("fsfreeze_hook_runs_total{phase=\"freeze\"}", 2.0),
        ("fsfreeze_hook_failures_total{phase=\"freeze\"}", 1.0),
        ("fsfreeze_hook_runs_total{phase=\"thaw\"}", 1.0),
        ("fsfreeze_hook_failures_total{phase=\"thaw\"}", 0.0),
        ("fsfreeze_hook_last_success{phase=\"freeze\"}", 0.0),
        ("fsfreeze_hook_last_success{phase=\"thaw\"}", 1.0),
        ("fsfreeze_hook_rollbacks_total", 1.0),
        ("fsfreeze_hook_hook_timeouts_total", 0.0),
        ("fsfreeze_hook_guard_thaws_total", 0.0),
        (
            "fsfreeze_hook_hook_last_exit_status{hook=\"20-db \\\"main\\\"\",phase=\"freeze\"}",
            4.0,
        ),
        (
            "fsfreeze_hook_hook_last_exit_status{hook=\"10-app\",phase=\"rollback\"}",
            0.0,
        ),
    ] {
        assert_eq!(sample(&m, series), Some(value), "{series} in\n{m}");
    }
    let info = format!(
        "fsfreeze_hook_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(sample(&m, &info), Some(1.0), "{m}");
    let ok = sample(
        &m,
        "fsfreeze_hook_last_success_timestamp_seconds{phase=\"freeze\"}",
    )
    .unwrap();
    let run = sample(
        &m,
        "fsfreeze_hook_last_run_timestamp_seconds{phase=\"freeze\"}",
    )
    .unwrap();
    assert!(ok > 1.7e9 && run >= ok, "{ok} {run}");
    let window = sample(&m, "fsfreeze_hook_last_frozen_window_seconds").unwrap();
    assert!((0.0..60.0).contains(&window), "{window}");
    // Only the file: the temporary one was renamed.
    let names: Vec<_> = std::fs::read_dir(&textfile)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["fsfreeze_hook.prom"]);
    // The error check above can fail: a malformed file beside ours.
    std::fs::write(textfile.join("broken.prom"), "fsfreeze_hook_x{ 1\n").unwrap();
    assert_eq!(
        sample(&exporter.scrape(), "node_textfile_scrape_error"),
        Some(1.0)
    );
}

#[test]
fn a_rehearsal_writes_no_metrics() {
    let env = Env::new();
    let prom = env.path().join("fsfreeze_hook.prom");
    env.set_config(&format!("metrics_file = \"{}\"\n", prom.display()));
    env.tracing_hook("10-app", "");
    assert_eq!(env.run(&["rehearse"]).code, Some(0));
    assert!(!prom.exists(), "a rehearsal must not look like a backup");
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    assert!(prom.exists());
}

#[test]
fn hooks_whose_names_differ_only_in_bytes_that_are_not_utf8_are_two_series() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let (env, textfile) = with_textfile_dir();
    env.hook(OsStr::from_bytes(b"10-db\xff"), "exit 0");
    env.hook(OsStr::from_bytes(b"10-db\xfe"), "exit 0");
    let exporter = Exporter::start(&textfile);
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    let m = scrape_cleanly(&exporter);
    for series in [
        r#"fsfreeze_hook_hook_last_exit_status{hook="10-db\\xff",phase="freeze"}"#,
        r#"fsfreeze_hook_hook_last_exit_status{hook="10-db\\xfe",phase="freeze"}"#,
    ] {
        assert_eq!(sample(&m, series), Some(0.0), "{series} in\n{m}");
    }
}

/// promtool: $FSFREEZE_HOOK_TEST_PROMTOOL (Debian's, which the test command
/// unpacks from the prometheus package without installing it), else PATH.
fn promtool() -> std::path::PathBuf {
    std::env::var_os("FSFREEZE_HOOK_TEST_PROMTOOL")
        .filter(|p| !p.is_empty())
        .map(Into::into)
        .unwrap_or_else(|| "promtool".into())
}

fn run_promtool(args: &[&std::ffi::OsStr]) -> String {
    crate::package::succeeds(Command::new(promtool()).args(args))
}

/// The shipped rules without their annotations (text for people, checked
/// by `promtool check rules`): what the unit tests compare is when each
/// alert fires and with which labels.
fn rules_without_annotations(rules: &str) -> String {
    let mut out = String::new();
    let mut skip_below: Option<usize> = None;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(level) = skip_below {
            if line.trim().is_empty() || indent > level {
                continue;
            }
            skip_below = None;
        }
        if line.trim() == "annotations:" {
            skip_below = Some(indent);
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// One scrape's samples of ours and the collector's file times, with
/// every time in them (`*_timestamp_seconds`, `node_textfile_mtime_seconds`)
/// moved from when it really was to the test's timeline: `at` seconds is
/// when the scrape was taken (`now`, in Unix seconds).
fn rebased(scrape: &str, now: f64, at: f64) -> Vec<(String, f64)> {
    scrape
        .lines()
        .filter(|l| l.starts_with("fsfreeze_hook_") || l.starts_with("node_textfile_mtime_seconds"))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let name = series.split('{').next().unwrap_or(series);
            let is_time =
                name.ends_with("_timestamp_seconds") || name == "node_textfile_mtime_seconds";
            Some((
                series.to_string(),
                if is_time { at - (now - value) } else { value },
            ))
        })
        .collect()
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[test]
#[ignore = "needs root"]
fn the_shipped_alert_rules_fire_on_what_real_runs_wrote() {
    crate::common::require_root("alert_rules");
    // The guard's thaw below is of every filesystem of the machine.
    let _exclusive = crate::common::freezing_test("alert_rules");
    let rules =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("monitoring/fsfreeze-hook.rules.yml");
    let checked = run_promtool(&["check".as_ref(), "rules".as_ref(), rules.as_os_str()]);
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");

    // Real runs, each scraped by node_exporter: a cycle, a failed freeze,
    // then a freeze whose thaw never comes (the guard thaws at max_frozen).
    let (env, textfile) = with_textfile_dir();
    env.set_config(&format!(
        "metrics_file = \"{}/fsfreeze_hook.prom\"\nmax_frozen = \"1s\"\n",
        textfile.display()
    ));
    let fail = env.path().join("fail");
    env.tracing_hook(
        "10-db",
        &format!(
            "[ \"$1\" = freeze ] && [ -e '{}' ] && exit 1; :",
            fail.display()
        ),
    );
    let exporter = Exporter::start(&textfile);
    let mut scrapes = Vec::new();
    // Ten minutes apart on the test's timeline, from minute 10.
    let mut take = |scrape: String| {
        let at = 600.0 * (scrapes.len() + 1) as f64;
        scrapes.push(rebased(&scrape, unix_now(), at));
    };
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    assert_eq!(env.run(&["thaw"]).code, Some(0));
    take(scrape_cleanly(&exporter));
    std::fs::write(&fail, "").unwrap();
    assert_ne!(env.run(&["freeze"]).code, Some(0));
    std::fs::remove_file(&fail).unwrap();
    take(scrape_cleanly(&exporter));
    assert_eq!(env.run(&["freeze"]).code, Some(0));
    assert!(
        eventually(Duration::from_secs(15), || {
            sample(&exporter.scrape(), "fsfreeze_hook_guard_thaws_total") == Some(1.0)
        }),
        "the guard did not thaw: {}",
        env.log_text()
    );
    take(scrape_cleanly(&exporter));
    // The file's label as node_exporter gives it.
    let file = scrapes[0]
        .iter()
        .find_map(|(s, _)| {
            s.strip_prefix("node_textfile_mtime_seconds{file=\"")?
                .strip_suffix("\"}")
                .map(String::from)
        })
        .expect("node_textfile_mtime_seconds of our file");

    // Every series, as promtool's input: nothing before minute 10, the
    // three scrapes, then the last one for 30 hours (no run after it).
    let mut names: Vec<&String> = scrapes.iter().flatten().map(|(s, _)| s).collect();
    names.sort();
    names.dedup();
    let mut series = String::new();
    for name in names {
        let values: Vec<String> = scrapes
            .iter()
            .map(|s| {
                s.iter()
                    .find(|(n, _)| n == name)
                    .map_or("_".to_string(), |(_, v)| v.to_string())
            })
            .collect();
        let last = values.last().unwrap();
        series.push_str(&format!(
            "      - series: '{name}'\n        values: '_ {} {last}+0x180'\n",
            values.join(" ")
        ));
    }
    for wanted in [
        "fsfreeze_hook_failures_total{phase=\"freeze\"}",
        "fsfreeze_hook_guard_thaws_total",
        "fsfreeze_hook_last_success_timestamp_seconds{phase=\"freeze\"}",
        "fsfreeze_hook_last_duration_seconds{phase=\"freeze\"}",
        "fsfreeze_hook_last_duration_seconds{phase=\"thaw\"}",
    ] {
        assert!(
            series.contains(&format!("'{wanted}'")),
            "{wanted}:\n{series}"
        );
    }
    let alert = |at: &str, name: &str, fired: &[&str]| -> String {
        let mut t =
            format!("      - eval_time: {at}\n        alertname: {name}\n        exp_alerts:");
        if fired.is_empty() {
            t.push_str(" []\n");
        } else {
            t.push('\n');
            for labels in fired {
                t.push_str(&format!("          - exp_labels:\n{labels}"));
            }
        }
        t
    };
    let critical = "              severity: critical\n";
    let warning = "              severity: warning\n";
    let on = |extra: &str, sev: &str| format!("{sev}{extra}");
    let freeze = on("              phase: freeze\n", critical);
    let stale_freeze = on("              phase: freeze\n", warning);
    let stale_file = on(&format!("              file: '{file}'\n"), warning);
    let mut checks = String::new();
    for (at, name, fired) in [
        // After the cycle: nothing.
        ("15m", "FsfreezeHookPhaseFailed", vec![]),
        ("15m", "FsfreezeHookGuardThawed", vec![]),
        // After the failed freeze.
        ("25m", "FsfreezeHookPhaseFailed", vec![freeze.as_str()]),
        ("25m", "FsfreezeHookGuardThawed", vec![]),
        // After the guard's thaw.
        ("35m", "FsfreezeHookGuardThawed", vec![critical]),
        ("35m", "FsfreezeHookPhaseFailed", vec![freeze.as_str()]),
        ("35m", "FsfreezeHookFreezeSlow", vec![]),
        ("35m", "FsfreezeHookThawSlow", vec![]),
        // An hour later, quiet again.
        ("3h", "FsfreezeHookPhaseFailed", vec![]),
        ("3h", "FsfreezeHookGuardThawed", vec![]),
        // The last success was at minute 30: within 26 h, then not.
        ("26h", "FsfreezeHookNoRecentFreeze", vec![]),
        ("26h", "FsfreezeHookMetricsStale", vec![]),
        (
            "27h",
            "FsfreezeHookNoRecentFreeze",
            vec![stale_freeze.as_str()],
        ),
        ("27h", "FsfreezeHookMetricsStale", vec![stale_file.as_str()]),
    ] {
        checks.push_str(&alert(at, name, &fired));
    }
    // The slow phases, on the same series with durations no test waits for.
    let slow = format!(
        "  - interval: 1m\n    input_series:\n      - series: 'fsfreeze_hook_last_duration_seconds{{phase=\"freeze\"}}'\n        values: '1000 1900'\n      - series: 'fsfreeze_hook_last_duration_seconds{{phase=\"thaw\"}}'\n        values: '30 120'\n    alert_rule_test:\n{}{}{}{}",
        alert("0m", "FsfreezeHookFreezeSlow", &[]),
        alert("0m", "FsfreezeHookThawSlow", &[]),
        alert("1m", "FsfreezeHookFreezeSlow", &[&stale_freeze]),
        alert(
            "1m",
            "FsfreezeHookThawSlow",
            &[&on("              phase: thaw\n", warning)]
        ),
    );
    let dir = env.path();
    std::fs::write(
        dir.join("rules.yml"),
        rules_without_annotations(&std::fs::read_to_string(&rules).unwrap()),
    )
    .unwrap();
    let test = format!(
        "rule_files:\n  - rules.yml\nevaluation_interval: 1m\ntests:\n  - interval: 10m\n    input_series:\n{series}    alert_rule_test:\n{checks}{slow}"
    );
    std::fs::write(dir.join("rules.test.yml"), &test).unwrap();
    let tested = run_promtool(&[
        "test".as_ref(),
        "rules".as_ref(),
        dir.join("rules.test.yml").as_os_str(),
    ]);
    println!("promtool test rules:\n{tested}");
    assert!(tested.contains("SUCCESS"), "{tested}\n{test}");
}
