//! The command line. These definitions are the one source of the help text
//! (and, later, of the man page and completions).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::units::{parse_duration, parse_time_limit};
use crate::config::{OnError, Overrides};

/// Runs the scripts of fsfreeze-hook.d around a filesystem freeze: in order,
/// logged, time-bounded, and rolled back when one fails.
///
/// qemu-ga runs `fsfreeze-hook freeze` before it freezes the guest's
/// filesystems and `fsfreeze-hook thaw` after it thaws them. Install this
/// binary as qemu-ga's hook (`-F/etc/qemu/fsfreeze-hook`, or `fsfreeze-hook=`
/// in /etc/qemu/qemu-ga.conf) and it runs /etc/qemu/fsfreeze-hook.d/* as the
/// stock script does, but stops and rolls back when a script fails, bounds each
/// one in time, and thaws in reverse order.
#[derive(Debug, Parser)]
#[command(
    name = "fsfreeze-hook",
    version,
    max_term_width = 100,
    args_override_self = true,
    after_help = "Example hooks: `fsfreeze-hook example` lists them, `fsfreeze-hook example NAME` prints one.\nReference: `man fsfreeze-hook`, sections COMMANDS, CONFIGURATION, FILES, EXIT STATUS.\nThe manual, a page per topic: /usr/share/doc/fsfreeze-hook/docs/ (its index: README.md.gz there)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The command line's definition, every global option hidden from the help
/// of the commands that ignore it (they still accept it, and ignore it):
/// what parsing, the man page and the completions read.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let ignores = |name: &str| -> &'static [&'static str] {
        match name {
            "hold" | "release" => &["hooks_dir", "timeout", "on_error"],
            "status" => &["hooks_dir", "log_file", "timeout", "on_error"],
            "list" => &["log_file"],
            "check" | "enable" | "disable" | "refresh" | "completions" | "example" => &[
                "config",
                "hooks_dir",
                "log_file",
                "state_dir",
                "timeout",
                "on_error",
            ],
            _ => &[],
        }
    };
    let cmd = Cli::command();
    let globals: Vec<clap::Arg> = cmd.get_arguments().cloned().collect();
    // Each ignored global gets a hidden copy of its own in the command:
    // global propagation skips a command that defines the argument already.
    cmd.mut_subcommands(|sub| {
        let hidden: Vec<clap::Arg> = ignores(sub.get_name())
            .iter()
            .filter_map(|id| globals.iter().find(|a| a.get_id() == *id))
            .map(|a| a.clone().global(false).hide(true))
            .collect();
        sub.args(hidden)
    })
}

/// Options accepted before or after the command word (qemu-ga passes none:
/// each can be set in the config file too).
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file to read [default: first found of $FSFREEZE_HOOK_CONFIG,
    /// fsfreeze-hook.conf beside the invoked path, /etc/qemu/fsfreeze-hook.conf]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Directory of hook scripts [default: fsfreeze-hook.d beside the invoked
    /// path; /etc/qemu/fsfreeze-hook.d when invoked through PATH]
    #[arg(long, global = true, value_name = "DIR")]
    pub hooks_dir: Option<PathBuf>,

    /// Log file [default: /var/log/qga-fsfreeze-hook.log; for a normal user
    /// $XDG_STATE_HOME/fsfreeze-hook/fsfreeze-hook.log]
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// Directory of the journal and lock [default: /run/fsfreeze-hook; for a
    /// normal user $XDG_RUNTIME_DIR/fsfreeze-hook]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Time limit of each hook, e.g. 500ms, 30s, 5m; 0 for none. Overrides the
    /// config's timeout and its per-hook timeouts [default: 60s]
    #[arg(long, global = true, value_name = "DUR", value_parser = parse_time_limit_flag)]
    pub timeout: Option<TimeLimitFlag>,

    /// What a failing freeze hook does [default: abort]
    #[arg(long, global = true, value_enum, value_name = "POLICY")]
    pub on_error: Option<OnError>,
}

/// A `--timeout` value: `None` inside means no limit.
#[derive(Clone, Copy, Debug)]
pub struct TimeLimitFlag(pub Option<Duration>);

fn parse_time_limit_flag(text: &str) -> Result<TimeLimitFlag, String> {
    parse_time_limit(text).map(TimeLimitFlag)
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the freeze hooks in order; on a failure, thaw the ones started, in
    /// reverse (what qemu-ga calls before the freeze). With --fs, then freeze
    /// the filesystems too (standalone mode, without qemu-ga)
    Freeze {
        /// Freeze filesystems after the hooks (FIFREEZE), every one qemu-ga
        /// would freeze unless -m names some; needs root
        #[arg(long)]
        fs: bool,

        /// Freeze only the filesystem mounted here (repeatable)
        #[arg(
            short = 'm',
            long = "mountpoint",
            value_name = "MOUNTPOINT",
            requires = "fs"
        )]
        mountpoints: Vec<PathBuf>,

        /// With --fs: if no thaw comes within DUR, the watchdog thaws the
        /// filesystems and runs the thaw hooks; 0 for never (it still thaws
        /// when interrupted)
        #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_time_limit_flag)]
        auto_thaw: TimeLimitFlag,

        /// Without --fs: if no thaw comes within DUR after the freeze hooks,
        /// a guard thaws every filesystem and runs the thaw hooks (0: no
        /// guard) [default: the config's max_frozen, else 10m]
        #[arg(long, value_name = "DUR", conflicts_with = "fs", value_parser = parse_time_limit_flag)]
        max_frozen: Option<TimeLimitFlag>,
    },

    /// Thaw what the last freeze left held: the filesystems it froze (if any),
    /// then its thaw hooks, in reverse order (what qemu-ga calls after the thaw)
    Thaw {
        /// Accepted for symmetry with `freeze --fs`: every thaw thaws the
        /// filesystems a freeze recorded, so none is ever left frozen
        #[arg(long)]
        fs: bool,

        /// Recovery: FITHAW every filesystem qemu-ga would freeze, whoever
        /// froze it (one that is not frozen is left alone)
        #[arg(long, requires = "fs")]
        all: bool,
    },

    /// Freeze hooks, freeze the filesystems, run COMMAND, thaw the
    /// filesystems, thaw hooks: an application-consistent snapshot without
    /// qemu-ga. Exits with COMMAND's status; 124 if the frozen window expired
    /// (filesystems thawed, COMMAND ended), 125 if the freeze failed or was
    /// refused (COMMAND not run), 123 if someone else thawed a filesystem
    /// while COMMAND ran (its copy may be torn); needs root
    Snapshot {
        /// Freeze only the filesystem mounted here (repeatable); default: every
        /// filesystem qemu-ga would freeze
        #[arg(short = 'm', long = "mountpoint", value_name = "MOUNTPOINT")]
        mountpoints: Vec<PathBuf>,

        /// Longest time filesystems stay frozen; then they are thawed and
        /// COMMAND is ended (Windows VSS gives writers 60 s too)
        #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_time_limit_flag)]
        max_frozen: TimeLimitFlag,

        /// COMMAND freezes the filesystems itself, as device-mapper's suspend
        /// does (lvcreate -s, dmsetup suspend): run the hooks around it
        /// without FIFREEZE, which would make that suspend fail on kernels
        /// whose freezes do not nest (Debian 12's 6.1). Each -m must be on
        /// device-mapper
        #[arg(long, requires = "mountpoints")]
        command_freezes: bool,

        /// The command that takes the snapshot, run while frozen
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
    },

    /// List every entry of the hooks dir in run order: runs (with its time
    /// limit), or skipped and why
    List {
        /// One JSON document instead of text
        #[arg(long)]
        json: bool,
    },

    /// Check the whole chain (qemu-ga installed, configured to call this
    /// binary, running; virtio port; config; hooks dir; hooks; log and state
    /// dirs); one actionable line per problem, non-zero exit if any
    Check {
        /// Check the system image mounted at DIR instead of this machine
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,

        /// One JSON object: every finding with its level, and the fix of
        /// each problem (for configuration management)
        #[arg(long)]
        json: bool,
    },

    /// Install this binary as qemu-ga's hook (keeping the stock script aside),
    /// create the hooks dir, point qemu-ga at it; print each change
    Enable {
        /// Act on the system image mounted at DIR
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Only say what would change
        #[arg(long)]
        dry_run: bool,
    },

    /// For the packages' scripts: bring the hook `enable` installed up to
    /// date (this build where an older one is; where qemu-guest-agent's
    /// package wrote its stock script over it, that kept as the stock one and
    /// this build put back); nothing else of `enable` is redone
    Refresh {
        /// Act on the system image mounted at DIR
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// qemu-guest-agent's package was just installed: a hook that is
        /// not ours is the stock script it wrote (rpm's %triggerin says so)
        #[arg(long)]
        agent_installed: bool,
    },

    /// Undo exactly what `enable` did
    Disable {
        /// Act on the system image mounted at DIR
        #[arg(long, value_name = "DIR", default_value = "/")]
        root: PathBuf,
        /// Only say what would change
        #[arg(long)]
        dry_run: bool,
    },

    /// Print a shell completion script (bash, zsh, fish, ...)
    Completions { shell: clap_complete::Shell },

    /// Print the example hook NAME (install one with `fsfreeze-hook example
    /// 20-mariadb > /etc/qemu/fsfreeze-hook.d/20-mariadb`); without NAME,
    /// list them
    Example {
        /// The example's name, as the list gives it
        name: Option<String>,
    },

    /// For a freeze hook: start COMMAND, write this command's stdin to it,
    /// wait for a line with the ready marker, and return while the session
    /// stays alive (holding its lock) until `release NAME` or --max-hold
    Hold {
        /// Name of the session (letters, digits, - _ .)
        name: String,

        /// End the session by itself if no release comes within DUR
        #[arg(long, value_name = "DUR", default_value = "5m", value_parser = parse_time_limit_flag)]
        max_hold: TimeLimitFlag,

        /// Text of the line COMMAND prints once it holds what it should
        #[arg(long, value_name = "TEXT", default_value = "FSFREEZE-READY")]
        ready: String,

        /// Give up (and fail) if the ready line does not come within DUR
        #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_time_limit_flag)]
        ready_timeout: TimeLimitFlag,

        /// Written to COMMAND's stdin on release, before it is closed
        #[arg(long, value_name = "TEXT")]
        release_input: Option<String>,

        /// The client that holds the session (reads its stdin)
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
    },

    /// For a thaw hook: end the session held as NAME (nothing held: no error)
    Release {
        /// Name given to `hold`
        name: String,
    },

    /// Show what is frozen now and since when, which hooks hold, and whether
    /// a watchdog is armed
    Status {
        /// One JSON document instead of text
        #[arg(long)]
        json: bool,
    },

    /// Freeze then thaw the hooks, no filesystem frozen, and show how long each
    /// took and how long applications were held: to test hooks by hand
    Rehearse {
        /// Time to wait between the freeze and the thaw, standing in for the
        /// snapshot
        #[arg(long, value_name = "DUR", default_value = "0", value_parser = parse_duration)]
        hold: Duration,
    },
}

/// `--on-error`'s words, with the help of each (the config takes the same).
impl clap::ValueEnum for OnError {
    fn value_variants<'a>() -> &'a [Self] {
        &[OnError::Abort, OnError::Continue]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let help = match self {
            OnError::Abort => {
                "Stop the phase, thaw every hook whose freeze started (in reverse), exit non-zero"
            }
            OnError::Continue => "Log the failure and go on, exit 0: what the stock script does",
        };
        Some(clap::builder::PossibleValue::new(self.as_str()).help(help))
    }
}

impl GlobalArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            config: self.config.clone(),
            hooks_dir: self.hooks_dir.clone(),
            log_file: self.log_file.clone(),
            state_dir: self.state_dir.clone(),
            timeout: self.timeout.map(|t| t.0),
            on_error: self.on_error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
        // And with each ignored global hidden where it is ignored.
        super::command().debug_assert();
    }

    #[test]
    fn options_go_before_or_after_the_phase() {
        let before = Cli::try_parse_from(["fh", "--timeout", "5s", "freeze"]).unwrap();
        let after = Cli::try_parse_from(["fh", "freeze", "--timeout", "5s"]).unwrap();
        for cli in [before, after] {
            assert!(matches!(cli.command, Command::Freeze { fs: false, .. }));
            assert_eq!(cli.global.timeout.unwrap().0, Some(Duration::from_secs(5)));
        }
        let cli = Cli::try_parse_from(["fh", "thaw", "--timeout", "0"]).unwrap();
        assert_eq!(cli.global.timeout.unwrap().0, None);
    }

    #[test]
    fn standalone_forms_parse() {
        let cli = Cli::try_parse_from([
            "fh",
            "snapshot",
            "-m",
            "/a",
            "-m",
            "/b",
            "--max-frozen",
            "5s",
            "--",
            "cp",
            "-a",
            "x",
        ])
        .unwrap();
        let Command::Snapshot {
            mountpoints,
            max_frozen,
            command,
            command_freezes: false,
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(mountpoints, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(max_frozen.0, Some(Duration::from_secs(5)));
        assert_eq!(command, ["cp", "-a", "x"]);
        let cli = Cli::try_parse_from(["fh", "freeze", "--fs", "--auto-thaw", "0"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Freeze {
                fs: true,
                auto_thaw: TimeLimitFlag(None),
                ..
            }
        ));
        let cli = Cli::try_parse_from(["fh", "thaw", "--fs", "--all"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Thaw {
                fs: true,
                all: true
            }
        ));
    }

    #[test]
    fn command_freezes_needs_the_mountpoints_it_is_about() {
        let cli =
            Cli::try_parse_from(["fh", "snapshot", "--command-freezes", "-m", "/a", "--", "x"])
                .unwrap();
        assert!(matches!(
            cli.command,
            Command::Snapshot {
                command_freezes: true,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["fh", "snapshot", "--command-freezes", "--", "x"]).is_err());
    }

    #[test]
    fn wrong_phase_or_flag_is_a_usage_error() {
        for args in [
            vec!["fh", "freze"],
            vec!["fh", "freeze", "--bogus"],
            vec!["fh", "freeze", "--on-error", "ignore"],
            vec!["fh", "freeze", "--timeout", "5x"],
            vec!["fh"],
            vec!["fh", "freeze", "-m", "/x"],
            vec!["fh", "thaw", "--all"],
            vec!["fh", "snapshot", "-m", "/x"],
        ] {
            let err = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
