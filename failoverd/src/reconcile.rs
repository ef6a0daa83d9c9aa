//! The one writer: the only task that writes the datapath, and only the VIPs whose table changed.
//!
//! Service tasks send the table they want for their VIP; the writer compares
//! it with what the datapath holds (read back at start, so a restarted daemon
//! adopts the pinned tables) and writes only differences. A failed write is
//! kept and retried, never dropped.

use std::{collections::BTreeMap, time::Duration};

use tokio::sync::{mpsc, watch};

use crate::datapath::{Datapath, DatapathError, InstalledTable, Vip, VipTable};

/// How long after a failed write the writer tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// What a service asks of the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriterCommand {
    /// Make the VIP's table this one.
    Apply(VipTable),
    /// Stop translating the VIP.
    Remove(Vip),
}

/// What the writer's channel carries.
#[derive(Debug)]
pub enum WriterMessage {
    /// A change to make.
    Command(WriterCommand),
    /// Answered once everything sent before it is written: `true` when nothing
    /// is left to retry. Lets an operator command return only after the
    /// kernel holds its effect.
    Barrier(tokio::sync::oneshot::Sender<bool>),
}

impl From<WriterCommand> for WriterMessage {
    fn from(command: WriterCommand) -> Self {
        WriterMessage::Command(command)
    }
}

impl WriterCommand {
    fn vip(&self) -> Vip {
        match self {
            WriterCommand::Apply(t) => t.vip,
            WriterCommand::Remove(v) => *v,
        }
    }
}

/// The writer's state: what the datapath holds and what is still to be written.
pub struct Writer<D> {
    datapath: D,
    written: BTreeMap<Vip, VipTable>,
    pending: BTreeMap<Vip, WriterCommand>,
    writes: u64,
    errors: u64,
}

impl<D: Datapath> Writer<D> {
    /// A writer over `datapath`, starting from the tables it already holds.
    pub fn new(datapath: D) -> Result<Self, DatapathError> {
        let written = datapath
            .tables()?
            .into_iter()
            .map(|(vip, InstalledTable { table, .. })| (vip, table))
            .collect();
        Ok(Writer {
            datapath,
            written,
            pending: BTreeMap::new(),
            writes: 0,
            errors: 0,
        })
    }

    /// The tables the datapath held when the writer started, or holds after its writes.
    pub fn written(&self) -> &BTreeMap<Vip, VipTable> {
        &self.written
    }

    /// Successful writes so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Failed writes so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Queues a command; a later command for the same VIP replaces an earlier one.
    pub fn queue(&mut self, command: WriterCommand) {
        self.pending.insert(command.vip(), command);
    }

    /// Writes every queued change that differs from what the datapath holds.
    /// Returns whether something is left to retry.
    pub fn flush(&mut self) -> bool {
        let pending = std::mem::take(&mut self.pending);
        for (vip, command) in pending {
            let result = match &command {
                WriterCommand::Apply(table) if self.written.get(&vip) == Some(table) => continue,
                WriterCommand::Remove(vip) if !self.written.contains_key(vip) => continue,
                WriterCommand::Apply(table) => self.datapath.apply(table),
                WriterCommand::Remove(vip) => self.datapath.remove(vip),
            };
            crate::metrics::datapath_write(result.is_ok());
            match result {
                Ok(()) => {
                    self.writes += 1;
                    match command {
                        WriterCommand::Apply(table) => {
                            tracing::debug!(vip = %vip, backends = table.backends.len(), slots = table.slots.len(), "table written");
                            self.written.insert(vip, table);
                        }
                        WriterCommand::Remove(vip) => {
                            tracing::info!(vip = %vip, "VIP removed from the datapath");
                            self.written.remove(&vip);
                        }
                    }
                }
                Err(e) => {
                    self.errors += 1;
                    tracing::error!(vip = %vip, error = %e, "datapath write failed; will retry");
                    // Keep it unless a newer command arrived meanwhile (none can: we own the queue).
                    self.pending.insert(vip, command);
                }
            }
        }
        !self.pending.is_empty()
    }

    /// Gives the datapath back (on shutdown).
    pub fn into_datapath(self) -> D {
        self.datapath
    }
}

/// Runs the writer until `shutdown` turns true or every sender is gone;
/// returns it (and so the datapath) so the caller decides what to do with the pins.
pub async fn run_writer<D: Datapath>(
    mut writer: Writer<D>,
    mut messages: mpsc::Receiver<WriterMessage>,
    mut shutdown: watch::Receiver<bool>,
) -> Writer<D> {
    let mut retry = false;
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            message = messages.recv() => {
                let Some(first) = message else { break };
                // Take everything already waiting, then write once: a burst
                // of verdicts for one VIP becomes one map write. Barriers are
                // answered after that write.
                let mut barriers = Vec::new();
                let mut next = Some(first);
                while let Some(message) = next {
                    match message {
                        WriterMessage::Command(command) => writer.queue(command),
                        WriterMessage::Barrier(reply) => barriers.push(reply),
                    }
                    next = messages.try_recv().ok();
                }
                retry = writer.flush();
                for reply in barriers {
                    // The asker may have given up; the writes stand anyway.
                    reply.send(!retry).ok();
                }
            }
            _ = tokio::time::sleep(RETRY_AFTER), if retry => retry = writer.flush(),
        }
    }
    writer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{FakeDatapath, FakeWrite, Protocol, TableBackend};

    fn vip(n: u8) -> Vip {
        Vip {
            addr: format!("127.1.0.{n}:80").parse().unwrap(),
            protocol: Protocol::Tcp,
        }
    }

    fn table(v: Vip, port: u16) -> VipTable {
        let b = TableBackend {
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            id: u32::from(port),
        };
        VipTable::weighted(v, 1, vec![b], &[1]).unwrap()
    }

    fn writes(w: &Writer<FakeDatapath>) -> Vec<FakeWrite> {
        w.datapath.writes.clone()
    }

    #[test]
    fn writes_only_what_changed() {
        let mut w = Writer::new(FakeDatapath::new()).unwrap();
        w.queue(WriterCommand::Apply(table(vip(1), 1)));
        w.queue(WriterCommand::Apply(table(vip(2), 2)));
        assert!(!w.flush());
        w.queue(WriterCommand::Apply(table(vip(1), 1)));
        w.queue(WriterCommand::Apply(table(vip(2), 3)));
        w.flush();
        assert_eq!(w.writes(), 3);
        assert_eq!(writes(&w).last(), Some(&FakeWrite::Apply(table(vip(2), 3))));
    }

    #[test]
    fn adopts_pinned_tables_and_does_not_rewrite_them() {
        let mut dp = FakeDatapath::new();
        dp.apply(&table(vip(1), 1)).unwrap();
        dp.writes.clear();
        let mut w = Writer::new(dp).unwrap();
        w.queue(WriterCommand::Apply(table(vip(1), 1)));
        w.flush();
        assert_eq!(w.writes(), 0);
        assert!(writes(&w).is_empty());
    }

    #[test]
    fn a_failed_write_is_kept_and_retried() {
        let mut dp = FakeDatapath::new();
        dp.fail_next_write = Some("map full".into());
        let mut w = Writer::new(dp).unwrap();
        w.queue(WriterCommand::Apply(table(vip(1), 1)));
        assert!(w.flush(), "the failed write must stay queued");
        assert_eq!(w.errors(), 1);
        assert!(!w.flush());
        assert_eq!(w.written().get(&vip(1)), Some(&table(vip(1), 1)));
    }

    #[test]
    fn the_newest_command_for_a_vip_wins() {
        let mut w = Writer::new(FakeDatapath::new()).unwrap();
        w.queue(WriterCommand::Apply(table(vip(1), 1)));
        w.queue(WriterCommand::Apply(table(vip(1), 2)));
        w.flush();
        assert_eq!(writes(&w), vec![FakeWrite::Apply(table(vip(1), 2))]);
    }

    #[test]
    fn removing_an_unknown_vip_writes_nothing() {
        let mut w = Writer::new(FakeDatapath::new()).unwrap();
        w.queue(WriterCommand::Remove(vip(9)));
        w.flush();
        assert_eq!(w.writes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_task_retries_after_a_second_and_stops_on_shutdown() {
        let mut dp = FakeDatapath::new();
        dp.fail_next_write = Some("busy".into());
        let writer = Writer::new(dp).unwrap();
        let (tx, rx) = mpsc::channel(8);
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run_writer(writer, rx, stop_rx));
        tx.send(WriterCommand::Apply(table(vip(1), 1)).into())
            .await
            .unwrap();
        tokio::time::sleep(RETRY_AFTER + Duration::from_millis(10)).await;
        stop_tx.send(true).unwrap();
        let writer = task.await.unwrap();
        assert_eq!((writer.errors(), writer.writes()), (1, 1));
    }
}
