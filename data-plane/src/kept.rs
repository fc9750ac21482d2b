//! State kept across config versions: a map from a name to a live value that whoever still
//! holds it keeps alive. A config push rebuilds every entry; an entry built from the same
//! name gets the same value (an endpoint's health, a key's requests in flight), and a name
//! nothing holds any more is forgotten.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

/// Values by name, held weakly (dead entries are swept now and then).
#[derive(Debug)]
pub(crate) struct Kept<K, T> {
    map: Mutex<HashMap<K, Weak<T>>>,
}

impl<K, T> Default for Kept<K, T> {
    fn default() -> Self {
        Self {
            map: Mutex::default(),
        }
    }
}

impl<K: Hash + Eq, T: Default> Kept<K, T> {
    /// The live value kept under `key`, or a fresh one.
    pub(crate) fn get(&self, key: K) -> Arc<T> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(live) = m.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        if m.len() >= 64 && m.len().is_power_of_two() {
            m.retain(|_, w| w.strong_count() > 0);
        }
        let fresh = Arc::new(T::default());
        m.insert(key, Arc::downgrade(&fresh));
        fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_gets_its_live_value_and_a_dropped_one_starts_afresh() {
        let kept: Kept<String, std::sync::atomic::AtomicU32> = Kept::default();
        let a = kept.get("a".into());
        a.store(3, std::sync::atomic::Ordering::Relaxed);
        assert!(Arc::ptr_eq(&a, &kept.get("a".into())));
        assert!(!Arc::ptr_eq(&a, &kept.get("b".into())));
        drop(a);
        assert_eq!(
            kept.get("a".into())
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }
}
