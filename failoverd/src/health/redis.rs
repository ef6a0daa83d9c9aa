//! The redis probe: `AUTH` when a password file is set, then `INFO replication`, over a
//! small RESP2 codec of its own (three reply types, bounded sizes), bounded as a whole by
//! the timeout.
//!
//! A codec of its own rather than the `redis` crate: the probe needs two commands and
//! three reply types, and owning the bytes lets it tell a server of another protocol
//! (`protocol`) from a refused login (`auth`) from a slow server (`timeout`) exactly,
//! without a connection manager, retries or a second dependency tree.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::TcpStream,
    time::Instant,
};

use super::{
    credentials,
    role::{judge, Seen},
    tcp, within, ProbeError, ProbeOk, Role, RoleWanted,
};

/// What a redis probe asks and accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisCheck {
    /// The role that passes (`primary` is Redis' `master`). Default: `Primary`.
    pub role: RoleWanted,
    /// The ACL user for `AUTH`. Default: `None`, `AUTH password` (the `default` user).
    pub username: Option<String>,
    /// A file holding the password, read at each probe. Default: `None`, no `AUTH`.
    pub password_file: Option<PathBuf>,
    /// For a replica: the most `master_last_io_seconds_ago` that passes; a replica whose
    /// link to its master is down fails. Default: `None`, any lag.
    pub max_lag: Option<Duration>,
}

impl Default for RedisCheck {
    fn default() -> Self {
        RedisCheck {
            role: RoleWanted::Primary,
            username: None,
            password_file: None,
            max_lag: None,
        }
    }
}

/// The longest reply line or bulk string read: `INFO replication` is well under 1 KiB
/// per replica, so this leaves room for a few hundred of them.
const MAX_REPLY: usize = 64 * 1024;

/// What `INFO replication` said.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Replication {
    role: Role,
    /// `master_host:master_port`, for a replica.
    master: Option<String>,
    /// `master_link_status:up`.
    link_up: bool,
    /// `master_last_io_seconds_ago`, while the link is up.
    last_io: Option<u64>,
}

/// Logs in to `addr` and asks its role.
pub(super) async fn check(
    check: &RedisCheck,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<ProbeOk, ProbeError> {
    let started = Instant::now();
    let replication = within(addr, timeout, exchange(check, addr)).await?;
    let seen = Seen {
        role: replication.role,
        lag: replication
            .last_io
            .filter(|_| replication.link_up)
            .map(Duration::from_secs),
    };
    judge(addr, check.role, check.max_lag, seen)?;
    Ok(ProbeOk {
        latency: started.elapsed(),
        detail: evidence(&replication),
        role: Some(seen.role),
    })
}

fn evidence(r: &Replication) -> String {
    match r.role {
        Role::Primary => "master".to_owned(),
        Role::Replica => {
            let mut text = format!(
                "replica of {}, link {}",
                r.master.as_deref().unwrap_or("?"),
                if r.link_up { "up" } else { "down" }
            );
            if let (true, Some(secs)) = (r.link_up, r.last_io) {
                text.push_str(&format!(", last io {secs}s ago"));
            }
            text
        }
    }
}

async fn exchange(check: &RedisCheck, addr: SocketAddr) -> Result<Replication, ProbeError> {
    let password = credentials::read_optional(check.password_file.as_deref()).await?;
    let stream = tcp::connect(addr).await?;
    let mut conn = BufReader::new(stream);
    if let Some(password) = password {
        let mut auth = vec!["AUTH"];
        if let Some(user) = &check.username {
            auth.push(user);
        }
        auth.push(&password);
        send(&mut conn, &auth, addr).await?;
        match read_reply(&mut conn, addr).await? {
            Reply::Simple(_) => {}
            Reply::Error(message) => return Err(ProbeError::Auth { addr, message }),
            Reply::Bulk(_) => return Err(protocol(addr, "AUTH answered a bulk string")),
        }
    }
    send(&mut conn, &["INFO", "replication"], addr).await?;
    let info = match read_reply(&mut conn, addr).await? {
        Reply::Bulk(info) => info,
        Reply::Error(message) if is_auth_error(&message) => {
            return Err(ProbeError::Auth { addr, message })
        }
        Reply::Error(message) => return Err(ProbeError::Query { addr, message }),
        Reply::Simple(s) => return Err(protocol(addr, &format!("INFO answered the status {s:?}"))),
    };
    parse_info(&info).ok_or_else(|| protocol(addr, "INFO replication has no known role line"))
}

/// `NOAUTH Authentication required.`, `WRONGPASS ...`, `NOPERM ...`.
fn is_auth_error(message: &str) -> bool {
    ["NOAUTH", "WRONGPASS", "NOPERM"]
        .iter()
        .any(|p| message.starts_with(p))
}

async fn send(
    conn: &mut BufReader<TcpStream>,
    args: &[&str],
    addr: SocketAddr,
) -> Result<(), ProbeError> {
    let mut frame = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        frame.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        frame.extend_from_slice(arg.as_bytes());
        frame.extend_from_slice(b"\r\n");
    }
    conn.get_mut()
        .write_all(&frame)
        .await
        .map_err(|source| ProbeError::Other { addr, source })
}

/// The RESP2 replies the probe expects.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// `+OK`.
    Simple(String),
    /// `-ERR ...`.
    Error(String),
    /// `$n` then n bytes.
    Bulk(String),
}

async fn read_line(
    conn: &mut BufReader<TcpStream>,
    addr: SocketAddr,
) -> Result<Vec<u8>, ProbeError> {
    let mut line = Vec::new();
    let read = (&mut *conn)
        .take(MAX_REPLY as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|source| ProbeError::Other { addr, source })?;
    if read == 0 {
        return Err(protocol(
            addr,
            "the server closed the connection without a reply",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(protocol(
            addr,
            "a reply line longer than 64 KiB or without CRLF",
        ));
    }
    line.truncate(line.len() - 2);
    Ok(line)
}

async fn read_reply(
    conn: &mut BufReader<TcpStream>,
    addr: SocketAddr,
) -> Result<Reply, ProbeError> {
    let line = read_line(conn, addr).await?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match line.first() {
        Some(b'+') => Ok(Reply::Simple(text(&line[1..]))),
        Some(b'-') => Ok(Reply::Error(text(&line[1..]))),
        Some(b'$') => {
            let len: usize = std::str::from_utf8(&line[1..])
                .ok()
                .and_then(|n| n.parse().ok())
                .filter(|&n| n <= MAX_REPLY)
                .ok_or_else(|| protocol(addr, "a bulk length that is no number or over 64 KiB"))?;
            let mut body = vec![0; len + 2];
            conn.read_exact(&mut body)
                .await
                .map_err(|_| protocol(addr, "the connection closed inside a bulk string"))?;
            body.truncate(len);
            Ok(Reply::Bulk(text(&body)))
        }
        _ => Err(protocol(
            addr,
            &format!("the reply starts {:?}", excerpt(&line)),
        )),
    }
}

/// At most 32 bytes, lossily decoded: enough to recognise what answered.
fn excerpt(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(32)]).into_owned()
}

fn parse_info(info: &str) -> Option<Replication> {
    let mut role = None;
    let (mut host, mut port) = (None, None);
    let mut link_up = false;
    let mut last_io = None;
    for line in info.lines() {
        let Some((key, value)) = line.trim_end().split_once(':') else {
            continue;
        };
        match key {
            "role" => {
                role = match value {
                    "master" => Some(Role::Primary),
                    "slave" | "replica" => Some(Role::Replica),
                    _ => None,
                }
            }
            "master_host" => host = Some(value.to_owned()),
            "master_port" => port = Some(value.to_owned()),
            "master_link_status" => link_up = value == "up",
            // -1 while the link has never been up.
            "master_last_io_seconds_ago" => last_io = value.parse::<u64>().ok(),
            _ => {}
        }
    }
    Some(Replication {
        role: role?,
        master: host.map(|h| format!("{h}:{}", port.unwrap_or_default())),
        link_up,
        last_io,
    })
}

fn protocol(addr: SocketAddr, detail: &str) -> ProbeError {
    ProbeError::Protocol {
        addr,
        protocol: "redis",
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPLICA: &str = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\n\
        master_port:6379\r\nmaster_link_status:up\r\nmaster_last_io_seconds_ago:2\r\n\
        master_sync_in_progress:0\r\n";

    #[test]
    fn parses_a_replica_and_its_link() {
        let r = parse_info(REPLICA).unwrap();
        assert_eq!(
            r,
            Replication {
                role: Role::Replica,
                master: Some("127.0.0.1:6379".into()),
                link_up: true,
                last_io: Some(2),
            }
        );
        assert_eq!(
            evidence(&r),
            "replica of 127.0.0.1:6379, link up, last io 2s ago"
        );
    }

    #[test]
    fn parses_a_master() {
        let r = parse_info("# Replication\r\nrole:master\r\nconnected_slaves:0\r\n").unwrap();
        assert_eq!(r.role, Role::Primary);
        assert_eq!(evidence(&r), "master");
    }

    #[test]
    fn a_down_link_has_no_lag() {
        let info = REPLICA
            .replace("link_status:up", "link_status:down")
            .replace("io_seconds_ago:2", "io_seconds_ago:-1");
        let r = parse_info(&info).unwrap();
        assert!(!r.link_up);
        assert_eq!(r.last_io, None);
        assert_eq!(evidence(&r), "replica of 127.0.0.1:6379, link down");
    }

    #[test]
    fn no_role_line_is_no_answer() {
        assert_eq!(parse_info("# Replication\r\n"), None);
    }
}
