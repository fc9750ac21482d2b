//! The requests each key and namespace has in flight on this data plane: the counters the
//! front door's admission checks a key's and a namespace's shares against, kept across
//! config versions.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use crate::kept::Kept;

/// Requests in flight per key and per namespace, kept across config versions: a key entry
/// takes its counters from here when it is built, so a rebuilt entry shares the counts of
/// the one it replaces and of the requests still holding that one.
#[derive(Debug, Default)]
pub struct InFlightRegistry {
    keys: Kept<String, AtomicU32>,
    namespaces: Kept<String, AtomicU32>,
}

impl InFlightRegistry {
    /// The counters of the key `id` ("namespace/name") and of its namespace.
    pub fn counters(&self, id: &str) -> InFlightCounters {
        let namespace = id.split_once('/').map_or("", |(ns, _)| ns);
        InFlightCounters {
            key: self.keys.get(id.to_owned()),
            namespace: self.namespaces.get(namespace.to_owned()),
        }
    }
}

/// A key's requests in flight on this data plane, and its namespace's.
#[derive(Clone, Debug, Default)]
pub struct InFlightCounters {
    pub key: Arc<AtomicU32>,
    pub namespace: Arc<AtomicU32>,
}
