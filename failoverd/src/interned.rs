//! One allocation for equal values: a value equal to one handed out lately is answered with
//! that one's `Arc`. At 10,000 services nearly every service has the same health section,
//! probe and slot table, and one copy of each is enough.

use std::{borrow::Borrow, sync::Arc};

/// The last few distinct values handed out, the newest last. Looking only a few back keeps
/// each lookup cheap and loading linear, and the values services share are few.
#[derive(Debug)]
pub struct Recent<T: ?Sized> {
    seen: Vec<Arc<T>>,
    max: usize,
}

impl<T: ?Sized + PartialEq> Recent<T> {
    /// Remembers up to `max` distinct values.
    pub const fn new(max: usize) -> Self {
        Recent {
            seen: Vec::new(),
            max,
        }
    }

    /// `value` as an allocation shared with an equal value handed out before, if one of the
    /// last `max` distinct ones is equal; a new one (remembered) otherwise.
    pub fn share<V: Borrow<T> + Into<Arc<T>>>(&mut self, value: V) -> Arc<T> {
        if let Some(same) = self.seen.iter().rev().find(|s| ***s == *value.borrow()) {
            return Arc::clone(same);
        }
        let value: Arc<T> = value.into();
        if self.seen.len() == self.max {
            self.seen.remove(0);
        }
        self.seen.push(Arc::clone(&value));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_and_the_oldest_is_forgotten() {
        let mut recent: Recent<[u8]> = Recent::new(2);
        let a = recent.share(vec![1, 2]);
        assert!(Arc::ptr_eq(&a, &recent.share(vec![1, 2])));
        let b = recent.share(vec![3]);
        assert!(!Arc::ptr_eq(&a, &b));
        recent.share(vec![4]);
        // [1, 2] was the oldest of three distinct values: a new allocation now.
        assert!(!Arc::ptr_eq(&a, &recent.share(vec![1, 2])));
        assert_eq!(*recent.share(vec![3]), [3]);
    }
}
