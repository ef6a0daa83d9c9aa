//! Which backends' open sockets to abort when a new table takes them out (`terminate`).
//!
//! A plain drain never aborts anything here: a drain is for letting connections finish. Its
//! `--terminate` and `drain_after` are asked for where the drain is handled.

use super::{
    service::ServiceState,
    transition::{TerminateReason, Transition},
};
use crate::datapath::VipTable;

impl ServiceState {
    /// Compares the table last decided (or adopted) with `next` and asks for the sockets of
    /// every backend that leaves it to be aborted, as `terminate` says: `on_down` for one
    /// that leaves unhealthy, ejected, demoted or removed; `on_failback` for the priority a
    /// failback (among `out`) left. Called before `next` becomes the current table.
    pub(super) fn ask_terminations(&mut self, next: &VipTable, out: &[Transition]) {
        let policy = self.config.terminate.clone();
        if !policy.on_down && !policy.on_failback {
            return;
        }
        let Some(last) = &self.table else { return };
        let failed_back_from = out.iter().rev().find_map(|t| match t {
            Transition::FailedBack { from, .. } => Some(*from),
            _ => None,
        });
        let mut asks = Vec::new();
        for left in last
            .all_backends()
            .filter(|t| !next.backends.iter().any(|n| n.id == t.id))
        {
            let Some(b) = self.backends.values().find(|b| b.id == left.id) else {
                if policy.on_down {
                    // Removed by DNS during this input (its name is known), or by a reload
                    // (an earlier service's backend: named by its address).
                    let name = self
                        .effects
                        .removed
                        .iter()
                        .find(|(id, _)| *id == left.id)
                        .map_or_else(|| left.addr.to_string(), |(_, name)| name.clone());
                    asks.push((name, left.id, TerminateReason::Removed));
                }
                continue;
            };
            let reason = if b.drain.is_some() {
                None // A drain lets connections finish (drain_after and --terminate aside).
            } else if !b.is_live() {
                let demoted = b
                    .last_probe
                    .as_ref()
                    .is_some_and(|p| matches!(&*p.result, Err(e) if e.is_wrong_role()));
                policy.on_down.then_some(if demoted {
                    TerminateReason::Demoted
                } else {
                    TerminateReason::Down
                })
            } else if failed_back_from == Some(b.priority) {
                policy.on_failback.then_some(TerminateReason::Failback)
            } else {
                None
            };
            if let Some(reason) = reason {
                asks.push((b.name.to_string(), b.id, reason));
            }
        }
        for (name, id, reason) in asks {
            self.effects.terminate(&name, id, reason);
        }
    }
}
