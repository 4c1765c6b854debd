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
