//! The daemon's event feed: every transition, failover, drain and reload, for `failoverd events`.

use std::{
    collections::VecDeque,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::broadcast;

/// One recorded event: what happened, numbered and timed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventRecord {
    /// Increasing number; ask for events after the last one seen.
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// `backend`, `failover`, `drain`, `reload`, `split_brain`, `terminate`.
    pub kind: &'static str,
    /// The service (empty for a reload).
    pub service: String,
    /// The backend, if any.
    pub backend: Option<String>,
    /// Before.
    pub from: Option<String>,
    /// After.
    pub to: Option<String>,
    /// Evidence.
    pub detail: String,
}

/// The kept events after a sequence number.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventsAfter {
    /// Events with `seq > after`, oldest first.
    pub events: Vec<EventRecord>,
    /// Pass this as `after` next time.
    pub next: u64,
}

/// Events kept for `failoverd events` without `--follow`.
pub const KEPT: usize = 1024;

/// Where events go: a ring of the last [`KEPT`] and a broadcast for waiters.
pub struct Events {
    ring: Mutex<(u64, VecDeque<EventRecord>)>,
    tx: broadcast::Sender<u64>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            ring: Mutex::new((0, VecDeque::with_capacity(KEPT))),
            tx: broadcast::channel(64).0,
        }
    }
}

/// What happened, before it gets a number and a time.
pub struct Event<'a> {
    /// `backend`, `failover`, `drain`, `reload`, `split_brain`, `terminate`.
    pub kind: &'static str,
    /// The service (empty for a reload).
    pub service: &'a str,
    /// The backend, if any.
    pub backend: Option<&'a str>,
    /// Before.
    pub from: Option<String>,
    /// After.
    pub to: Option<String>,
    /// Evidence.
    pub detail: String,
}

impl Events {
    /// Records an event and wakes every waiter.
    pub fn emit(&self, event: Event<'_>) {
        let at_unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let seq = {
            let mut ring = self.ring.lock().expect("events lock");
            ring.0 += 1;
            let seq = ring.0;
            if ring.1.len() == KEPT {
                ring.1.pop_front();
            }
            ring.1.push_back(EventRecord {
                seq,
                at_unix_ms,
                kind: event.kind,
                service: event.service.to_string(),
                backend: event.backend.map(str::to_string),
                from: event.from,
                to: event.to,
                detail: event.detail,
            });
            seq
        };
        // No waiter is not an error.
        self.tx.send(seq).ok();
    }

    /// The kept events after `after`.
    pub fn after(&self, after: u64) -> EventsAfter {
        let ring = self.ring.lock().expect("events lock");
        EventsAfter {
            events: ring.1.iter().filter(|e| e.seq > after).cloned().collect(),
            next: ring.0.max(after),
        }
    }

    /// Like [`Self::after`], but waits up to `limit` for a first new event.
    pub async fn wait_after(&self, after: u64, limit: Duration) -> EventsAfter {
        // Subscribe before looking, so an event between the two is not missed.
        let mut woken = self.tx.subscribe();
        let now = self.after(after);
        if !now.events.is_empty() {
            return now;
        }
        // A timeout, a lagged receiver or a closed channel all mean "look again".
        tokio::time::timeout(limit, woken.recv()).await.ok();
        self.after(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(n: usize) -> Event<'static> {
        Event {
            kind: "backend",
            service: "svc",
            backend: Some("a"),
            from: None,
            to: Some("healthy".into()),
            detail: n.to_string(),
        }
    }

    #[test]
    fn keeps_the_last_events_in_order() {
        let events = Events::default();
        for n in 0..KEPT + 5 {
            events.emit(event(n));
        }
        let all = events.after(0);
        assert_eq!(all.events.len(), KEPT);
        assert_eq!(all.events[0].seq, 6);
        assert_eq!(all.next, (KEPT + 5) as u64);
        assert_eq!(events.after(all.next).events.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_on_the_next_event_and_times_out_otherwise() {
        let events = std::sync::Arc::new(Events::default());
        let waiter = {
            let events = std::sync::Arc::clone(&events);
            tokio::spawn(async move { events.wait_after(0, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        events.emit(event(1));
        assert_eq!(waiter.await.unwrap().events.len(), 1);
        let empty = events.wait_after(1, Duration::from_secs(5)).await;
        assert!(empty.events.is_empty());
        assert_eq!(empty.next, 1);
    }
}
