//! The example hooks against real servers: private MariaDB, PostgreSQL and
//! Redis instances in temp dirs, on unix sockets only (no network, no
//! systemd), started and stopped by the tests. The test command installs
//! mariadb-server, postgresql and redis-server from Debian's packages.

use std::fs;
use std::ops::Not;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Env, assert_has, assert_lines, eventually, require_root};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hooks.d-examples");

/// Copies one example into the env's hooks dir.
pub fn use_example(env: &Env, name: &str) {
    let to = env.hooks.join(name);
    fs::copy(Path::new(EXAMPLES).join(name), &to).unwrap();
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn run_with(env: &Env, vars: &[(&str, String)], args: &[&str]) -> crate::common::Run {
    let start = Instant::now();
    let mut cmd = env.command(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    env.finish(cmd.output().unwrap(), start)
}

/// No fsfreeze-hook keeper and no held-session file is left.
fn nothing_left(env: &Env) {
    let held = env.state.join("held");
    let files: Vec<_> = fs::read_dir(&held)
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(files.is_empty(), "held sessions left: {files:?}");
}

// ---- MariaDB ------------------------------------------------------------------

pub struct Mariadb {
    dir: PathBuf,
    server: Option<Child>,
}

impl Mariadb {
    /// A new server with its data in `<dir>/data`, and a table `t.x`.
    pub fn start(dir: &Path) -> Mariadb {
        let db = Mariadb::on(&dir.join("data"), dir, true).unwrap_or_else(|e| panic!("{e}"));
        db.sql("CREATE DATABASE t; CREATE TABLE t.x (id INT PRIMARY KEY) ENGINE=InnoDB");
        db
    }

    /// A server on the data dir `data` (made first when `fresh`), with its
    /// socket, error log and temp dir in `dir`. Fails when it does not come
    /// up. Each instance has its own temp dir: a starting mariadbd removes
    /// the `#sql*` files it finds in its tmpdir, which in a shared /tmp are
    /// another instance's live temporary tables (seen: a concurrent
    /// mariadb-install-db aborting with "Unknown table 'mysql.tmp_user_sys'").
    pub fn on(data: &Path, dir: &Path, fresh: bool) -> Result<Mariadb, String> {
        let tmp = dir.join("tmp");
        fs::create_dir_all(&tmp).unwrap();
        let tmpdir = format!("--tmpdir={}", tmp.display());
        if fresh {
            fs::create_dir_all(data).unwrap();
            sh(Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(&tmpdir)
                .arg(format!("--datadir={}", data.display()))
                .args([
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                ]));
        }
        let mut db = Mariadb {
            dir: dir.to_path_buf(),
            server: None,
        };
        db.server = Some(
            Command::new("mariadbd")
                .arg("--no-defaults")
                .arg(&tmpdir)
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", db.socket().display()))
                .arg(format!("--log-error={}", dir.join("error.log").display()))
                .arg(format!("--pid-file={}", dir.join("pid").display()))
                .args(["--skip-networking", "--user=root"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        if !eventually(Duration::from_secs(30), || {
            db.client("SELECT 1").status.success()
        }) {
            return Err(format!("mariadbd did not start: {}", db.error_log()));
        }
        Ok(db)
    }

    pub fn error_log(&self) -> String {
        fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    pub fn command(&self, sql: &str) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-uroot", "--batch", "--skip-column-names", "-e", sql]);
        c
    }

    fn client(&self, sql: &str) -> std::process::Output {
        self.command(sql).output().unwrap()
    }

    pub fn sql(&self, sql: &str) -> String {
        sh(&mut self.command(sql))
    }

    pub fn vars(&self, max_hold: &str) -> Vec<(&'static str, String)> {
        vec![
            ("FSFREEZE_MYSQL_SOCKET", self.socket().display().to_string()),
            ("FSFREEZE_MYSQL_MAX_HOLD", max_hold.to_string()),
            ("FSFREEZE_MYSQL_LOCK_WAIT", "5".to_string()),
        ]
    }

    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(s.id() as i32),
                nix::sys::signal::SIGTERM,
            );
            let deadline = Instant::now() + Duration::from_secs(30);
            while s.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A write from another client that the lock should hold back.
fn blocked_insert(db: &Mariadb, id: u32) -> Child {
    db.command(&format!("INSERT INTO t.x VALUES ({id})"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn still_running(child: &mut Child, for_at_least: Duration) -> bool {
    std::thread::sleep(for_at_least);
    child.try_wait().unwrap().is_none()
}

#[test]
#[ignore = "needs root"]
fn mariadb_read_lock_is_held_from_freeze_to_thaw() {
    require_root("mariadb_example");
    let env = Env::new();
    use_example(&env, "20-mariadb");
    let mut db = Mariadb::start(&env.path().join("mariadb"));
    let vars = db.vars("5m");
    for cycle in 1..=2u32 {
        let run = run_with(&env, &vars, &["freeze"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(
            run.elapsed < Duration::from_secs(5),
            "freeze took {:?}",
            run.elapsed
        );
        let mut insert = blocked_insert(&db, cycle);
        assert!(
            still_running(&mut insert, Duration::from_secs(1)),
            "a write went through while frozen"
        );
        assert_eq!(
            db.sql("SELECT COUNT(*) FROM t.x"),
            (cycle - 1).to_string(),
            "reads work while frozen"
        );
        let run = run_with(&env, &vars, &["thaw"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(
            insert.wait().unwrap().success(),
            "the write completes after the thaw"
        );
        assert_eq!(db.sql("SELECT COUNT(*) FROM t.x"), cycle.to_string());
        nothing_left(&env);
    }
    // A thaw without a freeze, as qemu-ga sends: fine.
    assert_eq!(run_with(&env, &vars, &["thaw"]).code, Some(0));
    // No thaw at all: the max hold lets go.
    let vars = db.vars("2s");
    assert_eq!(run_with(&env, &vars, &["freeze"]).code, Some(0));
    let mut insert = blocked_insert(&db, 10);
    assert!(still_running(&mut insert, Duration::from_millis(500)));
    assert!(
        eventually(Duration::from_secs(10), || insert
            .try_wait()
            .unwrap()
            .is_some()),
        "max hold did not release"
    );
    assert!(eventually(Duration::from_secs(3), || env
        .log_text()
        .contains("hold mariadb: max hold of 2s expired")));
    nothing_left(&env);
    // Server stopped: the hook passes quickly and says why.
    db.stop();
    let run = run_with(&env, &vars, &["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
    assert_lines(&run.log, "20-mariadb: server not running", 1);
    assert_eq!(run_with(&env, &vars, &["thaw"]).code, Some(0));
}

#[test]
#[ignore = "needs root"]
fn mariadb_credentials_from_a_defaults_file_as_the_quick_start_sets_them() {
    // FSFREEZE_MYSQL_DEFAULTS_FILE as the quick start's drop-in sets it
    // (Debian's /etc/mysql/debian.cnf has this shape): a user, its password
    // and the socket in a [client] group; nothing else tells the hook where
    // the server is.
    require_root("mariadb_defaults_file");
    let env = Env::new();
    use_example(&env, "20-mariadb");
    let db = Mariadb::start(&env.path().join("mariadb"));
    db.sql(
        "CREATE USER 'backup'@'localhost' IDENTIFIED BY 'secret'; GRANT RELOAD ON *.* TO 'backup'@'localhost'",
    );
    let cnf = env.path().join("backup.cnf");
    fs::write(
        &cnf,
        format!(
            "[client]\nuser=backup\npassword=secret\nsocket={}\n",
            db.socket().display()
        ),
    )
    .unwrap();
    fs::set_permissions(&cnf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let vars = [
        ("FSFREEZE_MYSQL_DEFAULTS_FILE", cnf.display().to_string()),
        ("FSFREEZE_MYSQL_MAX_HOLD", "1m".to_string()),
        ("FSFREEZE_MYSQL_LOCK_WAIT", "5".to_string()),
    ];
    let run = run_with(&env, &vars, &["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_lines(&run.log, "20-mariadb: server not running", 0);
    let mut insert = blocked_insert(&db, 1);
    assert!(
        still_running(&mut insert, Duration::from_secs(1)),
        "the lock is held by the user the file names"
    );
    let run = run_with(&env, &vars, &["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(insert.wait().unwrap().success());
    nothing_left(&env);
}

#[test]
#[ignore = "needs root"]
fn mariadb_lock_that_cannot_be_taken_fails_the_freeze() {
    require_root("mariadb_lock_fails");
    let env = Env::new();
    use_example(&env, "20-mariadb");
    env.tracing_hook("10-app", "");
    let db = Mariadb::start(&env.path().join("mariadb"));
    // A table locked by another session blocks FLUSH TABLES WITH READ LOCK.
    let mut blocker = db
        .command("LOCK TABLES t.x WRITE; SELECT SLEEP(30)")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    // Until the other session holds the table (no fixed sleep).
    assert!(
        eventually(Duration::from_secs(30), || db
            .sql("SHOW OPEN TABLES FROM t WHERE In_use > 0")
            .contains('x')),
        "the blocking session never locked t.x"
    );
    let mut vars = db.vars("5m");
    vars.push(("FSFREEZE_MYSQL_LOCK_WAIT", "2".to_string()));
    let run = run_with(&env, &vars, &["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(&run.stderr, "20-mariadb exited with status 1");
    assert_has(&run.log, "Lock wait timeout exceeded");
    assert_eq!(
        env.trace(),
        ["10-app freeze rollback=0", "10-app thaw rollback=1"]
    );
    let _ = blocker.kill();
    let _ = blocker.wait();
    nothing_left(&env);
}

// ---- PostgreSQL ---------------------------------------------------------------

/// `args` run as the postgres user.
fn as_postgres(args: &[&str]) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--"]).args(args);
    c
}

pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    running: bool,
    port: u16,
}

impl Postgres {
    fn bin() -> PathBuf {
        fs::read_dir("/usr/lib/postgresql")
            .expect("postgresql (the test command installs it)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .max()
            .unwrap()
    }

    /// Starts the server whose data dir is `<dir>/data` as it is (a copy):
    /// its socket and log in `dir`.
    pub fn on_existing(dir: &Path) -> Postgres {
        Postgres::on_existing_at(dir, None)
    }

    /// As [`Postgres::on_existing`]; with `tcp`, it also listens on
    /// 127.0.0.1 at that port (its socket named for the port too).
    fn on_existing_at(dir: &Path, tcp: Option<u16>) -> Postgres {
        let bin = Postgres::bin();
        // A copy of a running server's files names the original postmaster
        // (here still a zombie of this machine); a restored machine has none.
        let _ = fs::remove_file(dir.join("data/postmaster.pid"));
        let _ = fs::remove_file(dir.join(".s.PGSQL.5432.lock"));
        let _ = fs::remove_file(dir.join(".s.PGSQL.5432"));
        let opts = match tcp {
            None => format!("-k {} -c listen_addresses=''", dir.display()),
            Some(port) => format!(
                "-k {} -c listen_addresses=127.0.0.1 -c port={port}",
                dir.display()
            ),
        };
        let out = as_postgres(&[
            bin.join("pg_ctl").to_str().unwrap(),
            "-D",
            dir.join("data").to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            dir.join("log").to_str().unwrap(),
            "-w",
            "start",
        ])
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start on {}: {}{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(dir.join("log")).unwrap_or_default()
        );
        Postgres {
            dir: dir.to_path_buf(),
            bin,
            running: true,
            port: tcp.unwrap_or(5432),
        }
    }

    /// The server's log.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub fn start(dir: &Path) -> Postgres {
        let bin = Postgres::bin();
        fs::create_dir_all(dir).unwrap();
        nix::unistd::chown(
            dir,
            nix::unistd::User::from_name("postgres")
                .unwrap()
                .map(|u| u.uid),
            None,
        )
        .unwrap();
        sh(&mut as_postgres(&[
            bin.join("initdb").to_str().unwrap(),
            "-D",
            dir.join("data").to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]));
        Postgres::on_existing(dir)
    }

    /// A new server that also listens on 127.0.0.1, at a port free now.
    pub fn start_on_tcp(dir: &Path) -> Postgres {
        let mut db = Postgres::start(dir);
        db.stop();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Postgres::on_existing_at(dir, Some(port))
    }

    pub fn sql(&self, sql: &str) -> String {
        sh(Command::new("psql")
            .args(["-X", "-At", "-U", "postgres", "-h"])
            .arg(&self.dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", sql]))
    }

    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("PGHOST", self.dir.display().to_string()),
            ("PGUSER", "postgres".to_string()),
        ]
    }

    pub fn stop(&mut self) {
        if self.running {
            let _ = as_postgres(&[self.bin.join("pg_ctl").to_str().unwrap()])
                .args([
                    "-D",
                    self.dir.join("data").to_str().unwrap(),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ])
                .output();
            self.running = false;
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
#[ignore = "needs root"]
fn postgresql_checkpoint_runs_before_the_freeze() {
    require_root("postgresql_example");
    let env = Env::new();
    use_example(&env, "30-postgresql");
    let mut pg = Postgres::start(&env.path().join("pg"));
    pg.sql("CREATE TABLE x (id int)");
    let checkpoints = || {
        pg.sql("SELECT checkpoints_req FROM pg_stat_bgwriter")
            .parse::<u64>()
            .unwrap()
    };
    let before = checkpoints();
    let vars = pg.vars();
    for _ in 0..2 {
        let run = run_with(&env, &vars, &["freeze"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        assert!(run.elapsed < Duration::from_secs(10));
        assert_has(&run.log, "30-postgresql: CHECKPOINT done");
        // No lock is held: PostgreSQL is crash-safe, writes go on (the
        // filesystem freeze itself is what stops them).
        pg.sql("INSERT INTO x VALUES (1)");
        assert_eq!(run_with(&env, &vars, &["thaw"]).code, Some(0));
    }
    assert_eq!(checkpoints(), before + 2, "one CHECKPOINT per freeze");
    pg.stop();
    let run = run_with(&env, &vars, &["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    assert_lines(&run.log, "30-postgresql: server not running", 1);
}

// ---- Redis ----------------------------------------------------------------------

pub struct Redis {
    dir: PathBuf,
}

impl Redis {
    /// A server that persists nothing (no save rule, appendonly no).
    fn start(dir: &Path) -> Redis {
        Redis::start_persisting(dir, "", "no")
    }

    /// A server with the save rule `save` and `appendonly`.
    pub fn start_persisting(dir: &Path, save: &str, appendonly: &str) -> Redis {
        Redis::start_with(dir, save, appendonly, 0)
    }

    /// A server that persists nothing and also listens on 127.0.0.1, at a
    /// port free now; and that port.
    fn start_on_tcp(dir: &Path) -> (Redis, u16) {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        (Redis::start_with(dir, "", "no", port), port)
    }

    /// Its unix socket always; TCP on 127.0.0.1 at `port` unless 0.
    fn start_with(dir: &Path, save: &str, appendonly: &str, port: u16) -> Redis {
        fs::create_dir_all(dir).unwrap();
        let r = Redis {
            dir: dir.to_path_buf(),
        };
        sh(Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--unixsocket",
            ])
            .arg(r.socket())
            .args([
                "--daemonize",
                "yes",
                "--save",
                save,
                "--appendonly",
                appendonly,
                "--dir",
            ])
            .arg(dir)
            .arg("--pidfile")
            .arg(dir.join("pid")));
        assert!(eventually(Duration::from_secs(10), || r.try_cli(&["PING"])
            == Some("PONG".into())));
        r
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }

    fn cli_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("redis-cli");
        c.arg("-s").arg(self.socket()).args(args);
        c
    }

    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = self.cli_command(args).output().ok()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Ends the server by its pid (a SHUTDOWN could be refused: a password
    /// set by a test, a pause).
    pub fn stop(&self) {
        if let Some(pid) = fs::read_to_string(self.dir.join("pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            let pid = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL);
            let gone = eventually(Duration::from_secs(5), || {
                nix::sys::signal::kill(pid, None).is_err()
                    || crate::common::alive(pid.as_raw()).not()
            });
            assert!(gone, "redis-server {pid} did not end");
        }
        let _ = fs::remove_file(self.dir.join("pid"));
        let _ = fs::remove_file(self.socket());
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
#[ignore = "needs root"]
fn redis_writes_pause_from_freeze_to_thaw() {
    require_root("redis_example");
    let env = Env::new();
    use_example(&env, "40-redis");
    let redis = Redis::start(&env.path().join("redis"));
    let mut vars = vec![(
        "FSFREEZE_REDIS_SOCKET",
        redis.socket().display().to_string(),
    )];
    redis.try_cli(&["SET", "k", "0"]);
    for cycle in 1..=2 {
        let run = run_with(&env, &vars, &["freeze"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        let mut set = redis
            .cli_command(&["SET", "k", &cycle.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        assert!(
            still_running(&mut set, Duration::from_secs(1)),
            "a write went through while paused"
        );
        assert_eq!(
            redis.try_cli(&["GET", "k"]).unwrap(),
            (cycle - 1).to_string(),
            "reads work"
        );
        assert_eq!(run_with(&env, &vars, &["thaw"]).code, Some(0));
        assert!(set.wait().unwrap().success());
        assert_eq!(redis.try_cli(&["GET", "k"]).unwrap(), cycle.to_string());
    }
    assert_eq!(
        run_with(&env, &vars, &["thaw"]).code,
        Some(0),
        "thaw without freeze"
    );
    // No thaw: the pause ends by itself after the max hold.
    vars.push(("FSFREEZE_REDIS_MAX_HOLD", "2".to_string()));
    assert_eq!(run_with(&env, &vars, &["freeze"]).code, Some(0));
    let mut set = redis
        .cli_command(&["SET", "k", "late"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(still_running(&mut set, Duration::from_millis(500)));
    assert!(
        eventually(Duration::from_secs(10), || set
            .try_wait()
            .unwrap()
            .is_some()),
        "pause never ended"
    );
    redis.stop();
    let run = run_with(&env, &vars, &["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert!(run.elapsed < Duration::from_secs(5));
    assert_lines(&run.log, "40-redis: server not running", 1);
}

#[test]
#[ignore = "needs root"]
fn redis_saves_at_the_freeze_where_it_persists_by_rdb_alone() {
    require_root("redis_save_default");
    let env = Env::new();
    use_example(&env, "40-redis");
    // (mode, save rule, appendonly, FSFREEZE_REDIS_SAVE, saved?, said)
    let cases = [
        (
            "rdb",
            "3600 1",
            "no",
            None,
            true,
            "saved the data set (RDB alone",
        ),
        (
            "rdb-opt-out",
            "3600 1",
            "no",
            Some("0"),
            false,
            "no SAVE (FSFREEZE_REDIS_SAVE=0",
        ),
        ("aof", "", "yes", None, false, "no SAVE (appendonly yes"),
        (
            "none",
            "",
            "no",
            None,
            false,
            "no SAVE (no persistence configured",
        ),
        (
            "none-forced",
            "",
            "no",
            Some("1"),
            true,
            "saved the data set (FSFREEZE_REDIS_SAVE=1",
        ),
    ];
    for (mode, save, aof, choice, saved, said) in cases {
        let redis = Redis::start_persisting(&env.path().join(mode), save, aof);
        let mut vars = vec![(
            "FSFREEZE_REDIS_SOCKET",
            redis.socket().display().to_string(),
        )];
        if let Some(c) = choice {
            vars.push(("FSFREEZE_REDIS_SAVE", c.to_string()));
        }
        redis.try_cli(&["SET", "k", "acknowledged"]);
        let before = redis.try_cli(&["LASTSAVE"]).unwrap();
        // LASTSAVE counts in seconds: a save now must be a later second.
        std::thread::sleep(Duration::from_millis(1100));
        let run = run_with(&env, &vars, &["freeze"]);
        assert_eq!(run.code, Some(0), "{mode}: {run:?}");
        let after = redis.try_cli(&["LASTSAVE"]).unwrap();
        assert_eq!(
            before != after,
            saved,
            "{mode}: LASTSAVE {before} -> {after}"
        );
        assert_has(&run.log, &format!("40-redis: {said}"));
        if saved {
            // The RDB file holds the write: a server started on a copy of
            // it finds it.
            let copy = env.path().join(format!("{mode}-copy"));
            fs::create_dir_all(&copy).unwrap();
            fs::copy(
                env.path().join(mode).join("dump.rdb"),
                copy.join("dump.rdb"),
            )
            .unwrap();
            let restored = Redis::start_persisting(&copy, "", "no");
            assert_eq!(
                restored.try_cli(&["GET", "k"]).as_deref(),
                Some("acknowledged"),
                "{mode}"
            );
        }
        assert_eq!(run_with(&env, &vars, &["thaw"]).code, Some(0));
    }
}

// ---- the generic service example ---------------------------------------------------

#[test]
fn service_example_passes_quickly_without_systemd_or_services() {
    let env = Env::new();
    use_example(&env, "50-systemd-service");
    let run = run_with(&env, &[], &["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_lines(&run.log, "FSFREEZE_SERVICES is empty; nothing to pause", 1);
    let run = run_with(&env, &[], &["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_lines(&run.log, "FSFREEZE_SERVICES is empty; nothing to resume", 1);
    let services = [("FSFREEZE_SERVICES", "app.service".into())];
    let run = run_with(&env, &services, &["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    let run = run_with(&env, &services, &["thaw"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    if !Path::new("/run/systemd/system").exists() {
        assert_lines(&run.log, "not running under systemd; nothing to pause", 1);
        assert_lines(&run.log, "not running under systemd; nothing to resume", 1);
    }
}

#[test]
#[ignore = "needs root"]
fn postgresql_and_redis_examples_fail_the_freeze_when_the_server_refuses() {
    require_root("pg_redis_refuse");
    let env = Env::new();
    use_example(&env, "30-postgresql");
    use_example(&env, "40-redis");
    env.tracing_hook("10-app", "");
    let pg = Postgres::start(&env.path().join("pg"));
    // A role that may log in but not CHECKPOINT (PostgreSQL 15: superuser or
    // pg_checkpoint only).
    pg.sql("CREATE ROLE app LOGIN");
    let mut vars = pg.vars();
    vars.retain(|(k, _)| *k != "PGUSER");
    vars.push(("PGUSER", "app".into()));
    vars.push(("PGDATABASE", "postgres".into()));
    let run = run_with(&env, &vars, &["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(&run.log, "30-postgresql: CHECKPOINT failed:");
    assert_eq!(
        env.trace(),
        ["10-app freeze rollback=0", "10-app thaw rollback=1"]
    );
    env.clear_trace();
    // Redis with a password the hook was not given.
    let redis = Redis::start(&env.path().join("redis"));
    redis.try_cli(&["CONFIG", "SET", "requirepass", "secret"]);
    let mut vars = pg.vars();
    vars.push((
        "FSFREEZE_REDIS_SOCKET",
        redis.socket().display().to_string(),
    ));
    let run = run_with(&env, &vars, &["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(
        run.log
            .contains("40-redis: server answers but not PONG: NOAUTH"),
        "{}",
        run.log
    );
    // With the password in a root-only file, it works.
    let auth = env.path().join("redis.auth");
    fs::write(&auth, "secret").unwrap();
    vars.push(("FSFREEZE_REDIS_AUTH_FILE", auth.display().to_string()));
    let run = run_with(&env, &vars, &["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_eq!(run_with(&env, &vars, &["thaw"]).code, Some(0));
}

// ---- benchmark: the real databases, parallel or not ------------------------------

/// Not a test: a benchmark run by hand (README, "Benchmark"), skipped by the
/// test command. MariaDB held by 20-mariadb, PostgreSQL's CHECKPOINT (under a
/// write load that gives it work) by 30-postgresql, Redis paused and saved by
/// 40-redis; a MariaDB writer inserts row after row, and the longest wait
/// between two of its completed inserts during one freeze/0.2 s/thaw cycle
/// is reported, with `parallel = false` and `true`, median of 3 cycles each.
/// It fails only if a cycle fails, never on a number.
#[test]
#[ignore = "benchmark, by hand: cargo test --test integration bench_ -- --ignored --nocapture"]
fn bench_real_databases_writer_wait_parallel_or_not() {
    require_root("bench_databases");
    let env = Env::new();
    for hook in ["20-mariadb", "30-postgresql", "40-redis"] {
        use_example(&env, hook);
    }
    let db = Mariadb::start(&env.path().join("mariadb"));
    db.sql("CREATE TABLE t.w (id INT AUTO_INCREMENT PRIMARY KEY, at DOUBLE) ENGINE=InnoDB");
    let pg = Postgres::start(&env.path().join("pg"));
    pg.sql("CREATE TABLE big (id int, pad text)");
    let redis = Redis::start(&env.path().join("redis"));
    // 1M keys of 100 bytes: its SAVE takes a while.
    redis.try_cli(&[
        "EVAL",
        "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'k' .. i, string.rep('x', 100)) end return 1",
        "0",
        "1000000",
    ]);
    assert_eq!(redis.try_cli(&["DBSIZE"]).as_deref(), Some("1000000"));
    let mut vars = db.vars("5m");
    vars.extend(pg.vars());
    vars.push((
        "FSFREEZE_REDIS_SOCKET",
        redis.socket().display().to_string(),
    ));
    vars.push(("FSFREEZE_REDIS_SAVE", "1".to_string()));
    // The PostgreSQL write load, and the MariaDB writer (one client session,
    // each insert's completion time taken by the server's clock).
    let pg_load = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while :; do psql -X -q -U postgres -h '{}' -c \"INSERT INTO big SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g\" >/dev/null 2>&1; done",
            env.path().join("pg").display()
        ))
        .spawn()
        .unwrap();
    // One insert after another, each in its own client; the time each one
    // completed, taken after it returned.
    let stamps = env.path().join("stamps");
    let writer = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "while :; do mariadb --no-defaults --socket='{sock}' -uroot -e 'INSERT INTO t.w (at) VALUES (0)' && date +%s.%N >> '{stamps}'; done",
            sock = env.path().join("mariadb/sock").display(),
            stamps = stamps.display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut killers = vec![pg_load, writer];
    std::thread::sleep(Duration::from_secs(3));
    let longest_wait = |from: f64, to: f64| -> f64 {
        let text = fs::read_to_string(&stamps).unwrap_or_default();
        let at: Vec<f64> = text
            .lines()
            .filter_map(|l| l.parse().ok())
            .filter(|t| (from..=to).contains(t))
            .collect();
        at.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
    };
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    let cycle = |parallel: bool| -> f64 {
        env.set_config(&format!("parallel = {parallel}\n"));
        let from = now();
        let run = run_with(&env, &vars, &["freeze"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        std::thread::sleep(Duration::from_millis(200));
        let run = run_with(&env, &vars, &["thaw"]);
        assert_eq!(run.code, Some(0), "{run:?}");
        std::thread::sleep(Duration::from_millis(500));
        longest_wait(from - 0.05, now())
    };
    // A first cycle each: the schedule learns how long each hook takes.
    cycle(false);
    cycle(true);
    let (mut sequential, mut parallel) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        sequential.push(cycle(false));
        parallel.push(cycle(true));
    }
    for k in &mut killers {
        let _ = k.kill();
        let _ = k.wait();
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (s, p) = (median(&mut sequential), median(&mut parallel));
    eprintln!(
        "MariaDB writer's longest wait during a cycle (20-mariadb, 30-postgresql CHECKPOINT under load, 40-redis SAVE of 1M keys), median of 3:"
    );
    eprintln!("  parallel = false: {s:.3}s   {sequential:.3?}");
    eprintln!("  parallel = true:  {p:.3}s   {parallel:.3?}");
    eprintln!("  ratio: {:.2}x", p / s);
    eprintln!(
        "  freeze hooks' recent durations (ms): {}",
        fs::read_to_string(env.state.join("durations"))
            .unwrap_or_default()
            .replace('\n', "; ")
    );
    eprintln!(
        "  PostgreSQL rows written under load: {}",
        pg.sql("SELECT count(*) FROM big")
    );
}

#[test]
#[ignore = "needs root"]
fn postgresql_and_redis_examples_over_tcp_with_their_documented_settings() {
    // Every setting the examples document, the TCP ones among them: the
    // servers listen on 127.0.0.1 at a port of their own, and the hooks are
    // told only that.
    require_root("examples_over_tcp");
    let env = Env::new();
    use_example(&env, "30-postgresql");
    use_example(&env, "40-redis");
    let pg = Postgres::start_on_tcp(&env.path().join("pg"));
    let (redis, redis_port) = Redis::start_on_tcp(&env.path().join("redis"));
    let checkpoints = || {
        pg.sql("SELECT checkpoints_req FROM pg_stat_bgwriter")
            .parse::<u64>()
            .unwrap()
    };
    let before = checkpoints();
    let vars = [
        ("PGHOST", "127.0.0.1".to_string()),
        ("PGPORT", pg.port.to_string()),
        ("PGUSER", "postgres".to_string()),
        ("PGDATABASE", "postgres".to_string()),
        // psql as another OS user than postgres: TCP needs no peer.
        ("FSFREEZE_PG_OS_USER", "nobody".to_string()),
        ("FSFREEZE_PG_TIMEOUT", "30".to_string()),
        ("FSFREEZE_REDIS_HOST", "127.0.0.1".to_string()),
        ("FSFREEZE_REDIS_PORT", redis_port.to_string()),
        ("FSFREEZE_REDIS_MAX_HOLD", "60".to_string()),
    ];
    redis.try_cli(&["SET", "k", "0"]);
    let run = run_with(&env, &vars, &["freeze"]);
    assert_eq!(run.code, Some(0), "{run:?}");
    assert_has(&run.log, "30-postgresql: CHECKPOINT done");
    assert_eq!(checkpoints(), before + 1);
    let mut set = redis
        .cli_command(&["SET", "k", "1"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        still_running(&mut set, Duration::from_secs(1)),
        "a write went through while paused over TCP"
    );
    assert_eq!(run_with(&env, &vars, &["thaw"]).code, Some(0));
    assert!(set.wait().unwrap().success());
    assert_eq!(redis.try_cli(&["GET", "k"]).unwrap(), "1");
    // A timeout that is no number reaches the server, which refuses it.
    let mut bad = vars.to_vec();
    bad.push(("FSFREEZE_PG_TIMEOUT", "soon".to_string()));
    let run = run_with(&env, &bad, &["freeze"]);
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_has(&run.log, "30-postgresql: CHECKPOINT failed");
    assert_eq!(run_with(&env, &vars, &["thaw"]).code, Some(0));
}
