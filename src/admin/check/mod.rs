//! `check`: the whole chain from hypervisor to hook, one actionable line per
//! problem; SELinux in selinux.rs, the places a run writes in places.rs.
//!
//! The usual answers to "my hook never runs": qemu-ga started without `-F`,
//! the hook path is still the stock script, a script not executable or named
//! `.dpkg-old`, an interpreter missing, SELinux.

mod places;
mod selinux;

use std::fs;
use std::path::{Path, PathBuf};

use crate::admin::agent::{self, HookSetting, RESTART};
use crate::admin::list::{self, Verdict};
use crate::config::Settings;
use crate::config::units::format_duration;
use crate::exit::Exit;
use crate::phase::engine::discovery::SkipReason;
use crate::phase::engine::hookfile::Refusal;
use crate::phase::records::history::{History, pause_advice};
use crate::sys::paths::in_root;
use crate::text::escape_path;
use places::{log_place, metrics_dir, writable};
use selinux::selinux;

const PORT: &str = "/dev/virtio-ports/org.qemu.guest_agent.0";

/// One finding: fine, or a problem with its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finding {
    Ok(String),
    Note(String),
    Problem { what: String, fix: String },
}

fn problem(what: impl Into<String>, fix: impl Into<String>) -> Finding {
    Finding::Problem {
        what: what.into(),
        fix: fix.into(),
    }
}

/// Checks the system mounted at `root` (`/` for this machine).
pub fn findings(root: &Path) -> Vec<Finding> {
    let live = root == Path::new("/");
    let mut out = Vec::new();
    let agent = agent::inspect(root);
    match &agent.binary {
        Some(b) => out.push(Finding::Ok(format!("qemu-ga is installed ({})", b.display()))),
        None => out.push(problem(
            "qemu-ga is not installed",
            "apt-get install qemu-guest-agent (Debian, Ubuntu) or dnf install qemu-guest-agent (RHEL, Fedora)",
        )),
    }
    if let (Some(unit), Some(argv)) = (&agent.unit, &agent.exec_start) {
        out.push(Finding::Ok(format!(
            "{} starts: {}",
            unit.display(),
            argv.join(" ")
        )));
    }
    if let Some(d) = &agent.ignored_defaults {
        out.push(Finding::Note(format!(
            "{} sets DAEMON_ARGS, which the systemd unit ignores; qemu-ga's hook is set in qemu-ga.conf or the unit",
            d.display()
        )));
    }
    let hook = match &agent.hook {
        HookSetting::None => {
            out.push(problem(
                format!(
                    "qemu-ga runs no hook: {} starts it without -F and no qemu-ga.conf sets fsfreeze-hook=",
                    agent.unit.as_deref().map_or("its start command".into(), |u| u.display().to_string())
                ),
                format!("run `fsfreeze-hook enable`, then `{RESTART}`"),
            ));
            None
        }
        HookSetting::Disabled { source } => {
            out.push(problem(
                format!("qemu-ga's hook is switched off (/dev/null) in {}", source.display()),
                format!(
                    "set the hook path there (RHEL: FSFREEZE_HOOK_PATHNAME=/etc/qemu-ga/fsfreeze-hook in /etc/sysconfig/qemu-ga), then `{RESTART}`"
                ),
            ));
            None
        }
        HookSetting::CommandLine { path, source } | HookSetting::Config { path, source } => {
            out.push(Finding::Ok(format!(
                "qemu-ga runs the hook {} (set in {})",
                path.display(),
                source.display()
            )));
            Some(path.clone())
        }
    };
    if let Some(hook) = &hook {
        check_hook_binary(root, hook, &mut out);
        check_hook_settings(root, hook, &mut out);
    }
    let port = in_root(root, Path::new(PORT));
    if port.exists() {
        out.push(Finding::Ok(format!(
            "the guest agent's virtio port {PORT} is present"
        )));
    } else {
        out.push(problem(
            format!("no virtio port {PORT}: this VM has no guest agent channel"),
            "enable the VM's QEMU Guest Agent option in the hypervisor (Proxmox VE: Options > QEMU Guest Agent; libvirt: an org.qemu.guest_agent.0 channel), then restart the VM",
        ));
    }
    if live {
        let pid = agent::service_pid(&agent);
        let state_dir = hook
            .as_deref()
            .and_then(|h| Settings::load_for_agent(h, root).ok())
            .map(|s| s.state_dir);
        stale_frozen_mark(&agent, pid, state_dir.as_deref(), &mut out);
        if let Some(pid) = pid {
            restarted_since_changes(&agent, pid, &mut out);
        } else if agent
            .binary
            .as_deref()
            .is_some_and(crate::sys::proc::running)
        {
            out.push(Finding::Ok("qemu-ga is running".into()));
        } else {
            out.push(problem(
                "qemu-ga is not running",
                format!("`systemctl enable --now qemu-guest-agent` (or `{RESTART}`)"),
            ));
        }
        if fs::read_to_string("/sys/fs/selinux/enforce").is_ok_and(|v| v.trim() == "1") {
            out.push(Finding::Note(
                "SELinux is enforcing: qemu-ga may run only hooks labelled for it (restorecon -Rv /etc/qemu-ga /etc/qemu); denials are in the audit log".into(),
            ));
        }
    }
    out
}

/// qemu-ga's frozen mark ([`crate::sys::agent::FROZEN_MARK`] in its
/// statedir, as the running agent's command line or else its unit's sets
/// it) with no freeze in progress: left by an agent that died frozen (its
/// guard thawed the guest). The agent that starts next, or one that
/// started since, believes the guest frozen and refuses guest-exec until
/// the host sends a thaw.
fn stale_frozen_mark(
    agent: &agent::Agent,
    pid: Option<i32>,
    state_dir: Option<&Path>,
    out: &mut Vec<Finding>,
) {
    let args: Vec<std::ffi::OsString> = pid
        .and_then(crate::sys::proc::cmdline)
        .map(|argv| argv.into_iter().skip(1).collect())
        .or_else(|| {
            let argv = agent.exec_start.as_ref()?;
            Some(argv.iter().skip(1).map(Into::into).collect())
        })
        .unwrap_or_default();
    let dir = crate::sys::agent::statedir(&args, |p| fs::read_to_string(p).ok());
    let mark = dir.join(crate::sys::agent::FROZEN_MARK);
    if fs::symlink_metadata(&mark).is_err() {
        return;
    }
    let shown = escape_path(&mark);
    let frozen_now = state_dir.is_some_and(|d| {
        matches!(
            crate::phase::records::journal::Journal::new(d).read(),
            crate::phase::records::journal::Recorded::Unthawed(_)
        )
    });
    if frozen_now {
        out.push(Finding::Note(format!(
            "qemu-ga marks the guest frozen ({shown}): a freeze is in progress (`fsfreeze-hook status`)"
        )));
        return;
    }
    out.push(problem(
        format!(
            "qemu-ga's {shown} says the guest is frozen, but no freeze is in progress: an agent started with it believes the guest frozen and refuses guest-exec until the host sends a thaw"
        ),
        format!("`fsfreeze-hook thaw --fs --all` (a filesystem not frozen is left as it is), `rm {shown}`, then `{RESTART}`"),
    ));
}

/// The service's qemu-ga reads its hook setting when it starts: one older
/// than its last change (`enable` without a restart, say) runs the old one.
fn restarted_since_changes(agent: &agent::Agent, pid: i32, out: &mut Vec<Finding>) {
    let Some(started) = crate::sys::proc::started_at(pid) else {
        out.push(Finding::Ok(format!("qemu-ga is running (pid {pid})")));
        return;
    };
    let newest = agent::settings_files(Path::new("/"), agent)
        .into_iter()
        .filter_map(|f| Some((fs::metadata(&f).ok()?.modified().ok()?, f)))
        .max_by_key(|(t, _)| *t);
    let stamp = |t: std::time::SystemTime| {
        chrono::DateTime::<chrono::Local>::from(t)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    };
    // The start is known to about a second (the boot time's precision).
    match newest {
        Some((changed, file)) if changed > started + std::time::Duration::from_secs(1) => {
            out.push(problem(
                format!(
                    "qemu-ga (pid {pid}) started at {}, before {} changed at {}: it runs with the settings it read then, hook included",
                    stamp(started),
                    file.display(),
                    stamp(changed)
                ),
                format!("`{RESTART}`"),
            ))
        }
        _ => out.push(Finding::Ok(format!(
            "qemu-ga is running (pid {pid}), started after its settings last changed"
        ))),
    }
}

/// Is the hook qemu-ga runs this very program?
fn check_hook_binary(root: &Path, hook: &Path, out: &mut Vec<Finding>) {
    if let Some(set_up) = crate::admin::enable::enabled_elsewhere(root) {
        out.push(Finding::Note(format!(
            "`enable` set up {}, but qemu-ga runs {} now: left as it is (upgrades refresh only the hook `enable` set up); `fsfreeze-hook disable` undoes {0}",
            set_up.display(),
            hook.display()
        )));
    }
    let at = in_root(root, hook);
    let ours = fs::read("/proc/self/exe").ok();
    match fs::read(&at) {
        Err(_) => out.push(problem(
            format!("the hook {} does not exist", hook.display()),
            format!("run `fsfreeze-hook enable`, then `{RESTART}`"),
        )),
        Ok(bytes) if Some(&bytes) == ours.as_ref() => out.push(Finding::Ok(format!(
            "{} is this fsfreeze-hook",
            hook.display()
        ))),
        Ok(bytes) if bytes.starts_with(b"#!") => {
            out.push(problem(
                format!(
                    "{} is a script (the stock hook?), not fsfreeze-hook",
                    hook.display()
                ),
                "run `fsfreeze-hook enable` (it keeps the script aside, and `disable` restores it)",
            ));
            if let Some(sh) = bash_array_under_sh(root, &bytes) {
                out.push(problem(
                    format!(
                        "{} reads ${{PIPESTATUS[0]}}, which only bash has, under #!/bin/sh ({sh}): whenever its log file is not writable (as before its first run creates it) it runs the first hook, then dies with `Bad substitution` (exit 2): the other hooks never run and nothing is rolled back",
                        hook.display()
                    ),
                    "run `fsfreeze-hook enable` (the manual's stock-script.md shows this failure)",
                ));
            }
        }
        Ok(bytes) if crate::admin::enable::a_build_of_ours(&bytes) => {
            out.push(Finding::Note(format!(
                "{} is another build of fsfreeze-hook than this one",
                hook.display()
            )))
        }
        Ok(_) => out.push(problem(
            format!("{} is another program, not fsfreeze-hook", hook.display()),
            "run `fsfreeze-hook enable`",
        )),
    }
}

/// For a `#!/bin/sh` script that reads bash's PIPESTATUS array (the stock
/// hook of QEMU 9.1 up to 10.0.2 at least; Debian 13's 10.0.13 has it
/// fixed): what `/bin/sh` is in `root` when that is not
/// bash ("/bin/sh is dash"), else None.
fn bash_array_under_sh(root: &Path, script: &[u8]) -> Option<String> {
    let first = script.split(|&b| b == b'\n').next()?;
    let interpreter = first.strip_prefix(b"#!")?.trim_ascii();
    // (Read, as `${PIPESTATUS[0]}`; Debian 13's script names it only in a
    // comment, saying why it does without.)
    if interpreter != b"/bin/sh" || !crate::text::contains(script, b"${PIPESTATUS") {
        return None;
    }
    match shell_name(root) {
        Some(name) if name == "bash" => None,
        Some(name) => Some(format!("/bin/sh is {name}")),
        None => Some("/bin/sh is not bash on Debian or Ubuntu".into()),
    }
}

/// The name of the program `/bin/sh` leads to in `root`, its symlinks
/// followed inside `root`.
fn shell_name(root: &Path) -> Option<String> {
    let path = crate::sys::paths::resolve_in(root, Path::new("/bin/sh"), true);
    fs::symlink_metadata(&path).ok()?;
    let name = path.file_name()?.to_string_lossy().into_owned();
    // A plain file named sh says nothing of which shell it is.
    (name != "sh").then_some(name)
}

/// The config, hooks dir, hooks, log and state dir, as qemu-ga's call of
/// `hook` would see them.
fn check_hook_settings(root: &Path, hook: &Path, out: &mut Vec<Finding>) {
    let settings = match Settings::load_for_agent(hook, root) {
        Ok(s) => {
            out.push(Finding::Ok(match &s.config_file {
                Some(c) => format!("config {} parses", c.display()),
                None => "no config file: defaults apply".into(),
            }));
            // Judged as a run judges it: one it does not trust, it refuses.
            if let (Some(config), Some(meta)) = (&s.config_file, &s.config_meta)
                && let Err(u) =
                    crate::phase::engine::trust::Policy::current().check_opened(config, meta)
            {
                out.push(problem(
                    format!("config is not trusted, and every freeze is refused: {u}"),
                    "make root its owner and take write access from group and others (`chown root:root`, `chmod go-w`), on it and each directory above it",
                ));
            }
            s
        }
        Err(e) => {
            // Every problem of the file, not only the one a run stops at;
            // then the rest, judged as if it were not there.
            let all = crate::config::problems_in(&e.file);
            for p in if all.is_empty() { vec![e] } else { all } {
                out.push(problem(p.to_string(), "fix that line of the config"));
            }
            out.push(Finding::Note(
                "what follows is judged without the config".into(),
            ));
            Settings::load_for_agent_without_config(hook, root)
        }
    };
    out.push(match settings.max_frozen {
        Some(d) => Finding::Ok(format!(
            "max_frozen {}: if no thaw comes, the guest thaws itself",
            format_duration(d)
        )),
        None => problem(
            "max_frozen is 0: no guard; if the hypervisor's thaw never comes, the guest stays frozen until someone thaws it from its console",
            format!(
                "set max_frozen = \"10m\" (or longer than your longest snapshot) in {}",
                settings
                    .config_file
                    .as_deref()
                    .map_or_else(|| "the config".into(), |c| c.display().to_string())
            ),
        ),
    });
    let listing = list::inspect(&settings, root);
    let dir = escape_path(&settings.hooks_dir);
    match &listing.problem {
        Some(p) if p.ends_with("does not exist") => {
            match scripts_elsewhere(root, hook, &settings.hooks_dir) {
                Some((other, n)) => out.push(problem(
                    format!(
                        "{p}, but {} holds {n} script(s), which never run: qemu-ga's hook {} reads {dir}",
                        escape_path(&other),
                        hook.display()
                    ),
                    format!(
                        "move them: `install -d -m 0755 {dir} && mv {}/* {dir}/`",
                        escape_path(&other)
                    ),
                )),
                None => out.push(problem(
                    p.clone(),
                    format!("run `fsfreeze-hook enable` (or `install -d -m 0755 {dir}`) and put hook scripts there"),
                )),
            }
        }
        Some(p) => out.push(problem(p.clone(), "make it owned by root and not writable by group or others (chown root: ...; chmod go-w ...)")),
        None => out.push(Finding::Ok(format!("hooks dir {dir} exists and is trusted"))),
    }
    let mut runs = 0;
    for e in &listing.entries {
        let name = crate::text::escape(&e.name);
        match &e.verdict {
            Verdict::Runs { .. } => runs += 1,
            Verdict::Skipped(why) if deliberate(why) => out.push(Finding::Note(format!(
                "{name} is skipped on purpose: {why}"
            ))),
            other => out.push(problem(
                format!(
                    "hook {name} will not run: {}",
                    other.reason().unwrap_or_default()
                ),
                fix_for(other, &e.path),
            )),
        }
    }
    if listing.problem.is_none() {
        let optional: Vec<String> = listing
            .entries
            .iter()
            .filter(|e| e.optional && matches!(e.verdict, Verdict::Runs { .. }))
            .map(|e| crate::text::escape(&e.name))
            .collect();
        out.push(Finding::Ok(if optional.is_empty() {
            format!("{runs} hook(s) will run")
        } else {
            format!(
                "{runs} hook(s) will run; optional (a failure is logged and counted, the freeze goes on): {}",
                optional.join(", ")
            )
        }));
        // What the other mode would make of the pause, from the durations
        // the last freezes left (all of the hooks that will run, or nothing).
        let history = History::load(&settings.state_dir);
        let took: Option<Vec<(&std::ffi::OsStr, std::time::Duration)>> = listing
            .entries
            .iter()
            .filter(|e| matches!(e.verdict, Verdict::Runs { .. }))
            .map(|e| Some((e.name.as_os_str(), history.expected(&e.name)?)))
            .collect();
        if let Some(advice) = took.and_then(|t| pause_advice(&t, settings.parallel)) {
            out.push(Finding::Note(format!("from the last freezes: {advice}")));
        }
    }
    log_place(&settings.log_file, out);
    writable(&settings.state_dir, "state dir", out);
    if let Some(metrics) = &settings.metrics_file {
        metrics_dir(&in_root(root, metrics), out);
    }
    selinux(root, hook, &settings, &listing, out);
}

/// Another hooks dir with entries, where an administrator may have put
/// scripts meant for `hook`: `<hook>.d` (which `enable` once created), and
/// the usual dirs of Debian and RHEL. With how many entries it holds.
fn scripts_elsewhere(root: &Path, hook: &Path, reads: &Path) -> Option<(PathBuf, usize)> {
    let mut beside = hook.as_os_str().to_os_string();
    beside.push(".d");
    let candidates = [
        PathBuf::from(beside),
        PathBuf::from("/etc/qemu/fsfreeze-hook.d"),
        PathBuf::from("/etc/qemu-ga/fsfreeze-hook.d"),
    ];
    candidates.into_iter().find_map(|guest| {
        let at = in_root(root, &guest);
        if at == reads {
            return None;
        }
        let n = fs::read_dir(&at).ok()?.filter_map(|e| e.ok()).count();
        (n > 0).then_some((at, n))
    })
}

/// Skips that are the naming convention working as meant.
fn deliberate(why: &SkipReason) -> bool {
    matches!(
        why,
        SkipReason::IgnoredSuffix(_) | SkipReason::Dotfile | SkipReason::EditorLeftover
    )
}

/// The fix for a hook that will not run, by why.
fn fix_for(verdict: &Verdict, path: &Path) -> String {
    let p = escape_path(path);
    match verdict {
        Verdict::Skipped(SkipReason::NotExecutable) | Verdict::Refused(Refusal::NotExecutable) => {
            format!("chmod 755 {p}")
        }
        Verdict::Refused(Refusal::Untrusted(u)) => {
            let at = escape_path(&u.path);
            format!("chown root: {at}; chmod go-w {at}")
        }
        Verdict::Refused(Refusal::UntrustedInterpreter { why, .. }) => {
            let at = escape_path(&why.path);
            format!("chown root: {at}; chmod go-w {at}")
        }
        // The directory is what is not trusted, not the hook in it.
        Verdict::DirRefused(_) => {
            let dir = escape_path(path.parent().unwrap_or(Path::new("/")));
            format!(
                "chown root: {dir}; chmod go-w {dir} (or the directory above it that the reason names)"
            )
        }
        Verdict::Refused(Refusal::MissingInterpreter(_) | Refusal::NoInterpreterNamed) => {
            "install that interpreter, or fix the #! line".into()
        }
        Verdict::Skipped(SkipReason::BrokenSymlink) => {
            format!("point {p} at an existing file, or remove it")
        }
        _ => format!("replace {p} with an executable script or program"),
    }
}

pub fn check(root: &Path, as_json: bool) -> Exit {
    let findings = findings(root);
    if as_json {
        return check_json(&findings);
    }
    let mut problems = 0;
    for f in &findings {
        match f {
            Finding::Ok(s) => outln!("ok: {s}"),
            Finding::Note(s) => outln!("note: {s}"),
            Finding::Problem { what, fix } => {
                problems += 1;
                outln!("problem: {what}. Fix: {fix}");
            }
        }
    }
    if problems == 0 {
        outln!("all good: the next freeze will run the hooks listed by `fsfreeze-hook list`");
        Exit::Ok
    } else {
        outln!("{problems} problem(s)");
        Exit::Problems
    }
}

/// `check --json`: `{"ok":BOOL,"problems":N,"findings":[{"level":..,
/// "text":..,"fix":..}]}`, the same findings and the same exit status.
fn check_json(findings: &[Finding]) -> Exit {
    use crate::log::json::{self, Object};
    let items = findings.iter().map(|f| match f {
        Finding::Ok(s) => Object::new().str("level", "ok").str("text", s).finish(),
        Finding::Note(s) => Object::new().str("level", "note").str("text", s).finish(),
        Finding::Problem { what, fix } => Object::new()
            .str("level", "problem")
            .str("text", what)
            .str("fix", fix)
            .finish(),
    });
    let problems = findings
        .iter()
        .filter(|f| matches!(f, Finding::Problem { .. }))
        .count();
    outln!(
        "{}",
        Object::new()
            .bool("ok", problems == 0)
            .num("problems", problems as f64)
            .raw("findings", json::array(items))
            .finish()
    );
    if problems == 0 {
        Exit::Ok
    } else {
        Exit::Problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &[u8] = b"#!/bin/sh\nrun | logger\nSTATUS=${PIPESTATUS[0]}\n";

    fn root_with_sh(target: Option<&str>) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        fs::create_dir_all(root.path().join("bin")).unwrap();
        for sh in ["dash", "bash"] {
            fs::write(root.path().join("usr/bin").join(sh), "ELF").unwrap();
        }
        match target {
            // Absolute, as Debian's would be if it were: taken inside root.
            Some(t) => std::os::unix::fs::symlink(t, root.path().join("bin/sh")).unwrap(),
            None => fs::write(root.path().join("bin/sh"), "ELF").unwrap(),
        }
        root
    }

    #[test]
    fn the_advice_follows_the_reason_not_its_wording() {
        let p = Path::new("/etc/qemu/fsfreeze-hook.d/20-db");
        let untrusted = crate::phase::engine::trust::Untrusted {
            path: p.to_path_buf(),
            // Wording that mentions other reasons must not change the advice.
            rule: "is not executable by the interpreter's owner".into(),
        };
        assert!(
            fix_for(&Verdict::Refused(Refusal::Untrusted(untrusted)), p).starts_with("chown root:")
        );
        assert!(fix_for(&Verdict::Refused(Refusal::NotExecutable), p).starts_with("chmod 755"));
        assert!(fix_for(&Verdict::Skipped(SkipReason::NotExecutable), p).starts_with("chmod 755"));
        assert!(
            fix_for(
                &Verdict::Refused(Refusal::MissingInterpreter("/usr/bin/python9".into())),
                p
            )
            .starts_with("install that interpreter")
        );
        assert!(fix_for(&Verdict::Skipped(SkipReason::BrokenSymlink), p).starts_with("point "));
        assert!(fix_for(&Verdict::Refused(Refusal::BinaryData), p).starts_with("replace "));
        assert!(deliberate(&SkipReason::IgnoredSuffix(".dpkg-old")));
        assert!(!deliberate(&SkipReason::NotExecutable));
    }

    #[test]
    fn pipestatus_under_sh_is_found_where_sh_is_not_bash() {
        let dash = root_with_sh(Some("/usr/bin/dash"));
        assert_eq!(
            bash_array_under_sh(dash.path(), SCRIPT).as_deref(),
            Some("/bin/sh is dash")
        );
        let relative = root_with_sh(Some("../usr/bin/dash"));
        assert_eq!(
            bash_array_under_sh(relative.path(), SCRIPT).as_deref(),
            Some("/bin/sh is dash")
        );
        let bash = root_with_sh(Some("/usr/bin/bash"));
        assert_eq!(bash_array_under_sh(bash.path(), SCRIPT), None);
        let unknown = root_with_sh(None);
        assert_eq!(
            bash_array_under_sh(unknown.path(), SCRIPT).as_deref(),
            Some("/bin/sh is not bash on Debian or Ubuntu")
        );
        // Not under /bin/sh, or no PIPESTATUS: nothing to say.
        let bash_script = [b"#!/bin/bash".as_slice(), &SCRIPT[9..]].concat();
        assert_eq!(bash_array_under_sh(dash.path(), &bash_script), None);
        assert_eq!(
            bash_array_under_sh(dash.path(), b"#!/bin/sh\nSTATUS=$?\n"),
            None
        );
        // Named in a comment only (Debian 13's script says why it does
        // without): nothing to say.
        assert_eq!(
            bash_array_under_sh(
                dash.path(),
                b"#!/bin/sh\n# we can't use PIPESTATUS, so instead\nSTATUS=$?\n"
            ),
            None
        );
    }
}
