//! A service task's mailbox for operator and DNS messages: a queue that holds memory only
//! while it holds messages, and the task's bell.
//!
//! A tokio channel costs every service about 1.5 KiB before its first message (its shared
//! state, cache-padded, and a first block of 32 slots); at 10,000 services that is 15 MiB for
//! queues that are empty nearly always. These messages are rare and never come in bursts a
//! bound would have to hold back (one status ask per service at a time, a drain, a DNS
//! answer), so the queue is unbounded and grows only while something waits in it.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::Notify;

use super::service::Message;

/// The shared queue: `None` once the service task has stopped reading.
struct Queue {
    messages: Mutex<Option<VecDeque<Message>>>,
    bell: Arc<Notify>,
}

/// Sends to one service task; cheap to clone.
#[derive(Clone)]
pub struct Sender(Arc<Queue>);

/// The service task's end.
pub struct Receiver(Arc<Queue>);

/// The service task has stopped: the message was not delivered.
#[derive(Debug)]
pub struct Closed;

/// A mailbox whose messages ring `bell` (the task's one wake-up, shared with its probe feeds).
pub fn inbox(bell: Arc<Notify>) -> (Sender, Receiver) {
    let queue = Arc::new(Queue {
        messages: Mutex::new(Some(VecDeque::new())),
        bell,
    });
    (Sender(Arc::clone(&queue)), Receiver(queue))
}

impl Sender {
    /// Queues `message` and wakes the task; never waits.
    pub async fn send(&self, message: Message) -> Result<(), Closed> {
        self.try_send(message)
    }

    /// Wakes the task without a message: it then looks at the daemon's stop switch.
    pub fn ring(&self) {
        self.0.bell.notify_one();
    }

    /// Whether both send to the same task.
    pub fn same_inbox(&self, other: &Sender) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// Like [`Self::send`], outside async code.
    pub fn try_send(&self, message: Message) -> Result<(), Closed> {
        let mut messages = lock(&self.0.messages);
        let Some(queue) = messages.as_mut() else {
            return Err(Closed);
        };
        queue.push_back(message);
        drop(messages);
        self.0.bell.notify_one();
        Ok(())
    }
}

impl Receiver {
    /// The oldest queued message, if any.
    pub fn try_recv(&self) -> Option<Message> {
        let mut messages = lock(&self.0.messages);
        let queue = messages.as_mut()?;
        let message = queue.pop_front();
        if queue.is_empty() && queue.capacity() > 0 {
            // Back to holding nothing: most services get a message now and then, not a
            // steady stream.
            *queue = VecDeque::new();
        }
        message
    }

    /// Stops taking messages. Queued ones are dropped, their reply channels with them, so
    /// whoever waits for an answer hears that the service stopped.
    pub fn close(&self) {
        let dropped = lock(&self.0.messages).take();
        drop(dropped);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

/// A poisoned lock only means a panic elsewhere mid-push; the queue is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_arrive_in_order_and_ring_the_bell() {
        let bell = Arc::new(Notify::new());
        let (tx, rx) = inbox(Arc::clone(&bell));
        tx.send(Message::Failback {
            reply: tokio::sync::oneshot::channel().0,
        })
        .await
        .unwrap();
        tx.send(Message::Stop {
            reply: tokio::sync::oneshot::channel().0,
        })
        .await
        .unwrap();
        // The permit the sends stored.
        bell.notified().await;
        assert!(matches!(rx.try_recv(), Some(Message::Failback { .. })));
        assert!(matches!(rx.try_recv(), Some(Message::Stop { .. })));
        assert!(rx.try_recv().is_none());
    }

    #[tokio::test]
    async fn a_closed_inbox_refuses_and_drops_what_waited() {
        let (tx, rx) = inbox(Arc::new(Notify::new()));
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.send(Message::Status { reply }).await.unwrap();
        drop(rx);
        assert!(answer.await.is_err(), "the asker hears the service stopped");
        let (reply, _answer) = tokio::sync::oneshot::channel();
        assert!(tx.send(Message::Status { reply }).await.is_err());
    }
}
