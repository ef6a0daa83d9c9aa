//! Real database servers for the role-check tests: PostgreSQL 15, Redis and MariaDB from
//! Debian, each started in a temporary directory of its own on a free loopback port and
//! stopped by its guard's `Drop`, also when a test fails.

use std::{
    fs,
    io::Write,
    net::{SocketAddr, TcpListener},
    os::unix::{fs::PermissionsExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// Where Debian puts PostgreSQL 15's server programs.
pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Programs a test needs that are not installed, as one message; `None` when all are.
pub fn missing(programs: &[&str]) -> Option<String> {
    let absent: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| !Path::new(p).is_file())
        .collect();
    (!absent.is_empty()).then(|| absent.join(", "))
}

/// Prints the loud skip line: only a missing server binary skips a test.
pub fn skip(test: &str, absent: &str) {
    eprintln!(
        "\n!!!! SKIPPED {test}: {absent} not installed; run scripts/install-deps.sh (CI does) !!!!\n"
    );
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().unwrap().port()
}

/// A directory under /tmp (mode 0755, so a server running as another user can reach
/// what is inside), removed on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "failoverd-roles-{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        if path.exists() {
            fs::remove_dir_all(&path).expect("remove a stale test dir");
        }
        fs::create_dir_all(&path).expect("create a test dir");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `content` to `name` in the directory with `mode`; returns its path.
    pub fn file(&self, name: &str, content: &str, mode: u32) -> PathBuf {
        let path = self.path.join(name);
        let mut f = fs::File::create(&path).expect("create a test file");
        f.write_all(content.as_bytes()).unwrap();
        drop(f);
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// Runs `command`, panicking with its output when it fails.
fn run(command: &mut Command, what: &str) -> Output {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Calls `f` every 100 ms until it returns true, for at most `limit`.
pub fn wait_until(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("gave up after {limit:?} waiting for {what}");
}

/// The uid and gid of a system user, from /etc/passwd.
fn user_ids(name: &str) -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    passwd
        .lines()
        .find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name)).then(|| {
                (
                    fields[2].parse().expect("uid"),
                    fields[3].parse().expect("gid"),
                )
            })
        })
        .unwrap_or_else(|| panic!("no user {name} (is postgresql installed?)"))
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

/// A PostgreSQL 15 server run as the `postgres` user, its data in a temp dir of its own.
pub struct Postgres {
    // Field order: the server stops (Drop) before its directory goes.
    data: PathBuf,
    port: u16,
    uid: u32,
    gid: u32,
    dir: TempDir,
}

impl Postgres {
    /// A primary whose TCP logins need `password` (scram-sha-256); Unix-socket logins are
    /// trusted, for the test's own psql and for pg_basebackup. With `tls`, a self-signed
    /// certificate and `ssl=on`.
    pub fn primary(tag: &str, password: &str, tls: bool) -> Postgres {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the postgres tests run the server as the postgres user: run them as root"
        );
        let (uid, gid) = user_ids("postgres");
        let dir = TempDir::new(tag);
        chown_tree(dir.path(), uid, gid);
        let pwfile = dir.path().join("pwfile");
        fs::write(&pwfile, format!("{password}\n")).unwrap();
        chown_tree(&pwfile, uid, gid);
        let data = dir.path().join("data");
        let mut pg = Postgres {
            data,
            port: free_port(),
            uid,
            gid,
            dir,
        };
        run(
            pg.as_postgres(&format!("{PG_BIN}/initdb"))
                .arg("-D")
                .arg(&pg.data)
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--no-sync",
                    "--no-instructions",
                ])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        // Replication connections come over the socket (trusted by initdb's pg_hba).
        if tls {
            run(
                Command::new("openssl")
                    .args([
                        "req",
                        "-x509",
                        "-nodes",
                        "-days",
                        "1",
                        "-subj",
                        "/CN=localhost",
                    ])
                    .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
                    .arg("-keyout")
                    .arg(pg.data.join("server.key"))
                    .arg("-out")
                    .arg(pg.data.join("server.crt")),
                "openssl req",
            );
            fs::set_permissions(
                pg.data.join("server.key"),
                fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            chown_tree(&pg.data, uid, gid);
        }
        pg.start(tls);
        pg
    }

    /// A streaming replica of `self` (`pg_basebackup -R`), started.
    pub fn replica(&self, tag: &str) -> Postgres {
        let dir = TempDir::new(tag);
        chown_tree(dir.path(), self.uid, self.gid);
        let mut replica = Postgres {
            data: dir.path().join("data"),
            port: free_port(),
            uid: self.uid,
            gid: self.gid,
            dir,
        };
        run(
            replica
                .as_postgres(&format!("{PG_BIN}/pg_basebackup"))
                .arg("-D")
                .arg(&replica.data)
                .arg("-h")
                .arg(self.dir.path())
                .args(["-p", &self.port.to_string(), "-U", "postgres"])
                .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"]),
            "pg_basebackup",
        );
        replica.start(false);
        replica
    }

    fn as_postgres(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .uid(self.uid)
            .gid(self.gid)
            .current_dir(self.dir.path())
            .env("LC_ALL", "C");
        command
    }

    fn start(&mut self, tls: bool) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off \
             -c shared_buffers=16MB -c max_connections=20 -c ssl={}",
            self.port,
            self.dir.path().display(),
            if tls { "on" } else { "off" }
        );
        run(
            self.as_postgres(&format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .arg("-l")
                .arg(self.dir.path().join("log"))
                .args(["-w", "-t", "30", "-o", &options, "start"]),
            "pg_ctl start",
        );
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs `sql` through psql over the Unix socket; returns its unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        let output = run(
            self.as_postgres(&format!("{PG_BIN}/psql"))
                .arg("-h")
                .arg(self.dir.path())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                ])
                .args(["-X", "-A", "-t", "-c", sql]),
            "psql",
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `pg_ctl promote`: the replica leaves recovery and becomes a primary.
    pub fn promote(&self) {
        run(
            self.as_postgres(&format!("{PG_BIN}/pg_ctl"))
                .arg("-D")
                .arg(&self.data)
                .args(["-w", "-t", "30", "promote"]),
            "pg_ctl promote",
        );
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let status = self
            .as_postgres(&format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("pg_ctl stop {}: {status:?}", self.data.display());
        }
    }
}

/// A redis-server in the foreground, killed on drop.
pub struct Redis {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Redis {
    /// A server with `extra` arguments (`--requirepass`, `--replicaof`, ...), ready for
    /// commands when this returns.
    pub fn start(tag: &str, extra: &[&str]) -> Redis {
        let dir = TempDir::new(tag);
        let port = free_port();
        let child = Command::new("/usr/bin/redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(dir.path().join("log"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let redis = Redis {
            child,
            port,
            _dir: dir,
        };
        wait_until(Duration::from_secs(10), "redis to listen", || {
            std::net::TcpStream::connect(redis.addr()).is_ok()
        });
        redis
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Runs one command through redis-cli (with `--pass` when the server needs one).
    pub fn cli(&self, pass: Option<&str>, args: &[&str]) -> String {
        let mut command = Command::new("/usr/bin/redis-cli");
        command.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(pass) = pass {
            command.args(["--no-auth-warning", "-a", pass]);
        }
        let output = run(command.args(args), "redis-cli");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("kill redis-server: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("reap redis-server: {e}");
        }
    }
}

/// A MariaDB server run as root from a data directory of its own, killed on drop.
pub struct Mariadb {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Mariadb {
    /// Initialises one data directory (`mariadb-install-db`), ready to be copied into
    /// several servers (installing once saves seconds per server).
    pub fn install(tag: &str) -> TempDir {
        let dir = TempDir::new(tag);
        run(
            Command::new("/usr/bin/mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", dir.path().join("data").display()))
                .args([
                    "--user=root",
                    "--auth-root-authentication-method=socket",
                    "--skip-test-db",
                    "--skip-name-resolve",
                ]),
            "mariadb-install-db",
        );
        dir
    }

    /// A server on a copy of `template`'s data, with `extra` options.
    pub fn start(template: &TempDir, tag: &str, extra: &[&str]) -> Mariadb {
        let dir = TempDir::new(tag);
        run(
            Command::new("cp")
                .arg("-a")
                .arg(template.path().join("data"))
                .arg(dir.path()),
            "cp datadir",
        );
        let port = free_port();
        let d = dir.path();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("err.log").display()))
            .args([
                "--user=root",
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
                "--innodb-log-file-size=8M",
                "--performance-schema=off",
            ])
            .arg(format!("--port={port}"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let mut server = Mariadb { child, port, dir };
        wait_until(Duration::from_secs(30), "mariadbd to accept logins", || {
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!(
                    "mariadbd exited with {status}:\n{}",
                    fs::read_to_string(server.dir.path().join("err.log")).unwrap_or_default()
                );
            }
            matches!(server.client().arg("-e").arg("SELECT 1").output(), Ok(o) if o.status.success())
        });
        server
    }

    fn client(&self) -> Command {
        let mut command = Command::new("/usr/bin/mariadb");
        command
            .arg("--no-defaults")
            .arg(format!(
                "--socket={}",
                self.dir.path().join("sock").display()
            ))
            .args(["-u", "root", "-N", "-B"])
            .stdin(Stdio::null());
        command
    }

    /// Runs `sql` as root over the socket; returns its tab-separated output.
    pub fn sql(&self, sql: &str) -> String {
        let output = run(self.client().arg("-e").arg(sql), "mariadb");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Mariadb {
    fn drop(&mut self) {
        if let Err(e) = self.child.kill() {
            eprintln!("kill mariadbd: {e}");
        }
        if let Err(e) = self.child.wait() {
            eprintln!("reap mariadbd: {e}");
        }
    }
}
