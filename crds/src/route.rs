//! LLMRoute: the client-facing model names and the backends that serve them.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{RateLimits, ResourceStatus};

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
    /// Weighted backends. Each request goes to one, picked at random by weight.
    pub backends: Vec<RouteBackend>,
    /// Which VirtualKeys may use this route: every label listed must be on the key.
    /// Absent: every key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_selector: Option<KeySelector>,
    /// Rate limits over everything sent through this route, by every key together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<RateLimits>,
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

/// A label selector over VirtualKeys (equality only).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySelector {
    /// Labels the key must carry, with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}
