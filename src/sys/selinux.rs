//! What SELinux does to hooks, read from the kernel's own files: the domain
//! this process runs in and the policy's boolean for hooks.

use std::fs;

/// The boolean of Fedora's and RHEL's policy that lets qemu-ga's hooks run
/// unconfined (`virt_qemu_ga_unconfined_t`); off by default.
pub const UNCONFINED_BOOLEAN: &str = "virt_qemu_ga_run_unconfined";

/// Said with a failed hook whose words (`said`) tell of a denied access,
/// when the policy may have run it confined: this process runs in qemu-ga's
/// domain (`virt_qemu_ga_t`), and the boolean that lets hooks run
/// unconfined is not known to be on. That domain may not read selinuxfs
/// (silently: the policy does not audit it), so the boolean may be unknown.
pub fn confined_hooks_note(said: &str) -> Option<String> {
    let domain = fs::read_to_string("/proc/self/attr/current").ok()?;
    if domain.split(':').nth(2) != Some("virt_qemu_ga_t") {
        return None;
    }
    let first = |path: &str| {
        fs::read_to_string(path)
            .ok()
            .and_then(|t| t.split_whitespace().next().map(str::to_string))
    };
    let permissive = first("/sys/fs/selinux/enforce").is_some_and(|e| e == "0");
    let on =
        first(&format!("/sys/fs/selinux/booleans/{UNCONFINED_BOOLEAN}")).is_some_and(|b| b == "1");
    let denied = said.to_ascii_lowercase().contains("denied") || said.contains("(13)");
    (denied && !permissive && !on).then(|| {
        format!(
            "SELinux runs hooks confined in virt_qemu_ga_t unless {UNCONFINED_BOOLEAN} is on, and denies a database client its server there: setsebool -P {UNCONFINED_BOOLEAN} on"
        )
    })
}

/// The label qemu-ga's domain needs on what it writes in /run (its policy's
/// type transition gives a dir it makes there this type).
const AGENT_RUN_CONTEXT: &str = "system_u:object_r:virt_qemu_ga_var_run_t:s0";

/// Runs `make` (which creates root's state dir) so that what it creates is
/// labelled as qemu-ga's domain may write it: a state dir that root's shell
/// makes first (`rehearse`, `status`, `hold`) would otherwise be plain
/// `var_run_t`, and every later freeze by qemu-ga would be refused. Only
/// where SELinux's policy knows the type, and only for root outside qemu-ga's
/// own domain `virt_qemu_ga_t` (there the policy's transition does it; a
/// runner in `virt_qemu_ga_unconfined_t` would make plain `var_run_t`).
pub fn creating_for_agent<T>(make: impl FnOnce() -> T) -> T {
    const FSCREATE: &str = "/proc/thread-self/attr/fscreate";
    let outside_agent = fs::read_to_string("/proc/self/attr/current")
        .is_ok_and(|d| d.split(':').nth(2) != Some("virt_qemu_ga_t"));
    let set = super::is_root()
        && outside_agent
        && fs::metadata("/sys/fs/selinux/enforce").is_ok()
        && fs::write(FSCREATE, AGENT_RUN_CONTEXT).is_ok();
    let made = make();
    if set {
        // An empty write puts the default labelling back.
        if let Ok(f) = fs::OpenOptions::new().write(true).open(FSCREATE) {
            let _ = nix::unistd::write(&f, b"");
        }
    }
    made
}
