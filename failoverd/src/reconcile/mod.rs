//! The one writer: the only task that writes the datapath, and only the VIPs whose table changed.
//!
//! Service tasks send the table they want for their VIP; the writer compares
//! it with what the datapath holds (read back at start, so a restarted daemon
//! adopts the pinned tables) and writes only differences.
//!
//! The kernel is the truth:
//! - A failed write is kept and retried per VIP with backoff (1 s doubling to
//!   30 s), logged when the VIP starts failing, when its error changes and
//!   when it recovers, never once per attempt. A newer, different table for a
//!   failing VIP is tried at once.
//! - Every [`CHECK_EVERY`] (and [`CHECK_AFTER_ERROR`] after a failed write)
//!   the writer reads back each VIP it manages and rewrites any table deleted
//!   or altered behind its back (`bpftool map delete`, a second writer), so
//!   drift lasts at most about [`CHECK_EVERY`] plus one write. It also checks
//!   that the datapath itself is still in place: after `failoverd cleanup`
//!   the writer's map fds keep the maps alive and writes still "succeed",
//!   but no hook reads them; every VIP is then reported failing with
//!   [`DatapathError::Detached`] until failoverd is restarted.
//! - [`KernelView`], a cheap cloneable view, tells status and readiness which
//!   VIPs the kernel does not hold as wanted, with the error and its errno.
//! - Counter ids: the writer resets an id's kernel counters before it
//!   installs the id for another owner (VIP, or backend address of a VIP)
//!   than the one it last saw with it, and at start resets the counters of
//!   every id no pinned table names (no program can count under those, and
//!   the ids are free for the allocator to hand out), so a new backend never
//!   shows counts of the backend that had its id before.

mod check;
mod owners;
mod view;

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

pub use view::{KernelView, WriteFailure};

use crate::datapath::{Datapath, DatapathError, InstalledTable, Terminated, Vip, VipTable};
use owners::{marks_of, Owners};

/// How long after its first failed write a VIP is tried again; doubles on each failure.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest wait between two attempts at writing a failing VIP.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// How often the writer reads back what the kernel holds for its VIPs.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// How soon after a failed write the writer reads back what the kernel holds.
pub const CHECK_AFTER_ERROR: Duration = Duration::from_millis(250);

/// New failures logged one by one per flush; the rest are summed up in one line.
const FAILURES_LOGGED_PER_FLUSH: usize = 5;

/// What a service asks of the writer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriterCommand {
    /// Make the VIP's table this one (shared with the service's core, which decided it).
    Apply(Arc<VipTable>),
    /// Stop translating the VIP.
    Remove(Vip),
}

/// What the writer's channel carries.
#[derive(Debug)]
pub enum WriterMessage {
    /// A change to make.
    Command(WriterCommand),
    /// Answered once everything sent before it is written: `true` when nothing
    /// is left to retry and the datapath is in place (see [`KernelView`] for
    /// why not). Lets an operator command return only after the kernel holds
    /// its effect.
    Barrier(tokio::sync::oneshot::Sender<bool>),
    /// An id was just handed to a new owner (fresh from the allocator):
    /// forget whatever the kernel counted under it, so the new owner starts
    /// from zero even if it is never installed (a backend that is never live
    /// is never in a table, so the reset on install does not reach it). Ids
    /// a written table still holds are left alone.
    ResetCounters(u32),
    /// Lift the kernel's suspect mark of a backend id (passive health): the
    /// daemon did not eject it, or it is back in its table.
    ClearSuspect(u32),
    /// Abort every socket translated to these backend ids, after the tables
    /// sent before this message are written (so no new connect lands there
    /// again); answered with what was aborted.
    Terminate {
        /// Backend counter ids.
        backend_ids: Vec<u32>,
        /// The outcome; the asker may have gone.
        reply: tokio::sync::oneshot::Sender<Result<Terminated, DatapathError>>,
    },
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

/// A failing VIP's retry schedule.
#[derive(Debug)]
struct Backoff {
    failure: WriteFailure,
    delay: Duration,
    next_try: Instant,
}

/// The writer's state: what the datapath holds and what is still to be written.
pub struct Writer<D> {
    datapath: D,
    written: BTreeMap<Vip, Arc<VipTable>>,
    pending: BTreeMap<Vip, WriterCommand>,
    backoff: BTreeMap<Vip, Backoff>,
    /// The owner each counter id was last installed (or adopted) for.
    owners: Owners,
    /// Set while the datapath itself is not in place.
    detached: Option<WriteFailure>,
    /// Set while checking that it is in place fails (logged once).
    check_failing: bool,
    view: KernelView,
    view_dirty: bool,
    writes: u64,
    errors: u64,
    repairs: u64,
}

impl<D: Datapath> Writer<D> {
    /// A writer over `datapath`, starting from the tables it already holds.
    ///
    /// Counters of ids that no pinned table names are reset here, before any
    /// id is handed out again (see the module docs); a failure to do so is
    /// logged, not fatal.
    pub fn new(datapath: D) -> Result<Self, DatapathError> {
        let written: BTreeMap<Vip, Arc<VipTable>> = datapath
            .tables()?
            .into_iter()
            .map(|(vip, InstalledTable { table, .. })| (vip, Arc::new(table)))
            .collect();
        let owners = Owners::of(written.values().map(|t| &**t));
        let mut writer = Writer {
            datapath,
            written,
            pending: BTreeMap::new(),
            backoff: BTreeMap::new(),
            owners,
            detached: None,
            check_failing: false,
            view: KernelView::default(),
            view_dirty: true,
            writes: 0,
            errors: 0,
            repairs: 0,
        };
        writer.reset_unowned_counters();
        writer.publish();
        Ok(writer)
    }

    fn reset_unowned_counters(&mut self) {
        let ids = match self.datapath.counter_ids() {
            Ok(ids) => ids,
            Err(e) => {
                tracing::warn!(error = %e, "could not list the kernel's counters; ids of removed backends may show old counts");
                return;
            }
        };
        let mut reset = 0usize;
        for id in ids.into_iter().filter(|id| !self.owners.contains(*id)) {
            match self.datapath.reset_counters(id) {
                Ok(()) => reset += 1,
                Err(e) => {
                    tracing::warn!(id, error = %e, "could not reset the counters of an id no table names");
                }
            }
        }
        if reset > 0 {
            tracing::info!(
                ids = reset,
                "reset the kernel counters of ids no pinned table names, so new backends start from zero"
            );
        }
    }

    /// The tables the datapath held when the writer started, or holds after its writes.
    pub fn written(&self) -> &BTreeMap<Vip, Arc<VipTable>> {
        &self.written
    }

    /// A view of what the kernel holds, for status and readiness.
    pub fn view(&self) -> KernelView {
        self.view.clone()
    }

    /// Successful writes so far.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Failed writes so far.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Tables rewritten so far because the kernel did not hold them as written.
    pub fn repairs(&self) -> u64 {
        self.repairs
    }

    /// Queues a command; a later command for the same VIP replaces an earlier
    /// one. A failing VIP given a different command is tried at the next flush.
    pub fn queue(&mut self, command: WriterCommand) {
        let vip = command.vip();
        if let Some(backoff) = self.backoff.get_mut(&vip) {
            if self.pending.get(&vip) != Some(&command) {
                backoff.next_try = Instant::now();
            }
        }
        self.pending.insert(vip, command);
    }

    /// Writes every queued change that differs from what the datapath holds
    /// and is due (a failing VIP waits for its backoff). Returns whether
    /// something is left to retry.
    pub fn flush(&mut self) -> bool {
        let now = Instant::now();
        let due: Vec<Vip> = self
            .pending
            .keys()
            .filter(|vip| self.backoff.get(vip).is_none_or(|b| b.next_try <= now))
            .copied()
            .collect();
        let mut new_failures = 0usize;
        for vip in due {
            if let Some(command) = self.pending.remove(&vip) {
                self.write(vip, command, now, &mut new_failures);
            }
        }
        if new_failures > FAILURES_LOGGED_PER_FLUSH {
            tracing::error!(
                more = new_failures - FAILURES_LOGGED_PER_FLUSH,
                failing = self.backoff.len(),
                "more VIPs failed to be written; each is retried with backoff (see `failoverd status`)"
            );
        }
        self.publish();
        !self.pending.is_empty()
    }

    /// When the next failing VIP is due, if any is waiting.
    pub fn next_retry(&self) -> Option<Instant> {
        self.pending
            .keys()
            .map(|vip| {
                self.backoff
                    .get(vip)
                    .map_or_else(Instant::now, |b| b.next_try)
            })
            .min()
    }

    fn write(&mut self, vip: Vip, command: WriterCommand, now: Instant, new_failures: &mut usize) {
        let result = match &command {
            WriterCommand::Apply(table) if self.written.get(&vip) == Some(table) => {
                self.recovered(vip);
                return;
            }
            WriterCommand::Remove(vip) if !self.written.contains_key(vip) => {
                self.recovered(*vip);
                return;
            }
            WriterCommand::Apply(table) => self
                .reset_new_owners(table)
                .and_then(|()| self.datapath.apply(table)),
            WriterCommand::Remove(vip) => self.datapath.remove(vip),
        };
        crate::metrics::datapath_write(result.is_ok());
        match result {
            Ok(()) => {
                self.writes += 1;
                match command {
                    WriterCommand::Apply(table) => {
                        tracing::debug!(vip = %vip, backends = table.backends.len(), slots = table.slots.len(), "table written");
                        self.owners.installed(&table);
                        self.written.insert(vip, table);
                    }
                    WriterCommand::Remove(vip) => {
                        tracing::info!(vip = %vip, "VIP removed from the datapath");
                        if let Some(table) = self.written.remove(&vip) {
                            self.owners.vip_removed(&table);
                        }
                    }
                }
                self.recovered(vip);
            }
            Err(e) => {
                self.errors += 1;
                self.failed(vip, &e, now, new_failures);
                self.pending.insert(vip, command);
            }
        }
    }

    /// Resets the counters of every id `table` installs for another owner
    /// than the one this writer last saw with it (or for the first time).
    fn reset_new_owners(&mut self, table: &VipTable) -> Result<(), DatapathError> {
        for (id, mark) in marks_of(table) {
            if self.owners.get(id) != Some(mark) {
                self.datapath.reset_counters(id)?;
                // Recorded at once: a retry after a failed apply must not reset
                // counts the id gathers once installed.
                self.owners.set(id, mark);
            }
        }
        Ok(())
    }

    /// Zeroes the kernel counters of `id`, just handed to a new owner,
    /// unless a written table still holds it (then the sender is wrong, and
    /// the live owner's counts are kept). The id's next install counts as a
    /// new owner anyway, so a failure here is logged and left to that.
    pub fn reset_counters(&mut self, id: u32) {
        // Every installed id is in `owners` (recorded on install and on
        // adoption), so looking at its last owner's table is enough.
        let installed = self.owners.get(id).filter(|mark| {
            self.owners
                .vip_of(mark.vip_id)
                .and_then(|vip| self.written.get(&vip))
                .is_some_and(|t| marks_of(t).any(|(held, m)| held == id && m == *mark))
        });
        if let Some(mark) = installed {
            tracing::warn!(
                id,
                vip_id = mark.vip_id,
                "asked to reset the counters of an id a written table holds; left alone"
            );
            return;
        }
        self.owners.remove(id);
        if let Err(e) = self.datapath.reset_counters(id) {
            tracing::warn!(id, error = %e, "could not reset the counters of a new id; they are reset when it is installed");
        }
    }

    fn failed(&mut self, vip: Vip, e: &DatapathError, now: Instant, new_failures: &mut usize) {
        self.view_dirty = true;
        let Some(backoff) = self.backoff.get_mut(&vip) else {
            *new_failures += 1;
            if *new_failures <= FAILURES_LOGGED_PER_FLUSH {
                tracing::error!(vip = %vip, error = %e, retry_in = ?RETRY_AFTER, "datapath write failed; retrying with backoff up to {RETRY_MAX:?}");
            }
            self.backoff.insert(
                vip,
                Backoff {
                    failure: WriteFailure::new(e),
                    delay: RETRY_AFTER,
                    next_try: now + RETRY_AFTER,
                },
            );
            return;
        };
        backoff.failure.attempts += 1;
        backoff.delay = (backoff.delay * 2).min(RETRY_MAX);
        backoff.next_try = now + backoff.delay;
        let error = e.to_string();
        if backoff.failure.error != error {
            tracing::warn!(vip = %vip, error = %e, previous = %backoff.failure.error, attempts = backoff.failure.attempts, "datapath write still failing, now with another error");
            backoff.failure.error = error;
            backoff.failure.errno = e.errno();
        } else {
            tracing::debug!(vip = %vip, attempts = backoff.failure.attempts, retry_in = ?backoff.delay, "datapath write failed again");
        }
    }

    fn recovered(&mut self, vip: Vip) {
        if let Some(backoff) = self.backoff.remove(&vip) {
            self.view_dirty = true;
            tracing::info!(
                vip = %vip,
                attempts = backoff.failure.attempts,
                "the kernel holds the VIP's table again after failed writes"
            );
        }
    }

    /// Publishes the failing VIPs to the view when they changed.
    fn publish(&mut self) {
        let managed = self.written.len()
            + self
                .pending
                .keys()
                .filter(|vip| !self.written.contains_key(vip))
                .count();
        let mut state = self.view.write();
        state.managed = managed;
        if self.view_dirty {
            state.failing = self
                .backoff
                .iter()
                .map(|(vip, b)| (*vip, b.failure.clone()))
                .collect();
            state.datapath = self.detached.clone();
            self.view_dirty = false;
        }
        let failing = if state.datapath.is_some() {
            state.managed.max(state.failing.len())
        } else {
            state.failing.len()
        };
        drop(state);
        crate::metrics::datapath_failing_vips(failing);
    }

    /// Lifts the kernel's suspect mark of `backend_id`; a failure is logged (the mark then
    /// diverts connects from a backend the daemon keeps, until the next mark or lift).
    pub fn clear_suspect(&mut self, backend_id: u32) {
        if let Err(e) = self.datapath.clear_suspect(backend_id) {
            tracing::error!(id = backend_id, error = %e, "could not lift a backend's suspect mark");
        }
    }

    /// Aborts the sockets translated to `backend_ids`.
    pub fn terminate(&mut self, backend_ids: &[u32]) -> Result<Terminated, DatapathError> {
        self.datapath.terminate(backend_ids)
    }

    /// Gives the datapath back (on shutdown).
    pub fn into_datapath(self) -> D {
        self.datapath
    }
}

/// Runs the writer until `shutdown` turns true or every sender is gone;
/// returns it (and so the datapath) so the caller decides what to do with the pins.
///
/// Besides writing what it is sent, it retries failing VIPs when their
/// backoff is due and reads back the kernel every [`CHECK_EVERY`] (sooner
/// after a failed write), also while messages keep arriving.
pub async fn run_writer<D: Datapath>(
    mut writer: Writer<D>,
    mut messages: mpsc::Receiver<WriterMessage>,
    mut shutdown: watch::Receiver<bool>,
) -> Writer<D> {
    let mut next_check = Instant::now() + CHECK_EVERY;
    loop {
        let errors_before = writer.errors();
        let wake = writer
            .next_retry()
            .map_or(next_check, |retry| retry.min(next_check));
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            message = messages.recv() => {
                let Some(first) = message else { break };
                // Take everything already waiting, then write once: a burst
                // of verdicts for one VIP becomes one map write. Barriers are
                // answered after that write.
                let mut barriers = Vec::new();
                let mut clears = Vec::new();
                let mut terminations = Vec::new();
                let mut next = Some(first);
                while let Some(message) = next {
                    match message {
                        WriterMessage::Command(command) => writer.queue(command),
                        WriterMessage::Barrier(reply) => barriers.push(reply),
                        WriterMessage::ResetCounters(id) => writer.reset_counters(id),
                        WriterMessage::ClearSuspect(id) => clears.push(id),
                        WriterMessage::Terminate { backend_ids, reply } => {
                            terminations.push((backend_ids, reply));
                        }
                    }
                    next = messages.try_recv().ok();
                }
                // Written means read by the hooks: not while the datapath is gone.
                let done = !writer.flush() && writer.detached.is_none();
                // After the write that took the backends out: a client that reconnects
                // lands on a live backend. A write left to retry does not hold the abort
                // up (the backend is down either way); the daemon's log says it failed.
                for id in clears {
                    writer.clear_suspect(id);
                }
                for (backend_ids, reply) in terminations {
                    // The asker may have stopped waiting; the sockets are aborted anyway.
                    reply.send(writer.terminate(&backend_ids)).ok();
                }
                for reply in barriers {
                    // The asker may have given up; the writes stand anyway.
                    reply.send(done).ok();
                }
            }
            _ = tokio::time::sleep_until(wake) => {}
        }
        let now = Instant::now();
        let mut due = writer.next_retry().is_some_and(|retry| retry <= now);
        if now >= next_check {
            due |= writer.check() > 0;
            next_check = now + CHECK_EVERY;
        }
        if due {
            writer.flush();
        }
        if writer.errors() > errors_before {
            next_check = next_check.min(now + CHECK_AFTER_ERROR);
        }
    }
    writer
}

#[cfg(test)]
mod tests;
