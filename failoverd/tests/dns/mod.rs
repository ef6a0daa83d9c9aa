//! A tiny authoritative DNS responder on 127.0.0.1 for tests: answers A and AAAA from a table
//! the test changes at run time, NXDOMAIN for names not in it, SERVFAIL for names set failing.
//!
//! Serves UDP and, on the same port when the kernel allows it, TCP. Point a resolver at
//! [`TestDns::addr`]. Everything stops when the [`TestDns`] is dropped. Each test binary that
//! declares `mod dns;` uses part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// A serving loop gives up after this many socket errors in a row, rather than spin.
const MAX_CONSECUTIVE_ERRORS: u32 = 100;
/// Queries answered on one TCP connection before the responder hangs up.
const MAX_TCP_QUERIES: u32 = 1_000;
/// Tries at finding a port free for both UDP and TCP.
const MAX_BIND_ATTEMPTS: u32 = 16;
/// Larger than any query a resolver sends over UDP (EDNS payloads are about 1232 bytes).
const UDP_BUFFER: usize = 4096;

/// A loopback DNS responder whose answers the test controls. Stops on drop.
pub struct TestDns {
    addr: SocketAddr,
    table: Arc<Mutex<Table>>,
    /// Dropping the set aborts the serving tasks, which drop their sockets and connections.
    _tasks: JoinSet<()>,
}

#[derive(Default)]
struct Table {
    names: HashMap<String, Entry>,
    queries: HashMap<String, u64>,
}

#[derive(Default)]
struct Entry {
    addrs: Vec<IpAddr>,
    ttl: u32,
    failing: bool,
}

impl TestDns {
    /// Binds 127.0.0.1 on a free port and starts answering. The table starts empty: every
    /// name is NXDOMAIN until [`TestDns::set`].
    pub async fn start() -> io::Result<TestDns> {
        let (udp, tcp) = bind().await?;
        let addr = udp.local_addr()?;
        let table = Arc::new(Mutex::new(Table::default()));
        let mut tasks = JoinSet::new();
        tasks.spawn(serve_udp(udp, Arc::clone(&table)));
        if let Some(tcp) = tcp {
            tasks.spawn(serve_tcp(tcp, Arc::clone(&table)));
        }
        Ok(TestDns {
            addr,
            table,
            _tasks: tasks,
        })
    }

    /// Where the responder listens (UDP, and TCP if it could bind the same port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers `name` (case and a trailing dot do not matter) with `addrs` from now on: A
    /// queries get the IPv4 ones, AAAA queries the IPv6 ones, each record with `ttl` seconds.
    /// Keeps the name's failing flag.
    pub fn set(&self, name: &str, addrs: &[IpAddr], ttl: u32) {
        let mut table = self.lock();
        let entry = table.names.entry(normalize(name)).or_default();
        entry.addrs = addrs.to_vec();
        entry.ttl = ttl;
    }

    /// Makes queries for `name` get SERVFAIL (`true`) or the table's answer again (`false`).
    /// A name failed before it was [`set`](TestDns::set) has no records once it recovers.
    pub fn set_failing(&self, name: &str, failing: bool) {
        self.lock()
            .names
            .entry(normalize(name))
            .or_default()
            .failing = failing;
    }

    /// Queries of any type received for `name` so far, over UDP and TCP.
    pub fn queries(&self, name: &str) -> u64 {
        self.lock()
            .queries
            .get(&normalize(name))
            .copied()
            .unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // A panicking test thread must not hide the table from the others.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// A UDP socket and, if possible, a TCP listener on the same 127.0.0.1 port.
async fn bind() -> io::Result<(UdpSocket, Option<TcpListener>)> {
    for _ in 0..MAX_BIND_ATTEMPTS {
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, Some(tcp))),
            Err(error) if error.kind() == io::ErrorKind::AddrInUse => continue,
            Err(error) => return Err(error),
        }
    }
    // UDP alone still works: resolvers switch to TCP only after a truncated UDP answer, and
    // this responder never truncates.
    Ok((UdpSocket::bind("127.0.0.1:0").await?, None))
}

async fn serve_udp(socket: UdpSocket, table: Arc<Mutex<Table>>) {
    let mut buffer = vec![0u8; UDP_BUFFER];
    let mut errors = 0;
    // Ends when the TestDns drops (the task is aborted) or the socket keeps failing. Errors
    // are expected now and then: Linux reports an earlier reply's ICMP port-unreachable on
    // the next receive when a resolver has already given up on a query.
    while errors < MAX_CONSECUTIVE_ERRORS {
        let (len, peer) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(_) => {
                errors += 1;
                continue;
            }
        };
        let Some(reply) = respond(&table, &buffer[..len]) else {
            continue;
        };
        errors = match socket.send_to(&reply, peer).await {
            Ok(_) => 0,
            Err(_) => errors + 1,
        };
    }
}

async fn serve_tcp(listener: TcpListener, table: Arc<Mutex<Table>>) {
    // Owned by this task: aborting it on drop aborts every connection too.
    let mut connections = JoinSet::new();
    let mut errors = 0;
    while errors < MAX_CONSECUTIVE_ERRORS {
        match listener.accept().await {
            Ok((stream, _)) => {
                errors = 0;
                connections.spawn(serve_connection(stream, Arc::clone(&table)));
            }
            Err(_) => errors += 1,
        }
        // Bounded by the set's size: reaps connections that have already ended.
        while connections.try_join_next().is_some() {}
    }
}

/// Answers length-prefixed queries until the peer hangs up or sends garbage.
async fn serve_connection(mut stream: TcpStream, table: Arc<Mutex<Table>>) {
    for _ in 0..MAX_TCP_QUERIES {
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        if stream.read_exact(&mut query).await.is_err() {
            return;
        }
        let Some(reply) = respond(&table, &query) else {
            return;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_all(&reply_len.to_be_bytes()).await.is_err()
            || stream.write_all(&reply).await.is_err()
        {
            return;
        }
    }
}

/// The wire-format reply to a wire-format query, or `None` for something not worth answering.
fn respond(table: &Mutex<Table>, query: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_queries(request.queries.iter().cloned());
    if let Some(edns) = &request.edns {
        // RFC 6891: a query with OPT gets a response with OPT.
        response.set_edns(edns.clone());
    }
    let Some(question) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response.to_vec().ok();
    };
    let key = normalize(&question.name().to_ascii());
    let mut table = table.lock().unwrap_or_else(PoisonError::into_inner);
    *table.queries.entry(key.clone()).or_default() += 1;
    match table.names.get(&key) {
        None => response.metadata.response_code = ResponseCode::NXDomain,
        Some(entry) if entry.failing => response.metadata.response_code = ResponseCode::ServFail,
        Some(entry) => {
            for ip in &entry.addrs {
                let rdata = match (ip, question.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A((*v4).into()),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA((*v6).into()),
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(
                    question.name().clone(),
                    entry.ttl,
                    rdata,
                ));
            }
        }
    }
    drop(table);
    response.to_vec().ok()
}
