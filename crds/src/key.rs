//! VirtualKey: the credential clients use.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{Condition, RateLimits};

/// A credential for clients of the gateway. The key lives in a Secret; data planes only ever
/// receive its SHA-256.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "VirtualKey",
    namespaced,
    status = "VirtualKeyStatus",
    shortname = "vk",
    category = "switchyard",
    printcolumn = r#"{"name":"Fingerprint","type":"string","jsonPath":".status.keyPrefix"}"#,
    printcolumn = r#"{"name":"Disabled","type":"boolean","jsonPath":".spec.disabled"}"#,
    printcolumn = r#"{"name":"Spend","type":"string","jsonPath":".status.spend.amount"}"#,
    printcolumn = r#"{"name":"Budget","type":"string","jsonPath":".spec.budget.amount"}"#,
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
    /// LLMRoutes this key may use (globs over names): `name` for a route in the key's
    /// namespace, `namespace/name` for one in another namespace, which must admit this key's
    /// namespace (`spec.keyNamespaces` on the route); the namespace is written out, never a
    /// glob. Empty: every route of the key's own namespace whose key selector admits it.
    #[serde(default)]
    pub allowed_routes: Vec<String>,
    /// Rate limits over everything this key sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimits>,
    /// Rate limits for this key on particular client-facing models (globs). Each matching
    /// entry applies; they add to `limits`.
    #[serde(default)]
    pub model_limits: Vec<ModelRateLimits>,
    /// Spend limit in USD over a period, priced from each ProviderPool's model prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
}

/// Rate limits for one key on the models matching a glob.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelRateLimits {
    /// Client-facing model name or glob, e.g. `gpt-4o*`.
    pub model: String,
    /// The limits on that model.
    pub limits: RateLimits,
}

/// A spend limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Budget {
    /// USD as a decimal string, e.g. `"25"` or `"0.50"`.
    pub amount: String,
    /// When spend starts again from zero (UTC). Default `Monthly`.
    #[serde(default)]
    pub period: BudgetPeriod,
    /// What happens once spend reaches the amount. Default `Block`.
    #[serde(default)]
    pub action: BudgetAction,
}

/// Budget periods, in UTC: days start at midnight, weeks on Monday, months on the 1st.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BudgetPeriod {
    /// Resets every day.
    Daily,
    /// Resets every Monday.
    Weekly,
    /// Resets on the first of every month.
    #[default]
    Monthly,
    /// Never resets: a lifetime budget.
    None,
}

/// What a budget does once spent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BudgetAction {
    /// Reject further requests with 429 `budget_exceeded` until the period resets.
    #[default]
    Block,
    /// Keep serving; log, count and flag the key in its status.
    Alert,
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
    /// A fingerprint of the key (`sha256:` and the first 12 hex digits of its SHA-256), to
    /// recognise it without revealing any of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    /// Spend in the current budget period, as the data planes recorded it in Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spend: Option<SpendStatus>,
}

/// Spend of a key in its current budget period.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpendStatus {
    /// USD spent in the period, e.g. `"1.234567"`.
    pub amount: String,
    /// The period, e.g. `2026-11` (monthly), `2026-W48`, `2026-11-26` or `all`.
    pub period: String,
    /// The budget is spent (with action `Alert`, requests are still served).
    #[serde(default)]
    pub exceeded: bool,
}
