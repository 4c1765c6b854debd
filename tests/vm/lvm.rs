//! The LVM examples of docs/standalone.md, run as written, in the busybox guest with
//! device-mapper, Debian's lvm2 and PostgreSQL on Debian's kernel: a volume
//! group on the guest's second disk, ext4 on a plain volume and on a thin
//! one. The classic snapshot is taken under an insert load on PostgreSQL
//! with the shipped 30-postgresql hook: a PostgreSQL started on the snapshot
//! holds every row committed before the snapshot began. The thin one under
//! an application that a hook holds (it writes numbered lines; the hook
//! stops it and waits until it says which line was its last): the snapshot
//! holds every line written before the hold and none after. Both are clean
//! by e2fsck. The form without `--command-freezes` fails where a FIFREEZEd
//! filesystem cannot be suspended (Debian 12's 6.1), says what to do, and
//! leaves no device suspended.

use std::time::Instant;

use super::{Guest, Kind};
use crate::common::freezing_test;
use crate::qemu_ga::agents;

/// The application and the hook that holds it (FLUSH TABLES WITH READ LOCK
/// in spirit): the writer appends 1, 2, 3, ... to `app.log` on the mount it
/// is given; while /run/app.hold exists it writes nothing and says its last
/// number in /run/app.held.
const SETUP: &str = r#"
set -e
exec 2>&1
uname -r
lvm version | head -1
pvcreate -q -y /dev/vdb
vgcreate -q vg /dev/vdb
lvcreate -q -y -n db -L 100M vg
mkfs.ext4 -q /dev/vg/db
mkdir -p /srv/db /srv/thin /mnt/snap
mount -t ext4 /dev/vg/db /srv/db
lvcreate -q -y --type thin-pool -L 120M -n pool vg
lvcreate -q -y -V 100M --thin -n thin vg/pool
mkfs.ext4 -q /dev/vg/thin
mount -t ext4 /dev/vg/thin /srv/thin
ln -sf /etc/qemu/fsfreeze-hook /sbin/fsfreeze-hook
cat > /sbin/app <<'EOF'
#!/bin/sh
n=0
while [ ! -e /run/app.stop ]; do
    if [ -e /run/app.hold ]; then
        [ -e /run/app.held ] || { echo $n > /run/app.held.new; mv /run/app.held.new /run/app.held; }
        sleep 0.05
        continue
    fi
    n=$((n+1))
    echo $n >> "$1/app.log"
done
EOF
chmod 755 /sbin/app
mkdir -p /srv/db/pg /run/pg /run/pg2
chown postgres:postgres /srv/db/pg /run/pg /run/pg2
su -s /bin/sh postgres -c "TZ=UTC initdb -D /srv/db/pg -U postgres --auth=trust --locale=C -E UTF8" >/run/pg/initdb.log 2>&1 || { cat /run/pg/initdb.log; exit 1; }
su -s /bin/sh postgres -c "TZ=UTC pg_ctl -D /srv/db/pg -l /run/pg/log -o \"-k /run/pg -c listen_addresses=''\" -w start" >/dev/null || { cat /run/pg/log; exit 1; }
psql -X -q -h /run/pg -U postgres -c "CREATE TABLE x (id INT PRIMARY KEY)"
fsfreeze-hook example 30-postgresql > /etc/qemu/fsfreeze-hook.d/30-postgresql
chmod 755 /etc/qemu/fsfreeze-hook.d/30-postgresql
cat > /etc/qemu/fsfreeze-hook.d/10-app <<'EOF'
#!/bin/sh
[ -e /run/app.running ] || exit 0
case "$1" in
freeze)
    rm -f /run/app.held
    touch /run/app.hold
    i=0
    while [ ! -e /run/app.held ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
    [ -e /run/app.held ] || { echo "the application did not stop"; exit 1; }
    echo "application held after line $(cat /run/app.held)" ;;
thaw)
    rm -f /run/app.hold ;;
esac
EOF
chmod 755 /etc/qemu/fsfreeze-hook.d/10-app
"#;

/// The two LVM examples of docs/standalone.md (classic, thin), without
/// `fsfreeze-hook `.
fn manual_examples() -> [String; 2] {
    let found: Vec<String> = crate::common::manual("docs/standalone.md")
        .lines()
        .filter_map(|l| l.strip_prefix("fsfreeze-hook snapshot --command-freezes "))
        .map(|rest| format!("snapshot --command-freezes {rest}"))
        .collect();
    assert_eq!(found.len(), 2, "the manual's LVM examples: {found:?}");
    assert!(
        found[0].contains("-L 2G vg/db") && found[1].ends_with("vg/thin"),
        "{found:?}"
    );
    [found[0].clone(), found[1].clone()]
}

/// Runs `snapshot` (the manual's words after `fsfreeze-hook`) with the
/// application writing to `mount`; its exit status, output, and the last
/// line the application wrote before the hold.
fn snapshot_under_load(g: &mut Guest, mount: &str, words: &str) -> (i64, String, u64) {
    g.ok(&format!(
        "rm -f /run/app.stop /run/app.hold /run/app.held {mount}/app.log; touch /run/app.running; ( /sbin/app {mount} ) >/dev/null 2>&1 & sleep 1"
    ));
    let (code, out) = g.sh(&format!("fsfreeze-hook {words} 2>&1"));
    let held = g.ok(
        "touch /run/app.stop; sleep 0.3; rm -f /run/app.running; cat /run/app.held 2>/dev/null || echo 0",
    );
    (code, out, held.trim().parse().unwrap_or(0))
}

/// The snapshot `lv` (activated first: a thin snapshot is created with
/// activation skipped) is clean by e2fsck and holds lines 1..=held of the
/// application's log; returns e2fsck's summary.
fn restores(g: &mut Guest, lv: &str, held: u64, who: &str) -> String {
    let fsck = clean_by_e2fsck(g, lv, who);
    let log = g.ok(&format!(
        "mount -t ext4 -o ro /dev/vg/{lv} /mnt/snap && wc -l < /mnt/snap/app.log && tail -n 1 /mnt/snap/app.log; umount /mnt/snap"
    ));
    let lines: Vec<&str> = log.split_whitespace().collect();
    assert!(
        held > 0,
        "{who}: the application wrote nothing before the hold"
    );
    assert_eq!(
        lines,
        [held.to_string(), held.to_string()],
        "{who}: {lv} must hold lines 1..={held} of the application's log (count, last)"
    );
    g.ok(&format!("lvremove -q -f vg/{lv}"));
    fsck
}

/// Snapshot `lv`, activated first (a thin snapshot is created with
/// activation skipped), is clean by `e2fsck -fn`; its summary line.
fn clean_by_e2fsck(g: &mut Guest, lv: &str, who: &str) -> String {
    let out = g.ok(&format!(
        "lvchange -q -ay -K vg/{lv}; e2fsck -fn /dev/vg/{lv} 2>&1; echo \"e2fsck exit $?\""
    ));
    assert!(out.contains("e2fsck exit 0"), "{who}: {lv}: {out}");
    out.lines()
        .find(|l| l.contains("files"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Runs `snapshot` (`words`) under an insert load on PostgreSQL (one
/// committed row at a time, each acknowledged id noted); its exit status,
/// output, and the ids acknowledged before the snapshot began.
fn snapshot_under_inserts(g: &mut Guest, words: &str) -> (i64, String, Vec<u32>) {
    g.ok(
        "rm -f /run/load.stop /run/acked; touch /run/acked; ( i=0; while [ ! -e /run/load.stop ]; do i=$((i+1)); psql -X -q -h /run/pg -U postgres -c \"INSERT INTO x VALUES ($i)\" >/dev/null 2>&1 && echo $i >> /run/acked; done ) >/dev/null 2>&1 & sleep 5",
    );
    let (code, out) = g.sh(&format!(
        "cp /run/acked /run/acked.before; PGHOST=/run/pg PGUSER=postgres fsfreeze-hook {words} 2>&1"
    ));
    let before = g.ok("sleep 1; touch /run/load.stop; sleep 1; cat /run/acked.before");
    let ids = before
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    (code, out, ids)
}

/// A PostgreSQL started on snapshot `lv` (after the original stopped: its
/// lock file names the original's pid) holds every id in `acknowledged`;
/// the snapshot is clean by e2fsck first. Returns a line for the report.
fn postgres_restores(g: &mut Guest, lv: &str, acknowledged: &[u32], who: &str) -> String {
    assert!(
        !acknowledged.is_empty(),
        "{who}: no row committed before the snapshot"
    );
    let fsck = clean_by_e2fsck(g, lv, who);
    g.ok("su -s /bin/sh postgres -c \"pg_ctl -D /srv/db/pg -m fast -t 100 -w stop\" >/dev/null");
    let ids = g.ok(&format!(
        "mount -t ext4 /dev/vg/{lv} /mnt/snap && su -s /bin/sh postgres -c \"TZ=UTC pg_ctl -D /mnt/snap/pg -l /run/pg2/log -o \\\"-k /run/pg2 -c listen_addresses=''\\\" -w start\" >/dev/null && psql -X -At -h /run/pg2 -U postgres -c 'SELECT id FROM x ORDER BY id'"
    ));
    let log = g.ok("cat /run/pg2/log");
    g.ok(&format!(
        "su -s /bin/sh postgres -c \"pg_ctl -D /mnt/snap/pg -m fast -t 100 -w stop\" >/dev/null; i=0; until umount /mnt/snap 2>/dev/null; do i=$((i+1)); [ $i -lt 100 ] || {{ umount /mnt/snap; exit 1; }}; sleep 0.2; done; lvremove -q -f vg/{lv}"
    ));
    let have: std::collections::HashSet<u32> =
        ids.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let missing: Vec<&u32> = acknowledged.iter().filter(|i| !have.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "{who}: committed before the snapshot, missing from it: {missing:?}"
    );
    format!(
        "{} rows committed before the snapshot, all there ({} rows in it); crash recovery at start: {}; {}",
        acknowledged.len(),
        have.len(),
        if log.contains("automatic recovery in progress") {
            "yes"
        } else {
            "no"
        },
        fsck
    )
}

/// No device-mapper device is left suspended, and `mount` takes a write.
fn nothing_suspended(g: &mut Guest, mount: &str, who: &str) {
    let states = g.ok("cat /sys/block/dm-*/dm/suspended | tr -d '\\n'");
    assert!(
        states.chars().all(|c| c == '0'),
        "{who}: a device is left suspended: {states}: {}",
        g.ok("dmsetup info -c 2>&1")
    );
    let (code, out) = g.sh(&format!("timeout 10 sh -c 'echo probe > {mount}/probe'"));
    assert_eq!(code, 0, "{who}: {mount} takes no write: {out}");
}

#[test]
#[ignore = "needs root"]
fn the_manuals_lvm_examples_on_debians_kernels() {
    let _exclusive = freezing_test("vm_lvm");
    // One agent is enough: the guest's agent plays no part in `snapshot`.
    let Some(qga) = agents().into_iter().next() else {
        return;
    };
    for (kernel, _) in super::kernels() {
        lvm_cases(&qga, kernel.as_deref());
    }
}

/// The cases on one kernel (`None`: Debian 12's).
fn lvm_cases(qga: &crate::qemu_ga::TestAgent, kernel: Option<&std::path::Path>) {
    let start = Instant::now();
    let mut g = Guest::boot_x86(qga, Kind::Lvm, kernel);
    let setup = g.ok(SETUP);
    let kernel = setup.lines().next().unwrap_or("").to_string();
    let who = format!("Debian's kernel {kernel}");
    eprintln!("{who}: {}", setup.lines().nth(1).unwrap_or(""));

    // The manual's examples, classic and thin, as it is written there.
    let [classic, thin] = manual_examples();
    let classic = classic.as_str();
    let (code, out, acknowledged) = snapshot_under_inserts(&mut g, classic);
    eprintln!("{who}: $ fsfreeze-hook {classic}\n{out}exit {code}");
    assert_eq!(code, 0, "{who}: {out}");
    let log = g.ok("tail -n 12 /var/log/qga-fsfreeze-hook.log");
    assert!(
        log.contains("/srv/db not frozen here: COMMAND freezes it itself (device-mapper vg-db")
            && log.contains("30-postgresql: CHECKPOINT done"),
        "{who}: {log}"
    );
    let report = postgres_restores(&mut g, "db-snap", &acknowledged, &who);
    eprintln!("{who}: classic snapshot, PostgreSQL: {report}");
    nothing_suspended(&mut g, "/srv/db", &who);

    let thin = thin.as_str();
    let (code, out, held) = snapshot_under_load(&mut g, "/srv/thin", thin);
    eprintln!("{who}: $ fsfreeze-hook {thin}\n{out}exit {code}");
    assert_eq!(code, 0, "{who}: {out}");
    let fsck = restores(&mut g, "thin-snap", held, &who);
    eprintln!("{who}: thin snapshot: e2fsck clean ({fsck}), lines 1..={held} there");
    nothing_suspended(&mut g, "/srv/thin", &who);

    // Not on device-mapper: refused, nothing frozen.
    let (code, out) = g.sh("fsfreeze-hook snapshot --command-freezes -m / -- true 2>&1");
    assert_eq!(code, 125, "{who}: {out}");
    assert!(out.contains("/ is not on device-mapper"), "{who}: {out}");

    // Without --command-freezes our FIFREEZE comes first; on kernels whose
    // freezes do not nest, lvcreate's own suspend then fails.
    let nests = !kernel.starts_with("6.1.");
    // (The manual's examples as they were before the option.)
    for (mount, words) in [("/srv/db", classic), ("/srv/thin", thin)] {
        let words = &words
            .replace("--command-freezes ", "")
            .replace("-snap ", "-old ");
        let (code, out, held) = snapshot_under_load(&mut g, mount, words);
        eprintln!("{who}: $ fsfreeze-hook {words}\n{out}exit {code}");
        if nests {
            // device-mapper's freeze nests on ours: it works, and restores.
            assert_eq!(code, 0, "{who}: {out}");
            let lv = words.split(" -n ").nth(1).and_then(|r| r.split(' ').next());
            let fsck = restores(&mut g, lv.unwrap_or_default(), held, &who);
            eprintln!(
                "{who}: without --command-freezes: e2fsck clean ({fsck}), lines 1..={held} there"
            );
        } else {
            assert_eq!(code, 5, "{who}: lvcreate's status: {out}");
            assert!(
                out.contains("run snapshot with --command-freezes"),
                "{who}: {out}"
            );
        }
        nothing_suspended(&mut g, mount, &who);
        // What the failed lvcreate left in the volume group goes.
        let _ = g.sh("lvremove -q -f vg/db-old vg/thin-old 2>&1");
    }
    eprintln!("{who}: LVM cases took {:?}", start.elapsed());
}
