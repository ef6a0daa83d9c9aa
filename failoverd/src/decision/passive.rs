//! Passive health: the kernel's own evidence about translated connects.
//!
//! The `sock_ops` program counts failed connects per backend id in a row (an established
//! connect resets the count) and, at the table's `passive_threshold`, marks the backend
//! suspect so the very next connect avoids it. The core then confirms (ejects the backend as
//! if `fall` probes had failed; a repeat through its breaker) or refuses, and a refused mark
//! is lifted: the kernel must never keep diverting from a backend the daemon keeps in the table.

use std::time::Duration;

use tokio::time::Instant;

use super::{
    service::ServiceState,
    transition::{PassiveHold, Transition},
};
use crate::{
    breaker::{may_eject, BreakerEvent},
    datapath::ConnectFailureKind,
    select::{Candidate, Selection},
};

impl ServiceState {
    /// Takes one kernel-observed connect failure; returns whether selection must run again.
    pub(super) fn connect_failed(
        &mut self,
        backend_id: u32,
        kind: ConnectFailureKind,
        consecutive: u32,
        suspect: bool,
        now: Instant,
        out: &mut Vec<Transition>,
    ) -> bool {
        // At most 32 backends: a scan is cheaper than keeping an index in step.
        let Some(key) = self
            .backends
            .iter()
            .find(|(_, b)| b.id == backend_id)
            .map(|(k, _)| *k)
        else {
            // An id that left the service meanwhile: nothing to eject, but its mark must go.
            if suspect {
                self.effects.clear_suspect.push(backend_id);
            }
            return false;
        };
        let threshold = self.passive_threshold();
        let priority = self.backends[&key].priority;
        let (group, ejected) = self
            .backends
            .values()
            .filter(|b| b.priority == priority)
            .fold((0, 0), |(n, e), b| {
                (
                    n + 1,
                    e + usize::from(b.breaker.is_open() || b.passive().ejected),
                )
            });
        // Passive ejections alone may take out max_ejected_percent of a group, but always at
        // least one: a group of one (a primary) must be able to fail over on kernel evidence.
        let room =
            ejected == 0 || may_eject(group, ejected, self.config.breaker.max_ejected_percent);
        let b = self.backends.get_mut(&key).expect("found above");
        let passive = b.passive_mut();
        passive.last_failure = Some((now, kind));
        passive.consecutive = consecutive;
        out.push(Transition::PassiveFailure {
            backend: b.name.to_string(),
            kind,
            consecutive,
        });
        if threshold == 0 || consecutive < threshold {
            // Off, or a kernel threshold the config no longer has (a table from before a
            // reload): the mark is not the daemon's, so it goes at once.
            if suspect {
                self.effects.clear_suspect.push(backend_id);
            }
            return false;
        }
        let hold = if !b.is_live() {
            Some(PassiveHold::AlreadyOut)
        } else if !room {
            Some(PassiveHold::MaxEjected)
        } else {
            None
        };
        if let Some(why) = hold {
            out.push(Transition::PassiveHeld {
                backend: b.name.to_string(),
                consecutive,
                why,
            });
            // Lifted at the end of this input if it is in the table (panic mode, a cap),
            // else as soon as it is back in one.
            b.passive_mut().marked |= suspect;
            return false;
        }
        let (for_, ejections) = match b.breaker.eject(now) {
            Some(BreakerEvent::Opened { for_, ejections }) => (for_, ejections),
            // A strike: out as if `fall` probes had failed, back after `rise` passes.
            _ => {
                b.health.fail_now();
                (Duration::ZERO, 0)
            }
        };
        b.since = now;
        let passive = b.passive_mut();
        passive.ejected = true;
        passive.ejections = passive.ejections.saturating_add(1);
        passive.marked |= suspect;
        out.push(Transition::PassiveEjected {
            backend: b.name.to_string(),
            kind,
            consecutive,
            open_for: for_,
            ejections,
        });
        true
    }

    /// Lifts the suspect mark of every marked backend the VIP's table names (again).
    pub(super) fn lift_marks_in_table(&mut self) {
        let Some(table) = &self.table else { return };
        for b in self.backends.values_mut().filter(|b| b.passive().marked) {
            if table.all_backends().any(|t| t.id == b.id) {
                b.passive_mut().marked = false;
                self.effects.clear_suspect.push(b.id);
            }
        }
    }

    /// The fallback group of a table: indexes (into `candidates`) of the live backends of
    /// the next priority after the one `selection` sends to. Where the kernel sends a connect
    /// when it has marked every slot backend suspect, before the daemon has even woken.
    pub(super) fn fallback_group(
        &self,
        selection: &Selection,
        candidates: &[Candidate],
    ) -> Vec<usize> {
        let Selection::Group { priority, .. } = selection else {
            // Panic already uses whatever there is; a refusing table has nothing to fall from.
            return Vec::new();
        };
        let usable = |c: &Candidate| c.live && c.weight > 0 && c.priority > *priority;
        let Some(next) = candidates
            .iter()
            .filter(|c| usable(c))
            .map(|c| c.priority)
            .min()
        else {
            return Vec::new();
        };
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| usable(c) && c.priority == next)
            .map(|(i, _)| i)
            .collect()
    }
}
