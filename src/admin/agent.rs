//! How qemu-ga is set up on a system (live, or an image mounted at `root`):
//! where it is installed, and which hook it will run. The hook comes from its
//! command line (`-F[PATH]`, `--fsfreeze-hook[=PATH]`, in the systemd unit,
//! its drop-ins, and the environment files they read, such as RHEL's
//! /etc/sysconfig/qemu-ga) or else from `fsfreeze-hook=` in qemu-ga.conf.
//! Without either, qemu-ga runs no hook at all: Debian's unit starts it bare.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

pub use crate::sys::agent::ini_value;
use crate::sys::paths::in_root;

/// Where qemu-ga looks for its hook when `-F` comes without a path.
pub const DEFAULT_HOOK: &str = "/etc/qemu/fsfreeze-hook";
pub const UNIT: &str = "qemu-guest-agent.service";
/// What makes a running qemu-ga read its set-up again.
pub const RESTART: &str = "systemctl restart qemu-guest-agent";
const BINARIES: [&str; 2] = ["/usr/sbin/qemu-ga", "/usr/bin/qemu-ga"];
const UNIT_DIRS: [&str; 4] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];
pub const CONFIGS: [&str; 2] = ["/etc/qemu/qemu-ga.conf", "/etc/qemu-ga/qemu-ga.conf"];

/// Which hook qemu-ga runs, and what says so.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HookSetting {
    /// `-F`/`--fsfreeze-hook` on its command line; `source` names the file.
    CommandLine { path: PathBuf, source: PathBuf },
    /// `fsfreeze-hook=` in a qemu-ga.conf.
    Config { path: PathBuf, source: PathBuf },
    /// `-F/dev/null`: explicitly no hook (RHEL's switch).
    Disabled { source: PathBuf },
    /// Nothing: qemu-ga runs no hook.
    None,
}

impl HookSetting {
    /// The guest path of the hook qemu-ga runs, if any.
    pub fn path(&self) -> Option<&Path> {
        match self {
            HookSetting::CommandLine { path, .. } | HookSetting::Config { path, .. } => Some(path),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Agent {
    /// Guest path of the qemu-ga binary, if installed.
    pub binary: Option<PathBuf>,
    /// Guest path of its systemd unit, if any.
    pub unit: Option<PathBuf>,
    /// The ExecStart command, environment expanded.
    pub exec_start: Option<Vec<String>>,
    pub hook: HookSetting,
    /// A sysvinit defaults file that systemd ignores (Debian's
    /// /etc/default/qemu-guest-agent with DAEMON_ARGS), if present.
    pub ignored_defaults: Option<PathBuf>,
}

/// The path a run counts as invoked by, for its default hooks dir, config
/// and log. Typed through `PATH` (no slash in argv[0]), a command sees what
/// qemu-ga's hook sees: the hook this system's qemu-ga is set to run (the
/// RHEL family's /etc/qemu-ga/fsfreeze-hook, from its unit and
/// /etc/sysconfig/qemu-ga), else argv[0] as it is (the stock places).
pub fn invoked_as(argv0: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    if argv0.as_os_str().as_bytes().contains(&b'/') {
        return argv0.to_path_buf();
    }
    match inspect(Path::new("/")).hook.path() {
        Some(hook) if hook.is_absolute() => hook.to_path_buf(),
        _ => argv0.to_path_buf(),
    }
}

pub fn inspect(root: &Path) -> Agent {
    let binary = BINARIES
        .iter()
        .map(PathBuf::from)
        .find(|b| in_root(root, b).exists());
    let unit = UNIT_DIRS
        .iter()
        .map(|d| Path::new(d).join(UNIT))
        .find(|u| in_root(root, u).exists());
    let exec_start = unit.as_ref().and_then(|u| exec_start(root, u));
    let from_cmdline = exec_start
        .as_ref()
        .and_then(|argv| hook_arg(argv))
        .map(|path| (path, unit.clone().unwrap_or_default()));
    let hook = match from_cmdline {
        Some((p, source)) if p == Path::new("/dev/null") => HookSetting::Disabled { source },
        Some((path, source)) => HookSetting::CommandLine { path, source },
        None => config_hook(root, exec_start.as_deref()),
    };
    let defaults = Path::new("/etc/default/qemu-guest-agent");
    let ignored_defaults = (unit.is_some()
        && fs::read_to_string(in_root(root, defaults)).is_ok_and(|t| t.contains("DAEMON_ARGS")))
    .then(|| defaults.to_path_buf());
    Agent {
        binary,
        unit,
        exec_start,
        hook,
        ignored_defaults,
    }
}

/// The effective ExecStart of the unit and its drop-ins (an empty
/// `ExecStart=` resets), split into words with `${VAR}` expanded from the
/// unit's `Environment=` and `EnvironmentFile=`.
fn exec_start(root: &Path, unit: &Path) -> Option<Vec<String>> {
    let files = unit_files(root, unit);
    let mut exec: Option<String> = None;
    let mut env: HashMap<String, String> = HashMap::new();
    for f in files {
        let Ok(text) = fs::read_to_string(in_root(root, &f)) else {
            continue;
        };
        for (key, value) in unit_lines(&text) {
            match key.as_str() {
                "ExecStart" if value.is_empty() => exec = None,
                "ExecStart" => exec = Some(value),
                "Environment" => {
                    for word in split_words(&value) {
                        if let Some((k, v)) = word.split_once('=') {
                            env.insert(k.to_string(), v.to_string());
                        }
                    }
                }
                "EnvironmentFile" => {
                    let path = value.trim_start_matches('-');
                    if let Ok(t) = fs::read_to_string(in_root(root, Path::new(path))) {
                        env.extend(env_file(&t));
                    }
                }
                _ => {}
            }
        }
    }
    let words = split_words(&exec?);
    let mut words: Vec<String> = words.iter().map(|w| expand(w, &env)).collect();
    // systemd's prefixes on the executable: - @ + ! :
    if let Some(first) = words.first_mut() {
        *first = first
            .trim_start_matches(['-', '@', '+', '!', ':'])
            .to_string();
    }
    Some(words)
}

/// The running qemu-ga of the service (not any process of that name: a
/// test's or a second agent's): systemd's MainPID of the unit where systemd
/// runs, else the pid in the agent's pidfile (`-f`/`--pidfile` of its
/// command line, `pidfile=` of qemu-ga.conf, or its default).
pub fn service_pid(agent: &Agent) -> Option<i32> {
    if crate::sys::agent::systemd_runs() {
        return crate::sys::agent::systemctl_show(UNIT, "MainPID")
            .ok()?
            .parse()
            .ok()
            .filter(|p| *p > 0);
    }
    let from_cmdline = agent.exec_start.as_ref().and_then(|argv| {
        argv.iter().enumerate().find_map(|(i, w)| {
            w.strip_prefix("--pidfile=")
                .map(String::from)
                .or_else(|| (w == "-f" || w == "--pidfile").then(|| argv.get(i + 1).cloned())?)
                .or_else(|| {
                    w.strip_prefix("-f")
                        .filter(|p| !p.is_empty())
                        .map(String::from)
                })
        })
    });
    let from_conf = || {
        CONFIGS.iter().find_map(|c| {
            let text = fs::read_to_string(c).ok()?;
            text.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("pidfile=")
                    .map(|p| p.trim().to_string())
            })
        })
    };
    let pidfile = from_cmdline
        .or_else(from_conf)
        .unwrap_or_else(|| "/var/run/qemu-ga.pid".into());
    let pid: i32 = fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    let binary = agent.binary.as_deref()?;
    crate::sys::proc::runs_as_root(pid, binary).then_some(pid)
}

/// The unit and its drop-ins (guest paths), in the order systemd reads them.
fn unit_files(root: &Path, unit: &Path) -> Vec<PathBuf> {
    let mut files = vec![unit.to_path_buf()];
    for dir in UNIT_DIRS {
        let dropins = Path::new(dir).join(format!("{UNIT}.d"));
        if let Ok(entries) = fs::read_dir(in_root(root, &dropins)) {
            let mut confs: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .filter_map(|p| Some(dropins.join(p.file_name()?)))
                .collect();
            confs.sort();
            files.extend(confs);
        }
    }
    files
}

/// Every file whose change a running qemu-ga only sees when restarted (guest
/// paths that exist): its qemu-ga.conf, its unit, the unit's drop-ins and
/// the environment files they name.
pub fn settings_files(root: &Path, agent: &Agent) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = CONFIGS.iter().map(PathBuf::from).collect();
    if let Some(unit) = &agent.unit {
        for f in unit_files(root, unit) {
            if let Ok(text) = fs::read_to_string(in_root(root, &f)) {
                files.extend(
                    unit_lines(&text)
                        .into_iter()
                        .filter(|(k, _)| k == "EnvironmentFile")
                        .map(|(_, v)| PathBuf::from(v.trim_start_matches('-'))),
                );
            }
            files.push(f);
        }
    }
    files.retain(|f| in_root(root, f).exists());
    files
}

/// `Key=Value` lines of a unit file, continuation lines joined.
fn unit_lines(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for raw in text.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.starts_with('#') || line.starts_with(';')) {
            continue;
        }
        if let Some(cont) = line.strip_suffix('\\') {
            pending.push_str(cont);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        if let Some((k, v)) = pending.split_once('=') {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
        pending.clear();
    }
    out
}

/// KEY=VALUE lines of an environment file; quotes removed.
fn env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            (
                k.trim().to_string(),
                v.trim().trim_matches(['"', '\'']).to_string(),
            )
        })
        .collect()
}

/// Words of a command line, honouring double and single quotes.
fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut any = false;
    for c in text.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
                any = false;
            }
            (None, c) => cur.push(c),
        }
    }
    if any || !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn expand(word: &str, env: &HashMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = word;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(b) = after.strip_prefix('{') {
            match b.find('}') {
                Some(end) => (&b[..end], &b[end + 1..]),
                None => ("", after),
            }
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
            continue;
        }
        out.push_str(env.get(name).map_or("", String::as_str));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// The hook path of qemu-ga's `-F[PATH]` / `--fsfreeze-hook[=PATH]`.
fn hook_arg(argv: &[String]) -> Option<PathBuf> {
    let mut found = None;
    for arg in argv.iter().skip(1) {
        if let Some(v) = arg.strip_prefix("--fsfreeze-hook") {
            found = match v.strip_prefix('=') {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => Some(PathBuf::from(DEFAULT_HOOK)),
            };
        } else if let Some(v) = arg.strip_prefix("-F") {
            found = Some(if v.is_empty() {
                PathBuf::from(DEFAULT_HOOK)
            } else {
                PathBuf::from(v)
            });
        }
    }
    found
}

/// `fsfreeze-hook=` in qemu-ga's config (`-c PATH` on its command line, or
/// the default places).
fn config_hook(root: &Path, argv: Option<&[String]>) -> HookSetting {
    let explicit = argv.and_then(|a| {
        a.windows(2)
            .find(|w| w[0] == "-c" || w[0] == "--config")
            .map(|w| PathBuf::from(&w[1]))
            .or_else(|| {
                a.iter()
                    .find_map(|w| w.strip_prefix("--config=").map(PathBuf::from))
            })
    });
    let candidates: Vec<PathBuf> = match explicit {
        Some(p) => vec![p],
        None => CONFIGS.iter().map(PathBuf::from).collect(),
    };
    for conf in candidates {
        let Ok(text) = fs::read_to_string(in_root(root, &conf)) else {
            continue;
        };
        if let Some(value) = ini_value(&text, "general", "fsfreeze-hook") {
            let path = if value.is_empty() {
                PathBuf::from(DEFAULT_HOOK)
            } else {
                PathBuf::from(value)
            };
            if path == Path::new("/dev/null") {
                return HookSetting::Disabled { source: conf };
            }
            return HookSetting::Config { path, source: conf };
        }
    }
    HookSetting::None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, guest: &str, text: &str) {
        let p = in_root(root, Path::new(guest));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }

    #[test]
    fn debian_unit_starts_qemu_ga_without_a_hook() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "/usr/sbin/qemu-ga", "");
        write(
            root.path(),
            "/lib/systemd/system/qemu-guest-agent.service",
            "[Service]\nExecStart=-/usr/sbin/qemu-ga\n",
        );
        let a = inspect(root.path());
        assert_eq!(a.binary, Some(PathBuf::from("/usr/sbin/qemu-ga")));
        assert_eq!(a.exec_start, Some(vec!["/usr/sbin/qemu-ga".to_string()]));
        assert_eq!(a.hook, HookSetting::None);
        write(
            root.path(),
            "/etc/qemu/qemu-ga.conf",
            "[general]\nverbose=true\nfsfreeze-hook=/etc/qemu/fsfreeze-hook\n",
        );
        assert_eq!(
            inspect(root.path()).hook,
            HookSetting::Config {
                path: PathBuf::from("/etc/qemu/fsfreeze-hook"),
                source: PathBuf::from("/etc/qemu/qemu-ga.conf")
            }
        );
        // A drop-in that adds -F wins over the config.
        write(
            root.path(),
            "/etc/systemd/system/qemu-guest-agent.service.d/hook.conf",
            "[Service]\nExecStart=\nExecStart=/usr/sbin/qemu-ga -F/srv/hook\n",
        );
        assert_eq!(
            inspect(root.path()).hook.path(),
            Some(Path::new("/srv/hook"))
        );
    }

    #[test]
    fn rhel_unit_reads_the_hook_from_sysconfig() {
        let root = tempfile::tempdir().unwrap();
        write(
            root.path(),
            "/usr/lib/systemd/system/qemu-guest-agent.service",
            "[Service]\nEnvironmentFile=/etc/sysconfig/qemu-ga\nExecStart=/usr/bin/qemu-ga \\\n  --method=virtio-serial \\\n  --path=/dev/virtio-ports/org.qemu.guest_agent.0 \\\n  --allow-rpcs=${FILTER_RPC_ARGS} \\\n  -F${FSFREEZE_HOOK_PATHNAME}\n",
        );
        write(
            root.path(),
            "/etc/sysconfig/qemu-ga",
            "# comment\nFILTER_RPC_ARGS=\"guest-ping\"\nFSFREEZE_HOOK_PATHNAME=/etc/qemu-ga/fsfreeze-hook\n",
        );
        let a = inspect(root.path());
        assert_eq!(
            a.hook,
            HookSetting::CommandLine {
                path: PathBuf::from("/etc/qemu-ga/fsfreeze-hook"),
                source: PathBuf::from("/usr/lib/systemd/system/qemu-guest-agent.service")
            }
        );
        write(
            root.path(),
            "/etc/sysconfig/qemu-ga",
            "FSFREEZE_HOOK_PATHNAME=/dev/null\n",
        );
        assert!(matches!(
            inspect(root.path()).hook,
            HookSetting::Disabled { .. }
        ));
        // Empty: qemu-ga's default path.
        write(
            root.path(),
            "/etc/sysconfig/qemu-ga",
            "FSFREEZE_HOOK_PATHNAME=\n",
        );
        assert_eq!(
            inspect(root.path()).hook.path(),
            Some(Path::new(DEFAULT_HOOK))
        );
    }

    #[test]
    fn words_and_expansion() {
        assert_eq!(split_words("a \"b c\" 'd' e\"f\""), ["a", "b c", "d", "ef"]);
        let env: HashMap<String, String> = [("X".into(), "1".into())].into();
        assert_eq!(expand("-F${X}/$X/${NOPE}$", &env), "-F1/1/$");
        assert_eq!(
            ini_value(
                "[other]\nfsfreeze-hook=/a\n[general]\n fsfreeze-hook = /b \n",
                "general",
                "fsfreeze-hook"
            ),
            Some("/b".into())
        );
    }
}
