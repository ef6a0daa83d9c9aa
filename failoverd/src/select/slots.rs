//! Weights → slot table: each backend gets a share of the slots in proportion to its weight.

use std::sync::{Arc, Mutex, PoisonError};

use failoverd_shared::{MAX_BACKENDS, MAX_SLOTS};

use crate::interned::Recent;

/// Why a set of weights cannot become a slot table.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    /// More backends than a table holds.
    #[error("{count} backends given, a VIP holds at most {MAX_BACKENDS}")]
    TooManyBackends {
        /// Backends given.
        count: usize,
    },
}

/// Fills up to [`MAX_SLOTS`] slots with backend indexes in proportion to `weights`.
///
/// Largest-remainder apportionment: every backend with a weight above zero gets
/// at least one slot, the rest are split by weight and the leftovers go to the
/// largest remainders, so each share is within one slot (1/256) of exact.
/// Slots are interleaved (not runs of one backend) so that a reader of a
/// prefix still sees every backend. All weights zero → an empty table.
///
/// ```
/// let slots = failoverd::select::fill_slots(&[3, 1]).unwrap();
/// assert_eq!(slots.iter().filter(|&&s| s == 0).count(), 192); // 75% of 256
/// assert_eq!(&slots[..4], &[0, 0, 1, 0]); // interleaved, not runs
/// ```
pub fn fill_slots(weights: &[u32]) -> Result<Vec<u8>, SlotError> {
    if weights.len() > MAX_BACKENDS {
        return Err(SlotError::TooManyBackends {
            count: weights.len(),
        });
    }
    let live: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0).collect();
    if live.is_empty() {
        return Ok(Vec::new());
    }
    let total: u64 = live.iter().map(|&i| u64::from(weights[i])).sum();
    let slots = MAX_SLOTS as u64;
    let spare = slots - live.len() as u64;

    // One guaranteed slot each, the spare ones by weight.
    let mut counts = vec![0u64; weights.len()];
    let mut remainders = Vec::with_capacity(live.len());
    for &i in &live {
        let exact = spare * u64::from(weights[i]);
        counts[i] = 1 + exact / total;
        remainders.push((exact % total, i));
    }
    let given: u64 = counts.iter().sum();
    // Largest remainder first; ties go to the lower index so output is deterministic.
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for &(_, i) in remainders.iter().take((slots - given) as usize) {
        counts[i] += 1;
    }

    Ok(interleave(&counts))
}

/// Spreads each index's count evenly over the table (smooth weighted round robin).
/// The slot tables lately handed out by [`shared`]: 32 distinct ones.
static RECENT: Mutex<Recent<[u8]>> = Mutex::new(Recent::new(32));

/// `slots` as an allocation shared with an equal slot table handed out lately; a new one
/// otherwise.
///
/// A slot table is 256 bytes and a pure function of the live backends' weights, so at scale
/// nearly every VIP has one of a handful (4 equal weights, 3 after a failure…): shared,
/// 10,000 VIPs hold a few of them instead of 10,000 (and the daemon's core and writer, which
/// share each table, no copy more).
pub fn shared(slots: Vec<u8>) -> Arc<[u8]> {
    RECENT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .share(slots)
}

fn interleave(counts: &[u64]) -> Vec<u8> {
    let total: i64 = counts.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; counts.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, &c) in counts.iter().enumerate() {
            current[i] += c as i64;
            if current[i] > current[best] || counts[best] == 0 {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u8);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn equal_slot_tables_share_one_allocation() {
        let a = shared(fill_slots(&[100, 100, 100, 7]).unwrap());
        let b = shared(fill_slots(&[100, 100, 100, 7]).unwrap());
        let c = shared(fill_slots(&[100, 100, 7, 100]).unwrap());
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(*a, *fill_slots(&[100, 100, 100, 7]).unwrap());
    }

    fn shares(slots: &[u8], n: usize) -> Vec<usize> {
        let mut counts = vec![0; n];
        for &s in slots {
            counts[s as usize] += 1;
        }
        counts
    }

    #[test]
    fn three_to_one_gives_three_quarters() {
        let slots = fill_slots(&[3, 1]).unwrap();
        assert_eq!(slots.len(), MAX_SLOTS);
        assert_eq!(shares(&slots, 2), vec![192, 64]);
    }

    #[test]
    fn zero_weight_gets_no_slot() {
        let slots = fill_slots(&[5, 0, 5]).unwrap();
        assert_eq!(shares(&slots, 3), vec![128, 0, 128]);
    }

    #[test]
    fn all_zero_is_an_empty_table() {
        assert!(fill_slots(&[0, 0]).unwrap().is_empty());
        assert!(fill_slots(&[]).unwrap().is_empty());
    }

    #[test]
    fn tiny_weight_still_gets_one_slot() {
        let slots = fill_slots(&[1_000_000, 1]).unwrap();
        assert_eq!(shares(&slots, 2), vec![255, 1]);
    }

    #[test]
    fn too_many_backends_is_refused() {
        let weights = vec![1; MAX_BACKENDS + 1];
        assert_eq!(
            fill_slots(&weights),
            Err(SlotError::TooManyBackends {
                count: MAX_BACKENDS + 1
            })
        );
    }

    #[test]
    fn equal_weights_alternate() {
        let slots = fill_slots(&[1, 1]).unwrap();
        assert_eq!(&slots[..4], &[0, 1, 0, 1]);
    }

    proptest! {
        #[test]
        fn shares_follow_weights(weights in proptest::collection::vec(0u32..10_000, 1..=MAX_BACKENDS)) {
            let slots = fill_slots(&weights).unwrap();
            let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
            if total == 0 {
                prop_assert!(slots.is_empty());
                return Ok(());
            }
            prop_assert_eq!(slots.len(), MAX_SLOTS);
            let counts = shares(&slots, weights.len());
            let live = weights.iter().filter(|&&w| w > 0).count() as f64;
            for (i, &w) in weights.iter().enumerate() {
                if w == 0 {
                    prop_assert_eq!(counts[i], 0);
                    continue;
                }
                prop_assert!(counts[i] >= 1);
                // The guaranteed slot each shifts shares by at most `live` slots
                // in total; apportionment adds at most one.
                let exact = MAX_SLOTS as f64 * f64::from(w) / total as f64;
                prop_assert!((counts[i] as f64 - exact).abs() <= live + 1.0,
                    "backend {} weight {} got {} slots, exact {:.2}", i, w, counts[i], exact);
            }
        }

        #[test]
        fn every_slot_names_a_live_backend(weights in proptest::collection::vec(0u32..100, 1..=MAX_BACKENDS)) {
            for s in fill_slots(&weights).unwrap() {
                prop_assert!(weights[s as usize] > 0);
            }
        }
    }
}
