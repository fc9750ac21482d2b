//! VirtualKey: the credential clients use.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::Condition;

/// A credential for clients of the gateway. The key lives in a Secret; data planes only ever
/// receive its SHA-256.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "VirtualKey",
    namespaced,
    status = "VirtualKeyStatus",
    shortname = "vk",
    category = "switchyard",
    printcolumn = r#"{"name":"Prefix","type":"string","jsonPath":".status.keyPrefix"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct VirtualKeySpec {
    /// Secret (same namespace) that holds the key. The operator generates the key into it when
    /// it is missing; bring your own key by creating the Secret first.
    pub secret_ref: KeySecretRef,
    /// Client-facing model names this key may use (globs allowed). Empty: every model whose
    /// route selects this key.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// When the key stops working (RFC 3339, e.g. `2027-01-01T00:00:00Z`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// A disabled key is rejected with 401.
    #[serde(default)]
    pub disabled: bool,
}

/// Where a VirtualKey's key is stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySecretRef {
    /// Secret name.
    pub name: String,
    /// Key inside the Secret. Default `key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl KeySecretRef {
    /// The Secret data key, defaulted.
    pub fn data_key(&self) -> &str {
        self.key.as_deref().unwrap_or("key")
    }
}

/// Observed state of a VirtualKey.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualKeyStatus {
    /// Current conditions, keyed by `type`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The first characters of the key, to recognise it without revealing it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
}
