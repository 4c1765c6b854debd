//! What SELinux does to hooks, read from the kernel's own files: the domain
//! this process runs in and the policy's boolean for hooks.

use std::fs;

/// The boolean of Fedora's and RHEL's policy that lets qemu-ga's hooks run
/// unconfined (`virt_qemu_ga_unconfined_t`); off by default.
pub const UNCONFINED_BOOLEAN: &str = "virt_qemu_ga_run_unconfined";

/// Said with a failed hook when the policy runs hooks confined: this process
/// is in qemu-ga's domain (`virt_qemu_ga_t`), SELinux enforces, and the
/// boolean is off, so a hook that talks to a database server is denied.
pub fn confined_hooks_note() -> Option<String> {
    let enforcing = fs::read_to_string("/sys/fs/selinux/enforce").ok()?;
    let domain = fs::read_to_string("/proc/self/attr/current").ok()?;
    let boolean =
        fs::read_to_string(format!("/sys/fs/selinux/booleans/{UNCONFINED_BOOLEAN}")).ok()?;
    let confined = enforcing.trim() == "1"
        && domain.split(':').nth(2) == Some("virt_qemu_ga_t")
        && boolean.split_whitespace().next() == Some("0");
    confined.then(|| {
        format!(
            "SELinux runs hooks confined in virt_qemu_ga_t, where a database client is denied its server ({UNCONFINED_BOOLEAN} is off): setsebool -P {UNCONFINED_BOOLEAN} on"
        )
    })
}
