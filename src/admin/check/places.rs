//! `check`'s findings of the places a run writes: the log (where its lines
//! really go), the state dir and the metrics file's directory.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Finding, problem};

/// The metrics file is written anew at a temporary name beside it and
/// renamed: its directory must exist and be writable (nothing creates it).
pub(super) fn metrics_dir(file: &Path, out: &mut Vec<Finding>) {
    let dir = file.parent().unwrap_or(Path::new("/"));
    let usable = dir.is_dir() && nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_ok();
    out.push(if usable {
        Finding::Ok(format!("metrics_file's directory {} is writable", dir.display()))
    } else {
        problem(
            format!(
                "metrics_file's directory {} {}: no metrics are written",
                dir.display(),
                if dir.is_dir() { "is not writable" } else { "does not exist" }
            ),
            format!(
                "create {} (node_exporter's textfile directory, say), writable by root, or change metrics_file",
                dir.display()
            ),
        )
    });
}

/// Where the runner's lines really go: the log file, or syslog, and why.
pub(super) fn log_place(log: &Path, out: &mut Vec<Finding>) {
    use std::os::unix::fs::MetadataExt;
    let dir = log.parent().unwrap_or(Path::new("/"));
    let syslog = |why: String, fix: String| {
        problem(
            format!(
                "log {} is not written: {why}: the runner's lines go to syslog",
                log.display()
            ),
            fix,
        )
    };
    if !dir.is_dir() {
        out.push(syslog(
            format!("its directory {} does not exist", dir.display()),
            format!(
                "create {} (root's, mode 0755), or set log_file in the config",
                dir.display()
            ),
        ));
    } else if let Err(u) = crate::phase::engine::trust::Policy::current().check_log_dir(dir) {
        out.push(syslog(
            format!("its directory is not safe: {u}"),
            format!(
                "take write access to {} from other users (`chmod go-w`), or set log_file in the config",
                dir.display()
            ),
        ));
    } else if let Ok(m) = fs::symlink_metadata(log)
        && !(m.is_file() && m.uid() == 0 && m.nlink() == 1)
    {
        out.push(syslog(
            "it is not a regular file of root's with one name".into(),
            format!("remove {}: the next run makes it anew", log.display()),
        ));
    } else {
        writable(log, "log", out);
    }
}

/// The log file (or its dir, before its first run) and the state dir (or
/// the dir it will be made in) must be writable.
pub(super) fn writable(path: &Path, what: &str, out: &mut Vec<Finding>) {
    let mut probe: PathBuf = path.to_path_buf();
    while !probe.exists() {
        match probe.parent() {
            Some(p) => probe = p.to_path_buf(),
            None => break,
        }
    }
    let ok = nix::unistd::access(&probe, nix::unistd::AccessFlags::W_OK).is_ok();
    if ok {
        out.push(Finding::Ok(format!(
            "{what} {} is writable",
            path.display()
        )));
    } else {
        out.push(problem(
            format!(
                "{what} {} is not writable (checked {})",
                path.display(),
                probe.display()
            ),
            format!(
                "make {} writable by root, or set another path in the config",
                probe.display()
            ),
        ));
    }
}
