//! Types shared by every kind: status conditions and Secret references.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every Switchyard kind.
pub const GROUP: &str = "switchyard.dev";
/// API version of every Switchyard kind.
pub const VERSION: &str = "v1alpha1";

/// The label a Secret carries for the operator to watch it (provider credentials, virtual
/// keys brought by the user). Generated key Secrets carry it. Any other Secret in the cluster
/// is never read.
pub const SECRET_LABEL: &str = "switchyard.dev/secret";

/// Condition types reported on every kind.
pub mod condition {
    /// The resource is valid and was admitted into the compiled configuration.
    pub const ACCEPTED: &str = "Accepted";
    /// Every reference (Secrets, pools) resolved.
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    /// Every connected data plane acknowledged a snapshot containing this generation.
    pub const PROGRAMMED: &str = "Programmed";
}

/// A condition in the Kubernetes API convention.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type of the condition: `Accepted`, `ResolvedRefs` or `Programmed`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The `.metadata.generation` this condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    /// Machine-readable CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
}

/// Status shared by ProviderPool, LLMRoute and Guardrail.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceStatus {
    /// Current conditions, keyed by `type`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A key inside a Secret in the resource's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret, in the same namespace as the referring resource.
    pub name: String,
    /// Key inside the Secret's `data` (or `stringData`).
    pub key: String,
}

/// Request and token rate limits. Minutes are fixed windows aligned to the clock minute and
/// shared by every data plane through Redis; absent fields are unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Requests admitted per clock minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub requests_per_minute: Option<u64>,
    /// Tokens (input + output) per clock minute. Input is estimated before the call and
    /// reconciled with the usage the provider reports afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once (streams count until they end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_parallel_requests: Option<u64>,
}

/// Why an upstream call failed, as retries and fallbacks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum FailureClass {
    /// 429 from the upstream.
    RateLimited,
    /// The upstream is overloaded (503, Anthropic's 529).
    Overloaded,
    /// 5xx, a broken connection, or an answer that is not the provider's format.
    ServerError,
    /// No answer before the first-byte timeout.
    Timeout,
    /// The prompt does not fit the model's context window.
    ContextWindowExceeded,
    /// The provider's content filter refused the request.
    ContentFiltered,
    /// The provider refused the gateway's credential.
    Authentication,
    /// Any other 4xx.
    BadRequest,
}
