//! Virtual-key authentication (by SHA-256 hash) and model authorization.

use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::{KeyEntry, RouteEntry, RuntimeConfig};
use crate::error::{ErrorKind, ProxyError};

/// The key a client presented: `Authorization: Bearer <key>` or `x-api-key: <key>`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
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
pub fn authenticate(
    cfg: &RuntimeConfig,
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
    let entry = cfg
        .key(&hash)
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

/// Whether a key may call a model through a route.
pub fn authorize(key: &KeyEntry, route: &RouteEntry, model: &str) -> Result<(), ProxyError> {
    if key.allows(model) && route.selects(key) {
        Ok(())
    } else {
        Err(ProxyError::new(
            ErrorKind::ModelNotAllowed,
            format!("This API key is not allowed to use model `{model}`."),
        )
        .with_param("model"))
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
