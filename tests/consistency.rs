//! The proof that the MariaDB example makes snapshots that restore: MariaDB
//! with its data on a loop-mounted ext4 the test made, under a steady insert
//! load, copied by `snapshot -m <mount> -- cp --sparse=always <image> <copy>`
//! with the example hook. A second MariaDB started on the copy must start and
//! hold every row committed before the freeze and none committed after it.
//! The same copy taken without hook and freeze is reported beside it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::{Env, Run, freezing_test};
use crate::databases::{Mariadb, run_with, use_example};
use crate::loopfs::LoopFs;

/// Inserts ids 1, 2, 3, ... one transaction each, and records when each
/// commit was acknowledged.
struct Load {
    stop: Arc<AtomicBool>,
    committed: Arc<Mutex<Vec<(u32, Instant)>>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Load {
    fn start(insert: impl Fn(u32) -> Command + Send + 'static) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (stop.clone(), committed.clone());
        let thread = thread::spawn(move || {
            let mut id = 1;
            while !s.load(Ordering::Relaxed) {
                let ok = insert(id)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|st| st.success());
                if ok {
                    c.lock().unwrap().push((id, Instant::now()));
                    id += 1;
                } else {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        });
        Load {
            stop,
            committed,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Vec<(u32, Instant)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.committed.lock().unwrap().clone()
    }
}

/// `snapshot -m <its mount> -- cp --sparse=always <its image> <copy>` of the
/// test's filesystem, with the hooks' `vars`.
fn snapshot_copy(env: &Env, vars: &[(&str, String)], fs: &LoopFs, copy: &Path) -> Run {
    let m = fs.mnt.display().to_string();
    let image = fs.image.display().to_string();
    let copy = copy.display().to_string();
    run_with(
        env,
        vars,
        &[
            "snapshot",
            "-m",
            &m,
            "--",
            "cp",
            "--sparse=always",
            &image,
            &copy,
        ],
    )
}

/// The same copy of the live filesystem, without hook or freeze.
fn live_copy(fs: &LoopFs, copy: &Path) {
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .arg(&fs.image)
        .arg(copy)
        .status()
        .unwrap();
    assert!(copied.success());
}

/// The ids whose commit was acknowledged before `t`.
fn ids_before(committed: &[(u32, Instant)], t: Instant) -> Vec<u32> {
    committed
        .iter()
        .filter(|(_, at)| *at < t)
        .map(|(i, _)| *i)
        .collect()
}

/// What a MariaDB started on a copy of the image shows.
#[derive(Debug)]
struct Restored {
    ids: Vec<u32>,
    recovery: bool,
}

/// Mounts `image` at `mnt` and starts a MariaDB on its data dir.
fn restore(env: &Env, image: &Path, tag: &str) -> Result<Restored, String> {
    let fs = LoopFs::try_mount(image, &env.path().join(format!("{tag}-mnt")))?;
    let mut db = Mariadb::on(
        &fs.mnt.join("data"),
        &env.path().join(format!("{tag}-run")),
        false,
    )?;
    let out = db
        .command("SELECT id FROM t.x ORDER BY id")
        .output()
        .map_err(|e| e.to_string())?;
    let ids = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let log = db.error_log();
    let recovery =
        log.contains("crash recovery") || log.contains("Starting final batch to recover");
    db.stop();
    Ok(Restored { ids, recovery })
}

#[test]
#[ignore = "needs root"]
fn mariadb_snapshot_with_the_example_hook_restores_exactly_what_was_committed() {
    let _exclusive = freezing_test("mariadb_consistency");
    let env = Env::new();
    use_example(&env, "20-mariadb");
    let fs = LoopFs::make(env.path(), "ext4", &env.path().join("dbfs"));
    let mut db = Mariadb::on(&fs.mnt.join("data"), &env.path().join("run"), true).unwrap();
    db.sql("CREATE DATABASE t; CREATE TABLE t.x (id INT PRIMARY KEY) ENGINE=InnoDB");
    let insert_db = db
        .command("SELECT 1")
        .get_args()
        .map(|a| a.to_os_string())
        .collect::<Vec<_>>();
    let load = Load::start(move |id| {
        let mut c = Command::new("mariadb");
        // The same connection options as the test's client, another statement.
        c.args(&insert_db[..insert_db.len() - 1])
            .arg(format!("INSERT INTO t.x VALUES ({id})"));
        c
    });
    thread::sleep(Duration::from_millis(1500));

    // With the hook and the freeze.
    let copy = env.path().join("with-freeze.img");
    let before = Instant::now();
    let run = snapshot_copy(&env, &db.vars("5m"), &fs, &copy);
    let after = Instant::now();
    assert_eq!(run.code, Some(0), "{run:?}");
    thread::sleep(Duration::from_millis(500));

    // Without: the same copy of a live filesystem.
    let raw = env.path().join("without-freeze.img");
    let raw_start = Instant::now();
    live_copy(&fs, &raw);
    thread::sleep(Duration::from_millis(300));
    let committed = load.finish();
    db.stop();

    let frozen =
        restore(&env, &copy, "frozen").expect("the snapshot mounts and MariaDB starts on it");
    let n = frozen.ids.len() as u32;
    assert!(n > 0, "rows were committed before the freeze");
    assert_eq!(
        frozen.ids,
        (1..=n).collect::<Vec<_>>(),
        "a consistent prefix of the inserts"
    );
    let before_ids: Vec<u32> = ids_before(&committed, before);
    let after_ids: Vec<u32> = committed
        .iter()
        .filter(|(_, t)| *t > after)
        .map(|(i, _)| *i)
        .collect();
    assert!(
        before_ids.iter().all(|i| *i <= n),
        "every row committed before the freeze is in the snapshot"
    );
    assert!(
        after_ids.iter().all(|i| *i > n),
        "no row committed after the thaw is in the snapshot"
    );
    assert!(!after_ids.is_empty(), "the load went on after the thaw");
    eprintln!(
        "with hook and freeze: starts, {} rows 1..={n}, none missing, none from after the thaw; InnoDB crash recovery at start: {}",
        frozen.ids.len(),
        if frozen.recovery {
            "yes (redo applied, nothing lost)"
        } else {
            "no"
        }
    );

    // The comparison is a report: a live copy may or may not survive.
    let last = committed.last().map_or(0, |(i, _)| *i);
    let raw_committed_before: Vec<u32> = ids_before(&committed, raw_start);
    match restore(&env, &raw, "live") {
        Ok(r) => {
            let have: std::collections::HashSet<u32> = r.ids.iter().copied().collect();
            let lost = raw_committed_before
                .iter()
                .filter(|i| !have.contains(i))
                .count();
            let max = r.ids.iter().max().copied().unwrap_or(0);
            let holes = (1..=max).filter(|i| !have.contains(i)).count();
            eprintln!(
                "without hook and freeze: starts, {} rows (max id {max}, {holes} holes), {lost} of {} rows committed before the copy began missing; crash recovery: {}; {last} rows committed in all",
                r.ids.len(),
                raw_committed_before.len(),
                if r.recovery { "yes" } else { "no" }
            );
        }
        Err(e) => eprintln!("without hook and freeze: does not restore: {e}"),
    }
}

/// Redis persisting by RDB alone (a save rule, appendonly no, as Debian's
/// redis.conf ships), its data on a loop-mounted ext4, under a load of one
/// SET a command; `snapshot` copies the image with 40-redis at its defaults
/// (which then SAVEs). A Redis started on the copy holds every key whose SET
/// was acknowledged before the freeze phase began.
#[test]
#[ignore = "needs root"]
fn redis_snapshot_with_the_example_hook_restores_every_acknowledged_write() {
    use crate::databases::Redis;
    let _exclusive = freezing_test("redis_consistency");
    let env = Env::new();
    use_example(&env, "40-redis");
    let fs = LoopFs::make(env.path(), "ext4", &env.path().join("redisfs"));
    let redis = Redis::start_persisting(&fs.mnt.join("redis"), "3600 1", "no");
    let socket = redis.socket();
    let load = Load::start(move |id| {
        let mut c = Command::new("redis-cli");
        c.arg("-s")
            .arg(&socket)
            .args(["SET", &format!("k{id}"), "v"]);
        c
    });
    thread::sleep(Duration::from_millis(1500));
    let copy = env.path().join("copy.img");
    let vars = vec![(
        "FSFREEZE_REDIS_SOCKET",
        redis.socket().display().to_string(),
    )];
    let before = Instant::now();
    let run = snapshot_copy(&env, &vars, &fs, &copy);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(
        run.log.contains("40-redis: saved the data set (RDB alone"),
        "{}",
        run.log
    );
    thread::sleep(Duration::from_millis(300));
    let committed = load.finish();
    redis.stop();
    let acknowledged: Vec<u32> = ids_before(&committed, before);
    assert!(
        !acknowledged.is_empty(),
        "writes were acknowledged before the freeze"
    );

    let restored_fs = LoopFs::mount(&copy, &env.path().join("restored"));
    let restored = Redis::start_persisting(&restored_fs.mnt.join("redis"), "", "no");
    let missing: Vec<u32> = acknowledged
        .iter()
        .copied()
        .filter(|i| restored.try_cli(&["EXISTS", &format!("k{i}")]).as_deref() != Some("1"))
        .collect();
    let keys = restored.try_cli(&["DBSIZE"]).unwrap_or_default();
    restored.stop();
    assert!(
        missing.is_empty(),
        "acknowledged before the freeze, missing from the copy: {missing:?}"
    );
    eprintln!(
        "redis (RDB alone), 40-redis at its defaults: {} writes acknowledged before the freeze, all {} present in the copy ({keys} keys in it)",
        acknowledged.len(),
        acknowledged.len()
    );
}

/// WAL replayed at a PostgreSQL start, in bytes: from "redo starts at A" to
/// "redo done at B" in `log` (LSNs as HI/LO hex); 0 when no redo ran.
fn wal_replayed(log: &str) -> u64 {
    let lsn = |word: &str| {
        let (hi, lo) = word.split_once('/')?;
        Some((u64::from_str_radix(hi, 16).ok()? << 32) + u64::from_str_radix(lo, 16).ok()?)
    };
    let after = |marker: &str| {
        log.lines()
            .filter_map(|l| l.split_once(marker))
            .filter_map(|(_, rest)| lsn(rest.split_whitespace().next()?))
            .next_back()
    };
    match (after("redo starts at "), after("redo done at ")) {
        (Some(a), Some(b)) if b >= a => b - a,
        _ => 0,
    }
}

/// What a PostgreSQL started on a copy of the image shows: the ids, whether
/// it had to recover, and how much WAL it replayed.
fn restore_postgres(env: &Env, image: &Path, tag: &str) -> (Vec<u32>, bool, u64) {
    use crate::databases::Postgres;
    let fs = LoopFs::mount(image, &env.path().join(format!("{tag}-mnt")));
    let dir = fs.mnt.join("pg");
    let old = std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .len();
    let mut db = Postgres::on_existing(&dir);
    let ids = db
        .sql("SELECT id FROM x ORDER BY id")
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let log = db.log()[old..].to_string();
    db.stop();
    let recovery = log.contains("automatic recovery in progress");
    (ids, recovery, wal_replayed(&log))
}

/// PostgreSQL, its data on a loop-mounted ext4, under an insert load (each
/// commit acknowledged when durable, synchronous_commit on); `snapshot`
/// copies the image with 30-postgresql (a CHECKPOINT at the freeze). A
/// PostgreSQL started on the copy holds every row committed before the
/// freeze phase began; how much WAL it replays, with and without the hook.
#[test]
#[ignore = "needs root"]
fn postgresql_snapshot_with_the_example_hook_restores_every_committed_row() {
    use crate::databases::Postgres;
    let _exclusive = freezing_test("postgresql_consistency");
    let env = Env::new();
    use_example(&env, "30-postgresql");
    let fs = LoopFs::make(env.path(), "ext4", &env.path().join("pgfs"));
    let mut db = Postgres::start(&fs.mnt.join("pg"));
    db.sql("CREATE TABLE x (id INT PRIMARY KEY, pad TEXT)");
    let host = fs.mnt.join("pg");
    let load = Load::start(move |id| {
        let mut c = Command::new("psql");
        c.args(["-X", "-At", "-U", "postgres", "-h"])
            .arg(&host)
            .args([
                "-c",
                &format!("INSERT INTO x VALUES ({id}, repeat('x', 2000))"),
            ]);
        c
    });
    thread::sleep(Duration::from_millis(2000));
    let copy = env.path().join("with-freeze.img");
    let before = Instant::now();
    let run = snapshot_copy(&env, &db.vars(), &fs, &copy);
    assert_eq!(run.code, Some(0), "{run:?}");
    thread::sleep(Duration::from_millis(500));
    // Without: the same copy of the live filesystem, and no CHECKPOINT.
    let raw = env.path().join("without-freeze.img");
    live_copy(&fs, &raw);
    thread::sleep(Duration::from_millis(300));
    let committed = load.finish();
    db.stop();

    let (ids, recovery, replayed) = restore_postgres(&env, &copy, "frozen");
    let have: std::collections::HashSet<u32> = ids.iter().copied().collect();
    let acknowledged: Vec<u32> = ids_before(&committed, before);
    assert!(
        !acknowledged.is_empty(),
        "rows were committed before the freeze"
    );
    let missing: Vec<&u32> = acknowledged.iter().filter(|i| !have.contains(i)).collect();
    assert!(
        missing.is_empty(),
        "committed before the freeze, missing from the copy: {missing:?}"
    );
    eprintln!(
        "postgresql, 30-postgresql: {} rows committed before the freeze, all present ({} rows in the copy); crash recovery at start: {}; WAL replayed: {} KiB",
        acknowledged.len(),
        ids.len(),
        if recovery { "yes" } else { "no" },
        replayed / 1024
    );
    // The comparison is a report.
    let (raw_ids, raw_recovery, raw_replayed) = restore_postgres(&env, &raw, "live");
    eprintln!(
        "postgresql, live copy without hook and freeze: {} rows; crash recovery: {}; WAL replayed: {} KiB",
        raw_ids.len(),
        if raw_recovery { "yes" } else { "no" },
        raw_replayed / 1024
    );
}
