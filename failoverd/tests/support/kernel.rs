//! The kernel's side of a trial: a VIP's table as the pinned map holds it, polled until it matches.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use failoverd::datapath::{DatapathError, PinnedMaps, Protocol, Vip};

use super::env::Env;

/// How often `until_table` looks.
const POLL: Duration = Duration::from_millis(5);

/// A TCP VIP from `ip:port`.
pub fn tcp_vip(addr: &str) -> Vip {
    Vip {
        addr: addr.parse().expect("test VIP"),
        protocol: Protocol::Tcp,
    }
}

/// `127.0.0.1:0`: a backend on any free loopback port.
pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("loopback")
}

/// `Ok(())` when `cond` holds, else the message `what` builds (a test failure).
pub fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), libtest_mimic::Failed> {
    if cond {
        Ok(())
    } else {
        Err(what().into())
    }
}

/// The backends the kernel's table for `vip` holds now, sorted; `None` when
/// there is no table, or no datapath pinned yet.
pub fn table(env: &Env, vip: Vip) -> Result<Option<Vec<SocketAddr>>, String> {
    let maps = match PinnedMaps::open(env.pins.path()) {
        Ok(maps) => maps,
        Err(DatapathError::NotPinned { .. }) => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let tables = maps.tables().map_err(|e| e.to_string())?;
    Ok(tables.get(&vip).map(|t| {
        let mut addrs: Vec<SocketAddr> = t.table.backends.iter().map(|b| b.addr).collect();
        addrs.sort();
        addrs
    }))
}

/// A table of exactly these backends (any order).
pub fn exactly(addrs: &[SocketAddr]) -> impl Fn(&Option<Vec<SocketAddr>>) -> bool {
    let mut want = addrs.to_vec();
    want.sort();
    move |t| t.as_deref() == Some(&want[..])
}

/// Polls the kernel's table for `vip` until `want` holds; returns how long it
/// took, or fails after `limit` naming the last table seen. Blocking: from
/// async code call it inside `tokio::task::block_in_place`.
pub fn until_table(
    env: &Env,
    vip: Vip,
    limit: Duration,
    want: impl Fn(&Option<Vec<SocketAddr>>) -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        let now = table(env, vip)?;
        if want(&now) {
            return Ok(start.elapsed());
        }
        last = now;
        std::thread::sleep(POLL);
    }
    Err(format!(
        "the table for {vip} did not reach the wanted state within {limit:?}; last: {last:?}"
    ))
}
