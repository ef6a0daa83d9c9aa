//! The send/expect probe (HAProxy's `tcp-check send`/`expect` idea): connect, send bytes,
//! and read until the reply contains a substring or matches a regex, all within the timeout.

use std::{fmt, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    time::Instant,
};

use super::{tcp, within, ProbeError, ProbeOk};

/// The most of a reply that is read and searched: a backend that streams must not cost
/// the daemon more than this.
pub(super) const REPLY_LIMIT: usize = 64 * 1024;

/// What a send/expect probe sends and looks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpectCheck {
    /// Bytes written right after the connect. Empty: nothing is sent (for protocols
    /// whose server talks first: SMTP, SSH, FTP).
    pub send: Vec<u8>,
    /// What the reply (its first 64 KiB) must contain.
    pub expect: Expect,
}

/// What a reply must contain.
#[derive(Clone, Debug)]
pub enum Expect {
    /// These bytes, anywhere in the reply.
    Substring(String),
    /// A match anywhere in the reply, decoded as UTF-8 (invalid bytes become U+FFFD).
    Regex(regex::Regex),
}

impl PartialEq for Expect {
    /// Two regexes are equal when their sources are: the prober shares a loop between
    /// backends whose checks are equal.
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Expect::Substring(a), Expect::Substring(b)) => a == b,
            (Expect::Regex(a), Expect::Regex(b)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl Eq for Expect {}

impl fmt::Display for Expect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expect::Substring(s) => write!(f, "{s:?}"),
            Expect::Regex(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

impl Expect {
    /// The matched text when `reply` satisfies it.
    fn find(&self, reply: &[u8]) -> Option<String> {
        match self {
            Expect::Substring(s) => {
                let needle = s.as_bytes();
                (needle.is_empty() || reply.windows(needle.len()).any(|w| w == needle))
                    .then(|| s.clone())
            }
            Expect::Regex(r) => r
                .find(&String::from_utf8_lossy(reply))
                .map(|m| m.as_str().to_owned()),
        }
    }
}

/// Sends `check.send` to `addr` and waits for the expected reply.
pub(super) async fn check(
    check: &ExpectCheck,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<ProbeOk, ProbeError> {
    let started = Instant::now();
    let matched = within(addr, timeout, exchange(check, addr)).await?;
    Ok(ProbeOk::new(
        started.elapsed(),
        format!("matched {:?}", shorten(&matched, 64)),
    ))
}

async fn exchange(check: &ExpectCheck, addr: SocketAddr) -> Result<String, ProbeError> {
    let mut stream = tcp::connect(addr).await?;
    let io = |source| ProbeError::Other { addr, source };
    if !check.send.is_empty() {
        stream.write_all(&check.send).await.map_err(io)?;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    // Searched after every read: a server that answers and then keeps the connection open
    // (most do) passes as soon as the text is in.
    loop {
        if let Some(matched) = check.expect.find(&reply) {
            return Ok(matched);
        }
        if reply.len() >= REPLY_LIMIT {
            break;
        }
        let want = buf.len().min(REPLY_LIMIT - reply.len());
        let n = stream.read(&mut buf[..want]).await.map_err(io)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    Err(ProbeError::Expect {
        addr,
        expected: check.expect.to_string(),
        got: shorten(&String::from_utf8_lossy(&reply), 128),
    })
}

/// At most `max` bytes of `text`, cut on a character boundary.
fn shorten(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regexes_compare_by_source() {
        let a = Expect::Regex(regex::Regex::new("^\\+PONG").unwrap());
        let b = Expect::Regex(regex::Regex::new("^\\+PONG").unwrap());
        assert_eq!(a, b);
        assert_ne!(a, Expect::Substring("^\\+PONG".into()));
    }

    #[test]
    fn finds_substrings_and_regex_matches() {
        let sub = Expect::Substring("OK".into());
        assert_eq!(sub.find(b"+OK\r\n").as_deref(), Some("OK"));
        assert_eq!(sub.find(b"-ERR\r\n"), None);
        let re = Expect::Regex(regex::Regex::new(r"version (\d+)").unwrap());
        assert_eq!(
            re.find(b"hello version 42\n").as_deref(),
            Some("version 42")
        );
    }

    #[test]
    fn shortens_on_a_character_boundary() {
        assert_eq!(shorten("héllo", 2), "h");
        assert_eq!(shorten("abc", 8), "abc");
    }
}
