//! ProviderPool: one provider type, its endpoints, the models it serves and how to reach them.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::{ResourceStatus, SecretKeyRef};

/// A pool of endpoints of one LLM provider, the models they serve and how to reach them.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "ProviderPool",
    namespaced,
    status = "ResourceStatus",
    shortname = "pp",
    category = "switchyard",
    printcolumn = r#"{"name":"Provider","type":"string","jsonPath":".spec.provider"}"#,
    printcolumn = r#"{"name":"Accepted","type":"string","jsonPath":".status.conditions[?(@.type==\"Accepted\")].status"}"#,
    printcolumn = r#"{"name":"Programmed","type":"string","jsonPath":".status.conditions[?(@.type==\"Programmed\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ProviderPoolSpec {
    /// Provider type: the wire format the endpoints speak.
    pub provider: ProviderKind,
    /// Endpoints of the provider. Optional for `mock`, which is built into the data plane.
    #[serde(default)]
    pub endpoints: Vec<PoolEndpoint>,
    /// Models served by this pool, with their prices. A backend that names a model must
    /// name one of these; a route whose clients choose the name (a glob, no `model` on the
    /// backend) may send others, but a key with a budget is refused a model that has no price
    /// here (listed, an alias, or `defaultPrice`).
    #[serde(default)]
    pub models: Vec<PoolModel>,
    /// Prices of a model the pool does not list. Unset: such a model costs nothing, and a key
    /// with a budget cannot use it (a budget fails closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_price: Option<ModelPrice>,
    /// How requests are spread over the endpoints. Default `WeightedRandom`. (`Cost` is for
    /// a route's backends: every endpoint of a pool has the same prices.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancing: Option<LoadBalancingStrategy>,
    /// Passive health: endpoints that keep failing are taken out of rotation for a while.
    /// On by default (see the field defaults); set both thresholds to 0 to turn it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Timeouts towards the endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<PoolTimeouts>,
    /// Connections to each endpoint: a cap on those in use, and how many idle ones are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Active health checks: every data plane asks each endpoint on an interval and keeps it
    /// out of rotation while the checks fail. Off unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Azure OpenAI settings (provider `azure-openai`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<AzureSettings>,
    /// Gemini settings (provider `gemini`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gemini: Option<GeminiSettings>,
    /// AWS Bedrock settings (provider `bedrock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bedrock: Option<BedrockSettings>,
    /// Behaviour of the built-in mock provider (provider `mock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mock: Option<MockSettings>,
}

/// The provider types Switchyard speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    /// OpenAI's API (api.openai.com), bearer credential.
    Openai,
    /// Azure OpenAI deployments (`api-key` header, `api-version` query parameter).
    AzureOpenai,
    /// Anthropic's Messages API.
    Anthropic,
    /// Google Gemini (`generateContent`, `x-goog-api-key` credential).
    Gemini,
    /// AWS Bedrock Converse (SigV4-signed; credentials from `awsCredentialsSecretRef` or the
    /// data plane's standard AWS environment variables).
    Bedrock,
    /// Any server speaking OpenAI's wire format: vLLM, Ollama, Mistral, Groq, Together...
    OpenaiCompatible,
    /// Built-in mock provider: deterministic text, configurable latency and token rate.
    Mock,
}

/// One endpoint of a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolEndpoint {
    /// Base URL, e.g. `https://api.openai.com/v1`, `https://api.anthropic.com` or
    /// `https://myres.openai.azure.com`.
    pub url: String,
    /// Relative weight for load balancing (0 drains the endpoint). Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    /// Secret key holding the provider credential (API key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_secret_ref: Option<SecretKeyRef>,
    /// Environment variable holding the credential (standalone mode only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_env: Option<String>,
    /// Secret holding AWS credentials for Bedrock under the standard names
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`.
    /// Without it, data planes sign with their own AWS environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_credentials_secret_ref: Option<SecretNameRef>,
}

/// A Secret in the resource's own namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretNameRef {
    /// Name of the Secret.
    pub name: String,
}

/// Prices of a model not listed in a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelPrice {
    /// Price in USD per million input tokens, as a decimal string.
    pub input_price_per_million: String,
    /// Price in USD per million output tokens, as a decimal string.
    pub output_price_per_million: String,
}

/// A model served by a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolModel {
    /// Upstream model name (for Azure: the deployment name).
    pub name: String,
    /// Other names of the same model (a dated snapshot, a provider's alias): sent upstream
    /// as they are, priced as this model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// Context window in tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_window: Option<u64>,
    /// Price in USD per million input tokens, as a decimal string, e.g. `"2.50"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_price_per_million: Option<String>,
    /// Price in USD per million output tokens, as a decimal string, e.g. `"10"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_price_per_million: Option<String>,
    /// Price in USD per million input tokens read from the provider's prompt cache.
    /// Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read_price_per_million: Option<String>,
    /// Price in USD per million input tokens written to the provider's prompt cache.
    /// Default: the input price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_price_per_million: Option<String>,
}

/// Load-balancing strategy over a pool's endpoints or a route's backends. Ejected endpoints
/// (and backends whose pool has none left) are skipped while any other is available.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancingStrategy {
    /// Pick at random, in proportion to the weights.
    WeightedRandom,
    /// Take them in turn, each as often as its weight.
    RoundRobin,
    /// The one with fewer requests in flight (per unit of weight) of two picked at random
    /// ("power of two choices").
    LeastRequest,
    /// Of two picked at random, the one with the lower peak-EWMA of time to the response
    /// head, times its requests in flight plus one: slow endpoints get less traffic.
    LeastLatency,
    /// Routes only: the backend whose model is cheapest (input plus output price) first;
    /// equal prices share by weight.
    Cost,
}

/// When an endpoint is ejected, and for how long. Durations as `30s`, `5m`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Failures in a row (5xx, overload, timeouts, connection errors) that eject an
    /// endpoint. Default 5; 0 turns this trigger off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// 429 answers in a row that eject an endpoint (at least for its `retry-after`).
    /// Default 3; 0 turns this trigger off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_rate_limits: Option<u32>,
    /// Ejection time of a first ejection; it doubles with each repeat. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Longest ejection. Default `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<String>,
    /// Most endpoints of the pool ejected at once, in percent (at least one may always be).
    /// Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
}

/// Connections to each endpoint of a pool.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    /// Most requests in flight to one endpoint, and so most HTTP/1.1 connections in use
    /// (HTTP/2 multiplexes them over fewer). A full endpoint is skipped; when every endpoint
    /// is full the attempt fails as `Overloaded` (503, retried or fallen back like one).
    /// Default 0: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Idle keep-alive connections kept per endpoint host. Default 256.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_connections: Option<u32>,
    /// How long an idle connection is kept. Default `90s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<String>,
}

/// Active health checks of a pool's endpoints: `GET` on a path below each endpoint's URL,
/// with the endpoint's credential. A 2xx passes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// The path asked, below the endpoint URL. Default: the provider's model list
    /// (`/models` for OpenAI-style endpoints, `/v1/models` for Anthropic, `/{apiVersion}/models`
    /// for Gemini, `/openai/models?api-version=…` for Azure). Not available for `bedrock` and
    /// `mock`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Time between two checks of an endpoint. Default `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long a check may take. Default `2s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Failed checks in a row that take an endpoint out of rotation. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_threshold: Option<u32>,
    /// Passed checks in a row that bring it back. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_threshold: Option<u32>,
}

/// Timeouts towards a pool's endpoints, as durations such as `2s` or `500ms`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolTimeouts {
    /// TCP + TLS connect. Default `5s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
    /// Until the response headers (streaming: the first byte) arrive. Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<String>,
    /// Longest silence between two chunks of a stream. Default `60s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
    /// Whole request including the body or stream. Default `600s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<String>,
}

/// Azure OpenAI settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AzureSettings {
    /// The `api-version` query parameter, e.g. `2024-10-21`.
    pub api_version: String,
}

/// Gemini settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GeminiSettings {
    /// API version in the path. Default `v1beta`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
}

/// AWS Bedrock settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BedrockSettings {
    /// AWS region requests are signed for, e.g. `us-east-1`.
    pub region: String,
}

/// Behaviour of the built-in mock provider.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MockSettings {
    /// Latency before the first byte, e.g. `20ms`. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency: Option<String>,
    /// Streaming speed in tokens per second (0 = as fast as possible). Default 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<u32>,
    /// Completion length in tokens. Default 16.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u32>,
}
