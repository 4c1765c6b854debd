//! The whole chain in a real virtual machine: QMP on the host, virtio-serial,
//! qemu-ga in the guest, fsfreeze-hook as its -F hook, FIFREEZE of every
//! guest filesystem (the root included). The guest is assembled from Debian's
//! packages by tests/vm/build-guest and booted with qemu-system-x86_64 under
//! software emulation. Only inside the guest do the "all filesystems" paths
//! run for real. Every guest is killed and its files removed, whatever the
//! outcome.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

// The RHEL family under an enforcing SELinux policy, in a guest of its own.
mod selinux;

// The manual's LVM examples on Debian's kernels, in a guest with device-mapper.
mod lvm;

// Debian booted with systemd, its agent started by its own unit.
mod systemd;

use crate::common::{BIN, eventually, freezing_test};
use crate::qemu_ga::{TestAgent, agents};
use crate::qmp::Qmp;

/// A booted guest; killed and removed on drop.
pub struct Guest {
    dir: tempfile::TempDir,
    qemu: Child,
    pub qmp: Qmp,
    pub new_agent: bool,
    pub who: String,
    /// The control shell's port, once used.
    ctl: Option<std::io::BufReader<std::os::unix::net::UnixStream>>,
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// The qemu-system-x86_64 to boot guests with: the one tests/fetch-qemu
/// unpacked ($FSFREEZE_HOOK_TEST_QEMU, the root it was unpacked into, with
/// its firmware and TCG module beside it), else the one on PATH.
fn qemu_system() -> Command {
    let Ok(root) = std::env::var("FSFREEZE_HOOK_TEST_QEMU") else {
        return Command::new("qemu-system-x86_64");
    };
    let root = Path::new(&root);
    let mut cmd = Command::new(root.join("usr/bin/qemu-system-x86_64"));
    for data in ["usr/share/qemu", "usr/share/seabios", "usr/lib/ipxe/qemu"] {
        cmd.arg("-L").arg(root.join(data));
    }
    cmd.env(
        "QEMU_MODULE_DIR",
        root.join("usr/lib/x86_64-linux-gnu/qemu"),
    );
    cmd
}

fn guest_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fsfreeze-hook-vm.")
        .tempdir()
        .unwrap()
}

/// Which x86_64 guest: the busybox one, the RHEL family's under SELinux
/// (what tests/vm/build-policy built), the busybox one with LVM, or
/// Debian with systemd (the root tests/fetch-qemu made; with our package
/// installed and enabled in the image, as image builders do, when true).
#[derive(Clone, Copy)]
enum Kind<'a> {
    Busybox,
    Selinux(&'a Path),
    Lvm,
    Systemd(&'a Path, bool),
}

impl Kind<'_> {
    /// What the guest's console says once it can be driven.
    fn ready(&self) -> &'static str {
        match self {
            Kind::Systemd(..) => "guest: control shell ready",
            _ => "guest: starting qemu-ga",
        }
    }
}

/// The x86_64 guests' kernels: Debian 12's (`None`: tests/vm/build-guest
/// fetches it) and Debian 13's (what tests/fetch-qemu unpacked), each named.
fn kernels() -> Vec<(Option<PathBuf>, &'static str)> {
    let mut out = vec![(None, "Debian 12's kernel")];
    match std::env::var("FSFREEZE_HOOK_TEST_KERNEL_13") {
        Ok(k) if !k.is_empty() => out.push((Some(PathBuf::from(k)), "Debian 13's kernel")),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: FSFREEZE_HOOK_TEST_KERNEL_13 is set by the test command (tests/fetch-qemu)"
            );
            eprintln!("no Debian 13 kernel (the test command unpacks it): Debian 12's only");
        }
    }
    out
}

/// tests/vm/build-guest into `dir`, with `args` after it, on `kernel`
/// (`None`: Debian 12's).
fn build_guest(dir: &Path, args: &[&std::ffi::OsStr], kind: Kind<'_>, kernel: Option<&Path>) {
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vm/build-guest");
    let mut cmd = Command::new(&build);
    if let Some(k) = kernel {
        cmd.env("KERNEL", k);
    }
    match kind {
        Kind::Busybox => {}
        Kind::Selinux(policy) => {
            cmd.env("SELINUX", policy);
        }
        Kind::Lvm => {
            cmd.env("LVM", "1");
        }
        Kind::Systemd(root, enabled) => {
            cmd.env("SYSTEMD", root);
            if enabled {
                cmd.env("SYSTEMD_IMAGE_ENABLE", "1");
            }
        }
    }
    let out = cmd.arg(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "build-guest: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The qemu-system-aarch64 for the arm64 guest, from the same unpacked
/// qemu (TCG is built into it), else the one on PATH.
fn qemu_system_aarch64() -> Command {
    match std::env::var("FSFREEZE_HOOK_TEST_QEMU") {
        Ok(root) => Command::new(Path::new(&root).join("usr/bin/qemu-system-aarch64")),
        Err(_) => Command::new("qemu-system-aarch64"),
    }
}

impl Guest {
    /// An x86_64 guest of `kind` under `qga`, on `kernel` (`None`: Debian
    /// 12's).
    fn boot_x86(qga: &TestAgent, kind: Kind<'_>, kernel: Option<&Path>) -> Guest {
        qga.announce();
        let dir = guest_dir();
        build_guest(
            dir.path(),
            &[qga.path.as_os_str(), BIN.as_ref()],
            kind,
            kernel,
        );
        let mut qemu = qemu_system();
        qemu.args(["-accel", "tcg", "-M", "pc"]);
        let cmdline = match kind {
            Kind::Busybox | Kind::Lvm | Kind::Systemd(..) => "console=ttyS0 panic=-1",
            Kind::Selinux(_) => "console=ttyS0 panic=-1 security=selinux enforcing=1",
        };
        Guest::start(
            dir,
            qemu,
            cmdline,
            kind.ready(),
            Duration::from_secs(120),
            qga.reports_hook_errors,
            qga.version.clone(),
        )
    }

    /// The arm64 guest: Debian's arm64 kernel and qemu-ga 7.2 (what
    /// tests/fetch-qemu unpacked into `packages`), the arm64 build `bin` as
    /// its hook, on an emulated Cortex-A57.
    fn boot_arm64(packages: &Path, bin: &Path) -> Guest {
        let qga = packages.join("root/usr/sbin/qemu-ga");
        let version = Command::new("qemu-aarch64-static")
            .arg("-L")
            .arg(packages.join("root"))
            .arg(&qga)
            .arg("-V")
            .output()
            .expect("qemu-aarch64-static (qemu-user-static)");
        let who = format!(
            "{} (arm64)",
            String::from_utf8_lossy(&version.stdout).trim()
        );
        println!("under {who}, {}", bin.display());
        let dir = guest_dir();
        build_guest(
            dir.path(),
            &[qga.as_os_str(), bin.as_os_str(), packages.as_os_str()],
            Kind::Busybox,
            None,
        );
        let mut qemu = qemu_system_aarch64();
        qemu.args([
            "-accel",
            "tcg",
            "-M",
            "virt",
            "-cpu",
            "cortex-a57",
            "-nic",
            "none",
        ]);
        Guest::start(
            dir,
            qemu,
            "console=ttyAMA0 panic=-1",
            Kind::Busybox.ready(),
            Duration::from_secs(600),
            false,
            who,
        )
    }

    /// The RHEL family's layout with Fedora's targeted policy enforcing
    /// (`policy`: what tests/vm/build-policy built), on `kernel` (`None`: Debian 12's),
    /// under `qga`, with a control shell on the port "ctl" ([`Guest::ctl`]).
    pub fn boot_selinux(qga: &TestAgent, policy: &Path, kernel: Option<&Path>) -> Guest {
        Guest::boot_x86(qga, Kind::Selinux(policy), kernel)
    }

    /// Runs `script` with sh in the guest's control shell (the kernel's
    /// SELinux domain, which the policy leaves unconfined: an
    /// administrator's root shell); its exit status and output.
    pub fn ctl(&mut self, script: &str) -> (i32, String) {
        use std::io::BufRead;
        self.ctl_send(script);
        let ctl = self.ctl.as_mut().expect("connected by ctl_send");
        let mut out = String::new();
        loop {
            let mut line = String::new();
            let n = ctl
                .read_line(&mut line)
                .expect("the guest's control shell answers");
            assert!(n > 0, "the control shell went away: {out}");
            if let Some(rc) = line
                .trim()
                .strip_prefix("@@RC ")
                .and_then(|r| r.strip_suffix("@@"))
            {
                // The guest adds a newline before the status line.
                out.pop();
                return (rc.parse().unwrap_or(-1), out);
            }
            out.push_str(&line);
        }
    }

    /// Sends `script` to the control shell without waiting for it (one
    /// that powers the guest off answers nothing).
    pub fn ctl_send(&mut self, script: &str) {
        use std::io::Write;
        let ctl = self.ctl.get_or_insert_with(|| {
            let sock = self.dir.path().join("ctl.sock");
            let stream = std::os::unix::net::UnixStream::connect(&sock).expect("ctl.sock");
            stream
                .set_read_timeout(Some(Duration::from_secs(180)))
                .unwrap();
            std::io::BufReader::new(stream)
        });
        let mut w = ctl.get_ref();
        write!(w, "{script}\n@@END@@\n").unwrap();
    }

    /// [`Guest::ctl`] that must succeed; its output.
    pub fn admin(&mut self, script: &str) -> String {
        let (rc, out) = self.ctl(script);
        assert_eq!(rc, 0, "{script}: {out}");
        out
    }

    /// Boots the guest built in `dir` with `qemu` (its accelerator and
    /// machine set), waits up to `boot` for the console to say `ready`, then
    /// for its agent.
    fn start(
        dir: tempfile::TempDir,
        mut qemu: Command,
        cmdline: &str,
        ready: &str,
        boot: Duration,
        new_agent: bool,
        who: String,
    ) -> Guest {
        let p = |n: &str| dir.path().join(n);
        let qemu = qemu
            .args(["-m", "512", "-smp", "1", "-no-reboot", "-nographic"])
            .args(["-monitor", "none", "-kernel"])
            .arg(p("vmlinuz"))
            .arg("-initrd")
            .arg(p("initrd.gz"))
            .args(["-append", cmdline, "-serial"])
            .arg(format!("file:{}", p("console.log").display()))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw",
                p("root.img").display()
            ))
            .arg("-drive")
            .arg(format!(
                "file={},if=virtio,format=raw",
                p("data.img").display()
            ))
            .args(["-device", "virtio-serial", "-chardev"])
            .arg(format!(
                "socket,path={},server=on,wait=off,id=qga",
                p("qga.sock").display()
            ))
            .args([
                "-device",
                "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
                "-chardev",
            ])
            .arg(format!(
                "socket,path={},server=on,wait=off,id=ctl",
                p("ctl.sock").display()
            ))
            .args(["-device", "virtserialport,chardev=ctl,name=ctl"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system (the test command unpacks it: tests/fetch-qemu)");
        let console = p("console.log");
        let booted = eventually(boot, || {
            fs::read_to_string(&console).is_ok_and(|c| c.contains(ready))
        });
        let mut guest = Guest {
            qmp: Qmp::connect(&p("qga.sock"), Duration::from_secs(120), &console),
            ctl: None,
            qemu,
            new_agent,
            who,
            dir,
        };
        assert!(booted, "guest did not boot: {}", guest.console());
        guest.qmp.sync_delimited(Duration::from_secs(60));
        guest
    }

    pub fn console(&self) -> String {
        fs::read_to_string(self.dir.path().join("console.log")).unwrap_or_default()
    }

    fn image(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn call(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        self.qmp.call(command, arguments)
    }

    /// Runs `script` with the guest's sh; returns its exit code and output.
    fn sh(&mut self, script: &str) -> (i64, String) {
        let pid = self
            .call(
                "guest-exec",
                json!({"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}),
            )
            .unwrap_or_else(|e| panic!("guest-exec: {e}"))["pid"]
            .clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let st = self.call("guest-exec-status", json!({"pid": pid})).unwrap();
            if st["exited"] == true {
                let out = st["out-data"].as_str().map(base64).unwrap_or_default();
                let err = st["err-data"].as_str().map(base64).unwrap_or_default();
                return (st["exitcode"].as_i64().unwrap_or(-1), out + &err);
            }
            assert!(
                Instant::now() < deadline,
                "guest command never ended: {script}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ok(&mut self, script: &str) -> String {
        let (code, out) = self.sh(script);
        assert_eq!(code, 0, "{script}: {out}");
        out
    }

    pub fn freeze(&mut self) -> Result<Value, String> {
        self.call("guest-fsfreeze-freeze", json!({}))
    }

    pub fn thaw(&mut self) -> Result<Value, String> {
        self.call("guest-fsfreeze-thaw", json!({}))
    }

    pub fn status(&mut self) -> String {
        self.call("guest-fsfreeze-status", json!({}))
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    fn trace(&mut self) -> Vec<String> {
        self.ok("cat /run/trace 2>/dev/null; :")
            .lines()
            .map(String::from)
            .collect()
    }
}

/// Standard base64, for guest-exec's output.
fn base64(text: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.bytes().filter(|&c| c != b'=') {
        let Some(v) = A.iter().position(|&a| a == c) else {
            continue;
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A hook that traces its phase (on tmpfs) and writes a file into both the
/// root and the xfs filesystem: possible only while they are not frozen.
fn tracing_hook(g: &mut Guest, name: &str, extra: &str) {
    g.ok(&format!(
        "cat > /etc/qemu/fsfreeze-hook.d/{name} <<'EOF'\n#!/bin/sh\n\
         echo \"{name} $1 rollback=$FSFREEZE_ROLLBACK\" >> /run/trace\n\
         echo x > /{name}.$1\necho x > /data/{name}.$1\n{extra}\nEOF\n\
         chmod 755 /etc/qemu/fsfreeze-hook.d/{name}"
    ));
}

/// Whether the filesystem at `mnt` is frozen, without a write: FIFREEZE
/// (busybox fsfreeze) fails with EBUSY on a frozen one; one that froze is
/// thawed again at once.
fn frozen(g: &mut Guest, mnt: &str) -> bool {
    let (code, _) = g.sh(&format!(
        "fsfreeze --freeze {mnt} && fsfreeze --unfreeze {mnt}"
    ));
    code != 0
}

fn scenarios(qga: &TestAgent, kernel: Option<&Path>) {
    let mut g = Guest::boot_x86(qga, Kind::Busybox, kernel);
    let new_agent = g.new_agent;
    let kernel_release = g.ok("busybox uname -r");
    let who = format!("{} on {}", g.who, kernel_release.trim());
    tracing_hook(&mut g, "10-a", "");
    tracing_hook(&mut g, "20-b", "");

    cycle_and_rollback(&mut g);

    // A hanging hook: cut off by our timeout (5 s, grace 1 s, in the
    // guest's config); the agent answers; the next cycle works.
    tracing_hook(
        &mut g,
        "30-hang",
        "[ \"$1\" = freeze ] && while :; do sleep 1; done; exit 0",
    );
    let start = Instant::now();
    let err = g.freeze().expect_err("the freeze must fail");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(40),
        "{who}: {took:?}"
    );
    if new_agent {
        assert!(err.contains("30-hang timed out after 5s"), "{who}: {err}");
    }
    assert_eq!(g.status(), "thawed");
    g.ok("rm -f /etc/qemu/fsfreeze-hook.d/30-hang /run/trace");
    g.freeze().unwrap();
    g.thaw().unwrap();
    assert_eq!(g.trace().len(), 4, "{who}: the next cycle runs every hook");
    g.ok("rm -f /run/trace");

    // A hook that leaves a lock holder running: the freeze returns promptly
    // under both agents; the holder lives until the thaw.
    tracing_hook(
        &mut g,
        "30-holder",
        "case \"$1\" in\nfreeze) rm -f /run/stop /run/holder.log; ( while [ ! -e /run/stop ]; do sleep 0.1; done; echo stopped-by-thaw > /run/holder.log ) & echo $! > /run/holder ;;\nthaw) touch /run/stop ;;\nesac",
    );
    let start = Instant::now();
    g.freeze().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{who}: freeze took {:?}",
        start.elapsed()
    );
    // (guest-exec is refused while frozen: the holder proves it lived until
    // the thaw by what it writes when the thaw hook stops it.)
    g.thaw().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || g
            .sh("grep -q stopped-by-thaw /run/holder.log")
            .0
            == 0),
        "{who}: the holder ends at thaw"
    );
    g.ok("rm -f /etc/qemu/fsfreeze-hook.d/30-holder /run/trace");

    // Standalone inside the guest, without -m: every filesystem, root
    // included, frozen around COMMAND.
    let out = g.ok("/etc/qemu/fsfreeze-hook snapshot -- sh -c 'fsfreeze --freeze / ; echo root-probe=$?; fsfreeze --freeze /data; echo data-probe=$?'");
    assert!(
        out.contains("root-probe=1") && out.contains("data-probe=1"),
        "{who}: COMMAND saw both frozen: {out}"
    );
    assert!(!frozen(&mut g, "/") && !frozen(&mut g, "/data"));
    // kill -9 of the runner while frozen: the watchdog thaws, from memory
    // and tmpfs only.
    g.ok("rm -f /run/trace; /etc/qemu/fsfreeze-hook snapshot -- sleep 60 >/dev/null 2>&1 & echo $! > /run/runner");
    assert!(
        eventually(Duration::from_secs(30), || g
            .sh("grep -q fs-frozen /run/fsfreeze-hook/journal")
            .0
            == 0),
        "{who}: the snapshot never froze"
    );
    g.ok("kill -9 $(cat /run/runner)");
    let killed = Instant::now();
    assert!(
        eventually(Duration::from_secs(2), || !frozen(&mut g, "/")),
        "{who}: root still frozen 2 s after kill -9"
    );
    eprintln!(
        "{who}: thawed {:?} after kill -9 (guest command latency included)",
        killed.elapsed()
    );
    assert!(!frozen(&mut g, "/data"));
    assert!(
        eventually(Duration::from_secs(20), || g.trace().len() == 4),
        "{who}: watchdog ran the thaw hooks"
    );

    guard_thaws_when_no_thaw_comes(&mut g, &who);
    host_side_copies(&mut g, &who);
}

/// One cycle of every filesystem (root included) with hooks 10-a and 20-b
/// around it, then a failing hook rolled back with nothing frozen.
fn cycle_and_rollback(g: &mut Guest) {
    let new_agent = g.new_agent;
    let who = g.who.clone();
    // A cycle: every filesystem frozen, root included; hooks before and
    // after, in order and reverse; all filesystems take writes afterwards.
    let n = g.freeze().unwrap_or_else(|e| panic!("{who}: {e}"));
    assert!(n.as_u64().unwrap() >= 2, "{who}: root and /data: {n}");
    // (guest-exec is refused while qemu-ga holds a freeze; its status says.)
    assert_eq!(g.status(), "frozen");
    g.thaw().unwrap();
    assert_eq!(
        g.trace(),
        [
            "10-a freeze rollback=0",
            "20-b freeze rollback=0",
            "20-b thaw rollback=0",
            "10-a thaw rollback=0"
        ],
        "{who}"
    );
    g.ok("touch /written /data/written && ls /10-a.thaw /data/20-b.freeze");
    let log = g.ok("cat /var/log/qga-fsfreeze-hook.log");
    assert!(
        log.contains(": freeze finished in") && log.contains(": thaw finished in"),
        "{log}"
    );
    g.ok("rm -f /run/trace");

    // A failing hook: the agent's error names it (9.1+); nothing frozen;
    // earlier hooks rolled back.
    tracing_hook(g, "30-fail", "[ \"$1\" = freeze ] && exit 1; exit 0");
    let err = g.freeze().expect_err("the freeze must fail");
    if new_agent {
        assert!(
            err.contains("freeze aborted: 30-fail exited with status 1"),
            "{who}: {err}"
        );
    } else {
        assert!(
            err.contains("fsfreeze hook has failed with status"),
            "{who}: {err}"
        );
    }
    assert_eq!(g.status(), "thawed");
    assert!(!frozen(g, "/") && !frozen(g, "/data"));
    assert_eq!(
        g.trace(),
        [
            "10-a freeze rollback=0",
            "20-b freeze rollback=0",
            "30-fail freeze rollback=0",
            "30-fail thaw rollback=1",
            "20-b thaw rollback=1",
            "10-a thaw rollback=1"
        ],
        "{who}"
    );
    g.ok("rm -f /etc/qemu/fsfreeze-hook.d/30-fail /run/trace");
}

/// The host freezes every filesystem (root included) and never thaws: the
/// guard thaws the guest after max_frozen (5 s here), whatever the guest's
/// clock does meanwhile, a write waiting inside completes, the host's late thaw is answered and runs no hook again, and
/// the next cycle works.
fn guard_thaws_when_no_thaw_comes(g: &mut Guest, who: &str) {
    g.ok("rm -f /run/trace; echo 'max_frozen = \"5s\"' >> /etc/qemu/fsfreeze-hook.conf");
    // Started before the freeze: a second in, it moves the clock an hour
    // ahead (the guard's deadline is on the monotonic clock: it must not
    // thaw then); then it writes while frozen and says on the serial console
    // (which the host reads) when its write went through.
    g.ok("( sleep 1; date -s @$(( $(date +%s) + 3600 )); sleep 2; echo x > /after-guard; echo x > /data/after-guard; echo 'guest: write after the guard completed' > /dev/console ) >/dev/null 2>&1 &");
    g.freeze().unwrap_or_else(|e| panic!("{who}: {e}"));
    let frozen_at = Instant::now();
    let completed = eventually(Duration::from_secs(60), || {
        g.console()
            .contains("guest: write after the guard completed")
    });
    let took = frozen_at.elapsed();
    assert!(completed, "{who}: the guest never thawed itself");
    assert!(
        took >= Duration::from_secs(4),
        "{who}: thawed after {took:?}"
    );
    eprintln!("{who}: the guard thawed the guest {took:?} after the freeze");
    // qemu-ga still holds its freeze until the host's thaw, which it answers.
    assert_eq!(g.status(), "frozen");
    g.thaw().unwrap_or_else(|e| panic!("{who}: late thaw: {e}"));
    let rolled_back = [
        "10-a freeze rollback=0",
        "20-b freeze rollback=0",
        "20-b thaw rollback=1",
        "10-a thaw rollback=1",
    ];
    assert_eq!(g.trace(), rolled_back, "{who}");
    let log = g.ok("cat /var/log/qga-fsfreeze-hook.log");
    assert!(
        log.contains("thawed by max_frozen after 5s: no thaw came from the hypervisor")
            && log.contains("the guard had already thawed"),
        "{who}: {log}"
    );
    // The next cycle is an ordinary one.
    g.freeze().unwrap();
    g.thaw().unwrap();
    assert_eq!(g.trace().len(), 8, "{who}: {:?}", g.trace());
    assert_eq!(
        g.trace()[6..],
        ["20-b thaw rollback=0", "10-a thaw rollback=0"]
    );
    g.ok("sed -i '/max_frozen/d' /etc/qemu/fsfreeze-hook.conf; rm -f /run/trace; date -s @$(( $(date +%s) - 3600 )) >/dev/null");
}

/// Images copied by the host while the guest is frozen (under a steady
/// write load) are clean filesystems; copies taken without a freeze are
/// reported beside them.
fn host_side_copies(g: &mut Guest, who: &str) {
    g.ok("rm -f /run/stopload; ( i=0; while [ ! -e /run/stopload ]; do i=$((i+1)); echo $i > /data/f$((i % 64)); echo $i > /f$((i % 64)); done ) >/dev/null 2>&1 &");
    std::thread::sleep(Duration::from_secs(2));
    let copy = |g: &Guest, from: &str, to: &str| {
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(g.image(from))
            .arg(g.image(to))
            .status()
            .unwrap();
        assert!(status.success());
    };
    g.freeze().unwrap();
    copy(g, "root.img", "root-frozen.img");
    copy(g, "data.img", "data-frozen.img");
    g.thaw().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    copy(g, "root.img", "root-live.img");
    copy(g, "data.img", "data-live.img");
    g.ok("touch /run/stopload");
    let fsck = |img: PathBuf| Command::new("e2fsck").arg("-fn").arg(img).output().unwrap();
    // A frozen XFS keeps its last changes in the (covered) log, as XFS does:
    // the copy is consistent once the log is replayed, which any mount does.
    // So mount it once (on the host, loop, read-write), then check it.
    let repair = |img: PathBuf| {
        let mnt = img.with_extension("mnt");
        fs::create_dir_all(&mnt).unwrap();
        let mount = Command::new("mount")
            .args(["-o", "loop,nouuid"])
            .arg(&img)
            .arg(&mnt)
            .output()
            .unwrap();
        if mount.status.success() {
            let _ = Command::new("umount").arg(&mnt).status();
        } else {
            eprintln!(
                "{who}: mount {}: {}",
                img.display(),
                String::from_utf8_lossy(&mount.stderr).trim()
            );
        }
        Command::new("xfs_repair")
            .arg("-n")
            .arg(img)
            .output()
            .unwrap()
    };
    let root = fsck(g.image("root-frozen.img"));
    assert!(
        root.status.success(),
        "{who}: e2fsck of the frozen copy: {}",
        String::from_utf8_lossy(&root.stdout)
    );
    let data = repair(g.image("data-frozen.img"));
    assert!(
        data.status.success(),
        "{who}: xfs_repair -n of the frozen copy: {}",
        String::from_utf8_lossy(&data.stderr)
    );
    let live_root = fsck(g.image("root-live.img"));
    let live_data = repair(g.image("data-live.img"));
    eprintln!(
        "{who}: copies under write load: frozen: e2fsck clean, xfs_repair clean; live: e2fsck exit {}, xfs_repair exit {}",
        live_root.status.code().unwrap_or(-1),
        live_data.status.code().unwrap_or(-1)
    );
}

#[test]
#[ignore = "needs root"]
fn whole_chain_in_a_real_guest_under_each_agent() {
    let _exclusive = freezing_test("vm");
    // As root, agents() fails when there is none: this loop never runs empty.
    let start = Instant::now();
    for (kernel, _) in kernels() {
        for qga in agents() {
            scenarios(&qga, kernel.as_deref());
        }
    }
    eprintln!("boots and scenarios took {:?}", start.elapsed());
}

#[test]
#[ignore = "needs root"]
fn arm64_guest_freezes_rolls_back_and_thaws_itself() {
    // The arm64 build in Debian's arm64 guest, under its qemu-ga 7.2: the
    // whole cycle of every filesystem, a failing hook rolled back, and the
    // guard's thaw when no thaw comes.
    let _exclusive = freezing_test("vm_arm64");
    let ci = std::env::var("CI").as_deref() == Ok("true");
    let (Ok(packages), Ok(bin)) = (
        std::env::var("FSFREEZE_HOOK_TEST_ARM64_GUEST"),
        std::env::var("FSFREEZE_HOOK_TEST_ARM64_BIN"),
    ) else {
        assert!(
            !ci,
            "CI=true: FSFREEZE_HOOK_TEST_ARM64_GUEST and _BIN are set by the test command"
        );
        eprintln!("no arm64 guest packages or build (the test command provides them): not run");
        return;
    };
    let start = Instant::now();
    let mut g = Guest::boot_arm64(Path::new(&packages), Path::new(&bin));
    let who = g.who.clone();
    eprintln!("{who}: booted in {:?}", start.elapsed());
    let arch = g.ok("busybox uname -m");
    assert_eq!(arch.trim(), "aarch64", "{who}");
    tracing_hook(&mut g, "10-a", "");
    tracing_hook(&mut g, "20-b", "");
    cycle_and_rollback(&mut g);
    guard_thaws_when_no_thaw_comes(&mut g, &who);
    eprintln!("{who}: boot and cycle took {:?}", start.elapsed());
}
