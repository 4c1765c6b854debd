//! The checked-in man page renders and passes mandoc's lint. (That it is
//! current is checked where it is generated: src/man.rs.)

use std::path::Path;
use std::process::Command;

fn page() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("man/fsfreeze-hook.8")
}

#[test]
fn man_page_passes_mandoc_lint_without_warnings() {
    let out = Command::new("mandoc")
        .args(["-T", "lint", "-W", "warning"])
        .arg(page())
        .output()
        .expect("mandoc (the test command installs it)");
    let report =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && report.is_empty(), "{report}");
}

#[test]
fn man_page_renders_with_man() {
    let out = Command::new("man")
        .args(["-l", "-P", "cat"])
        .arg(page())
        .env("MANWIDTH", "80")
        .output()
        .expect("man (the test command installs man-db)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for section in [
        "NAME",
        "SYNOPSIS",
        "DESCRIPTION",
        "OPTIONS",
        "COMMANDS",
        "FILES",
        "ENVIRONMENT",
        "CONFIGURATION",
        "EXIT STATUS",
        "EXAMPLES",
        "SEE ALSO",
    ] {
        assert!(text.lines().any(|l| l == section), "no {section} section");
    }
    assert!(text.contains("qemu-ga(8)") && text.contains("fsfreeze(8)"));
}
