//! The read-back: the writer looks at what the kernel holds and repairs what drifted.

use super::*;

/// What a read-back found for one VIP.
enum Drift {
    /// No table at all.
    Missing,
    /// Another table than the one written.
    Altered { found: Box<InstalledTable> },
}

impl Drift {
    fn kind(&self) -> &'static str {
        match self {
            Drift::Missing => "missing",
            Drift::Altered { .. } => "altered",
        }
    }
}

impl<D: Datapath> Writer<D> {
    /// Reads back what the kernel holds for every VIP this writer manages
    /// and queues a rewrite of each that drifted; also checks that the
    /// datapath itself is in place. Returns how many tables were queued.
    pub fn check(&mut self) -> usize {
        let repaired = self.check_inner();
        self.view_dirty = true;
        self.view.write().checks += 1;
        self.publish();
        repaired
    }

    fn check_inner(&mut self) -> usize {
        match self.datapath.check_intact() {
            Err(e) if !matches!(e, DatapathError::Detached { .. }) => {
                // Could not look (e.g. EMFILE while something exhausts the
                // daemon's descriptors): that says nothing about the kernel,
                // so the VIPs' state stays as it was.
                if !self.check_failing {
                    tracing::warn!(error = %e, "could not check that the datapath is in place; will look again");
                    self.check_failing = true;
                }
                return 0;
            }
            Err(e) => {
                self.check_failing = false;
                match &mut self.detached {
                    Some(failure) => failure.attempts += 1,
                    None => {
                        tracing::error!(error = %e, "the datapath is no longer in place: every VIP is reported failing");
                        self.detached = Some(WriteFailure::new(&e));
                    }
                }
                // The maps this process writes are no longer read by any hook:
                // comparing them with what was written would prove nothing.
                return 0;
            }
            Ok(()) => {
                self.check_failing = false;
                if self.detached.take().is_some() {
                    tracing::info!("the datapath is in place again");
                }
            }
        }
        let mut drifted = Vec::new();
        for (vip, want) in &self.written {
            if self.pending.contains_key(vip) {
                continue;
            }
            match self.datapath.table(vip) {
                Ok(Some(found)) if found.table == **want => {}
                Ok(Some(found)) => drifted.push((
                    *vip,
                    Drift::Altered {
                        found: Box::new(found),
                    },
                )),
                Ok(None) => drifted.push((*vip, Drift::Missing)),
                Err(e) => {
                    tracing::warn!(vip = %vip, error = %e, "could not read back the VIP's table");
                }
            }
        }
        let count = drifted.len();
        for (vip, drift) in drifted {
            let Some(table) = self.written.remove(&vip) else {
                continue;
            };
            match &drift {
                Drift::Missing => tracing::warn!(
                    vip = %vip,
                    "the kernel holds no table for this VIP (deleted behind the daemon's back); writing it again"
                ),
                Drift::Altered { found } => tracing::warn!(
                    vip = %vip,
                    found_backends = found.table.backends.len(),
                    found_slots = found.table.slots.len(),
                    found_vip_id = found.table.vip_id,
                    want_backends = table.backends.len(),
                    want_slots = table.slots.len(),
                    "the kernel holds another table for this VIP than the one written; writing it again"
                ),
            }
            crate::metrics::datapath_repair(drift.kind());
            self.repairs += 1;
            self.view.write().repairs += 1;
            self.pending.insert(vip, WriterCommand::Apply(table));
        }
        count
    }
}
