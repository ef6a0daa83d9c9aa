//! The probe hub: loops shared per target, every result delivered to every subscriber once,
//! in order, however slowly it reads; lateness measured.

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::{Notify, Semaphore};

use super::*;
use crate::health::{HealthCheck, Probe, ProbeError, ProbeOk, ProbeResult};

fn target(addr: SocketAddr, interval_ms: u64) -> ProbeTarget {
    ProbeTarget {
        addr,
        probe: Arc::new(Probe::Tcp),
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(5),
    }
}

/// Answers pass, fail, pass, fail, … in the order probes finish, each after `takes`.
struct Alternating {
    probes: AtomicU32,
    takes: Duration,
}

impl Alternating {
    fn new(takes: Duration) -> Arc<Self> {
        Arc::new(Alternating {
            probes: AtomicU32::new(0),
            takes,
        })
    }
}

impl HealthCheck for Alternating {
    fn check<'a>(
        &'a self,
        _probe: &'a Probe,
        addr: SocketAddr,
        _timeout: Duration,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ProbeResult> + Send + 'a>> {
        Box::pin(async move {
            tokio::time::sleep(self.takes).await;
            if self
                .probes
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(2)
            {
                Ok(ProbeOk {
                    latency: self.takes,
                    detail: "connected".into(),
                    role: None,
                })
            } else {
                Err(ProbeError::Refused { addr })
            }
        })
    }
}

fn hub_with(checker: Arc<dyn HealthCheck>) -> ProbeHub {
    ProbeHub::new(checker, Arc::new(Semaphore::new(8)))
}

fn addr() -> SocketAddr {
    "127.0.0.1:7001".parse().unwrap()
}

/// Pass/fail of everything `s` has not read yet.
fn outcomes(s: &Subscription) -> Vec<bool> {
    let mut out = Vec::new();
    assert_eq!(s.read(&mut out), 0, "nothing lost");
    out.iter().map(|p| p.result.is_ok()).collect()
}

#[tokio::test(start_paused = true)]
async fn services_with_the_same_target_share_one_loop_until_the_last_leaves() {
    let hub = hub_with(Alternating::new(Duration::ZERO));
    let a = hub.subscribe(target(addr(), 10), Arc::new(Notify::new()));
    let b = hub.subscribe(target(addr(), 10), Arc::new(Notify::new()));
    assert_eq!(hub.targets(), 1, "one target, one loop");
    // Another interval is another target.
    let c = hub.subscribe(target(addr(), 20), Arc::new(Notify::new()));
    assert_eq!(hub.targets(), 2);
    drop(a);
    assert_eq!(hub.targets(), 2, "b still reads the first loop");
    drop(b);
    drop(c);
    assert_eq!(hub.targets(), 0, "no subscriber, no loop");
}

#[tokio::test(start_paused = true)]
async fn every_subscriber_reads_every_result_in_order_from_one_publish() {
    let hub = hub_with(Alternating::new(Duration::ZERO));
    let (bell_a, bell_b) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let a = hub.subscribe(target(addr(), 100), Arc::clone(&bell_a));
    let b = hub.subscribe(target(addr(), 100), Arc::clone(&bell_b));
    // `a` reads on every wake; `b` is a slow service that reads once at the end.
    let mut seen_a = Vec::new();
    for _ in 0..6 {
        tokio::time::timeout(Duration::from_secs(1), bell_a.notified())
            .await
            .expect("woken by the next result");
        seen_a.extend(outcomes(&a));
    }
    let seen_b = outcomes(&b);
    let published = a.feed.published();
    assert_eq!(
        hub.completed(),
        published,
        "one publish per probe, not one per subscriber"
    );
    assert_eq!(seen_a.len() as u64, published);
    // Both see the exact sequence the checker answered: what rise/fall counting needs.
    let expected: Vec<bool> = (0..published).map(|i| i % 2 == 0).collect();
    assert_eq!(seen_a, expected);
    assert_eq!(seen_b, expected, "the slow reader lost nothing");
    // Once everyone has read, the next publish drops what they took.
    tokio::time::timeout(Duration::from_secs(1), bell_a.notified())
        .await
        .expect("next result");
    assert_eq!(a.feed.kept(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_never_reads_does_not_hold_up_the_loop() {
    let hub = hub_with(Alternating::new(Duration::ZERO));
    let stalled = hub.subscribe(target(addr(), 10), Arc::new(Notify::new()));
    tokio::time::sleep(Duration::from_millis(10 * (feed::KEEP_MAX as u64 + 50))).await;
    let published = stalled.feed.published();
    assert!(
        published > feed::KEEP_MAX as u64 + 40,
        "the loop kept probing"
    );
    assert_eq!(stalled.feed.kept(), feed::KEEP_MAX, "bounded");
    let mut out = Vec::new();
    let lost = stalled.read(&mut out);
    assert_eq!(
        lost + out.len() as u64,
        published,
        "every result read or counted lost"
    );
    assert_eq!(out.len(), feed::KEEP_MAX);
    assert!(out.windows(2).all(|w| w[1].seq == w[0].seq + 1));
}

#[tokio::test(start_paused = true)]
async fn a_new_subscriber_reads_only_what_comes_after_it() {
    let hub = hub_with(Alternating::new(Duration::ZERO));
    let bell = Arc::new(Notify::new());
    let first = hub.subscribe(target(addr(), 100), Arc::clone(&bell));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let late = hub.subscribe(target(addr(), 100), Arc::new(Notify::new()));
    assert!(outcomes(&late).is_empty());
    assert!(!outcomes(&first).is_empty());
}

#[tokio::test(start_paused = true)]
async fn probes_that_start_late_show_as_lag() {
    // A probe that takes 2.5 intervals: the next start is 2 s after the slot it was due in.
    let hub = hub_with(Alternating::new(Duration::from_millis(2_500)));
    let _s = hub.subscribe(target(addr(), 1_000), Arc::new(Notify::new()));
    assert_eq!(hub.lag(), Duration::ZERO);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lag = hub.lag();
    assert!(
        lag >= Duration::from_millis(1_900) && lag <= Duration::from_millis(2_100),
        "lag {lag:?}"
    );
}

#[tokio::test]
async fn a_dead_target_reports_failures() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
        l.local_addr().expect("addr")
    };
    let hub = hub_with(Arc::new(crate::health::NetworkCheck));
    let bell = Arc::new(Notify::new());
    let s = hub.subscribe(target(dead, 10), Arc::clone(&bell));
    tokio::time::timeout(Duration::from_secs(1), bell.notified())
        .await
        .expect("a result");
    let mut out = Vec::new();
    s.read(&mut out);
    assert!(out.iter().all(|p| p.result.is_err()) && !out.is_empty());
}

#[tokio::test]
async fn equal_probes_are_one_allocation() {
    let hub = hub_with(Alternating::new(Duration::from_millis(1)));
    let tcp = crate::config::HealthConfig::default();
    let http = crate::config::HealthConfig {
        kind: crate::config::HealthKind::Http,
        ..Default::default()
    };
    let a = hub.shared_probe(Probe::for_config(&tcp));
    let b = hub.shared_probe(Probe::for_config(&http));
    let c = hub.shared_probe(Probe::for_config(&tcp));
    assert!(Arc::ptr_eq(&a, &c));
    assert!(!Arc::ptr_eq(&a, &b));
    assert_eq!(*b, Probe::for_config(&http));
}

/// What one publish of a pass looks like.
fn a_pass() -> Arc<ProbeResult> {
    Arc::new(Ok(ProbeOk {
        latency: Duration::from_millis(1),
        detail: "connected".into(),
        role: None,
    }))
}

#[test]
fn readers_that_arrive_out_of_id_order_each_read_every_result() {
    let feed = Feed::new(target(addr(), 100), std::sync::Weak::new());
    let bell = Arc::new(Notify::new());
    // Two services subscribing at once could hand their ids to the feed in either order.
    let seen: Vec<(u64, std::sync::atomic::AtomicU64)> = [5, 3, 4, 9, 1]
        .into_iter()
        .map(|id| (id, AtomicU64::new(feed.add_reader(id, Arc::clone(&bell)))))
        .collect();
    feed.publish(tokio::time::Instant::now(), a_pass());
    for (id, seen) in &seen {
        let mut out = Vec::new();
        assert_eq!(
            feed.read(*id, seen, &mut out),
            0,
            "reader {id} lost nothing"
        );
        assert_eq!(out.len(), 1, "reader {id} reads the one result");
    }
    for (id, _) in &seen {
        feed.remove_reader(*id);
    }
    assert_eq!(feed.remove_reader(1), 0, "every reader found and removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriptions_made_at_once_on_many_threads_all_read() {
    let hub = Arc::new(hub_with(Alternating::new(Duration::ZERO)));
    let bell = Arc::new(Notify::new());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (hub, bell) = (Arc::clone(&hub), Arc::clone(&bell));
            tokio::spawn(async move {
                (0..500)
                    .map(|_| hub.subscribe(target(addr(), 10), Arc::clone(&bell)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut subscriptions = Vec::new();
    for t in threads {
        subscriptions.extend(t.await.expect("subscribing thread"));
    }
    // Every subscription, whatever order its id reached the feed in, reads the next result.
    let published = subscriptions[0].feed.published();
    tokio::time::timeout(Duration::from_secs(5), async {
        while subscriptions[0].feed.published() == published {
            bell.notified().await;
        }
    })
    .await
    .expect("a result within 5 s");
    let unread = subscriptions
        .iter()
        .filter(|s| {
            let mut out = Vec::new();
            s.read(&mut out);
            out.is_empty()
        })
        .count();
    assert_eq!(unread, 0, "of {} subscriptions", subscriptions.len());
}
