//! `failoverd::resolve` against a loopback DNS responder and a temporary hosts file: lookups
//! and TTL clamping, and a watched name following changes (in DNS and in the hosts file),
//! riding out failures, and stopping on shutdown.

mod dns;

use std::error::Error;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use failoverd::resolve::{watch, AddrSet, ResolveError, Resolver, ResolverSettings};
use tokio::net::UdpSocket;
use tokio::sync::watch as channel;
use tokio::time::timeout;

use dns::TestDns;

type TestResult = Result<(), Box<dyn Error>>;

/// The port watched names are paired with; nothing connects to it.
const PORT: u16 = 5432;
/// Upper bound for anything a test waits for. Tests end as soon as the awaited change
/// arrives; the bound only turns a hang into a failure.
const WAIT: Duration = Duration::from_secs(5);
/// Below hickory's 5 s query timeout: a task that stops within this was interrupted
/// mid-lookup rather than left to time out.
const PROMPT: Duration = Duration::from_secs(2);

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn socket(text: &str) -> SocketAddr {
    SocketAddr::new(ip(text), PORT)
}

fn resolver(dns: &TestDns, min_ttl: Duration, max_ttl: Duration) -> Resolver {
    Resolver::new(&ResolverSettings {
        nameservers: Some(vec![dns.addr()]),
        min_ttl,
        max_ttl,
    })
    .expect("resolver for the test nameserver")
}

/// A hosts file of the test's own, under cargo's per-target temporary directory (never the real
/// `/etc/hosts`); its directory is removed on drop.
struct TempHosts {
    dir: PathBuf,
}

impl TempHosts {
    fn new(tag: &str, text: &str) -> TempHosts {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "resolve-hosts-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temporary hosts directory");
        let hosts = TempHosts { dir };
        hosts.write(text);
        hosts
    }

    fn path(&self) -> PathBuf {
        self.dir.join("hosts")
    }

    /// Rewrites the file in place (same inode), as `echo ... > /etc/hosts` does.
    fn write(&self, text: &str) {
        std::fs::write(self.path(), text).expect("write the temporary hosts file");
    }
}

impl Drop for TempHosts {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("cannot remove {}: {error}", self.dir.display());
        }
    }
}

/// Waits (bounded by [`WAIT`]) until the published set satisfies `ready`, and returns it.
async fn wait_for(
    rx: &mut channel::Receiver<AddrSet>,
    what: &str,
    ready: impl FnMut(&AddrSet) -> bool,
) -> AddrSet {
    wait_within(rx, WAIT, what, ready).await
}

/// Waits (bounded by `bound`) until the published set satisfies `ready`, and returns it.
async fn wait_within(
    rx: &mut channel::Receiver<AddrSet>,
    bound: Duration,
    what: &str,
    ready: impl FnMut(&AddrSet) -> bool,
) -> AddrSet {
    let waited = timeout(bound, rx.wait_for(ready))
        .await
        .map(|seen| seen.map(|set| set.clone()));
    match waited {
        Ok(Ok(set)) => set,
        Ok(Err(_)) => panic!("the watch task ended while waiting for {what}"),
        Err(_) => panic!("no {what} within {bound:?}; last set: {:?}", *rx.borrow()),
    }
}

#[tokio::test]
async fn lookup_returns_sorted_addresses_with_a_short_ttl_raised_to_min_ttl() -> TestResult {
    let dns = TestDns::start().await?;
    let addrs = [ip("127.0.0.3"), ip("::1"), ip("127.0.0.2")];
    dns.set("api.failoverd.test", &addrs, 1);
    let resolver = resolver(&dns, Duration::from_secs(2), Duration::from_secs(300));

    let answer = resolver.lookup("api.failoverd.test").await?;

    assert_eq!(
        answer.addrs,
        vec![ip("127.0.0.2"), ip("127.0.0.3"), ip("::1")]
    );
    assert_eq!(answer.ttl, Duration::from_secs(2));
    Ok(())
}

#[tokio::test]
async fn lookup_lowers_a_long_ttl_to_max_ttl() -> TestResult {
    let dns = TestDns::start().await?;
    dns.set("db.failoverd.test", &[ip("127.0.0.5")], 3600);
    let resolver = resolver(&dns, Duration::from_secs(5), Duration::from_secs(300));

    let answer = resolver.lookup("db.failoverd.test").await?;

    assert_eq!(answer.addrs, vec![ip("127.0.0.5")]);
    assert_eq!(answer.ttl, Duration::from_secs(300));
    Ok(())
}

#[tokio::test]
async fn lookup_of_a_literal_address_asks_no_nameserver() -> TestResult {
    let dns = TestDns::start().await?;
    let resolver = resolver(&dns, Duration::from_secs(5), Duration::from_secs(300));

    let answer = resolver.lookup("127.0.0.1").await?;

    assert_eq!(answer.addrs, vec![ip("127.0.0.1")]);
    assert_eq!(dns.queries("127.0.0.1"), 0);
    Ok(())
}

#[tokio::test]
async fn lookup_of_a_missing_name_fails_naming_the_host() -> TestResult {
    let dns = TestDns::start().await?;
    let resolver = resolver(&dns, Duration::from_secs(5), Duration::from_secs(300));

    let error = resolver
        .lookup("missing.failoverd.test")
        .await
        .expect_err("NXDOMAIN must not resolve");

    match &error {
        ResolveError::NoAddresses { host, nxdomain } => {
            assert_eq!(host, "missing.failoverd.test");
            assert!(nxdomain, "the responder said NXDOMAIN");
        }
        other => panic!("expected NoAddresses, got {other:?}"),
    }
    assert!(
        error.to_string().contains("missing.failoverd.test"),
        "{error}"
    );
    assert!(dns.queries("missing.failoverd.test") > 0);
    Ok(())
}

#[tokio::test]
async fn watch_follows_a_changed_address() -> TestResult {
    let dns = TestDns::start().await?;
    dns.set("app.failoverd.test", &[ip("127.0.0.10")], 1);
    let resolver = resolver(&dns, Duration::from_secs(1), Duration::from_secs(300));
    let (stop, shutdown) = channel::channel(false);
    let (mut rx, task) = watch(resolver, "app.failoverd.test".into(), PORT, shutdown);

    let first = wait_for(&mut rx, "a first answer", |set| set.resolved).await;
    assert_eq!(first.addrs, vec![socket("127.0.0.10")]);
    assert_eq!(first.last_error, None);

    dns.set("app.failoverd.test", &[ip("127.0.0.11")], 1);
    let changed = wait_for(&mut rx, "the new address", |set| {
        set.addrs == [socket("127.0.0.11")]
    })
    .await;
    assert!(changed.resolved);

    stop.send(true)?;
    timeout(PROMPT, task).await??;
    Ok(())
}

#[tokio::test]
async fn failing_lookups_keep_the_last_answer_until_recovery() -> TestResult {
    let dns = TestDns::start().await?;
    dns.set("flaky.failoverd.test", &[ip("127.0.0.20")], 1);
    let resolver = resolver(&dns, Duration::from_secs(1), Duration::from_secs(300));
    let (stop, shutdown) = channel::channel(false);
    let (mut rx, task) = watch(resolver, "flaky.failoverd.test".into(), PORT, shutdown);
    wait_for(&mut rx, "a first answer", |set| set.resolved).await;

    dns.set_failing("flaky.failoverd.test", true);
    let failing = wait_for(&mut rx, "a failure", |set| set.last_error.is_some()).await;
    assert_eq!(failing.addrs, vec![socket("127.0.0.20")]);
    assert!(failing.resolved);
    let error = failing.last_error.unwrap_or_default();
    assert!(error.contains("flaky.failoverd.test"), "{error}");

    dns.set("flaky.failoverd.test", &[ip("127.0.0.21")], 1);
    dns.set_failing("flaky.failoverd.test", false);
    let recovered = wait_for(&mut rx, "recovery with the new address", |set| {
        set.last_error.is_none() && set.addrs == [socket("127.0.0.21")]
    })
    .await;
    assert!(recovered.resolved);

    stop.send(true)?;
    timeout(PROMPT, task).await??;
    Ok(())
}

#[tokio::test]
async fn watch_never_blocks_on_a_silent_nameserver_and_stops_mid_lookup() -> TestResult {
    // Bound but never answered: queries vanish as they would into a dead nameserver.
    let silent = UdpSocket::bind("127.0.0.1:0").await?;
    let resolver = Resolver::new(&ResolverSettings {
        nameservers: Some(vec![silent.local_addr()?]),
        ..ResolverSettings::default()
    })?;
    let (stop, shutdown) = channel::channel(false);

    let (rx, task) = watch(resolver, "app.failoverd.test".into(), PORT, shutdown);
    assert_eq!(*rx.borrow(), AddrSet::default());

    // A query arriving proves the task is now inside a lookup that will never be answered.
    let mut buffer = [0u8; 1024];
    timeout(WAIT, silent.recv_from(&mut buffer)).await??;
    assert!(!rx.borrow().resolved);
    assert!(rx.borrow().addrs.is_empty());

    stop.send(true)?;
    timeout(PROMPT, task).await??;
    Ok(())
}

#[tokio::test]
async fn watch_stops_when_no_one_listens() -> TestResult {
    let dns = TestDns::start().await?;
    dns.set("idle.failoverd.test", &[ip("127.0.0.30")], 300);
    let resolver = resolver(&dns, Duration::from_secs(5), Duration::from_secs(300));
    let (_stop, shutdown) = channel::channel(false);
    let (mut rx, task) = watch(resolver, "idle.failoverd.test".into(), PORT, shutdown);
    wait_for(&mut rx, "a first answer", |set| set.resolved).await;

    // The task now sleeps out a 300 s TTL; losing its last receiver must end it anyway.
    drop(rx);
    timeout(PROMPT, task).await??;
    Ok(())
}

/// Hosts-file tests run on paused time: every sleep of the watch is skipped over at once, so
/// the bound is virtual and costs no real time. Longer than hickory's 5 s query timeout, so
/// that a lookup wrongly sent to the silent nameserver ends in a visible error, not the bound.
const HOSTS_WAIT: Duration = Duration::from_secs(60);

/// A UDP socket that never answers, as a nameserver: names in the hosts file must not need one.
/// Returns the socket, to check afterwards that nothing was asked of it.
async fn silent_nameserver() -> std::io::Result<UdpSocket> {
    UdpSocket::bind("127.0.0.1:0").await
}

fn assert_never_asked(silent: &UdpSocket) {
    let mut buffer = [0u8; 512];
    let asked = silent.try_recv_from(&mut buffer);
    assert!(
        matches!(&asked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a name in the hosts file was asked of the nameserver: {asked:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn watch_follows_an_edited_hosts_file() -> TestResult {
    const NAME: &str = "app.hosts.failoverd.test";
    let hosts = TempHosts::new("edit", &format!("127.0.0.51 {NAME} app\n::1 {NAME}\n"));
    let silent = silent_nameserver().await?;
    let settings = ResolverSettings {
        nameservers: Some(vec![silent.local_addr()?]),
        min_ttl: Duration::from_secs(1),
        // Short, so that a resolver that kept the file's first contents would re-resolve many
        // times within the bound and still fail.
        max_ttl: Duration::from_secs(2),
    };
    let resolver = Resolver::with_hosts_file(&settings, hosts.path())?;
    let (stop, shutdown) = channel::channel(false);
    let (mut rx, task) = watch(resolver, NAME.into(), PORT, shutdown);

    let first = wait_within(&mut rx, HOSTS_WAIT, "the hosts file's addresses", |set| {
        set.resolved
    })
    .await;
    assert_eq!(first.addrs, vec![socket("127.0.0.51"), socket("::1")]);
    assert_eq!(first.last_error, None);

    // Same length, in place: only the contents and timestamps change, not the size or inode.
    hosts.write(&format!("127.0.0.52 {NAME} app\n::1 {NAME}\n"));
    let edited = wait_within(&mut rx, HOSTS_WAIT, "the edited address", |set| {
        set.addrs == [socket("127.0.0.52"), socket("::1")]
    })
    .await;
    assert_eq!(edited.last_error, None);

    assert_never_asked(&silent);
    stop.send(true)?;
    timeout(PROMPT, task).await??;
    Ok(())
}

#[tokio::test(start_paused = true)]
async fn a_name_in_the_hosts_file_is_answered_from_it_alone_for_min_ttl() -> TestResult {
    // Only IPv4 in the file: the AAAA half must not go to a nameserver either (glibc's `files`
    // source answers the name whole), or a dead nameserver would fail a name the file knows.
    let hosts = TempHosts::new("alone", "127.0.0.61 db.hosts.failoverd.test\n");
    let silent = silent_nameserver().await?;
    let settings = ResolverSettings {
        nameservers: Some(vec![silent.local_addr()?]),
        min_ttl: Duration::from_secs(3),
        max_ttl: Duration::from_secs(300),
    };
    let resolver = Resolver::with_hosts_file(&settings, hosts.path())?;

    let answer = timeout(HOSTS_WAIT, resolver.lookup("DB.hosts.failoverd.test.")).await??;

    assert_eq!(answer.addrs, vec![ip("127.0.0.61")]);
    // The file can change at any time: a watch looks at it again after `min_ttl`.
    assert_eq!(answer.ttl, Duration::from_secs(3));
    assert_never_asked(&silent);
    Ok(())
}

#[tokio::test]
async fn a_name_removed_from_the_hosts_file_is_resolved_by_dns_again() -> TestResult {
    const NAME: &str = "moved.hosts.failoverd.test";
    let dns = TestDns::start().await?;
    dns.set(NAME, &[ip("127.0.0.72")], 1);
    let hosts = TempHosts::new("removed", &format!("127.0.0.71 {NAME}\n"));
    let settings = ResolverSettings {
        nameservers: Some(vec![dns.addr()]),
        min_ttl: Duration::from_secs(1),
        max_ttl: Duration::from_secs(300),
    };
    let resolver = Resolver::with_hosts_file(&settings, hosts.path())?;
    let (stop, shutdown) = channel::channel(false);
    let (mut rx, task) = watch(resolver, NAME.into(), PORT, shutdown);
    let first = wait_for(&mut rx, "the hosts file's address", |set| set.resolved).await;
    assert_eq!(first.addrs, vec![socket("127.0.0.71")]);

    hosts.write("127.0.0.1 localhost\n");
    let from_dns = wait_for(&mut rx, "the nameserver's address", |set| {
        set.addrs == [socket("127.0.0.72")]
    })
    .await;
    assert_eq!(from_dns.last_error, None);

    stop.send(true)?;
    timeout(PROMPT, task).await??;
    Ok(())
}
