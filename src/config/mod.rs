//! Settings: built-in defaults, then the config file (`file`), then flags,
//! and the one syntax of durations and sizes (`units`) both are written in.
//!
//! qemu-ga passes no flags, so everything a flag can set can be set in the
//! file too.

pub mod file;
pub mod units;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use file::{FileConfig, line_of};

/// A time limit; `None` means no limit (written "0").
pub type TimeLimit = Option<Duration>;

/// What a failing freeze hook does to the rest of the phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnError {
    /// Stop the phase, thaw every hook whose freeze started (in reverse), exit non-zero.
    Abort,
    /// Log the failure and go on, exit 0: what the stock script does.
    Continue,
}

impl OnError {
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::Abort => "abort",
            OnError::Continue => "continue",
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// `<date>: <message>` lines, keeping the stock script's lines.
    Text,
    /// One JSON object per event, for shipping to a log pipeline.
    Json,
}

/// Where the runner's own events go (hook output always goes to the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    File,
    Syslog,
    /// systemd's journald (the config says "journal").
    Journald,
}

/// The order of the thaw phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThawOrder {
    /// Exact reverse of the freeze order, like a stack of locks (VMware Tools).
    Reverse,
    /// Same order as the freeze, as the stock script does.
    Forward,
}

pub const SYSTEM_HOOKS_DIR: &str = "/etc/qemu/fsfreeze-hook.d";
pub const SYSTEM_CONFIG: &str = "/etc/qemu/fsfreeze-hook.conf";
pub const ROOT_LOG_FILE: &str = "/var/log/qga-fsfreeze-hook.log";
/// The RHEL family's agent dir: a hook invoked from there logs where
/// qemu-ga's SELinux domain may write (virt_qemu_ga_log_t, the dir RHEL
/// moved the stock hook's log to: RHEL-52250).
pub const RHEL_AGENT_DIR: &str = "/etc/qemu-ga";
pub const RHEL_LOG_FILE: &str = "/var/log/qemu-ga/fsfreeze-hook.log";
pub const ROOT_STATE_DIR: &str = "/run/fsfreeze-hook";
pub const CONFIG_ENV: &str = "FSFREEZE_HOOK_CONFIG";

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
const DEFAULT_PRESYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a drop-in freeze may last before the guard thaws the guest:
/// longer than any backup's snapshot takes (Proxmox VE gives its thaw 3
/// minutes), shorter than the peers' own bounds (VMware Tools 15 minutes).
pub const DEFAULT_MAX_FROZEN: Duration = Duration::from_secs(600);
/// Longer than any backup tool waits for a freeze (Proxmox: 600 s).
const MAX_TIME_LIMIT: Duration = crate::config::units::MAX_DURATION;
const MAX_KILL_GRACE: Duration = Duration::from_secs(600);
const DEFAULT_OUTPUT_LIMIT: u64 = 1 << 20;
const MAX_OUTPUT_LIMIT: u64 = crate::config::units::MAX_SIZE;

/// What the command line sets; `None` leaves the file's or default value.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub hooks_dir: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub timeout: Option<TimeLimit>,
    pub on_error: Option<OnError>,
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub config_file: Option<PathBuf>,
    /// What the config file was when it was read (fstat of the descriptor it
    /// was read from): the trust check judges this very file.
    pub config_meta: Option<std::fs::Metadata>,
    /// The config's text as it was read: a freeze keeps it beside its
    /// journal, for a thaw that finds the config unusable.
    pub config_text: Option<String>,
    pub hooks_dir: PathBuf,
    pub log_file: PathBuf,
    /// Why the log file is not to be opened (its directory may be written
    /// by another user): lines go to syslog instead. Judged by the caller.
    pub log_refused: Option<String>,
    pub state_dir: PathBuf,
    pub timeout: TimeLimit,
    pub phase_timeout: TimeLimit,
    /// Drop-in: the guard thaws the guest when no thaw came within this;
    /// `None` (written "0"): no guard.
    pub max_frozen: TimeLimit,
    pub kill_grace: Duration,
    pub on_error: OnError,
    pub thaw_order: ThawOrder,
    pub log_format: LogFormat,
    pub log_target: LogTarget,
    /// Bytes of output one hook may add to the log per run; `None`: no limit.
    pub output_limit: Option<u64>,
    /// `[hooks."NAME"] timeout = ...`; a `--timeout` flag overrides these too.
    pub hook_timeouts: BTreeMap<String, TimeLimit>,
    /// Hooks run in parallel groups (see [`Settings::groups_of`]).
    pub parallel: bool,
    /// `[hooks."NAME"] parallel = false`: run alone, at its place.
    pub hook_solo: std::collections::BTreeSet<String>,
    /// `[hooks."NAME"] on_error = ...`: that hook's own, over `on_error`;
    /// an `--on-error` flag overrides these too.
    pub hook_on_error: BTreeMap<String, OnError>,
    /// Flush the filesystems before the first freeze hook (`syncfs`).
    pub presync: bool,
    /// How long the presync may hold the phase; past it the phase goes on.
    pub presync_timeout: TimeLimit,
    /// Where the Prometheus metrics go after every phase; `None`: nowhere.
    pub metrics_file: Option<PathBuf>,
    /// Where the log and state went when not running as root, for `rehearse`.
    pub fallback_note: Option<String>,
}

impl Settings {
    /// The settings of a command that a hook runs (`hold`, `release`) or
    /// that looks at what hooks hold (`status`): the runner passes its state
    /// dir and log in the environment, and they win.
    pub fn as_seen_by_hooks(&self) -> Settings {
        let mut settings = self.clone();
        if let Some(d) = std::env::var_os("FSFREEZE_HOOK_STATE_DIR").filter(|d| !d.is_empty()) {
            settings.state_dir = PathBuf::from(d);
        }
        if let Some(l) = std::env::var_os("FSFREEZE_HOOK_LOG").filter(|l| !l.is_empty()) {
            settings.log_file = PathBuf::from(l);
        }
        settings
    }

    /// The time limit of one hook.
    pub fn timeout_for(&self, name: &OsStr) -> TimeLimit {
        name.to_str()
            .and_then(|n| self.hook_timeouts.get(n))
            .copied()
            .unwrap_or(self.timeout)
    }

    /// What a failure of this hook does: its own `on_error`, else the
    /// global one.
    pub fn on_error_for(&self, name: &OsStr) -> OnError {
        name.to_str()
            .and_then(|n| self.hook_on_error.get(n))
            .copied()
            .unwrap_or(self.on_error)
    }

    /// Whether this hook is optional: its failure is logged and counted,
    /// and the freeze goes on (`on_error = "continue"`, its own or the
    /// global one).
    pub fn is_optional(&self, name: &OsStr) -> bool {
        self.on_error_for(name) == OnError::Continue
    }

    /// Loads the settings for a run invoked as `argv0`.
    pub fn load(argv0: &Path, flags: &Overrides) -> Result<Settings, ConfigError> {
        let env = std::env::var_os(CONFIG_ENV);
        let located = locate_config(
            flags.config.as_deref(),
            env.as_deref(),
            argv0,
            Path::new("/"),
        );
        Settings::from_file(located, argv0, flags, crate::sys::is_root())
    }

    /// As [`Settings::load`] with no config file read: the defaults and the
    /// flags, for a command that goes on past a config it cannot use.
    pub fn load_without_config(argv0: &Path, flags: &Overrides) -> Settings {
        Settings::from_file(None, argv0, flags, crate::sys::is_root()).expect("no file to read")
    }

    /// As [`Settings::load_for_agent`] with no config file read.
    pub fn load_for_agent_without_config(hook: &Path, root: &Path) -> Settings {
        let argv0 = crate::sys::paths::entry_in_root(root, hook);
        let mut s = Settings::from_file(None, &argv0, &Overrides::default(), true)
            .expect("no file to read");
        Settings::map_into(&mut s, root);
        s
    }

    fn map_into(s: &mut Settings, root: &Path) {
        let in_root = |p: &Path| crate::sys::paths::in_root(root, p);
        if !s.hooks_dir.starts_with(root) {
            s.hooks_dir = in_root(&s.hooks_dir);
        }
        s.log_file = in_root(&s.log_file);
        s.state_dir = in_root(&s.state_dir);
    }

    /// The settings qemu-ga's call of its hook gets on the system mounted at
    /// `root` (`check --root`): no flags, no environment, root's defaults;
    /// `hook` is the guest path qemu-ga runs, and every path is mapped into
    /// `root`.
    pub fn load_for_agent(hook: &Path, root: &Path) -> Result<Settings, ConfigError> {
        let in_root = |p: &Path| crate::sys::paths::in_root(root, p);
        // The hook as qemu-ga names it (not where a symlink leads): its
        // hooks dir and config are beside that name.
        let argv0 = crate::sys::paths::entry_in_root(root, hook);
        // The config beside the hook, else the system's, both read inside
        // `root` (a link there to a file of this machine is not followed out).
        let beside = hook
            .parent()
            .unwrap_or(Path::new("/"))
            .join("fsfreeze-hook.conf");
        let located = [beside, PathBuf::from(SYSTEM_CONFIG)]
            .into_iter()
            .map(|guest| in_root(&guest))
            .find(|p| p.exists());
        let mut s = Settings::from_file(located, &argv0, &Overrides::default(), true)?;
        Settings::map_into(&mut s, root);
        Ok(s)
    }

    /// Root's defaults with no config file, the log and state under `dir`:
    /// for unit tests of what runs on settings.
    #[cfg(test)]
    pub fn defaults_in(dir: &Path) -> Settings {
        let flags = Overrides {
            log_file: Some(dir.join("log")),
            state_dir: Some(dir.join("state")),
            ..Overrides::default()
        };
        Settings::from_file(None, &dir.join("fsfreeze-hook"), &flags, true)
            .expect("no file to read")
    }

    /// As [`Settings::load`], with the config's text given: what a freeze
    /// kept of the config it ran under (`file` names it in messages), for
    /// a thaw whose config is unusable now.
    pub fn load_saved(
        argv0: &Path,
        flags: &Overrides,
        file: &Path,
        text: &str,
    ) -> Result<Settings, ConfigError> {
        let parsed = FileConfig::parse(text).map_err(|e| e.in_file(file, text))?;
        Settings::from_parsed(
            Some((file.to_path_buf(), None, text.to_string(), parsed)),
            argv0,
            flags,
            crate::sys::is_root(),
        )
    }

    fn from_file(
        located: Option<PathBuf>,
        argv0: &Path,
        flags: &Overrides,
        as_root: bool,
    ) -> Result<Settings, ConfigError> {
        let file = match located {
            Some(path) => {
                let (text, meta) = read_config(&path).map_err(|e| ConfigError {
                    file: path.clone(),
                    line: None,
                    key: None,
                    message: format!("cannot read: {e}"),
                })?;
                let text = String::from_utf8(text).map_err(|e| ConfigError {
                    file: path.clone(),
                    line: Some(line_of(e.as_bytes(), e.utf8_error().valid_up_to())),
                    key: None,
                    message: "not valid UTF-8".into(),
                })?;
                let parsed = FileConfig::parse(&text).map_err(|e| e.in_file(&path, &text))?;
                Some((path, Some(meta), text, parsed))
            }
            None => None,
        };
        Settings::from_parsed(file, argv0, flags, as_root)
    }

    fn from_parsed(
        file: Option<(PathBuf, Option<std::fs::Metadata>, String, FileConfig)>,
        argv0: &Path,
        flags: &Overrides,
        as_root: bool,
    ) -> Result<Settings, ConfigError> {
        let (config_file, config_meta, config_text, file) = match file {
            Some((p, m, t, f)) => (Some(p), m, Some(t), f),
            None => (None, None, None, FileConfig::default()),
        };
        let (log_default, state_default, fallback_note) = if as_root {
            (root_log_file(argv0), ROOT_STATE_DIR.into(), None)
        } else {
            let (log, state) = user_locations();
            let note = format!(
                "not root: log in {}, state in {} (root uses {ROOT_LOG_FILE} and {ROOT_STATE_DIR})",
                log.display(),
                state.display()
            );
            (log, state, Some(note))
        };
        let log_explicit = flags.log_file.is_some() || file.log_file.is_some();
        let state_explicit = flags.state_dir.is_some() || file.state_dir.is_some();
        let mut hook_timeouts = file.hook_timeouts;
        // `--timeout` is how an administrator bounds a rehearsal: it wins over
        // the file's per-hook values too.
        if flags.timeout.is_some() {
            hook_timeouts.clear();
        }
        // So does `--on-error`.
        let mut hook_on_error = file.hook_on_error;
        if flags.on_error.is_some() {
            hook_on_error.clear();
        }
        Ok(Settings {
            config_file,
            config_meta,
            config_text,
            hooks_dir: flags
                .hooks_dir
                .clone()
                .or(file.hooks_dir)
                .unwrap_or_else(|| default_hooks_dir(argv0)),
            log_file: flags
                .log_file
                .clone()
                .or(file.log_file)
                .unwrap_or(log_default),
            log_refused: None,
            state_dir: flags
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or(state_default),
            timeout: flags
                .timeout
                .or(file.timeout)
                .unwrap_or(Some(DEFAULT_TIMEOUT)),
            phase_timeout: file.phase_timeout.unwrap_or(Some(DEFAULT_PHASE_TIMEOUT)),
            max_frozen: file.max_frozen.unwrap_or(Some(DEFAULT_MAX_FROZEN)),
            kill_grace: file.kill_grace.unwrap_or(DEFAULT_KILL_GRACE),
            on_error: flags.on_error.or(file.on_error).unwrap_or(OnError::Abort),
            thaw_order: file.thaw_order.unwrap_or(ThawOrder::Reverse),
            log_format: file.log_format.unwrap_or(LogFormat::Text),
            log_target: file.log_target.unwrap_or(LogTarget::File),
            output_limit: file.output_limit.unwrap_or(Some(DEFAULT_OUTPUT_LIMIT)),
            hook_timeouts,
            parallel: file.parallel.unwrap_or(false),
            hook_solo: file.hook_solo,
            hook_on_error,
            presync: file.presync.unwrap_or(true),
            presync_timeout: file
                .presync_timeout
                .unwrap_or(Some(DEFAULT_PRESYNC_TIMEOUT)),
            metrics_file: file.metrics_file,
            fallback_note: fallback_note.filter(|_| !(log_explicit && state_explicit)),
        })
    }
}

/// The stock script reads `$(dirname "$0")/fsfreeze-hook.d`. Typed through
/// `PATH` (no slash in argv[0]) we look where qemu-ga's hook looks instead of
/// in the directory of whatever `PATH` entry matched.
/// Root's default log: under /var/log/qemu-ga for a hook in the RHEL
/// family's /etc/qemu-ga, the stock script's place otherwise.
pub fn root_log_file(argv0: &Path) -> PathBuf {
    match argv0.parent() {
        Some(dir) if dir.ends_with(RHEL_AGENT_DIR.trim_start_matches('/')) => RHEL_LOG_FILE.into(),
        _ => ROOT_LOG_FILE.into(),
    }
}

pub fn default_hooks_dir(argv0: &Path) -> PathBuf {
    beside_invoked(argv0, "fsfreeze-hook.d").unwrap_or_else(|| SYSTEM_HOOKS_DIR.into())
}

fn beside_invoked(argv0: &Path, name: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    if !argv0.as_os_str().as_bytes().contains(&b'/') {
        return None;
    }
    let dir = argv0.parent().filter(|d| !d.as_os_str().is_empty());
    Some(dir.unwrap_or(Path::new("/")).join(name))
}

/// First found of: `--config`, `$FSFREEZE_HOOK_CONFIG`, `fsfreeze-hook.conf`
/// beside the invoked path, `/etc/qemu/fsfreeze-hook.conf`. The first two are
/// returned even when missing, so that a wrong explicit path is an error
/// rather than silently ignored.
fn locate_config(
    flag: Option<&Path>,
    env: Option<&OsStr>,
    argv0: &Path,
    root: &Path,
) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    if let Some(p) = env.filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let beside = beside_invoked(argv0, "fsfreeze-hook.conf");
    beside
        .into_iter()
        .chain(std::iter::once(
            root.join(SYSTEM_CONFIG.trim_start_matches('/')),
        ))
        .find(|p| p.exists())
}

/// The log a run invoked as `argv0` uses when no config says otherwise:
/// where a run that could not read its config says so.
pub fn default_log_file(argv0: &Path) -> PathBuf {
    match crate::sys::is_root() {
        true => root_log_file(argv0),
        false => user_locations().0,
    }
}

/// Where a normal user's log and state go: the XDG state and runtime dirs.
fn user_locations() -> (PathBuf, PathBuf) {
    let env_dir = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let home = env_dir("HOME");
    let uid = nix::unistd::geteuid();
    let state_home = env_dir("XDG_STATE_HOME")
        .or_else(|| home.as_ref().map(|h| h.join(".local/state")))
        .map(|d| d.join("fsfreeze-hook"))
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/fsfreeze-hook-{uid}")));
    let runtime = env_dir("XDG_RUNTIME_DIR")
        .map(|d| d.join("fsfreeze-hook"))
        .unwrap_or_else(|| state_home.join("run"));
    (state_home.join("fsfreeze-hook.log"), runtime)
}

/// A config that cannot be used. Displayed as one line:
/// `FILE:LINE: key `KEY`: MESSAGE`.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "config {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": key `{key}`")?;
        }
        write!(f, ": {}", self.message.replace('\n', " "))
    }
}

impl std::error::Error for ConfigError {}

/// Every problem of the config file at `path`, in file order (a run stops
/// at the first; `check` lists them all). Empty when it parses.
pub fn problems_in(path: &Path) -> Vec<ConfigError> {
    let at = |message: String| ConfigError {
        file: path.to_path_buf(),
        line: None,
        key: None,
        message,
    };
    let text = match read_config(path) {
        Ok((bytes, _)) => bytes,
        Err(e) => return vec![at(format!("cannot be read: {e}"))],
    };
    let Ok(text) = String::from_utf8(text) else {
        return vec![at("not valid UTF-8".into())];
    };
    let (_, problems) = FileConfig::parse_all(&text);
    problems
        .into_iter()
        .map(|p| p.in_file(path, &text))
        .collect()
}

/// The config's bytes and what it is, both from one open descriptor.
fn read_config(path: &Path) -> std::io::Result<(Vec<u8>, std::fs::Metadata)> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    // O_NONBLOCK: a config swapped for a FIFO must not block the open.
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut text = Vec::new();
    file.read_to_end(&mut text)?;
    Ok((text, meta))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_dir_beside_invoked_path_or_system() {
        assert_eq!(
            default_hooks_dir(Path::new("/etc/qemu/fsfreeze-hook")),
            PathBuf::from("/etc/qemu/fsfreeze-hook.d")
        );
        assert_eq!(
            default_hooks_dir(Path::new("./fsfreeze-hook")),
            PathBuf::from("./fsfreeze-hook.d")
        );
        assert_eq!(
            default_hooks_dir(Path::new("fsfreeze-hook")),
            PathBuf::from(SYSTEM_HOOKS_DIR)
        );
        assert_eq!(
            default_hooks_dir(Path::new("/fsfreeze-hook")),
            PathBuf::from("/fsfreeze-hook.d")
        );
    }

    #[test]
    fn config_search_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let beside = dir.join("fsfreeze-hook.conf");
        std::fs::write(&beside, "").unwrap();
        let argv0 = dir.join("fsfreeze-hook");
        let flag = Path::new("/nonexistent/flag.conf");
        let env = OsStr::new("/nonexistent/env.conf");
        assert_eq!(
            locate_config(Some(flag), Some(env), &argv0, Path::new("/")).unwrap(),
            flag
        );
        assert_eq!(
            locate_config(None, Some(env), &argv0, Path::new("/")).unwrap(),
            Path::new(env)
        );
        assert_eq!(
            locate_config(None, None, &argv0, Path::new("/")).unwrap(),
            beside
        );
    }

    #[test]
    fn a_hook_in_the_rhel_agent_dir_logs_where_its_selinux_domain_may() {
        assert_eq!(
            root_log_file(Path::new("/etc/qemu-ga/fsfreeze-hook")),
            PathBuf::from("/var/log/qemu-ga/fsfreeze-hook.log")
        );
        assert_eq!(
            root_log_file(Path::new("/img/etc/qemu-ga/fsfreeze-hook")),
            PathBuf::from(RHEL_LOG_FILE)
        );
        assert_eq!(
            root_log_file(Path::new("/etc/qemu/fsfreeze-hook")),
            PathBuf::from(ROOT_LOG_FILE)
        );
    }

    #[test]
    fn per_hook_timeout_applies_to_that_hook_only() {
        let mut hook_timeouts = BTreeMap::new();
        hook_timeouts.insert("20-mysql".to_string(), None);
        let s = Settings {
            config_file: None,
            config_meta: None,
            config_text: None,
            hooks_dir: "/d".into(),
            log_file: "/l".into(),
            log_refused: None,
            state_dir: "/s".into(),
            timeout: Some(Duration::from_secs(60)),
            phase_timeout: None,
            max_frozen: None,
            kill_grace: Duration::from_secs(5),
            on_error: OnError::Abort,
            thaw_order: ThawOrder::Reverse,
            log_format: LogFormat::Text,
            log_target: LogTarget::File,
            output_limit: None,
            hook_timeouts,
            parallel: false,
            hook_solo: Default::default(),
            hook_on_error: Default::default(),
            presync: false,
            presync_timeout: None,
            metrics_file: None,
            fallback_note: None,
        };
        assert_eq!(s.timeout_for(OsStr::new("20-mysql")), None);
        assert_eq!(
            s.timeout_for(OsStr::new("10-app")),
            Some(Duration::from_secs(60))
        );
    }
}
