//! The virtual-key index, sharded and copy-on-write: a new config shares every shard a delta
//! does not touch with the config it replaces, so one changed key copies one shard (1/64 of
//! the keys), not the whole index.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use super::KeyEntry;

const SHARDS: usize = 64;

/// A map split into shards that are shared between versions until written.
#[derive(Debug)]
struct Sharded<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
}

impl<K, V> Clone for Sharded<K, V> {
    fn clone(&self) -> Self {
        Self {
            shards: self.shards.clone(),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Sharded<K, V> {
    fn with_capacity(n: usize) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Arc::new(HashMap::with_capacity(n / SHARDS + 1)))
                .collect(),
        }
    }

    fn shard(&self, i: usize) -> &HashMap<K, V> {
        &self.shards[i % SHARDS]
    }

    /// The shard for writing: copied first if another version still shares it.
    fn shard_mut(&mut self, i: usize) -> &mut HashMap<K, V> {
        Arc::make_mut(&mut self.shards[i % SHARDS])
    }

    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len()).sum()
    }
}

/// Virtual keys by the SHA-256 of the key, and the hash of each key by its id.
#[derive(Clone, Debug)]
pub struct KeyIndex {
    by_hash: Sharded<[u8; 32], Arc<KeyEntry>>,
    by_id: Sharded<String, [u8; 32]>,
    ids: std::collections::hash_map::RandomState,
}

impl KeyIndex {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            by_hash: Sharded::with_capacity(n),
            by_id: Sharded::with_capacity(n),
            ids: std::collections::hash_map::RandomState::new(),
        }
    }

    fn id_shard(&self, id: &str) -> usize {
        self.ids.hash_one(id) as usize
    }

    pub fn get(&self, hash: &[u8; 32]) -> Option<&Arc<KeyEntry>> {
        self.by_hash.shard(usize::from(hash[0])).get(hash)
    }

    /// Adds a key, or replaces the key of the same id (whose hash may have changed).
    pub(crate) fn insert(&mut self, hash: [u8; 32], entry: Arc<KeyEntry>) {
        self.remove(&entry.id);
        let s = self.id_shard(&entry.id);
        self.by_id.shard_mut(s).insert(entry.id.clone(), hash);
        self.by_hash
            .shard_mut(usize::from(hash[0]))
            .insert(hash, entry);
    }

    /// Removes the key with this id, if any.
    pub(crate) fn remove(&mut self, id: &str) {
        let s = self.id_shard(id);
        if !self.by_id.shard(s).contains_key(id) {
            return;
        }
        if let Some(hash) = self.by_id.shard_mut(s).remove(id) {
            self.by_hash.shard_mut(usize::from(hash[0])).remove(&hash);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.by_hash.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Arc<KeyEntry> {
        Arc::new(KeyEntry {
            id: id.into(),
            ..Default::default()
        })
    }

    #[test]
    fn writes_copy_only_the_shards_they_touch() {
        let mut a = KeyIndex::with_capacity(1000);
        for i in 0..1000u32 {
            let mut h = [0u8; 32];
            h[..4].copy_from_slice(&i.to_le_bytes());
            a.insert(h, entry(&format!("ns/k{i}")));
        }
        let mut b = a.clone();
        let mut h = [0u8; 32];
        h[0] = 7;
        h[31] = 1;
        b.insert(h, entry("ns/new"));
        b.remove("ns/k1");
        assert_eq!((a.len(), b.len()), (1000, 1000));
        assert!(b.get(&h).is_some() && a.get(&h).is_none());
        let shared = a
            .by_hash
            .shards
            .iter()
            .zip(&b.by_hash.shards)
            .filter(|(x, y)| Arc::ptr_eq(x, y))
            .count();
        assert_eq!(
            shared,
            SHARDS - 2,
            "only the two written shards were copied"
        );
        // Re-inserting an id with a new hash drops the old hash.
        let mut moved = [0u8; 32];
        moved[0] = 9;
        moved[31] = 1;
        b.insert(moved, entry("ns/new"));
        assert!(b.get(&h).is_none() && b.get(&moved).is_some());
        assert_eq!(b.len(), 1000);
    }
}
