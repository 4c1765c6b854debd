//! What qemu-ga and systemd keep outside our own files, as the guard and
//! `check` read it: qemu-ga's state directory and its frozen mark, its
//! configuration file, the service a process runs in, and what systemd says
//! of a unit.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The file qemu-ga creates in its state directory while it believes the
/// guest frozen, and removes at its thaw. One that dies frozen leaves it,
/// and the next one starts believing the guest frozen: it refuses
/// guest-exec and most other commands until the host sends a thaw, "or
/// filesystems are manually unfrozen and the file is removed", as it says.
pub const FROZEN_MARK: &str = "qga.state.isfrozen";

/// qemu-ga's configuration file when its command line names none (its
/// build's CONFDIR: Debian's, RHEL's and upstream's).
pub const DEFAULT_CONFIG: &str = "/etc/qemu/qemu-ga.conf";

/// qemu-ga's state directory when neither its command line nor its
/// configuration file sets one (its build's LOCALSTATEDIR/run; a link to
/// /run on current systems).
pub const DEFAULT_STATEDIR: &str = "/var/run";

/// The state directory of a qemu-ga started with `args` (without argv[0]):
/// `-t DIR`, `-tDIR`, `--statedir DIR` or `--statedir=DIR`, else `statedir=`
/// in the `[general]` section of its configuration file (`-c FILE`,
/// `--config[=]FILE`, else [`DEFAULT_CONFIG`]; read through `read`), else
/// [`DEFAULT_STATEDIR`]. The command line wins, as in qemu-ga.
pub fn statedir(args: &[OsString], read: impl Fn(&Path) -> Option<String>) -> PathBuf {
    let mut dir = None;
    let mut config = PathBuf::from(DEFAULT_CONFIG);
    let mut args = args.iter();
    while let Some(a) = args.next() {
        let bytes = a.as_bytes();
        let value = |long: &[u8], short: &[u8]| -> Option<Option<PathBuf>> {
            if bytes == long || bytes == short {
                return Some(None);
            }
            let mut eq = long.to_vec();
            eq.push(b'=');
            bytes
                .strip_prefix(eq.as_slice())
                .or_else(|| bytes.strip_prefix(short).filter(|v| !v.is_empty()))
                .map(|v| Some(PathBuf::from(OsStr::from_bytes(v))))
        };
        if let Some(v) = value(b"--statedir", b"-t") {
            dir = v.or_else(|| args.next().map(PathBuf::from));
        } else if let Some(v) = value(b"--config", b"-c")
            && let Some(c) = v.or_else(|| args.next().map(PathBuf::from))
        {
            config = c;
        }
    }
    dir.or_else(|| {
        let text = read(&config)?;
        ini_value(&text, "general", "statedir").map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_STATEDIR))
}

/// The value of `key` in `[section]` of an INI (GKeyFile) text.
pub fn ini_value(text: &str, section: &str, key: &str) -> Option<String> {
    let mut current = String::new();
    let mut value = None;
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        if current == section
            && let Some((k, v)) = line.split_once('=')
            && k.trim() == key
        {
            value = Some(v.trim().to_string());
        }
    }
    value
}

/// The systemd service a process runs in, from its `/proc/PID/cgroup`: the
/// last component of its unified (`0::`) path when it names a `.service`.
pub fn service_of_cgroup(cgroup: &str) -> Option<String> {
    let path = cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let unit = path.rsplit('/').find(|c| !c.is_empty())?;
    (unit.ends_with(".service") && unit.len() > ".service".len()).then(|| unit.to_string())
}

/// Whether systemd runs this system (its runtime directory exists).
pub fn systemd_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// `systemctl show --property=PROPERTY --value UNIT`, answered within 5
/// seconds (systemd is asked over its private socket: no D-Bus needed).
pub fn systemctl_show(unit: &str, property: &str) -> Result<String, String> {
    use std::io::Read;
    let systemctl = ["/usr/bin/systemctl", "/bin/systemctl"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no systemctl")?;
    let mut child = std::process::Command::new(systemctl)
        .arg("show")
        .arg(format!("--property={property}"))
        .args(["--value", "--", unit])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("{systemctl}: {e}"))?;
    let until = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{systemctl} show did not answer within 5s"));
            }
        }
    };
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if !status.success() {
        return Err(format!("{systemctl} show {unit}: {status}"));
    }
    Ok(out.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn the_statedir_comes_from_the_command_line_then_the_config_then_the_default() {
        let none = |_: &Path| None;
        assert_eq!(statedir(&args(&[]), none), Path::new("/var/run"));
        for line in [
            &["-t", "/run/a"][..],
            &["-t/run/a"],
            &["--statedir", "/run/a"],
            &["--statedir=/run/a"],
            &[
                "-m",
                "virtio-serial",
                "-t",
                "/run/a",
                "-F/etc/qemu/fsfreeze-hook",
            ],
        ] {
            assert_eq!(statedir(&args(line), none), Path::new("/run/a"), "{line:?}");
        }
        // The config file: the default one, or the one -c names.
        let conf = |want: &'static str| {
            move |p: &Path| {
                (p == Path::new(want)).then(|| "[general]\nstatedir = /srv/qga\n".to_string())
            }
        };
        assert_eq!(
            statedir(&args(&[]), conf("/etc/qemu/qemu-ga.conf")),
            Path::new("/srv/qga")
        );
        assert_eq!(
            statedir(&args(&["-c", "/etc/qga.conf"]), conf("/etc/qga.conf")),
            Path::new("/srv/qga")
        );
        assert_eq!(
            statedir(
                &args(&["--config=/etc/qga.conf"]),
                conf("/etc/qemu/qemu-ga.conf")
            ),
            Path::new("/var/run")
        );
        // The command line wins over the file.
        assert_eq!(
            statedir(&args(&["-t", "/run/b"]), conf("/etc/qemu/qemu-ga.conf")),
            Path::new("/run/b")
        );
        // Another section's statedir is not qemu-ga's.
        assert_eq!(
            statedir(&args(&[]), |_: &Path| Some("[other]\nstatedir=/x\n".into())),
            Path::new("/var/run")
        );
    }

    #[test]
    fn the_service_is_the_last_component_of_the_unified_cgroup() {
        assert_eq!(
            service_of_cgroup("0::/system.slice/qemu-guest-agent.service\n").as_deref(),
            Some("qemu-guest-agent.service")
        );
        // cgroup v1 beside v2 (hybrid): the unified line counts.
        assert_eq!(
            service_of_cgroup(
                "12:pids:/system.slice/x.service\n1:name=systemd:/system.slice/x.service\n0::/system.slice/qemu-ga@ttyS1.service/\n"
            )
            .as_deref(),
            Some("qemu-ga@ttyS1.service")
        );
        for none in [
            "0::/user.slice/user-0.slice/session-3.scope\n",
            "0::/\n",
            "0::/.service\n",
            "1:name=systemd:/system.slice/qemu-guest-agent.service\n",
            "",
        ] {
            assert_eq!(service_of_cgroup(none), None, "{none:?}");
        }
    }
}
