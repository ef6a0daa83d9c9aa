//! A small map kept as one sorted vector: a service's backends, a handful to a few dozen.
//!
//! A `BTreeMap` gives every service a node sized for 11 entries however few it holds — about
//! 4 KiB for 8 backends, most of a service's memory at 10,000 services. This keeps exactly
//! the values, in key order, each carrying its own key, with the `BTreeMap` methods the
//! decision core uses.

use std::ops::Index;

/// A value that carries its own key: the map stores the value only, not a second copy of
/// the key beside it (40 bytes in each of tens of thousands of backends).
pub trait Keyed {
    /// What the map orders and finds values by.
    type Key: Ord + Copy;
    /// This value's key; it must not change while the value is in a map.
    fn key(&self) -> &Self::Key;
}

/// Values in key order, at most one per key.
#[derive(Clone, Debug)]
pub struct SortedMap<V>(Vec<V>);

impl<V> Default for SortedMap<V> {
    fn default() -> Self {
        SortedMap(Vec::new())
    }
}

impl<V: Keyed> SortedMap<V> {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, key: &V::Key) -> Result<usize, usize> {
        self.0.binary_search_by(|v| v.key().cmp(key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &V::Key) -> Option<&V> {
        self.find(key).ok().map(|i| &self.0[i])
    }

    /// The value of `key`, to change (but not its key).
    pub fn get_mut(&mut self, key: &V::Key) -> Option<&mut V> {
        self.find(key).ok().map(|i| &mut self.0[i])
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &V::Key) -> bool {
        self.find(key).is_ok()
    }

    /// Sets the value of its key; returns the one it replaced.
    pub fn insert(&mut self, value: V) -> Option<V> {
        match self.find(value.key()) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i], value)),
            Err(i) => {
                self.0.insert(i, value);
                None
            }
        }
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &V::Key) -> Option<V> {
        self.find(key).ok().map(|i| self.0.remove(i))
    }

    /// Whether the map is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&V::Key, &V)> {
        self.0.iter().map(|v| (v.key(), v))
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &V::Key> {
        self.0.iter().map(Keyed::key)
    }

    /// Values in key order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter()
    }

    /// Values in key order, to change (but not their keys).
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.0.iter_mut()
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&V::Key, &mut V) -> bool) {
        self.0.retain_mut(|v| {
            let key = *v.key();
            keep(&key, v)
        });
    }
}

impl<V: Keyed> Index<&V::Key> for SortedMap<V> {
    type Output = V;

    fn index(&self, key: &V::Key) -> &V {
        self.get(key).expect("no entry for the key")
    }
}

#[cfg(test)]
mod tests {
    use super::{Keyed, SortedMap};

    /// A key and a value, keyed by the first.
    #[derive(Debug, PartialEq)]
    struct Entry(u32, u32);

    impl Keyed for Entry {
        type Key = u32;
        fn key(&self) -> &u32 {
            &self.0
        }
    }

    #[test]
    fn keeps_entries_in_key_order_one_per_key() {
        let mut m = SortedMap::new();
        for k in [5, 1, 3] {
            assert_eq!(m.insert(Entry(k, k * 10)), None);
        }
        assert_eq!(m.insert(Entry(3, 33)), Some(Entry(3, 30)));
        assert_eq!(m.keys().copied().collect::<Vec<_>>(), vec![1, 3, 5]);
        assert_eq!(m[&3], Entry(3, 33));
        assert_eq!(m.remove(&1), Some(Entry(1, 10)));
        assert_eq!(m.get(&1), None);
        m.retain(|k, _| *k != 5);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![(&3, &Entry(3, 33))]);
        assert_eq!(m.len(), 1);
    }
}
