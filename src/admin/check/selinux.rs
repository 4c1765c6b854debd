//! `check`'s findings of SELinux on the RHEL family: its mode, the labels of
//! the hook, its scripts, the state dir and the log, and the boolean that
//! lets hooks run unconfined.

use std::fs;
use std::path::{Path, PathBuf};

use super::{Finding, problem};
use crate::admin::list::{self, Verdict};
use crate::config::{ROOT_STATE_DIR, Settings};
use crate::sys::paths::in_root;

/// The label hooks need on the RHEL family: qemu-ga's domain runs them
/// through a transition out of its own confinement (its policy labels
/// /etc/qemu-ga/fsfreeze-hook.d so).
const HOOK_TYPE: &str = "virt_qemu_ga_unconfined_exec_t";

/// Where SELinux is enabled (`/sys/fs/selinux/enforce` exists): its mode,
/// the labels of the hook, the hooks dir and each hook, with the
/// `restorecon` that fixes a wrong one, and whether the log may be written.
pub(super) fn selinux(
    root: &Path,
    hook: &Path,
    settings: &Settings,
    listing: &list::Listing,
    out: &mut Vec<Finding>,
) {
    let Ok(mode) = fs::read_to_string(in_root(root, Path::new("/sys/fs/selinux/enforce"))) else {
        return;
    };
    let enforcing = mode.trim() == "1";
    out.push(Finding::Note(format!(
        "SELinux is {}",
        if enforcing { "enforcing" } else { "permissive" }
    )));
    let guest = |p: &Path| -> PathBuf {
        match p.strip_prefix(root) {
            Ok(inside) if root != Path::new("/") => Path::new("/").join(inside),
            _ => p.to_path_buf(),
        }
    };
    let label = |p: &Path| crate::sys::paths::selinux_label(p).unwrap_or_else(|| "no label".into());
    // The runner must share its scripts' domain to end them at a timeout:
    // the policy lets qemu-ga's domain signal none that runs unconfined.
    out.push(labelled(
        &format!("hook {}", hook.display()),
        &label(&in_root(root, hook)),
        HOOK_TYPE,
        "runs it in its own domain, from which it may not end hooks that run unconfined (virt_qemu_ga_run_unconfined on)",
        &format!(
            "`restorecon -v {}` (the package's SELinux module labels it so; `semodule -l | grep fsfreeze-hook` shows it installed)",
            hook.display()
        ),
        enforcing,
    ));
    let mut judged: Vec<PathBuf> = vec![settings.hooks_dir.clone()];
    judged.extend(
        listing
            .entries
            .iter()
            .filter(|e| matches!(e.verdict, Verdict::Runs { .. }))
            .map(|e| e.path.clone()),
    );
    let fix = format!("`restorecon -Rv {}`", guest(&settings.hooks_dir).display());
    for path in judged {
        let subject = guest(&path).display().to_string();
        out.push(labelled(
            &subject,
            &label(&path),
            HOOK_TYPE,
            "may not run it",
            &fix,
            enforcing,
        ));
    }
    let state = guest(&settings.state_dir);
    let fix = if state == Path::new(ROOT_STATE_DIR) {
        format!(
            "`restorecon -Rv {ROOT_STATE_DIR}` (the package's SELinux module labels it so; `semodule -l | grep fsfreeze-hook` shows it installed)"
        )
    } else {
        format!(
            "`semanage fcontext -a -t {STATE_TYPE} '{}(/.*)?'`, then `restorecon -Rv {0}`",
            state.display()
        )
    };
    writes_as_the_agent(
        &settings.state_dir,
        &state,
        "state dir",
        STATE_TYPE,
        &fix,
        enforcing,
        out,
    );
    let log = guest(&settings.log_file);
    if log.starts_with("/var/log/qemu-ga") {
        let fix = format!("`restorecon -v {}`", log.display());
        writes_as_the_agent(
            &settings.log_file,
            &log,
            "log",
            LOG_TYPE,
            &fix,
            enforcing,
            out,
        );
    }
    unconfined_hooks(root, enforcing, listing, out);
    if enforcing && !log.starts_with("/var/log/qemu-ga") {
        out.push(problem(
            format!(
                "log_file {} is outside /var/log/qemu-ga, which is all qemu-ga's SELinux domain may write: the runner's lines go to syslog instead",
                log.display()
            ),
            "remove log_file from the config (the default under /etc/qemu-ga is /var/log/qemu-ga/fsfreeze-hook.log)",
        ));
    }
}

/// What qemu-ga's domain may write: the state dir (its policy gives a dir
/// the agent makes in /run this type; the package's module gives it to
/// /run/fsfreeze-hook whoever makes it), and the logs under
/// /var/log/qemu-ga.
const STATE_TYPE: &str = "virt_qemu_ga_var_run_t";
const LOG_TYPE: &str = "virt_qemu_ga_log_t";

/// The type of an SELinux label (`user:role:type:level`).
fn type_of(label: &str) -> Option<&str> {
    label.split(':').nth(2)
}

/// Judges the label of something the runner writes in qemu-ga's domain
/// (`at`, shown as `shown`): of `wanted` type, or a problem when enforcing
/// (a note when permissive). Not there yet: whoever makes it decides.
fn writes_as_the_agent(
    at: &Path,
    shown: &Path,
    what: &str,
    wanted: &str,
    fix: &str,
    enforcing: bool,
    out: &mut Vec<Finding>,
) {
    if fs::symlink_metadata(at).is_err() {
        out.push(Finding::Note(format!(
            "{what} {} is not there yet (what qemu-ga makes there is {wanted})",
            shown.display()
        )));
        return;
    }
    let label = crate::sys::paths::selinux_label(at).unwrap_or_else(|| "no label".into());
    out.push(labelled(
        &format!("{what} {}", shown.display()),
        &label,
        wanted,
        "may not write it, and every freeze would fail",
        fix,
        enforcing,
    ));
}

/// `subject`'s label judged against the type qemu-ga's domain needs: ok,
/// else what the domain is `denied` and `fix`, a problem when enforcing and
/// a note when permissive.
fn labelled(
    subject: &str,
    label: &str,
    wanted: &str,
    denied: &str,
    fix: &str,
    enforcing: bool,
) -> Finding {
    if type_of(label) == Some(wanted) {
        return Finding::Ok(format!("{subject} is labelled {label}"));
    }
    let what = format!(
        "{subject} is labelled {label}, not {wanted}: qemu-ga's SELinux domain {}",
        if enforcing {
            denied
        } else {
            "would be denied it when enforcing"
        }
    );
    if enforcing {
        problem(what, fix)
    } else {
        Finding::Note(format!("{what}; fix: {fix}"))
    }
}

/// The boolean that lets hooks run unconfined: off (the policy's default),
/// they run in qemu-ga's own domain, where a database client is denied its
/// server's socket. A problem when enforcing and a hook will run.
fn unconfined_hooks(root: &Path, enforcing: bool, listing: &list::Listing, out: &mut Vec<Finding>) {
    use crate::sys::selinux::UNCONFINED_BOOLEAN as BOOLEAN;
    let at = in_root(root, &Path::new("/sys/fs/selinux/booleans").join(BOOLEAN));
    let Ok(state) = fs::read_to_string(&at) else {
        return;
    };
    if state.split_whitespace().next() == Some("1") {
        out.push(Finding::Ok(format!(
            "{BOOLEAN} is on: hooks run unconfined"
        )));
        return;
    }
    let runs = listing
        .entries
        .iter()
        .any(|e| matches!(e.verdict, Verdict::Runs { .. }));
    let what = format!(
        "{BOOLEAN} is off: hooks run confined in qemu-ga's own domain, where a database client is denied its server"
    );
    let fix = format!("`setsebool -P {BOOLEAN} on`");
    out.push(if enforcing && runs {
        problem(what, fix)
    } else {
        Finding::Note(format!("{what}; to let them reach it: {fix}"))
    });
}
