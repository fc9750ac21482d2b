//! LLMRoute: the client-facing model names and the backends that serve them.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{FailureClass, RateLimits, ResourceStatus};
use crate::pool::LoadBalancingStrategy;

/// Maps client-facing model names to weighted backends (a pool plus an upstream model name).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "LLMRoute",
    plural = "llmroutes",
    namespaced,
    status = "ResourceStatus",
    shortname = "llmr",
    category = "switchyard",
    printcolumn = r#"{"name":"Models","type":"string","jsonPath":".spec.models"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct LLMRouteSpec {
    /// Client-facing model names this route answers. `*` and `?` globs are allowed; an exact
    /// name wins over a glob.
    pub models: Vec<String>,
    /// Weighted backends. Each request goes to one, picked by `loadBalancing`.
    pub backends: Vec<RouteBackend>,
    /// How requests are spread over the backends. Default `WeightedRandom`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancingStrategy>,
    /// Retries of a failed attempt, within the backends of the group that failed (another
    /// endpoint or backend when there is one). Default: 2 attempts on transient failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Ordered groups of backends tried after the `backends` (and their retries) failed with
    /// a class the group lists: the first later group that lists it is entered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<FallbackGroup>,
    /// Which VirtualKeys may use this route: every label listed must be on the key.
    /// Absent: every key (of the namespaces the route admits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_selector: Option<KeySelector>,
    /// Which namespaces' VirtualKeys may use this route. Default: its own only
    /// (`from: Same`). A key of another namespace must also name the route in its
    /// `allowedRoutes` (`namespace/name`): both owners agree, as a Gateway's
    /// `allowedRoutes` and a route's `parentRefs` do in Gateway API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_namespaces: Option<KeyNamespaces>,
    /// Rate limits over everything sent through this route, by every key together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimits>,
    /// What the audit trail records of this route's requests (when the data planes run one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<RouteAudit>,
    /// The response cache. Unset: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
}

/// A route's response cache.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheSpec {
    /// `Off`, `Exact` (the same request, normalised) or `Semantic` (the same request but for
    /// a text that means nearly the same, by embedding similarity).
    pub mode: CacheMode,
    /// How long an answer is served, such as `10m`. Default `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
    /// Who shares answers: `Key` (default: each VirtualKey its own), `Label` (keys with the
    /// same value of `scopeLabel`, such as a team) or `Route` (every key of the route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<CacheScope>,
    /// The key label of `scope: Label`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_label: Option<String>,
    /// Only requests at or below this `temperature` are cached (a request without one
    /// counts as 1). Unset: any temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_temperature: Option<f64>,
    /// Whether streamed requests are answered from the cache (replayed as a stream). Default
    /// true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming: Option<bool>,
    /// `Semantic`: the least cosine similarity between the embedded texts that counts as a
    /// hit, above 0 and at most 1. Default 0.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub similarity_threshold: Option<f64>,
    /// `Semantic`: which text is embedded. `LastUserMessage` (default): the last user
    /// message, and everything else in the request must match exactly. `Conversation`: every
    /// message's text, system prompt included; the other fields must match exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<CacheText>,
    /// Most answers kept per scope (the oldest go first). Unset: bounded by `ttl` and the
    /// proxies' memory only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
    /// `Semantic`: embed with a ProviderPool's embeddings endpoint instead of the data
    /// plane's built-in model (all-MiniLM-L6-v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<CacheEmbedding>,
}

/// Embeddings from a pool, for the semantic cache.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheEmbedding {
    /// Name of a ProviderPool in the route's namespace.
    pub pool: String,
    /// The embedding model to ask it for.
    pub model: String,
}

/// Which text of a request the semantic cache compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CacheText {
    LastUserMessage,
    Conversation,
}

/// How a route caches answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CacheMode {
    #[default]
    Off,
    Exact,
    Semantic,
}

/// Who shares cached answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CacheScope {
    Key,
    Label,
    Route,
}

/// A route's audit settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteAudit {
    /// Also record the prompt's text and the answer's text, as they left the gateway: after
    /// the guardrails redacted them. Each is cut at 64 KiB. Default false.
    #[serde(default)]
    pub include_text: bool,
}

/// One backend of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteBackend {
    /// Name of a ProviderPool in the route's namespace.
    pub pool: String,
    /// Model name sent upstream. Absent: the name the client asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Relative weight (0 takes the backend out of rotation). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// The namespaces whose keys a route admits.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyNamespaces {
    /// `Same` (default): the route's own namespace. `All`: every namespace. `Selector`: the
    /// namespaces whose labels match `selector`.
    #[serde(default)]
    pub from: NamespacesFrom,
    /// With `from: Selector`: labels the namespace must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<KeySelector>,
}

/// Where admitted keys may come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum NamespacesFrom {
    #[default]
    Same,
    All,
    Selector,
}

/// A label selector over VirtualKeys (equality only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySelector {
    /// Labels the key must carry, with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Retries within a group of backends.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryPolicy {
    /// Attempts per group, the first included (1 = no retries). Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Failure classes that are retried. Default `[RateLimited, Overloaded, ServerError,
    /// Timeout]`. An attempt that reached the upstream is retried only when the upstream
    /// answered with an error status or timed out before answering; a stream only before
    /// its first byte went to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<Vec<FailureClass>>,
    /// First backoff of a retry that has no other endpoint to go to (one that has goes at
    /// once); it doubles with each retry, with jitter, and a `retry-after` from the upstream
    /// lengthens it. Default `100ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
    /// Longest backoff (and longest `retry-after` waited for). Default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_backoff: Option<String>,
    /// Retries may add at most this percentage of the route's requests (over 10 s), plus
    /// `minRetriesPerSecond`, so that retries cannot amplify an outage. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_percent: Option<u32>,
    /// Retries always allowed per second, whatever the traffic. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
}

/// A group of backends entered when the groups before it failed with one of `when`. (Not
/// `on`: YAML 1.1, which kubectl speaks, reads `on` as `true`.)
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackGroup {
    /// Failure classes that lead here.
    pub when: Vec<FailureClass>,
    /// Backends of this group, as in `spec.backends`.
    pub backends: Vec<RouteBackend>,
}
