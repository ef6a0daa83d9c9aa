//! The role-aware probes against real servers (issue 12): PostgreSQL 15 with a streaming
//! replica, Redis with a replica, MariaDB with real replication, each started by the test
//! in temporary directories on loopback ports of its own; and send/expect and exec
//! against small local servers and scripts.
//!
//! Needs root (PostgreSQL runs as the `postgres` user, MariaDB as root). A test skips,
//! loudly, only when its server's program is not installed.

mod servers;

use std::{
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use failoverd::health::{
    validate_exec, ExecCheck, ExecError, Expect, ExpectCheck, MysqlCheck, PgCheck, PgTls, Probe,
    ProbeError, ProbeResult, RedisCheck, Role, RoleWanted,
};
use servers::{missing, skip, Mariadb, Postgres, Redis, TempDir, PG_BIN};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// The probes' timeout against real servers: generous, the machine is shared.
const TIMEOUT: Duration = Duration::from_secs(3);
/// How late past its timeout a probe may return on a loaded machine.
const MARGIN: Duration = Duration::from_millis(700);

fn pg(role: RoleWanted, password_file: Option<&PathBuf>) -> PgCheck {
    PgCheck {
        role,
        password_file: password_file.cloned(),
        ..PgCheck::default()
    }
}

fn redis(role: RoleWanted, password_file: Option<&PathBuf>) -> RedisCheck {
    RedisCheck {
        role,
        password_file: password_file.cloned(),
        ..RedisCheck::default()
    }
}

fn mysql(role: RoleWanted, password_file: Option<&PathBuf>) -> MysqlCheck {
    MysqlCheck {
        role,
        user: "probe".into(),
        password_file: password_file.cloned(),
        ..MysqlCheck::default()
    }
}

async fn probe(probe: impl Into<ProbeKind>, addr: SocketAddr) -> ProbeResult {
    probe.into().0.check(addr, TIMEOUT).await
}

/// Lets the tests pass the check structs themselves.
struct ProbeKind(Probe);

impl From<PgCheck> for ProbeKind {
    fn from(c: PgCheck) -> Self {
        ProbeKind(Probe::Postgres(c))
    }
}
impl From<RedisCheck> for ProbeKind {
    fn from(c: RedisCheck) -> Self {
        ProbeKind(Probe::Redis(c))
    }
}
impl From<MysqlCheck> for ProbeKind {
    fn from(c: MysqlCheck) -> Self {
        ProbeKind(Probe::Mysql(c))
    }
}
impl From<ExpectCheck> for ProbeKind {
    fn from(c: ExpectCheck) -> Self {
        ProbeKind(Probe::Expect(c))
    }
}
impl From<ExecCheck> for ProbeKind {
    fn from(c: ExecCheck) -> Self {
        ProbeKind(Probe::Exec(c))
    }
}

/// Probes every 200 ms until `done` holds, for at most `limit`; returns that result.
async fn eventually<F, Fut>(
    limit: Duration,
    what: &str,
    mut run: F,
    done: impl Fn(&ProbeResult) -> bool,
) -> ProbeResult
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ProbeResult>,
{
    let deadline = Instant::now() + limit;
    loop {
        let result = run().await;
        if done(&result) {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "gave up after {limit:?} waiting for {what}; last result: {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[track_caller]
fn passed(result: ProbeResult, role: Option<Role>) -> String {
    let ok = result.unwrap_or_else(|e| panic!("expected a pass, got {}: {e}", e.reason()));
    assert_eq!(ok.role, role, "{ok:?}");
    ok.detail
}

#[track_caller]
fn failed(result: ProbeResult, reason: &str) -> ProbeError {
    let err = match result {
        Ok(ok) => panic!("expected a {reason} failure, got a pass: {ok:?}"),
        Err(e) => e,
    };
    assert_eq!(err.reason(), reason, "{err}");
    err
}

#[tokio::test]
async fn postgres_primary_replica_promotion_lag_credentials_and_tls() {
    let programs = [
        format!("{PG_BIN}/initdb"),
        format!("{PG_BIN}/pg_ctl"),
        format!("{PG_BIN}/pg_basebackup"),
        format!("{PG_BIN}/psql"),
        "/usr/bin/openssl".to_owned(),
    ];
    let programs: Vec<&str> = programs.iter().map(String::as_str).collect();
    if let Some(absent) = missing(&programs) {
        return skip(
            "postgres_primary_replica_promotion_lag_credentials_and_tls",
            &absent,
        );
    }
    let secrets = TempDir::new("pg-secrets");
    let good = secrets.file("good", "s3cret\n", 0o600);
    let bad = secrets.file("bad", "wrong\n", 0o600);
    let primary = Postgres::primary("pg-primary", "s3cret", true);
    let replica = primary.replica("pg-replica");
    let (p, r) = (primary.addr(), replica.addr());

    // The primary answers primary, over TLS when it is required.
    let detail = passed(
        probe(pg(RoleWanted::Primary, Some(&good)), p).await,
        Some(Role::Primary),
    );
    assert_eq!(detail, "primary");
    let tls = PgCheck {
        tls: PgTls::Require,
        ..pg(RoleWanted::Primary, Some(&good))
    };
    passed(probe(tls.clone(), p).await, Some(Role::Primary));
    let plain = PgCheck {
        tls: PgTls::Off,
        ..pg(RoleWanted::Primary, Some(&good))
    };
    passed(probe(plain, p).await, Some(Role::Primary));

    // The replica answers replica: role replica and any pass, role primary is WrongRole.
    let detail = passed(
        probe(pg(RoleWanted::Replica, Some(&good)), r).await,
        Some(Role::Replica),
    );
    assert!(detail.starts_with("replica"), "{detail}");
    passed(
        probe(pg(RoleWanted::Any, Some(&good)), r).await,
        Some(Role::Replica),
    );
    let err = failed(probe(pg(RoleWanted::Primary, Some(&good)), r).await, "role");
    assert!(
        matches!(err, ProbeError::WrongRole { wanted: RoleWanted::Primary, actual: Role::Replica, addr } if addr == r),
        "{err:?}"
    );
    assert!(err.is_wrong_role());
    // It has no TLS: `prefer` falls back to plain, `require` fails with tls.
    let err = failed(
        probe(
            PgCheck {
                tls: PgTls::Require,
                ..pg(RoleWanted::Replica, Some(&good))
            },
            r,
        )
        .await,
        "tls",
    );
    assert!(err.to_string().contains("does not support TLS"), "{err}");

    // max_lag: a streaming replica that has replayed what it received passes...
    let within = PgCheck {
        max_lag: Some(Duration::from_secs(10)),
        ..pg(RoleWanted::Replica, Some(&good))
    };
    primary.psql("CREATE TABLE probe_lag (at timestamptz); INSERT INTO probe_lag VALUES (now())");
    let ok = eventually(
        Duration::from_secs(15),
        "the replica to catch up",
        || probe(within.clone(), r),
        |res| res.is_ok(),
    )
    .await;
    assert_eq!(passed(ok, Some(Role::Replica)), "replica, lag 0.0s");
    // ...and one that holds back replay (recovery_min_apply_delay) falls behind: the lag
    // is the age of the last transaction it replayed.
    replica.psql("ALTER SYSTEM SET recovery_min_apply_delay = '1h'");
    replica.psql("SELECT pg_reload_conf()");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let tight = PgCheck {
        max_lag: Some(Duration::from_secs(1)),
        ..pg(RoleWanted::Replica, Some(&good))
    };
    // A write before each probe: the reload reaches the startup process asynchronously,
    // and whichever write comes after it is held back, so the lag shows within a second
    // of that whatever the machine's load.
    let lagging = eventually(
        Duration::from_secs(15),
        "the replica to lag",
        || {
            primary.psql("INSERT INTO probe_lag VALUES (now())");
            probe(tight.clone(), r)
        },
        |res| res.is_err(),
    )
    .await;
    let err = failed(lagging, "lag");
    assert!(
        matches!(err, ProbeError::Lag { lag: Some(lag), max, .. } if lag > max && max == Duration::from_secs(1)),
        "{err:?}"
    );
    assert_eq!(err.role_seen(), Some(Role::Replica));
    // Without max_lag the same replica passes, its lag in the evidence.
    let detail = passed(
        probe(pg(RoleWanted::Replica, Some(&good)), r).await,
        Some(Role::Replica),
    );
    assert!(
        detail.starts_with("replica, lag ") && detail != "replica, lag 0.0s",
        "{detail}"
    );

    // Credentials: a wrong password, none at all, an unreadable file.
    let err = failed(probe(pg(RoleWanted::Primary, Some(&bad)), p).await, "auth");
    assert!(
        err.to_string()
            .contains("password authentication failed for user \"postgres\""),
        "{err}"
    );
    assert!(
        !err.to_string().contains("wrong"),
        "the password leaked: {err}"
    );
    let err = failed(probe(pg(RoleWanted::Primary, None), p).await, "auth");
    assert!(err.to_string().contains("no password_file"), "{err}");
    let no_db = PgCheck {
        database: Some("nope".into()),
        ..pg(RoleWanted::Primary, Some(&good))
    };
    let err = failed(probe(no_db, p).await, "auth");
    assert!(
        err.to_string().contains("database \"nope\" does not exist"),
        "{err}"
    );
    let nowhere = secrets.path().join("absent");
    let err = failed(
        probe(pg(RoleWanted::Primary, Some(&nowhere)), p).await,
        "credentials",
    );
    assert!(err.to_string().contains("absent"), "{err}");

    // A redis check pointed at postgres fails as a protocol error, not a hang.
    let started = Instant::now();
    failed(probe(redis(RoleWanted::Primary, None), p).await, "protocol");
    assert!(started.elapsed() < TIMEOUT + MARGIN);

    // Promotion flips the replica's answer.
    replica.psql("ALTER SYSTEM RESET recovery_min_apply_delay");
    replica.psql("SELECT pg_reload_conf()");
    replica.promote();
    let ok = eventually(
        Duration::from_secs(10),
        "the promoted replica to answer primary",
        || probe(pg(RoleWanted::Primary, Some(&good)), r),
        |res| res.is_ok(),
    )
    .await;
    assert_eq!(passed(ok, Some(Role::Primary)), "primary");
    let err = failed(probe(pg(RoleWanted::Replica, Some(&good)), r).await, "role");
    assert_eq!(err.role_seen(), Some(Role::Primary));
}

#[tokio::test]
async fn redis_master_replica_promotion_lag_and_credentials() {
    if let Some(absent) = missing(&["/usr/bin/redis-server", "/usr/bin/redis-cli"]) {
        return skip(
            "redis_master_replica_promotion_lag_and_credentials",
            &absent,
        );
    }
    let secrets = TempDir::new("redis-secrets");
    let good = secrets.file("good", "redispw\n", 0o600);
    let bad = secrets.file("bad", "nope\n", 0o600);
    let primary = Redis::start("redis-primary", &["--requirepass", "redispw"]);
    let primary_port = primary.addr().port().to_string();
    let replica = Redis::start(
        "redis-replica",
        &[
            "--requirepass",
            "redispw",
            "--masterauth",
            "redispw",
            "--replicaof",
            "127.0.0.1",
            &primary_port,
        ],
    );
    let (p, r) = (primary.addr(), replica.addr());

    let detail = passed(
        probe(redis(RoleWanted::Primary, Some(&good)), p).await,
        Some(Role::Primary),
    );
    assert_eq!(detail, "master");

    // The replica: role replica passes once its link is up, role primary is WrongRole.
    let within = RedisCheck {
        max_lag: Some(Duration::from_secs(10)),
        ..redis(RoleWanted::Replica, Some(&good))
    };
    let ok = eventually(
        Duration::from_secs(10),
        "the replica's link to come up",
        || probe(within.clone(), r),
        |res| res.is_ok(),
    )
    .await;
    let detail = passed(ok, Some(Role::Replica));
    assert!(
        detail.starts_with(&format!(
            "replica of 127.0.0.1:{primary_port}, link up, last io "
        )),
        "{detail}"
    );
    let err = failed(
        probe(redis(RoleWanted::Primary, Some(&good)), r).await,
        "role",
    );
    assert!(
        matches!(
            err,
            ProbeError::WrongRole {
                actual: Role::Replica,
                ..
            }
        ),
        "{err:?}"
    );

    // An ACL user: AUTH with a username.
    primary.cli(
        Some("redispw"),
        &["ACL", "SETUSER", "probe", "on", ">probepw", "+info"],
    );
    let probe_pw = secrets.file("probe", "probepw", 0o600);
    let acl = RedisCheck {
        username: Some("probe".into()),
        ..redis(RoleWanted::Primary, Some(&probe_pw))
    };
    passed(probe(acl, p).await, Some(Role::Primary));

    // Credentials: a wrong password, none when one is required.
    let err = failed(
        probe(redis(RoleWanted::Primary, Some(&bad)), p).await,
        "auth",
    );
    assert!(err.to_string().contains("WRONGPASS"), "{err}");
    assert!(
        !err.to_string().contains("nope"),
        "the password leaked: {err}"
    );
    let err = failed(probe(redis(RoleWanted::Primary, None), p).await, "auth");
    assert!(err.to_string().contains("NOAUTH"), "{err}");

    // The primary goes away: the replica's link is down, so its lag is unknown.
    drop(primary);
    let down = eventually(
        Duration::from_secs(10),
        "the replica to see its link down",
        || probe(within.clone(), r),
        |res| res.is_err(),
    )
    .await;
    let err = failed(down, "lag");
    assert!(matches!(err, ProbeError::Lag { lag: None, .. }), "{err:?}");
    // role: replica without max_lag still passes: it is a replica, just a stale one.
    let detail = passed(
        probe(redis(RoleWanted::Replica, Some(&good)), r).await,
        Some(Role::Replica),
    );
    assert!(detail.ends_with("link down"), "{detail}");

    // REPLICAOF NO ONE promotes it.
    replica.cli(Some("redispw"), &["REPLICAOF", "NO", "ONE"]);
    let detail = passed(
        probe(redis(RoleWanted::Primary, Some(&good)), r).await,
        Some(Role::Primary),
    );
    assert_eq!(detail, "master");
}

#[tokio::test]
async fn mariadb_read_only_replication_lag_and_credentials() {
    let programs = [
        "/usr/bin/mariadb-install-db",
        "/usr/sbin/mariadbd",
        "/usr/bin/mariadb",
    ];
    if let Some(absent) = missing(&programs) {
        return skip("mariadb_read_only_replication_lag_and_credentials", &absent);
    }
    let secrets = TempDir::new("mariadb-secrets");
    let good = secrets.file("good", "probepw\n", 0o600);
    let bad = secrets.file("bad", "nope\n", 0o600);
    let template = Mariadb::install("mariadb-template");
    let primary = Mariadb::start(
        &template,
        "mariadb-primary",
        &["--server-id=1", "--log-bin=mysql-bin"],
    );
    let replica = Mariadb::start(
        &template,
        "mariadb-replica",
        &["--server-id=2", "--read-only=ON"],
    );
    drop(template);
    primary.sql(
        "CREATE USER 'probe'@'%' IDENTIFIED BY 'probepw'; \
         GRANT SLAVE MONITOR ON *.* TO 'probe'@'%'; \
         CREATE USER 'bare'@'%' IDENTIFIED BY 'probepw'; \
         CREATE USER 'repl'@'%' IDENTIFIED BY 'replpw'; \
         GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'",
    );
    // From the first binlog on: the users above reach the replica by replication.
    replica.sql(&format!(
        "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl', \
         MASTER_PASSWORD='replpw', MASTER_LOG_FILE='mysql-bin.000001', MASTER_LOG_POS=4, \
         MASTER_USE_GTID=no; START SLAVE",
        primary.port()
    ));
    let (p, r) = (primary.addr(), replica.addr());

    let detail = passed(
        probe(mysql(RoleWanted::Primary, Some(&good)), p).await,
        Some(Role::Primary),
    );
    assert_eq!(detail, "primary (read_only off)");

    // The replica, once replication has brought the probe user over and caught up.
    let within = MysqlCheck {
        max_lag: Some(Duration::from_secs(10)),
        ..mysql(RoleWanted::Replica, Some(&good))
    };
    let ok = eventually(
        Duration::from_secs(15),
        "the replica to replicate and catch up",
        || probe(within.clone(), r),
        |res| res.is_ok(),
    )
    .await;
    assert_eq!(
        passed(ok, Some(Role::Replica)),
        "replica (read_only on), lag 0.0s"
    );
    let err = failed(
        probe(mysql(RoleWanted::Primary, Some(&good)), r).await,
        "role",
    );
    assert!(
        matches!(
            err,
            ProbeError::WrongRole {
                actual: Role::Replica,
                ..
            }
        ),
        "{err:?}"
    );
    passed(
        probe(mysql(RoleWanted::Any, Some(&good)), r).await,
        Some(Role::Replica),
    );

    // A user without SLAVE MONITOR can tell the role but not the lag: a query failure
    // with the server's words, not a pass. (Its CREATE USER comes last in the binlog, so
    // wait for it to have replicated.)
    let bare = MysqlCheck {
        user: "bare".into(),
        ..within.clone()
    };
    let bare_role_only = MysqlCheck {
        max_lag: None,
        ..bare.clone()
    };
    let ok = eventually(
        Duration::from_secs(10),
        "the user 'bare' to replicate",
        || probe(bare_role_only.clone(), r),
        |res| res.is_ok(),
    )
    .await;
    passed(ok, Some(Role::Replica));
    let err = failed(probe(bare, r).await, "query");
    assert!(err.to_string().contains("privilege"), "{err}");

    // Credentials: a wrong password, none at all.
    let err = failed(
        probe(mysql(RoleWanted::Primary, Some(&bad)), p).await,
        "auth",
    );
    assert!(
        err.to_string().contains("Access denied for user 'probe'"),
        "{err}"
    );
    assert!(
        !err.to_string().contains("nope"),
        "the password leaked: {err}"
    );
    failed(probe(mysql(RoleWanted::Primary, None), p).await, "auth");

    // Replication stopped: Seconds_Behind_Master is NULL, the lag unknown.
    replica.sql("STOP SLAVE");
    let err = failed(probe(within.clone(), r).await, "lag");
    assert!(matches!(err, ProbeError::Lag { lag: None, .. }), "{err:?}");

    // Promotion: read_only off flips the answer. Both now claim primary (the decision
    // core keeps the VIP on one); demoting the old primary flips its answer too.
    replica.sql("SET GLOBAL read_only = OFF");
    passed(
        probe(mysql(RoleWanted::Primary, Some(&good)), r).await,
        Some(Role::Primary),
    );
    passed(
        probe(mysql(RoleWanted::Primary, Some(&good)), p).await,
        Some(Role::Primary),
    );
    primary.sql("SET GLOBAL read_only = ON");
    let err = failed(
        probe(mysql(RoleWanted::Primary, Some(&good)), p).await,
        "role",
    );
    assert!(err.is_wrong_role(), "{err:?}");
}

/// A server that accepts and never writes: the slow server every probe must give up on.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

/// A server that answers every connection with `banner` after reading a little.
async fn canned_server(banner: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                // Whatever the probe sent (or nothing, if it hung up) is not looked at.
                if let Err(e) = conn.read(&mut buf).await {
                    eprintln!("canned server: {e}");
                }
                if let Err(e) = conn.write_all(banner).await {
                    eprintln!("canned server: {e}");
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn database_checks_fail_cleanly_against_silent_or_foreign_servers() {
    let short = Duration::from_millis(800);
    let silent = silent_server().await;
    let kinds = [
        Probe::Postgres(PgCheck::default()),
        Probe::Mysql(MysqlCheck::default()),
        Probe::Redis(RedisCheck::default()),
    ];
    for kind in &kinds {
        let started = Instant::now();
        let err = kind.check(silent, short).await.unwrap_err();
        let elapsed = started.elapsed();
        assert!(
            matches!(err, ProbeError::Timeout { after, .. } if after == short),
            "{kind:?}: {err:?}"
        );
        assert!(
            elapsed >= short && elapsed < short + MARGIN,
            "{kind:?}: {elapsed:?}"
        );
    }

    // A server of another protocol (an SSH banner): the ones that speak first read it
    // as garbage at once; MySQL waits for a greeting, which this server only sends after
    // reading, so it times out.
    let ssh = canned_server(b"SSH-2.0-OpenSSH_9.2\r\n").await;
    let err = Probe::Redis(RedisCheck::default())
        .check(ssh, short)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "protocol", "{err}");
    assert!(err.to_string().contains("SSH-2.0"), "{err}");
    // Postgres asks for TLS first (tls: prefer); "SSH-2.0" starts with the 'S' that
    // means yes, so the handshake that follows fails: a tls failure, promptly.
    let err = Probe::Postgres(PgCheck::default())
        .check(ssh, short)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "tls", "{err}");
    let err = Probe::Postgres(PgCheck {
        tls: PgTls::Off,
        ..PgCheck::default()
    })
    .check(ssh, short)
    .await
    .unwrap_err();
    assert_eq!(err.reason(), "protocol", "{err}");
    let err = Probe::Mysql(MysqlCheck::default())
        .check(ssh, short)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "timeout", "{err}");

    // A real Redis: the postgres and mysql checks fail at the timeout, never pass: both
    // wait for an answer Redis never gives (it waits for a line end the Postgres startup
    // packet does not have; a MySQL client waits for the server's greeting).
    if let Some(absent) = missing(&["/usr/bin/redis-server"]) {
        return skip(
            "database_checks_fail_cleanly_against_silent_or_foreign_servers (redis part)",
            &absent,
        );
    }
    let server = Redis::start("redis-foreign", &[]);
    for kind in &kinds[..2] {
        let started = Instant::now();
        let err = kind.check(server.addr(), short).await.unwrap_err();
        assert_eq!(err.reason(), "timeout", "{kind:?}: {err}");
        assert!(started.elapsed() < short + MARGIN, "{kind:?}");
    }
    // And nothing listening is refused, as for the tcp probe.
    drop(server);
    for kind in &kinds {
        let port = servers::free_port();
        let err = kind
            .check(SocketAddr::from(([127, 0, 0, 1], port)), short)
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "refused", "{kind:?}: {err}");
    }
}

/// A server that greets every connection with `banner` and then holds it open.
async fn banner_server(banner: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Err(e) = conn.write_all(banner).await {
                    eprintln!("banner server: {e}");
                }
                let mut buf = [0u8; 64];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// A line server: answers `PING` with `+PONG`, `VERSION` with `version 7.2.4`, anything
/// else with `-ERR unknown`, and closes after one answer.
async fn line_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut line = Vec::new();
                let mut byte = [0u8; 1];
                while !line.ends_with(b"\n") && line.len() < 256 {
                    match conn.read(&mut byte).await {
                        Ok(1) => line.push(byte[0]),
                        _ => break,
                    }
                }
                let answer: &[u8] = match line.as_slice() {
                    b"PING\r\n" => b"+PONG\r\n",
                    b"VERSION\r\n" => b"server version 7.2.4 ready\r\n",
                    _ => b"-ERR unknown\r\n",
                };
                if let Err(e) = conn.write_all(answer).await {
                    eprintln!("line server: {e}");
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn expect_matches_substrings_and_regexes_and_says_what_came_back() {
    let server = line_server().await;
    let ping = ExpectCheck {
        send: b"PING\r\n".to_vec(),
        expect: Expect::Substring("+PONG".into()),
    };
    let ok = probe(ping, server).await.unwrap();
    assert_eq!(ok.detail, "matched \"+PONG\"");
    assert_eq!(ok.role, None);

    let version = ExpectCheck {
        send: b"VERSION\r\n".to_vec(),
        expect: Expect::Regex(regex::Regex::new(r"version 7\.\d+\.\d+").unwrap()),
    };
    let ok = probe(version, server).await.unwrap();
    assert_eq!(ok.detail, "matched \"version 7.2.4\"");

    // The reply lacks the text: the failure shows what came back.
    let wrong = ExpectCheck {
        send: b"HELLO\r\n".to_vec(),
        expect: Expect::Substring("+PONG".into()),
    };
    let err = failed(probe(wrong, server).await, "expect");
    assert!(
        matches!(&err, ProbeError::Expect { got, expected, .. } if got == "-ERR unknown\r\n" && expected == "\"+PONG\""),
        "{err:?}"
    );
    let not_eight = ExpectCheck {
        send: b"VERSION\r\n".to_vec(),
        expect: Expect::Regex(regex::Regex::new(r"version 8\.").unwrap()),
    };
    let err = failed(probe(not_eight, server).await, "expect");
    assert!(err.to_string().contains("/version 8\\./"), "{err}");

    // Nothing sent: a server that talks first (an SMTP banner) is matched as is, and the
    // probe passes while the server still holds the connection open.
    let banner = banner_server(b"220 mail.example ESMTP ready\r\n").await;
    let smtp = ExpectCheck {
        send: Vec::new(),
        expect: Expect::Regex(regex::Regex::new(r"^220 ").unwrap()),
    };
    let ok = probe(smtp.clone(), banner).await.unwrap();
    assert_eq!(ok.detail, "matched \"220 \"");

    // A silent server: timeout at the timeout, not a hang.
    let silent = silent_server().await;
    let short = Duration::from_millis(500);
    let started = Instant::now();
    let err = Probe::Expect(smtp).check(silent, short).await.unwrap_err();
    assert!(
        matches!(err, ProbeError::Timeout { after, .. } if after == short),
        "{err:?}"
    );
    assert!(started.elapsed() < short + MARGIN);
}

/// Whether `pid` still runs: absent from /proc, or a zombie waiting for its reaper,
/// counts as gone.
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => {
            // The state follows the command's closing parenthesis.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !matches!(state, Some(s) if s.starts_with('Z'))
        }
    }
}

fn exec(command: &[&str], env: &[(&str, &str)]) -> ExecCheck {
    ExecCheck {
        command: command.iter().map(|s| s.to_string()).collect(),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

#[tokio::test]
async fn exec_passes_on_exit_0_with_its_first_line_and_fails_on_others() {
    let dir = TempDir::new("exec");
    let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let pass = dir.file(
        "pass.sh",
        "#!/bin/sh\necho \"ready at $1\"\necho second line\n",
        0o755,
    );
    let ok = probe(exec(&[pass.to_str().unwrap(), "{address}"], &[]), addr)
        .await
        .unwrap();
    assert_eq!(ok.detail, "exit 0: ready at 127.0.0.1:5432");
    assert_eq!(ok.role, None);

    let fail = dir.file("fail.sh", "#!/bin/sh\necho not ready\nexit 3\n", 0o755);
    let err = failed(
        probe(exec(&[fail.to_str().unwrap()], &[]), addr).await,
        "exit",
    );
    assert_eq!(
        err.to_string(),
        "the check command for 127.0.0.1:5432 failed: exit 3: not ready"
    );

    // Substitution in every argument; no shell in between.
    let ok = probe(
        exec(
            &["/bin/echo", "{host}", "-p", "{port}", "--addr={address}"],
            &[],
        ),
        addr,
    )
    .await
    .unwrap();
    assert_eq!(ok.detail, "exit 0: 127.0.0.1 -p 5432 --addr=127.0.0.1:5432");

    // The environment is cleared but for what is listed (this test's own PATH and HOME
    // are not passed on).
    let ok = probe(exec(&["/usr/bin/env"], &[("PGSERVICE", "main")]), addr)
        .await
        .unwrap();
    assert_eq!(ok.detail, "exit 0: PGSERVICE=main");
    let ok = probe(exec(&["/usr/bin/env"], &[]), addr).await.unwrap();
    assert_eq!(ok.detail, "exit 0");

    // Stdout is read bounded: a flood costs 4 KiB of memory, and the line is cut there.
    let flood = dir.file(
        "flood.sh",
        "#!/bin/sh\n/usr/bin/head -c 1000000 /dev/zero | /usr/bin/tr '\\0' x\n",
        0o755,
    );
    let ok = probe(exec(&[flood.to_str().unwrap()], &[]), addr)
        .await
        .unwrap();
    assert_eq!(ok.detail.len(), "exit 0: ".len() + 4096);

    // A command that leaves something running in the background still passes at once:
    // the leftover dies with the group instead of holding stdout open.
    let leftover = dir.file(
        "leftover.sh",
        &format!(
            "#!/bin/sh\n/bin/sleep 30 &\necho $! > {}/leftover.pid\necho done\n",
            dir.path().display()
        ),
        0o755,
    );
    let started = Instant::now();
    let ok = probe(exec(&[leftover.to_str().unwrap()], &[]), addr)
        .await
        .unwrap();
    assert_eq!(ok.detail, "exit 0: done");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let pid: i32 = std::fs::read_to_string(dir.path().join("leftover.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    servers::wait_until(Duration::from_secs(2), "the leftover sleep to die", || {
        !running(pid)
    });

    // A missing or non-executable program: a spawn failure, and validate_exec says why.
    let err = failed(
        probe(exec(&["/nonexistent/check"], &[]), addr).await,
        "spawn",
    );
    assert!(
        matches!(
            &err,
            ProbeError::Spawn {
                source: ExecError::Missing { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let plain = dir.file("plain.sh", "#!/bin/sh\nexit 0\n", 0o644);
    let err = validate_exec(&plain).unwrap_err();
    assert!(matches!(err, ExecError::NotExecutable { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("{} is not executable", plain.display())
    );
    validate_exec(&pass).unwrap();
}

#[tokio::test]
async fn exec_timeout_kills_the_whole_process_group_and_reaps_the_command() {
    let dir = TempDir::new("exec-timeout");
    let addr: SocketAddr = "127.0.0.1:5432".parse().unwrap();
    let hang = dir.file(
        "hang.sh",
        &format!(
            "#!/bin/sh\n/bin/sleep 30 &\necho $! > {d}/child.pid\necho $$ > {d}/sh.pid\n\
             echo started\n/bin/sleep 30\n",
            d = dir.path().display()
        ),
        0o755,
    );
    let short = Duration::from_millis(700);
    let started = Instant::now();
    let err = Probe::Exec(exec(&[hang.to_str().unwrap()], &[]))
        .check(addr, short)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, ProbeError::Timeout { after, .. } if after == short),
        "{err:?}"
    );
    assert!(elapsed >= short && elapsed < short + MARGIN, "{elapsed:?}");

    let read_pid = |name: &str| -> i32 {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .trim()
            .parse()
            .unwrap()
    };
    let (sh, child) = (read_pid("sh.pid"), read_pid("child.pid"));
    // The background sleep (same group) is killed; the script itself is killed and
    // reaped by the probe, so not even a zombie is left.
    // Waited for without blocking: the probe reaps the script on a task of this runtime.
    let deadline = Instant::now() + Duration::from_secs(2);
    while running(child) || std::path::Path::new(&format!("/proc/{sh}")).exists() {
        assert!(
            Instant::now() < deadline,
            "2s after the timeout: background sleep running {}, script still in /proc {}",
            running(child),
            std::path::Path::new(&format!("/proc/{sh}")).exists()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole daemon over real servers, on an in-memory datapath whose table the test reads
/// (the kernel side is the datapath tests' job).
struct VipDaemon {
    running: failoverd::daemon::Running<failoverd::datapath::FakeDatapath>,
    kernel: failoverd::datapath::FakeHandle,
    vip: failoverd::datapath::Vip,
}

impl VipDaemon {
    /// Starts the daemon on `yaml`, watching the TCP VIP `vip`.
    async fn start(yaml: &str, vip: &str) -> VipDaemon {
        let config =
            failoverd::config::parse(yaml, std::path::Path::new("<test>")).expect("config");
        let fake = failoverd::datapath::FakeDatapath::new();
        let kernel = fake.handle();
        let running = failoverd::daemon::start_with(
            &config,
            fake,
            failoverd::daemon::Drains::new(),
            std::sync::Arc::new(failoverd::health::NetworkCheck),
        )
        .await
        .expect("daemon");
        VipDaemon {
            running,
            kernel,
            vip: failoverd::datapath::Vip {
                addr: vip.parse().expect("vip"),
                protocol: failoverd::datapath::Protocol::Tcp,
            },
        }
    }

    /// The backends the VIP's table sends to now.
    fn table(&self) -> Vec<SocketAddr> {
        self.kernel
            .tables()
            .get(&self.vip)
            .map(|t| t.table.backends.iter().map(|b| b.addr).collect())
            .unwrap_or_default()
    }

    /// Waits until the table is `want`; how long that took. Panics after `limit`.
    async fn until(&self, limit: Duration, what: &str, want: &[SocketAddr]) -> Duration {
        let start = Instant::now();
        while self.table() != want {
            assert!(start.elapsed() < limit, "{what}: table {:?}", self.table());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        start.elapsed()
    }

    /// Waits until `service` reports two backends answering primary.
    async fn until_split_brain(&self, service: &str, limit: Duration) {
        let start = Instant::now();
        loop {
            let status = self.running.service_status(service).await.expect("status");
            if status.split_brain.len() == 2 {
                return;
            }
            assert!(start.elapsed() < limit, "no split brain seen: {status:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The whole daemon over real Redis servers: the VIP reaches only the primary; when the
/// replica is promoted while the old primary still answers "master", the VIP stays on the
/// old one (split brain, never both); when the old one is demoted, the VIP moves to the new
/// primary at once — a demotion is acted on without waiting `fall` probes.
#[tokio::test]
async fn the_vip_follows_the_redis_primary_and_never_spreads_over_two() {
    use failoverd::{
        control::ControlHandler,
        daemon::{api::DaemonApi, DrainStore},
    };
    if let Some(absent) = missing(&["/usr/bin/redis-server", "/usr/bin/redis-cli"]) {
        return skip(
            "the_vip_follows_the_redis_primary_and_never_spreads_over_two",
            &absent,
        );
    }
    let a = Redis::start("vip-redis-a", &[]);
    let a_port = a.addr().port().to_string();
    let b = Redis::start("vip-redis-b", &["--replicaof", "127.0.0.1", &a_port]);
    let state = TempDir::new("vip-redis-state");
    let yaml = format!(
        "control: {{ state_dir: {} }}\nservices:\n  - name: cache\n    vip: 127.66.20.1:6379\n    health: {{ kind: redis, role: primary, interval: 200ms, timeout: 150ms, rise: 2, fall: 3 }}\n    backends:\n      - {{ name: a, address: '{}' }}\n      - {{ name: b, address: '{}' }}\n",
        state.path().join("state").display(),
        a.addr(),
        b.addr()
    );
    let d = VipDaemon::start(&yaml, "127.66.20.1:6379").await;
    d.until(Duration::from_secs(10), "only the primary", &[a.addr()])
        .await;

    // Promote b while a still answers master: two primaries.
    assert_eq!(b.cli(None, &["REPLICAOF", "NO", "ONE"]), "OK");
    d.until_split_brain("cache", Duration::from_secs(10)).await;
    assert_eq!(
        d.table(),
        vec![a.addr()],
        "the VIP stays on the primary it had"
    );
    let api = DaemonApi::new(
        d.running.handle(),
        DrainStore::new(state.path()),
        state.path().join("x"),
        None,
    );
    let explained = api
        .explain(d.vip.addr.to_string(), None)
        .await
        .expect("explain");
    assert!(
        explained
            .out
            .iter()
            .any(|o| o.name == "b" && o.reason.contains("split brain")),
        "{explained:?}"
    );

    // Demote a: it answers "replica" and the VIP moves to b at once.
    let b_port = b.addr().port().to_string();
    assert_eq!(a.cli(None, &["REPLICAOF", "127.0.0.1", &b_port]), "OK");
    let took = d
        .until(
            Duration::from_secs(10),
            "the new primary alone",
            &[b.addr()],
        )
        .await;
    eprintln!("demotion of a to the VIP on b: {took:?} (fall × interval + timeout is 0.75 s)");
    let status = d.running.service_status("cache").await.expect("status");
    assert!(
        status.split_brain.is_empty(),
        "the split is over: {status:?}"
    );
    drop(d.running.shutdown().await);
}

/// The whole daemon over a real PostgreSQL primary and streaming replica: the VIP reaches
/// only the primary; promoting the replica while the old primary runs is a split brain that
/// keeps the VIP on the old one; stopping the old primary moves the VIP to the promoted one
/// within `fall × interval + timeout`.
#[tokio::test]
async fn the_vip_follows_the_postgres_primary_through_promotion() {
    let programs = [
        format!("{PG_BIN}/initdb"),
        format!("{PG_BIN}/pg_ctl"),
        format!("{PG_BIN}/pg_basebackup"),
        format!("{PG_BIN}/psql"),
        "/usr/bin/openssl".to_owned(),
    ];
    let programs: Vec<&str> = programs.iter().map(String::as_str).collect();
    if let Some(absent) = missing(&programs) {
        return skip(
            "the_vip_follows_the_postgres_primary_through_promotion",
            &absent,
        );
    }
    let secrets = TempDir::new("vip-pg-secrets");
    let password = secrets.file("password", "s3cret\n", 0o600);
    let primary = Postgres::primary("vip-pg-primary", "s3cret", false);
    let replica = primary.replica("vip-pg-replica");
    let (p, r) = (primary.addr(), replica.addr());
    let yaml = format!(
        "control: {{ state_dir: {} }}\nservices:\n  - name: orders-db\n    vip: 127.66.21.1:5432\n    health: {{ kind: postgres, role: primary, tls: off, password_file: {}, interval: 300ms, timeout: 250ms, rise: 2, fall: 3 }}\n    backends:\n      - {{ name: pg-a, address: '{p}' }}\n      - {{ name: pg-b, address: '{r}' }}\n",
        secrets.path().join("state").display(),
        password.display(),
    );
    let d = VipDaemon::start(&yaml, "127.66.21.1:5432").await;
    d.until(Duration::from_secs(15), "only the primary", &[p])
        .await;

    replica.promote();
    d.until_split_brain("orders-db", Duration::from_secs(20))
        .await;
    assert_eq!(
        d.table(),
        vec![p],
        "two primaries: the VIP stays on the one it had"
    );

    drop(primary);
    let took = d
        .until(Duration::from_secs(10), "the promoted primary alone", &[r])
        .await;
    eprintln!("old primary stopped → VIP on the promoted one: {took:?} (fall × interval + timeout is 1.15 s)");
    assert!(
        took < Duration::from_millis(1150 + 1500),
        "within the detection bound and a scheduling margin: {took:?}"
    );
    drop(d.running.shutdown().await);
}

/// The whole daemon over two real MariaDB servers (read_only says which is the primary):
/// the VIP reaches only the writable one; a second writable one is a split brain that keeps
/// the VIP where it was; making the first read-only moves the VIP at once.
#[tokio::test]
async fn the_vip_follows_the_writable_mariadb() {
    let programs = [
        "/usr/bin/mariadb-install-db",
        "/usr/sbin/mariadbd",
        "/usr/bin/mariadb",
    ];
    if let Some(absent) = missing(&programs) {
        return skip("the_vip_follows_the_writable_mariadb", &absent);
    }
    let secrets = TempDir::new("vip-mariadb-secrets");
    let password = secrets.file("password", "probepw\n", 0o600);
    let template = Mariadb::install("vip-mariadb-template");
    let a = Mariadb::start(&template, "vip-mariadb-a", &["--server-id=1"]);
    let b = Mariadb::start(
        &template,
        "vip-mariadb-b",
        &["--server-id=2", "--read-only=ON"],
    );
    drop(template);
    for server in [&a, &b] {
        server.sql("CREATE USER 'probe'@'%' IDENTIFIED BY 'probepw'");
    }
    let yaml = format!(
        "control: {{ state_dir: {} }}\nservices:\n  - name: shop-db\n    vip: 127.66.22.1:3306\n    health: {{ kind: mysql, role: primary, user: probe, password_file: {}, interval: 300ms, timeout: 250ms, rise: 2, fall: 3 }}\n    backends:\n      - {{ name: db-a, address: '{}' }}\n      - {{ name: db-b, address: '{}' }}\n",
        secrets.path().join("state").display(),
        password.display(),
        a.addr(),
        b.addr(),
    );
    let d = VipDaemon::start(&yaml, "127.66.22.1:3306").await;
    d.until(
        Duration::from_secs(15),
        "only the writable one",
        &[a.addr()],
    )
    .await;

    b.sql("SET GLOBAL read_only = OFF");
    d.until_split_brain("shop-db", Duration::from_secs(10))
        .await;
    assert_eq!(d.table(), vec![a.addr()], "the VIP stays on the one it had");

    a.sql("SET GLOBAL read_only = ON");
    let took = d
        .until(
            Duration::from_secs(10),
            "the writable one alone",
            &[b.addr()],
        )
        .await;
    eprintln!("db-a made read-only → VIP on db-b: {took:?}");
    drop(d.running.shutdown().await);
}
