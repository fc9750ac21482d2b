//! Virtual keys: the entry the request path reads, the index by hash, and authentication
//! (by SHA-256 hash).

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};

mod index;

use std::collections::BTreeMap;

use switchyard_proto::v1 as pb;

use crate::error::{ErrorKind, ProxyError};
use crate::glob;
use crate::policy::concurrency::InFlightCounters;
use crate::policy::limits::{BudgetSpec, Limits};

pub(crate) use index::KeyIndex;

/// The key a client presented: `Authorization: Bearer <key>` or `x-api-key: <key>`.
pub(crate) fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(k) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(k.trim()).filter(|k| !k.is_empty());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// Looks the presented key up by hash; rejects unknown, disabled and expired keys.
pub(crate) fn authenticate(
    keys: &KeyIndex,
    headers: &HeaderMap,
    now_unix: i64,
) -> Result<Arc<KeyEntry>, ProxyError> {
    let key = presented_key(headers).ok_or_else(|| {
        ProxyError::new(
            ErrorKind::MissingKey,
            "You didn't provide an API key. Send it as `Authorization: Bearer <key>` or `x-api-key: <key>`.",
        )
    })?;
    let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
    let entry = keys
        .get(&hash)
        .ok_or_else(|| ProxyError::new(ErrorKind::InvalidKey, "Incorrect API key provided."))?;
    if entry.disabled {
        return Err(ProxyError::new(
            ErrorKind::DisabledKey,
            "This API key is disabled.",
        ));
    }
    if entry.expires_at.is_some_and(|t| t <= now_unix) {
        return Err(ProxyError::new(
            ErrorKind::ExpiredKey,
            "This API key has expired.",
        ));
    }
    Ok(entry.clone())
}

/// A virtual key as the request path sees it.
#[derive(Debug, Default)]
pub struct KeyEntry {
    pub id: String,
    pub allowed_models: Vec<String>,
    /// Unix seconds; `None` = never.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub labels: BTreeMap<String, String>,
    /// Route ids ("namespace/name", globs) the key may use; empty = all.
    pub allowed_routes: Vec<String>,
    pub limits: Limits,
    /// (model glob, limits) from the key's `modelLimits`.
    pub model_limits: Vec<(String, Limits)>,
    pub budget: Option<BudgetSpec>,
    /// Requests of this key, and of its namespace, in flight on this data plane (shared
    /// with the entries of earlier config versions).
    pub in_flight: InFlightCounters,
}

impl KeyEntry {
    /// A key as the request path sees it, from the key as sent.
    pub fn from_proto(k: &pb::VirtualKey, in_flight: InFlightCounters) -> Self {
        Self {
            id: k.id.clone(),
            allowed_models: k.allowed_models.clone(),
            expires_at: (k.expires_at_unix > 0).then_some(k.expires_at_unix),
            disabled: k.disabled,
            labels: k.labels.clone(),
            allowed_routes: k.allowed_routes.clone(),
            limits: Limits::from_proto(k.limits),
            model_limits: k
                .model_limits
                .iter()
                .map(|m| (m.model.clone(), Limits::from_proto(m.limits)))
                .collect(),
            budget: BudgetSpec::from_proto(k.budget),
            in_flight,
        }
    }

    /// The key's namespace (its tenant): the part of its id before `/`.
    pub fn namespace(&self) -> &str {
        self.id.split_once('/').map_or("", |(ns, _)| ns)
    }

    /// Whether the key's own allow-list admits a model.
    pub fn allows(&self, model: &str) -> bool {
        self.allowed_models.is_empty()
            || self.allowed_models.iter().any(|p| glob::matches(p, model))
    }

    /// Whether the key's route allow-list admits a route: a route of its own namespace when
    /// the list is empty or names it, a route of another namespace only when the list names
    /// it (with that namespace written out).
    pub fn allows_route(&self, route_id: &str, own_namespace: bool) -> bool {
        if self.allowed_routes.is_empty() {
            return own_namespace;
        }
        self.allowed_routes
            .iter()
            .any(|p| glob::matches(p, route_id))
    }

    /// The key's per-model limits that apply to a model, with their index.
    pub fn model_limits_for(&self, model: &str) -> Vec<(usize, Limits)> {
        self.model_limits
            .iter()
            .enumerate()
            .filter(|(_, (g, l))| !l.is_empty() && glob::matches(g, model))
            .map(|(i, (_, l))| (i, *l))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn key_from_either_header() {
        let mut h = HeaderMap::new();
        assert_eq!(presented_key(&h), None);
        h.insert("x-api-key", HeaderValue::from_static("sk-a"));
        assert_eq!(presented_key(&h), Some("sk-a"));
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer sk-b"),
        );
        assert_eq!(presented_key(&h), Some("sk-b"));
        h.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_static("Bearer "),
        );
        assert_eq!(presented_key(&h), Some("sk-a"));
    }
}
