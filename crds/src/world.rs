//! The input of `compile`: every resource and the Secret values they reference. Also parses
//! multi-document YAML as a user would `kubectl apply` it.

use std::collections::BTreeMap;
use switchyard_proto::ResourceKind;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use serde::Deserialize;
use thiserror::Error;

use crate::{Guardrail, LLMRoute, ProviderPool, VirtualKey};

/// Namespace given to resources that carry none (standalone YAML).
pub const DEFAULT_NAMESPACE: &str = "default";

/// Everything `compile` looks at. Plain data: no clients, no I/O.
#[derive(Clone, Debug, Default)]
pub struct World {
    pub pools: Vec<ProviderPool>,
    pub routes: Vec<LLMRoute>,
    pub keys: Vec<VirtualKey>,
    pub guardrails: Vec<Guardrail>,
    /// Secret values by namespace, then name.
    pub secrets: BTreeMap<String, BTreeMap<String, BTreeMap<String, String>>>,
    /// The labels of each namespace known (what `keyNamespaces: {from: Selector}` matches).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// The namespaces this control plane serves (`None`: every one). Resources elsewhere are
    /// left out, each with a diagnostic.
    pub served: Option<std::collections::BTreeSet<String>>,
    /// Environment variables that `credentialEnv` may reference (standalone mode).
    pub env: BTreeMap<String, String>,
    /// Documents that could not be parsed, with where they came from.
    pub load_errors: Vec<LoadError>,
}

/// A YAML document that could not be turned into a resource.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{source_name} document {index}: {message}")]
pub struct LoadError {
    pub source_name: String,
    pub index: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
}

impl World {
    /// Adds a Secret's values (both `data` and `stringData`).
    pub fn add_secret(&mut self, secret: &Secret) {
        let ns = secret
            .namespace()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let mut values = BTreeMap::new();
        for (k, v) in secret.data.iter().flatten() {
            if let Ok(s) = String::from_utf8(v.0.clone()) {
                values.insert(k.clone(), s);
            }
        }
        for (k, v) in secret.string_data.iter().flatten() {
            values.insert(k.clone(), v.clone());
        }
        self.secrets
            .entry(ns)
            .or_default()
            .insert(secret.name_any(), values);
    }

    /// Reads the environment variables `credentialEnv` references (standalone, `dir:` and
    /// `etcd:` sources).
    pub fn resolve_env(&mut self) {
        for var in self.referenced_env() {
            if let Ok(v) = std::env::var(&var) {
                self.env.insert(var, v);
            }
        }
    }

    /// Adds everything of another World.
    pub fn merge(&mut self, other: World) {
        self.pools.extend(other.pools);
        self.routes.extend(other.routes);
        self.keys.extend(other.keys);
        self.guardrails.extend(other.guardrails);
        for (ns, secrets) in other.secrets {
            self.secrets.entry(ns).or_default().extend(secrets);
        }
        self.load_errors.extend(other.load_errors);
        self.env.extend(other.env);
    }

    /// A Secret's values.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&BTreeMap<String, String>> {
        self.secrets.get(namespace)?.get(name)
    }

    /// Parses multi-document YAML and adds every resource in it. Unknown kinds are ignored;
    /// documents that fail to parse are recorded in `load_errors` and do not stop the rest.
    pub fn add_yaml(&mut self, source_name: &str, text: &str) {
        for (index, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = match serde_yaml::Value::deserialize(doc) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    self.load_error(source_name, index, e.to_string());
                    // A syntax error poisons the rest of the stream.
                    break;
                }
            };
            if let Err(message) = self.add_value(value) {
                self.load_error(source_name, index, message);
            }
        }
    }

    fn load_error(&mut self, source_name: &str, index: usize, message: String) {
        self.load_errors.push(LoadError {
            source_name: source_name.to_owned(),
            index,
            message,
        });
    }

    /// `Err`: what is wrong with the document, as the `LoadError` the reader lists for it.
    fn add_value(&mut self, value: serde_yaml::Value) -> Result<(), String> {
        let meta: TypeMeta = serde_yaml::from_value(value.clone()).map_err(|e| e.to_string())?;
        let group = meta.api_version.split('/').next().unwrap_or_default();
        fn parse<T: serde::de::DeserializeOwned>(
            kind: &str,
            value: serde_yaml::Value,
        ) -> Result<T, String> {
            serde_yaml::from_value(value).map_err(|e| format!("invalid {kind}: {e}"))
        }
        match (group, meta.kind.as_str()) {
            ("v1", "Secret") => {
                let secret: Secret = parse("Secret", value)?;
                self.add_secret(&secret);
            }
            ("v1", "Namespace") => {
                let ns: k8s_openapi::api::core::v1::Namespace = parse("Namespace", value)?;
                let labels = ns.labels().clone();
                self.namespaces.insert(ns.name_any(), labels);
            }
            ("v1", "List") => {
                let items = value.get("items").and_then(|i| i.as_sequence()).cloned();
                for item in items.unwrap_or_default() {
                    self.add_value(item)?;
                }
            }
            (crate::GROUP, kind) => match ResourceKind::parse(kind) {
                Some(ResourceKind::ProviderPool) => self.pools.push(defaulted(parse(kind, value)?)),
                Some(ResourceKind::LlmRoute) => self.routes.push(defaulted(parse(kind, value)?)),
                Some(ResourceKind::VirtualKey) => self.keys.push(defaulted(parse(kind, value)?)),
                Some(ResourceKind::Guardrail) => {
                    self.guardrails.push(defaulted(parse(kind, value)?))
                }
                None => return Err(format!("unknown kind {kind:?} in {}", crate::GROUP)),
            },
            _ => {}
        }
        Ok(())
    }

    /// Environment variable names referenced by `credentialEnv`.
    pub fn referenced_env(&self) -> Vec<String> {
        self.pools
            .iter()
            .flat_map(|p| p.spec.endpoints.iter())
            .filter_map(|e| e.credential_env.clone())
            .collect()
    }
}

fn defaulted<K: kube::Resource>(mut obj: K) -> K {
    if obj.meta().namespace.is_none() {
        obj.meta_mut().namespace = Some(DEFAULT_NAMESPACE.to_owned());
    }
    obj
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_multi_document_yaml_with_secrets() {
        let mut w = World::default();
        w.add_yaml(
            "t.yaml",
            r#"
apiVersion: v1
kind: Secret
metadata: {name: s}
stringData: {key: sk-1}
data: {other: aGVsbG8=}
---
apiVersion: switchyard.dev/v1alpha1
kind: ProviderPool
metadata: {name: p, namespace: team}
spec: {provider: mock, models: [{name: demo}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
---
apiVersion: switchyard.dev/v1alpha1
kind: LLMRoute
metadata: {name: r}
spec: {models: [demo], backends: [{pool: p, weight: "heavy"}]}
---
apiVersion: switchyard.dev/v1alpha1
kind: Gizmo
metadata: {name: g}
"#,
        );
        assert_eq!(w.pools.len(), 1);
        assert_eq!(w.pools[0].namespace().as_deref(), Some("team"));
        let s = w.secret("default", "s").expect("secret");
        assert_eq!(s["key"], "sk-1");
        assert_eq!(s["other"], "hello");
        assert_eq!(w.routes.len(), 0);
        assert_eq!(w.load_errors.len(), 2, "{:?}", w.load_errors);
        assert!(w.load_errors[0].message.starts_with("invalid LLMRoute"));
        assert!(w.load_errors[1].message.contains("Gizmo"));
    }

    #[test]
    fn syntax_error_is_reported() {
        let mut w = World::default();
        w.add_yaml("bad.yaml", "kind: [unclosed");
        assert_eq!(w.load_errors.len(), 1);
        assert_eq!(w.load_errors[0].source_name, "bad.yaml");
    }
}
