//! Namespaces are tenants. What one namespace declares may not read, steer, block or bill
//! another's traffic:
//!
//! - a route serves the keys of its own namespace, and a key of another namespace only when
//!   both agree: the route admits that namespace (`keyNamespaces`) and the key names the
//!   route in its `allowedRoutes` (`namespace/name`, the namespace written out);
//! - model names are claimed per namespace: within one, two routes never serve the same exact
//!   name and their globs never overlap (the older route keeps what it claims; an exact name
//!   beats a glob, as it is narrower and the same owner wrote both). Across namespaces no
//!   route can take a name from another: a key's own namespace's routes come first, then the
//!   routes its `allowedRoutes` name, in that order (the data plane resolves per key). A
//!   route admitting other namespaces therefore cannot shadow, capture or block theirs;
//! - selectors (a Guardrail's keys and key selector) match only their own namespace, and
//!   label-scoped cache entries carry the namespace;
//! - a diagnostic names only objects of the namespace it is written into.

use std::collections::BTreeMap;

use switchyard_proto::v1 as pb;

use super::{Reject, ResourceKey};
use crate::validate::InvalidField;
use crate::{KeyNamespaces, NamespacesFrom};

/// Model names and patterns claimed so far, per namespace (routes are visited oldest first).
#[derive(Debug, Default)]
pub(super) struct Claims {
    /// (namespace, exact name) -> the route id that claims it.
    exact: BTreeMap<(String, String), String>,
    /// namespace -> (pattern, route id).
    globs: BTreeMap<String, Vec<(String, String)>>,
}

impl Claims {
    /// Whether a route may claim its model names: none is an exact name an older route of its
    /// namespace serves, and none of its globs overlaps an older route's glob there.
    pub(super) fn check(&self, route: &ResourceKey, models: &[String]) -> Result<(), Reject> {
        let ns = &route.namespace;
        for m in models {
            if is_glob(m) {
                for (other, id) in self.globs.get(ns).into_iter().flatten() {
                    if globs_overlap(m, other) {
                        return Err(Reject::spec(
                            "ModelConflict",
                            format!(
                                "model pattern {m:?} overlaps {other:?} of LLMRoute {id}, which is older"
                            ),
                        ));
                    }
                }
            } else if let Some(id) = self.exact.get(&(ns.clone(), m.clone())) {
                return Err(Reject::spec(
                    "ModelConflict",
                    format!("model {m:?} is already served by LLMRoute {id}, which is older"),
                ));
            }
        }
        Ok(())
    }

    /// Records an admitted route's claims.
    pub(super) fn claim(&mut self, route: &ResourceKey, models: &[String]) {
        for m in models {
            if is_glob(m) {
                self.globs
                    .entry(route.namespace.clone())
                    .or_default()
                    .push((m.clone(), route.id()));
            } else {
                self.exact
                    .insert((route.namespace.clone(), m.clone()), route.id());
            }
        }
    }
}

fn is_glob(m: &str) -> bool {
    m.contains(['*', '?'])
}

/// Whether two globs (`*` any run, `?` any one character) match a common name: a search
/// over pairs of positions, each a state of both patterns at once.
pub(crate) fn globs_overlap(a: &str, b: &str) -> bool {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut seen = vec![false; (a.len() + 1) * (b.len() + 1)];
    let mut todo = vec![(0usize, 0usize)];
    while let Some((i, j)) = todo.pop() {
        let slot = i * (b.len() + 1) + j;
        if std::mem::replace(&mut seen[slot], true) {
            continue;
        }
        if i == a.len() && j == b.len() {
            return true;
        }
        // A `*` may match nothing.
        if a.get(i) == Some(&'*') {
            todo.push((i + 1, j));
        }
        if b.get(j) == Some(&'*') {
            todo.push((i, j + 1));
        }
        // Both read one character they can agree on.
        if let (Some(&x), Some(&y)) = (a.get(i), b.get(j)) {
            let agree = x == '*' || y == '*' || x == '?' || y == '?' || x == y;
            if agree {
                let ni = if x == '*' { i } else { i + 1 };
                let nj = if y == '*' { j } else { j + 1 };
                if (ni, nj) != (i, j) {
                    todo.push((ni, nj));
                } else {
                    // Two stars: each may also step past.
                    todo.push((i + 1, j));
                    todo.push((i, j + 1));
                }
            }
        }
    }
    false
}

/// The namespaces besides its own whose keys a route admits: (listed, every one).
pub(super) fn admitted(
    field: &str,
    spec: Option<&KeyNamespaces>,
    own: &str,
    namespaces: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<(Vec<String>, bool), Reject> {
    let Some(k) = spec else {
        return Ok((Vec::new(), false));
    };
    match k.from {
        NamespacesFrom::Same => Ok((Vec::new(), false)),
        NamespacesFrom::All => Ok((Vec::new(), true)),
        NamespacesFrom::Selector => {
            let Some(sel) = &k.selector else {
                return Err(InvalidField::new(
                    format!("{field}.selector"),
                    "required with `from: Selector`",
                )
                .into());
            };
            let matching = namespaces
                .iter()
                .filter(|(name, labels)| {
                    name.as_str() != own
                        && sel
                            .match_labels
                            .iter()
                            .all(|(k, v)| labels.get(k) == Some(v))
                })
                .map(|(name, _)| name.clone())
                .collect();
            Ok((matching, false))
        }
    }
}

/// A key's `allowedRoutes` as the data plane reads them: `namespace/name-glob`, a bare name
/// in the key's own namespace. Another namespace is written out, never a glob: a key reaches
/// only the namespaces its owner named.
pub(super) fn allowed_routes(
    key: &ResourceKey,
    entries: &[String],
) -> Result<Vec<String>, InvalidField> {
    let mut out = Vec::with_capacity(entries.len());
    for (i, r) in entries.iter().enumerate() {
        let field = format!("spec.allowedRoutes[{i}]");
        crate::validate::model_glob(&field, r)?;
        match r.split_once('/') {
            None => out.push(format!("{}/{r}", key.namespace)),
            Some((ns, name)) => {
                if ns.is_empty() || is_glob(ns) || name.is_empty() || name.contains('/') {
                    return Err(InvalidField::new(
                        field,
                        "expected `name` or `namespace/name` with the namespace written out",
                    ));
                }
                out.push(r.clone());
            }
        }
    }
    Ok(out)
}

/// The message of a key whose value an older key already uses: that key's name when it is
/// in the same namespace, nothing of another namespace's.
pub(super) fn duplicate_key(key: &ResourceKey, older: &str) -> Reject {
    let same_namespace = older
        .split_once('/')
        .is_some_and(|(ns, _)| ns == key.namespace);
    let message = if same_namespace {
        format!("VirtualKey {older} already uses the same key, and is older")
    } else {
        "another VirtualKey already uses the same key value: choose another".to_owned()
    };
    Reject::spec("DuplicateKey", message)
}

/// The message of keys of two namespaces that claim one key value at the same time: neither
/// is served (the value's owner cannot be told apart).
pub(super) fn contested_key() -> Reject {
    Reject::spec(
        "DuplicateKey",
        "another VirtualKey, created at the same time, claims the same key value: neither is served; choose another",
    )
}

/// Fills a compiled route's admissions.
pub(super) fn admit(route: &mut pb::Route, listed: Vec<String>, all: bool) {
    route.key_namespaces = listed;
    route.key_namespaces_all = all;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_overlap_when_some_name_matches_both() {
        for (a, b) in [
            ("gpt-*", "gpt-4*"),
            ("*", "claude-opus-4-1"),
            ("claude-*", "*-opus-*"),
            ("a?c", "ab*"),
            ("**", "x"),
            ("gpt-4o", "gpt-4o"),
            ("*a", "a*"),
        ] {
            assert!(globs_overlap(a, b), "{a} {b}");
            assert!(globs_overlap(b, a), "{b} {a}");
        }
        for (a, b) in [
            ("gpt-*", "claude-*"),
            ("a?c", "abd"),
            ("*-mini", "*-max"),
            ("x?", "x"),
            ("gpt-4o", "gpt-4"),
        ] {
            assert!(!globs_overlap(a, b), "{a} {b}");
            assert!(!globs_overlap(b, a), "{b} {a}");
        }
    }
}
