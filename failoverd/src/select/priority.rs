//! Priorities: which group of backends takes new connections, and what happens when none is live.

/// One backend as selection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// 0 is preferred; traffic goes to the lowest priority with a live backend.
    pub priority: u8,
    /// Share of new connections within its priority group; 0 = none.
    pub weight: u32,
    /// Healthy, breaker closed, not drained (weight is judged separately).
    pub live: bool,
    /// Held out by an operator: never used, not even in panic.
    pub drained: bool,
}

/// What to do when no backend of any priority is live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllDown {
    /// Refuse connects at once with ECONNREFUSED.
    Reject,
    /// Spread over every (not drained, weight > 0) backend of the lowest priority.
    Panic,
}

/// When traffic goes back to a better priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailbackMode {
    /// As soon as a better priority has a live backend.
    Auto,
    /// Only on an explicit failback; while the current priority stays live, traffic stays.
    Manual,
}

/// The outcome: which backends get new connections, with which weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The live backends of one priority group.
    Group {
        /// The group's priority.
        priority: u8,
        /// (index into the candidates, weight), weight > 0.
        members: Vec<(usize, u32)>,
    },
    /// Nothing live, `on_all_down: panic`: every usable backend of the lowest priority.
    Panic {
        /// The lowest priority present.
        priority: u8,
        /// (index into the candidates, weight), weight > 0.
        members: Vec<(usize, u32)>,
    },
    /// Nothing to send to: connects are refused.
    Refuse,
}

impl Selection {
    /// The priority traffic goes to, if any.
    pub fn priority(&self) -> Option<u8> {
        match self {
            Selection::Group { priority, .. } | Selection::Panic { priority, .. } => {
                Some(*priority)
            }
            Selection::Refuse => None,
        }
    }

    /// (index, weight) of the backends that get new connections.
    pub fn members(&self) -> &[(usize, u32)] {
        match self {
            Selection::Group { members, .. } | Selection::Panic { members, .. } => members,
            Selection::Refuse => &[],
        }
    }
}

/// Picks the group that takes new connections.
///
/// `current` is the priority traffic goes to now. With [`FailbackMode::Manual`]
/// traffic stays on `current` while it has a live backend, even if a better
/// priority recovered; it moves only when `current` has nothing live (or on an
/// explicit failback, which the caller expresses by passing `current: None`).
pub fn select(
    candidates: &[Candidate],
    all_down: AllDown,
    failback: FailbackMode,
    current: Option<u8>,
) -> Selection {
    let usable = |c: &Candidate| c.live && !c.drained && c.weight > 0;
    let members_of = |priority: u8, pred: &dyn Fn(&Candidate) -> bool| -> Vec<(usize, u32)> {
        candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.priority == priority && pred(c))
            .map(|(i, c)| (i, c.weight))
            .collect()
    };

    if let (FailbackMode::Manual, Some(current)) = (failback, current) {
        let members = members_of(current, &usable);
        if !members.is_empty() {
            return Selection::Group {
                priority: current,
                members,
            };
        }
    }
    if let Some(best) = candidates
        .iter()
        .filter(|c| usable(c))
        .map(|c| c.priority)
        .min()
    {
        return Selection::Group {
            priority: best,
            members: members_of(best, &usable),
        };
    }
    match all_down {
        AllDown::Reject => Selection::Refuse,
        AllDown::Panic => {
            let panicking = |c: &Candidate| !c.drained && c.weight > 0;
            match candidates
                .iter()
                .filter(|c| panicking(c))
                .map(|c| c.priority)
                .min()
            {
                Some(lowest) => Selection::Panic {
                    priority: lowest,
                    members: members_of(lowest, &panicking),
                },
                None => Selection::Refuse,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(priority: u8, live: bool) -> Candidate {
        Candidate {
            priority,
            weight: 100,
            live,
            drained: false,
        }
    }

    #[test]
    fn lowest_live_priority_takes_everything() {
        let cands = [c(1, true), c(0, true), c(0, false)];
        let s = select(&cands, AllDown::Reject, FailbackMode::Auto, None);
        assert_eq!(
            s,
            Selection::Group {
                priority: 0,
                members: vec![(1, 100)]
            }
        );
    }

    #[test]
    fn fails_over_to_the_next_priority() {
        let cands = [c(0, false), c(1, true), c(2, true)];
        assert_eq!(
            select(&cands, AllDown::Reject, FailbackMode::Auto, Some(0)).priority(),
            Some(1)
        );
    }

    #[test]
    fn auto_failback_returns_as_soon_as_priority_zero_is_live() {
        let cands = [c(0, true), c(1, true)];
        assert_eq!(
            select(&cands, AllDown::Reject, FailbackMode::Auto, Some(1)).priority(),
            Some(0)
        );
    }

    #[test]
    fn manual_failback_stays_while_the_current_group_is_live() {
        let cands = [c(0, true), c(1, true)];
        assert_eq!(
            select(&cands, AllDown::Reject, FailbackMode::Manual, Some(1)).priority(),
            Some(1)
        );
        // An explicit failback forgets the current group.
        assert_eq!(
            select(&cands, AllDown::Reject, FailbackMode::Manual, None).priority(),
            Some(0)
        );
    }

    #[test]
    fn manual_failback_still_moves_when_the_current_group_dies() {
        let cands = [c(0, true), c(1, false)];
        assert_eq!(
            select(&cands, AllDown::Reject, FailbackMode::Manual, Some(1)).priority(),
            Some(0)
        );
    }

    #[test]
    fn zero_weight_and_drained_backends_get_nothing() {
        let mut cands = [c(0, true), c(0, true), c(1, true)];
        cands[0].weight = 0;
        cands[1].drained = true;
        assert_eq!(
            select(&cands, AllDown::Reject, FailbackMode::Auto, None).priority(),
            Some(1)
        );
    }

    #[test]
    fn all_down_rejects_or_panics() {
        let cands = [c(1, false), c(0, false), c(0, false)];
        assert_eq!(
            select(&cands, AllDown::Reject, FailbackMode::Auto, Some(0)),
            Selection::Refuse
        );
        assert_eq!(
            select(&cands, AllDown::Panic, FailbackMode::Auto, Some(0)),
            Selection::Panic {
                priority: 0,
                members: vec![(1, 100), (2, 100)]
            }
        );
    }

    #[test]
    fn panic_never_uses_drained_backends() {
        let mut cands = [c(0, false), c(1, false)];
        cands[0].drained = true;
        assert_eq!(
            select(&cands, AllDown::Panic, FailbackMode::Auto, None).priority(),
            Some(1)
        );
        cands[1].drained = true;
        assert_eq!(
            select(&cands, AllDown::Panic, FailbackMode::Auto, None),
            Selection::Refuse
        );
    }
}
